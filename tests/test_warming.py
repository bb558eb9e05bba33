"""``warm_cache`` (API.md §9) and warming by calling ``@cached`` functions concurrently."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from yokedcache import YokedCache, cached, warm_cache, warm_cache_sync


async def test_warm_cache_stores_entries_with_ttl_and_tags(cache: YokedCache) -> None:
    entries = [
        {"key": "user:1", "value": {"id": 1, "name": "ann"}, "ttl": 120, "tags": ["users"]},
        {"key": "user:2", "value": {"id": 2}, "tags": "users"},
        {"key": "config", "value": [1, 2, (3, 4)]},
        {"key": "nothing", "value": None},
    ]
    assert await warm_cache(cache, entries) == 4
    assert await cache.get("user:1") == {"id": 1, "name": "ann"}
    assert await cache.get("config") == [1, 2, (3, 4)]
    assert await cache.exists("nothing")
    assert 110 <= (await cache.ttl("user:1") or 0) <= 120
    assert 290 <= (await cache.ttl("config") or 0) <= 300  # default_ttl
    await cache.invalidate_tags("users")
    assert await cache.get("user:1") is None and await cache.get("user:2") is None
    assert await cache.get("config") == [1, 2, (3, 4)]


async def test_warm_cache_accepts_any_iterable(cache: YokedCache) -> None:
    assert await warm_cache(cache, ({"key": f"k{i}", "value": i} for i in range(20))) == 20
    assert await cache.get_many([f"k{i}" for i in range(20)]) == {f"k{i}": i for i in range(20)}
    assert await warm_cache(cache, []) == 0


MALFORMED: list[tuple[Any, str]] = [
    ("not a mapping", "mapping"),
    ({"value": 1}, "key"),
    ({"key": "k"}, "value"),
    ({"key": "k", "value": 1, "tll": 5}, "unknown"),
    ({"key": "k", "value": 1, "ttl": -1}, "ttl"),
    ({"key": "k", "value": 1, "ttl": "60"}, "ttl"),
    ({"key": "k", "value": 1, "ttl": True}, "ttl"),
    ({"key": "k", "value": 1, "tags": [1]}, "tags"),
    ({"key": "", "value": 1}, "key"),
    ({"key": 5, "value": 1}, "key"),
    ({"key": "__yc__:internal", "value": 1}, "reserved"),
]


@pytest.mark.parametrize(("bad", "word"), MALFORMED, ids=[w for _, w in MALFORMED])
async def test_a_malformed_entry_fails_before_any_write(cache: YokedCache, bad: Any, word: str) -> None:
    entries = [{"key": "good:1", "value": 1}, bad, {"key": "good:2", "value": 2}]
    with pytest.raises(ValueError, match=word) as caught:
        await warm_cache(cache, entries)
    assert "1" in str(caught.value) or word in ("key", "reserved")  # the message names the entry
    assert await cache.get_all_keys() == []
    with pytest.raises(ValueError):
        warm_cache_sync(cache, entries)
    assert await cache.get_all_keys() == []


async def test_unstorable_values_are_not_counted(cache: YokedCache) -> None:
    entries = [{"key": "ok", "value": 1}, {"key": "opaque", "value": object()}]
    assert await warm_cache(cache, entries) == 1
    assert await cache.get("ok") == 1
    assert not await cache.exists("opaque")


async def test_ttl_zero_entries_are_not_stored(cache: YokedCache) -> None:
    await cache.set("gone", "old")
    assert (
        await warm_cache(cache, [{"key": "gone", "value": "new", "ttl": 0}, {"key": "kept", "value": 1}]) == 1
    )
    assert not await cache.exists("gone")


def test_warm_cache_sync(sync_cache: YokedCache) -> None:
    entries = [{"key": f"s{i}", "value": {"i": i}, "tags": ["warm"]} for i in range(5)]
    assert warm_cache_sync(sync_cache, entries) == 5
    assert sync_cache.get_sync("s3") == {"i": 3}
    sync_cache.invalidate_tags_sync("warm")
    assert sync_cache.get_sync("s3") is None


async def test_warm_cache_fills_decorated_functions_by_key(cache: YokedCache) -> None:
    runs: list[int] = []

    @cached(cache=cache, ttl=60, tags=["users"])
    async def get_user(user_id: int) -> dict[str, int]:
        runs.append(user_id)
        return {"id": user_id}

    user_key = get_user.cache_key(7).split(":", 1)[1]  # cache_key is the full key; warm takes user keys
    assert await warm_cache(cache, [{"key": user_key, "value": {"id": 7}, "tags": ["users"]}]) == 1
    assert await get_user(7) == {"id": 7}
    assert runs == []


async def test_warming_by_calling_decorated_functions_concurrently(cache: YokedCache) -> None:
    """The tutorial's strategy: gather the decorated calls once; afterwards every call is a hit."""
    runs: list[int] = []

    @cached(cache=cache, ttl=600, tags=["users"])
    async def get_user_by_id(user_id: int) -> dict[str, int] | None:
        runs.append(user_id)
        await asyncio.sleep(0.01)
        return {"id": user_id} if user_id <= 40 else None

    await asyncio.gather(*(get_user_by_id(i) for i in range(1, 51)), *(get_user_by_id(1) for _ in range(5)))
    assert sorted(runs) == list(range(1, 51))  # the duplicate calls for user 1 shared one execution
    results = [await get_user_by_id(i) for i in range(1, 51)]
    assert len(runs) == 50
    assert results[0] == {"id": 1} and results[-1] is None
    stats = cache.function_stats[f"{__name__}.{get_user_by_id.__qualname__}"]
    assert stats.hits == 50 and stats.misses == 55


async def test_warm_cache_without_a_reachable_backend_stores_nothing() -> None:
    cache = YokedCache(redis_url="redis://127.0.0.1:1/0", operation_timeout=0.2, connection_retries=0)
    assert await warm_cache(cache, [{"key": "a", "value": 1}, {"key": "b", "value": 2}]) == 0
