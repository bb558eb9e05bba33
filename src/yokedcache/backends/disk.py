"""Disk backend: ``diskcache.Cache`` (SQLite index + files) shared by every process of one host.

* **Bytes only, never pickle.** Values are stored as raw bytes (diskcache keeps bytes natively: in its SQLite
  table, or in a file above 32 KiB). A ``Disk`` subclass refuses to store anything else and refuses to
  *unpickle* anything it finds — a pickled value or key written into the directory by another program reads
  as garbage (a miss), never as code execution.
* **Layout.** An entry lives at its full key (``<namespace>:<user key>``) as a frame ``magic | header length
  | tag\\x1ftoken\\x1e... | body`` with diskcache's own expiry; tokens at ``<namespace>:__yc__:t:<tag>``
  (bytes, no expiry), write counts at ``<namespace>:__yc__:n:<tag>``, shared counters (JSON) at
  ``<namespace>:__yc__:stats``. A token evicted by ``max_size_gb`` culling is recreated with a new value:
  entries that recorded it become invalid, never wrongly valid.
* **Reads:** one lookup of the entry plus one per recorded tag (all local SQLite queries). Writes that
  depend on tokens run in ``Cache.transact()`` (``BEGIN IMMEDIATE``), so they are atomic across processes.
* **Listings and flush** iterate the directory's keys in order and keep those of the namespace.
  Invalidated entries are not purged on read (that would take the write lock); they expire or are culled.
* **Async face:** the sync methods run in a worker thread (``asyncio.to_thread``); diskcache is thread-safe
  (one SQLite connection per thread) and fork-safe.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import struct
import threading
import time
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

from ..exceptions import CacheConnectionError
from ..keys import glob_to_regex
from .base import Inspected, ThreadedBackend, decode_recorded, encode_recorded, new_token

try:  # the `disk` extra
    import diskcache as _diskcache
    from diskcache.core import MODE_BINARY as _MODE_BINARY
    from diskcache.core import MODE_RAW as _MODE_RAW
    from diskcache.core import UNKNOWN as _UNKNOWN
except ImportError:  # pragma: no cover - exercised only without the extra
    _diskcache = None

_MAGIC = b"YCd1"
_LEN = struct.Struct(">I")
_FLUSH_BATCH = 500

if _diskcache is not None:

    class _BytesDisk(_diskcache.Disk):
        """diskcache's serializer restricted to str keys and bytes values: no pickle either way."""

        def put(self, key: Any) -> Any:
            if type(key) is not str:
                raise TypeError(f"DiskCacheBackend keys are str, got {type(key).__name__}")
            return super().put(key)

        def get(self, key: Any, raw: bool) -> Any:
            if not raw:  # a pickled key written by someone else: never unpickled
                return "\x00unreadable"
            return super().get(key, raw)

        def store(self, value: Any, read: bool, key: Any = _UNKNOWN) -> Any:
            if type(value) is not bytes:
                raise TypeError(f"DiskCacheBackend stores bytes only, got {type(value).__name__}")
            return super().store(value, read, key=key)

        def fetch(self, mode: int, filename: Any, value: Any, read: bool) -> Any:
            if mode not in (_MODE_RAW, _MODE_BINARY) or read:
                return None  # pickled or text values are not ours: garbage, a miss
            result = super().fetch(mode, filename, value, read)
            return result if isinstance(result, bytes) else None


class _Frame(NamedTuple):
    recorded: tuple[tuple[str, str], ...]
    body: bytes


def _frame(body: bytes, recorded: Sequence[tuple[str, str]]) -> bytes:
    header = encode_recorded(recorded)
    return _MAGIC + _LEN.pack(len(header)) + header + body


def _unframe(raw: Any) -> _Frame | None:
    if not isinstance(raw, bytes) or len(raw) < 4 + _LEN.size or not raw.startswith(_MAGIC):
        return None
    (length,) = _LEN.unpack_from(raw, 4)
    start = 4 + _LEN.size
    if start + length > len(raw):
        return None
    recorded = decode_recorded(raw[start : start + length])
    return None if recorded is None else _Frame(recorded, raw[start + length :])


class DiskCacheBackend(ThreadedBackend):
    kind = "disk"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        max_size_gb: float = 1.0,
        key_prefix: str | None = None,
        *,
        timeout: float = 10.0,
    ) -> None:
        if _diskcache is None:
            raise ImportError("DiskCacheBackend needs the 'disk' extra: pip install 'yokedcache[disk]'")
        super().__init__(key_prefix)
        if max_size_gb <= 0:
            raise ValueError(f"max_size_gb must be > 0, got {max_size_gb!r}")
        if timeout <= 0:
            raise ValueError(f"timeout must be > 0, got {timeout!r}")
        self.directory = os.fspath(directory)
        self.max_size_gb = max_size_gb
        self.timeout = float(timeout)
        self._cache: Any = None
        self._lock = threading.Lock()

    # --- plumbing --------------------------------------------------------------------------------------
    @property
    def cache(self) -> Any:
        """The ``diskcache.Cache`` (opened on first use: constructing the backend does no I/O)."""
        if self._cache is None:
            with self._lock:
                if self._cache is None:
                    with self._errors():
                        self._cache = _diskcache.Cache(
                            self.directory,
                            timeout=self.timeout,
                            disk=_BytesDisk,
                            size_limit=int(self.max_size_gb * 1024**3),
                        )
        return self._cache

    @contextlib.contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except (_diskcache.Timeout, sqlite3.OperationalError, sqlite3.DatabaseError, OSError) as exc:
            if isinstance(exc, (sqlite3.ProgrammingError, sqlite3.IntegrityError)):
                raise
            reason = "timed out waiting for the lock" if isinstance(exc, _diskcache.Timeout) else exc
            raise CacheConnectionError(
                f"diskcache at {self.directory}: {type(exc).__name__}: {reason}"
            ) from exc

    def _token_key(self, tag: str) -> str:
        return self.token_prefix + tag

    def _token(self, tag: str) -> bytes | None:
        raw = self.cache.get(self._token_key(tag))
        return raw if isinstance(raw, bytes) else None

    def _live_frame(self, key: str, tokens: dict[str, bytes | None] | None = None) -> _Frame | None:
        frame = _unframe(self.cache.get(key))
        if frame is None:
            return None
        for tag, token in frame.recorded:
            if tokens is not None and tag in tokens:
                current = tokens[tag]
            else:
                current = self._token(tag)
                if tokens is not None:
                    tokens[tag] = current
            if current != token.encode():
                return None
        return frame

    def _current_tokens(self, tags: Sequence[str]) -> list[str]:
        """Current tokens, creating missing ones (call inside ``transact``)."""
        out = []
        for tag in tags:
            raw = self._token(tag)
            if raw is None:
                raw = new_token().encode()
                self.cache.set(self._token_key(tag), raw)
            out.append(raw.decode("ascii", "replace"))
        return out

    def _namespace_keys(self) -> Iterator[str]:
        """Keys of this namespace, metadata included, in order."""
        start = f"{self.namespace}:"
        end = start[:-1] + chr(ord(start[-1]) + 1)
        for key in self.cache.iterkeys():
            if not isinstance(key, str) or key < start:
                continue
            if key >= end:
                break
            yield key

    # --- sync face -------------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        with self._errors():
            frame = self._live_frame(key)
        return None if frame is None else frame.body

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        tokens: dict[str, bytes | None] = {}
        out: list[bytes | None] = []
        with self._errors():
            for key in keys:
                frame = self._live_frame(key, tokens)
                out.append(None if frame is None else frame.body)
        return out

    def inspect(self, key: str) -> Inspected | None:
        with self._errors():
            raw, expire_time = self.cache.get(key, expire_time=True)
            frame = _unframe(raw)
            if frame is None or any(self._token(t) != tok.encode() for t, tok in frame.recorded):
                return None
        ttl_ms = None if expire_time is None else max(1, int((expire_time - time.time()) * 1000))
        return Inspected(frame.body, tuple(frame.recorded), ttl_ms)

    def capture_tokens(self, tags: Sequence[str]) -> list[str]:
        if not tags:
            return []
        with self._errors():
            current = [self._token(tag) for tag in tags]
            if all(raw is not None for raw in current):
                return [raw.decode("ascii", "replace") for raw in current if raw is not None]
            with self.cache.transact():
                return self._current_tokens(tags)

    def set(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str] | None
    ) -> bool:
        with self._errors(), self.cache.transact():
            if tokens is None:
                recorded = list(zip(tags, self._current_tokens(tags)))
            else:
                if any(self._token(tag) != token.encode() for tag, token in zip(tags, tokens)):
                    return False
                recorded = list(zip(tags, tokens))
            for key, body, ttl_ms in items:
                expire = ttl_ms / 1000 if ttl_ms > 0 else None
                self.cache.set(key, _frame(body, recorded), expire=expire)
            if items:
                for tag in tags:
                    count_key = self.count_prefix + tag
                    previous = _as_int(self.cache.get(count_key))
                    self.cache.set(count_key, str(previous + len(items)).encode())
        return True

    def delete(self, keys: Sequence[str]) -> int:
        removed = 0
        with self._errors(), self.cache.transact():
            tokens: dict[str, bytes | None] = {}
            for key in dict.fromkeys(keys):
                if self._live_frame(key, tokens) is not None:
                    removed += 1
                self.cache.delete(key)
        return removed

    def expire(self, key: str, ttl_ms: int) -> bool:
        with self._errors(), self.cache.transact():
            if self._live_frame(key) is None:
                return False
            return bool(self.cache.touch(key, expire=ttl_ms / 1000 if ttl_ms > 0 else None))

    def invalidate(self, tags: Sequence[str]) -> int:
        writes = 0
        with self._errors(), self.cache.transact():
            for tag in tags:
                self.cache.set(self._token_key(tag), new_token().encode())
                writes += _as_int(self.cache.pop(self.count_prefix + tag))
        return writes

    def scan(self, pattern: str, limit: int | None) -> list[str]:
        regex = glob_to_regex(pattern)
        meta = self.meta_prefix
        found: list[str] = []
        tokens: dict[str, bytes | None] = {}
        with self._errors():
            for key in self._namespace_keys():
                if limit is not None and len(found) >= limit:
                    break
                if key.startswith(meta) or not regex.match(key):
                    continue
                if self._live_frame(key, tokens) is not None:
                    found.append(key)
        return found

    def flush(self) -> int:
        removed = 0
        with self._errors():
            self.cache.expire()  # diskcache's delete ignores expired items: drop them (anyone's) first
            batch: list[str] = []
            for key in self._namespace_keys():  # keyset-paginated: safe while deleting
                batch.append(key)
                if len(batch) >= _FLUSH_BATCH:
                    removed += self._delete_batch(batch)
                    batch = []
            removed += self._delete_batch(batch)
        return removed

    def _delete_batch(self, keys: list[str]) -> int:
        meta = self.meta_prefix
        removed = 0
        with self.cache.transact():
            for key in keys:
                if self.cache.delete(key) and not key.startswith(meta):
                    removed += 1
        return removed

    def ping(self) -> None:
        with self._errors():
            self.cache.get(self.meta_prefix + "ping")

    def usage(self) -> tuple[int, int]:
        meta = self.meta_prefix
        with self._errors():
            count = sum(1 for key in self._namespace_keys() if not key.startswith(meta))
            return count, int(self.cache.volume())

    def add_counters(self, counters: dict[str, int]) -> None:
        key = self.meta_prefix + "stats"
        with self._errors(), self.cache.transact():
            current = _load_counters(self.cache.get(key))
            for name, delta in counters.items():
                current[name] = current.get(name, 0) + int(delta)
            self.cache.set(key, json.dumps(current, sort_keys=True).encode())

    def read_counters(self) -> dict[str, int]:
        with self._errors():
            return _load_counters(self.cache.get(self.meta_prefix + "stats"))

    def close(self) -> None:
        cache = self._cache
        if cache is not None:
            with contextlib.suppress(Exception):
                cache.close()  # this thread's connection; others reconnect or close with their thread

    # --- cross-process compute lock (``Cache.add`` with the lease as expiry; waiters poll) -------------
    def _lock_key(self, key: str) -> str:
        return f"{self.meta_prefix}lock:{self.user_key(key)}"

    def acquire_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        with self._errors():
            return bool(self.cache.add(self._lock_key(key), owner.encode(), expire=max(ttl_ms, 1) / 1000))

    def release_lock(self, key: str, owner: str) -> None:
        lock_key = self._lock_key(key)
        with self._errors(), self.cache.transact():
            if self.cache.get(lock_key) == owner.encode():
                self.cache.delete(lock_key)

    def _lock_held(self, key: str) -> bool:
        with self._errors():
            return self.cache.get(self._lock_key(key)) is not None


def _as_int(raw: Any) -> int:
    try:
        return int(raw) if isinstance(raw, bytes) else 0
    except ValueError:
        return 0


def _load_counters(raw: Any) -> dict[str, int]:
    try:
        data = json.loads(raw) if isinstance(raw, bytes) else {}
    except ValueError:
        return {}
    if not isinstance(data, dict):
        return {}
    return {str(k): int(v) for k, v in data.items() if isinstance(v, int)}
