"""Measurement helpers shared by the benchmarks.

Contenders run in alternating rounds (A, B, C, A, B, C, ...) so a noisy neighbour slows all of them
alike; each round times a batch of operations, and the reported figure is the median round.
Results are written as JSON under ``benchmarks/results/`` with the date and the machine, and
``benchmarks/report.py`` turns them into the tables of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results"


def machine() -> dict[str, Any]:
    cpu = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    redis_version = None
    try:
        out = subprocess.run(["redis-server", "--version"], capture_output=True, text=True, timeout=5).stdout
        redis_version = out.split("v=")[1].split()[0] if "v=" in out else out.strip()
    except (OSError, subprocess.SubprocessError, IndexError):
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "redis": redis_version,
    }


def median_us(samples: list[float]) -> float:
    return round(statistics.median(samples) * 1e6, 2)


async def compare_async(
    contenders: dict[str, Callable[[], Awaitable[Any]]], ops: int, rounds: int, ops_per_call: int = 1
) -> dict[str, float]:
    """Median microseconds per operation of each contender, rounds alternating between them."""
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():  # warm up connections, scripts and caches
        for _ in range(max(10, ops // 10)):
            await fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            started = time.perf_counter()
            for _ in range(ops):
                await fn()
            samples[name].append((time.perf_counter() - started) / (ops * ops_per_call))
    return {name: median_us(values) for name, values in samples.items()}


def compare_sync(contenders: dict[str, Callable[[], Any]], ops: int, rounds: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        for _ in range(max(10, ops // 10)):
            fn()
    for _ in range(rounds):
        for name, fn in contenders.items():
            started = time.perf_counter()
            for _ in range(ops):
                fn()
            samples[name].append((time.perf_counter() - started) / ops)
    return {name: median_us(values) for name, values in samples.items()}


def ratio(ours_us: float, theirs_us: float) -> float:
    """Throughput of ours relative to theirs (>1: we are faster)."""
    return round(theirs_us / ours_us, 3) if ours_us else 0.0


def scenario(
    name: str, medians: dict[str, float], ours: str, ref: str, target: float | None, **extra: Any
) -> dict[str, Any]:
    """One scenario's result: its medians and the ratio of ours to the reference, against its target."""
    return {
        "name": name,
        "median_us": medians,
        "ours": ours,
        "reference": ref,
        "ratio": ratio(medians[ours], medians[ref]),
        "target": target,
        **extra,
    }


def save(name: str, scenarios: list[dict[str, Any]]) -> Path:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {
        "benchmark": name,
        "date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": machine(),
        "scenarios": scenarios,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def print_scenarios(scenarios: list[dict[str, Any]]) -> None:
    for item in scenarios:
        target = item.get("target")
        verdict = ""
        if target is not None:
            verdict = "  PASS" if item["ratio"] >= target else "  MISS"
        figures = ", ".join(f"{k} {v} µs" for k, v in item["median_us"].items())
        print(f"{item['name']}: {figures}; ratio {item['ratio']} (target ≥ {target}){verdict}")


def run(coro: Awaitable[Any]) -> Any:
    return asyncio.run(coro)  # type: ignore[arg-type]
