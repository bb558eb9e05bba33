"""Core engine speed against bare redis-py, cashews and aiocache, in one run.

    python benchmarks/bench_core.py [--quick]

Scenarios (targets are throughput ratios, yokedcache / reference):
  redis_hit_1kb        cache.get of a 1 KB dict, one connection  vs asyncio GET + orjson.loads (≥ 0.9)
  redis_set_get_tags   set with two tags + get                   vs bare SET + GET (≥ 0.8)
  redis_concurrent_100 100 concurrent gets of different keys     vs redis-py, same pool size (≥ 0.9, 0 errors)
  redis_get_sync       get_sync                                   vs sync redis-py GET + orjson.loads (≥ 0.85)
  memory_hit_1kb       memory cache.get of a 1 KB dict            vs cashews' memory backend (≥ 0.8)
  invalidate_100k      invalidate_tags on a tag carried by 100,000 entries: one round trip, < 2 ms,
                       within 2x of a tag carried by 1,000 entries
"""

from __future__ import annotations

import asyncio
import os
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import redis
import redis.asyncio as aredis

sys.path.insert(0, str(Path(__file__).parent))
from harness import compare_async, compare_sync, print_scenarios, save, scenario

from yokedcache import YokedCache

REDIS = os.environ.get("YOKEDCACHE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
VALUE = {f"field_{i:02d}": f"value {i} " + "x" * 24 for i in range(25)}  # ~1 KB as JSON
QUICK = "--quick" in sys.argv
OPS, ROUNDS = (300, 5) if QUICK else (2000, 9)


async def redis_hit() -> dict[str, Any]:
    from aiocache import RedisCache
    from aiocache.serializers import JsonSerializer
    from cashews import Cache as Cashews

    ours = YokedCache(redis_url=REDIS, key_prefix="bench", max_connections=1)
    await ours.set("hit", VALUE, ttl=600)
    bare = aredis.Redis.from_url(REDIS, max_connections=1)
    await bare.set("bench-bare:hit", orjson.dumps(VALUE))
    cashews = Cashews()
    cashews.setup(REDIS, max_connections=1)
    await cashews.set("bench-cashews:hit", VALUE, expire=600)
    aio = RedisCache(
        endpoint="127.0.0.1", port=6379, db=13, serializer=JsonSerializer(), namespace="bench-aio"
    )
    await aio.set("hit", VALUE, ttl=600)

    async def bare_get() -> Any:
        return orjson.loads(await bare.get("bench-bare:hit"))

    medians = await compare_async(
        {
            "yokedcache": lambda: ours.get("hit"),
            "redis-py + orjson": bare_get,
            "cashews": lambda: cashews.get("bench-cashews:hit"),
            "aiocache": lambda: aio.get("hit"),
        },
        OPS,
        ROUNDS,
    )
    assert await ours.get("hit") == VALUE
    await cashews.close()
    await aio.close()
    return scenario("redis_hit_1kb", medians, "yokedcache", "redis-py + orjson", 0.9)


async def redis_set_get_tags() -> dict[str, Any]:
    ours = YokedCache(redis_url=REDIS, key_prefix="bench", max_connections=1)
    bare = aredis.Redis.from_url(REDIS, max_connections=1)

    async def ours_op() -> None:
        await ours.set("tagged", VALUE, ttl=600, tags=["users", "user:1"])
        await ours.get("tagged")

    async def bare_op() -> None:
        await bare.set("bench-bare:tagged", orjson.dumps(VALUE), ex=600)
        orjson.loads(await bare.get("bench-bare:tagged"))

    medians = await compare_async({"yokedcache": ours_op, "redis-py + orjson": bare_op}, OPS, ROUNDS)
    return scenario("redis_set_get_tags", medians, "yokedcache", "redis-py + orjson", 0.8)


async def redis_concurrent() -> dict[str, Any]:
    ours = YokedCache(redis_url=REDIS, key_prefix="bench", max_connections=50)
    bare = aredis.Redis(connection_pool=aredis.BlockingConnectionPool.from_url(REDIS, max_connections=50))
    keys = [f"c{i}" for i in range(100)]
    await ours.set_many({k: VALUE for k in keys}, ttl=600)
    for k in keys:
        await bare.set(f"bench-bare:{k}", orjson.dumps(VALUE))
    errors = 0

    async def ours_op() -> None:
        nonlocal errors
        results = await asyncio.gather(*(ours.get(k) for k in keys))
        errors += sum(1 for r in results if r != VALUE)

    async def bare_op() -> None:
        raw = await asyncio.gather(*(bare.get(f"bench-bare:{k}") for k in keys))
        [orjson.loads(r) for r in raw]

    medians = await compare_async(
        {"yokedcache": ours_op, "redis-py + orjson": bare_op}, max(20, OPS // 50), ROUNDS, ops_per_call=100
    )
    errors += (await ours.get_stats()).errors
    return scenario("redis_concurrent_100", medians, "yokedcache", "redis-py + orjson", 0.9, errors=errors)


def redis_get_sync() -> dict[str, Any]:
    ours = YokedCache(redis_url=REDIS, key_prefix="bench", max_connections=1)
    ours.set_sync("sync", VALUE, ttl=600)
    bare = redis.Redis.from_url(REDIS, max_connections=1)
    bare.set("bench-bare:sync", orjson.dumps(VALUE))
    medians = compare_sync(
        {
            "yokedcache": lambda: ours.get_sync("sync"),
            "redis-py + orjson": lambda: orjson.loads(bare.get("bench-bare:sync")),
        },  # type: ignore[arg-type]
        OPS,
        ROUNDS,
    )
    return scenario("redis_get_sync", medians, "yokedcache", "redis-py + orjson", 0.85)


async def memory_hit() -> dict[str, Any]:
    from aiocache import SimpleMemoryCache
    from cashews import Cache as Cashews

    ours = YokedCache(key_prefix="bench")
    await ours.set("hit", VALUE, ttl=600)
    cashews = Cashews()
    cashews.setup("mem://")
    await cashews.set("hit", VALUE, expire=600)
    aio = SimpleMemoryCache()
    await aio.set("hit", VALUE, ttl=600)
    medians = await compare_async(
        {
            "yokedcache": lambda: ours.get("hit"),
            "cashews": lambda: cashews.get("hit"),
            "aiocache": lambda: aio.get("hit"),
        },
        OPS * 10,
        ROUNDS,
    )
    return scenario("memory_hit_1kb", medians, "yokedcache", "cashews", 0.8)


def _evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats")
    return int(stats.get("cmdstat_evalsha", {}).get("calls", 0)) + int(
        stats.get("cmdstat_eval", {}).get("calls", 0)
    )


async def invalidate_scaling() -> dict[str, Any]:
    ours = YokedCache(redis_url=REDIS, key_prefix="bench-inv")
    await ours.flush_all()
    sizes = (1_000, 100_000) if not QUICK else (1_000, 10_000)
    timings: dict[str, float] = {}
    round_trips: dict[str, int] = {}
    probe = redis.Redis.from_url(REDIS)
    for size in sizes:
        tag = f"tag{size}"
        for start in range(0, size, 5_000):
            await ours.set_many(
                {f"{tag}:{i}": i for i in range(start, min(size, start + 5_000))}, ttl=3600, tags=[tag]
            )
        samples = []
        for _ in range(9):
            before = _evalsha_calls(probe)
            started = time.perf_counter()
            await ours.invalidate_tags(tag)
            samples.append(time.perf_counter() - started)
            round_trips[str(size)] = _evalsha_calls(probe) - before
        samples.sort()
        timings[str(size)] = round(samples[len(samples) // 2] * 1000, 3)
        assert await ours.get(f"{tag}:1") is None
    await ours.flush_all()
    big, small = timings[str(sizes[1])], timings[str(sizes[0])]
    return {
        "name": "invalidate_100k",
        "median_ms": timings,
        "round_trips": round_trips,
        "ratio": round(big / small, 3),
        "target": None,
        "pass": big < 2.0 and big <= 2 * small and all(v == 1 for v in round_trips.values()),
    }


async def main() -> None:
    scenarios = [
        await redis_hit(),
        await redis_set_get_tags(),
        await redis_concurrent(),
        redis_get_sync(),
        await memory_hit(),
    ]
    print_scenarios(scenarios)
    inv = await invalidate_scaling()
    print(
        f"invalidate_tags: {inv['median_ms']} ms, round trips {inv['round_trips']}, "
        f"100k/1k = {inv['ratio']}  {'PASS' if inv['pass'] else 'MISS'}"
    )
    scenarios.append(inv)
    if not QUICK:
        print("saved", save("core", scenarios))


if __name__ == "__main__":
    asyncio.run(main())
