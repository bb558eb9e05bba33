"""Storage backends: bytes in, bytes out. Optional ones import their client library only when built."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

from .base import Backend
from .memory import MemoryBackend

if TYPE_CHECKING:
    from .disk import DiskCacheBackend
    from .memcached import MemcachedBackend
    from .redis import RedisBackend
    from .sqlite import SQLiteBackend

__all__ = [
    "Backend",
    "DiskCacheBackend",
    "MemcachedBackend",
    "MemoryBackend",
    "RedisBackend",
    "SQLiteBackend",
]

_LAZY = {
    "RedisBackend": ".redis",
    "MemcachedBackend": ".memcached",
    "SQLiteBackend": ".sqlite",
    "DiskCacheBackend": ".disk",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(name)
    return getattr(import_module(module, __name__), name)
