"""The backend contract: bytes in, bytes out.

A backend stores opaque entry bodies under full keys (``<prefix>:<user key>``) together with the tag tokens
captured for them, and keeps one random token per tag. It knows nothing of serialization, TTL policy or
decorators. Every operation has a sync method and an async twin named with an ``a`` prefix (``get`` and
``aget``), so the policy layer can drive the same logic from both faces without an event loop per call.

Liveness is part of the contract: an entry is live while it is unexpired and every token it recorded still
equals its tag's current token. ``get`` returns only live bodies, in one round trip where the store allows it.

Transport failures (refused, reset, timeout) are raised as ``CacheConnectionError``; the policy layer turns
them into misses when fallback is on.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass

META_SEGMENT = "__yc__:"


def new_token() -> str:
    """A fresh random tag token. Random, not a counter: a lost counter restarts and old values come back."""
    return secrets.token_hex(8)


def encode_recorded(recorded: Sequence[tuple[str, str]]) -> bytes:
    """The (tag, token) pairs an entry recorded, as stored next to it: ``tag\\x1ftoken\\x1e...``.

    Tags never contain control characters (``keys.normalize_tags``), so the separators are unambiguous.
    """
    return "\x1e".join(f"{tag}\x1f{token}" for tag, token in recorded).encode("utf-8")


def decode_recorded(header: bytes) -> tuple[tuple[str, str], ...] | None:
    """Inverse of ``encode_recorded``; ``None`` for bytes that are not such a header (garbage)."""
    try:
        text = header.decode("utf-8")
    except UnicodeDecodeError:
        return None
    recorded: list[tuple[str, str]] = []
    if text:
        for pair in text.split("\x1e"):
            tag, separator, token = pair.partition("\x1f")
            if not separator or not tag:
                return None
            recorded.append((tag, token))
    return tuple(recorded)


@dataclass(frozen=True)
class Inspected:
    """A live entry's stored parts, for ``get_meta``, listings and reads inside a computation."""

    body: bytes
    recorded: tuple[tuple[str, str], ...]  # (tag, token) pairs as stored with the entry
    ttl_ms: int | None

    @property
    def tags(self) -> tuple[str, ...]:
        return tuple(tag for tag, _ in self.recorded)


class Backend(ABC):
    """Storage for one namespace (``key_prefix``). Subclasses implement the sync and async methods."""

    kind: str = "custom"
    in_process = False  # True when the sync face does no I/O (the async face may then be skipped)

    def __init__(self, key_prefix: str | None = None) -> None:
        self.key_prefix_override = key_prefix
        self.namespace = key_prefix or "yokedcache"

    def bind(self, key_prefix: str) -> None:
        """Called by the cache: the namespace is the backend's own ``key_prefix`` or the cache's."""
        self.namespace = self.key_prefix_override or key_prefix

    @property
    def meta_prefix(self) -> str:
        return f"{self.namespace}:{META_SEGMENT}"

    @property
    def token_prefix(self) -> str:
        return f"{self.meta_prefix}t:"

    @property
    def count_prefix(self) -> str:
        return f"{self.meta_prefix}n:"

    def full_key(self, user_key: str) -> str:
        return f"{self.namespace}:{user_key}"

    def user_key(self, full_key: str) -> str:
        return full_key[len(self.namespace) + 1 :]

    # --- sync face -------------------------------------------------------------------------------
    @abstractmethod
    def get(self, key: str) -> bytes | None: ...

    @abstractmethod
    def get_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    @abstractmethod
    def inspect(self, key: str) -> Inspected | None: ...

    def read_recorded(self, key: str) -> Inspected | None:
        """A read made inside a computation, which needs what the entry recorded: ``inspect``, counted as
        a use where the backend keeps recency (``inspect`` itself serves metadata calls and is not)."""
        return self.inspect(key)

    def read_recorded_many(self, keys: Sequence[str]) -> list[Inspected | None]:
        """``read_recorded`` of each key; backends that can answer all in one request override it."""
        return [self.read_recorded(key) for key in keys]

    @abstractmethod
    def capture_tokens(self, tags: Sequence[str]) -> list[str]:
        """Current token of each tag, creating missing ones."""

    def get_or_capture(self, key: str, tags: Sequence[str]) -> tuple[bytes | None, list[str] | None]:
        """``(body, None)`` for a live entry; on a miss ``(None, tokens)``: the current tokens of ``tags``,
        read before the caller computes the value (``None`` if they could not be read). Backends that can
        answer both in one request override this."""
        body = self.get(key)
        if body is not None:
            return body, None
        return None, self.capture_tokens(tags)

    @abstractmethod
    def set(
        self,
        items: Sequence[tuple[str, bytes, int]],
        tags: Sequence[str],
        tokens: Sequence[str] | None,
    ) -> bool:
        """Store ``(key, body, ttl_ms)`` items carrying ``tags``.

        ``tokens=None`` records the tags' current tokens. Otherwise ``tokens`` were captured before the
        value was computed: if any of them is no longer current, nothing is stored and ``False`` returned
        (the value was computed from data older than an invalidation).
        """

    def set_unawaited(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str]
    ) -> None:
        """:meth:`set` with captured tokens, where the caller does not need to know whether it was stored
        (a computed value, checked against its tokens by the backend): a backend that can send it without
        waiting for the answer does so."""
        self.set(items, tags, tokens)

    @abstractmethod
    def delete(self, keys: Sequence[str]) -> int:
        """Remove entries; return how many were live."""

    def ttl(self, key: str) -> int | None:
        """Remaining milliseconds of a live entry, ``None`` if not live (``-1`` if it never expires)."""
        found = self.inspect(key)
        if found is None:
            return None
        return -1 if found.ttl_ms is None else found.ttl_ms

    @abstractmethod
    def expire(self, key: str, ttl_ms: int) -> bool: ...

    @abstractmethod
    def invalidate(self, tags: Sequence[str]) -> int:
        """Replace the tags' tokens; return the writes that carried them since their last invalidation."""

    @abstractmethod
    def scan(self, pattern: str, limit: int | None) -> list[str]:
        """Full keys of live entries matching the glob ``pattern`` (already namespaced)."""

    @abstractmethod
    def flush(self) -> int:
        """Remove every key of this namespace, entries and metadata; return how many."""

    @abstractmethod
    def ping(self) -> None: ...

    @abstractmethod
    def usage(self) -> tuple[int, int]:
        """(entry count, bytes used) of this namespace, approximately."""

    @abstractmethod
    def add_counters(self, counters: dict[str, int]) -> None:
        """Add to the shared counters of this namespace (fleet-wide stats)."""

    @abstractmethod
    def read_counters(self) -> dict[str, int]: ...

    @abstractmethod
    def close(self) -> None: ...

    # --- cross-process compute lock (optional; defaults suit single-process stores) ---------------
    # ``@cached(lock=True)`` uses these so one process computes while the others wait. A store that is
    # only ever used by one process needs no lock: the in-process single flight already coalesces.
    def acquire_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        return True

    def release_lock(self, key: str, owner: str) -> None:
        return None

    def wait_for_release(self, key: str, timeout: float) -> None:
        time.sleep(min(timeout, 0.01))

    async def aacquire_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        return self.acquire_lock(key, owner, ttl_ms)

    async def arelease_lock(self, key: str, owner: str) -> None:
        self.release_lock(key, owner)

    async def await_for_release(self, key: str, timeout: float) -> None:
        await asyncio.sleep(min(timeout, 0.01))

    # --- async face ------------------------------------------------------------------------------
    @abstractmethod
    async def aget(self, key: str) -> bytes | None: ...

    @abstractmethod
    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]: ...

    @abstractmethod
    async def ainspect(self, key: str) -> Inspected | None: ...

    async def aread_recorded(self, key: str) -> Inspected | None:
        return await self.ainspect(key)

    async def aread_recorded_many(self, keys: Sequence[str]) -> list[Inspected | None]:
        return [await self.aread_recorded(key) for key in keys]

    @abstractmethod
    async def acapture_tokens(self, tags: Sequence[str]) -> list[str]: ...

    async def aget_or_capture(self, key: str, tags: Sequence[str]) -> tuple[bytes | None, list[str] | None]:
        body = await self.aget(key)
        if body is not None:
            return body, None
        return None, await self.acapture_tokens(tags)

    @abstractmethod
    async def aset(
        self,
        items: Sequence[tuple[str, bytes, int]],
        tags: Sequence[str],
        tokens: Sequence[str] | None,
    ) -> bool: ...

    async def aset_unawaited(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str]
    ) -> None:
        await self.aset(items, tags, tokens)

    @abstractmethod
    async def adelete(self, keys: Sequence[str]) -> int: ...

    @abstractmethod
    async def attl(self, key: str) -> int | None: ...

    @abstractmethod
    async def aexpire(self, key: str, ttl_ms: int) -> bool: ...

    @abstractmethod
    async def ainvalidate(self, tags: Sequence[str]) -> int: ...

    @abstractmethod
    async def ascan(self, pattern: str, limit: int | None) -> list[str]: ...

    @abstractmethod
    async def aflush(self) -> int: ...

    @abstractmethod
    async def aping(self) -> None: ...

    @abstractmethod
    async def ausage(self) -> tuple[int, int]: ...

    @abstractmethod
    async def aadd_counters(self, counters: dict[str, int]) -> None: ...

    @abstractmethod
    async def aread_counters(self) -> dict[str, int]: ...

    @abstractmethod
    async def aclose(self) -> None: ...


class InProcessBackend(Backend):
    """A backend with no I/O: its async face runs the sync methods directly (no thread hop, no loop)."""

    in_process = True

    async def aget(self, key: str) -> bytes | None:
        return self.get(key)

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self.get_many(keys)

    async def ainspect(self, key: str) -> Inspected | None:
        return self.inspect(key)

    async def aread_recorded(self, key: str) -> Inspected | None:
        return self.read_recorded(key)

    async def acapture_tokens(self, tags: Sequence[str]) -> list[str]:
        return self.capture_tokens(tags)

    async def aset(
        self,
        items: Sequence[tuple[str, bytes, int]],
        tags: Sequence[str],
        tokens: Sequence[str] | None,
    ) -> bool:
        return self.set(items, tags, tokens)

    async def adelete(self, keys: Sequence[str]) -> int:
        return self.delete(keys)

    async def attl(self, key: str) -> int | None:
        return self.ttl(key)

    async def aexpire(self, key: str, ttl_ms: int) -> bool:
        return self.expire(key, ttl_ms)

    async def ainvalidate(self, tags: Sequence[str]) -> int:
        return self.invalidate(tags)

    async def ascan(self, pattern: str, limit: int | None) -> list[str]:
        return self.scan(pattern, limit)

    async def aflush(self) -> int:
        return self.flush()

    async def aping(self) -> None:
        self.ping()

    async def ausage(self) -> tuple[int, int]:
        return self.usage()

    async def aadd_counters(self, counters: dict[str, int]) -> None:
        self.add_counters(counters)

    async def aread_counters(self) -> dict[str, int]:
        return self.read_counters()

    async def aclose(self) -> None:
        self.close()


class ThreadedBackend(Backend):
    """A backend whose I/O is blocking local calls (a database file, a directory): its async face runs the
    sync methods in a worker thread, so the event loop never waits on the disk.

    Its compute lock is polled: subclasses say whether a lock is held (``_lock_held``).
    """

    wait_slice = 1.0  # seconds: the longest single wait for a compute lock (the caller loops)
    poll_interval = 0.01

    def _lock_held(self, key: str) -> bool:
        raise NotImplementedError

    def wait_for_release(self, key: str, timeout: float) -> None:
        deadline = time.monotonic() + min(timeout, self.wait_slice)
        while self._lock_held(key) and time.monotonic() < deadline:
            time.sleep(self.poll_interval)

    async def aacquire_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        return await asyncio.to_thread(self.acquire_lock, key, owner, ttl_ms)

    async def arelease_lock(self, key: str, owner: str) -> None:
        await asyncio.to_thread(self.release_lock, key, owner)

    async def await_for_release(self, key: str, timeout: float) -> None:
        deadline = time.monotonic() + min(timeout, self.wait_slice)
        while await asyncio.to_thread(self._lock_held, key) and time.monotonic() < deadline:
            await asyncio.sleep(self.poll_interval)

    async def aget(self, key: str) -> bytes | None:
        return await asyncio.to_thread(self.get, key)

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await asyncio.to_thread(self.get_many, keys)

    async def ainspect(self, key: str) -> Inspected | None:
        return await asyncio.to_thread(self.inspect, key)

    async def acapture_tokens(self, tags: Sequence[str]) -> list[str]:
        return await asyncio.to_thread(self.capture_tokens, tags)

    async def aset(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str] | None
    ) -> bool:
        return await asyncio.to_thread(self.set, items, tags, tokens)

    async def adelete(self, keys: Sequence[str]) -> int:
        return await asyncio.to_thread(self.delete, keys)

    async def attl(self, key: str) -> int | None:
        return await asyncio.to_thread(self.ttl, key)

    async def aexpire(self, key: str, ttl_ms: int) -> bool:
        return await asyncio.to_thread(self.expire, key, ttl_ms)

    async def ainvalidate(self, tags: Sequence[str]) -> int:
        return await asyncio.to_thread(self.invalidate, tags)

    async def ascan(self, pattern: str, limit: int | None) -> list[str]:
        return await asyncio.to_thread(self.scan, pattern, limit)

    async def aflush(self) -> int:
        return await asyncio.to_thread(self.flush)

    async def aping(self) -> None:
        await asyncio.to_thread(self.ping)

    async def ausage(self) -> tuple[int, int]:
        return await asyncio.to_thread(self.usage)

    async def aadd_counters(self, counters: dict[str, int]) -> None:
        await asyncio.to_thread(self.add_counters, counters)

    async def aread_counters(self) -> dict[str, int]:
        return await asyncio.to_thread(self.read_counters)

    async def aclose(self) -> None:
        self.close()
