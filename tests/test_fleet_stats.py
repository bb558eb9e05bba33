"""Fleet-wide stats: application processes publish counter deltas; ``yokedcache stats`` shows their sums."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from yokedcache import YokedCache
from yokedcache.monitoring import function_counters, shared_stats

APP = """
import sys, time
from yokedcache import YokedCache, cached

url, prefix, mode = sys.argv[1:4]
cache = YokedCache(redis_url=url, key_prefix=prefix, stats_publish_interval=0.2)

@cached(cache=cache)
def double(x):
    return x * 2

cache.set_sync("a", 1)
cache.set_sync("b", 2)
for _ in range(3):
    cache.get_sync("a")          # 3 hits
cache.get_sync("missing-1")      # 2 misses
cache.get_sync("missing-2")
double(1); double(1); double(1)  # 1 miss (and a set), 2 hits
if mode == "live":               # publish on the interval, then keep running without disconnecting
    time.sleep(0.3)
    cache.get_sync("a")          # the operation after the interval publishes (4 hits in all)
    print("published", flush=True)
    time.sleep(60)
else:
    cache.disconnect_sync()      # publishes the rest
"""


def yokedcache(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "yokedcache", *args],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
    )


def app(redis_url: str, prefix: str, mode: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", APP, redis_url, prefix, mode],
        stdout=subprocess.PIPE,
        text=True,
        env=os.environ.copy(),
    )


@pytest.fixture
def cache(redis_url: str, prefix: str) -> Iterator[YokedCache]:
    instance = YokedCache(redis_url=redis_url, key_prefix=prefix)
    yield instance
    instance.flush_all_sync()
    instance.disconnect_sync()


def stats_json(redis_url: str, prefix: str) -> dict[str, Any]:
    result = yokedcache("--redis-url", redis_url, "--key-prefix", prefix, "stats", "--format", "json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def test_stats_sums_the_counters_of_application_processes(
    redis_url: str, prefix: str, cache: YokedCache
) -> None:
    for _ in range(2):  # one after the other: the second finds double(1) cached by the first
        assert app(redis_url, prefix, "exit").wait(timeout=30) == 0
    data = stats_json(redis_url, prefix)
    assert (data["cache_hits"], data["cache_misses"], data["sets"]) == (5 + 6, 3 + 2, 3 + 2)
    assert data["hit_rate"] == pytest.approx(11 / 16)
    assert data["total_operations"] == 21
    assert data["key_count"] == 3  # a, b and double(1)'s entry, shared by both processes
    assert data["memory_usage_mb"] > 0

    table = yokedcache("--redis-url", redis_url, "--key-prefix", prefix, "stats")
    assert table.returncode == 0, table.stderr
    lines = {
        line.split(":")[0]: line.split(":", 1)[1].strip() for line in table.stdout.splitlines() if ":" in line
    }
    assert lines["Hit rate"] == "68.75%" and lines["Miss rate"] == "31.25%"
    assert lines["Hits"] == "11" and lines["Misses"] == "5" and lines["Keys"] == "3"
    assert lines["Total ops"] == "21" and lines["Memory"].endswith("MB") and "Uptime" in lines


def test_stats_sees_a_running_process_through_interval_publication(
    redis_url: str, prefix: str, cache: YokedCache
) -> None:
    process = app(redis_url, prefix, "live")
    try:
        assert process.stdout is not None
        assert process.stdout.readline().strip() == "published"
        data = stats_json(redis_url, prefix)
        assert (data["cache_hits"], data["cache_misses"]) == (6, 3)
    finally:
        process.kill()
        process.wait()


def test_cli_lookups_are_not_published(redis_url: str, prefix: str, cache: YokedCache) -> None:
    cache.set_sync("k", 1)
    base = ("--redis-url", redis_url, "--key-prefix", prefix)
    assert yokedcache(*base, "get", "k").returncode == 0
    assert yokedcache(*base, "list", "--include-values").returncode == 0
    data = stats_json(redis_url, prefix)
    assert (data["cache_hits"], data["cache_misses"]) == (0, 0)


def test_per_function_figures_and_uptime(redis_url: str, prefix: str, cache: YokedCache) -> None:
    cache.backend.add_counters(
        {
            "cache_hits": 3,
            "cache_misses": 1,
            "fn:app.users.get_user:hits": 3,
            "fn:app.users.get_user:misses": 1,
            "fn:app.users.get_user:hit_us": 600,
            "fn:app.users.get_user:miss_us": 50_000,
            "started_at": int(time.time()) - 3725,
        }
    )
    data = stats_json(redis_url, prefix)
    figures = data["functions"]["app.users.get_user"]
    assert figures["hits"] == 3 and figures["misses"] == 1 and figures["hit_rate"] == 0.75
    assert figures["mean_hit_ms"] == pytest.approx(0.2) and figures["mean_miss_ms"] == pytest.approx(50)
    assert figures["time_saved_ms"] == pytest.approx(3 * (50 - 0.2))
    assert 3725 <= data["uptime_seconds"] < 3800

    table = yokedcache("--redis-url", redis_url, "--key-prefix", prefix, "stats")
    assert "Functions:" in table.stdout and "app.users.get_user" in table.stdout
    assert "Uptime:        1h 2m" in table.stdout


def test_stats_csv_output_file_and_watch(
    redis_url: str, prefix: str, cache: YokedCache, tmp_path: Path
) -> None:
    cache.backend.add_counters({"cache_hits": 2, "cache_misses": 2})
    base = ("--redis-url", redis_url, "--key-prefix", prefix)
    target = tmp_path / "stats.csv"
    written = yokedcache(*base, "stats", "--format", "csv", "--output", str(target))
    assert written.returncode == 0 and written.stdout == ""
    header, row = target.read_text().splitlines()
    values = dict(zip(header.split(","), row.split(",")))
    assert values["hit_rate"] == "0.5" and values["cache_hits"] == "2" and values["total_operations"] == "4"

    watcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "yokedcache",
            *base,
            "stats",
            "--watch",
            "--interval",
            "0.2",
            "--format",
            "json",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert watcher.stdout is not None
        first = json.loads(watcher.stdout.readline())
        second = json.loads(watcher.stdout.readline())
        assert first["cache_hits"] == second["cache_hits"] == 2
    finally:
        watcher.send_signal(signal.SIGINT)
        _, stderr = watcher.communicate(timeout=10)
    assert watcher.returncode == 0, stderr
    assert "Traceback" not in stderr


def test_function_counters_are_bounded_to_the_busiest() -> None:
    stats = {
        f"f{i}": SimpleNamespace(hits=i, misses=0, hit_seconds=i / 1000, miss_seconds=0.0) for i in range(150)
    }
    fields = function_counters(stats, limit=100)
    names = {field.split(":")[1] for field in fields}
    assert len(names) == 100 and "f149" in names and "f0" not in names
    assert fields["fn:f149:hits"] == 149 and fields["fn:f149:hit_us"] == 149_000


def test_shared_stats_decodes_the_hash() -> None:
    counters = {
        "cache_hits": 8,
        "cache_misses": 2,
        "sets": 4,
        "fn:m.f:hits": 8,
        "fn:m.f:misses": 2,
        "fn:m.f:hit_us": 80,
        "fn:m.f:miss_us": 2000,
        "fn:broken": 1,
        "started_at": 1_000,
    }
    stats = shared_stats(counters, key_count=5, memory_usage_mb=1.5, now=1_060)
    assert (stats.cache_hits, stats.cache_misses, stats.sets, stats.key_count) == (8, 2, 4, 5)
    assert stats.hit_rate == 0.8 and stats.uptime_seconds == 60 and stats.memory_usage_mb == 1.5
    assert list(stats.functions) == ["m.f"]
    assert stats.functions["m.f"]["mean_miss_ms"] == pytest.approx(1.0)
