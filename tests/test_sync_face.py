"""The sync twins: native sync I/O, never an event loop, usable from threads and inside a running loop."""

from __future__ import annotations

import asyncio
import gc
import threading
import time
import warnings
from collections.abc import Iterator
from typing import Any

import pytest

from yokedcache import YokedCache


class LoopWatch:
    """Counts event loops created and threads started while installed."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.loops = 0
        self.runs = 0
        self.threads: list[str] = []
        watch = self
        original_init = asyncio.BaseEventLoop.__init__
        original_run = asyncio.run
        original_start = threading.Thread.start

        def counting_init(loop: Any, *args: Any, **kwargs: Any) -> None:
            watch.loops += 1
            original_init(loop, *args, **kwargs)

        def counting_run(*args: Any, **kwargs: Any) -> Any:
            watch.runs += 1
            return original_run(*args, **kwargs)

        def counting_start(thread: threading.Thread) -> None:
            watch.threads.append(thread.name)
            original_start(thread)

        monkeypatch.setattr(asyncio.BaseEventLoop, "__init__", counting_init)
        monkeypatch.setattr(asyncio, "run", counting_run)
        monkeypatch.setattr(asyncio.runners, "run", counting_run)
        monkeypatch.setattr(threading.Thread, "start", counting_start)

    def assert_untouched(self) -> None:
        assert self.loops == 0, "the sync face created an event loop"
        assert self.runs == 0, "the sync face called asyncio.run"
        assert self.threads == [], f"the sync face started threads: {self.threads}"


def every_sync_operation(cache: YokedCache) -> None:
    """Call each sync twin once and check its result."""
    cache.connect_sync()
    assert cache.set_sync("a", {"v": 1}, ttl=60, tags=["t"]) is True
    assert cache.get_sync("a") == {"v": 1}
    assert cache.get_sync("missing", "D") == "D"
    assert cache.exists_sync("a") is True
    assert cache.ttl_sync("a") == 60
    assert cache.expire_sync("a", 30) is True
    assert cache.ttl_sync("a") == 30
    assert cache.get_or_set_sync("b", lambda: [1, 2]) == [1, 2]
    assert cache.set_many_sync({"c": 1, "d": 2}, tags="t") is True
    assert cache.get_many_sync(["a", "c", "zz"]) == {"a": {"v": 1}, "c": 1, "zz": None}
    assert sorted(cache.get_all_keys_sync()) == ["a", "b", "c", "d"]
    assert sorted(cache.get_keys_by_pattern_sync("[ab]")) == ["a", "b"]
    assert sorted(cache.get_keys_by_tag_sync("t")) == ["a", "c", "d"]
    assert cache.get_meta_sync("a")["tags"] == ["t"]
    assert cache.delete_sync("b") is True
    assert cache.delete_many_sync(["c", "zz"]) == 1
    assert cache.invalidate_tags_sync("t") == 3
    assert cache.get_sync("a") is None
    cache.set_sync("p1", 1)
    assert cache.invalidate_pattern_sync("p*") == 1
    assert cache.health_sync() is True
    assert cache.detailed_health_check_sync()["status"] == "healthy"
    stats = cache.get_stats_sync()
    assert stats.sets == 5
    assert stats.deletes == 3  # b, c and the pattern's p1
    assert stats.invalidations == 2  # the tag t and the entry the pattern removed
    assert cache.flush_all_sync() is True
    assert cache.get_all_keys_sync() == []
    cache.disconnect_sync()
    assert cache.set_sync("after", 1) is True  # usable after disconnect
    assert cache.get_sync("after") == 1


def test_sync_face_never_creates_an_event_loop_or_a_thread(
    cache_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = YokedCache(**cache_config)
    watch = LoopWatch(monkeypatch)
    every_sync_operation(cache)
    with cache as entered:
        assert entered is cache
        assert cache.get_sync("after") == 1
    watch.assert_untouched()
    cache.flush_all_sync()
    cache.disconnect_sync()


async def test_sync_face_works_inside_a_running_event_loop(
    cache_config: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = YokedCache(**cache_config)
    watch = LoopWatch(monkeypatch)
    every_sync_operation(cache)
    watch.assert_untouched()
    # both faces share one state
    await cache.set("shared", "from async")
    assert cache.get_sync("shared") == "from async"
    cache.set_sync("shared", "from sync", tags=["s"])
    assert await cache.get("shared") == "from sync"
    assert await cache.invalidate_tags("s") == 1
    assert cache.get_sync("shared") is None
    stats = cache.get_stats_sync()
    assert stats.cache_hits == (await cache.get_stats()).cache_hits
    await cache.flush_all()
    await cache.disconnect()


def test_eight_threads_share_one_instance(sync_cache: YokedCache) -> None:
    errors: list[BaseException] = []
    wrong: list[tuple[str, Any]] = []
    start = threading.Barrier(8)

    def worker(n: int) -> None:
        try:
            start.wait()
            for i in range(100):
                key = f"t{n}:{i}"
                assert sync_cache.set_sync(key, {"n": n, "i": i}, tags=[f"thread{n}"]) is True
                got = sync_cache.get_sync(key)
                if got != {"n": n, "i": i}:
                    wrong.append((key, got))
            found = sync_cache.get_many_sync([f"t{n}:{i}" for i in range(100)])
            wrong.extend((k, v) for k, v in found.items() if v is None)
            assert sync_cache.invalidate_tags_sync(f"thread{n}") == 100
            assert sync_cache.get_sync(f"t{n}:0", "gone") == "gone"
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert errors == []
    assert wrong == []
    stats = sync_cache.get_stats_sync()
    assert stats.sets == 800
    assert stats.cache_hits == 800 + 800
    assert stats.cache_misses == 8
    assert stats.invalidations == 8
    assert stats.errors == 0


async def test_threads_and_the_event_loop_use_one_instance_at_once(cache: YokedCache) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for i in range(50):
                cache.set_sync(f"sync{n}:{i}", i)
                assert cache.get_sync(f"sync{n}:{i}") == i
        except BaseException as exc:  # pragma: no cover
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for i in range(50):
        await cache.set(f"async:{i}", i)
        assert await cache.get(f"async:{i}") == i
    for thread in threads:
        await asyncio.to_thread(thread.join, 60)
    assert errors == []
    assert len(await cache.get_all_keys()) == 4 * 50 + 50


def test_get_or_set_sync_is_single_flight_across_threads(sync_cache: YokedCache) -> None:
    calls = 0
    calls_lock = threading.Lock()
    results: list[Any] = []
    start = threading.Barrier(8)

    def factory() -> str:
        nonlocal calls
        with calls_lock:
            calls += 1
        time.sleep(0.2)
        return "computed"

    def worker() -> None:
        start.wait()
        results.append(sync_cache.get_or_set_sync("k", factory, ttl=60))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert results == ["computed"] * 8
    assert calls == 1
    assert sync_cache.get_sync("k") == "computed"


def test_get_or_set_sync_after_an_invalidation_never_joins_an_older_computation(
    sync_cache: YokedCache,
) -> None:
    started = threading.Event()
    release = threading.Event()
    results: dict[str, Any] = {}

    def old() -> str:
        started.set()
        release.wait(5)
        return "old"

    def call(name: str, factory: Any) -> None:
        results[name] = sync_cache.get_or_set_sync("k", factory, tags="t")

    first = threading.Thread(target=call, args=("first", old))
    first.start()
    assert started.wait(5)
    sync_cache.invalidate_tags_sync("t")
    second = threading.Thread(target=call, args=("second", lambda: "new"))
    second.start()
    time.sleep(0.2)  # the second call is now waiting on the first one's flight
    release.set()
    first.join(10)
    second.join(10)
    assert results["first"] == "old"
    assert results["second"] == "new"
    assert sync_cache.get_sync("k") == "new"


def test_get_or_set_sync_needs_a_sync_factory(sync_cache: YokedCache) -> None:
    async def factory() -> int:
        return 1

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(TypeError):
            sync_cache.get_or_set_sync("k", factory)
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]
    assert sync_cache.exists_sync("k") is False
    assert sync_cache.get_or_set_sync("k", lambda: 2) == 2  # the key is not stuck in a failed flight


@pytest.fixture
def redis_cache(redis_url: str, prefix: str) -> Iterator[YokedCache]:
    cache = YokedCache(redis_url=redis_url, key_prefix=prefix, ttl_jitter_percent=0)
    yield cache
    cache.flush_all_sync()
    cache.disconnect_sync()


def test_one_instance_across_successive_asyncio_runs(redis_cache: YokedCache) -> None:
    async def round_trip(n: int) -> tuple[Any, Any, int]:
        await redis_cache.set(f"run{n}", n, tags=["runs"])
        previous = await redis_cache.get(f"run{n - 1}")
        value = await redis_cache.get(f"run{n}")
        many = await redis_cache.get_many([f"run{i}" for i in range(n + 1)])
        return previous, value, sum(v is not None for v in many.values())

    for n in range(5):
        previous, value, live = asyncio.run(round_trip(n))
        assert value == n
        assert previous == (n - 1 if n else None)
        assert live == n + 1
        assert redis_cache.get_sync(f"run{n}") == n  # the sync face in between
    assert asyncio.run(redis_cache.invalidate_tags("runs")) == 5
    assert asyncio.run(redis_cache.get("run4", "gone")) == "gone"

    async def closing() -> None:
        await redis_cache.set("x", 1)
        await redis_cache.disconnect()

    asyncio.run(closing())
    assert asyncio.run(redis_cache.get("x")) == 1  # reconnects lazily in the next loop
    assert asyncio.run(redis_cache.health()) is True


def test_async_context_manager_and_sync_context_manager(cache_config: dict[str, Any]) -> None:
    async def use() -> Any:
        async with YokedCache(**cache_config) as cache:
            await cache.set("k", "v")
            return await cache.get("k"), cache

    value, cache = asyncio.run(use())
    assert value == "v"
    with cache:
        assert cache.get_sync("k") == "v"
        cache.flush_all_sync()
