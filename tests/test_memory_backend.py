"""The in-process backend: LRU bounds by entries and bytes, expiry, copies, isolation and thread safety."""

from __future__ import annotations

import random
import threading
import time
import uuid
from typing import Any

import pytest

from yokedcache import YokedCache
from yokedcache.backends.memory import MemoryBackend


def memory_cache(**options: Any) -> YokedCache:
    base: dict[str, Any] = {"key_prefix": f"yct{uuid.uuid4().hex[:10]}", "ttl_jitter_percent": 0}
    return YokedCache(**{**base, **options})


def sizes(cache: YokedCache) -> dict[str, int]:
    backend = cache.backend
    assert isinstance(backend, MemoryBackend)
    return backend.internal_sizes()


# --- construction ------------------------------------------------------------------------------------


def test_config_reaches_the_backend() -> None:
    cache = memory_cache(memory_max_size=123, memory_max_bytes=4567, memory_cleanup_interval=9)
    backend = cache.backend
    assert isinstance(backend, MemoryBackend)
    assert (backend.max_size, backend.max_bytes, backend.cleanup_interval) == (123, 4567, 9)
    assert backend.kind == "memory"
    default = MemoryBackend()
    assert (default.max_size, default.max_bytes, default.cleanup_interval) == (10000, None, 300)


@pytest.mark.parametrize("options", [{"max_size": 0}, {"max_bytes": 0}, {"max_size": -1}])
def test_nonsense_bounds_are_refused(options: dict[str, int]) -> None:
    with pytest.raises(ValueError):
        MemoryBackend(**options)


def test_two_memory_caches_never_share_entries() -> None:
    first = memory_cache(key_prefix="same")
    second = memory_cache(key_prefix="same")
    assert first.set_sync("k", 1, tags="t") is True
    assert second.get_sync("k", "D") == "D"
    assert second.invalidate_tags_sync("t") == 0
    assert first.get_sync("k") == 1


# --- LRU -----------------------------------------------------------------------------------------------


def test_entry_bound_evicts_the_least_recently_used() -> None:
    cache = memory_cache(memory_max_size=100)
    for i in range(100):
        cache.set_sync(f"k{i}", i)
    assert cache.get_sync("k0") == 0  # touched: now the most recently used
    for i in range(100, 150):
        cache.set_sync(f"k{i}", i)
    assert sizes(cache)["entries"] == 100
    present = {k for k, v in cache.get_many_sync([f"k{i}" for i in range(150)]).items() if v is not None}
    assert present == {"k0"} | {f"k{i}" for i in range(51, 150)}
    assert cache.backend.evictions == 50  # type: ignore[attr-defined]
    assert cache.get_stats_sync().key_count == 100


def test_rewriting_a_key_does_not_count_twice() -> None:
    cache = memory_cache(memory_max_size=3)
    for _ in range(10):
        cache.set_sync("same", "x" * 10)
    cache.set_sync("a", 1)
    cache.set_sync("b", 2)
    assert cache.get_many_sync(["same", "a", "b"]) == {"same": "x" * 10, "a": 1, "b": 2}
    assert sizes(cache)["entries"] == 3


def test_byte_budget_holds_under_a_flood_of_distinct_keys() -> None:
    budget = 50_000
    cache = memory_cache(memory_max_size=1000, memory_max_bytes=budget)
    rng = random.Random(7)
    for i in range(10_000):
        assert cache.set_sync(f"flood:{i}", "v" * rng.randint(10, 600), tags=[f"tag{i}", "all"]) is True
        if i % 250 == 0:
            now = sizes(cache)
            assert now["bytes"] <= budget
            assert now["entries"] <= 1000
    final = sizes(cache)
    assert 0 < final["bytes"] <= budget
    assert 0 < final["entries"] <= 1000
    assert final["tokens"] <= 4 * 1000  # one token per tag ever used, bounded
    assert final["write_counts"] <= final["tokens"]
    assert cache.get_sync("flood:9999") is not None  # the newest survived
    assert cache.get_sync("flood:0", "gone") == "gone"  # the oldest did not
    assert cache.get_stats_sync().memory_usage_mb <= budget / (1024 * 1024)


def test_a_value_larger_than_the_budget_does_not_evict_everything() -> None:
    cache = memory_cache(memory_max_bytes=2_000)
    for i in range(5):
        cache.set_sync(f"small{i}", i)
    cache.set_sync("huge", "x" * 10_000)
    assert cache.get_sync("huge", "absent") == "absent"
    assert cache.get_many_sync([f"small{i}" for i in range(5)]) == {f"small{i}": i for i in range(5)}
    assert sizes(cache)["bytes"] <= 2_000


def test_tokens_are_exempt_from_the_entry_bound() -> None:
    cache = memory_cache(memory_max_size=10)
    cache.set_sync("tagged", 1, tags=["a", "b", "c"])
    for i in range(9):
        cache.set_sync(f"k{i}", i)
    assert sizes(cache)["entries"] == 10
    assert cache.get_sync("tagged") == 1  # three tokens did not push it out
    assert cache.invalidate_tags_sync("b") == 1
    assert cache.get_sync("tagged") is None


def test_invalidating_ever_new_tags_keeps_the_token_map_bounded() -> None:
    cache = memory_cache(memory_max_size=100)
    cache.set_sync("kept", 1, tags="old")
    for i in range(10_000):
        cache.invalidate_tags_sync(f"never-used-{i}")
    now = sizes(cache)
    assert now["tokens"] <= 4 * 100
    assert now["write_counts"] <= now["tokens"]
    assert cache.invalidate_tags_sync("old") == 1
    assert cache.get_sync("kept") is None


def test_a_dropped_token_makes_its_entries_misses_never_valid() -> None:
    cache = memory_cache(memory_max_size=5)  # at most 20 tokens
    cache.set_sync("early", "e", tags="first")
    for i in range(40):  # push "first" out of the token map
        cache.capture_tokens_sync([f"t{i}"])
    assert cache.get_sync("early", "miss") == "miss"
    assert cache.set_sync("early", "again", tags="first") is True
    assert cache.get_sync("early") == "again"


# --- expiry --------------------------------------------------------------------------------------------


def test_expired_and_invalidated_entries_are_purged() -> None:
    swept = memory_cache(memory_cleanup_interval=1)
    lazy = memory_cache(memory_cleanup_interval=0)
    for cache in (swept, lazy):
        for i in range(50):
            cache.set_sync(f"short{i}", i, ttl=1)
        cache.set_sync("long", "L", ttl=100)
        assert sizes(cache)["entries"] == 51
    time.sleep(1.1)
    swept.set_sync("trigger", 1)  # a write after the interval sweeps every expired entry
    assert sizes(swept)["entries"] == 2
    assert swept.get_stats_sync().key_count == 2
    assert sizes(lazy)["entries"] == 51  # no sweeps: expired entries linger until read ...
    assert lazy.get_many_sync([f"short{i}" for i in range(50)]) == {f"short{i}": None for i in range(50)}
    assert sizes(lazy)["entries"] == 1  # ... and reading purges them
    assert lazy.get_sync("long") == "L"
    lazy.set_many_sync({f"t{i}": i for i in range(20)}, tags="gone")
    lazy.invalidate_tags_sync("gone")
    assert lazy.get_all_keys_sync() == ["long"]
    assert sizes(lazy)["entries"] == 1
    bytes_left = sizes(lazy)["bytes"]
    assert 0 < bytes_left < 200


# --- copies ----------------------------------------------------------------------------------------------


async def test_callers_cannot_mutate_the_cached_value() -> None:
    cache = memory_cache()
    original: dict[str, Any] = {"list": [1, 2], "nested": {"a": 1}}
    assert await cache.set("k", original) is True
    original["list"].append(3)  # mutating what was stored ...
    original["new"] = True
    assert await cache.get("k") == {"list": [1, 2], "nested": {"a": 1}}  # ... changes nothing
    got = await cache.get("k")
    got["list"].append(99)
    got["nested"]["a"] = 2
    assert cache.get_sync("k") == {"list": [1, 2], "nested": {"a": 1}}
    many = await cache.get_many(["k"])
    many["k"]["list"].clear()
    assert await cache.get("k") == {"list": [1, 2], "nested": {"a": 1}}
    computed = await cache.get_or_set("fresh", lambda: [1, 2])
    computed.append(3)
    assert await cache.get("fresh") == [1, 2]
    assert (await cache.get("k")) is not (await cache.get("k"))


# --- threads ---------------------------------------------------------------------------------------------


def test_eight_threads_of_mixed_operations_stay_consistent() -> None:
    cache = memory_cache(memory_max_size=200, memory_max_bytes=40_000)
    keys = [f"k{i}" for i in range(300)]
    errors: list[BaseException] = []
    counts = {"sets": 0, "reads": 0, "wrong": 0}
    lock = threading.Lock()
    start = threading.Barrier(8)

    def worker(seed: int) -> None:
        rng = random.Random(seed)
        sets = reads = wrong = 0
        try:
            start.wait()
            for _ in range(1000):
                op = rng.random()
                key = rng.choice(keys)
                if op < 0.35:
                    cache.set_sync(key, {"key": key, "by": seed}, tags=[f"g{rng.randint(0, 9)}"])
                    sets += 1
                elif op < 0.70:
                    value = cache.get_sync(key)
                    reads += 1
                    wrong += value is not None and value["key"] != key
                elif op < 0.80:
                    batch = rng.sample(keys, 5)
                    found = cache.get_many_sync(batch)
                    reads += 5
                    wrong += any(v is not None and v["key"] != k for k, v in found.items())
                elif op < 0.87:
                    batch = rng.sample(keys, 3)
                    cache.set_many_sync({k: {"key": k, "by": seed} for k in batch})
                    sets += 3
                elif op < 0.94:
                    cache.delete_sync(key)
                elif op < 0.97:
                    cache.invalidate_tags_sync(f"g{rng.randint(0, 9)}")
                else:
                    cache.get_keys_by_pattern_sync("k1*", limit=50)
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)
        with lock:
            counts["sets"] += sets
            counts["reads"] += reads
            counts["wrong"] += wrong

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert counts["wrong"] == 0
    stats = cache.get_stats_sync()
    assert stats.sets == counts["sets"]
    assert stats.cache_hits + stats.cache_misses == counts["reads"]
    assert stats.errors == 0
    now = sizes(cache)
    assert now["entries"] <= 200 and now["bytes"] <= 40_000
    cache.delete_many_sync(keys)  # byte accounting must return to exactly zero
    assert sizes(cache)["entries"] == 0
    assert sizes(cache)["bytes"] == 0


# --- globs -------------------------------------------------------------------------------------------------

GLOB_CASES = [
    *("a?c", "a*", "*:*", "a[bc]d", "a[^b]d", "a[b-d]?", "a[d-b]?", "a\\*", "[", "a[", "\\", "a]"),
    *("a[]]", "a[[]b", "a[\\]]", "a[\\", "[^]", "a[a-]", "*\\?", "a\\\\b"),
]


def test_memory_globs_match_exactly_what_redis_matches(redis_url: str) -> None:
    """Listings and pattern invalidation must not depend on the backend (API.md §6 globs)."""
    rng = random.Random(20240601)
    keys = sorted({"".join(rng.choice("ab:-^][\\") for _ in range(rng.randint(1, 4))) for _ in range(120)})
    keys += ["abc", "abd", "a*", "a?", "a]", "a[b", "a\\b", "x:y", "a-d", "a^d"]
    patterns = GLOB_CASES + [
        "".join(rng.choice("ab-^]\\[*?:") for _ in range(rng.randint(1, 6))) for _ in range(300)
    ]
    memory = memory_cache()
    on_redis = YokedCache(redis_url=redis_url, key_prefix=memory.config.key_prefix, ttl_jitter_percent=0)
    try:
        mapping = dict.fromkeys(keys, 1)
        assert memory.set_many_sync(mapping) is True
        assert on_redis.set_many_sync(mapping) is True
        differences = []
        for pattern in patterns:
            expected = sorted(on_redis.get_keys_by_pattern_sync(pattern))
            found = sorted(memory.get_keys_by_pattern_sync(pattern))
            if found != expected:
                differences.append((pattern, found, expected))
        assert differences == []
        assert sorted(memory.get_keys_by_pattern_sync("a[bc]d")) == ["abd"]  # the check is not vacuous
        assert memory.invalidate_pattern_sync("a[\\]]") == on_redis.invalidate_pattern_sync("a[\\]]") == 1
    finally:
        on_redis.flush_all_sync()
        on_redis.disconnect_sync()


def test_flush_clears_every_internal_map() -> None:
    cache = memory_cache()
    cache.set_many_sync({f"k{i}": i for i in range(50)}, tags=["a", "b"])
    assert cache.flush_all_sync() is True
    assert sizes(cache) == {"entries": 0, "tokens": 0, "write_counts": 0, "bytes": 0}
    assert cache.get_all_keys_sync() == []
