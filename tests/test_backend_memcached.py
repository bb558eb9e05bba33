"""MemcachedBackend through YokedCache, against private memcached servers started here.

The API suite of ``test_cache_api`` (both faces) is re-collected against memcached, except the tests that
list keys (memcached cannot enumerate them: listings raise ``CacheError``) or read the namespace's key count
(memcached only reports whole-server counts); those have memcached versions below. Then: hashed keys, flush
by generation, several servers, garbage, outages, oversized values, other processes.

The ``memcached`` binary is required: without it these tests skip (with CI=true they fail);
``scripts/ensure-memcached.sh`` installs it.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest

from tests import test_cache_api as _suite
from tests.api_faces import Api
from yokedcache import CacheConnectionError, CacheError, CacheStats, YokedCache
from yokedcache.backends.memcached import MemcachedBackend
from yokedcache.backends.memory import MemoryBackend

IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class MemcachedServer:
    """A private ``memcached -p <free port> -U 0 -l 127.0.0.1`` process."""

    def __init__(self, memory_mb: int = 64, port: int | None = None) -> None:
        binary = shutil.which("memcached")
        if binary is None:
            reason = "memcached binary not found (run scripts/ensure-memcached.sh)"
            if IN_CI:
                pytest.fail(f"CI=true and {reason}")
            pytest.skip(reason)
        self.port = port or free_port()
        args = [binary, "-p", str(self.port), "-U", "0", "-l", "127.0.0.1", "-m", str(memory_mb)]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            args += ["-u", "root"]  # memcached refuses to run as root without it
        self.process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2) as sock:
                    sock.sendall(b"version\r\n")
                    if sock.recv(64).startswith(b"VERSION"):
                        return
            except OSError:
                if self.process.poll() is not None:
                    break
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"memcached on port {self.port} did not start")

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def items(self) -> int:
        with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
            sock.sendall(b"stats\r\n")
            data = b""
            while not data.endswith(b"END\r\n"):
                data += sock.recv(65536)
        for line in data.decode().splitlines():
            if line.startswith("STAT curr_items "):
                return int(line.split()[2])
        return 0

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait(timeout=10)
        if self.process.stderr is not None:
            self.process.stderr.close()


@pytest.fixture(scope="module")
def memcached() -> Iterator[MemcachedServer]:
    server = MemcachedServer()
    yield server
    server.stop()


# --- the API suite, against memcached -----------------------------------------------------------------------

_NEEDS_LISTINGS_OR_KEY_COUNT = {
    "test_entries_really_expire",
    "test_invalidate_pattern_uses_globs_on_user_keys",
    "test_flush_all_empties_this_prefix",
    "test_listings_return_live_user_keys",
    "test_get_stats_counts_every_operation",
    "test_a_fresh_cache_has_zero_stats",
    "test_routed_prefixes_live_on_their_own_backend",
}
globals().update(
    {
        name: obj
        for name, obj in vars(_suite).items()
        if (name.startswith("test_") and name not in _NEEDS_LISTINGS_OR_KEY_COUNT) or name in ("api", "face")
    }
)


@pytest.fixture
def backend_kind() -> str:
    return "memcached"


@pytest.fixture
def cache_config(prefix: str, memcached: MemcachedServer) -> dict[str, object]:
    return {"key_prefix": prefix, "ttl_jitter_percent": 0, "backend": MemcachedBackend([memcached.address])}


@pytest.fixture
async def second_view(
    cache: YokedCache, memcached: MemcachedServer
) -> AsyncIterator[Callable[..., YokedCache]]:
    made: list[YokedCache] = []

    def make(**options: Any) -> YokedCache:
        base: dict[str, Any] = {"key_prefix": cache.config.key_prefix, "ttl_jitter_percent": 0}
        other = YokedCache(**{**base, "backend": MemcachedBackend([memcached.address]), **options})
        made.append(other)
        return other

    yield make
    for other in made:
        await other.disconnect()


def mc_cache(servers: list[str], prefix: str | None = None, **options: Any) -> YokedCache:
    backend = options.pop("backend", None) or MemcachedBackend(servers, connection_timeout=2)
    return YokedCache(
        backend=backend, key_prefix=prefix or f"yct{uuid.uuid4().hex[:10]}", ttl_jitter_percent=0, **options
    )


# --- memcached versions of the suite tests that list keys or count them -------------------------------------


@pytest.mark.parametrize(
    "call",
    [
        ("get_keys_by_pattern", "a*"),
        ("get_all_keys",),
        ("invalidate_pattern", "a*"),
        ("get_keys_by_tag", "t"),
    ],
)
async def test_listings_and_patterns_raise_cache_error_even_with_fallback(
    api: Api, call: tuple[str, ...]
) -> None:
    await api("set", "a1", 1, tags="t")
    with pytest.raises(CacheError, match="not supported by the memcached backend") as info:
        await api(*call)
    assert not isinstance(info.value, CacheConnectionError)  # not an outage: fallback does not hide it
    assert await api("get", "a1") == 1  # and nothing was changed
    assert (await api("get_stats")).errors == 0


async def test_fuzzy_search_raises_cache_error(cache_config: dict[str, Any]) -> None:
    pytest.importorskip("rapidfuzz")
    cache = YokedCache(**cache_config, enable_fuzzy=True)
    with pytest.raises(CacheError, match="memcached"):
        await cache.fuzzy_search("x")


async def test_entries_really_expire_to_the_millisecond(cache: YokedCache) -> None:
    assert await cache.set("async", 1, ttl=0.3) is True
    assert cache.set_sync("sync", 2, ttl=0.3) is True
    assert await cache.set_many({"m1": 3, "m2": 4}, ttl=0.3) is True
    assert await cache.set("shortened", 5, ttl=100) is True
    assert await cache.expire("shortened", 0.3) is True
    assert await cache.set("long", 6, ttl=100) is True
    keys = ["async", "sync", "m1", "m2", "shortened"]
    assert await cache.get_many(keys) == {"async": 1, "sync": 2, "m1": 3, "m2": 4, "shortened": 5}
    await asyncio.sleep(0.4)  # memcached's own expiry has whole seconds; the frame deadline does not
    for key in keys:
        assert await cache.get(key, "D") == "D"
        assert cache.get_sync(key, "D") == "D"
        assert await cache.exists(key) is False
        assert await cache.ttl(key) is None
    assert await cache.get("long") == 6


async def test_flush_all_empties_this_prefix_in_every_process(
    api: Api, second_view: Callable[..., YokedCache], memcached: MemcachedServer
) -> None:
    other = second_view()
    neighbour = mc_cache([memcached.address], api.cache.config.key_prefix + "x")
    await api("set_many", {f"k{i}": i for i in range(20)}, tags=["t"])
    await api("set", "solo", 1)
    neighbour.set_sync("k1", "theirs", tags=["t"])
    assert await other.get("k1") == 1
    assert await api("flush_all") is True
    assert await api("get_many", ["k1", "solo"]) == {"k1": None, "solo": None}
    assert await other.get("k1") is None  # the other instance sees the new generation at once
    assert other.get_sync("solo") is None
    assert await api("set", "after", 1, tags=["t"]) is True  # usable afterwards, tags included
    assert await other.get("after") == 1
    assert await other.invalidate_tags("t") == 1  # only the write since the flush
    assert await api("get", "after") is None
    assert neighbour.get_sync("k1") == "theirs"  # another prefix is untouched
    assert neighbour.invalidate_tags_sync("t") == 1


async def test_get_stats_counts_every_operation(api: Api, memcached: MemcachedServer) -> None:
    await api("set", "a", 1)
    await api("set", "b", "x" * 100)
    assert await api("get", "a") == 1
    assert await api("get", "zz") is None
    await api("get_many", ["a", "zz"])
    assert await api("get_or_set", "a", lambda: 0) == 1
    assert await api("delete", "a") is True
    await api("invalidate_tags", ["t1", "t2"])
    stats = await api("get_stats")
    assert isinstance(stats, CacheStats)
    assert (stats.cache_hits, stats.cache_misses, stats.sets, stats.deletes) == (3, 2, 2, 1)
    assert (stats.invalidations, stats.errors) == (2, 0)
    assert stats.hit_rate == pytest.approx(0.6)
    # memcached cannot count one namespace: key_count and memory are the whole server's
    assert stats.key_count == memcached.items() >= 1
    assert stats.memory_usage_mb > 0


async def test_routed_prefixes_spanning_memcached(cache_config: dict[str, Any], face: str) -> None:
    hot = MemoryBackend(max_size=100)
    routed = YokedCache(**cache_config, prefix_backends={"hot": hot})
    api = Api(routed, face)
    ns = routed.config.key_prefix
    assert await api("set_many", {"hot:1": 1, "cold:1": 2}, tags="t") is True
    assert hot.get(f"{ns}:hot:1") is not None and hot.get(f"{ns}:cold:1") is None
    assert (await api("detailed_health_check"))["routes"] == {"hot": "memory"}
    assert await api("invalidate_tags", "t") == 2  # spans both backends
    assert await api("get_many", ["hot:1", "cold:1"]) == {"hot:1": None, "cold:1": None}
    with pytest.raises(CacheError):
        await api("get_all_keys")  # one backend cannot list: the listing as a whole raises
    await api("set_many", {"hot:2": 2, "cold:2": 2})
    assert await api("flush_all") is True
    assert await api("get_many", ["hot:2", "cold:2"]) == {"hot:2": None, "cold:2": None}
    await routed.disconnect()


# --- keys ---------------------------------------------------------------------------------------------------


async def test_any_key_round_trips_and_memcached_keys_are_hashed(api: Api) -> None:
    backend = api.cache.backend
    assert isinstance(backend, MemcachedBackend)
    odd = ["with space", "tab\there", "new\nline", "ünïcödé ☃", "k" * 5000, "\x00\x7f", "a:b:c", "__yc_:x"]
    assert await api("set_many", {k: k for k in odd}, tags=["ünï tag", "t" * 400]) is True
    assert await api("get_many", odd) == {k: k for k in odd}
    for key in odd:
        stored = backend.entry_key(api.cache.full_key(key))
        assert stored is not None and len(stored) <= 250
        assert stored.isascii() and stored.isprintable() and " " not in stored
    assert await api("invalidate_tags", "t" * 400) == len(odd)
    assert await api("get_many", odd) == dict.fromkeys(odd)


def test_server_specs_and_the_rendezvous_map_match_pymemcache_hashclient() -> None:
    from pymemcache.client.hash import HashClient

    backend = MemcachedBackend(["10.0.0.1:11211", ("10.0.0.2", 11212), "10.0.0.3", "[::1]:11213"])
    assert list(backend.servers) == ["10.0.0.1:11211", "10.0.0.2:11212", "10.0.0.3:11211", "::1:11213"]
    assert MemcachedBackend("h1:1,h2:2").servers == {"h1:1": ("h1", 1), "h2:2": ("h2", 2)}
    reference = HashClient([("10.0.0.1", 11211), ("10.0.0.2", 11212), ("10.0.0.3", 11211), ("::1", 11213)])
    for i in range(200):
        key = f"yc:e:{i:064x}"
        assert backend._node(key) == reference.hasher.get_node(key)
    for bad in ([], ["host:notaport"], [42]):
        with pytest.raises(ValueError):
            MemcachedBackend(bad)
    with pytest.raises(ValueError):
        MemcachedBackend(connection_timeout=0)
    assert MemcachedBackend(
        behaviors={"tcp_nodelay": False, "ketama": True, "connect_timeout": 250}
    )._options["connect_timeout"] == pytest.approx(0.25)

    from yokedcache import backends

    assert backends.MemcachedBackend is MemcachedBackend


# --- several servers ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("face_name", ["async", "sync"])
async def test_several_servers_share_the_keys_consistently(
    memcached: MemcachedServer, face_name: str
) -> None:
    second = MemcachedServer()
    try:
        servers = [memcached.address, second.address]
        before = (memcached.items(), second.items())
        cache = mc_cache(servers)
        api = Api(cache, face_name)
        mapping = {f"key{i}": i for i in range(60)}
        assert await api("set_many", mapping, tags=["t"]) is True
        grown = (memcached.items() - before[0], second.items() - before[1])
        assert min(grown) >= 10  # spread over both servers
        assert await api("get_many", list(mapping)) == mapping
        other = mc_cache(servers, cache.config.key_prefix)  # its own clients: same key -> same server
        assert await other.get_many(list(mapping)) == mapping
        assert await other.invalidate_tags("t") == 60
        assert await api("get_many", list(mapping)) == dict.fromkeys(mapping)
        await api("set", "x", 1)
        assert await api("flush_all") is True
        assert await other.get("x") is None
        await cache.disconnect()
        await other.disconnect()
    finally:
        second.stop()


# --- garbage, outages, limits -------------------------------------------------------------------------------


@pytest.mark.parametrize("face_name", ["async", "sync"])
async def test_garbage_bytes_in_memcached_are_a_miss(memcached: MemcachedServer, face_name: str) -> None:
    from pymemcache.client.base import Client

    cache = mc_cache([memcached.address])
    api = Api(cache, face_name)
    backend = cache.backend
    assert isinstance(backend, MemcachedBackend)
    raw = Client(("127.0.0.1", memcached.port), default_noreply=False)  # waits for each reply
    await api("set", "frame", 1)
    await api("set", "body", 2, tags=["t"])
    await api("set", "header", 3, tags=["t"])
    frame_key, body_key, header_key = (
        backend.entry_key(cache.full_key(k)) for k in ("frame", "body", "header")
    )
    raw.set(frame_key, b"\x00garbage, not a frame")
    stored = raw.get(body_key)
    raw.set(body_key, stored[:-3] + b"\xff\xfe\xfd")  # a valid frame around a broken envelope
    header = raw.get(header_key)
    raw.set(header_key, header[:20] + b"\xff" + header[21:])  # a frame whose header is not UTF-8
    for key in ("frame", "body", "header"):
        assert await api("get", key, "D") == "D"
        assert await api("exists", key) is False
        assert await api("get_meta", key) is None
    assert await api("set", "frame", 4) is True
    assert await api("get", "frame") == 4
    raw.close()


async def test_a_lost_generation_empties_the_namespace_never_serves_stale(memcached: MemcachedServer) -> None:
    from pymemcache.client.base import Client

    cache = mc_cache([memcached.address])
    other = mc_cache([memcached.address], cache.config.key_prefix)
    await cache.set("k", 1, tags=["t"])
    assert await other.get("k") == 1
    backend = cache.backend
    assert isinstance(backend, MemcachedBackend)
    raw = Client(("127.0.0.1", memcached.port), default_noreply=False)
    raw.delete(backend._gen_key())  # as eviction or a restart would
    assert await other.get("k") is None
    assert cache.get_sync("k") is None
    assert await cache.set("k", 2, tags=["t"]) is True
    assert await other.get("k") == 2
    raw.delete(backend._token_key(backend._known_gen(), "t"))  # a lost tag token
    assert await other.get("k") is None
    raw.close()


@pytest.mark.parametrize("face_name", ["async", "sync"])
async def test_an_unreachable_server_is_a_connection_error(face_name: str) -> None:
    dead = f"127.0.0.1:{free_port()}"
    tolerant = Api(mc_cache([dead], connection_retries=0), face_name)
    assert await tolerant("set", "k", 1) is False
    assert await tolerant("get", "k", "D") == "D"
    assert await tolerant("invalidate_tags", "t") == 0
    assert await tolerant("health") is False
    report = await tolerant("detailed_health_check")
    assert report["status"] == "unhealthy" and report["backend_type"] == "memcached"
    assert (await tolerant("get_stats")).errors >= 2
    strict = Api(mc_cache([dead], connection_retries=0, fallback_enabled=False), face_name)
    with pytest.raises(CacheConnectionError, match=r"memcached at 127\.0\.0\.1"):
        await strict("get", "k")


@pytest.mark.parametrize("face_name", ["async", "sync"])
async def test_a_server_that_dies_and_comes_back(face_name: str) -> None:
    server = MemcachedServer()
    port = server.port
    cache = mc_cache([server.address], connection_retries=0)
    api = Api(cache, face_name)
    try:
        assert await api("set", "k", 1) is True
        server.stop()
        assert await api("get", "k", "D") == "D"
        assert await api("set", "k", 2) is False
        server = MemcachedServer(port=port)
        deadline = time.monotonic() + 5
        while not await api("set", "k", 3) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert await api("get", "k") == 3  # reconnected; the old data died with the server
    finally:
        server.stop()
        await cache.disconnect()


async def test_a_value_over_the_item_size_limit_is_not_stored(api: Api) -> None:
    huge = os.urandom(2 * 1024 * 1024).hex()  # memcached's default item limit is 1 MiB
    assert await api("set", "huge", huge) is False
    assert await api("set_many", {"huge": huge, "small": 1}) is False  # not all stored
    assert await api("get", "huge", "D") == "D"
    assert await api("get", "small") == 1  # the connection is still in sync
    assert await api("set", "k", "ok") is True
    assert await api("get", "k") == "ok"
    assert (await api("get_stats")).errors == 0


async def test_two_event_loops_and_threads_share_one_backend(memcached: MemcachedServer) -> None:
    import threading

    cache = mc_cache([memcached.address])
    await cache.set("k", 1)

    def in_other_loop() -> Any:
        return asyncio.run(cache.get("k"))

    results: list[Any] = []
    threads = [threading.Thread(target=lambda: results.append(in_other_loop())) for _ in range(4)]
    threads += [threading.Thread(target=lambda: results.append(cache.get_sync("k"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [1] * 8
    assert await cache.get("k") == 1
    await cache.disconnect()


# --- tags, counters, stale writes, lock, other processes ----------------------------------------------------


async def test_a_write_computed_before_an_invalidation_is_refused(memcached: MemcachedServer) -> None:
    cache = mc_cache([memcached.address])
    other = mc_cache([memcached.address], cache.config.key_prefix)
    tokens = await cache.capture_tokens(["t", "u"], "k")
    assert tokens is not None and len(tokens) == 2
    assert cache.capture_tokens_sync(["t", "u"], "k") == tokens  # stable until invalidated
    await other.invalidate_tags("u")
    assert await cache.store_computed("k", "old", tokens, ["t", "u"]) == "stale"
    assert await cache.exists("k") is False
    assert (
        cache.store_computed_sync("k", "new", cache.capture_tokens_sync(["t", "u"], "k"), ["t", "u"])
        == "stored"
    )
    assert await other.get("k") == "new"


async def test_shared_counters_add_up_and_flush_resets_them(memcached: MemcachedServer) -> None:
    prefix = f"yct{uuid.uuid4().hex[:10]}"
    first = MemcachedBackend([memcached.address], key_prefix=prefix)
    second = MemcachedBackend([memcached.address], key_prefix=prefix)
    first.add_counters({"cache_hits": 3, "sets": 1})
    await second.aadd_counters({"cache_hits": 2, "errors": 0})
    assert first.read_counters() == {"cache_hits": 5, "sets": 1}
    assert await second.aread_counters() == {"cache_hits": 5, "sets": 1}
    first.flush()
    assert second.read_counters() == {}


async def test_the_compute_lock_is_exclusive_and_expires(memcached: MemcachedServer) -> None:
    prefix = f"yct{uuid.uuid4().hex[:10]}"
    first = MemcachedBackend([memcached.address], key_prefix=prefix)
    second = MemcachedBackend([memcached.address], key_prefix=prefix)
    key = f"{prefix}:k"
    assert first.acquire_lock(key, "a", 10_000) is True
    assert await second.aacquire_lock(key, "b", 10_000) is False
    second.release_lock(key, "b")  # not the owner: no effect
    assert second.acquire_lock(key, "b", 10_000) is False
    started = time.monotonic()
    await second.await_for_release(key, 0.1)
    assert time.monotonic() - started >= 0.09
    await first.arelease_lock(key, "a")
    started = time.monotonic()
    second.wait_for_release(key, 5)
    assert time.monotonic() - started < 0.5
    assert second.acquire_lock(key, "b", 1) is True  # a 1 ms lease is 1 s on memcached
    first.flush()  # a flush drops locks too
    assert first.acquire_lock(key, "a", 10_000) is True


_CHILD = """
import asyncio, json, sys
from yokedcache import YokedCache
from yokedcache.backends.memcached import MemcachedBackend

server, prefix = sys.argv[1:]
cache = YokedCache(backend=MemcachedBackend([server]), key_prefix=prefix, ttl_jitter_percent=0)

async def main():
    seen = await cache.get("mine")
    invalidated = await cache.invalidate_tags("shared")
    stored = cache.set_sync("theirs", {"from": "child"}, ttl=60, tags=["child"])
    await cache.disconnect()
    return {"seen": seen, "invalidated": invalidated, "stored": stored}

print(json.dumps(asyncio.run(main())))
"""


async def test_a_second_process_sees_values_and_its_invalidations_are_seen(
    memcached: MemcachedServer,
) -> None:
    cache = mc_cache([memcached.address])
    assert await cache.set("mine", [1, 2], tags=["shared"]) is True
    assert await cache.set("untagged", "u") is True
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_CHILD), memcached.address, cache.config.key_prefix],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == {"seen": [1, 2], "invalidated": 1, "stored": True}
    assert await cache.get("mine", "D") == "D"
    assert cache.get_sync("untagged") == "u"
    assert await cache.get("theirs") == {"from": "child"}
    assert await cache.invalidate_tags("child") == 1
    assert cache.get_sync("theirs", "D") == "D"
    await cache.disconnect()
