"""A worker process for the cross-process ``@cached`` tests (lock, shared entries).

Run as ``python -c "import xproc_worker; xproc_worker.main()" ROLE REDIS_URL PREFIX [LOCK_TIMEOUT]`` with
this directory on ``PYTHONPATH``. Once imported and connected it prints ``READY`` and reads a wall-clock
time from stdin; it waits until then (so several workers call at once, however slowly each started),
calls a slow ``@cached(lock=True)`` function and prints one JSON line: its result, when the call returned
and, if this process computed, when the computation ended. Executions are counted with a Redis ``INCR`` so
the test sees every process's runs.

Roles: ``call`` computes normally; ``die`` takes the lock and then kills the process inside the function
(``os._exit``), leaving the lock to expire.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from typing import Any

import redis

from yokedcache import YokedCache, cached

COMPUTE_SECONDS = 0.3


def main() -> None:
    role, redis_url, prefix = sys.argv[1:4]
    lock_timeout = float(sys.argv[4]) if len(sys.argv) > 4 else 10.0
    counter = redis.Redis.from_url(redis_url)
    cache = YokedCache(redis_url=redis_url, key_prefix=prefix)
    info: dict[str, Any] = {"pid": os.getpid(), "computed": False}

    @cached(cache=cache, ttl=60, tags=["reports"], lock=True, lock_timeout=lock_timeout)
    async def slow_report(day: str) -> dict[str, Any]:
        runs = counter.incr(f"{prefix}:executions")
        if role == "die":
            time.sleep(COMPUTE_SECONDS)
            os._exit(3)  # dies holding the lock
        await asyncio.sleep(COMPUTE_SECONDS)
        info["computed"] = True
        info["compute_end"] = time.time()
        return {"day": day, "total": 42, "run": runs}

    async def run() -> None:
        await cache.connect()
        slow_report.cache_key("2024-01-01")  # no I/O; builds the key once before the barrier
        print("READY", flush=True)
        start_at = float(sys.stdin.readline())
        delay = start_at - time.time()
        if delay > 0:
            await asyncio.sleep(delay)
        info["called_at"] = time.time()
        info["result"] = await slow_report("2024-01-01")
        info["returned_at"] = time.time()
        await cache.disconnect()

    asyncio.run(run())
    print(json.dumps(info))


if __name__ == "__main__":
    main()
