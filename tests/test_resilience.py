"""Outages, pauses, restarts, the circuit breaker and invalidations that could not be delivered.

Each test runs its own redis-server so it can stop, pause (SIGSTOP) and restart it.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from yokedcache import CacheConnectionError, YokedCache, cached

FAST = {"operation_timeout": 0.3, "connection_timeout": 1.0, "ttl_jitter_percent": 0}


def make_cache(server: Any, **options: Any) -> YokedCache:
    return YokedCache(redis_url=server.url, key_prefix="res", **{**FAST, **options})


async def test_stopped_backend_degrades_to_misses(own_redis: Any) -> None:
    cache = make_cache(own_redis)
    calls = 0

    @cached(cache=cache, ttl=60, tags=["t"])
    async def compute(x: int) -> int:
        nonlocal calls
        calls += 1
        return x * 2

    assert await compute(2) == 4
    assert await compute(2) == 4
    assert calls == 1
    own_redis.stop()
    assert await cache.get("anything", "default") == "default"
    assert await cache.set("k", 1) is False
    assert await cache.invalidate_tags("t") == 0
    assert await compute(2) == 4  # from the source, no exception
    assert await compute(3) == 6
    assert cache.get_sync("anything", "d") == "d"
    assert (await cache.get_stats()).errors >= 4
    health = await cache.detailed_health_check()
    assert health["status"] == "unhealthy" and health["latency_ms"] is None and health["error"]


async def test_fallback_off_raises_connection_error(own_redis: Any) -> None:
    cache = make_cache(own_redis, fallback_enabled=False)
    own_redis.stop()
    with pytest.raises(CacheConnectionError):
        await cache.get("k")
    with pytest.raises(CacheConnectionError):
        cache.set_sync("k", 1)


async def test_paused_backend_answers_within_the_operation_timeout(own_redis: Any) -> None:
    cache = make_cache(own_redis, connection_retries=0)
    await cache.set("k", "v")
    own_redis.pause()
    try:
        started = time.monotonic()
        assert await cache.get("k", "fallback") == "fallback"
        async_elapsed = time.monotonic() - started
        started = time.monotonic()
        assert cache.get_sync("k", "fallback") == "fallback"
        sync_elapsed = time.monotonic() - started
    finally:
        own_redis.resume()
    # 0.3 s timeout; the bound is generous because the machine is shared, but far below the 30 s
    # connection timeout a cache without an operation timeout would hang for.
    assert async_elapsed < 3 and sync_elapsed < 3, (async_elapsed, sync_elapsed)


async def test_recovers_after_restart_and_serves_no_old_entry(own_redis: Any) -> None:
    cache = make_cache(own_redis)
    await cache.set("k", "old", tags=["t"])
    own_redis.restart()  # no persistence: every key and token is gone
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and not await cache.health():
        await asyncio.sleep(0.05)
    assert await cache.health()
    assert await cache.get("k", "miss") == "miss"
    assert await cache.set("k", "new", tags=["t"]) is True
    assert await cache.get("k") == "new"
    assert cache.get_sync("k") == "new"


async def test_circuit_breaker_opens_skips_and_probes(own_redis: Any) -> None:
    cache = make_cache(
        own_redis,
        enable_circuit_breaker=True,
        circuit_breaker_failure_threshold=3,
        circuit_breaker_timeout=0.5,
        connection_retries=0,
    )
    assert (await cache.detailed_health_check())["circuit_breaker"]["state"] == "closed"
    own_redis.stop()
    for _ in range(3):
        await cache.get("k")
    breaker = (await cache.detailed_health_check())["circuit_breaker"]
    assert breaker["state"] == "open"
    for _ in range(5):
        assert await cache.get("k", "miss") == "miss"  # skipped at once: never sent, so not a new failure
    assert (await cache.detailed_health_check())["circuit_breaker"] == breaker
    own_redis.start()
    await asyncio.sleep(0.6)
    assert (await cache.detailed_health_check())["circuit_breaker"]["state"] in ("half_open", "closed")
    assert await cache.set("k", 1) is True  # the probe succeeds and closes the breaker
    assert (await cache.detailed_health_check())["circuit_breaker"] == {"state": "closed", "failure_count": 0}


async def test_serialization_errors_never_trip_the_breaker(own_redis: Any) -> None:
    cache = make_cache(own_redis, enable_circuit_breaker=True, circuit_breaker_failure_threshold=1)
    for _ in range(5):
        assert await cache.set("k", object()) is False
    assert (await cache.detailed_health_check())["circuit_breaker"]["state"] == "closed"
    assert await cache.set("k", 1) is True


async def test_invalidation_during_outage_is_replayed_before_anything_else(own_redis: Any) -> None:
    writer = make_cache(own_redis)
    reader = make_cache(own_redis)
    await writer.set("k", "v1", tags=["users"])
    assert await reader.get("k") == "v1"
    own_redis.pause()
    try:
        assert await writer.invalidate_tags("users") == 0  # could not be delivered: queued
    finally:
        own_redis.resume()
    # the writer itself never reads past its own queued invalidation
    assert await writer.get("k", "miss") == "miss"
    assert await reader.get("k", "miss") == "miss"


async def test_idle_writer_delivers_queued_invalidation_in_the_background(own_redis: Any) -> None:
    writer = make_cache(own_redis)
    reader = make_cache(own_redis)
    await writer.set("k", "v1", tags=["users"])
    own_redis.pause()
    try:
        writer.invalidate_tags_sync("users")
    finally:
        own_redis.resume()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and await reader.get("k", "miss") != "miss":
        await asyncio.sleep(0.05)
    assert await reader.get("k", "miss") == "miss"


async def test_queue_overflow_flushes_the_namespace_on_recovery(own_redis: Any) -> None:
    writer = make_cache(own_redis, invalidation_queue_size=2)
    await writer.set("a", 1, tags=["t1"])
    await writer.set("b", 2, tags=["t9"])
    own_redis.pause()
    try:
        for tag in ("t1", "t2", "t3"):
            await writer.invalidate_tags(tag)
    finally:
        own_redis.resume()
    assert await writer.get("b", "miss") == "miss"  # untouched tag, but the overflow flushed everything
    assert await writer.set("c", 3) is True
    assert await writer.get("c") == 3


def _transport_error(cause: BaseException) -> CacheConnectionError:
    error = CacheConnectionError(str(cause))
    error.__cause__ = cause
    return error


def test_only_transient_errors_are_retried_within_the_operation_timeout() -> None:
    cache = YokedCache(key_prefix="retry", connection_retries=3, retry_delay=0.01, operation_timeout=0.5)
    start = time.monotonic()
    reset = _transport_error(ConnectionResetError("Connection reset by peer"))
    pauses = [cache._retry_pause(reset, attempt, start) for attempt in (1, 2, 3)]
    assert all(p is not None for p in pauses)
    assert pauses[0] < pauses[1] < pauses[2]  # exponential backoff (±25 % jitter cannot reorder 1x/2x/4x)
    assert cache._retry_pause(reset, 4, start) is None  # connection_retries exhausted
    refused = _transport_error(ConnectionRefusedError("Connection refused"))
    assert cache._retry_pause(refused, 1, start) is None  # the backend is down: retrying only adds delay
    timeout = _transport_error(TimeoutError("timed out"))
    assert cache._retry_pause(timeout, 1, start) is None  # the operation timeout is already spent
    slow = YokedCache(key_prefix="retry", connection_retries=3, retry_delay=0.4, operation_timeout=0.5)
    assert slow._retry_pause(reset, 2, time.monotonic()) is None  # 0.8 s backoff > the 0.5 s budget


async def test_a_pooled_connection_broken_by_a_restart_is_retried_transparently(own_redis: Any) -> None:
    cache = make_cache(own_redis, connection_retries=3)
    assert await cache.set("k", 1) is True  # leaves an open connection in the pool
    own_redis.restart()  # that connection is now dead
    assert await cache.set("k", 2) is True
    assert await cache.get("k") == 2
    assert (await cache.get_stats()).errors == 0
