"""Every operation of API.md §3.2 with its documented result, on memory and Redis, through both faces.

Each test takes ``api``: it calls the async method or its ``*_sync`` twin (the ``face`` parameter), so one
test pins down both faces on both backends. Sync calls made here run inside the test's event loop, which the
API allows (they block the thread for their I/O).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from tests.api_faces import Api
from yokedcache import CacheStats, YokedCache
from yokedcache.backends.memory import MemoryBackend


@pytest.fixture
async def second_view(cache: YokedCache, backend_kind: str) -> Any:
    """Another YokedCache on the same storage and prefix; on Redis it sees what another process sees."""
    made: list[YokedCache] = []

    def make(**options: Any) -> YokedCache:
        base: dict[str, Any] = {"key_prefix": cache.config.key_prefix, "ttl_jitter_percent": 0}
        if backend_kind == "redis":
            base["redis_url"] = cache.config.redis_url
        else:
            base["backend"] = cache.backend
        other = YokedCache(**{**base, **options})
        made.append(other)
        return other

    yield make
    for other in made:
        await other.disconnect()


# --- get / set ---------------------------------------------------------------------------------------


async def test_set_returns_true_and_get_returns_the_stored_value_with_its_type(api: Api) -> None:
    values: dict[str, Any] = {
        "dict": {"a": [1, 2, (3, 4)], "b": None},
        "str": "text",
        "int": 42,
        "float": 1.5,
        "bool": True,
        "bytes": b"\x00\xff",
        "tuple": (1, "x"),
        "set": {1, 2, 3},
        "list": [],
    }
    for key, value in values.items():
        assert await api("set", key, value) is True
    for key, value in values.items():
        got = await api("get", key)
        assert got == value
        assert type(got) is type(value)
    assert (await api("get", "tuple"))[0] == 1


async def test_get_default_tells_a_cached_none_from_a_miss(api: Api) -> None:
    assert await api("set", "none", None) is True
    assert await api("get", "none", default="D") is None
    assert await api("get", "none", "D") is None
    assert await api("get", "missing", default="D") == "D"
    assert await api("get", "missing") is None
    assert await api("exists", "none") is True
    stats = await api("get_stats")
    assert (stats.cache_hits, stats.cache_misses) == (2, 2)


async def test_set_replaces_value_and_tags(api: Api) -> None:
    assert await api("set", "k", 1, tags=["old"]) is True
    assert await api("set", "k", 2, tags="new") is True
    assert await api("get", "k") == 2
    assert (await api("get_meta", "k"))["tags"] == ["new"]
    assert await api("invalidate_tags", "old") == 1  # the first write carried it
    assert await api("get", "k") == 2  # the replaced entry no longer carries "old"


async def test_set_with_ttl_zero_removes_the_key(api: Api) -> None:
    assert await api("set", "k", "v") is True
    assert await api("set", "k", "other", ttl=0) is True
    assert await api("get", "k", "D") == "D"
    assert await api("exists", "k") is False
    assert await api("set", "never-there", 1, ttl=0) is True
    assert await api("exists", "never-there") is False


async def test_negative_ttl_is_a_value_error_and_stores_nothing(api: Api) -> None:
    with pytest.raises(ValueError):
        await api("set", "k", 1, ttl=-1)
    with pytest.raises(ValueError):
        await api("set_many", {"a": 1, "b": 2}, ttl=-5)
    assert await api("set", "live", 1) is True
    with pytest.raises(ValueError):
        await api("expire", "live", -1)
    assert await api("get_many", ["k", "a", "b"]) == {"k": None, "a": None, "b": None}
    assert await api("ttl", "live") == 300


# --- delete / exists / ttl / expire ------------------------------------------------------------------


async def test_delete_is_true_only_for_a_live_entry(api: Api) -> None:
    await api("set", "k", 1)
    assert await api("delete", "k") is True
    assert await api("delete", "k") is False
    assert await api("get", "k", "D") == "D"
    assert await api("delete", "never") is False
    await api("set", "tagged", 1, tags="t")
    await api("invalidate_tags", "t")
    assert await api("delete", "tagged") is False  # invalidated: not live


async def test_exists_and_get_do_not_touch_the_ttl(api: Api) -> None:
    await api("set", "k", "v", ttl=100)
    assert await api("expire", "k", 50) is True
    assert await api("exists", "k") is True
    assert await api("get", "k") == "v"
    assert await api("ttl", "k") == 50
    assert await api("exists", "missing") is False


async def test_ttl_is_remaining_seconds_rounded_up(api: Api) -> None:
    await api("set", "explicit", 1, ttl=100)
    await api("set", "default", 1)
    assert await api("ttl", "explicit") == 100
    assert await api("ttl", "default") == 300  # default_ttl
    assert await api("ttl", "missing") is None
    await api("set", "fraction", 1, ttl=2.5)
    assert await api("ttl", "fraction") == 3


async def test_expire_sets_the_exact_ttl_even_with_jitter(cache_config: dict[str, Any], face: str) -> None:
    jittery = YokedCache(**{**cache_config, "ttl_jitter_percent": 50})
    api = Api(jittery, face)
    try:
        for i in range(20):
            await api("set", f"k{i}", i, ttl=1000)
            assert await api("expire", f"k{i}", 37) is True
            assert await api("ttl", f"k{i}") == 37
        assert await api("expire", "missing", 10) is False
        assert await api("expire", "k0", 0) is True  # 0 deletes
        assert await api("exists", "k0") is False
        assert await api("expire", "k0", 10) is False
        await api("set", "tagged", 1, tags="t")
        await api("invalidate_tags", "t")
        assert await api("expire", "tagged", 10) is False
    finally:
        await jittery.flush_all()
        await jittery.disconnect()


async def test_entries_really_expire(cache: YokedCache) -> None:
    assert await cache.set("async", 1, ttl=1) is True
    assert cache.set_sync("sync", 2, ttl=1) is True
    assert await cache.set_many({"m1": 3, "m2": 4}, ttl=1) is True
    assert await cache.set("shortened", 5, ttl=100) is True
    assert await cache.expire("shortened", 1) is True
    assert await cache.set("long", 6, ttl=100) is True
    keys = ["async", "sync", "m1", "m2", "shortened"]
    assert await cache.get_many(keys) == {"async": 1, "sync": 2, "m1": 3, "m2": 4, "shortened": 5}
    await asyncio.sleep(1.15)
    for key in keys:
        assert await cache.get(key, "D") == "D"
        assert cache.get_sync(key, "D") == "D"
        assert await cache.exists(key) is False
        assert await cache.ttl(key) is None
    assert await cache.get_all_keys() == ["long"]
    assert await cache.get("long") == 6


async def test_jitter_keeps_ttls_within_the_percentage(cache_config: dict[str, Any], face: str) -> None:
    jittery = YokedCache(**{**cache_config, "ttl_jitter_percent": 20})
    api = Api(jittery, face)
    try:
        for i in range(30):
            await api("set", f"k{i}", i, ttl=100)
        await api("set_many", {f"m{i}": i for i in range(30)}, ttl=100)
        for i in range(10):
            await api("set", f"d{i}", i)  # default_ttl 300
        ttls = [await api("ttl", f"k{i}") for i in range(30)]
        ttls += [await api("ttl", f"m{i}") for i in range(30)]
        assert all(80 <= t <= 120 for t in ttls), ttls
        assert len(set(ttls)) >= 5  # really spread, not a constant
        defaults = [await api("ttl", f"d{i}") for i in range(10)]
        assert all(240 <= t <= 360 for t in defaults), defaults
    finally:
        await jittery.flush_all()
        await jittery.disconnect()


# --- get_or_set --------------------------------------------------------------------------------------


async def test_get_or_set_computes_once_then_serves_the_cache(api: Api) -> None:
    calls: list[int] = []

    def factory() -> dict[str, int]:
        calls.append(1)
        return {"v": len(calls)}

    assert await api("get_or_set", "k", factory, ttl=60, tags=["t"]) == {"v": 1}
    assert await api("get_or_set", "k", factory, ttl=60, tags=["t"]) == {"v": 1}
    assert len(calls) == 1
    assert await api("get", "k") == {"v": 1}
    assert await api("ttl", "k") == 60
    assert (await api("get_meta", "k"))["tags"] == ["t"]
    assert await api("invalidate_tags", "t") == 1
    assert await api("get_or_set", "k", factory, ttl=60, tags=["t"]) == {"v": 2}
    assert len(calls) == 2


async def test_get_or_set_stores_none(api: Api) -> None:
    calls: list[int] = []

    def factory() -> None:
        calls.append(1)

    assert await api("get_or_set", "k", factory) is None
    assert await api("get_or_set", "k", factory) is None
    assert calls == [1]
    assert await api("exists", "k") is True


async def test_get_or_set_propagates_exceptions_and_stores_nothing(api: Api) -> None:
    calls: list[int] = []

    def failing() -> int:
        calls.append(1)
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        await api("get_or_set", "k", failing)
    assert await api("exists", "k") is False
    with pytest.raises(RuntimeError):
        await api("get_or_set", "k", failing)
    assert len(calls) == 2  # the failure was not cached either
    assert await api("get_or_set", "k", lambda: 7) == 7
    assert await api("get", "k") == 7


async def test_get_or_set_accepts_an_async_factory(cache: YokedCache) -> None:
    async def factory() -> list[int]:
        await asyncio.sleep(0)
        return [1, 2]

    assert await cache.get_or_set("k", factory) == [1, 2]
    assert await cache.get("k") == [1, 2]


async def test_get_or_set_sync_refuses_an_async_factory(cache: YokedCache) -> None:
    async def factory() -> int:
        return 1

    with pytest.raises(TypeError):
        cache.get_or_set_sync("k", factory)
    assert await cache.exists("k") is False


async def test_get_or_set_is_single_flight(cache: YokedCache) -> None:
    calls = 0

    async def slow() -> str:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0.2)
        return "computed"

    results = await asyncio.gather(*(cache.get_or_set("k", slow, ttl=60) for _ in range(50)))
    assert results == ["computed"] * 50
    assert calls == 1
    assert await cache.get("k") == "computed"


async def test_get_or_set_never_stores_a_value_computed_across_an_invalidation(api: Api) -> None:
    def factory() -> str:
        api.cache.invalidate_tags_sync("t")  # a writer commits while the value is being computed
        return "stale"

    async def async_factory() -> str:
        await api.cache.invalidate_tags("t")
        return "stale"

    chosen = async_factory if api.face == "async" else factory
    assert await api("get_or_set", "k", chosen, tags="t") == "stale"
    assert await api("get", "k", "miss") == "miss"  # returned to its caller, never stored
    assert await api("get_or_set", "k", lambda: "fresh", tags="t") == "fresh"
    assert await api("get", "k") == "fresh"


@pytest.mark.parametrize("invalidator", ["same instance", "another instance"])
async def test_get_or_set_after_an_invalidation_never_joins_an_older_computation(
    cache: YokedCache, second_view: Any, invalidator: str
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def old() -> str:
        started.set()
        await release.wait()
        return "old"

    async def new() -> str:
        return "new"

    first = asyncio.create_task(cache.get_or_set("k", old, tags="t"))
    await asyncio.wait_for(started.wait(), 5)
    writer = cache if invalidator == "same instance" else second_view()
    await writer.invalidate_tags("t")  # returned: from now on no call may see "old"
    second = asyncio.create_task(cache.get_or_set("k", new, tags="t"))
    await asyncio.sleep(0.2)  # the second call is now waiting on the first one's flight
    release.set()
    assert await first == "old"  # it started before the invalidation: its own value is fine
    assert await second == "new"
    assert await cache.get("k") == "new"


async def test_huge_ttls_are_accepted_as_practically_forever(api: Api) -> None:
    for ttl in (10**9, 10**16, 10**20):
        assert await api("set", "k", 1, ttl=ttl) is True
        assert await api("get", "k") == 1
        assert await api("ttl", "k") >= 10**9
        assert await api("set", "tagged", 1, ttl=ttl, tags="t") is True
        assert await api("get", "tagged") == 1
        assert await api("expire", "k", ttl) is True
        assert await api("ttl", "k") >= 10**9
        assert await api("set_many", {"m": 1}, ttl=ttl) is True
        assert await api("get", "m") == 1


# --- batches -----------------------------------------------------------------------------------------


async def test_get_many_has_every_key_in_input_order(api: Api) -> None:
    await api("set", "a", 1)
    await api("set", "b", None)
    result = await api("get_many", ["b", "missing", "a"])
    assert result == {"b": None, "missing": None, "a": 1}
    assert list(result) == ["b", "missing", "a"]
    assert await api("get_many", []) == {}
    stats = await api("get_stats")
    assert (stats.cache_hits, stats.cache_misses) == (2, 1)


async def test_set_many_stores_all_with_ttl_and_tags(api: Api) -> None:
    mapping = {f"k{i}": {"i": i} for i in range(10)}
    assert await api("set_many", mapping, ttl=77, tags={"x", "y"}) is True
    assert await api("get_many", list(mapping)) == mapping
    assert await api("ttl", "k3") == 77
    assert (await api("get_meta", "k3"))["tags"] == ["x", "y"]
    assert await api("invalidate_tags", "y") == 10
    assert await api("get_many", list(mapping)) == dict.fromkeys(mapping)
    assert await api("set_many", {}) is True


async def test_set_many_with_ttl_zero_removes_the_keys(api: Api) -> None:
    await api("set_many", {"a": 1, "b": 2})
    assert await api("set_many", {"a": 3, "b": 4}, ttl=0) is True
    assert await api("get_many", ["a", "b"]) == {"a": None, "b": None}


async def test_delete_many_counts_live_entries_removed(api: Api) -> None:
    await api("set_many", {"a": 1, "b": 2, "c": 3})
    assert await api("delete_many", ["a", "b", "zz"]) == 2
    assert await api("get_many", ["a", "b", "c"]) == {"a": None, "b": None, "c": 3}
    assert await api("delete_many", []) == 0
    assert await api("delete_many", ["a"]) == 0
    assert (await api("get_stats")).deletes == 2


# --- tags and patterns --------------------------------------------------------------------------------


async def test_invalidate_tags_return_value_and_any_of_semantics(api: Api) -> None:
    await api("set", "a", "A", tags=["t1"])
    await api("set", "b", "B", tags=["t1", "t2"])
    await api("set", "c", "C", tags="t2")
    await api("set", "d", "D")
    assert await api("invalidate_tags", "t1") == 2  # a str is one tag; writes a and b carried it
    assert await api("get", "a") is None
    assert await api("get", "c") == "C"
    assert await api("get", "d") == "D"
    assert await api("invalidate_tags", "t1") == 0  # nothing written with it since
    assert await api("invalidate_tags", ["t2", "t3"]) == 2  # b and c
    assert await api("get_many", ["a", "b", "c", "d"]) == {"a": None, "b": None, "c": None, "d": "D"}
    assert await api("invalidate_tags", []) == 0
    # writing again after an invalidation is live
    assert await api("set", "a", "A2", tags=["t1"]) is True
    assert await api("get", "a") == "A2"
    assert await api("invalidate_tags", {"t1"}) == 1
    assert await api("get", "a") is None
    assert (await api("get_stats")).invalidations == 5  # per tag (1 + 1 + 2 + 1), not per call


async def test_invalidation_is_seen_by_another_instance(api: Api, second_view: Any) -> None:
    other = second_view()
    await api("set", "mine", 1, tags=["shared"])
    await api("set", "untagged", 2)
    assert await other.get("mine") == 1
    assert await other.invalidate_tags("shared") == 1
    assert await api("get", "mine", "D") == "D"
    assert await api("get", "untagged") == 2
    assert other.set_sync("theirs", 3, tags=["shared2"]) is True
    assert await api("get", "theirs") == 3
    assert await api("invalidate_tags", ["shared2"]) == 1
    assert other.get_sync("theirs", "D") == "D"
    assert await other.get("theirs", "D") == "D"


async def test_invalidate_pattern_uses_globs_on_user_keys(api: Api) -> None:
    keys = ["user:1", "user:2", "user:10", "users", "post:1", "a*b", "aXb", "x:y:z"]
    await api("set_many", {k: k for k in keys})
    assert await api("invalidate_pattern", "user:?") == 2
    assert await api("get_many", ["user:1", "user:2", "user:10"]) == {
        "user:1": None,
        "user:2": None,
        "user:10": "user:10",
    }
    assert await api("invalidate_pattern", "user:*") == 1
    assert await api("invalidate_pattern", "a\\*b") == 1  # escaped: the literal key only
    assert await api("get", "aXb") == "aXb"
    assert await api("invalidate_pattern", "[px]*") == 2  # "*" runs across ":"
    assert await api("invalidate_pattern", "nothing*") == 0
    assert sorted(await api("get_all_keys")) == ["aXb", "users"]


async def test_flush_all_empties_this_prefix(api: Api) -> None:
    await api("set_many", {f"k{i}": i for i in range(20)}, tags=["t"])
    await api("set", "solo", 1)
    assert await api("flush_all") is True
    assert await api("get_all_keys") == []
    assert await api("get", "solo") is None
    assert (await api("get_stats")).key_count == 0
    assert await api("set", "after", 1, tags=["t"]) is True  # usable afterwards, tags included
    assert await api("get", "after") == 1


# --- listings and metadata ----------------------------------------------------------------------------


async def test_listings_return_live_user_keys(api: Api) -> None:
    await api("set_many", {"a:1": 1, "a:2": 2, "b:1": 3})
    await api("set", "tagged:1", 4, tags=["t", "u"])
    await api("set", "tagged:2", 5, tags="t")
    await api("set", "gone", 6, tags="dead")
    await api("invalidate_tags", "dead")
    await api("set", "deleted", 7)
    await api("delete", "deleted")
    everything = ["a:1", "a:2", "b:1", "tagged:1", "tagged:2"]
    assert sorted(await api("get_all_keys")) == everything
    assert sorted(await api("get_keys_by_pattern", "a:*")) == ["a:1", "a:2"]
    assert await api("get_keys_by_pattern", "zzz*") == []
    limited = await api("get_all_keys", limit=2)
    assert len(limited) == 2 and set(limited) <= set(everything)
    assert len(await api("get_keys_by_pattern", "*", limit=3)) == 3
    assert sorted(await api("get_keys_by_tag", "t")) == ["tagged:1", "tagged:2"]
    assert await api("get_keys_by_tag", "u") == ["tagged:1"]
    assert await api("get_keys_by_tag", "dead") == []
    assert len(await api("get_keys_by_tag", "t", limit=1)) == 1


async def test_get_meta_describes_a_live_entry(api: Api) -> None:
    before = time.time()
    await api("set", "k", {"a": 1}, ttl=120, tags=["b", "a"])
    after = time.time()
    meta = await api("get_meta", "k")
    assert meta is not None
    assert set(meta) == {"key", "ttl", "tags", "size_bytes", "serialization", "compressed", "created_at"}
    assert meta["key"] == "k"
    assert meta["ttl"] == 120
    assert meta["tags"] == ["a", "b"]
    assert meta["serialization"] == "json"
    assert meta["compressed"] is False
    assert isinstance(meta["size_bytes"], int) and meta["size_bytes"] > 0
    assert before - 1 <= meta["created_at"] <= after + 1
    assert await api("get_meta", "missing") is None
    await api("set", "m", [1, 2], serialization="msgpack")
    assert (await api("get_meta", "m"))["serialization"] == "msgpack"
    assert await api("get", "m") == [1, 2]
    await api("invalidate_tags", "a")
    assert await api("get_meta", "k") is None


async def test_get_meta_reports_compression(cache_config: dict[str, Any], face: str) -> None:
    packed = YokedCache(**{**cache_config, "enable_compression": True, "compression_threshold": 100})
    api = Api(packed, face)
    try:
        big = "x" * 5000
        await api("set", "big", big)
        await api("set", "small", "x")
        big_meta = await api("get_meta", "big")
        assert big_meta["compressed"] is True
        assert big_meta["size_bytes"] < 1000
        assert (await api("get_meta", "small"))["compressed"] is False
        assert await api("get", "big") == big
    finally:
        await packed.flush_all()
        await packed.disconnect()


# --- health and stats ---------------------------------------------------------------------------------


async def test_health_and_detailed_health_check(api: Api, backend_kind: str) -> None:
    assert await api("health") is True
    report = await api("detailed_health_check")
    assert report["status"] == "healthy"
    assert report["backend_type"] == backend_kind
    assert report["circuit_breaker"] == {"state": "disabled", "failure_count": 0}
    assert isinstance(report["latency_ms"], float) and report["latency_ms"] >= 0
    assert report["error"] is None
    assert report["hit_rate"] == 0.0
    assert isinstance(report["uptime_seconds"], int)
    if backend_kind == "redis":
        assert report["redis_connected"] is True
        pool = report["connection_pool"]
        assert set(pool) == {"available", "in_use", "max"}
        assert pool["max"] == 50
        assert pool["available"] + pool["in_use"] == 50
    else:
        assert "redis_connected" not in report
        assert "connection_pool" not in report


async def test_get_stats_counts_every_operation(api: Api) -> None:
    await api("set", "a", 1)
    await api("set", "b", "x" * 100)
    assert await api("get", "a") == 1  # hit
    assert await api("get", "zz") is None  # miss
    await api("get_many", ["a", "zz"])  # one hit, one miss
    assert await api("get_or_set", "a", lambda: 0) == 1  # hit
    assert await api("delete", "a") is True
    await api("invalidate_tags", ["t1", "t2"])
    stats = await api("get_stats")
    assert isinstance(stats, CacheStats)
    assert stats.cache_hits == 3
    assert stats.cache_misses == 2
    assert stats.sets == 2
    assert stats.deletes == 1
    assert stats.invalidations == 2
    assert stats.errors == 0
    assert stats.total_operations == 3 + 2 + 2 + 1
    assert stats.hit_rate == pytest.approx(0.6)
    assert stats.miss_rate == pytest.approx(0.4)
    assert stats.key_count == 1
    assert stats.memory_usage_mb > 0
    assert stats.uptime_seconds >= 0
    as_dict = stats.to_dict()
    assert as_dict["cache_hits"] == 3 and as_dict["hit_rate"] == pytest.approx(0.6)
    assert as_dict["total_operations"] == 8


async def test_a_fresh_cache_has_zero_stats(cache_config: dict[str, Any]) -> None:
    fresh = YokedCache(**{**cache_config, "key_prefix": f"yct{uuid.uuid4().hex[:10]}"})
    stats = await fresh.get_stats()
    assert (stats.cache_hits, stats.cache_misses, stats.sets, stats.deletes, stats.errors) == (0, 0, 0, 0, 0)
    assert stats.hit_rate == 0.0 and stats.miss_rate == 0.0
    assert stats.key_count == 0
    await fresh.disconnect()


# --- lifecycle and routing ------------------------------------------------------------------------------


async def test_connect_and_disconnect_are_idempotent_and_keep_the_cache_usable(
    cache_config: dict[str, Any],
) -> None:
    cache = YokedCache(**cache_config)
    assert await cache.connect() is None
    assert await cache.connect() is None
    await cache.set("k", 1)
    assert await cache.disconnect() is None
    assert await cache.disconnect() is None
    assert await cache.get("k") == 1  # reconnects lazily
    assert cache.connect_sync() is None
    cache.disconnect_sync()
    cache.disconnect_sync()
    assert cache.get_sync("k") == 1
    async with cache as entered:
        assert entered is cache
        assert await cache.get("k") == 1
    assert await cache.get("k") == 1
    await cache.flush_all()
    await cache.disconnect()


async def test_routed_prefixes_live_on_their_own_backend(cache_config: dict[str, Any], face: str) -> None:
    hot = MemoryBackend(max_size=100)
    routed = YokedCache(**cache_config, prefix_backends={"hot": hot})
    api = Api(routed, face)
    ns = routed.config.key_prefix
    try:
        assert await api("set_many", {"hot:1": 1, "hot": 0, "cold:1": 2, "hotter": 3}, tags="t") is True
        assert hot.get(f"{ns}:hot:1") is not None and hot.get(f"{ns}:hot") is not None
        assert hot.get(f"{ns}:hotter") is None and hot.get(f"{ns}:cold:1") is None  # not "hot" + ":"
        assert await api("get_many", ["hot:1", "hot", "cold:1", "hotter"]) == {
            "hot:1": 1,
            "hot": 0,
            "cold:1": 2,
            "hotter": 3,
        }
        assert sorted(await api("get_all_keys")) == ["cold:1", "hot", "hot:1", "hotter"]
        assert (await api("detailed_health_check"))["routes"] == {"hot": "memory"}
        assert await api("invalidate_tags", "t") == 4  # spans both backends
        assert await api("get_all_keys") == []
        await api("set", "hot:2", 2)
        await api("set", "cold:2", 2)
        assert await api("flush_all") is True
        assert await api("get_many", ["hot:2", "cold:2"]) == {"hot:2": None, "cold:2": None}
        assert hot.internal_sizes()["entries"] == 0
    finally:
        await routed.flush_all()
        await routed.disconnect()
