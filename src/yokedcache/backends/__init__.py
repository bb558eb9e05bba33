"""Storage backends: bytes in, bytes out. Optional ones import their client library only when built."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .base import Backend
from .memory import MemoryBackend

if TYPE_CHECKING:
    from .redis import RedisBackend

__all__ = ["Backend", "MemoryBackend", "RedisBackend"]


def __getattr__(name: str) -> Any:
    if name == "RedisBackend":
        from .redis import RedisBackend

        return RedisBackend
    raise AttributeError(name)
