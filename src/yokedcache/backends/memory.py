"""In-process backend: an LRU bounded by entries and by bytes, with TTLs and tag tokens.

It stores the serialized bodies (the cache hands it bytes), so a caller mutating a value it got back can
never change what the next caller reads. One store per instance: two memory caches never share entries.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from typing import NamedTuple

from ..keys import glob_to_regex
from .base import InProcessBackend, Inspected, new_token

# Tokens are tiny but one exists per tag ever used; past this many, the oldest are dropped. Dropping a
# token is always safe: entries that recorded it become invalid, never wrongly valid.
_MAX_TOKENS_FACTOR = 4


class _Slot(NamedTuple):
    body: bytes
    tags: tuple[tuple[str, str], ...]  # (tag, token recorded at write)
    expires_at: float | None  # time.monotonic() deadline
    size: int


class MemoryBackend(InProcessBackend):
    kind = "memory"

    def __init__(
        self,
        max_size: int = 10000,
        max_bytes: int | None = None,
        cleanup_interval: int = 300,
        key_prefix: str | None = None,
    ) -> None:
        super().__init__(key_prefix)
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size!r}")
        if max_bytes is not None and max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1 or None, got {max_bytes!r}")
        self.max_size = max_size
        self.max_bytes = max_bytes
        self.cleanup_interval = cleanup_interval
        self._entries: OrderedDict[str, _Slot] = OrderedDict()
        self._tokens: OrderedDict[str, str] = OrderedDict()
        self._write_counts: dict[str, int] = {}
        self._counters: dict[str, int] = {}
        self._bytes = 0
        self._lock = threading.RLock()
        self._next_sweep = time.monotonic() + cleanup_interval if cleanup_interval else None
        self.evictions = 0

    # --- internal helpers (lock held) ---------------------------------------------------------------
    def _live(self, key: str, now: float) -> _Slot | None:
        slot = self._entries.get(key)
        if slot is None:
            return None
        if slot.expires_at is not None and slot.expires_at <= now:
            self._drop(key)
            return None
        tokens = self._tokens
        for tag, token in slot.tags:
            if tokens.get(tag) != token:
                self._drop(key)
                return None
        return slot

    def _drop(self, key: str) -> _Slot | None:
        slot = self._entries.pop(key, None)
        if slot is not None:
            self._bytes -= slot.size
        return slot

    def _token(self, tag: str) -> str:
        token = self._tokens.get(tag)
        if token is None:
            token = self._tokens[tag] = new_token()
            self._trim_tokens()
        else:
            self._tokens.move_to_end(tag)  # tags in use are the last to be dropped
        return token

    def _trim_tokens(self) -> None:
        while len(self._tokens) > self.max_size * _MAX_TOKENS_FACTOR:
            dropped, _ = self._tokens.popitem(last=False)
            self._write_counts.pop(dropped, None)

    def _evict_to_bounds(self) -> None:
        while len(self._entries) > self.max_size or (
            self.max_bytes is not None and self._bytes > self.max_bytes and self._entries
        ):
            _, slot = self._entries.popitem(last=False)
            self._bytes -= slot.size
            self.evictions += 1

    def _maybe_sweep(self, now: float) -> None:
        if self._next_sweep is None or now < self._next_sweep:
            return
        self._next_sweep = now + self.cleanup_interval
        for key in [k for k, s in self._entries.items() if s.expires_at is not None and s.expires_at <= now]:
            self._drop(key)

    # --- contract ----------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        with self._lock:
            slot = self._live(key, time.monotonic())
            if slot is None:
                return None
            self._entries.move_to_end(key)
            return slot.body

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [self.get(key) for key in keys]

    def inspect(self, key: str) -> Inspected | None:
        with self._lock:
            now = time.monotonic()
            slot = self._live(key, now)
            if slot is None:
                return None
            ttl_ms = None if slot.expires_at is None else max(1, int((slot.expires_at - now) * 1000))
            return Inspected(slot.body, tuple(slot.tags), ttl_ms)

    def read_recorded(self, key: str) -> Inspected | None:
        found = self.inspect(key)
        if found is not None:
            with self._lock:
                if key in self._entries:
                    self._entries.move_to_end(key)  # a read inside a computation is a use, as get() is
        return found

    def capture_tokens(self, tags: Sequence[str]) -> list[str]:
        with self._lock:
            return [self._token(tag) for tag in tags]

    def set(
        self,
        items: Sequence[tuple[str, bytes, int]],
        tags: Sequence[str],
        tokens: Sequence[str] | None,
    ) -> bool:
        with self._lock:
            if tokens is None:
                recorded = tuple((tag, self._token(tag)) for tag in tags)
            else:
                if any(self._tokens.get(tag) != token for tag, token in zip(tags, tokens)):
                    return False
                recorded = tuple(zip(tags, tokens))
            now = time.monotonic()
            self._maybe_sweep(now)
            for key, body, ttl_ms in items:
                self._drop(key)
                size = len(body) + len(key)
                if self.max_bytes is not None and size > self.max_bytes:
                    continue  # can never fit; storing it would evict everything else
                expires_at = now + ttl_ms / 1000 if ttl_ms > 0 else None
                self._entries[key] = _Slot(body, recorded, expires_at, size)
                self._bytes += size
            for tag in tags:
                self._write_counts[tag] = self._write_counts.get(tag, 0) + len(items)
            self._evict_to_bounds()
            return True

    def delete(self, keys: Sequence[str]) -> int:
        with self._lock:
            now = time.monotonic()
            removed = 0
            for key in keys:
                if self._live(key, now) is not None:
                    self._drop(key)
                    removed += 1
            return removed

    def expire(self, key: str, ttl_ms: int) -> bool:
        with self._lock:
            now = time.monotonic()
            slot = self._live(key, now)
            if slot is None:
                return False
            self._entries[key] = slot._replace(expires_at=now + ttl_ms / 1000)
            return True

    def invalidate(self, tags: Sequence[str]) -> int:
        with self._lock:
            writes = 0
            for tag in tags:
                if tag in self._tokens:
                    self._tokens[tag] = new_token()
                    self._tokens.move_to_end(tag)
                # A tag without a token is carried by no live entry (a missing token invalidates), and
                # any value computed against it failed its capture check when the token was dropped: there
                # is nothing to replace. Creating one here would let invalidations of ever-new tags grow
                # the map without bound.
                writes += self._write_counts.pop(tag, 0)
            return writes

    def scan(self, pattern: str, limit: int | None) -> list[str]:
        regex = glob_to_regex(pattern)
        meta = self.meta_prefix
        with self._lock:
            now = time.monotonic()
            found: list[str] = []
            for key in list(self._entries):
                if limit is not None and len(found) >= limit:
                    break
                if key.startswith(meta) or not regex.match(key):
                    continue
                if self._live(key, now) is not None:
                    found.append(key)
            return found

    def flush(self) -> int:
        with self._lock:
            count = len(self._entries)
            self._entries.clear()
            self._tokens.clear()
            self._write_counts.clear()
            self._counters.clear()
            self._bytes = 0
            return count

    def ping(self) -> None:
        return None

    def usage(self) -> tuple[int, int]:
        with self._lock:
            return len(self._entries), self._bytes

    def add_counters(self, counters: dict[str, int]) -> None:
        with self._lock:
            for name, delta in counters.items():
                self._counters[name] = self._counters.get(name, 0) + delta
            self._counters.setdefault("started_at", int(time.time()))  # first publication

    def read_counters(self) -> dict[str, int]:
        with self._lock:
            return dict(self._counters)

    def close(self) -> None:
        return None

    def internal_sizes(self) -> dict[str, int]:
        """Sizes of every internal map, so tests can check that none grows without bound."""
        with self._lock:
            return {
                "entries": len(self._entries),
                "tokens": len(self._tokens),
                "write_counts": len(self._write_counts),
                "bytes": self._bytes,
            }

