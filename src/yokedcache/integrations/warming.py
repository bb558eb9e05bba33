"""``warm_cache``: fill a cache from a list of entries before traffic arrives.

Every entry is validated before anything is written, so a typo in entry 900 cannot leave the cache half
warmed. Entries are then stored concurrently (async) or one after another on the sync client (sync twin).
To warm ``@cached`` functions, calling them concurrently is usually simpler (their keys, tags and tokens
are right by construction); ``func.cache_key(...)`` gives the stored key of a call if entries must be built
by hand (``warm_cache`` takes user keys: drop the ``<key_prefix>:`` part).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping
from typing import Any

from ..exceptions import CacheKeyError
from ..keys import check_key, normalize_tags
from ..policy.cache import YokedCache

_ALLOWED = frozenset({"key", "value", "ttl", "tags"})


def _validated(entries: Iterable[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """Check every entry before any write; ``ValueError`` (``CacheKeyError`` for keys) naming the entry."""
    checked = []
    for index, entry in enumerate(entries):
        if not isinstance(entry, Mapping):
            raise ValueError(f"warm_cache entry {index} must be a mapping, got {type(entry).__name__}")
        unknown = set(entry) - _ALLOWED
        if unknown:
            raise ValueError(
                f"warm_cache entry {index} has unknown fields {sorted(unknown)} "
                "(allowed: key, value, ttl, tags)"
            )
        if "key" not in entry or "value" not in entry:
            raise ValueError(f"warm_cache entry {index} needs both 'key' and 'value'")
        try:
            check_key(entry["key"])
        except CacheKeyError as exc:
            raise CacheKeyError(f"warm_cache entry {index}: {exc}") from None
        ttl = entry.get("ttl")
        if ttl is not None and (isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl >= 0):
            raise ValueError(f"warm_cache entry {index} has an invalid ttl {ttl!r} (seconds >= 0 or None)")
        try:
            normalize_tags(entry.get("tags"))
        except ValueError as exc:
            raise ValueError(f"warm_cache entry {index} has invalid tags: {exc}") from None
        checked.append(entry)
    return checked


async def warm_cache(cache: YokedCache, entries: Iterable[Mapping[str, Any]]) -> int:
    """Store ``{"key", "value", "ttl"?, "tags"?}`` entries concurrently; return how many were stored.

    A malformed entry raises ``ValueError`` before any write. Entries that cannot be stored (unserializable
    value, unreachable backend with fallback on) and ``ttl=0`` entries (which remove the key) are not
    counted.
    """
    checked = _validated(entries)
    results = await asyncio.gather(
        *(cache.set(e["key"], e["value"], ttl=e.get("ttl"), tags=e.get("tags")) for e in checked)
    )
    return sum(1 for entry, stored in zip(checked, results) if stored and entry.get("ttl") != 0)


def warm_cache_sync(cache: YokedCache, entries: Iterable[Mapping[str, Any]]) -> int:
    """Sync twin of ``warm_cache`` (entries stored one after another on the sync client)."""
    checked = _validated(entries)
    stored = 0
    for entry in checked:
        if cache.set_sync(entry["key"], entry["value"], ttl=entry.get("ttl"), tags=entry.get("tags")):
            stored += entry.get("ttl") != 0
    return stored


__all__ = ["warm_cache", "warm_cache_sync"]
