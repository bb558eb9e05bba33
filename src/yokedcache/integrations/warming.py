"""``warm_cache``: fill a cache from a list of entries before traffic arrives."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from ..keys import check_key, normalize_tags
from ..policy.cache import YokedCache

_ALLOWED = {"key", "value", "ttl", "tags"}


def _validated(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Check every entry before any write, so a typo cannot leave the cache half-warmed."""
    checked = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"warm_cache entry {index} must be a mapping, got {type(entry).__name__}")
        unknown = set(entry) - _ALLOWED
        if unknown:
            raise ValueError(f"warm_cache entry {index} has unknown fields {sorted(unknown)}")
        if "key" not in entry or "value" not in entry:
            raise ValueError(f"warm_cache entry {index} needs 'key' and 'value'")
        check_key(entry["key"])
        ttl = entry.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or ttl < 0):
            raise ValueError(f"warm_cache entry {index} has an invalid ttl {ttl!r}")
        normalize_tags(entry.get("tags"))
        checked.append(entry)
    return checked


async def warm_cache(cache: YokedCache, entries: Iterable[Mapping[str, Any]]) -> int:
    """Store ``{"key", "value", "ttl"?, "tags"?}`` entries concurrently; return how many were stored."""
    checked = _validated(entries)
    results = await asyncio.gather(
        *(cache.set(e["key"], e["value"], ttl=e.get("ttl"), tags=e.get("tags")) for e in checked)
    )
    return sum(1 for stored in results if stored)


def warm_cache_sync(cache: YokedCache, entries: Iterable[Mapping[str, Any]]) -> int:
    """Sync twin of ``warm_cache`` (entries stored one after another on the sync client)."""
    checked = _validated(entries)
    return sum(
        1 for e in checked if cache.set_sync(e["key"], e["value"], ttl=e.get("ttl"), tags=e.get("tags"))
    )
