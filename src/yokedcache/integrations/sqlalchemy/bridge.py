"""Calling the cache from inside SQLAlchemy's synchronous event hooks.

Session and engine events are plain functions. For a sync ``Session`` they run in the caller's thread, and
the cache's native sync client (``*_sync``) answers without any event loop. For an ``AsyncSession`` they run
inside the greenlet SQLAlchemy spawned for the awaited call; there ``await_`` hands a coroutine to the
running event loop and resumes with its result, so the async client is used without blocking the loop and
``await session.commit()`` returns only after the invalidation it triggered has been published.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy.util import concurrency

from ...policy.cache import YokedCache

_await: Any = getattr(concurrency, "await_", None) or concurrency.await_only
_in_greenlet: Any = concurrency.in_greenlet


def cache_get(cache: YokedCache, key: str, default: Any) -> Any:
    if _in_greenlet():
        return _await(cache.get(key, default))
    return cache.get_sync(key, default)


def cache_get_or_capture(
    cache: YokedCache, key: str, tags: Sequence[str], default: Any
) -> tuple[Any, list[str] | None]:
    # the SQL cache records its reads in an enclosing computation itself (reads.record_read)
    if _in_greenlet():
        return _await(cache.get_or_capture(key, tags, default, tell_frame=False))
    return cache.get_or_capture_sync(key, tags, default, tell_frame=False)


def capture_tokens(cache: YokedCache, tags: Sequence[str], key: str) -> list[str] | None:
    if not tags:
        return []
    if _in_greenlet():
        return _await(cache.capture_tokens(tags, key))
    return cache.capture_tokens_sync(tags, key)


def store_computed(
    cache: YokedCache,
    key: str,
    value: Any,
    tokens: Sequence[str] | None,
    tags: Sequence[str],
    ttl: float | None,
    serialization: Any,
    compress: bool | None = None,
) -> str:
    options = {"ttl": ttl, "serialization": serialization, "compress": compress}
    if _in_greenlet():
        return _await(cache.store_computed(key, value, tokens, tags, **options))
    # The query's caller does not need the answer (the backend checks the tokens either way), so a
    # sync miss does not wait a round trip for it.
    return cache.store_computed_sync(key, value, tokens, tags, wait=False, **options)


def invalidate_tags(cache: YokedCache, tags: Sequence[str]) -> None:
    if _in_greenlet():
        _await(cache.invalidate_tags(list(tags)))
    else:
        cache.invalidate_tags_sync(list(tags))
