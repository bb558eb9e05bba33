"""Consistency stress: processes reading and writing one PostgreSQL table through the cache, zero stale reads.

    python benchmarks/consistency_stress.py [--seconds 20] [--processes 4] [--rows 4] [--reader-threads 2]
                                            [--write-pause-ms 60] [--redis-url URL] [--postgres-url URL]

Several processes (``spawn``ed: forking after Redis or SQLAlchemy connections exist is unsafe) share one
Redis and one PostgreSQL table of counters (``id``, ``value``). Half of them (rounded down, at least one)
write, the others read.

- **Writers** increment a random row in a session with query caching on and commit, cycling through the
  ways an application writes: an ORM object loaded ``FOR UPDATE`` and flushed, a Core ``UPDATE ...
  RETURNING``, a ``text()`` UPDATE, an UPDATE inside a savepoint, a session from ``cached_dependency``,
  and an ``AsyncSession`` (asyncpg). Increments are atomic in the database, so each commit produces the
  next value of its row. Right after ``commit()`` returns, the writer notes (row, value, time); inside the
  transaction it also checks it reads its own write through the caching session.
- **Readers** (each with ``--reader-threads`` threads) note the time T0 before each read, then read a row
  through one of the read paths (below, taken in turn) and note (row, value, T0).

Afterwards every read is checked against the writers' notes: the value must be at least the largest
value whose ``commit()`` had returned before T0. A smaller value is a **stale read**; the run passes with
zero stale reads and zero errors. Times come from ``time.monotonic_ns()`` (``CLOCK_MONOTONIC``, one clock
for every process on Linux).

Read paths: ``session.query(...).first()``, ``session.get``, ``session.scalar(select(...))`` in a fresh
caching session; a long-lived caching session committed between reads (its objects stay in the identity
map, expired); a ``cached_dependency`` session; ``@cached(tags=[...])`` functions that read through a
plain session, through a caching session, and (async) through a plain ``AsyncSession``; a caching
``AsyncSession``; and two REPEATABLE READ paths whose snapshot is taken before the row is read (a caching
session, and ``@cached`` through a plain session), where only tokens captured at transaction start may
be used to store. The ``@cached`` functions' tags are never invalidated by anyone: what retires their
values is read tracking (the tables their SQL read become tags of the value). Each read also records
whether it sent any SQL, so the figures show how many were served from the cache.

Writers pause for an exponentially distributed time (mean ``--write-pause-ms``) after each commit: bursts
of commits race with reads, and quiet spells let entries be stored and hit. Every row is both read and
written, so a stale entry of any row would show.

The figures are saved as ``benchmarks/results/consistency.json`` (``benchmarks/report.py`` renders them).
``tests/test_consistency_stress.py`` runs a shorter version in the test suite.
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import itertools
import multiprocessing
import os
import queue
import random
import statistics
import sys
import threading
import time
import traceback
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import Integer, create_engine, event, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from yokedcache import YokedCache, cached, cached_dependency, set_default_cache
from yokedcache.sqlalchemy import cache_queries

REDIS = os.environ.get("YOKEDCACHE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
POSTGRES = os.environ.get("YOKEDCACHE_BENCH_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")


def driver_url(url: str, driver: str) -> str:
    """``postgresql://...`` with an explicit driver (SQLAlchemy 2.1 would pick psycopg 3)."""
    scheme, rest = url.split("://", 1)
    return f"postgresql+{driver}://{rest}" if scheme in ("postgresql", "postgres") else url


@dataclass(frozen=True)
class StressConfig:
    """Everything a worker process needs (pickled to it)."""

    postgres_url: str
    redis_url: str
    key_prefix: str = field(default_factory=lambda: f"ycstress{uuid.uuid4().hex[:8]}")
    table: str = field(default_factory=lambda: f"yc_stress_{uuid.uuid4().hex[:8]}")
    seconds: float = 20.0
    processes: int = 4
    rows: int = 4
    reader_threads: int = 2
    write_pause_ms: float = 60.0
    long_requests: int = 0  # threads per reader process running long_request_loop
    seed: int = 1

    @property
    def writers(self) -> int:
        return max(1, self.processes // 2)

    @property
    def readers(self) -> int:
        return max(1, self.processes - self.writers)


def counter_model(table: str) -> tuple[type[DeclarativeBase], Any]:
    class Base(DeclarativeBase):
        pass

    class Counter(Base):
        __tablename__ = table

        id: Mapped[int] = mapped_column(Integer, primary_key=True)
        value: Mapped[int] = mapped_column(Integer, nullable=False)

    return Base, Counter


# --- a worker's world ----------------------------------------------------------------------------------


class World:
    """One process's engines, cache and model (async engines are per thread: they belong to a loop)."""

    def __init__(self, config: StressConfig) -> None:
        self.config = config
        self.Base, self.Counter = counter_model(config.table)
        self.engine = create_engine(driver_url(config.postgres_url, "psycopg2"), pool_size=4)
        self.snapshot_engine = self.engine.execution_options(isolation_level="REPEATABLE READ")
        self.cache = YokedCache(redis_url=config.redis_url, key_prefix=config.key_prefix)
        set_default_cache(self.cache)
        self.local = threading.local()
        event.listen(self.engine, "before_cursor_execute", self._statement_sent)

        def get_db() -> Iterator[Session]:
            with Session(self.engine) as session:
                yield session

        self.get_db = cached_dependency(get_db, cache=self.cache)

    def async_engine(self) -> AsyncEngine:
        found = getattr(self.local, "async_engine", None)
        if found is None:
            url = driver_url(self.config.postgres_url, "asyncpg")
            found = self.local.async_engine = create_async_engine(url, pool_size=2)
            event.listen(found.sync_engine, "before_cursor_execute", self._statement_sent)
        return found

    def _statement_sent(self, *args: Any) -> None:
        self.local.statements = self.statements() + 1

    def statements(self) -> int:
        """SQL statements this thread has sent (async ones too: their events run in this thread)."""
        return getattr(self.local, "statements", 0)

    def caching(self) -> Session:
        return cache_queries(Session(self.engine), cache=self.cache)

    def by_id(self, row: int) -> Any:
        return select(self.Counter).where(self.Counter.id == row)

    def value_of(self, row: int) -> Any:
        return select(self.Counter.value).where(self.Counter.id == row)


_world: World | None = None


def world() -> World:
    assert _world is not None, "not in a worker process"
    return _world


# --- read paths -----------------------------------------------------------------------------------------


def read_query(w: World, row: int) -> int:
    with w.caching() as session:
        return int(session.query(w.Counter).filter(w.Counter.id == row).first().value)


def read_get(w: World, row: int) -> int:
    with w.caching() as session:
        return int(session.get(w.Counter, row).value)


def read_scalar(w: World, row: int) -> int:
    with w.caching() as session:
        return int(session.scalar(w.value_of(row)))


def read_reused_session(w: World, row: int) -> int:
    """A long-lived caching session, committed after each read (as a scoped session between requests).

    The objects it loaded are kept referenced, so they stay in its identity map, expired by the commit: a
    hit must fill them from the entry, a miss from the database."""
    session = getattr(w.local, "session", None)
    if session is None:
        session = w.local.session = w.caching()
        w.local.kept = {}
    try:
        obj = session.query(w.Counter).filter(w.Counter.id == row).one()
        w.local.kept[row] = obj
        return int(obj.value)
    finally:
        session.commit()


def take_snapshot(w: World, session: Session) -> None:
    """Send the transaction's first statement, which takes its snapshot: a SELECT that matches no row (in a
    caching session it becomes a cached entry of its own; it is a different one every time, so it always
    reaches the database). It is not part of the read, so it is left out of the thread's statement count."""
    before = w.statements()
    session.execute(select(w.Counter.id).where(w.Counter.id == -next(_snapshot_serial))).all()
    w.local.statements = before


_snapshot_serial = itertools.count(1)


def read_snapshot_session(w: World, row: int) -> int:
    """A REPEATABLE READ caching session whose snapshot is taken before the row is read: its misses may
    only be stored under the tokens captured when its transaction began."""
    with cache_queries(Session(w.snapshot_engine), cache=w.cache) as session:
        take_snapshot(w, session)
        return int(session.query(w.Counter).filter(w.Counter.id == row).first().value)


@cached(tags=["stress-row:{row}"])
def value_via_snapshot_plain_session(row: int) -> int:
    w = world()
    with Session(w.snapshot_engine) as session:
        take_snapshot(w, session)
        return int(session.scalar(w.value_of(row)))


def read_dependency(w: World, row: int) -> int:
    gen = w.get_db()
    db = next(gen)
    try:
        return int(db.execute(w.by_id(row)).scalar_one().value)
    finally:
        gen.close()


@cached(tags=["stress-row:{row}"])
def value_via_plain_session(row: int) -> int:
    w = world()
    with Session(w.engine) as session:
        return int(session.query(w.Counter).filter(w.Counter.id == row).one().value)


@cached(tags=["stress-row:{row}"])
def value_via_session_argument(db: Session, row: int) -> int:
    """The repository shape: the caller's session is an argument (sessions are left out of the key)."""
    return int(db.query(world().Counter).filter(world().Counter.id == row).one().value)


def read_via_session_argument(w: World, row: int) -> int:
    with Session(w.engine) as session:
        return value_via_session_argument(session, row)


@cached(tags=["stress-row:{row}"])
def value_via_caching_session(row: int) -> int:
    w = world()
    with w.caching() as session:
        return int(session.get(w.Counter, row).value)


@cached(tags=["stress-row:{row}"])
async def value_via_async_plain_session(row: int) -> int:
    w = world()
    async with AsyncSession(w.async_engine()) as session:
        return int((await session.execute(w.value_of(row))).scalar_one())


async def read_async_caching_session(w: World, row: int) -> int:
    async with AsyncSession(w.async_engine()) as session:
        cache_queries(session, cache=w.cache)
        return int((await session.execute(w.by_id(row))).scalar_one().value)


T = TypeVar("T")


def _sync(fn: Callable[[World, int], T]) -> Callable[[World, int], Awaitable[T]]:
    """A sync path as a coroutine function, so every path is called the same way."""

    async def run(w: World, row: int) -> T:
        return fn(w, row)

    return run


READ_PATHS: dict[str, Callable[[World, int], Awaitable[int]]] = {
    "cached session: query().first()": _sync(read_query),
    "cached session: get()": _sync(read_get),
    "cached session: scalar(select())": _sync(read_scalar),
    "cached session reused, commit between reads": _sync(read_reused_session),
    "cached_dependency session": _sync(read_dependency),
    "@cached, plain session": _sync(lambda w, row: value_via_plain_session(row)),
    "@cached, caching session": _sync(lambda w, row: value_via_caching_session(row)),
    "@cached, session argument": _sync(read_via_session_argument),
    "@cached async, plain AsyncSession": lambda w, row: value_via_async_plain_session(row),
    "cached AsyncSession": read_async_caching_session,
    "cached REPEATABLE READ session, snapshot first": _sync(read_snapshot_session),
    "@cached, REPEATABLE READ plain session": _sync(lambda w, row: value_via_snapshot_plain_session(row)),
}


# --- write paths: each returns (new value, ns before commit(), ns when commit() returned, own read) -------

Written = tuple[int, int, int, int]


def _commit(session: Any, new: int, own: int) -> Written:
    before = time.monotonic_ns()
    session.commit()
    return new, before, time.monotonic_ns(), own


def write_orm(w: World, row: int) -> Written:
    other = row % w.config.rows + 1
    with w.caching() as session:
        session.query(w.Counter).filter(w.Counter.id == other).first()  # a cached read in the same session
        obj = session.query(w.Counter).filter(w.Counter.id == row).with_for_update().populate_existing().one()
        obj.value += 1
        new = obj.value
        own = session.scalar(w.value_of(row))  # autoflushes: a written table is read from the database
        return _commit(session, new, own)


def _increment(w: World, row: int) -> Any:
    counter = w.Counter
    return update(counter).where(counter.id == row).values(value=counter.value + 1).returning(counter.value)


def write_core(w: World, row: int) -> Written:
    with w.caching() as session:
        new = session.execute(_increment(w, row)).scalar_one()
        return _commit(session, new, session.scalar(w.value_of(row)))


def write_text(w: World, row: int) -> Written:
    sql = text(f"UPDATE {w.config.table} SET value = value + 1 WHERE id = :id RETURNING value")
    with w.caching() as session:
        new = session.execute(sql, {"id": row}).scalar_one()
        return _commit(session, new, session.scalar(w.value_of(row)))


def write_savepoint(w: World, row: int) -> Written:
    with w.caching() as session:
        with session.begin_nested():
            new = session.execute(_increment(w, row)).scalar_one()
        return _commit(session, new, session.scalar(w.value_of(row)))


def write_dependency(w: World, row: int) -> Written:
    gen = w.get_db()
    db = next(gen)
    try:
        obj = db.execute(
            w.by_id(row).with_for_update().execution_options(populate_existing=True)
        ).scalar_one()
        obj.value += 1
        new = obj.value
        return _commit(db, new, db.scalar(w.value_of(row)))
    finally:
        gen.close()


async def write_async(w: World, row: int) -> Written:
    async with AsyncSession(w.async_engine()) as session:
        cache_queries(session, cache=w.cache)
        new = (await session.execute(_increment(w, row))).scalar_one()
        own = (await session.execute(w.value_of(row))).scalar_one()
        before = time.monotonic_ns()
        await session.commit()
        return new, before, time.monotonic_ns(), own


WRITE_PATHS: dict[str, Callable[[World, int], Awaitable[Written]]] = {
    "ORM FOR UPDATE + flush": _sync(write_orm),
    "Core UPDATE RETURNING": _sync(write_core),
    "text() UPDATE": _sync(write_text),
    "savepoint": _sync(write_savepoint),
    "cached_dependency session": _sync(write_dependency),
    "AsyncSession": write_async,
}


# --- the loops ------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """What one worker thread saw. Reads: (row, value, t0, t1, path, 1 if no SQL was sent (served from the
    cache) else 0); ledger: (row, value, t_before_commit, t_commit_returned, path)."""

    reads: list[tuple[int, int, int, int, int, int]] = field(default_factory=list)
    ledger: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    own_write_misreads: list[str] = field(default_factory=list)

    def absorb(self, other: Outcome) -> None:
        self.reads += other.reads
        self.ledger += other.ledger
        self.errors += other.errors
        self.own_write_misreads += other.own_write_misreads


def _error(outcome: Outcome, where: str) -> None:
    outcome.errors.append(f"{where}: {traceback.format_exc(limit=6)}")


async def writer_loop(w: World, deadline: float, rng: random.Random) -> Outcome:
    out = Outcome()
    paths = list(WRITE_PATHS.values())
    names = list(WRITE_PATHS)
    n = 0
    while time.monotonic() < deadline:
        row = rng.randint(1, w.config.rows)
        index = n % len(paths)
        n += 1
        try:
            new, before, returned, own = await paths[index](w, row)
        except Exception:
            _error(out, f"write via {names[index]}")
            continue
        out.ledger.append((row, new, before, returned, index))
        if own != new:
            out.own_write_misreads.append(
                f"{names[index]}: row {row} wrote {new}, read {own} in its transaction"
            )
        if w.config.write_pause_ms:  # exponential: bursts of commits, and quiet spells where entries hit
            await asyncio.sleep(rng.expovariate(1000 / w.config.write_pause_ms))
    return out


async def reader_loop(w: World, deadline: float, rng: random.Random) -> Outcome:
    out = Outcome()
    paths = list(READ_PATHS.values())
    names = list(READ_PATHS)
    n = 0
    while time.monotonic() < deadline:
        row = rng.randint(1, w.config.rows)
        index = n % len(paths)
        n += 1
        sent = w.statements()
        t0 = time.monotonic_ns()
        try:
            value = await paths[index](w, row)
        except Exception:
            _error(out, f"read via {names[index]}")
            continue
        t1 = time.monotonic_ns()
        out.reads.append((row, value, t0, t1, index, int(w.statements() == sent)))
    return out


async def long_request_loop(w: World, deadline: float, rng: random.Random) -> Outcome:
    """``--long-requests``: a slow request. Its session loads every row, other processes commit meanwhile,
    then it calls the ``@cached`` repository function with that session. What it gets back is its own
    session's (older) view, as SQLAlchemy defines it, so its reads are not checked; what it must not do is
    leave that older view in the shared cache for the readers that start after those commits."""
    out = Outcome()
    while time.monotonic() < deadline:
        try:
            with Session(w.engine) as session:
                held = session.query(w.Counter).all()  # kept referenced: they stay in the identity map
                await asyncio.sleep(rng.expovariate(1000 / max(1.0, w.config.write_pause_ms)))
                for row in range(1, w.config.rows + 1):
                    value_via_session_argument(session, row)
                del held
        except Exception:
            _error(out, "long request")
    return out


def _run_thread(loop_fn: Any, w: World, deadline: float, seed: int, into: list[Outcome]) -> None:
    async def main() -> Outcome:
        try:
            return await loop_fn(w, deadline, random.Random(seed))
        finally:
            engine = getattr(w.local, "async_engine", None)
            if engine is not None:
                await engine.dispose()

    try:
        into.append(asyncio.run(main()))
    except Exception:
        failed = Outcome()
        _error(failed, "worker thread")
        into.append(failed)


def worker(role: str, index: int, config: StressConfig, messages: Any, start: Any) -> None:
    """A process's body: set up, say ready, wait for the start, run ``config.seconds``, send the outcome."""
    global _world
    try:
        _world = World(config)
        with Session(_world.engine) as session:  # connect once before the clock starts
            session.scalar(_world.value_of(1))
        messages.put(("ready", index, None))
        if not start.wait(timeout=120):
            raise RuntimeError("never told to start")
        deadline = time.monotonic() + config.seconds
        loops: list[Any] = [writer_loop]
        if role == "reader":
            loops = [reader_loop] * config.reader_threads + [long_request_loop] * config.long_requests
        outcomes: list[Outcome] = []
        runners = [
            threading.Thread(
                target=_run_thread,
                args=(loop_fn, _world, deadline, config.seed * 1000 + index * 10 + t, outcomes),
            )
            for t, loop_fn in enumerate(loops)
        ]
        for runner in runners:
            runner.start()
        for runner in runners:
            runner.join()
        total = Outcome()
        for outcome in outcomes:
            total.absorb(outcome)
        stats = _world.cache.get_stats_sync()
        counts = {"hits": stats.cache_hits, "misses": stats.cache_misses, "cache_errors": stats.errors}
        messages.put(("done", index, {"role": role, "outcome": asdict(total), "stats": counts}))
    except BaseException:
        messages.put(("done", index, {"role": role, "fatal": traceback.format_exc()}))
    finally:
        if _world is not None:
            _world.cache.disconnect_sync()
            _world.engine.dispose()


# --- running and checking ---------------------------------------------------------------------------------


@dataclass
class StressReport:
    config: StressConfig
    reads: int = 0
    stale: list[dict[str, Any]] = field(default_factory=list)
    unknown_values: list[dict[str, Any]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    own_write_misreads: list[str] = field(default_factory=list)
    commits: int = 0
    ledger_gaps: list[str] = field(default_factory=list)
    reads_by_path: dict[str, int] = field(default_factory=dict)
    stale_by_path: dict[str, int] = field(default_factory=dict)
    cached_by_path: dict[str, int] = field(default_factory=dict)
    read_us_by_path: dict[str, float] = field(default_factory=dict)
    commits_by_path: dict[str, int] = field(default_factory=dict)
    hits: int = 0
    misses: int = 0
    cache_errors: int = 0
    seconds: float = 0.0

    @property
    def served_from_cache(self) -> int:
        return sum(self.cached_by_path.values())

    @property
    def passed(self) -> bool:
        return not (self.stale or self.errors or self.unknown_values or self.own_write_misreads) and (
            self.cache_errors == 0 and self.reads > 0 and self.commits > 0
        )

    def summary(self) -> str:
        reads_per_s = self.reads / self.seconds if self.seconds else 0.0
        hit_rate = self.hits / (self.hits + self.misses) if self.hits + self.misses else 0.0
        lines = [
            f"{self.config.writers} writer(s), {self.config.readers} reader(s) with "
            f"{self.config.reader_threads} thread(s) each, {self.config.rows} rows, {self.seconds:.1f} s",
            f"reads {self.reads} ({reads_per_s:,.0f}/s; {self.served_from_cache} served without SQL), "
            f"commits {self.commits} ({self.commits / self.seconds if self.seconds else 0:,.0f}/s), "
            f"cache hit rate {hit_rate:.1%}",
            f"stale reads {len(self.stale)}, errors {len(self.errors)}, cache errors {self.cache_errors}, "
            f"unknown values {len(self.unknown_values)}, own-write misreads {len(self.own_write_misreads)}, "
            f"ledger gaps {len(self.ledger_gaps)}",
        ]
        for name, count in self.reads_by_path.items():
            lines.append(
                f"  {name}: {count} reads ({self.cached_by_path.get(name, 0)} without SQL), "
                f"{self.stale_by_path.get(name, 0)} stale, median {self.read_us_by_path.get(name, 0):,.0f} µs"
            )
        for item in self.stale[:5]:
            lines.append(f"  STALE {item}")
        for error in self.errors[:3]:
            lines.append(f"  ERROR {error}")
        for misread in self.own_write_misreads[:3]:
            lines.append(f"  OWN WRITE {misread}")
        return "\n".join(lines)


def check(report: StressReport, reads: list[tuple[int, ...]], ledger: list[tuple[int, ...]]) -> None:
    """Every read must see at least the newest value whose commit had returned before the read began."""
    read_names, write_names = list(READ_PATHS), list(WRITE_PATHS)
    by_row: dict[int, list[tuple[int, ...]]] = {}
    for entry in ledger:
        by_row.setdefault(entry[0], []).append(entry)
    returned_at: dict[int, list[int]] = {}
    newest_by_then: dict[int, list[int]] = {}
    known: dict[int, set[int]] = {}
    for row, entries in by_row.items():
        entries.sort(key=lambda e: e[3])
        returned_at[row] = [e[3] for e in entries]
        newest, running = [], 0
        for e in entries:
            running = max(running, e[1])
            newest.append(running)
        newest_by_then[row] = newest
        values = sorted(e[1] for e in entries)
        known[row] = set(values)
        if values != list(range(1, len(values) + 1)):
            report.ledger_gaps.append(
                f"row {row}: {len(values)} commits, values {values[:3]}...{values[-3:]}"
            )
    report.commits = len(ledger)
    for name in write_names:
        report.commits_by_path[name] = 0
    for entry in ledger:
        report.commits_by_path[write_names[entry[4]]] += 1

    durations: dict[str, list[int]] = {name: [] for name in read_names}
    for row, value, t0, t1, path, from_cache in reads:
        name = read_names[path]
        report.reads += 1
        report.reads_by_path[name] = report.reads_by_path.get(name, 0) + 1
        report.cached_by_path[name] = report.cached_by_path.get(name, 0) + from_cache
        durations[name].append(t1 - t0)
        times = returned_at.get(row, [])
        done = bisect.bisect_left(times, t0)  # commits that returned strictly before t0
        required = newest_by_then[row][done - 1] if done else 0
        if value < required:
            report.stale_by_path[name] = report.stale_by_path.get(name, 0) + 1
            entries = by_row[row]
            report.stale.append(
                {
                    "path": name,
                    "served_from_cache": bool(from_cache),
                    "row": row,
                    "read": value,
                    "required": required,
                    "read_started_ns": t0,
                    "read_ended_ns": t1,
                    "commit_of_required": next(
                        {"path": write_names[e[4]], "before_ns": e[2], "returned_ns": e[3]}
                        for e in entries
                        if e[1] == required
                    ),
                }
            )
        elif value and value not in known.get(row, set()):
            report.unknown_values.append({"path": name, "row": row, "read": value})
    report.read_us_by_path = {
        name: round(statistics.median(values) / 1000, 1) for name, values in durations.items() if values
    }


def prepare(config: StressConfig) -> Engine:
    engine = create_engine(driver_url(config.postgres_url, "psycopg2"))
    base, counter = counter_model(config.table)
    base.metadata.drop_all(engine)
    base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([counter(id=i, value=0) for i in range(1, config.rows + 1)])
        session.commit()
    return engine


def clean_up(config: StressConfig, engine: Engine) -> None:
    base, _ = counter_model(config.table)
    base.metadata.drop_all(engine)
    engine.dispose()
    cache = YokedCache(redis_url=config.redis_url, key_prefix=config.key_prefix)
    cache.flush_all_sync()
    cache.disconnect_sync()


def run_stress(config: StressConfig) -> StressReport:
    """Create the table, run the processes, check every read, drop the table and the cache entries."""
    engine = prepare(config)
    context = multiprocessing.get_context("spawn")
    messages = context.Queue()
    start = context.Event()
    roles = ["writer"] * config.writers + ["reader"] * config.readers
    processes = [
        context.Process(target=worker, args=(role, i, config, messages, start), daemon=True)
        for i, role in enumerate(roles)
    ]
    report = StressReport(config)
    try:
        for process in processes:
            process.start()
        results: dict[int, dict[str, Any]] = {}
        ready = 0
        deadline = time.monotonic() + 120
        while ready < len(processes):  # a worker that fails while setting up reports "done" instead
            kind, index, payload = messages.get(timeout=max(1.0, deadline - time.monotonic()))
            ready += 1
            if kind == "done":
                results[index] = payload
        started = time.monotonic()
        start.set()
        while len(results) < len(processes):
            try:
                kind, index, payload = messages.get(timeout=config.seconds + 120)
            except queue.Empty:
                report.errors.append("a worker process did not report back")
                break
            if kind == "done":
                results[index] = payload
        report.seconds = min(config.seconds, time.monotonic() - started)
        for process in processes:
            process.join(timeout=30)
        reads: list[tuple[int, ...]] = []
        ledger: list[tuple[int, ...]] = []
        for index in sorted(results):
            payload = results[index]
            if "fatal" in payload:
                report.errors.append(f"{payload['role']} {index}: {payload['fatal']}")
                continue
            outcome = payload["outcome"]
            reads += [tuple(r) for r in outcome["reads"]]
            ledger += [tuple(e) for e in outcome["ledger"]]
            report.errors += outcome["errors"]
            report.own_write_misreads += outcome["own_write_misreads"]
            report.hits += payload["stats"]["hits"]
            report.misses += payload["stats"]["misses"]
            report.cache_errors += payload["stats"]["cache_errors"]
        check(report, reads, ledger)
    finally:
        for process in processes:
            if process.is_alive():
                process.kill()
        clean_up(config, engine)
    return report


def scenarios_of(report: StressReport) -> list[dict[str, Any]]:
    """The result file's entries: the whole run, then each read path."""
    seconds = report.seconds or 1.0
    hit_rate = report.hits / (report.hits + report.misses) if report.hits + report.misses else 0.0
    config = report.config
    overall = {
        "name": f"{config.processes} processes, {config.seconds:g} s",
        "figures": {
            "writers": config.writers,
            "readers": f"{config.readers} ({config.reader_threads} threads each)",
            "reads": report.reads,
            "reads served from the cache (no SQL)": report.served_from_cache,
            "stale reads": len(report.stale),
            "errors": len(report.errors) + report.cache_errors + len(report.unknown_values),
            "commits": report.commits,
            "reads/s": round(report.reads / seconds),
            "commits/s": round(report.commits / seconds),
            "cache hit rate": f"{hit_rate:.1%}",
            "own-write misreads": len(report.own_write_misreads),
        },
        "pass": report.passed,
        "target_text": "0 stale reads",
    }
    paths = [
        {
            "name": f"read path: {name}",
            "figures": {
                "reads": count,
                "served from the cache": report.cached_by_path.get(name, 0),
                "stale reads": report.stale_by_path.get(name, 0),
                "median read": f"{report.read_us_by_path.get(name, 0):,.0f} µs",
            },
            "pass": report.stale_by_path.get(name, 0) == 0,
            "target_text": "0 stale reads",
        }
        for name, count in report.reads_by_path.items()
    ]
    return [overall, *paths]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = {f.name: f.default for f in fields(StressConfig)}
    parser.add_argument("--seconds", type=float, default=defaults["seconds"])
    parser.add_argument("--processes", type=int, default=defaults["processes"])
    parser.add_argument("--rows", type=int, default=defaults["rows"])
    parser.add_argument("--reader-threads", type=int, default=defaults["reader_threads"])
    parser.add_argument(
        "--write-pause-ms",
        type=float,
        default=defaults["write_pause_ms"],
        help="mean pause after each of a writer's commits",
    )
    parser.add_argument(
        "--long-requests",
        type=int,
        default=defaults["long_requests"],
        help="threads per reader process that call the @cached repository function with a session holding "
        "rows loaded before other processes' commits (see long_request_loop)",
    )
    parser.add_argument("--redis-url", default=REDIS)
    parser.add_argument("--postgres-url", default=POSTGRES)
    parser.add_argument("--no-save", action="store_true", help="print the figures without saving them")
    args = parser.parse_args()
    if args.processes < 2:
        parser.error("--processes must be at least 2 (a writer and a reader)")
    config = StressConfig(
        postgres_url=args.postgres_url,
        redis_url=args.redis_url,
        seconds=args.seconds,
        processes=args.processes,
        rows=args.rows,
        reader_threads=args.reader_threads,
        write_pause_ms=args.write_pause_ms,
        long_requests=args.long_requests,
    )
    report = run_stress(config)
    print(report.summary())
    print("PASS" if report.passed else "FAIL")
    if not args.no_save:
        sys.path.insert(0, str(Path(__file__).parent))
        from harness import save

        print("saved", save("consistency", scenarios_of(report)))
    if not report.passed:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
