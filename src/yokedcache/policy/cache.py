"""``YokedCache``: the policy layer.

Every decision lives here — keys, TTLs and jitter, tag tokens, the codec, stats, fallback, retries and the
circuit breaker — while backends only move bytes. Each operation is written once, as a generator that
yields the backend calls it needs (``(backend, "get", args)``) and returns its result. Two small drivers run
those generators: ``_arun`` awaits the backend's async methods, ``_run`` calls its sync ones. So the async
API and its ``*_sync`` twins share one logic, and the sync face never creates or runs an event loop.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import math
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterable, Mapping, Sequence
from typing import Any, NamedTuple, TypeVar

from ..backends.base import Backend, Inspected, new_token
from ..backends.memory import MemoryBackend
from ..codec.envelope import Opened, open_envelope, peek, seal
from ..config import CacheConfig, jittered_ttl_ms
from ..exceptions import CacheConnectionError, CacheError, CacheSerializationError
from ..keys import check_key, escape_glob, normalize_tags
from ..models import CacheStats, FuzzySearchResult, SerializationMethod
from .pending import PendingInvalidations
from .reads import ReadFrame, current_frame, reads_of
from .resilience import BurstLogger, CircuitBreaker, backoff, is_transient, logger
from .singleflight import SingleFlight

T = TypeVar("T")
Call = tuple[Backend, str, tuple[Any, ...]]
Op = Generator[Call, Any, T]

_MISSING: Any = object()
_GARBAGE: Any = object()
LOCK_BACKOFF_MAX = 0.05  # seconds; a waiter woken while the lock is still held backs off up to this
REPLAY_INTERVAL = 0.05  # seconds between background attempts to deliver queued invalidations
_default_lock = threading.Lock()
_first_cache: YokedCache | None = None


class YokedCache:
    """A cache in front of one backend (or several, routed by key prefix).

    ``YokedCache()`` reads ``YOKEDCACHE_*`` from the environment: the memory backend unless a Redis URL is
    set. Nothing connects until the first operation.
    """

    def __init__(self, config: CacheConfig | None = None, *, metrics: Any = None, **overrides: Any) -> None:
        base = config if config is not None else CacheConfig()
        self.config: CacheConfig = base.replace(**overrides) if overrides else base
        logging.getLogger("yokedcache").setLevel(self.config.log_level.upper())
        self.metrics = metrics
        if metrics is None and self.config.enable_metrics:
            from ..monitoring import metrics_from_config

            self.metrics = metrics_from_config(self.config)
        self._default_backend, self._routes = self._build_backends()
        self._signing_key = self.config.signing_key_bytes
        self._compression = self.config.compression_threshold if self.config.enable_compression else None
        self._breaker = CircuitBreaker(
            self.config.enable_circuit_breaker,
            self.config.circuit_breaker_failure_threshold,
            self.config.circuit_breaker_timeout,
        )
        self._burst = BurstLogger()
        self._plain = not self._breaker.enabled  # metrics alone keep calls on the direct path
        self.flights = SingleFlight()
        self._stats = CacheStats()
        self._published: dict[str, int] = {}
        self._next_publish = time.monotonic() + self.config.stats_publish_interval
        self._started_at: float | None = time.time()
        self._last_error: str | None = None
        self.function_stats: dict[str, Any] = {}
        self.query_stats: dict[str, Any] = {}
        self._tasks: set[asyncio.Future[Any]] = set()
        self._pending = PendingInvalidations(self.config.invalidation_queue_size)
        self._replayer: threading.Thread | None = None
        self._replayer_lock = threading.Lock()
        _register_first(self)

    # --- construction ------------------------------------------------------------------------------
    @classmethod
    def from_env(cls) -> YokedCache:
        return cls(CacheConfig.from_env())

    @classmethod
    def from_yaml(cls, path: str) -> YokedCache:
        return cls(CacheConfig.from_yaml(path))

    def _build_backends(self) -> tuple[Backend, list[tuple[str, Backend]]]:
        cfg = self.config
        default: Backend
        if cfg.backend is not None:
            default = cfg.backend
        elif cfg.default_backend is not None:
            default = cfg.default_backend
        elif cfg.redis_url:
            from ..backends.redis import RedisBackend

            default = RedisBackend(
                cfg.redis_url,
                max_connections=cfg.max_connections,
                connection_timeout=cfg.connection_timeout,
                connection_pool_kwargs=cfg.connection_pool_kwargs,
                operation_timeout=cfg.operation_timeout,
            )
        else:
            default = MemoryBackend(
                max_size=cfg.memory_max_size,
                max_bytes=cfg.memory_max_bytes,
                cleanup_interval=cfg.memory_cleanup_interval,
            )
        default.bind(cfg.key_prefix)
        routes = sorted(cfg.prefix_backends.items(), key=lambda item: len(item[0]), reverse=True)
        for _, backend in routes:
            backend.bind(cfg.key_prefix)
        return default, routes

    @property
    def backend(self) -> Backend:
        return self._default_backend

    @property
    def backends(self) -> list[Backend]:
        seen: list[Backend] = [self._default_backend]
        for _, backend in self._routes:
            if all(backend is not b for b in seen):
                seen.append(backend)
        return seen

    def _route(self, key: str) -> Backend:
        for prefix, backend in self._routes:
            if key == prefix or key.startswith(prefix + ":"):
                return backend
        return self._default_backend

    # --- drivers -----------------------------------------------------------------------------------
    def _run(self, op: Op[T], failure: T) -> T:
        try:
            call = next(op)
            while True:
                try:
                    result = self._call(call)
                except CacheConnectionError as exc:
                    call = op.throw(exc)
                else:
                    call = op.send(result)
        except StopIteration as stop:
            return stop.value
        except CacheConnectionError as exc:
            return self._backend_failed(exc, failure)
        finally:
            if self._next_publish <= time.monotonic():
                self._publish_stats_sync()

    async def _arun(self, op: Op[T], failure: T) -> T:
        try:
            call = next(op)
            while True:
                try:
                    result = await self._acall(call)
                except CacheConnectionError as exc:
                    call = op.throw(exc)
                else:
                    call = op.send(result)
        except StopIteration as stop:
            return stop.value
        except CacheConnectionError as exc:
            return self._backend_failed(exc, failure)
        finally:
            if self._next_publish <= time.monotonic():
                await self._publish_stats()

    # A call goes straight to the backend when nothing needs to watch it (no breaker, no queued
    # invalidations): every extra frame between the caller and the socket is paid on each resume of the
    # await chain, which is measurable on a hit. Failures always take the resilient path. With metrics,
    # network and disk calls are timed (observe); memory-backend calls are counted but not timed: two
    # perf_counter() calls and an observe() cost ~10% of a memory hit and measure mostly themselves.
    def _call(self, call: Call) -> Any:
        backend, name, args = call
        if self._plain and not self._pending:
            metrics = self.metrics
            if metrics is None or backend.kind == "memory":
                try:
                    result = getattr(backend, name)(*args)
                except CacheConnectionError as exc:
                    return self._call_resilient(call, exc)
            else:
                started = time.perf_counter()
                try:
                    result = getattr(backend, name)(*args)
                except CacheConnectionError as exc:
                    return self._call_resilient(call, exc)
                finally:
                    metrics.observe(name, backend.kind, time.perf_counter() - started)
            if self._breaker.failure_count:
                self._breaker.record_success()
            return result
        return self._call_resilient(call, None)

    async def _acall(self, call: Call) -> Any:
        backend, name, args = call
        if self._plain and not self._pending:
            metrics = self.metrics
            if metrics is None or backend.kind == "memory":
                try:
                    result = await getattr(backend, "a" + name)(*args)
                except CacheConnectionError as exc:
                    return await self._acall_resilient(call, exc)
            else:
                started = time.perf_counter()
                try:
                    result = await getattr(backend, "a" + name)(*args)
                except CacheConnectionError as exc:
                    return await self._acall_resilient(call, exc)
                finally:
                    metrics.observe(name, backend.kind, time.perf_counter() - started)
            if self._breaker.failure_count:
                self._breaker.record_success()
            return result
        return await self._acall_resilient(call, None)

    def _call_resilient(self, call: Call, error: CacheConnectionError | None) -> Any:
        """Metrics, breaker, queued-invalidation replay and retries around one backend call."""
        backend, name, args = call
        method = getattr(backend, name)
        attempt, first_try = 0, time.monotonic()
        while True:
            if error is not None:
                attempt += 1
                pause = self._retry_pause(error, attempt, first_try)
                if pause is None:
                    raise error
                time.sleep(pause)
            self._check_breaker()
            started = time.perf_counter()
            try:
                if self._pending and backend in self._pending:
                    self._replay_pending(backend)
                result = method(*args)
            except CacheConnectionError as exc:
                error = exc
            else:
                self._breaker.record_success()
                return result
            finally:
                if self.metrics is not None and backend.kind != "memory":
                    self.metrics.observe(name, backend.kind, time.perf_counter() - started)

    async def _acall_resilient(self, call: Call, error: CacheConnectionError | None) -> Any:
        backend, name, args = call
        method = getattr(backend, "a" + name)
        attempt, first_try = 0, time.monotonic()
        while True:
            if error is not None:
                attempt += 1
                pause = self._retry_pause(error, attempt, first_try)
                if pause is None:
                    raise error
                await asyncio.sleep(pause)
            self._check_breaker()
            started = time.perf_counter()
            try:
                if self._pending and backend in self._pending:
                    await self._areplay_pending(backend)
                result = await method(*args)
            except CacheConnectionError as exc:
                error = exc
            else:
                self._breaker.record_success()
                return result
            finally:
                if self.metrics is not None and backend.kind != "memory":
                    self.metrics.observe(name, backend.kind, time.perf_counter() - started)

    # --- invalidations that could not be delivered ------------------------------------------------------
    def _replay_pending(self, backend: Backend) -> None:
        replay = self._pending.snapshot(backend)
        if replay.flush:
            backend.flush()
        elif replay.tags:
            backend.invalidate(replay.tags)
        self._pending.landed(backend, replay)
        logger.warning("delivered queued %s", replay)

    async def _areplay_pending(self, backend: Backend) -> None:
        replay = self._pending.snapshot(backend)
        if replay.flush:
            await backend.aflush()
        elif replay.tags:
            await backend.ainvalidate(replay.tags)
        self._pending.landed(backend, replay)
        logger.warning("delivered queued %s", replay)

    def _start_replayer(self) -> None:
        """Replay in the background too, so an idle process still delivers its queued invalidations
        within a fraction of a second of the backend's return (other processes may be reading)."""
        with self._replayer_lock:
            if self._replayer is not None and self._replayer.is_alive():
                return
            self._replayer = threading.Thread(target=self._replay_loop, name="yokedcache-replay", daemon=True)
            self._replayer.start()

    def _replay_loop(self) -> None:
        while self._pending:
            time.sleep(REPLAY_INTERVAL)
            for backend in self.backends:
                if backend not in self._pending:
                    continue
                try:
                    self._replay_pending(backend)
                except CacheConnectionError:
                    pass  # still down; try again after the interval
                except Exception as exc:  # never let the replayer die silently with work queued
                    logger.error("replaying invalidations failed: %s", exc)

    def _check_breaker(self) -> None:
        if not self._breaker.allow():
            raise CacheConnectionError("circuit breaker is open: skipping the backend")

    def _retry_pause(self, exc: CacheConnectionError, attempt: int, first_try: float) -> float | None:
        """Seconds to wait before retrying, or ``None`` to give up: only transient errors are retried, with
        exponential backoff and jitter, and never past the operation timeout counted from the first try."""
        self._breaker.record_failure()
        if attempt > self.config.connection_retries or self._breaker.state == "open":
            return None
        if not is_transient(exc.__cause__ or exc):
            return None
        pause = backoff(attempt, self.config.retry_delay)
        budget = self.config.operation_timeout - (time.monotonic() - first_try)
        return pause if pause < budget else None

    def _backend_failed(self, exc: CacheConnectionError, failure: T) -> T:
        self._stats.errors += 1
        self._last_error = str(exc)
        if self.metrics is not None:
            self.metrics.record_error()
        if not self.config.fallback_enabled:
            raise exc
        self._burst.log(logging.WARNING, f"cache backend unavailable, serving from source: {exc}")
        return failure

    # --- shared pure helpers ---------------------------------------------------------------------------
    def _full(self, key: str) -> tuple[Backend, str]:
        backend = self._route(check_key(key))
        return backend, f"{backend.namespace}:{key}"

    def _ttl_ms(self, ttl: float | None) -> int:
        seconds = self.config.default_ttl if ttl is None else ttl
        return jittered_ttl_ms(seconds, self.config.ttl_jitter_percent)

    def _method(self, serialization: SerializationMethod | str | None) -> SerializationMethod:
        if serialization is None:
            return self.config.default_serialization
        try:
            return SerializationMethod.parse(serialization)
        except ValueError as exc:
            raise ValueError(str(exc)) from None

    def seal(
        self,
        full_key: str,
        value: Any,
        serialization: SerializationMethod | str | None = None,
        *,
        compress: bool | None = None,
        fresh_until: float | None = None,
        compute_seconds: float = 0.0,
    ) -> bytes | None:
        """Encode a value for ``full_key``; ``None`` if it cannot be (fallback on: logged, not stored).

        ``fresh_until`` marks an entry kept past its freshness (stale-while-revalidate, stale-if-error):
        plain reads treat it as a miss after that time; ``lookup`` still returns it.
        """
        threshold = self._compression
        if compress is not None:
            threshold = self.config.compression_threshold if compress else None
        try:
            return seal(
                value,
                key=full_key,
                method=self._method(serialization),
                allow_pickle=self.config.allow_pickle,
                compression_threshold=threshold,
                signing_key=self._signing_key,
                max_value_bytes=self.config.max_value_bytes,
                created_at=time.time(),
                fresh_until=fresh_until,
                compute_seconds=compute_seconds,
            )
        except CacheSerializationError as exc:
            if not self.config.fallback_enabled:
                raise
            logger.warning("not caching %s: %s", full_key, exc)
            return None

    def decode(self, full_key: str, body: bytes | None) -> Opened | None:
        """Decode a stored body, freshness aside; ``None`` for absent, garbage, forged or tampered ones."""
        if body is None:
            return None
        opened = open_envelope(
            body,
            key=full_key,
            allow_pickle=self.config.allow_pickle,
            signing_key=self._signing_key,
            allow_legacy=self.config.allow_legacy_insecure_deserialization,
        )
        if opened is None:
            self._stats.errors += 1
            self._burst.log(logging.WARNING, f"undecodable or tampered entry treated as a miss: {full_key}")
        return opened

    def open(self, full_key: str, body: bytes | None) -> Any:
        """The value of a stored body: ``_MISSING`` if absent or past its freshness, ``_GARBAGE`` if it
        cannot be decoded (forged, tampered, truncated...)."""
        if body is None:
            return _MISSING
        opened = self.decode(full_key, body)
        if opened is None:
            return _GARBAGE
        if opened.fresh_until is not None and time.time() >= opened.fresh_until:
            return _MISSING  # kept only for stale serving: invisible to plain reads
        return opened.value

    def count_sets(self, count: int) -> None:
        self._stats.sets += count
        if self.metrics is not None:
            self.metrics.record_set(count)

    def count_deletes(self, count: int) -> None:
        self._stats.deletes += count
        if self.metrics is not None and count:
            self.metrics.record_delete(count)

    def count_read(self, hit: bool) -> None:
        if hit:
            self._stats.cache_hits += 1
        else:
            self._stats.cache_misses += 1
        if self.metrics is not None:
            self.metrics.record_get(hit)

    # --- operations (one generator each) --------------------------------------------------------------
    def _read(self, full: str, body: bytes | None, count: bool) -> Any:
        value = self.open(full, body)
        if count:
            self.count_read(value is not _MISSING and value is not _GARBAGE)
        return value

    def _op_drop_garbage(self, backend: Backend, full: str) -> Op[None]:
        """Remove an entry that could not be decoded, so it is not fetched and rejected again."""
        yield backend, "delete", ([full],)

    def _op_body(self, backend: Backend, full: str) -> Op[bytes | None]:
        """The stored body of ``full``. Inside a computation (a read frame is open), the entry's value
        becomes part of the computed one, so the (tag, token) pairs it recorded join the frame: the
        computed value is then stored only while they are current, and retired with the entry. Still
        one request: ``read_recorded`` returns the body and its recorded pairs together."""
        frame = current_frame()
        if frame is None:
            body: bytes | None = yield backend, "get", (full,)
            return body
        found = yield backend, "read_recorded", (full,)
        return self._depend_on(frame, backend, found)

    def _depend_on(self, frame: ReadFrame, backend: Backend, found: Inspected | None) -> bytes | None:
        """Add what a live entry read inside ``frame`` recorded to it; the entry's body."""
        if found is None:
            return None
        if found.recorded:
            if frame.cache is self and self._route(frame.key) is backend:
                frame.add(found.tags, [token for _, token in found.recorded])
            else:
                frame.safe = False  # tokens of another cache or route mean nothing where it will be stored
        return found.body

    def _op_get(self, key: str, default: Any, count: bool = True) -> Op[Any]:
        backend, full = self._full(key)
        body = yield from self._op_body(backend, full)
        value = self._read(full, body, count)
        if value is _GARBAGE:
            yield from self._op_drop_garbage(backend, full)
            return default
        return default if value is _MISSING else value

    def _op_set(
        self,
        key: str,
        value: Any,
        ttl: float | None,
        tags: Any,
        serialization: Any,
        tokens: Sequence[str] | None = None,
    ) -> Op[bool]:
        backend, full = self._full(key)
        tag_list = normalize_tags(tags)
        _check_ttl(ttl)
        if ttl == 0:
            yield backend, "delete", ([full],)
            return True
        body = self.seal(full, value, serialization)
        if body is None:
            return False
        self.count_sets(1)
        stored: bool = yield backend, "set", ([(full, body, self._ttl_ms(ttl))], tag_list, tokens)
        return stored

    def _op_delete_many(self, keys: Iterable[str]) -> Op[int]:
        by_backend: dict[Backend, list[str]] = {}
        for key in keys:
            backend, full = self._full(key)
            by_backend.setdefault(backend, []).append(full)
        removed = 0
        for backend, fulls in by_backend.items():
            removed += yield backend, "delete", (fulls,)
        self.count_deletes(removed)
        return removed

    def _op_exists(self, key: str) -> Op[bool]:
        backend, full = self._full(key)
        body = yield backend, "get", (full,)
        value = self.open(full, body)
        return value is not _MISSING and value is not _GARBAGE

    def _op_ttl(self, key: str) -> Op[int | None]:
        backend, full = self._full(key)
        ms = yield backend, "ttl", (full,)
        if ms is None:
            return None
        return None if ms < 0 else math.ceil(ms / 1000)

    def _op_expire(self, key: str, ttl: float) -> Op[bool]:
        backend, full = self._full(key)
        _check_ttl(ttl)
        if ttl == 0:
            removed = yield backend, "delete", ([full],)
            return bool(removed)
        changed: bool = yield backend, "expire", (full, max(1, int(ttl * 1000)))
        return changed

    def _op_get_many(self, keys: Sequence[str], count: bool = True) -> Op[dict[str, Any]]:
        located = [(key, *self._full(key)) for key in keys]
        by_backend: dict[Backend, list[str]] = {}
        for _, backend, full in located:
            by_backend.setdefault(backend, []).append(full)
        bodies: dict[str, bytes | None] = {}
        frame = current_frame()
        for backend, fulls in by_backend.items():
            try:
                if frame is None:
                    found = yield backend, "get_many", (fulls,)
                else:  # each entry's recorded tokens join the computation's frame
                    inspected = yield backend, "read_recorded_many", (fulls,)
                    found = [self._depend_on(frame, backend, entry) for entry in inspected]
            except CacheConnectionError as exc:
                if len(by_backend) == 1:
                    raise
                self._backend_failed(exc, None)  # one route down: its keys are misses, the others still hit
                continue
            bodies.update(zip(fulls, found))
        out: dict[str, Any] = {}
        for key, _, full in located:
            value = self._read(full, bodies.get(full), count)
            out[key] = None if value is _MISSING or value is _GARBAGE else value
        return out

    def _op_live_entries(self, tags: Any, limit: int = 100_000) -> Op[dict[str, Any]]:
        """Every live entry (optionally only those carrying any of ``tags``), for search. Not counted
        as reads: a search is not a lookup."""
        keys = yield from self._op_keys("*", limit)
        if tags:
            wanted = set(normalize_tags(tags))
            kept = []
            for key in keys:
                backend, full = self._full(key)
                found = yield backend, "inspect", (full,)
                if found is not None and wanted & set(found.tags):
                    kept.append(key)
            keys = kept
        if not keys:
            return {}
        return (yield from self._op_get_many(keys, count=False))

    def _op_set_many(
        self, mapping: Mapping[str, Any], ttl: float | None, tags: Any, serialization: Any
    ) -> Op[bool]:
        tag_list = normalize_tags(tags)
        _check_ttl(ttl)
        by_backend: dict[Backend, list[tuple[str, bytes, int]]] = {}
        complete = True
        for key, value in mapping.items():
            backend, full = self._full(key)
            body = self.seal(full, value, serialization)
            if body is None:
                complete = False
                continue
            by_backend.setdefault(backend, []).append((full, body, self._ttl_ms(ttl)))
        if ttl == 0:
            yield from self._op_delete_many(list(mapping))
            return True
        for backend, items in by_backend.items():
            self.count_sets(len(items))
            stored = yield backend, "set", (items, tag_list, None)
            complete = complete and bool(stored)
        return complete

    def _op_invalidate_tags(self, tags: Any) -> Op[int]:
        tag_list = normalize_tags(tags)
        if not tag_list:
            return 0
        total = 0
        failure: CacheConnectionError | None = None
        for backend in self.backends:  # every backend it can reach is invalidated now, whatever the others do
            try:
                total += yield backend, "invalidate", (tag_list,)
            except CacheConnectionError as exc:
                failure = exc
                self._pending.add(backend, tag_list)
        if failure is not None:
            self._start_replayer()
            logger.error(
                "invalidation of %s could not reach the backend; queued for replay (%d pending): %s",
                list(tag_list),
                self._pending.size(),
                failure,
            )
            raise failure
        self._stats.invalidations += len(tag_list)
        if self.metrics is not None:
            self.metrics.record_invalidation(len(tag_list))
        return total

    def _op_capture_tokens(self, key: str, tags: Sequence[str]) -> Op[list[str]]:
        backend = self._route(check_key(key))
        tokens: list[str] = yield backend, "capture_tokens", (tags,)
        return tokens

    def _op_get_in_frame(
        self, key: str, tags: Sequence[str], default: Any
    ) -> Op[tuple[Any, list[str] | None]]:
        """``get_or_capture`` inside a computation: a hit reads through the frame (``_op_get``), so a miss
        captures its tokens in a second request."""
        value = yield from self._op_get(key, _MISSING)
        if value is not _MISSING:
            return value, None
        tokens = (yield from self._op_capture_tokens(key, tags)) if tags else []
        return default, tokens

    def _op_store_computed(
        self,
        key: str,
        value: Any,
        ttl: float | None,
        serialization: Any,
        tags: Sequence[str],
        tokens: Sequence[str] | None,
        fresh_for: float | None = None,
        compute_seconds: float = 0.0,
        compress: bool | None = None,
        wait: bool = True,
    ) -> Op[str]:
        if tokens is None:
            return "skipped"  # the tokens could not be read: freshness cannot be vouched for
        backend, full = self._full(key)
        fresh_until = None if fresh_for is None else time.time() + fresh_for
        body = self.seal(
            full, value, serialization, compress=compress, fresh_until=fresh_until,
            compute_seconds=compute_seconds,
        )
        if body is None:
            return "skipped"
        self.count_sets(1)
        items = [(full, body, self._ttl_ms(ttl))]
        if not wait:
            yield backend, "set_unawaited", (items, tags, tokens)
            return "sent"
        stored = yield backend, "set", (items, tags, tokens)
        return "stored" if stored else "stale"

    def _scan_pattern(self, backend: Backend, pattern: str) -> str:
        return f"{escape_glob(backend.namespace)}:{pattern}"

    def _op_keys(self, pattern: str, limit: int | None) -> Op[list[str]]:
        keys: list[str] = []
        for backend in self.backends:
            remaining = None if limit is None else limit - len(keys)
            if remaining is not None and remaining <= 0:
                break
            found = yield backend, "scan", (self._scan_pattern(backend, pattern), remaining)
            keys += [self._owned_user_key(backend, full) for full in found]
        return [k for k in keys if k is not None]

    def _owned_user_key(self, backend: Backend, full: str) -> Any:
        user = backend.user_key(full)
        return user if self._route(user) is backend else None

    def _op_invalidate_pattern(self, pattern: str) -> Op[int]:
        removed = 0
        for backend in self.backends:
            found = yield backend, "scan", (self._scan_pattern(backend, pattern), None)
            if found:
                removed += yield backend, "delete", (found,)
        self.count_deletes(removed)
        self._stats.invalidations += removed
        return removed

    def _op_flush_all(self) -> Op[bool]:
        for backend in self.backends:
            yield backend, "flush", ()
        return True

    def _op_get_meta(self, key: str) -> Op[dict[str, Any] | None]:
        backend, full = self._full(key)
        found = yield backend, "inspect", (full,)
        if found is None:
            return None
        info = peek(found.body)
        if info is None:
            return None
        return {
            "key": key,
            "ttl": None if found.ttl_ms is None else math.ceil(found.ttl_ms / 1000),
            "tags": sorted(found.tags),
            "size_bytes": len(found.body),
            "serialization": info.method.value,
            "compressed": info.compressed,
            "created_at": info.created_at,
        }

    def _op_keys_by_tag(self, tag: str, limit: int) -> Op[list[str]]:
        out: list[str] = []
        for backend in self.backends:
            found = yield backend, "scan", (self._scan_pattern(backend, "*"), None)
            for full in found:
                meta = yield backend, "inspect", (full,)
                if meta is not None and tag in meta.tags:
                    out.append(backend.user_key(full))
                    if len(out) >= limit:
                        return out
        return out

    def _op_ping(self) -> Op[float]:
        start = time.perf_counter()
        for backend in self.backends:
            yield backend, "ping", ()
        return (time.perf_counter() - start) * 1000

    def _op_usage(self) -> Op[tuple[int, int]]:
        count = used = 0
        for backend in self.backends:
            n, b = yield backend, "usage", ()
            count += n
            used += b
        return count, used

    # --- public async API ------------------------------------------------------------------------------
    async def connect(self) -> None:
        """Open connections and ping. Failure raises with fallback off, else logs and retries lazily."""
        await self._arun(self._op_connect(), None)

    def _op_connect(self) -> Op[None]:
        try:
            yield from self._op_ping()
        except CacheConnectionError as exc:
            if not self.config.fallback_enabled:
                raise
            logger.warning("could not connect to the cache backend (will retry lazily): %s", exc)

    async def disconnect(self) -> None:
        """Publish stats, cancel background refreshes and close connections; the cache stays usable."""
        for task in list(self._tasks):
            task.cancel()
        await self._publish_stats()
        for backend in self.backends:
            try:
                await backend.aclose()
            except Exception as exc:  # closing must never fail the caller
                logger.debug("error while closing backend: %s", exc)

    async def __aenter__(self) -> YokedCache:
        await self.connect()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.disconnect()

    async def get(self, key: str, default: Any = None) -> Any:
        """The live value stored under ``key``, else ``default`` (so a cached ``None`` is told apart)."""
        # Written out rather than run as an operation generator: this is the hit path.
        if current_frame() is not None:
            return await self._arun(self._op_get(key, default), default)
        backend, full = self._full(key)
        try:
            if backend.in_process and self._plain and not self._pending:
                body = backend.get(full)  # no I/O: skip the coroutine of its async face
            else:
                body = await self._acall((backend, "get", (full,)))
        except CacheConnectionError as exc:
            return self._backend_failed(exc, default)
        value = self._read(full, body, True)
        if self._next_publish <= time.monotonic():
            await self._publish_stats()
        if value is _MISSING:
            return default
        if value is _GARBAGE:
            await self._arun(self._op_drop_garbage(backend, full), None)
            return default
        return value

    async def set(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        tags: str | Iterable[str] | None = None,
        serialization: SerializationMethod | str | None = None,
    ) -> bool:
        """Store ``value``; ``ttl=None`` uses ``default_ttl`` (jittered), ``0`` removes the key."""
        return await self._arun(self._op_set(key, value, ttl, tags, serialization), False)

    async def delete(self, key: str) -> bool:
        return bool(await self._arun(self._op_delete_many([key]), 0))

    async def exists(self, key: str) -> bool:
        return await self._arun(self._op_exists(key), False)

    async def ttl(self, key: str) -> int | None:
        return await self._arun(self._op_ttl(key), None)

    async def expire(self, key: str, ttl: float) -> bool:
        return await self._arun(self._op_expire(key, ttl), False)

    async def get_or_set(
        self,
        key: str,
        factory: Callable[[], Any],
        ttl: float | None = None,
        tags: str | Iterable[str] | None = None,
        serialization: SerializationMethod | str | None = None,
    ) -> Any:
        """The cached value, or ``factory()``'s result stored with tokens captured before it ran."""
        value = await self.get(key, _MISSING)
        if value is not _MISSING:
            return value

        async def produce() -> Any:
            result = factory()
            return await result if inspect.isawaitable(result) else result

        return await self.fill(key, produce, tags=normalize_tags(tags), ttl=ttl, serialization=serialization)

    async def get_many(self, keys: Sequence[str]) -> dict[str, Any]:
        keys = list(keys)
        return await self._arun(self._op_get_many(keys), dict.fromkeys(keys))

    async def set_many(
        self,
        mapping: Mapping[str, Any],
        ttl: float | None = None,
        tags: str | Iterable[str] | None = None,
        serialization: SerializationMethod | str | None = None,
    ) -> bool:
        return await self._arun(self._op_set_many(mapping, ttl, tags, serialization), False)

    async def delete_many(self, keys: Iterable[str]) -> int:
        return await self._arun(self._op_delete_many(list(keys)), 0)

    async def invalidate_tags(self, tags: str | Iterable[str]) -> int:
        """Replace the tags' tokens: every entry carrying any of them stops being served, in every process."""
        return await self._arun(self._op_invalidate_tags(tags), 0)

    async def invalidate_pattern(self, pattern: str) -> int:
        return await self._arun(self._op_invalidate_pattern(pattern), 0)

    async def flush_all(self) -> bool:
        """Remove everything under this cache's ``key_prefix`` (never other prefixes' keys)."""
        return await self._arun(self._op_flush_all(), False)

    async def get_keys_by_pattern(self, pattern: str, limit: int = 1000) -> list[str]:
        return await self._arun(self._op_keys(pattern, limit), [])

    async def get_all_keys(self, limit: int = 1000) -> list[str]:
        return await self._arun(self._op_keys("*", limit), [])

    async def get_keys_by_tag(self, tag: str, limit: int = 1000) -> list[str]:
        return await self._arun(self._op_keys_by_tag(tag, limit), [])

    async def get_meta(self, key: str) -> dict[str, Any] | None:
        return await self._arun(self._op_get_meta(key), None)

    async def health(self) -> bool:
        try:
            return await self._arun(self._op_ping(), None) is not None
        except Exception:
            return False

    async def detailed_health_check(self) -> dict[str, Any]:
        try:
            latency = await self._arun(self._op_ping(), None)
        except Exception as exc:
            self._last_error = str(exc)
            latency = None
        return self._health_report(latency)

    async def get_stats(self) -> CacheStats:
        usage = await self._arun(self._op_usage(), (0, 0))
        return self._stats_snapshot(usage)

    async def fuzzy_search(
        self, query: str, threshold: int | None = None, max_results: int = 100, tags: Any = None
    ) -> list[FuzzySearchResult]:
        """Live entries whose key fuzzily matches ``query`` (needs ``enable_fuzzy`` and rapidfuzz)."""
        self._require_fuzzy()
        entries = await self._arun(self._op_live_entries(tags), {})
        return self._fuzzy_rank(query, threshold, max_results, entries)

    async def vector_search(
        self,
        query: str,
        threshold: float = 0.1,
        max_results: int = 10,
        tags: Any = None,
        **vectorizer_options: Any,
    ) -> list[Any]:
        """Live entries ranked by TF-IDF similarity of their key and content to ``query`` (``vector``
        extra)."""
        from ..vector_search import rank_entries

        entries = await self._arun(self._op_live_entries(tags), {})
        return rank_entries(entries, query, threshold, max_results, **vectorizer_options)

    # --- hooks for integrations (decorators, dependencies, SQL) ----------------------------------------
    def full_key(self, key: str) -> str:
        """The stored key of a user key: ``<key_prefix>:<key>`` on the backend the key routes to."""
        return self._full(key)[1]

    async def capture_tokens(self, tags: Sequence[str], key: str = "_") -> list[str] | None:
        """Current tokens of ``tags`` (created if missing), read *before* computing a value for ``key``.

        ``None`` if the backend could not be reached (fallback on): such a value must not be stored.
        """
        if not tags:
            return []
        return await self._arun(self._op_capture_tokens(key, tags), None)

    def capture_tokens_sync(self, tags: Sequence[str], key: str = "_") -> list[str] | None:
        if not tags:
            return []
        return self._run(self._op_capture_tokens(key, tags), None)

    async def get_or_capture(
        self, key: str, tags: Sequence[str], default: Any = None, *, tell_frame: bool = True
    ) -> tuple[Any, list[str] | None]:
        """``(value, None)`` for a live entry; on a miss ``(default, tokens)``: the current tokens of
        ``tags``, read before the caller computes the value it will hand to :meth:`store_computed`. On
        Redis both come from one request, so a miss costs no extra round trip. ``tokens`` is ``None`` when
        they could not be read (the value must then not be stored).

        Inside a computation, a hit adds what its entry recorded to the computation's frame, as ``get``
        does (a miss then captures in a second request); ``tell_frame=False`` is for callers that record
        their reads themselves (the SQL cache)."""
        if tell_frame and current_frame() is not None:
            return await self._arun(self._op_get_in_frame(key, tags, default), (default, None))
        backend, full = self._full(key)
        try:
            body, tokens = await self._acall((backend, "get_or_capture", (full, tags)))
        except CacheConnectionError as exc:
            return self._backend_failed(exc, default), None
        value = self._read(full, body, True)
        if self._next_publish <= time.monotonic():
            await self._publish_stats()
        if value is _MISSING or value is _GARBAGE:
            if value is _GARBAGE:
                await self._arun(self._op_drop_garbage(backend, full), None)
            if tokens is None:
                tokens = await self.capture_tokens(tags, key)
            return default, tokens
        return value, None

    def get_or_capture_sync(
        self, key: str, tags: Sequence[str], default: Any = None, *, tell_frame: bool = True
    ) -> tuple[Any, list[str] | None]:
        if tell_frame and current_frame() is not None:
            return self._run(self._op_get_in_frame(key, tags, default), (default, None))
        backend, full = self._full(key)
        try:
            body, tokens = self._call((backend, "get_or_capture", (full, tags)))
        except CacheConnectionError as exc:
            return self._backend_failed(exc, default), None
        value = self._read(full, body, True)
        if self._next_publish <= time.monotonic():
            self._publish_stats_sync()
        if value is _MISSING or value is _GARBAGE:
            if value is _GARBAGE:
                self._run(self._op_drop_garbage(backend, full), None)
            if tokens is None:
                tokens = self.capture_tokens_sync(tags, key)
            return default, tokens
        return value, None

    async def store_computed(
        self,
        key: str,
        value: Any,
        tokens: Sequence[str] | None,
        tags: Sequence[str],
        *,
        ttl: float | None = None,
        serialization: SerializationMethod | str | None = None,
        fresh_for: float | None = None,
        compute_seconds: float = 0.0,
        compress: bool | None = None,
        wait: bool = True,
    ) -> str:
        """Store a computed value only if its captured tokens are still current.

        Returns ``"stored"``, ``"stale"`` (an invalidation happened while it was computed: not stored)
        or ``"skipped"`` (not storable, or the backend was unreachable). With ``fresh_for``, the entry
        is kept for ``ttl`` seconds but plain reads see it only for the first ``fresh_for``. ``compress``
        overrides ``enable_compression`` for this entry (per-table settings). ``wait=False`` does not
        wait for the backend's answer where it can avoid it (Redis): the result is then ``"sent"``, and
        the check against the tokens still happens, in the backend.
        """
        op = self._op_store_computed(
            key, value, ttl, serialization, tags, tokens, fresh_for, compute_seconds, compress, wait
        )
        return await self._arun(op, "skipped")

    def store_computed_sync(
        self,
        key: str,
        value: Any,
        tokens: Sequence[str] | None,
        tags: Sequence[str],
        *,
        ttl: float | None = None,
        serialization: SerializationMethod | str | None = None,
        fresh_for: float | None = None,
        compute_seconds: float = 0.0,
        compress: bool | None = None,
        wait: bool = True,
    ) -> str:
        op = self._op_store_computed(
            key, value, ttl, serialization, tags, tokens, fresh_for, compute_seconds, compress, wait
        )
        return self._run(op, "skipped")

    def _op_lookup(self, key: str) -> Op[Opened | None]:
        backend, full = self._full(key)
        body = yield from self._op_body(backend, full)
        opened = self.decode(full, body)
        if opened is None and body is not None:
            yield from self._op_drop_garbage(backend, full)
        return opened

    async def lookup(self, key: str) -> Opened | None:
        """The decoded entry of ``key`` including one kept past its freshness (``fresh_until``), for
        stale-serving integrations. Not counted as a read: the caller decides what it was."""
        return await self._arun(self._op_lookup(key), None)

    def lookup_sync(self, key: str) -> Opened | None:
        return self._run(self._op_lookup(key), None)

    async def peek(self, key: str, default: Any = None) -> Any:
        """Like ``get`` but not counted in the stats (for integrations re-checking an entry)."""
        return await self._arun(self._op_get(key, default, count=False), default)

    def peek_sync(self, key: str, default: Any = None) -> Any:
        return self._run(self._op_get(key, default, count=False), default)

    def _op_lock(self, name: str, key: str, *args: Any) -> Op[Any]:
        backend, full = self._full(key)
        result = yield backend, name, (full, *args)
        return result

    async def acquire_lock(self, key: str, owner: str, lease: float) -> bool:
        """Take the cross-process compute lock of ``key`` for ``lease`` seconds.

        True when the backend cannot be reached (fallback on): computing locally beats waiting forever.
        """
        return bool(await self._arun(self._op_lock("acquire_lock", key, owner, int(lease * 1000)), True))

    def acquire_lock_sync(self, key: str, owner: str, lease: float) -> bool:
        return bool(self._run(self._op_lock("acquire_lock", key, owner, int(lease * 1000)), True))

    async def release_lock(self, key: str, owner: str) -> None:
        await self._arun(self._op_lock("release_lock", key, owner), None)

    def release_lock_sync(self, key: str, owner: str) -> None:
        self._run(self._op_lock("release_lock", key, owner), None)

    async def wait_for_release(self, key: str, timeout: float) -> None:
        """Block until the lock holder of ``key`` stores its value and releases (or ``timeout``)."""
        await self._arun(self._op_lock("wait_for_release", key, timeout), None)

    def wait_for_release_sync(self, key: str, timeout: float) -> None:
        self._run(self._op_lock("wait_for_release", key, timeout), None)

    # --- computing a missing value: the write-after-invalidate guard and single flight ----------------
    #
    # A value may be stored, and handed to concurrent callers, only if it cannot predate an invalidation
    # those callers must see. Tokens are captured before ``produce`` runs; the backend refuses the store
    # if any changed meanwhile ("stale"). A caller that joined another's computation accepts its result
    # when that computation started after the caller itself did, or when the result was proven fresh at a
    # moment after the caller's call: the store (or a later token check) was *sent* after it. A proof sent
    # earlier says nothing about an invalidation that returned between it and the joiner's call (the
    # leader can be descheduled right after its store). Otherwise the joiner computes again. With the
    # backend down nothing can be proven, so joiners compute for themselves rather than risk an old answer.
    #
    # ``lock`` (a lease in seconds) extends the single flight across processes through the backend: one
    # process computes, the others wait to be woken when it releases and then read its value.
    async def fill(
        self,
        key: str,
        produce: Callable[[], Awaitable[Any]],
        *,
        tags: Sequence[str] = (),
        ttl: float | None = None,
        serialization: SerializationMethod | str | None = None,
        single_flight: bool = True,
        plan: Callable[[Any, float], StorePlan | None] | None = None,
        lock: float | None = None,
        vouched: bool = True,
    ) -> Any:
        """Compute a missing value for ``key`` with ``produce`` and store it (see the note above).

        ``plan(value, seconds)`` says how to store a result (``StorePlan``) or ``None`` to not store it.
        ``vouched=False``: the inputs may predate the tokens (e.g. objects already loaded in a session), so
        the value is returned to this caller only: neither stored nor shared with concurrent callers.
        """
        called_at = time.monotonic()

        async def compute(started_at: float) -> tuple[Any, float, float | None]:
            tokens = await self.capture_tokens(tags, key) if vouched else None
            # A computation around this one depends on this value's own tags too. It needs their tokens
            # even when this value will not be stored (``vouched=False``): its own reads answer for it.
            outer = current_frame()
            own = tokens if vouched or outer is None else await self.capture_tokens(tags, key)
            clock = time.perf_counter()
            with reads_of(self, key) as reads:  # the tables its SQL reads become tags of the value
                value = await produce()
                if vouched or outer is not None:
                    reads.add(tags, own)
            seconds = time.perf_counter() - clock
            all_tags, all_tokens = reads.merge_into(tags, tokens)
            planned = plan(value, seconds) if plan is not None else StorePlan(value, ttl)
            outcome, proven_at = "skipped", time.monotonic()
            if planned is not None:
                outcome = await self.store_computed(
                    key, planned.value, all_tokens, all_tags, ttl=planned.ttl, serialization=serialization,
                    fresh_for=planned.fresh_for, compute_seconds=seconds,
                )
            fresh = outcome == "stored"
            if not fresh and outcome != "stale" and all_tokens is not None:
                proven_at = time.monotonic()
                fresh = all_tokens == (await self.capture_tokens(all_tags, key))
            if reads.older:  # started after a caller does not mean it read data newer than its call
                started_at = -math.inf
            return value, started_at, proven_at if fresh else None

        async def attempt() -> tuple[Any, float, float | None]:
            started_at = time.monotonic()
            if lock is None:
                return await compute(started_at)
            owner, pause = new_token(), 0.0
            while True:
                if await self.acquire_lock(key, owner, lock):
                    try:
                        checked_at = time.monotonic()
                        found = await self.lookup(key)  # stored by another process meanwhile?
                        if _still_fresh(found):
                            return found.value, started_at, checked_at  # type: ignore[union-attr]
                        return await compute(started_at)
                    finally:
                        await self.release_lock(key, owner)
                if pause:
                    await asyncio.sleep(pause)  # woken but still locked: do not spin on the backend
                await self.wait_for_release(key, lock)
                checked_at = time.monotonic()
                found = await self.lookup(key)
                if _still_fresh(found):
                    return found.value, started_at, checked_at  # type: ignore[union-attr]
                pause = min(LOCK_BACKOFF_MAX, pause * 2 or 0.002)

        async def run() -> tuple[Any, float, float | None, ReadFrame]:
            with reads_of(self, key) as shared:  # everything the result depends on, for joiners
                return (*(await attempt()), shared)

        if not single_flight or not vouched:
            return (await attempt())[0]
        full = self.full_key(key)
        while True:
            (value, started_at, proven_at, shared), joined = await self.flights.arun(full, run)
            if not joined:
                return value
            if started_at >= called_at or (proven_at is not None and proven_at >= called_at):
                return _joined(value, shared)

    def fill_sync(
        self,
        key: str,
        produce: Callable[[], Any],
        *,
        tags: Sequence[str] = (),
        ttl: float | None = None,
        serialization: SerializationMethod | str | None = None,
        single_flight: bool = True,
        plan: Callable[[Any, float], StorePlan | None] | None = None,
        lock: float | None = None,
        vouched: bool = True,
    ) -> Any:
        """Sync twin of ``fill``: concurrent threads missing one key share one ``produce`` call."""
        called_at = time.monotonic()

        def compute(started_at: float) -> tuple[Any, float, float | None]:
            tokens = self.capture_tokens_sync(tags, key) if vouched else None
            outer = current_frame()
            own = tokens if vouched or outer is None else self.capture_tokens_sync(tags, key)
            clock = time.perf_counter()
            with reads_of(self, key) as reads:
                value = produce()
                if vouched or outer is not None:
                    reads.add(tags, own)
            seconds = time.perf_counter() - clock
            all_tags, all_tokens = reads.merge_into(tags, tokens)
            planned = plan(value, seconds) if plan is not None else StorePlan(value, ttl)
            outcome, proven_at = "skipped", time.monotonic()
            if planned is not None:
                outcome = self.store_computed_sync(
                    key, planned.value, all_tokens, all_tags, ttl=planned.ttl, serialization=serialization,
                    fresh_for=planned.fresh_for, compute_seconds=seconds,
                )
            fresh = outcome == "stored"
            if not fresh and outcome != "stale" and all_tokens is not None:
                proven_at = time.monotonic()
                fresh = all_tokens == self.capture_tokens_sync(all_tags, key)
            if reads.older:  # started after a caller does not mean it read data newer than its call
                started_at = -math.inf
            return value, started_at, proven_at if fresh else None

        def attempt() -> tuple[Any, float, float | None]:
            started_at = time.monotonic()
            if lock is None:
                return compute(started_at)
            owner, pause = new_token(), 0.0
            while True:
                if self.acquire_lock_sync(key, owner, lock):
                    try:
                        checked_at = time.monotonic()
                        found = self.lookup_sync(key)
                        if _still_fresh(found):
                            return found.value, started_at, checked_at  # type: ignore[union-attr]
                        return compute(started_at)
                    finally:
                        self.release_lock_sync(key, owner)
                if pause:
                    time.sleep(pause)
                self.wait_for_release_sync(key, lock)
                checked_at = time.monotonic()
                found = self.lookup_sync(key)
                if _still_fresh(found):
                    return found.value, started_at, checked_at  # type: ignore[union-attr]
                pause = min(LOCK_BACKOFF_MAX, pause * 2 or 0.002)

        def run() -> tuple[Any, float, float | None, ReadFrame]:
            with reads_of(self, key) as shared:
                return (*attempt(), shared)

        if not single_flight or not vouched:
            return attempt()[0]
        full = self.full_key(key)
        while True:
            (value, started_at, proven_at, shared), joined = self.flights.run(full, run)
            if not joined:
                return value
            if started_at >= called_at or (proven_at is not None and proven_at >= called_at):
                return _joined(value, shared)

    def keep_task(self, task: asyncio.Future[Any]) -> None:
        """Hold a background task until it finishes (cancelled by ``disconnect``)."""
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # --- public sync twins -----------------------------------------------------------------------------
    def connect_sync(self) -> None:
        self._run(self._op_connect(), None)

    def disconnect_sync(self) -> None:
        self._publish_stats_sync()
        for backend in self.backends:
            try:
                backend.close()
            except Exception as exc:
                logger.debug("error while closing backend: %s", exc)

    def __enter__(self) -> YokedCache:
        self.connect_sync()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.disconnect_sync()

    def get_sync(self, key: str, default: Any = None) -> Any:
        if current_frame() is not None:
            return self._run(self._op_get(key, default), default)
        backend, full = self._full(key)
        try:
            body = self._call((backend, "get", (full,)))
        except CacheConnectionError as exc:
            return self._backend_failed(exc, default)
        value = self._read(full, body, True)
        if self._next_publish <= time.monotonic():
            self._publish_stats_sync()
        if value is _MISSING:
            return default
        if value is _GARBAGE:
            self._run(self._op_drop_garbage(backend, full), None)
            return default
        return value

    def set_sync(
        self,
        key: str,
        value: Any,
        ttl: float | None = None,
        tags: str | Iterable[str] | None = None,
        serialization: SerializationMethod | str | None = None,
    ) -> bool:
        return self._run(self._op_set(key, value, ttl, tags, serialization), False)

    def delete_sync(self, key: str) -> bool:
        return bool(self._run(self._op_delete_many([key]), 0))

    def exists_sync(self, key: str) -> bool:
        return self._run(self._op_exists(key), False)

    def ttl_sync(self, key: str) -> int | None:
        return self._run(self._op_ttl(key), None)

    def expire_sync(self, key: str, ttl: float) -> bool:
        return self._run(self._op_expire(key, ttl), False)

    def get_or_set_sync(
        self,
        key: str,
        factory: Callable[[], Any],
        ttl: float | None = None,
        tags: str | Iterable[str] | None = None,
        serialization: SerializationMethod | str | None = None,
    ) -> Any:
        value = self.get_sync(key, _MISSING)
        if value is not _MISSING:
            return value

        def produce() -> Any:
            result = factory()
            if inspect.isawaitable(result):
                close = getattr(result, "close", None)
                if close is not None:
                    close()
                raise TypeError("get_or_set_sync needs a sync factory; use get_or_set for async ones")
            return result

        return self.fill_sync(key, produce, tags=normalize_tags(tags), ttl=ttl, serialization=serialization)

    def get_many_sync(self, keys: Sequence[str]) -> dict[str, Any]:
        keys = list(keys)
        return self._run(self._op_get_many(keys), dict.fromkeys(keys))

    def set_many_sync(
        self,
        mapping: Mapping[str, Any],
        ttl: float | None = None,
        tags: str | Iterable[str] | None = None,
        serialization: SerializationMethod | str | None = None,
    ) -> bool:
        return self._run(self._op_set_many(mapping, ttl, tags, serialization), False)

    def delete_many_sync(self, keys: Iterable[str]) -> int:
        return self._run(self._op_delete_many(list(keys)), 0)

    def invalidate_tags_sync(self, tags: str | Iterable[str]) -> int:
        return self._run(self._op_invalidate_tags(tags), 0)

    def invalidate_pattern_sync(self, pattern: str) -> int:
        return self._run(self._op_invalidate_pattern(pattern), 0)

    def flush_all_sync(self) -> bool:
        return self._run(self._op_flush_all(), False)

    def get_keys_by_pattern_sync(self, pattern: str, limit: int = 1000) -> list[str]:
        return self._run(self._op_keys(pattern, limit), [])

    def get_all_keys_sync(self, limit: int = 1000) -> list[str]:
        return self._run(self._op_keys("*", limit), [])

    def get_keys_by_tag_sync(self, tag: str, limit: int = 1000) -> list[str]:
        return self._run(self._op_keys_by_tag(tag, limit), [])

    def get_meta_sync(self, key: str) -> dict[str, Any] | None:
        return self._run(self._op_get_meta(key), None)

    def health_sync(self) -> bool:
        try:
            return self._run(self._op_ping(), None) is not None
        except Exception:
            return False

    def detailed_health_check_sync(self) -> dict[str, Any]:
        try:
            latency = self._run(self._op_ping(), None)
        except Exception as exc:
            self._last_error = str(exc)
            latency = None
        return self._health_report(latency)

    def get_stats_sync(self) -> CacheStats:
        return self._stats_snapshot(self._run(self._op_usage(), (0, 0)))

    def fuzzy_search_sync(
        self, query: str, threshold: int | None = None, max_results: int = 100, tags: Any = None
    ) -> list[FuzzySearchResult]:
        self._require_fuzzy()
        entries = self._run(self._op_live_entries(tags), {})
        return self._fuzzy_rank(query, threshold, max_results, entries)

    def vector_search_sync(
        self,
        query: str,
        threshold: float = 0.1,
        max_results: int = 10,
        tags: Any = None,
        **vectorizer_options: Any,
    ) -> list[Any]:
        from ..vector_search import rank_entries

        entries = self._run(self._op_live_entries(tags), {})
        return rank_entries(entries, query, threshold, max_results, **vectorizer_options)

    # --- stats, health, search helpers ----------------------------------------------------------------
    def _require_fuzzy(self) -> None:
        if not self.config.enable_fuzzy:
            raise CacheError("fuzzy search is disabled: set enable_fuzzy=True")

    def _fuzzy_rank(
        self, query: str, threshold: int | None, max_results: int, entries: dict[str, Any]
    ) -> list[FuzzySearchResult]:
        try:
            from rapidfuzz import fuzz
        except ImportError:
            hint = "fuzzy_search needs the 'fuzzy' extra: pip install 'yokedcache[fuzzy]'"
            raise ImportError(hint) from None
        minimum = self.config.fuzzy_threshold if threshold is None else threshold
        needle = query.lower()
        results = []
        for key, value in entries.items():
            score = round(fuzz.partial_ratio(needle, key.lower()))
            if score >= minimum:
                results.append(FuzzySearchResult(key, int(score), value))
        results.sort(key=lambda r: (-r.score, r.key))
        return results[:max_results]

    def _stats_snapshot(self, usage: tuple[int, int]) -> CacheStats:
        stats = self._stats
        snapshot = CacheStats(
            cache_hits=stats.cache_hits,
            cache_misses=stats.cache_misses,
            sets=stats.sets,
            deletes=stats.deletes,
            invalidations=stats.invalidations,
            errors=stats.errors,
            key_count=usage[0],
            memory_usage_mb=usage[1] / (1024 * 1024),
            uptime_seconds=int(time.time() - self._started_at) if self._started_at else 0,
            functions={name: values.as_dict() for name, values in list(self.function_stats.items())},
            queries={name: values.as_dict() for name, values in list(self.query_stats.items())},
        )
        if self.metrics is not None:
            self.metrics.record_stats(snapshot, self._breaker.state_number)
        return snapshot

    def _health_report(self, latency_ms: float | None) -> dict[str, Any]:
        backend = self._default_backend
        reachable = latency_ms is not None
        report: dict[str, Any] = {
            "status": "healthy" if reachable and self._breaker.state != "open" else "unhealthy",
            "backend_type": backend.kind,
            "circuit_breaker": {"state": self._breaker.state, "failure_count": self._breaker.failure_count},
            "hit_rate": self._stats.hit_rate,
            "uptime_seconds": int(time.time() - self._started_at) if self._started_at else 0,
            "latency_ms": None if latency_ms is None else round(latency_ms, 3),
            "error": None if reachable else self._last_error,
        }
        if self._routes:
            report["routes"] = {prefix: b.kind for prefix, b in self._routes}
        if backend.kind == "redis":
            report["redis_connected"] = reachable
            report["connection_pool"] = backend.pool_status()  # type: ignore[attr-defined]
        return report

    def _counter_deltas(self) -> dict[str, int]:
        current = {
            "cache_hits": self._stats.cache_hits,
            "cache_misses": self._stats.cache_misses,
            "sets": self._stats.sets,
            "deletes": self._stats.deletes,
            "invalidations": self._stats.invalidations,
            "errors": self._stats.errors,
        }
        if self.function_stats:  # per-function figures of the 100 busiest @cached functions
            from ..monitoring.fleet import function_counters

            current.update(function_counters(self.function_stats))
        deltas = {k: v - self._published.get(k, 0) for k, v in current.items()}
        self._published.update(current)  # keeps the baseline of a function that left the top 100
        self._next_publish = time.monotonic() + (self.config.stats_publish_interval or math.inf)
        return {k: v for k, v in deltas.items() if v}

    def _publish_stats_sync(self) -> None:
        backend = self._default_backend
        if backend.kind == "memory" or not self.config.stats_publish_interval:
            self._next_publish = math.inf
            return
        deltas = self._counter_deltas()
        if deltas:
            try:
                backend.add_counters(deltas)
            except CacheConnectionError:
                pass  # counters are best effort; the cache's own answers never depend on them

    async def _publish_stats(self) -> None:
        backend = self._default_backend
        if backend.kind == "memory" or not self.config.stats_publish_interval:
            self._next_publish = math.inf
            return
        deltas = self._counter_deltas()
        if deltas:
            try:
                await backend.aadd_counters(deltas)
            except CacheConnectionError:
                pass

    def __repr__(self) -> str:
        return f"YokedCache(backend={self._default_backend.kind!r}, key_prefix={self.config.key_prefix!r})"


class StorePlan(NamedTuple):
    """How ``fill`` stores a computed value: the stored form, its TTL (``None``: the default TTL), and
    for entries kept past their freshness, how long plain reads may see them."""

    value: Any
    ttl: float | None = None
    fresh_for: float | None = None


def _joined(value: Any, shared: ReadFrame) -> Any:
    """A joiner's copy of a shared result: the computation read it in its leader's context, so a computation
    the joiner is itself part of must learn what the result depends on."""
    outer = current_frame()
    if outer is not None:
        outer.absorb(shared)
    return value


def _still_fresh(found: Opened | None) -> bool:
    return found is not None and (found.fresh_until is None or time.time() < found.fresh_until)


def _check_ttl(ttl: float | None) -> None:
    if ttl is None:
        return
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not math.isfinite(ttl) or ttl < 0:
        raise ValueError(f"ttl must be a finite number >= 0, got {ttl!r}")


def _register_first(cache: YokedCache) -> None:
    global _first_cache
    with _default_lock:
        if _first_cache is None:
            _first_cache = cache


_explicit_default: YokedCache | None = None


def set_default_cache(cache: YokedCache | None) -> None:
    """Make ``cache`` the one ``@cached`` and ``cached_dependency`` use when given no ``cache=``."""
    global _explicit_default
    _explicit_default = cache


def get_default_cache() -> YokedCache:
    """``set_default_cache``'s cache, else the first ``YokedCache`` created, else one from the environment."""
    if _explicit_default is not None:
        return _explicit_default
    if _first_cache is None:
        YokedCache()  # registers itself as the first cache of the process
    assert _first_cache is not None
    return _first_cache


MISSING = _MISSING
