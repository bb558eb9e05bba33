"""Exceptions raised by yokedcache.

Read-side decoding problems never raise: a garbage entry is a miss. Everything here is raised for things the
caller did (a bad key, a bad config, an unserializable value) or, with ``fallback_enabled=False``, for a
backend that cannot be reached.
"""

from __future__ import annotations

from typing import Any


class CacheError(Exception):
    """Base class; also raised for unsupported operations and disabled features."""


YokedCacheError = CacheError


class CacheConnectionError(CacheError):
    """The backend is unreachable, timed out, or the circuit breaker is open."""


class CacheSerializationError(CacheError):
    """A value cannot be stored faithfully (unsupported type, pickle not allowed, too large)."""


class CacheKeyError(CacheError, ValueError):
    """An invalid or reserved key, or a decorator argument with no stable representation."""

    def __init__(self, message: str, *, parameter: str | None = None) -> None:
        super().__init__(message)
        self.parameter = parameter


class ConfigValidationError(CacheError, ValueError):
    """A configuration value is invalid; ``field`` and ``value`` name it."""

    def __init__(self, field: str, value: Any, reason: str) -> None:
        super().__init__(f"invalid value for {field}: {value!r} ({reason})")
        self.field = field
        self.value = value
        self.reason = reason


__all__ = [
    "CacheConnectionError",
    "CacheError",
    "CacheKeyError",
    "CacheSerializationError",
    "ConfigValidationError",
    "YokedCacheError",
]
