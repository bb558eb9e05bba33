"""Redis specifics: round trips, O(1) invalidation, URL forms, auth, pool limits, namespaces and garbage.

Command counts come from ``INFO commandstats`` deltas on a private redis-server (a unix socket, so nothing
else talks to it). Redis counts the commands a script runs too, so each expectation is the full delta: one
``evalsha`` plus exactly the commands that script runs, and nothing else.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from yokedcache import CacheConnectionError, YokedCache

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


# --- private servers -----------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class PrivateRedis:
    """A redis-server subprocess of our own (no persistence), stopped at the end of the module."""

    def __init__(self, *, port: int = 0, unix: bool = False, password: str | None = None) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            if IN_CI:
                pytest.fail("CI=true and the redis-server binary is missing")
            pytest.skip("redis-server binary not found")
        self.dir = tempfile.mkdtemp(prefix="ycr")  # short: unix socket paths are limited to ~100 bytes
        self.socket_path = os.path.join(self.dir, "redis.sock")
        self.port = port
        self.password = password
        args = ["--port", str(port), "--save", "", "--appendonly", "no", "--daemonize", "no"]
        args += ["--dir", self.dir]
        if port:
            args += ["--bind", "127.0.0.1"]
        if unix:
            args += ["--unixsocket", self.socket_path, "--unixsocketperm", "700"]
        if password:
            args += ["--requirepass", password]
        self.process = subprocess.Popen([binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def client(self, db: int = 0) -> redis.Redis:
        if self.port:
            return redis.Redis(host="127.0.0.1", port=self.port, db=db, password=self.password)
        return redis.Redis(unix_socket_path=self.socket_path, db=db)

    def wait_ready(self) -> PrivateRedis:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with self.client() as probe:
                    probe.ping()
                return self
            except (redis.ConnectionError, OSError):
                if self.process.poll() is not None:
                    raise RuntimeError("redis-server exited at start") from None
                time.sleep(0.02)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:  # pragma: no cover
            self.process.kill()
            self.process.wait(timeout=10)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def unix_redis() -> Iterator[PrivateRedis]:
    """A server listening only on a unix socket (``--port 0``): also the unix:// URL form."""
    server = PrivateRedis(unix=True)
    try:
        yield server.wait_ready()
    finally:
        server.stop()


@pytest.fixture(scope="module")
def auth_redis() -> Iterator[PrivateRedis]:
    """A TCP server with a password for the default user and an ACL user ``alice``."""
    server = PrivateRedis(port=_free_port(), password="s3cret pw")
    try:
        server.wait_ready()
        with server.client() as admin:
            admin.acl_setuser("alice", enabled=True, passwords=["+alice-pw"], keys=["*"], channels=["*"],
                              commands=["+@all"])
        yield server
    finally:
        server.stop()


def unix_url(server: PrivateRedis, db: int = 0) -> str:
    return f"unix://{server.socket_path}?db={db}"


class CommandCounter:
    """``INFO commandstats`` deltas of a server, without the observer's own INFO calls."""

    def __init__(self, server: PrivateRedis) -> None:
        self.observer = server.client()
        self.before: dict[str, int] = {}

    def snapshot(self) -> dict[str, int]:
        stats = self.observer.info("commandstats")
        return {name.removeprefix("cmdstat_"): int(values["calls"]) for name, values in stats.items()}

    def start(self) -> None:
        self.before = self.snapshot()

    def delta(self) -> dict[str, int]:
        after = self.snapshot()
        changed = {name: calls - self.before.get(name, 0) for name, calls in after.items()}
        return {name: n for name, n in changed.items() if n and name != "info"}


@pytest.fixture
def counter(unix_redis: PrivateRedis) -> Iterator[CommandCounter]:
    counting = CommandCounter(unix_redis)
    yield counting
    counting.observer.close()


@pytest.fixture
def private_cache(unix_redis: PrivateRedis, prefix: str) -> Iterator[YokedCache]:
    # a generous operation timeout (see conftest.cache_config): these tests count commands, not time
    cache = YokedCache(redis_url=unix_url(unix_redis), key_prefix=prefix, ttl_jitter_percent=0,
                       stats_publish_interval=0, operation_timeout=5.0)
    yield cache
    cache.flush_all_sync()
    cache.disconnect_sync()


@pytest.fixture
def raw(redis_url: str) -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
def shared_cache(redis_url: str, prefix: str) -> Iterator[YokedCache]:
    cache = YokedCache(redis_url=redis_url, key_prefix=prefix, ttl_jitter_percent=0, operation_timeout=5.0)
    yield cache
    cache.flush_all_sync()
    cache.disconnect_sync()


# --- round trips -------------------------------------------------------------------------------------------


def test_sync_operations_cost_one_command_each(private_cache: YokedCache, counter: CommandCounter) -> None:
    cache = private_cache
    # warm up: connect, and load every script once (a script's first use may add SCRIPT LOAD)
    cache.set_sync("warm", 1)
    cache.set_sync("warm-tagged", 1, tags=["a", "b"])  # the tags' tokens exist from here on
    cache.get_sync("warm")
    cache.invalidate_tags_sync("w3")

    counter.start()
    assert cache.set_sync("plain", {"v": 1}) is True
    assert counter.delta() == {"set": 1}

    counter.start()
    assert cache.get_sync("plain") == {"v": 1}
    assert counter.delta() == {"evalsha": 1, "get": 1}  # the script's GET of the entry

    counter.start()
    assert cache.get_sync("absent", "D") == "D"
    assert counter.delta() == {"evalsha": 1, "get": 1}

    counter.start()
    assert cache.set_sync("tagged", [1], tags=["a", "b"]) is True
    assert counter.delta() == {"evalsha": 1, "get": 2, "set": 1, "incrby": 2}  # 2 token reads, 1 write

    counter.start()
    assert cache.get_sync("tagged") == [1]
    assert counter.delta() == {"evalsha": 1, "get": 3}  # the entry and its two tokens, one round trip


async def test_async_operations_cost_one_command_each(
    private_cache: YokedCache, counter: CommandCounter
) -> None:
    cache = private_cache
    await cache.set("warm", 1)
    await cache.set("warm-tagged", 1, tags="a")
    await cache.get("warm")
    await cache.invalidate_tags("w3")

    counter.start()
    assert await cache.set("plain", "v") is True
    assert counter.delta() == {"set": 1}

    counter.start()
    assert await cache.get("plain") == "v"
    assert counter.delta() == {"evalsha": 1, "get": 1}

    counter.start()
    assert await cache.set("tagged", "t", tags="a") is True
    assert counter.delta() == {"evalsha": 1, "get": 1, "set": 1, "incrby": 1}

    counter.start()
    assert await cache.get("tagged") == "t"
    assert counter.delta() == {"evalsha": 1, "get": 2}
    await cache.disconnect()


def test_get_or_capture_is_one_round_trip_for_a_hit_and_for_a_miss(
    private_cache: YokedCache, counter: CommandCounter
) -> None:
    """A miss learns the tokens to store its computed value under from the request that found nothing."""
    cache = private_cache
    cache.set_sync("warm", 1, tags=["a", "b"])
    cache.get_or_capture_sync("warm", ["a", "b"])

    counter.start()
    value, tokens = cache.get_or_capture_sync("absent", ["a", "b"], "D")
    assert value == "D"
    assert counter.delta() == {"evalsha": 1, "get": 3}  # the entry, then the two tokens
    assert tokens == cache.capture_tokens_sync(["a", "b"])

    assert cache.store_computed_sync("absent", [1, 2], tokens, ["a", "b"]) == "stored"
    counter.start()
    assert cache.get_or_capture_sync("absent", ["a", "b"]) == ([1, 2], None)
    assert counter.delta() == {"evalsha": 1, "get": 3}  # the entry and its two tokens

    cache.invalidate_tags_sync("a")  # the entry dies: the same request now captures the new tokens
    value, tokens = cache.get_or_capture_sync("absent", ["a", "b"], "D")
    assert value == "D" and tokens == cache.capture_tokens_sync(["a", "b"])


async def test_get_or_capture_async_face(private_cache: YokedCache, counter: CommandCounter) -> None:
    cache = private_cache
    await cache.get_or_capture("warm", ["a"])
    counter.start()
    value, tokens = await cache.get_or_capture("k", ["a"])
    assert counter.delta() == {"evalsha": 1, "get": 2}
    assert value is None and tokens == await cache.capture_tokens(["a"])
    assert await cache.store_computed("k", "v", tokens, ["a"]) == "stored"
    assert await cache.get_or_capture("k", ["a"]) == ("v", None)
    await cache.disconnect()


def test_get_or_capture_of_garbage_is_a_miss_with_tokens(
    private_cache: YokedCache, unix_redis: PrivateRedis
) -> None:
    cache = private_cache
    _, full = cache._full("bad")
    unix_redis.client().rpush(full, "not a string entry")
    value, tokens = cache.get_or_capture_sync("bad", ["a"], "D")
    assert value == "D" and tokens == cache.capture_tokens_sync(["a"])


def test_a_corrupted_token_is_a_miss_never_an_error(
    private_cache: YokedCache, unix_redis: PrivateRedis
) -> None:
    """A token key holding bytes that are not ours: reads and captures go on, nothing is stored under
    it, and the next invalidation of the tag heals it."""
    cache = private_cache
    cache.capture_tokens_sync(["a"])
    token_key = next(k for k in unix_redis.client().keys("*") if k.endswith(b":t:a"))
    unix_redis.client().set(token_key, b"\xff\xfe")

    value, tokens = cache.get_or_capture_sync("k", ["a"], "D")
    assert value == "D" and tokens is not None
    assert cache.capture_tokens_sync(["a"]) == tokens
    assert cache.store_computed_sync("k", 1, tokens, ["a"]) == "stale"  # never stored under garbage
    assert cache.get_sync("k", "absent") == "absent"

    cache.invalidate_tags_sync("a")
    tokens = cache.capture_tokens_sync(["a"])
    assert cache.store_computed_sync("k", 2, tokens, ["a"]) == "stored"
    assert cache.get_sync("k") == 2


def test_an_unawaited_store_is_checked_and_seen_by_the_next_read(
    private_cache: YokedCache, counter: CommandCounter
) -> None:
    cache = private_cache
    cache.get_sync("warm")
    tokens = cache.capture_tokens_sync(["a"])

    counter.start()
    assert cache.store_computed_sync("k", {"v": 1}, tokens, ["a"], wait=False) == "sent"
    assert cache.get_sync("k") == {"v": 1}  # the same connection: the store ran first
    assert counter.delta() == {"eval": 1, "get": 1 + 2, "set": 1, "incrby": 1, "evalsha": 1}

    cache.invalidate_tags_sync("a")  # the captured token is no longer current: the store is refused
    assert cache.store_computed_sync("k2", "old", tokens, ["a"], wait=False) == "sent"
    assert cache.get_sync("k2", "absent") == "absent"


def test_an_unawaited_store_survives_a_server_restart_without_hanging(prefix: str) -> None:
    """The reply owed by a connection whose server went away is never waited for."""
    from .redis_server import RedisServer

    server = RedisServer().start()
    cache = YokedCache(redis_url=server.url, key_prefix=prefix, operation_timeout=1.0)
    try:
        tokens = cache.capture_tokens_sync(["a"])
        assert cache.store_computed_sync("k", 1, tokens, ["a"], wait=False) == "sent"
        server.restart()
        started = time.monotonic()
        assert cache.get_sync("k", "gone") == "gone"  # a new server: empty, and no wait for the old reply
        assert cache.get_sync("k", "gone") == "gone"
        assert time.monotonic() - started < 5
        tokens = cache.capture_tokens_sync(["a"])
        assert cache.store_computed_sync("k", 2, tokens, ["a"], wait=False) == "sent"
        assert cache.get_sync("k") == 2
    finally:
        cache.disconnect_sync()
        server.cleanup()


def test_an_unawaited_store_to_a_stalled_server_degrades_to_one_quick_miss(prefix: str) -> None:
    """The owed reply of a paused (SIGSTOP) server is waited for once, within the operation timeout, and
    the next command gives up with it instead of waiting a second time."""
    from .redis_server import RedisServer

    server = RedisServer().start()
    cache = YokedCache(redis_url=server.url, key_prefix=prefix, operation_timeout=0.3)
    observer = redis.Redis(port=server.port)
    try:
        tokens = cache.capture_tokens_sync(["a"])
        accepted = observer.info("stats")["total_connections_received"]
        server.pause()
        try:
            assert cache.store_computed_sync("k", 1, tokens, ["a"], wait=False) == "sent"
            started = time.monotonic()
            assert cache.get_sync("k", "fallback") == "fallback"
            elapsed = time.monotonic() - started
        finally:
            server.resume()
        # 0.3 s timeout; generous for a shared machine, far below the connection timeout
        assert elapsed < 3, elapsed
        # the get gave up with the owed reply's timeout: it did not open a new connection to wait again
        assert observer.info("stats")["total_connections_received"] == accepted
    finally:
        observer.close()
        cache.disconnect_sync()
        server.cleanup()


async def test_invalidating_a_tag_on_20000_entries_is_one_constant_script_call(
    private_cache: YokedCache, counter: CommandCounter, unix_redis: PrivateRedis
) -> None:
    cache = private_cache
    big = {f"e{i}": i for i in range(20_000)}
    assert await cache.set_many(big, ttl=600, tags="big") is True
    assert await cache.set("lonely", 1, tags="small") is True
    await cache.invalidate_tags("warm-up")
    observer = counter.observer
    size_before = observer.dbsize()

    counter.start()
    assert await cache.invalidate_tags("small") == 1
    small_cost = counter.delta()

    counter.start()
    assert await cache.invalidate_tags("big") == 20_000
    big_cost = counter.delta()

    expected = {"evalsha": 1, "set": 1, "get": 1, "del": 1}  # new token, read + drop the write count
    assert small_cost == expected
    assert big_cost == expected
    assert observer.dbsize() == size_before - 2  # only the two write counters went; no entry was touched

    # every entry is a miss for another instance (a fresh client: what another process sees)
    other = YokedCache(
        redis_url=unix_url(unix_redis), key_prefix=cache.config.key_prefix, operation_timeout=5.0
    )
    found = other.get_many_sync(list(big))
    assert sum(v is not None for v in found.values()) == 0
    assert other.get_stats_sync().errors == 0  # really read as misses, not a timed-out read's defaults
    assert await cache.get("lonely") is None
    assert await cache.set("e1", "new", tags="big") is True  # writing after the invalidation is live
    assert other.get_sync("e1") == "new"
    other.disconnect_sync()
    await cache.disconnect()


def test_invalidation_from_another_process(shared_cache: YokedCache, redis_url: str, prefix: str) -> None:
    shared_cache.set_many_sync({f"k{i}": i for i in range(100)}, tags="cross")
    shared_cache.set_sync("other-tag", 1, tags="unrelated")
    assert shared_cache.get_sync("k5") == 5
    code = (
        "import sys\n"
        "from yokedcache import YokedCache\n"
        "cache = YokedCache(redis_url=sys.argv[1], key_prefix=sys.argv[2])\n"
        "print(cache.invalidate_tags_sync('cross'))\n"
    )
    child = subprocess.run([sys.executable, "-c", code, redis_url, prefix], capture_output=True, text=True,
                           timeout=60, check=True)
    assert child.stdout.strip() == "100"
    assert shared_cache.get_many_sync([f"k{i}" for i in range(100)]) == {f"k{i}": None for i in range(100)}
    assert shared_cache.get_sync("other-tag") == 1


# --- tokens --------------------------------------------------------------------------------------------


def test_a_token_deleted_from_redis_makes_its_entries_misses(
    shared_cache: YokedCache, raw: redis.Redis, prefix: str
) -> None:
    shared_cache.set_sync("a", "A", tags=["evicted", "kept"])
    shared_cache.set_sync("b", "B", tags="kept")
    token_key = f"{prefix}:__yc__:t:evicted"
    assert raw.exists(token_key) == 1
    assert raw.delete(token_key) == 1  # as if Redis evicted or lost it
    assert shared_cache.get_sync("a", "miss") == "miss"
    assert shared_cache.get_sync("b") == "B"
    assert raw.exists(f"{prefix}:a") == 0  # purged on read


def test_a_recreated_token_never_revives_old_entries(
    shared_cache: YokedCache, raw: redis.Redis, prefix: str
) -> None:
    shared_cache.set_sync("old", "O", tags="t")
    raw.delete(f"{prefix}:__yc__:t:t")
    assert shared_cache.set_sync("new", "N", tags="t") is True  # recreates the token with a new value
    assert shared_cache.get_sync("new") == "N"
    assert shared_cache.get_sync("old", "miss") == "miss"
    assert shared_cache.get_keys_by_tag_sync("t") == ["new"]


# --- URL forms and authentication ---------------------------------------------------------------------------


async def test_unix_socket_url_with_a_database(unix_redis: PrivateRedis, prefix: str) -> None:
    cache = YokedCache(redis_url=unix_url(unix_redis, db=3), key_prefix=prefix)
    assert await cache.set("k", "v") is True
    assert cache.get_sync("k") == "v"
    assert unix_redis.client(db=3).exists(f"{prefix}:k") == 1
    assert unix_redis.client(db=0).exists(f"{prefix}:k") == 0
    assert await cache.health() is True
    await cache.flush_all()
    await cache.disconnect()
    cache.disconnect_sync()


def test_redis_url_selects_the_database(auth_redis: PrivateRedis, prefix: str) -> None:
    cache = YokedCache(redis_url=f"redis://:s3cret%20pw@127.0.0.1:{auth_redis.port}/5", key_prefix=prefix)
    assert cache.set_sync("k", 1) is True
    assert cache.get_sync("k") == 1
    assert auth_redis.client(db=5).exists(f"{prefix}:k") == 1
    assert auth_redis.client(db=0).exists(f"{prefix}:k") == 0
    cache.flush_all_sync()
    cache.disconnect_sync()


async def test_password_and_acl_user(auth_redis: PrivateRedis, prefix: str) -> None:
    host = f"127.0.0.1:{auth_redis.port}"
    with_password = YokedCache(redis_url=f"redis://:s3cret%20pw@{host}/0", key_prefix=prefix)
    as_alice = YokedCache(redis_url=f"redis://alice:alice-pw@{host}/0", key_prefix=prefix)
    assert await with_password.set("k", "v", tags="t") is True
    assert as_alice.get_sync("k") == "v"
    assert await as_alice.get("k") == "v"
    assert await as_alice.invalidate_tags("t") == 1
    assert with_password.get_sync("k", "gone") == "gone"
    users = {client["user"] for client in auth_redis.client().client_list()}
    assert "alice" in users  # really authenticated as the ACL user
    for cache in (with_password, as_alice):
        assert await cache.health() is True
        await cache.flush_all()
        await cache.disconnect()
        cache.disconnect_sync()


async def test_a_wrong_password_degrades_or_raises_without_leaking_it(auth_redis: PrivateRedis) -> None:
    url = f"redis://alice:WRONG-pw@127.0.0.1:{auth_redis.port}/0"
    lenient = YokedCache(redis_url=url, key_prefix="yctwrong", connection_retries=0)
    assert await lenient.get("k", "D") == "D"
    assert lenient.get_sync("k", "D") == "D"
    assert await lenient.set("k", 1) is False
    assert await lenient.health() is False
    assert (await lenient.get_stats()).errors >= 3
    strict = YokedCache(redis_url=url, key_prefix="yctwrong", connection_retries=0, fallback_enabled=False)
    with pytest.raises(CacheConnectionError) as info:
        await strict.connect()
    assert "WRONG-pw" not in str(info.value)
    with pytest.raises(CacheConnectionError):
        strict.get_sync("k")
    for cache in (lenient, strict):
        await cache.disconnect()


async def test_an_unreachable_server_is_reported_not_raised() -> None:
    url = f"redis://127.0.0.1:{_free_port()}/0"
    cache = YokedCache(redis_url=url, key_prefix="yctdown", connection_retries=0, connection_timeout=1)
    assert await cache.get("k", "D") == "D"
    assert cache.set_sync("k", 1) is False
    assert await cache.health() is False
    report = await cache.detailed_health_check()
    assert report["status"] == "unhealthy"
    assert report["redis_connected"] is False
    assert report["latency_ms"] is None
    assert report["error"]
    assert (await cache.get_stats()).errors >= 2
    await cache.disconnect()


# --- the pool ---------------------------------------------------------------------------------------------


def connections_named(server: PrivateRedis, name: str) -> int:
    return sum(1 for client in server.client().client_list() if client.get("name") == name)


async def test_a_small_pool_waits_instead_of_failing(unix_redis: PrivateRedis, prefix: str) -> None:
    name = f"pool-{uuid.uuid4().hex[:8]}"
    cache = YokedCache(redis_url=unix_url(unix_redis), key_prefix=prefix, max_connections=2,
                       connection_pool_kwargs={"client_name": name}, fallback_enabled=False)
    await cache.set_many({f"k{i}": i for i in range(50)})
    results = await asyncio.gather(*(cache.get(f"k{i}") for i in range(50)))
    assert results == list(range(50))
    assert (await cache.get_stats()).errors == 0
    assert 1 <= connections_named(unix_redis, name) <= 2

    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(20):
                assert cache.get_sync(f"k{(n * 20 + i) % 50}") == (n * 20 + i) % 50
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert connections_named(unix_redis, name) <= 4  # two per pool: the async one and the sync one
    health = cache.detailed_health_check_sync()
    assert health["connection_pool"]["max"] == 2
    assert health["connection_pool"]["in_use"] == 0
    await cache.flush_all()
    await cache.disconnect()


# --- namespaces -------------------------------------------------------------------------------------------


async def test_flush_all_removes_only_this_prefix(redis_url: str, prefix: str, raw: redis.Redis) -> None:
    mine = YokedCache(redis_url=redis_url, key_prefix=prefix)
    longer = YokedCache(redis_url=redis_url, key_prefix=prefix + "x")  # shares our prefix as a string
    stranger = f"other{uuid.uuid4().hex[:8]}:x"
    raw.set(stranger, b"raw")
    raw.set(prefix, b"bare")  # our prefix without the colon
    try:
        await mine.set_many({f"k{i}": i for i in range(30)}, tags="t")
        await mine.invalidate_tags("t2")
        await longer.set("k", 1, tags="t")
        assert await mine.flush_all() is True
        assert list(raw.scan_iter(match=f"{prefix}:*")) == []  # entries, tokens and counters
        assert await mine.get_all_keys() == []
        assert await longer.get("k") == 1
        assert await longer.invalidate_tags("t") == 1  # its token and counter survived
        assert raw.get(stranger) == b"raw"
        assert raw.get(prefix) == b"bare"
        assert raw.dbsize() >= 2
    finally:
        raw.delete(stranger, prefix)
        for cache in (mine, longer):
            await cache.flush_all()
            await cache.disconnect()


# --- garbage and odd values ---------------------------------------------------------------------------------


async def test_keys_of_another_type_under_the_prefix_are_misses(
    shared_cache: YokedCache, raw: redis.Redis, prefix: str
) -> None:
    raw.rpush(f"{prefix}:list", "x")
    raw.hset(f"{prefix}:hash", "f", "v")
    cache = shared_cache
    for key in ("list", "hash"):
        assert await cache.get(key, "D") == "D"
        assert cache.get_sync(key, "D") == "D"
        assert await cache.exists(key) is False
        assert await cache.ttl(key) is None
        assert cache.ttl_sync(key) is None
        assert await cache.expire(key, 10) is False
        assert await cache.get_meta(key) is None
        assert await cache.get_many([key]) == {key: None}
    assert await cache.set("fine", 1, tags="t") is True
    assert await cache.get_all_keys() == ["fine"]
    assert cache.get_keys_by_pattern_sync("*") == ["fine"]
    assert await cache.get_keys_by_tag("t") == ["fine"]
    assert await cache.invalidate_pattern("*") == 1
    assert await cache.delete("list") is False  # not a live entry, but removed
    assert raw.exists(f"{prefix}:list") == 0
    assert await cache.set("hash", {"now": "a string"}) is True  # a write replaces it
    assert await cache.get("hash") == {"now": "a string"}


async def test_garbage_in_token_and_counter_keys_does_not_break_writes(
    shared_cache: YokedCache, raw: redis.Redis, prefix: str
) -> None:
    raw.rpush(f"{prefix}:__yc__:t:t", "x")
    raw.set(f"{prefix}:__yc__:n:t", "not a number")
    raw.rpush(f"{prefix}:__yc__:t:u", "x")
    cache = shared_cache
    assert await cache.set("a", 1, tags="t") is True
    assert await cache.get("a") == 1
    assert await cache.invalidate_tags("t") == 1
    assert await cache.get("a") is None
    assert await cache.get_or_set("b", lambda: 2, tags="u") == 2
    assert cache.get_sync("b") == 2


@pytest.mark.parametrize("tags", [None, ["x", "y"]])
async def test_values_with_frame_separators_round_trip(shared_cache: YokedCache, tags: Any) -> None:
    values = {
        "bytes": b"\x1d\x1e\x1f\x00\xff",
        "text": "a\x1db\x1ec\x1fd",
        "nested": {"\x1d": ["\x1e", b"\x1f"]},
    }
    for key, value in values.items():
        assert await shared_cache.set(key, value, tags=tags) is True
    for key, value in values.items():
        assert await shared_cache.get(key) == value
        assert shared_cache.get_sync(key) == value
        assert (await shared_cache.get_meta(key))["tags"] == sorted(tags or [])
