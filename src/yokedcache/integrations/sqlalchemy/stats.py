"""Per-query-shape statistics, published through ``cache.query_stats`` (and so ``get_stats().queries``).

One entry per normalised SQL text: how often it was served from the cache and from the database, what a
database round costs on average, and the time the cache saved. At most :data:`MAX_SHAPES` shapes are kept
(the oldest is dropped first) so an application generating endless distinct SQL cannot grow memory.
"""

from __future__ import annotations

import threading
from typing import Any

from ...policy.cache import YokedCache

MAX_SHAPES = 1000
_lock = threading.Lock()


class QueryStats:
    """Counters of one query shape; ``as_dict`` derives the rates and the time saved."""

    __slots__ = ("db_seconds", "hit_seconds", "hits", "misses", "sql", "tables")

    def __init__(self, sql: str, tables: frozenset[str]) -> None:
        self.sql = sql
        self.tables = tables
        self.hits = 0
        self.misses = 0
        self.hit_seconds = 0.0
        self.db_seconds = 0.0

    def as_dict(self) -> dict[str, Any]:
        reads = self.hits + self.misses
        mean_db = self.db_seconds / self.misses if self.misses else 0.0
        mean_hit = self.hit_seconds / self.hits if self.hits else 0.0
        return {
            "sql": self.sql,
            "tables": sorted(self.tables),
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / reads if reads else 0.0,
            "mean_db_ms": mean_db * 1000,
            "mean_hit_ms": mean_hit * 1000,
            "time_saved_ms": max(0.0, self.hits * (mean_db - mean_hit) * 1000),
        }


def stats_for(cache: YokedCache, sql: str, tables: frozenset[str]) -> QueryStats:
    """The (bounded) statistics entry of ``sql`` in ``cache.query_stats``."""
    found = cache.query_stats.get(sql)
    if found is None:
        with _lock:
            found = cache.query_stats.get(sql)
            if found is None:
                while len(cache.query_stats) >= MAX_SHAPES:
                    cache.query_stats.pop(next(iter(cache.query_stats)))
                found = cache.query_stats[sql] = QueryStats(sql, tables)
    return found


def record_hit(cache: YokedCache, sql: str, tables: frozenset[str], seconds: float) -> None:
    stats = stats_for(cache, sql, tables)
    stats.hits += 1
    stats.hit_seconds += seconds


def record_miss(cache: YokedCache, sql: str, tables: frozenset[str], db_seconds: float) -> None:
    stats = stats_for(cache, sql, tables)
    stats.misses += 1
    stats.db_seconds += db_seconds
