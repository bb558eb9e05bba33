"""What metrics cost on the fastest path there is: a memory-backend ``@cached`` hit.

    python benchmarks/bench_metrics.py [--quick]

Gated scenarios (throughput with metrics on / off, target ≥ 0.90):
  cached_hit_sync    sync ``@cached`` hit, ``enable_metrics=True`` (Prometheus, the default collector) vs off
  cached_hit_async   the same for an ``async def`` function

Informational (no target): the same sync hit with a collector that does nothing (the cost of the cache's
instrumentation alone), with StatsD (one UDP datagram per event) and with OpenTelemetry (a span per backend
call). Then the cost of each Prometheus hook called directly.

Method: contenders alternate within each round (in a shuffled order) and each round times a batch with
``time.thread_time()`` (CPU time of this thread, so a busy neighbour on a shared machine does not count);
figures are medians over rounds and a scenario's ratio is the median of the per-round ratios (each round's
"off" and "on" batches ran back to back). The exit status is 1 if a gated scenario misses its target.
"""

from __future__ import annotations

import asyncio
import random
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))
from harness import print_scenarios, save

from yokedcache import YokedCache, cached
from yokedcache.monitoring import CacheMetrics, Collector, OpenTelemetryCollector, StatsDCollector

QUICK = "--quick" in sys.argv
OPS, ROUNDS = (2000, 9) if QUICK else (4000, 41)
TARGET = 0.90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class NoOp(Collector):
    """Implements the hot hooks and does nothing: what remains is the cache's own instrumentation."""

    never_raises = True

    def record_get(self, hit: bool) -> None:
        pass

    def observe(self, operation: str, backend_kind: str, seconds: float) -> None:
        pass


STATSD_SINK = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a StatsD "server" nobody reads


def caches() -> dict[str, YokedCache]:
    sink = STATSD_SINK
    sink.bind(("127.0.0.1", 0))
    built = {
        "off": YokedCache(key_prefix="bench-off"),
        "on": YokedCache(key_prefix="bench-on", enable_metrics=True, prometheus_port=free_port()),
        "noop_collector": YokedCache(key_prefix="bench-noop", metrics=CacheMetrics([NoOp()])),
        "statsd": YokedCache(
            key_prefix="bench-statsd",
            metrics=CacheMetrics([StatsDCollector("127.0.0.1", sink.getsockname()[1])]),
        ),
    }
    try:
        from opentelemetry.sdk.trace import TracerProvider

        otel = OpenTelemetryCollector(tracer_provider=TracerProvider())
        built["opentelemetry"] = YokedCache(key_prefix="bench-otel", metrics=CacheMetrics([otel]))
    except ImportError:
        pass
    return built


def sync_hits(cache: YokedCache) -> Callable[[], Any]:
    @cached(cache=cache)
    def lookup(user_id: int) -> dict[str, Any]:
        return {"id": user_id, "name": "Ada"}

    lookup(1)  # stored; every timed call is a hit
    return lambda: lookup(1)


def async_hits(cache: YokedCache) -> Callable[[], Any]:
    @cached(cache=cache)
    async def lookup(user_id: int) -> dict[str, Any]:
        return {"id": user_id, "name": "Ada"}

    asyncio.run(lookup(1))
    return lambda: lookup(1)


Rounds = dict[str, list[float]]  # contender -> CPU seconds per operation, one entry per round


def measure_sync(contenders: dict[str, Callable[[], Any]]) -> Rounds:
    rounds: Rounds = {name: [] for name in contenders}
    for fn in contenders.values():  # warm up
        for _ in range(OPS // 4):
            fn()
    for _ in range(ROUNDS):
        order = list(contenders.items())
        random.shuffle(order)
        for name, fn in order:
            started = time.thread_time()
            for _ in range(OPS):
                fn()
            rounds[name].append((time.thread_time() - started) / OPS)
    return rounds


async def measure_async(contenders: dict[str, Callable[[], Any]]) -> Rounds:
    rounds: Rounds = {name: [] for name in contenders}
    for fn in contenders.values():
        for _ in range(OPS // 4):
            await fn()
    for _ in range(ROUNDS):
        order = list(contenders.items())
        random.shuffle(order)
        for name, fn in order:
            started = time.thread_time()
            for _ in range(OPS):
                await fn()
            rounds[name].append((time.thread_time() - started) / OPS)
    return rounds


def scenario(name: str, rounds: Rounds, ours: str, target: float | None) -> dict[str, Any]:
    """Throughput of ``ours`` relative to "off": the median of the per-round ratios."""
    per_round = [off / on for off, on in zip(rounds["off"], rounds[ours])]
    return {
        "name": name,
        "median_us": {k: round(statistics.median(rounds[k]) * 1e6, 2) for k in ("off", ours)},
        "ours": ours,
        "reference": "off",
        "ratio": round(statistics.median(per_round), 3),
        "target": target,
    }


def hook_costs(cache: YokedCache) -> dict[str, float]:
    """Nanoseconds per call of each hook of the enabled cache's CacheMetrics (Prometheus)."""
    metrics = cache.metrics
    calls: dict[str, Callable[[], None]] = {
        "record_get": lambda: metrics.record_get(True),
        "observe": lambda: metrics.observe("get", "memory", 0.000004),
        "observe (redis-like 0.3 ms)": lambda: metrics.observe("get", "redis", 0.0003),
        "record_set": lambda: metrics.record_set(1),
        "record_function": lambda: metrics.record_function("app.users.get_user", True, 0.000004),
        "(empty lambda)": lambda: None,
    }
    n = 200_000 if not QUICK else 50_000
    out = {}
    for name, call in calls.items():
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            for _ in range(n):
                call()
            best = min(best, (time.perf_counter() - started) / n)
        out[name] = round(best * 1e9, 1)
    return out


def main() -> int:
    built = caches()
    sync_contenders = {name: sync_hits(c) for name, c in built.items()}
    rounds = measure_sync(sync_contenders)
    scenarios = [scenario("cached_hit_sync", rounds, "on", TARGET)]

    async_contenders = {name: async_hits(built[name]) for name in ("off", "on")}
    scenarios.append(scenario("cached_hit_async", asyncio.run(measure_async(async_contenders)), "on", TARGET))

    for name in ("noop_collector", "statsd", "opentelemetry"):
        if name in rounds:
            scenarios.append(scenario(f"cached_hit_sync_{name}", rounds, name, None))

    print_scenarios(scenarios)
    for item in scenarios:
        print(
            f"  {item['name']}: {round(1e6 / item['median_us'][item['ours']]):,} ops/s with, "
            f"{round(1e6 / item['median_us']['off']):,} ops/s without"
        )
    costs = hook_costs(built["on"])
    print("Prometheus hook costs (ns per call, incl. the calling lambda):", costs)
    scenarios.append({"name": "prometheus_hook_ns", "hook_ns": costs, "target": None})
    if not QUICK:
        print("saved", save("metrics", scenarios))
    missed = [s["name"] for s in scenarios if s.get("target") is not None and s["ratio"] < s["target"]]
    return 1 if missed else 0


if __name__ == "__main__":
    sys.exit(main())
