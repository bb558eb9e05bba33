"""Invalidations that could not reach the backend, kept until they land.

Forgetting one would let every process serve data older than a committed write once the backend is back.
While any are pending for a backend, this process sends nothing else to that backend before replaying
them, so it never reads entries they should have killed. The queue is bounded: past the bound, the
replay flushes the whole namespace instead (conservative, never stale).

Every queueing gets a sequence number. A replay lands only what was queued up to the moment it was taken:
an invalidation of the same tag that failed while the replay was on its way (a write committed after the
replay ran) stays queued for the next one.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any, NamedTuple


class Replay(NamedTuple):
    """What to send for one backend: its queued tags, or a namespace flush, as of ``mark``."""

    tags: tuple[str, ...]
    flush: bool
    mark: int

    def __str__(self) -> str:
        return "namespace flush" if self.flush else f"invalidation of {list(self.tags)}"


class PendingInvalidations:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._tags: dict[Any, dict[str, int]] = {}  # backend -> tag -> sequence number of its last queueing
        self._overflowed: dict[Any, int] = {}  # backend -> sequence number of its last queueing
        self._sequence = 0
        self._lock = threading.Lock()

    def __bool__(self) -> bool:
        return bool(self._tags) or bool(self._overflowed)

    def __contains__(self, backend: object) -> bool:
        return backend in self._tags or backend in self._overflowed

    def add(self, backend: Any, tags: Iterable[str]) -> None:
        with self._lock:
            self._sequence += 1
            if backend in self._overflowed:
                self._overflowed[backend] = self._sequence
                return
            queued = self._tags.setdefault(backend, {})
            queued.update(dict.fromkeys(tags, self._sequence))
            if len(queued) > self.limit:
                del self._tags[backend]
                self._overflowed[backend] = self._sequence

    def snapshot(self, backend: Any) -> Replay:
        with self._lock:
            if backend in self._overflowed:
                return Replay((), True, self._sequence)
            return Replay(tuple(sorted(self._tags.get(backend, ()))), False, self._sequence)

    def landed(self, backend: Any, replay: Replay) -> None:
        """``replay`` reached the backend: forget what it covered, keep what was queued after it was taken."""
        with self._lock:
            if replay.flush:
                if self._overflowed.get(backend, replay.mark + 1) <= replay.mark:
                    del self._overflowed[backend]
                return
            queued = self._tags.get(backend)
            if queued is None:
                return
            for tag in replay.tags:
                if queued.get(tag, replay.mark + 1) <= replay.mark:
                    del queued[tag]
            if not queued:
                del self._tags[backend]

    def size(self) -> int:
        with self._lock:
            return sum(len(t) for t in self._tags.values()) + len(self._overflowed)
