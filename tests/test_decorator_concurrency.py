"""``@cached`` under concurrency: single flight, the write-after-invalidate guard, and the cross-process
compute lock (several real processes sharing Redis)."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from yokedcache import YokedCache, cached

ROOT = Path(__file__).resolve().parent.parent
WORKER_DIR = ROOT / "tests" / "tutorial"


# --- single flight in one process --------------------------------------------------------------------


async def test_fifty_concurrent_misses_run_once(cache: YokedCache) -> None:
    runs = 0

    @cached(cache=cache, ttl=60, tags=["reports"])
    async def report(day: str) -> dict[str, Any]:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return {"day": day, "total": 42}

    results = await asyncio.gather(*(report("mon") for _ in range(50)))
    assert runs == 1
    assert all(r == {"day": "mon", "total": 42} for r in results)
    stats = cache.function_stats[f"{__name__}.{report.__qualname__}"]
    assert stats.misses == 50  # each call counts one read: a miss even when it joined the computation


async def test_single_flight_can_be_turned_off(cache: YokedCache) -> None:
    runs = 0

    @cached(cache=cache, ttl=60, single_flight=False)
    async def report() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.02)
        return 1

    await asyncio.gather(*(report() for _ in range(5)))
    assert runs == 5


def test_twenty_threads_run_a_sync_function_once(sync_cache: YokedCache) -> None:
    runs = 0
    runs_lock = threading.Lock()
    barrier = threading.Barrier(20)

    @cached(cache=sync_cache, ttl=60)
    def report(day: str) -> str:
        nonlocal runs
        with runs_lock:
            runs += 1
        time.sleep(0.1)
        return f"report:{day}"

    results: list[str] = []

    def worker() -> None:
        barrier.wait()
        results.append(report("mon"))

    threads = [threading.Thread(target=worker) for _ in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert runs == 1
    assert results == ["report:mon"] * 20


async def test_a_shared_failure_reaches_every_caller_and_is_not_cached(cache: YokedCache) -> None:
    runs = 0

    @cached(cache=cache, ttl=60)
    async def flaky() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.02)
        if runs == 1:
            raise RuntimeError("boom")
        return runs

    results = await asyncio.gather(*(flaky() for _ in range(10)), return_exceptions=True)
    assert runs == 1
    assert all(isinstance(r, RuntimeError) for r in results)
    assert await flaky() == 2


async def test_a_cancelled_leader_does_not_strand_the_joiners(cache: YokedCache) -> None:
    runs = 0

    @cached(cache=cache, ttl=60)
    async def slow() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.1)
        return runs

    leader = asyncio.ensure_future(slow())
    await asyncio.sleep(0.01)
    joiner = asyncio.ensure_future(slow())
    await asyncio.sleep(0.01)
    leader.cancel()
    assert await joiner == 2
    with pytest.raises(asyncio.CancelledError):
        await leader


# --- the write-after-invalidate guard ---------------------------------------------------------------


class Source:
    """A stand-in for a database: a version that writers bump, read by the cached function."""

    def __init__(self) -> None:
        self.version = 1
        self.reads = 0


async def test_result_computed_across_an_invalidation_is_never_served(cache: YokedCache) -> None:
    source = Source()
    entered, release = asyncio.Event(), asyncio.Event()

    @cached(cache=cache, ttl=60, tags=["users"])
    async def read_user() -> int:
        source.reads += 1
        seen = source.version
        entered.set()
        await release.wait()  # slow query: a writer commits and invalidates meanwhile
        return seen

    reader = asyncio.ensure_future(read_user())
    await entered.wait()
    source.version = 2
    await cache.invalidate_tags(["users"])
    release.set()
    assert await reader == 1  # that call gets what it read...
    assert await read_user() == 2  # ...but it was never stored: the next call recomputes
    assert source.reads == 2
    assert await read_user() == 2
    assert source.reads == 2


async def test_joiners_that_start_after_an_invalidation_get_a_fresh_value(cache: YokedCache) -> None:
    source = Source()
    entered, release = asyncio.Event(), asyncio.Event()

    @cached(cache=cache, ttl=60, tags=["users"])
    async def read_user() -> int:
        source.reads += 1
        seen = source.version
        if source.reads == 1:
            entered.set()
            await release.wait()
        return seen

    early_joiner_ready = asyncio.Event()

    async def early_joiner() -> int:
        early_joiner_ready.set()
        return await read_user()

    leader = asyncio.ensure_future(read_user())
    await entered.wait()
    early = asyncio.ensure_future(early_joiner())
    await early_joiner_ready.wait()
    source.version = 2
    await cache.invalidate_tags(["users"])  # returns before the late joiner starts
    late = asyncio.ensure_future(read_user())
    await asyncio.sleep(0.01)
    release.set()
    assert await leader == 1
    assert await late == 2  # must not receive the value computed before the invalidation
    assert await early in (1, 2)
    assert await read_user() == 2


async def _write_while_a_leader_computes(
    read_user: Any, source: Source, writer: YokedCache, reached: asyncio.Event, go_on: asyncio.Event
) -> tuple[int, int]:
    """Start a call and wait until it ``reached`` its pause; commit version 2 and invalidate through
    ``writer``; start a late call; let the first go on. Returns (first call's value, late call's value)."""
    leader = asyncio.ensure_future(read_user())
    await reached.wait()
    source.version = 2
    await writer.invalidate_tags(["users"])
    late = asyncio.ensure_future(read_user())
    await asyncio.sleep(0.05)  # the late call misses and joins the first one's computation
    go_on.set()
    return await leader, await late


async def test_invalidation_from_another_cache_instance_also_guards_joiners(
    cache: YokedCache, cache_config: dict[str, Any], backend_kind: str
) -> None:
    if backend_kind == "memory":
        pytest.skip("memory caches never share entries")
    other = YokedCache(**cache_config)  # another process would look like this: same Redis, same prefix
    source = Source()
    entered, release = asyncio.Event(), asyncio.Event()

    @cached(cache=cache, ttl=60, tags=["users"])
    async def read_user() -> int:
        source.reads += 1
        seen = source.version
        if source.reads == 1:
            entered.set()
            await release.wait()
        return seen

    assert await _write_while_a_leader_computes(read_user, source, other, entered, release) == (1, 2)
    assert await read_user() == 2
    await other.disconnect()


def test_sync_result_computed_across_an_invalidation_is_never_served(sync_cache: YokedCache) -> None:
    source = Source()
    entered, release = threading.Event(), threading.Event()

    @cached(cache=sync_cache, ttl=60, tags=["users"])
    def read_user() -> int:
        source.reads += 1
        seen = source.version
        if source.reads == 1:
            entered.set()
            release.wait(5)
        return seen

    results: list[int] = []
    reader = threading.Thread(target=lambda: results.append(read_user()))
    reader.start()
    assert entered.wait(5)
    source.version = 2
    sync_cache.invalidate_tags_sync(["users"])
    late = threading.Thread(target=lambda: results.append(read_user()))
    late.start()
    time.sleep(0.05)
    release.set()
    reader.join()
    late.join()
    assert sorted(results) == [1, 2]
    assert read_user() == 2


def _pause_after_first_store(cache: YokedCache, name: str, stored: Any, resume: Any) -> None:
    """Make the first store through ``cache`` land, then hold its caller (a leader descheduled right after
    its store reached the backend, before it hands its result to the callers waiting on it)."""
    backend = cache.backends[0]
    store = getattr(backend, name)

    def pausing(*args: Any) -> Any:
        result = store(*args)
        if not stored.is_set():
            stored.set()
            resume.wait(5)
        return result

    async def apausing(*args: Any) -> Any:
        result = await store(*args)
        if not stored.is_set():
            stored.set()
            await resume.wait()
        return result

    setattr(backend, name, apausing if name.startswith("a") else pausing)


def test_sync_joiner_after_the_store_and_an_invalidation_gets_a_fresh_value(sync_cache: YokedCache) -> None:
    source = Source()
    stored, resume = threading.Event(), threading.Event()
    _pause_after_first_store(sync_cache, "set", stored, resume)

    @cached(cache=sync_cache, ttl=60, tags=["users"])
    def read_user() -> int:
        source.reads += 1
        return source.version

    results: dict[str, int] = {}
    leader = threading.Thread(target=lambda: results.update(leader=read_user()))
    leader.start()
    assert stored.wait(5)  # version 1 is stored; the leader has not returned yet
    source.version = 2
    sync_cache.invalidate_tags_sync(["users"])  # the write is committed and invalidated...
    late = threading.Thread(target=lambda: results.update(late=read_user()))
    late.start()  # ...before this call starts: it misses (the entry is dead) and joins the leader
    time.sleep(0.1)
    resume.set()
    leader.join(5)
    late.join(5)
    assert results == {"leader": 1, "late": 2}  # the store proved version 1 fresh only before the write
    assert source.reads == 2


async def test_joiner_after_the_store_and_an_invalidation_gets_a_fresh_value(cache: YokedCache) -> None:
    source = Source()
    stored, resume = asyncio.Event(), asyncio.Event()
    _pause_after_first_store(cache, "aset", stored, resume)

    @cached(cache=cache, ttl=60, tags=["users"])
    async def read_user() -> int:
        source.reads += 1
        return source.version

    assert await _write_while_a_leader_computes(read_user, source, cache, stored, resume) == (1, 2)
    assert source.reads == 2


async def test_background_refresh_does_not_resurrect_invalidated_data(cache: YokedCache) -> None:
    source = Source()
    entered, release = asyncio.Event(), asyncio.Event()

    @cached(cache=cache, ttl=1, stale_ttl=30, tags=["users"])
    async def read_user() -> int:
        source.reads += 1
        seen = source.version
        if source.reads == 2:  # the background refresh
            entered.set()
            await release.wait()
        return seen

    assert await read_user() == 1
    await asyncio.sleep(1.05)
    assert await read_user() == 1  # stale: served, refresh starts
    await entered.wait()
    source.version = 2
    await cache.invalidate_tags(["users"])
    release.set()
    await asyncio.sleep(0.05)
    assert await read_user() == 2


# --- the cross-process lock -------------------------------------------------------------------------


class Worker:
    """A worker process (tests/tutorial/xproc_worker.py); ``go(at)`` releases it to call at time ``at``."""

    def __init__(self, role: str, redis_url: str, prefix: str, lock_timeout: float) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("YOKEDCACHE_")}
        env["PYTHONPATH"] = f"{ROOT / 'src'}{os.pathsep}{WORKER_DIR}"
        command = "import xproc_worker; xproc_worker.main()"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", command, role, redis_url, prefix, repr(lock_timeout)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def ready(self) -> None:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line.strip() == "READY", self.proc.stderr.read() if self.proc.stderr else line

    def go(self, at: float) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(f"{at!r}\n")
        self.proc.stdin.flush()

    def finish(self) -> tuple[int, dict[str, Any] | None, str]:
        out, err = self.proc.communicate(timeout=60)
        line = out.strip().splitlines()[-1] if out.strip() else ""
        return self.proc.returncode, (json.loads(line) if line else None), err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def _redis_cleanup(redis_url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter(f"{prefix}:*"):
        client.delete(key)


def test_four_processes_compute_once_and_waiters_wake_promptly(redis_url: str) -> None:
    import redis

    prefix = f"yclock{uuid.uuid4().hex[:8]}"
    workers = [Worker("call", redis_url, prefix, 10.0) for _ in range(4)]
    try:
        for worker in workers:
            worker.ready()
        start_at = time.time() + 0.2
        for worker in workers:
            worker.go(start_at)
        finished = [w.finish() for w in workers]
        for code, _, err in finished:
            assert code == 0, err
        infos = [info for _, info, _ in finished if info is not None]
        assert len(infos) == 4
        executions = int(redis.Redis.from_url(redis_url).get(f"{prefix}:executions") or 0)
        assert executions == 1
        holders = [i for i in infos if i["computed"]]
        waiters = [i for i in infos if not i["computed"]]
        assert len(holders) == 1 and len(waiters) == 3
        assert all(i["result"] == holders[0]["result"] for i in infos)
        spread = max(i["called_at"] for i in infos) - min(i["called_at"] for i in infos)
        assert spread < 0.25, f"the workers did not call at once ({spread:.3f} s apart)"
        delays = [w["returned_at"] - holders[0]["compute_end"] for w in waiters]
        print(
            "\nwake delay (holder's function returned -> waiter returned): "
            + ", ".join(f"{d * 1000:.1f} ms" for d in sorted(delays))
        )
        assert max(delays) < 0.1, f"waiters woke too late: {delays}"
    finally:
        for worker in workers:
            worker.kill()
        _redis_cleanup(redis_url, prefix)


def test_a_dead_lock_holder_is_taken_over_after_lock_timeout(redis_url: str) -> None:
    import redis

    prefix = f"yclock{uuid.uuid4().hex[:8]}"
    lock_timeout = 1.0
    dying = Worker("die", redis_url, prefix, lock_timeout)
    waiting = Worker("call", redis_url, prefix, lock_timeout)
    try:
        dying.ready()
        waiting.ready()
        start_at = time.time() + 0.1
        dying.go(start_at)
        waiting.go(start_at + 0.15)  # arrives while the other holds the lock
        code, info, _ = dying.finish()
        assert code == 3 and info is None  # died inside the function, holding the lock
        code, info, err = waiting.finish()
        assert code == 0, err
        assert info is not None and info["computed"] is True
        assert info["result"]["run"] == 2  # the survivor computed after the dead holder's run
        waited = info["returned_at"] - info["called_at"]
        assert lock_timeout - 0.3 < waited < lock_timeout + 2.0
        assert int(redis.Redis.from_url(redis_url).get(f"{prefix}:executions") or 0) == 2
    finally:
        dying.kill()
        waiting.kill()
        _redis_cleanup(redis_url, prefix)


async def test_lock_within_one_process_and_on_memory(cache: YokedCache) -> None:
    runs = 0

    @cached(cache=cache, ttl=60, lock=True, lock_timeout=5)
    async def slow() -> int:
        nonlocal runs
        runs += 1
        await asyncio.sleep(0.05)
        return 7

    assert await asyncio.gather(*(slow() for _ in range(10))) == [7] * 10
    assert runs == 1


def test_sync_lock_across_threads_without_single_flight(sync_cache: YokedCache) -> None:
    """With single flight off, only the backend lock coalesces the threads (memory: no cross-process lock,
    every thread computes; Redis: one computes)."""
    runs = 0
    runs_lock = threading.Lock()
    barrier = threading.Barrier(6)

    @cached(cache=sync_cache, ttl=60, lock=True, lock_timeout=5, single_flight=False)
    def slow() -> int:
        nonlocal runs
        with runs_lock:
            runs += 1
        time.sleep(0.2)
        return 7

    results: list[int] = []

    def worker() -> None:
        barrier.wait()
        results.append(slow())

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [7] * 6
    if sync_cache.backend.kind == "redis":
        assert runs == 1


async def test_lock_wake_list_does_not_outlive_the_release(redis_url: str, prefix: str) -> None:
    import redis

    caches = [YokedCache(redis_url=redis_url, key_prefix=prefix) for _ in range(3)]  # three "processes"
    runs = 0

    def make(cache: YokedCache) -> Any:
        @cached(cache=cache, ttl=60, lock=True, lock_timeout=5)
        async def slow() -> int:
            nonlocal runs
            runs += 1
            await asyncio.sleep(0.1)
            return 1

        return slow

    try:
        assert await asyncio.gather(*(make(c)() for c in caches)) == [1, 1, 1]
        assert runs == 1
        client = redis.Redis.from_url(redis_url)
        wake_lists = list(client.scan_iter(f"{prefix}:__yc__:wake:*"))
        assert all(client.pttl(k) > 0 for k in wake_lists), {k: client.pttl(k) for k in wake_lists}
    finally:
        for c in caches:
            await c.flush_all()
            await c.disconnect()


async def test_waiters_sleep_until_the_holder_releases(redis_url: str, prefix: str) -> None:
    caches = [YokedCache(redis_url=redis_url, key_prefix=prefix) for _ in range(3)]
    waits: dict[int, int] = {i: 0 for i in range(3)}
    for index, c in enumerate(caches):
        original = c.backend.await_for_release  # type: ignore[attr-defined]

        async def counting(key: str, timeout: float, _index: int = index, _original: Any = original) -> None:
            waits[_index] += 1
            await _original(key, timeout)

        c.backend.await_for_release = counting  # type: ignore[attr-defined]
    computing = 0.3

    def make(cache: YokedCache) -> Any:
        @cached(cache=cache, ttl=60, lock=True, lock_timeout=5, tags=["t"])
        async def slow() -> int:
            await asyncio.sleep(computing)
            return 1

        return slow

    functions = [make(c) for c in caches]
    try:
        await asyncio.gather(*(f() for f in functions))  # first cycle: leaves a wake-up token behind
        await caches[0].invalidate_tags(["t"])
        for index in waits:
            waits[index] = 0
        await asyncio.gather(*(f() for f in functions))  # second cycle, within the token's 2 s
        # Two waiters, 0.3 s of computing, BLPOP slices of 0.25 s: a couple of waits each at most.
        assert sum(waits.values()) <= 6, waits
    finally:
        for c in caches:
            await c.flush_all()
            await c.disconnect()
