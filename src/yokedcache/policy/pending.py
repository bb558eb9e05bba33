"""Invalidations that could not reach the backend, kept until they land.

Forgetting one would let every process serve data older than a committed write once the backend is back.
While any are pending for a backend, this process sends nothing else to that backend before replaying
them, so it never reads entries they should have killed. The queue is bounded: past the bound, the
replay flushes the whole namespace instead (conservative, never stale).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any


class PendingInvalidations:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tags: dict[Any, set[str]] = {}
        self._overflowed: set[Any] = set()
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._tags) or bool(self._overflowed)

    def __contains__(self, backend: object) -> bool:
        return backend in self._tags or backend in self._overflowed

    def add(self, backend: Any, tags: Iterable[str]) -> None:
        with self._lock:
            if backend in self._overflowed:
                return
            queued = self._tags.setdefault(backend, set())
            queued.update(tags)
            if len(queued) > self.limit:
                del self._tags[backend]
                self._overflowed.add(backend)

    def snapshot(self, backend: Any) -> tuple[tuple[str, ...], bool]:
        """(tags to replay, whether to flush the namespace instead)."""
        with self._lock:
            if backend in self._overflowed:
                return (), True
            return tuple(sorted(self._tags.get(backend, ()))), False

    def landed(self, backend: Any, tags: Iterable[str], flushed: bool) -> None:
        with self._lock:
            if flushed:
                self._overflowed.discard(backend)
                self._tags.pop(backend, None)
                return
            queued = self._tags.get(backend)
            if queued is not None:
                queued.difference_update(tags)
                if not queued:
                    del self._tags[backend]

    def size(self) -> int:
        with self._lock:
            return sum(len(t) for t in self._tags.values()) + len(self._overflowed)
