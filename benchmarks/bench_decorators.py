"""``@cached`` speed against the cashews and aiocache decorators and a bare baseline, in one run.

    python benchmarks/bench_decorators.py [--quick]

Scenarios (ratios are throughput, yokedcache / reference):
  memory_decorator_hit   one int argument, memory backends   vs the faster of cashews and aiocache (≥ 1.5)
  redis_decorator_hit    one int argument, Redis             vs bare redis-py GET + orjson.loads (≥ 0.85)
  redis_hot_key_100      100 concurrent callers of one hot key on Redis, cold each round
                                                            vs cashews (which coalesces them) (≥ 1.0)
"""

from __future__ import annotations

import asyncio
import os
import sys
from pathlib import Path
from typing import Any

import orjson
import redis.asyncio as aredis

sys.path.insert(0, str(Path(__file__).parent))
from harness import compare_async, print_scenarios, ratio, save

from yokedcache import YokedCache, cached

REDIS = os.environ.get("YOKEDCACHE_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")
QUICK = "--quick" in sys.argv
OPS, ROUNDS = (500, 5) if QUICK else (3000, 9)
VALUE = {"id": 1, "name": "Ada Lovelace", "email": "ada@example.com", "active": True}


def scenario(name: str, medians: dict[str, float], ref: str, target: float, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "median_us": medians,
        "ours": "yokedcache",
        "reference": ref,
        "ratio": ratio(medians["yokedcache"], medians[ref]),
        "target": target,
        **extra,
    }


async def memory_hit() -> dict[str, Any]:
    import aiocache
    from cashews import Cache

    ours_cache = YokedCache(key_prefix="bench-dec")
    cashews = Cache()
    cashews.setup("mem://")

    @cached(cache=ours_cache, ttl=600)
    async def ours(user_id: int) -> dict[str, Any]:
        return VALUE

    @cashews(ttl="10m")
    async def with_cashews(user_id: int) -> dict[str, Any]:
        return VALUE

    @aiocache.cached(ttl=600)
    async def with_aiocache(user_id: int) -> dict[str, Any]:
        return VALUE

    medians = await compare_async(
        {
            "yokedcache": lambda: ours(1),
            "cashews": lambda: with_cashews(1),
            "aiocache": lambda: with_aiocache(1),
        },
        OPS * 5,
        ROUNDS,
    )
    faster = min(("cashews", "aiocache"), key=lambda name: medians[name])
    return scenario("memory_decorator_hit", medians, faster, 1.5)


async def redis_hit() -> dict[str, Any]:
    ours_cache = YokedCache(redis_url=REDIS, key_prefix="bench-dec", max_connections=1)
    bare = aredis.Redis.from_url(REDIS, max_connections=1)
    await bare.set("bench-bare:dec", orjson.dumps(VALUE))

    @cached(cache=ours_cache, ttl=600)
    async def ours(user_id: int) -> dict[str, Any]:
        return VALUE

    async def baseline() -> Any:
        return orjson.loads(await bare.get("bench-bare:dec"))

    medians = await compare_async({"yokedcache": lambda: ours(1), "redis-py + orjson": baseline}, OPS, ROUNDS)
    return scenario("redis_decorator_hit", medians, "redis-py + orjson", 0.85)


async def hot_key() -> dict[str, Any]:
    """Each round: invalidate, then 100 concurrent callers; the function takes 2 ms (a small query)."""
    from cashews import Cache

    ours_cache = YokedCache(redis_url=REDIS, key_prefix="bench-hot", max_connections=50)
    cashews = Cache()
    cashews.setup(REDIS, max_connections=50)  # the same pool size for both
    executions = {"yokedcache": 0, "cashews": 0}

    @cached(cache=ours_cache, ttl=600, tags=["hot"])
    async def ours(item: int) -> dict[str, Any]:
        executions["yokedcache"] += 1
        await asyncio.sleep(0.002)
        return VALUE

    @cashews(ttl="10m", lock=True)
    async def with_cashews(item: int) -> dict[str, Any]:
        executions["cashews"] += 1
        await asyncio.sleep(0.002)
        return VALUE

    async def ours_round() -> None:
        await ours_cache.invalidate_tags("hot")
        await asyncio.gather(*(ours(7) for _ in range(100)))

    async def cashews_round() -> None:
        await cashews.delete_match("*with_cashews*")
        await asyncio.gather(*(with_cashews(7) for _ in range(100)))

    rounds = max(20, OPS // 50)
    medians = await compare_async(
        {"yokedcache": ours_round, "cashews": cashews_round}, rounds, ROUNDS, ops_per_call=100
    )
    calls = rounds * ROUNDS + max(10, rounds // 10)
    result = scenario(
        "redis_hot_key_100",
        medians,
        "cashews",
        1.0,
        note=f"executions per round: yokedcache {executions['yokedcache'] / calls:.2f}, "
        f"cashews {executions['cashews'] / calls:.2f}",
    )
    await ours_cache.flush_all()
    return result


async def main() -> None:
    scenarios = [await memory_hit(), await redis_hit(), await hot_key()]
    print_scenarios(scenarios)
    for item in scenarios:
        if "note" in item:
            print(f"  {item['name']}: {item['note']}")
    if not QUICK:
        print("saved", save("decorators", scenarios))


if __name__ == "__main__":
    asyncio.run(main())
