"""Fleet-wide stats: the shape of the shared counters every process adds to ``<prefix>:__yc__:stats``.

Each cache adds its counter *deltas* to one hash per namespace (``Backend.add_counters``, one pipeline per
``stats_publish_interval``), so the hash holds the sums over every process since the last ``flush_all``.
Fields:

* ``cache_hits``, ``cache_misses``, ``sets``, ``deletes``, ``invalidations``, ``errors``: the
  :class:`~yokedcache.models.CacheStats` counters;
* ``fn:<module.qualname>:hits|misses|hit_us|miss_us``: per ``@cached`` function, times in microseconds
  (integers, because the hash is incremented with ``HINCRBY``); at most :data:`MAX_FUNCTIONS` functions
  per process (the busiest), so the hash stays small;
* ``started_at``: UNIX seconds of the first publication (set once, if the backend records it).

:func:`function_counters` encodes a cache's function stats; :func:`shared_stats` decodes the hash into a
``CacheStats``; :func:`fleet_stats` reads it through a cache (what ``yokedcache stats`` prints).
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ..models import CacheStats

if TYPE_CHECKING:
    from ..policy.cache import YokedCache

#: Counter fields of CacheStats published by every cache.
COUNTER_FIELDS: tuple[str, ...] = ("cache_hits", "cache_misses", "sets", "deletes", "invalidations", "errors")
#: Functions published per process (the busiest first).
MAX_FUNCTIONS = 100
FUNCTION_PREFIX = "fn:"
STARTED_AT = "started_at"
_FUNCTION_FIELDS = ("hits", "misses", "hit_us", "miss_us")


def function_counters(function_stats: Mapping[str, Any], limit: int = MAX_FUNCTIONS) -> dict[str, int]:
    """Cumulative ``fn:<name>:<field>`` counters of the ``limit`` busiest functions.

    ``function_stats`` maps names to objects with ``hits``, ``misses``, ``hit_seconds`` and
    ``miss_seconds`` (the decorator's ``FunctionStats``).
    """
    items = list(function_stats.items())
    if len(items) > limit:
        items.sort(key=lambda item: item[1].hits + item[1].misses, reverse=True)
        items = items[:limit]
    out: dict[str, int] = {}
    for name, stats in items:
        base = f"{FUNCTION_PREFIX}{name}:"
        out[base + "hits"] = int(stats.hits)
        out[base + "misses"] = int(stats.misses)
        out[base + "hit_us"] = round(stats.hit_seconds * 1e6)
        out[base + "miss_us"] = round(stats.miss_seconds * 1e6)
    return out


def shared_stats(
    counters: Mapping[str, int],
    key_count: int = 0,
    memory_usage_mb: float = 0.0,
    now: float | None = None,
) -> CacheStats:
    """The fleet's ``CacheStats`` from the shared hash, with key count and memory read from the backend."""
    from ..integrations.decorators import FunctionStats

    functions: dict[str, FunctionStats] = {}
    for field, value in counters.items():
        if not field.startswith(FUNCTION_PREFIX):
            continue
        name, _, kind = field[len(FUNCTION_PREFIX) :].rpartition(":")
        if not name or kind not in _FUNCTION_FIELDS:
            continue
        stats = functions.setdefault(name, FunctionStats())
        if kind == "hits":
            stats.hits = int(value)
        elif kind == "misses":
            stats.misses = int(value)
        elif kind == "hit_us":
            stats.hit_seconds = int(value) / 1e6
        else:
            stats.miss_seconds = int(value) / 1e6
    started = counters.get(STARTED_AT)
    current = time.time() if now is None else now
    count = {field: int(counters.get(field, 0)) for field in COUNTER_FIELDS}
    return CacheStats(
        cache_hits=count["cache_hits"],
        cache_misses=count["cache_misses"],
        sets=count["sets"],
        deletes=count["deletes"],
        invalidations=count["invalidations"],
        errors=count["errors"],
        key_count=key_count,
        memory_usage_mb=memory_usage_mb,
        uptime_seconds=max(0, int(current - started)) if started else 0,
        functions={name: functions[name].as_dict() for name in sorted(functions)},
    )


def fleet_stats(cache: YokedCache) -> CacheStats:
    """The sums every process sharing ``cache``'s backend and prefix published, with the key count and
    memory read from the backend. Raises ``CacheConnectionError`` if the backend cannot be reached (with
    ``fallback_enabled=False``; otherwise key count and memory read as 0)."""
    usage = cache.get_stats_sync()  # key_count and memory_usage_mb come from the backend
    counters = cache.backend.read_counters()
    return shared_stats(counters, usage.key_count, usage.memory_usage_mb)
