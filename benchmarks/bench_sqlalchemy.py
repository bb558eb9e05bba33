"""SQLAlchemy query caching on PostgreSQL and Redis (both on loopback), against plain sessions.

    python benchmarks/bench_sqlalchemy.py [--quick] [--redis-url URL] [--postgres-url URL]

A table of 10,000 users is created under a unique name (and dropped at the end). Every operation opens a
**fresh session** — ``with Session(engine) as s: ...`` — on both sides, as a web request does, so each side
pays the same session set-up and teardown; the plain side also checks a connection out of the pool, runs
the SELECT in its transaction and rolls back on close, which is what an uncached request costs.

Scenarios (ratios are throughput, yokedcache / reference; a scenario passes when ratio ≥ target):
  query_hit             ``session.query(User).filter(User.id == x).first()`` served from the cache in a
                        ``cache_queries`` session  vs the same query in a plain session (≥ 5). Also checks
                        that a hit is ONE Redis round trip (one EVALSHA whose script GETs the entry and
                        its tags' tokens, nothing else) and sends no SQL (and checks out no connection).
  query_hit_dependency  the same through a session produced by ``cached_dependency``  (≥ 5, same checks)
  query_miss            the cached session's miss (key building, the lookup that also captures the tokens,
                        the query, encoding, the store sent without waiting for its reply) vs the plain
                        query. The target "a miss costs at most 1.3× the plain query" is written as a
                        throughput ratio: plain_time / miss_time ≥ 1 / 1.3 ≈ 0.77. A third contender, one
                        bare redis-py GET followed by the plain query, is the floor of any cache's miss.
  query_hit_same_session  informative (no target): one long-lived session per side instead of one per query
  query_hit_bound       informative: the same query in a session whose ``do_orm_execute`` listener does only
                        what no cache answering through a Session can skip — the statement's cache key, ONE
                        bare redis-py GET, one new ``User`` in a ``Result`` — and nothing else (no tags, no
                        decoding, no identity map). Its ratio against the plain session is the best any
                        one-round-trip cache can reach on this machine; ours is shown beside it.
  commit_invalidation   a commit that UPDATEs the users table, with 10 and then 1,000 cached queries
                        reading it: the commit's invalidation must be ONE Redis round trip in both cases
                        (and the cached queries must all be misses afterwards). Times are informative:
                        each timed commit follows a fresh warm-up, alternating with a plain session's
                        on an engine yokedcache does not watch (0 Redis requests, checked).

Round trips are counted twice: on the client (every request written to a Redis socket, pipelines
included, by wrapping ``send_packed_command``) and on the server (``INFO commandstats`` deltas, which also
show the commands a script runs). ``commandstats`` is server-wide, so by default this script starts a
private ``redis-server`` on a free port; with ``--redis-url`` the server-side figures may include other
clients' commands. ``stats_publish_interval`` is raised so the periodic statistics flush (every 10 s by
default, one pipeline) cannot land inside a counted window. The invalidation script is loaded once
before counting (the first ``EVALSHA`` of a fresh server answers NOSCRIPT and loads it: a one-off).

The plain sessions run in the same process, with yokedcache's class-level SQLAlchemy listeners installed
(as in an application using it): for a plain session they cost a dictionary lookup per statement.
"""

from __future__ import annotations

import argparse
import itertools
import os
import random
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import redis
import redis.connection
from sqlalchemy import Boolean, Integer, String, create_engine, event, update
from sqlalchemy.engine import Engine
from sqlalchemy.engine.result import IteratorResult, SimpleResultMetaData
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column
from sqlalchemy.util import immutabledict

sys.path.insert(0, str(Path(__file__).parent))
from harness import compare_sync, print_scenarios, ratio, save, scenario

from yokedcache import YokedCache
from yokedcache.integrations.dependencies import cached_dependency
from yokedcache.sqlalchemy import cache_queries

POSTGRES = os.environ.get("YOKEDCACHE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def psycopg2_url(url: str) -> str:
    """SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3; use psycopg2 unless a driver is named."""
    return "postgresql+psycopg2://" + url.split("://", 1)[1] if url.startswith("postgresql://") else url


USERS = 10_000
TABLE = f"yc_bench_users_{uuid.uuid4().hex[:8]}"


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = TABLE

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(80))
    email: Mapped[str] = mapped_column(String(120))
    active: Mapped[bool] = mapped_column(Boolean)
    score: Mapped[int] = mapped_column(Integer)


# --- counting -----------------------------------------------------------------------------------------


class ClientRequests:
    """Counts requests written to any Redis socket in this process (a pipeline is one request), and the
    replies read: a request whose reply is read only later (an unawaited store) is not a round trip the
    operation waited for."""

    def __init__(self) -> None:
        self.count = 0
        self.replies = 0
        original_send = redis.connection.AbstractConnection.send_packed_command
        original_read = redis.connection.AbstractConnection.read_response
        counter = self

        def counted(connection: Any, command: Any, check_health: bool = True) -> None:
            counter.count += 1
            original_send(connection, command, check_health)

        def read(connection: Any, *args: Any, **kwargs: Any) -> Any:
            counter.replies += 1
            return original_read(connection, *args, **kwargs)

        redis.connection.AbstractConnection.send_packed_command = counted  # type: ignore[method-assign]
        redis.connection.AbstractConnection.read_response = read  # type: ignore[method-assign]


class SqlStatements:
    """Counts statements sent to PostgreSQL and connections checked out of the pool."""

    def __init__(self, engine: Engine) -> None:
        self.statements = 0
        self.checkouts = 0
        event.listen(engine, "before_cursor_execute", self._statement)
        event.listen(engine.pool, "checkout", self._checkout)

    def _statement(self, *args: Any) -> None:
        self.statements += 1

    def _checkout(self, *args: Any) -> None:
        self.checkouts += 1


class Probe:
    """Server-side command counts (``INFO commandstats``), minus the probe's own INFO calls."""

    def __init__(self, url: str) -> None:
        self.client = redis.Redis.from_url(url)

    def commands(self) -> dict[str, int]:
        stats = self.client.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(v["calls"]) for name, v in stats.items()}

    @staticmethod
    def delta(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
        out = {k: after[k] - before.get(k, 0) for k in after if k != "info"}
        return {k: v for k, v in out.items() if v}


@contextmanager
def counted(probe: Probe, client: ClientRequests, sql: SqlStatements) -> Iterator[dict[str, Any]]:
    """Counts of one window: client requests, server commands, SQL statements, pool checkouts."""
    found: dict[str, Any] = {}
    server_before = probe.commands()
    requests, replies, statements, checkouts = client.count, client.replies, sql.statements, sql.checkouts
    yield found
    found["requests"] = client.count - requests
    found["replies"] = client.replies - replies
    found["statements"] = sql.statements - statements
    found["checkouts"] = sql.checkouts - checkouts
    found["server"] = Probe.delta(server_before, probe.commands())


# --- a private redis-server ---------------------------------------------------------------------------


class PrivateRedis:
    def __init__(self) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server not found: install it or pass --redis-url")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.dir = tempfile.mkdtemp(prefix="yc-bench-redis-")
        self.process = subprocess.Popen(
            [binary, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
             "--dir", self.dir],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while True:
            try:
                redis.Redis(port=self.port).ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        self.url = f"redis://127.0.0.1:{self.port}/0"

    def stop(self) -> None:
        self.process.kill()
        self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


# --- set-up ----------------------------------------------------------------------------------------------


def create_users(engine: Engine) -> None:
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    rows = [
        {"id": i, "name": f"user {i}", "email": f"user{i}@example.com", "active": i % 3 != 0, "score": i % 97}
        for i in range(1, USERS + 1)
    ]
    with Session(engine) as session:
        session.execute(User.__table__.insert(), rows)
        session.commit()
    with engine.connect() as connection:
        connection.exec_driver_sql(f"ANALYZE {TABLE}")


def new_cache(redis_url: str, prefix: str) -> YokedCache:
    return YokedCache(
        redis_url=redis_url, key_prefix=prefix, ttl_jitter_percent=0, stats_publish_interval=86_400
    )


def query(session: Session, user_id: int) -> User | None:
    return session.query(User).filter(User.id == user_id).first()


def plain_read(engine: Engine, user_id: int) -> User | None:
    with Session(engine) as session:
        return query(session, user_id)


def cached_read(engine: Engine, cache: YokedCache, user_id: int) -> User | None:
    with cache_queries(Session(engine), cache=cache) as session:
        return query(session, user_id)


def dependency_reader(engine: Engine, cache: YokedCache) -> Callable[[int], User | None]:
    def get_db() -> Iterator[Session]:
        with Session(engine) as session:
            yield session

    get_cached_db = cached_dependency(get_db, cache=cache)

    def read(user_id: int) -> User | None:
        gen = get_cached_db()
        db = next(gen)
        try:
            return query(db, user_id)
        finally:
            gen.close()

    return read


def cycling(ids: list[int], read: Callable[[int], Any]) -> Callable[[], Any]:
    """One operation per call: ``read`` of the next id, round and round the list."""
    source = itertools.cycle(ids)
    return lambda: read(next(source))


class Bench:
    """What every scenario uses: the database, Redis, the counters and the run's size."""

    def __init__(self, engine: Engine, redis_url: str, quick: bool) -> None:
        self.engine = engine
        self.redis_url = redis_url
        self.client = ClientRequests()
        self.sql = SqlStatements(engine)
        self.probe = Probe(redis_url)
        self.ops, self.rounds, self.repeats = (200, 5, 3) if quick else (1000, 9, 7)
        # One cache for the whole run, as in an application: a commit invalidates every cache of the
        # process that cached queries of the database, and the first cache created stays alive as the
        # process default, so a second cache would add its own round trip to each commit.
        self.cache = new_cache(redis_url, f"bench-{uuid.uuid4().hex[:8]}")
        self.hot_ids = random.Random(1).sample(range(1, USERS + 1), 500)

    def counted(self) -> Any:
        return counted(self.probe, self.client, self.sql)

    def compare(self, contenders: dict[str, Callable[[], Any]]) -> dict[str, float]:
        return compare_sync(contenders, self.ops, self.rounds)


def hits_are_one_round_trip(bench: Bench, read: Callable[[int], Any], ids: list[int]) -> dict[str, Any]:
    """Count each hit separately; every one must be 1 request, 1 EVALSHA + its GETs, no SQL."""
    shapes: Counter[str] = Counter()
    per_hit: list[dict[str, Any]] = []
    for user_id in ids:
        with bench.counted() as window:
            user = read(user_id)
        assert user is not None and user.id == user_id
        per_hit.append(window)
        shapes[f"{window['requests']} request(s), server {sorted(window['server'].items())}"] += 1
    ok = all(
        w["requests"] == 1
        and w["statements"] == 0
        and w["checkouts"] == 0
        and w["server"].get("evalsha") == 1
        and set(w["server"]) <= {"evalsha", "get"}
        for w in per_hit
    )
    sample = per_hit[0]
    return {
        "ok": ok,
        "hits_counted": len(per_hit),
        "round_trips": sample["requests"] if ok else sorted({w["requests"] for w in per_hit}),
        "server_commands": sample["server"] if ok else dict(shapes),
        "sql_statements": sum(w["statements"] for w in per_hit),
        "connection_checkouts": sum(w["checkouts"] for w in per_hit),
    }


# --- scenarios --------------------------------------------------------------------------------------------


def scenario_hit(bench: Bench, name: str, read: Callable[[int], Any]) -> dict[str, Any]:
    cache, ids = bench.cache, bench.hot_ids
    for user_id in ids:
        read(user_id)  # the first read of each id is a miss that stores it (or a hit of an earlier scenario)
    before = cache.get_stats_sync()
    ours, ref = "cached session (hit)", "plain session"
    medians = bench.compare(
        {ours: cycling(ids, read), ref: cycling(ids, lambda i: plain_read(bench.engine, i))}
    )
    misses = cache.get_stats_sync().cache_misses - before.cache_misses
    counts = hits_are_one_round_trip(bench, read, ids[:50])
    result = scenario(
        name, medians, ours, ref, 5.0,
        round_trips=counts["round_trips"],
        server_commands_per_hit=counts["server_commands"],
        sql_statements_on_hits=counts["sql_statements"],
        connection_checkouts_on_hits=counts["connection_checkouts"],
        misses_while_timing=misses,
    )
    result["pass"] = bool(result["ratio"] >= 5.0 and counts["ok"] and misses == 0)
    result["note"] = (
        f"{counts['hits_counted']} hits counted one by one: {counts['round_trips']} round trip each, "
        f"server commands {counts['server_commands']}, {counts['sql_statements']} SQL statements, "
        f"{counts['connection_checkouts']} connection checkouts; {misses} misses while timing"
    )
    return result


def scenario_same_session(bench: Bench) -> dict[str, Any]:
    """Informative: one long-lived session per side (the plain one runs every SELECT in one transaction,
    so it pays one database round trip per query instead of three)."""
    ids = bench.hot_ids
    cached_session = cache_queries(Session(bench.engine), cache=bench.cache)
    plain_session = Session(bench.engine)
    for user_id in ids:
        query(cached_session, user_id)
    ours, ref = "cached session (hit)", "plain session"
    medians = bench.compare(
        {
            ours: cycling(ids, lambda i: query(cached_session, i)),
            ref: cycling(ids, lambda i: query(plain_session, i)),
        }
    )
    cached_session.close()
    plain_session.close()
    note = "informative: one session reused for every query on each side, objects in its identity map"
    return scenario("query_hit_same_session", medians, ours, ref, None, note=note)


class BoundSession(Session):
    """A session answering every ORM SELECT with one bare Redis GET and a new, unattached object."""


def bound_reader(engine: Engine, redis_url: str) -> Callable[[int], User | None]:
    client = redis.Redis.from_url(redis_url)
    client.set("yc-bench-bound", b"x" * 120)
    metadata = SimpleResultMetaData(["User"])

    @event.listens_for(BoundSession, "do_orm_execute")
    def answer(orm_state: Any) -> Any:
        orm_state.statement._generate_cache_key()  # any key needs the statement's structure
        client.get("yc-bench-bound")
        user = User(id=0, name="", email="", active=True, score=0)
        result: IteratorResult[Any] = IteratorResult(metadata, iter([user]))
        result._source_supports_scalars = True  # a single-entity ORM result, as first() expects
        result._attributes = immutabledict({"filtered": False, "is_single_entity": True})
        return result

    def read(user_id: int) -> User | None:
        with BoundSession(engine) as session:
            return query(session, user_id)

    return read


def scenario_bound(bench: Bench) -> dict[str, Any]:
    ids = bench.hot_ids
    bound = bound_reader(bench.engine, bench.redis_url)
    ours, floor, ref = "cached session (hit)", "floor: key + 1 bare GET + new object", "plain session"
    medians = bench.compare(
        {
            ours: cycling(ids, lambda i: cached_read(bench.engine, bench.cache, i)),
            floor: cycling(ids, bound),
            ref: cycling(ids, lambda i: plain_read(bench.engine, i)),
        }
    )
    best = ratio(medians[floor], medians[ref])
    note = (
        f"informative: a session doing only the unavoidable part of a one-round-trip hit reaches {best}x "
        f"the plain session here; yokedcache's hit reaches {ratio(medians[ours], medians[ref])}x"
    )
    return scenario("query_hit_bound", medians, ours, ref, None, best_possible_ratio=best, note=note)


def scenario_miss(bench: Bench) -> dict[str, Any]:
    cache = bench.cache
    hot = set(bench.hot_ids)
    order = [i for i in random.Random(2).sample(range(1, USERS + 1), USERS) if i not in hot]
    if max(10, bench.ops // 10) + bench.ops * bench.rounds + 1 > len(order):
        raise SystemExit(f"not enough distinct users for {bench.rounds} rounds of {bench.ops} misses")
    fresh = iter(order)  # every cached read is of a user never read before: a genuine miss
    plain_ids, floor_ids = iter(order), iter(order)  # the others read the same users in the same order
    client = redis.Redis.from_url(bench.redis_url)

    def floor_read() -> None:  # the least any cache can do on a miss: one lookup, then the query
        client.get("yc-bench-absent")
        plain_read(bench.engine, next(floor_ids))

    ours, floor, ref = "cached session (miss)", "floor: 1 bare GET + plain query", "plain session"
    before = cache.get_stats_sync()
    medians = bench.compare(
        {
            ours: lambda: cached_read(bench.engine, cache, next(fresh)),
            floor: floor_read,
            ref: lambda: plain_read(bench.engine, next(plain_ids)),
        }
    )
    client.close()
    hits = cache.get_stats_sync().cache_hits - before.cache_hits
    with bench.counted() as window:
        cached_read(bench.engine, cache, next(fresh))
    result = scenario(
        "query_miss", medians, ours, ref, 0.77,
        round_trips=window["replies"],
        requests=window["requests"],
        server_commands_per_miss=window["server"],
        hits_while_timing=hits,
    )
    result["pass"] = bool(result["ratio"] >= 0.77 and hits == 0)
    result["best_possible_ratio"] = ratio(medians[floor], medians[ref])
    slower = medians[ours] / medians[ref]
    result["note"] = (
        f"a miss takes {slower:.2f} times the plain query (target: at most 1.3 times, i.e. ratio ≥ 0.77); "
        f"one bare Redis GET before the plain query alone takes {medians[floor] / medians[ref]:.2f} times; "
        f"{window['requests']} Redis requests per miss, {window['replies']} of them waited for (the lookup, "
        f"which also captures the tokens; the store is sent without waiting for its reply) and "
        f"{window['statements']} SQL statement; "
        f"{hits} hits while timing"
    )
    return result


def scenario_commit(bench: Bench) -> dict[str, Any]:
    """Warm N cached queries of the users table, then commit an UPDATE of it in a caching session."""
    cache = bench.cache
    targets = itertools.count(1)

    def write(session: Session) -> None:
        session.execute(update(User).where(User.id == next(targets)).values(score=User.score + 1))
        session.commit()

    with cache_queries(Session(bench.engine), cache=cache) as session:
        write(session)  # loads the invalidation script: a one-off per server, not part of a commit

    # The reference: an engine yokedcache does not watch. (Every engine of a watched database publishes its
    # commits, plain sessions included, so the same engine would not show what a commit costs without it.)
    reference = create_engine(bench.engine.url.update_query_dict({"application_name": "yc-bench-reference"}))
    with Session(reference) as session, bench.counted() as reference_window:
        write(session)

    def timed_write(session: Session) -> float:
        with session:
            started = time.perf_counter()
            write(session)
            return time.perf_counter() - started

    round_trips: dict[str, int] = {}
    commands: dict[str, dict[str, int]] = {}
    timings: dict[str, float] = {}
    retired: dict[str, bool] = {}
    plain: list[float] = []
    for cached_queries in (10, 1_000):
        ids = list(range(USERS - cached_queries + 1, USERS + 1))
        samples = []
        for attempt in range(bench.repeats + 1):
            for user_id in ids:
                cached_read(bench.engine, cache, user_id)
            before = cache.get_stats_sync()
            for user_id in ids[:10]:
                cached_read(bench.engine, cache, user_id)
            assert cache.get_stats_sync().cache_hits - before.cache_hits == 10, "warm entries must hit"
            if attempt == 0:
                with cache_queries(Session(bench.engine), cache=cache) as session, bench.counted() as window:
                    write(session)
                round_trips[str(cached_queries)] = window["requests"]
                commands[str(cached_queries)] = window["server"]
                before = cache.get_stats_sync()
                for user_id in ids:
                    cached_read(bench.engine, cache, user_id)
                misses = cache.get_stats_sync().cache_misses - before.cache_misses
                retired[str(cached_queries)] = misses == len(ids)
            else:  # timed: the caching session's commit and a plain one, alternating which goes first
                contenders = [
                    lambda: cache_queries(Session(bench.engine), cache=cache),
                    lambda: Session(reference),
                ]
                order = [0, 1] if attempt % 2 else [1, 0]
                for which in order:
                    elapsed = timed_write(contenders[which]())
                    (samples if which == 0 else plain).append(elapsed)
        timings[f"commit, {cached_queries} cached queries"] = round(statistics.median(samples) * 1000, 3)
    timings["commit, plain session"] = round(statistics.median(plain) * 1000, 3)
    reference.dispose()
    ok = (
        reference_window["requests"] == 0
        and all(v == 1 for v in round_trips.values())
        and all(
            c.get("evalsha") == 1 and set(c) <= {"evalsha", "get", "set", "del"} for c in commands.values()
        )
    )
    return {
        "name": "commit_invalidation",
        "median_ms": timings,
        "round_trips": round_trips,
        "server_commands": commands,
        "all_cached_queries_retired": retired,
        "reference_commit_round_trips": reference_window["requests"],
        "ratio": ratio(timings["commit, 1000 cached queries"], timings["commit, plain session"]),
        "target": None,
        "pass": bool(ok and all(retired.values())),
        "note": (
            f"Redis round trips of the commit: {round_trips} (server: {commands}); every cached query "
            f"was a miss afterwards: {retired}; ratio = plain commit time / caching commit time (1,000 "
            "cached queries), informative"
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a short run (results are not saved)")
    parser.add_argument("--redis-url", help="use this Redis instead of a private redis-server")
    parser.add_argument("--postgres-url", default=POSTGRES)
    args = parser.parse_args()

    server = None if args.redis_url else PrivateRedis()
    engine = create_engine(psycopg2_url(args.postgres_url), pool_size=5)
    try:
        create_users(engine)
        bench = Bench(engine, args.redis_url or server.url, args.quick)  # type: ignore[union-attr]
        scenarios = [
            scenario_hit(bench, "query_hit", lambda i: cached_read(engine, bench.cache, i)),
            scenario_hit(bench, "query_hit_dependency", dependency_reader(engine, bench.cache)),
            scenario_same_session(bench),
            scenario_bound(bench),
            scenario_miss(bench),
        ]
        print_scenarios(scenarios)
        for item in scenarios:
            if "pass" in item:
                print(f"  {item['name']}: {'PASS' if item['pass'] else 'MISS'} — {item['note']}")
        commit = scenario_commit(bench)
        print(
            f"commit_invalidation: {commit['median_ms']} ms; {'PASS' if commit['pass'] else 'MISS'} — "
            f"{commit['note']}"
        )
        scenarios.append(commit)
        bench.cache.flush_all_sync()
        bench.cache.disconnect_sync()
        if not args.quick:
            print("saved", save("sqlalchemy", scenarios))
    finally:
        Base.metadata.drop_all(engine)
        engine.dispose()
        if server is not None:
            server.stop()


if __name__ == "__main__":
    main()
