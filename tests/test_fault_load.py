"""Faults in the middle of a load: cached reads and committed writes on PostgreSQL while Redis is
stopped, paused (SIGSTOP) and restarted.

A writer increments counters in PostgreSQL, commits, then invalidates the row's tag; "committed" below
means that invalidate call returned. Readers read through ``@cached`` and check each answer against the
value committed before their read started. Counted: application errors, wrong answers (a value never
committed), stale reads (older than what was committed before the read began), and the time the cache
needs to serve hits again after Redis restarts.
"""

from __future__ import annotations

import random
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from yokedcache import YokedCache, cached

ROWS = 12


@pytest.fixture
def counters(postgres_url: str) -> Iterator[str]:
    import psycopg2

    table = f"yc_fault_{uuid.uuid4().hex[:8]}"
    with psycopg2.connect(postgres_url) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE TABLE {table} (id int PRIMARY KEY, value int NOT NULL)")
        cur.executemany(f"INSERT INTO {table} VALUES (%s, 0)", [(i,) for i in range(ROWS)])
    yield table
    with psycopg2.connect(postgres_url) as conn, conn.cursor() as cur:
        cur.execute(f"DROP TABLE {table}")


class Ledger:
    """What has been committed (and its invalidation returned) per row, and what readers saw."""

    def __init__(self) -> None:
        self.committed = [0] * ROWS
        self.max_written = [0] * ROWS
        self.errors: list[str] = []
        self.stale: list[tuple[float, int, int, int]] = []
        self.wrong: list[tuple[int, int]] = []
        self.reads = 0
        self.lock = threading.Lock()


def run_load(
    cache: YokedCache,
    reader_cache: YokedCache,
    postgres_url: str,
    table: str,
    ledger: Ledger,
    stop: threading.Event,
) -> list[threading.Thread]:
    import psycopg2

    local = threading.local()

    def connection() -> Any:
        if not hasattr(local, "conn"):
            local.conn = psycopg2.connect(postgres_url)
            local.conn.autocommit = True
        return local.conn

    def make_reader(instance: YokedCache) -> Any:
        @cached(cache=instance, ttl=30, tags="row:{row_id}", cache_key_prefix=f"fault-{table}")
        def read_row(row_id: int) -> int:
            with connection().cursor() as cur:
                cur.execute(f"SELECT value FROM {table} WHERE id = %s", (row_id,))
                return int(cur.fetchone()[0])

        return read_row

    readers = [make_reader(cache), make_reader(reader_cache)]

    def writer() -> None:
        conn = psycopg2.connect(postgres_url)
        while not stop.is_set():
            row = random.randrange(ROWS)
            try:
                with conn, conn.cursor() as cur:
                    cur.execute(f"UPDATE {table} SET value = value + 1 WHERE id = %s RETURNING value", (row,))
                    value = int(cur.fetchone()[0])
                    with ledger.lock:  # recorded before the commit makes the value visible
                        ledger.max_written[row] = max(ledger.max_written[row], value)
                cache.invalidate_tags_sync(f"row:{row}")
                with ledger.lock:
                    ledger.committed[row] = max(ledger.committed[row], value)
            except Exception as exc:
                ledger.errors.append(f"writer: {exc!r}")
            time.sleep(0.002)
        conn.close()

    def reader(index: int) -> None:
        read_row = readers[index % 2]
        while not stop.is_set():
            row = random.randrange(ROWS)
            with ledger.lock:
                floor = ledger.committed[row]
            try:
                value = read_row(row)
            except Exception as exc:
                ledger.errors.append(f"reader: {exc!r}")
                continue
            with ledger.lock:
                ledger.reads += 1
                if value > ledger.max_written[row]:
                    ledger.wrong.append((row, value))
                elif value < floor:
                    ledger.stale.append((time.monotonic(), index % 2, row, floor - value))

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader, args=(i,)) for i in range(4)
    ]
    for thread in threads:
        thread.start()
    return threads


def test_stop_pause_restart_during_load(own_redis: Any, postgres_url: str, counters: str) -> None:
    options = {"operation_timeout": 0.2, "connection_timeout": 1.0, "key_prefix": "fault"}
    cache = YokedCache(redis_url=own_redis.url, **options)  # the writer's process
    other = YokedCache(redis_url=own_redis.url, **options)  # another process sharing the backend
    ledger = Ledger()
    stop = threading.Event()
    threads = run_load(cache, other, postgres_url, counters, ledger, stop)
    events: dict[str, float] = {}
    try:
        time.sleep(0.8)
        own_redis.stop()
        time.sleep(0.8)
        own_redis.start()
        time.sleep(0.8)
        own_redis.pause()
        time.sleep(0.8)
        events["resumed"] = time.monotonic()  # taken first: readers wake the moment Redis answers
        own_redis.resume()
        time.sleep(0.8)
        own_redis.restart()
        events["restarted"] = time.monotonic()
        hits_before = cache.get_stats_sync().cache_hits
        while time.monotonic() - events["restarted"] < 10:
            if cache.get_stats_sync().cache_hits > hits_before:
                break
            time.sleep(0.02)
        recovery = time.monotonic() - events["restarted"]
        time.sleep(0.8)
    finally:
        stop.set()
        for thread in threads:
            thread.join(timeout=30)
        own_redis.resume()

    same_process_stale = [s for s in ledger.stale if s[1] == 0]
    other_process_stale = [s for s in ledger.stale if s[1] == 1]
    print(
        f"\nreads={ledger.reads} errors={len(ledger.errors)} wrong={len(ledger.wrong)} "
        f"stale(writer's process)={len(same_process_stale)} stale(other process)={len(other_process_stale)} "
        f"recovery={recovery:.3f}s"
    )
    assert ledger.reads > 200
    assert ledger.errors == []
    assert ledger.wrong == []
    assert same_process_stale == []
    # Another process can only be served an old entry in the moments after a *paused* backend comes back
    # with its data, until the writer delivers its queued invalidation (retried every 50 ms).
    for when, _, _, _ in other_process_stale:
        assert events["resumed"] <= when <= events["resumed"] + 1.0, (events, other_process_stale)
    assert recovery < 5.0
