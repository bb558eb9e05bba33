"""Redis backend: redis-py (with hiredis when installed), a sync and an async client over blocking pools.

Every read of an entry is one ``EVALSHA`` that also checks the entry's tag tokens; a tagged write is one
script call. Async clients are kept per event loop, so one cache works across successive ``asyncio.run()``
calls; the sync client never touches an event loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import struct
import sys
import threading
import time
import weakref
from collections.abc import Sequence
from typing import Any, Literal
from urllib.parse import unquote, urlsplit

from ..exceptions import CacheConnectionError
from ..keys import escape_glob
from . import _redis_scripts as lua
from .base import Backend, Inspected, decode_recorded, new_token

try:  # the `redis` extra
    import redis as _redis
    import redis.asyncio as _aredis
    from redis.exceptions import ConnectionError as _RedisConnectionError
    from redis.exceptions import MaxConnectionsError as _MaxConnectionsError
    from redis.exceptions import NoScriptError as _NoScriptError
    from redis.exceptions import ResponseError as _RedisResponseError
    from redis.exceptions import TimeoutError as _RedisTimeoutError
except ImportError:  # pragma: no cover - exercised only without the extra
    _redis = None  # type: ignore[assignment]

_TRANSPORT_ERRORS: tuple[type[BaseException], ...] = (OSError, asyncio.TimeoutError)
if _redis is not None:
    _TRANSPORT_ERRORS = (_RedisConnectionError, _RedisTimeoutError, OSError, asyncio.TimeoutError)

_SCAN_BATCH = 1000
_WAKE_TTL_MS = 2000  # a wake-up list outlives its release only briefly (matches the UNLOCK script)
logger = logging.getLogger("yokedcache")
_GET_SHA = hashlib.sha1(lua.GET.encode()).hexdigest()
_SET_SHA = hashlib.sha1(lua.SET.encode()).hexdigest()
_HEADER_END = b"\x1d"
# Redis refuses PX/PEXPIRE values whose deadline overflows a signed 64-bit ms clock ("value is not an
# integer or out of range"); longer TTLs (from ~290 million years up) are clamped to this "forever".
_MAX_TTL_MS = 2**62


class _Watchdog:
    """Enforces the operation timeout of every async operation on one event loop.

    The async client has no socket timeout of its own: redis-py implements one with ``asyncio.wait_for``
    per read (a task per command on Python 3.11), and even one ``asyncio.timeout`` per operation costs a
    timer-heap insert and removal on the hit path. Instead, operations register their deadline in a dict
    and a single timer, armed for the earliest deadline, cancels the late ones. While operations finish
    in time the timer fires about once per timeout period, whatever the number of operations.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.deadlines: dict[asyncio.Task[Any], float] = {}
        self.expired: set[asyncio.Task[Any]] = set()
        self.handle: asyncio.TimerHandle | None = None

    def watch(self, task: asyncio.Task[Any], timeout: float) -> None:
        deadline = self.loop.time() + timeout
        self.deadlines[task] = deadline
        if self.handle is None:
            self.handle = self.loop.call_at(deadline, self._check)

    def _check(self) -> None:
        self.handle = None
        now = self.loop.time()
        earliest = None
        for task, deadline in list(self.deadlines.items()):
            if deadline <= now:
                if task not in self.expired:
                    self.expired.add(task)
                    task.cancel()
            elif earliest is None or deadline < earliest:
                earliest = deadline
        if earliest is not None:
            self.handle = self.loop.call_at(earliest, self._check)


class _AsyncGuard:
    """Bounds one async operation by a timeout and turns transport failures into CacheConnectionError."""

    __slots__ = ("_backend", "_task", "_timeout", "_watchdog")

    def __init__(self, backend: RedisBackend, watchdog: _Watchdog, timeout: float) -> None:
        self._backend = backend
        self._watchdog = watchdog
        self._timeout = timeout
        self._task: asyncio.Task[Any] | None = None

    async def __aenter__(self) -> None:
        task = self._task = asyncio.current_task()
        if task is not None:
            self._watchdog.watch(task, self._timeout)

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        task = self._task
        watchdog = self._watchdog
        if task is not None:
            watchdog.deadlines.pop(task, None)
            if task in watchdog.expired:
                watchdog.expired.discard(task)
                if exc_type is asyncio.CancelledError:
                    if hasattr(task, "uncancel"):
                        task.uncancel()
                    raise CacheConnectionError(
                        f"redis at {_safe_url(self._backend.redis_url)}: no answer within {self._timeout}s"
                    ) from None
        if exc is not None and isinstance(exc, _TRANSPORT_ERRORS):
            raise CacheConnectionError(
                f"redis at {_safe_url(self._backend.redis_url)}: {type(exc).__name__}: {exc}"
            ) from exc
        return False


class _transport:
    """Turn redis-py's transport failures into CacheConnectionError (the policy layer's signal).

    A class rather than ``@contextmanager``: entering a generator-based context manager costs about a
    microsecond, which shows on the sync hit path.
    """

    __slots__ = ("url",)

    def __init__(self, url: str) -> None:
        self.url = url

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> Literal[False]:
        if exc is not None and isinstance(exc, _TRANSPORT_ERRORS):
            message = f"redis at {_safe_url(self.url)}: {type(exc).__name__}: {exc}"
            raise CacheConnectionError(message) from exc
        return False


def _safe_url(url: str) -> str:
    parts = urlsplit(url)
    if parts.password:
        netloc = parts.netloc.replace(f":{parts.password}@", ":***@")
        return parts._replace(netloc=netloc).geturl()
    return url


def _body(frame: bytes | None) -> bytes | None:
    """The entry body inside a stored frame (what follows the tag header)."""
    if frame is None:
        return None
    if frame[:1] == _HEADER_END:
        return frame[1:]
    end = frame.find(_HEADER_END)
    return frame if end < 0 else frame[end + 1 :]


def _token(raw: bytes) -> str:
    """A token as read from Redis. Ours are ASCII; a corrupted one must not raise (garbage is a miss):
    latin-1 decodes any bytes, and a token that is not ASCII never matches when sent back as UTF-8, so a
    value captured under it is simply not stored until an invalidation replaces it."""
    return raw.decode("latin-1")


def _frame_or_tokens(found: Any) -> tuple[bytes | None, list[str] | None]:
    """The GET script's answer when tags were passed: a live entry's frame, or the tags' tokens."""
    if isinstance(found, list):
        return None, [_token(raw) for raw in found]
    return _body(found), None


def _inspected_frame(found: Any) -> Inspected | None:
    """A GET script's answer as :class:`Inspected` (no TTL: not asked for); ``None`` for a miss."""
    parts = _split_frame(found) if isinstance(found, bytes) else None
    return None if parts is None else Inspected(parts[1], parts[0], None)


def _split_frame(frame: bytes) -> tuple[tuple[tuple[str, str], ...], bytes] | None:
    """The (tag, token) pairs a stored frame recorded and its body; ``None`` for a garbled header."""
    end = frame.find(_HEADER_END)
    if end < 0:
        return (), frame
    recorded = decode_recorded(frame[:end])
    return None if recorded is None else (recorded, frame[end + 1 :])


def _parse_sentinel(url: str) -> tuple[list[tuple[str, int]], str, int, dict[str, Any]]:
    parts = urlsplit(url)
    hosts: list[tuple[str, int]] = []
    hostpart = parts.netloc.rsplit("@", 1)[-1]
    for item in hostpart.split(","):
        host, _, port = item.partition(":")
        hosts.append((host, int(port or 26379)))
    path = [p for p in parts.path.split("/") if p]
    if not path:
        raise ValueError(f"sentinel URL needs a service name: {_safe_url(url)}")
    service = path[0]
    db = int(path[1]) if len(path) > 1 else 0
    auth: dict[str, Any] = {}
    if parts.username:
        auth["username"] = unquote(parts.username)
    if parts.password:
        auth["password"] = unquote(parts.password)
    if parts.scheme.startswith("rediss"):
        auth["ssl"] = True
    return hosts, service, db, auth


def _waiting_pool_class() -> Any:
    """An asyncio pool that waits for a free connection instead of failing when all are busy.

    redis-py's asyncio ``BlockingConnectionPool`` waits too, but each checkout takes a lock, checks the
    connection for unread data and records observability counters, about 15 µs per command. Here a
    semaphore bounds the connections (free when uncontended) and idle connections are handed out as
    they are: redis-py disconnects a connection on any error during a command, so an idle one is clean.
    """

    class WaitingConnectionPool(_aredis.ConnectionPool):
        def __init__(self, *args: Any, wait_timeout: float = 30.0, **kwargs: Any) -> None:
            slots = kwargs.pop("max_connections", None) or 50
            super().__init__(*args, **kwargs)
            self._slots = asyncio.Semaphore(slots)
            self._wait_timeout = wait_timeout

        async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            if self._slots.locked():
                try:
                    await asyncio.wait_for(self._slots.acquire(), self._wait_timeout)
                except asyncio.TimeoutError:
                    raise _RedisConnectionError("no free connection in the pool") from None
            else:
                await self._slots.acquire()
            try:
                connection = self._available_connections.pop()
            except IndexError:
                connection = self.make_connection()
            self._in_use_connections.add(connection)
            try:
                if not connection.is_connected:
                    await connection.connect()
            except BaseException:
                await self.release(connection)
                raise
            return connection

        async def release(self, connection: Any) -> None:
            self._in_use_connections.discard(connection)
            try:
                if connection.should_reconnect():
                    await connection.disconnect()
            finally:
                self._available_connections.append(connection)
                self._slots.release()

    return WaitingConnectionPool


def _waiting_sync_pool_class() -> Any:
    """A sync pool that waits for a free connection when all are busy, with a lean checkout.

    redis-py's pools check every connection they hand out for unread data (a system call) and record
    observability counters on each checkout; that is more than a third of a sync hit on loopback. A
    connection can only hold unread data after a command was interrupted, and redis-py disconnects a
    connection on any error during a command, so this pool hands idle connections out as they are.
    When all ``max_connections`` are busy it waits (up to the pool timeout) instead of failing.
    """

    class WaitingSyncConnectionPool(_redis.ConnectionPool):
        def __init__(self, *args: Any, wait_timeout: float = 30.0, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._freed = threading.Condition()
            self._waiters = 0
            self._wait_timeout = wait_timeout

        def get_connection(self, *args: Any, **kwargs: Any) -> Any:
            self._checkpid()
            try:
                connection = self._available_connections.pop()  # atomic under the GIL
            except IndexError:
                connection = self._make_or_wait()
            self._in_use_connections.add(connection)
            try:
                if self._owed:
                    self._settle(connection)
                connection.connect()  # no-op when connected
            except BaseException:
                self.release(connection)
                raise
            return connection

        def reset(self) -> None:
            super().reset()
            # Connections sent a command whose reply nobody waited for: (socket it went on, how many). A fork
            # or a reset leaves the old connections behind, and what they owed with them.
            self._owed: dict[Any, tuple[Any, int]] = {}

        def owe_reply(self, connection: Any) -> None:
            """``connection`` was sent a command and handed back before its reply was read: the reply is
            read (by then long arrived) before the connection's next command."""
            sock = connection._sock
            owed = self._owed.get(connection)
            count = owed[1] if owed is not None and owed[0] is sock else 0
            self._owed[connection] = (sock, count + 1)

        def _settle(self, connection: Any) -> None:
            owed = self._owed.pop(connection, None)
            if owed is None or owed[0] is not connection._sock:
                return  # reconnected since: those replies went with the old socket
            try:
                for _ in range(owed[1]):
                    try:
                        connection.read_response()
                    except _RedisResponseError as exc:  # e.g. the store script failed: it was best effort
                        logger.debug("a deferred Redis command failed: %s", exc)
            except BaseException:
                # A stream we can no longer trust. The error reaches the caller's command (a timeout here
                # is a stalled server: waiting again for the command's own reply would double the stall).
                connection.disconnect()
                raise

        def _make_or_wait(self) -> Any:
            deadline = time.monotonic() + self._wait_timeout
            with self._freed:
                self._waiters += 1
                try:
                    while True:
                        try:
                            return self._available_connections.pop()
                        except IndexError:
                            pass
                        with self._lock:
                            if self._created_connections < self.max_connections:
                                return self.make_connection()
                        remaining = deadline - time.monotonic()
                        if remaining <= 0:
                            raise _MaxConnectionsError("no free connection in the pool")
                        self._freed.wait(min(remaining, 0.05))
                finally:
                    self._waiters -= 1

        def release(self, connection: Any) -> None:
            if connection.pid != self.pid:
                return
            self._in_use_connections.discard(connection)
            self._available_connections.append(connection)
            if self._waiters:
                with self._freed:
                    self._freed.notify()

    return WaitingSyncConnectionPool


def _kernel_timeout_connection(base: type, timeout: float) -> type:
    """A connection class whose blocking socket gets its read/write timeout from the kernel.

    With ``socket_timeout`` set, Python puts the socket in timeout mode and polls before every send
    and receive — two extra system calls per command, about a third of a sync hit. ``SO_RCVTIMEO`` /
    ``SO_SNDTIMEO`` bound a blocking socket at no per-call cost; a late answer surfaces as an
    ``OSError``, which redis-py turns into a connection error and the cache into a miss.
    """

    def _connect(self: Any) -> Any:
        sock = base._connect(self)  # type: ignore[attr-defined]
        seconds = int(timeout)
        interval = struct.pack("ll", seconds, int((timeout - seconds) * 1_000_000))
        raw = getattr(sock, "_sock", sock)
        for option in (socket.SO_RCVTIMEO, socket.SO_SNDTIMEO):
            raw.setsockopt(socket.SOL_SOCKET, option, interval)
        return sock

    return type(f"KernelTimeout{base.__name__}", (base,), {"_connect": _connect})


class _ReadBatcher:
    """Sends concurrent reads of one event loop together (auto-pipelining).

    A read issued while no other is in flight goes out at once, so a lone caller pays nothing. Reads
    issued while others are in flight are queued and sent on the next loop iteration as one pipeline:
    100 concurrent ``get`` calls cost two round trips instead of 100 connection checkouts. Each read is
    still *sent after its caller asked*, so a caller never receives an answer older than its own call
    (unlike coalescing callers onto a read already in flight, which could predate an invalidation).
    """

    def __init__(self, backend: RedisBackend) -> None:
        self.backend = backend
        self.in_flight = 0
        self.queued: list[tuple[str, asyncio.Future[bytes | None]]] = []
        self.scheduled = False

    def idle(self) -> bool:
        return self.in_flight == 0 and not self.queued

    def done_one(self) -> None:
        self.in_flight -= 1

    async def join(self, key: str) -> bytes | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes | None] = loop.create_future()
        self.queued.append((key, future))
        if not self.scheduled:
            self.scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self.scheduled = False
        batch, self.queued = self.queued, []
        if batch:
            self.in_flight += 1
            self.backend.keep_task(asyncio.ensure_future(self._send(batch)))

    async def _send(self, batch: list[tuple[str, asyncio.Future[bytes | None]]]) -> None:
        try:
            frames = await self.backend._aget_frames([key for key, _ in batch])
        except BaseException as exc:  # the transport failed: every caller of the batch sees it
            error = exc if isinstance(exc, Exception) else CacheConnectionError(f"read cancelled: {exc!r}")
            for _, future in batch:
                if not future.done():
                    future.set_exception(error)
            if error is not exc:
                raise
        else:
            for (_, future), frame in zip(batch, frames):
                if not future.done():
                    future.set_result(_body(frame) if isinstance(frame, bytes) else None)
        finally:
            self.in_flight -= 1


class RedisBackend(Backend):
    kind = "redis"

    def __init__(
        self,
        redis_url: str = "redis://localhost:6379/0",
        max_connections: int = 50,
        connection_timeout: float = 30,
        connection_pool_kwargs: dict[str, Any] | None = None,
        key_prefix: str | None = None,
        operation_timeout: float | None = None,
    ) -> None:
        if _redis is None:
            raise ImportError("RedisBackend needs the 'redis' extra: pip install 'yokedcache[redis]'")
        super().__init__(key_prefix)
        self.redis_url = redis_url
        self.max_connections = max_connections
        self.connection_timeout = connection_timeout
        self.operation_timeout = operation_timeout or connection_timeout
        self.pool_kwargs = dict(connection_pool_kwargs or {})
        self._sync: Any = None
        self._sync_scripts: dict[str, Any] = {}
        self._async: dict[asyncio.AbstractEventLoop, tuple[Any, dict[str, Any]]] = {}
        self._watchdogs: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Watchdog] = (
            weakref.WeakKeyDictionary()
        )
        self._batchers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _ReadBatcher] = (
            weakref.WeakKeyDictionary()
        )
        self._tasks: set[asyncio.Future[Any]] = set()
        self._lock = threading.Lock()

    # --- clients -----------------------------------------------------------------------------------
    def _client_kwargs(self) -> dict[str, Any]:
        kwargs: dict[str, Any] = {
            "max_connections": self.max_connections,
            "socket_timeout": self.operation_timeout,
            "socket_connect_timeout": min(self.connection_timeout, max(self.operation_timeout, 1.0)),
            # the pool waits this long for a free connection instead of failing when all are busy
            "timeout": self.connection_timeout,
        }
        kwargs.update(self.pool_kwargs)
        return kwargs

    def _make_client(self, module: Any) -> Any:
        kwargs = self._client_kwargs()
        if self.redis_url.startswith(("redis+sentinel", "rediss+sentinel")):
            hosts, service, db, auth = _parse_sentinel(self.redis_url)
            sentinel_mod = module.sentinel if hasattr(module, "sentinel") else _redis.sentinel
            sentinel = sentinel_mod.Sentinel(
                hosts, socket_timeout=kwargs["socket_timeout"], sentinel_kwargs=None, **auth
            )
            return sentinel.master_for(service, db=db, socket_timeout=kwargs["socket_timeout"])
        if module is _aredis:
            wait = kwargs.pop("timeout")
            kwargs["socket_timeout"] = None  # bounded by _AsyncGuard instead
            pool = _waiting_pool_class().from_url(self.redis_url, wait_timeout=wait, **kwargs)
        else:
            wait = kwargs.pop("timeout")
            kernel_timeout = sys.platform.startswith("linux") and "socket_timeout" not in self.pool_kwargs
            if kernel_timeout:
                kwargs["socket_timeout"] = None
            pool = _waiting_sync_pool_class().from_url(self.redis_url, wait_timeout=wait, **kwargs)
            if kernel_timeout:
                timed = _kernel_timeout_connection(pool.connection_class, self.operation_timeout)
                pool.connection_class = timed
        return module.Redis(connection_pool=pool)

    def _register(self, client: Any) -> dict[str, Any]:
        return {name: client.register_script(getattr(lua, name)) for name in lua.SCRIPT_NAMES}

    def _sync_client(self) -> tuple[Any, dict[str, Any]]:
        if self._sync is None:
            with self._lock:
                if self._sync is None:
                    client = self._make_client(_redis)
                    self._sync_scripts = self._register(client)
                    self._sync = client
        return self._sync, self._sync_scripts

    def _async_client(self) -> tuple[Any, dict[str, Any]]:
        loop = asyncio.get_running_loop()
        found = self._async.get(loop)
        if found is None:
            for old in [lp for lp in self._async if lp.is_closed()]:
                del self._async[old]  # its connections died with it
            client = self._make_client(_aredis)
            found = self._async[loop] = (client, self._register(client))
        return found

    def pool_status(self) -> dict[str, int]:
        """Connections of the sync pool: created ones minus those idle in the pool are in use."""
        client = self._sync
        in_use = 0
        if client is not None:
            pool = client.connection_pool
            in_use = len(getattr(pool, "_in_use_connections", ()))
        return {"available": self.max_connections - in_use, "in_use": in_use, "max": self.max_connections}

    # --- argument builders shared by both faces ----------------------------------------------------
    def _set_args(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str] | None
    ) -> list[Any]:
        args: list[Any] = [self.token_prefix, self.count_prefix, "c" if tokens is None else "k", len(tags)]
        if tokens is None:  # candidates, used only for tags that have no token yet
            base = new_token()
            tokens = [f"{base}{i}" for i in range(len(tags))]
        for tag, token in zip(tags, tokens):
            args += (tag, token)
        for _, body, ttl_ms in items:
            args += (body, min(ttl_ms, _MAX_TTL_MS))
        return args

    def _capture_args(self, tags: Sequence[str]) -> list[Any]:
        args: list[Any] = [self.token_prefix]
        base = new_token()  # one random draw; the index keeps each candidate unique
        for i, tag in enumerate(tags):
            args += (tag, f"{base}{i}")
        return args

    def _invalidate_args(self, tags: Sequence[str]) -> list[Any]:
        args: list[Any] = [self.token_prefix, self.count_prefix]
        for tag in tags:
            args += (tag, new_token())
        return args

    @staticmethod
    def _inspected(found: Any) -> Inspected | None:
        if not found:
            return None
        frame, pttl = found
        parts = _split_frame(frame)
        if parts is None:
            return None  # a header the scripts could match but we cannot read: garbage, a miss
        recorded, body = parts
        return Inspected(body, recorded, None if pttl < 0 else int(pttl))

    # --- sync face ---------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        client, scripts = self._sync_client()
        with _transport(self.redis_url):
            try:
                frame: bytes | None = client.evalsha(_GET_SHA, 1, key, self.token_prefix)
            except _NoScriptError:
                frame = scripts["GET"](keys=[key], args=[self.token_prefix])  # loads the script
            except _RedisResponseError:
                return None  # e.g. a key of another type under our prefix: garbage is a miss
            return _body(frame)

    def get_or_capture(self, key: str, tags: Sequence[str]) -> tuple[bytes | None, list[str] | None]:
        if not tags:
            return self.get(key), []
        client, scripts = self._sync_client()
        args = self._capture_args(tags)
        with _transport(self.redis_url):
            try:
                found = client.evalsha(_GET_SHA, 1, key, *args)
            except _NoScriptError:
                found = scripts["GET"](keys=[key], args=args)  # loads the script
            except _RedisResponseError:
                return None, None  # garbage under the key: a miss whose tokens the caller reads itself
        return _frame_or_tokens(found)

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return [_body(r) if isinstance(r, bytes) else None for r in self._get_frames(keys)]

    def read_recorded_many(self, keys: Sequence[str]) -> list[Inspected | None]:
        return [_inspected_frame(r) for r in self._get_frames(keys)]  # the frames carry what they recorded

    def _get_frames(self, keys: Sequence[str]) -> list[Any]:
        # EVALSHA straight into the pipeline: a Script object would send SCRIPT EXISTS first, doubling
        # the round trips; the script is loaded only if the server reports it missing.
        client, _ = self._sync_client()
        with _transport(self.redis_url):
            for _ in range(2):
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.evalsha(_GET_SHA, 1, key, self.token_prefix)
                results = pipe.execute(raise_on_error=False)
                if not any(isinstance(r, _NoScriptError) for r in results):
                    break
                client.script_load(lua.GET)
        return list(results)

    def inspect(self, key: str) -> Inspected | None:
        _, scripts = self._sync_client()
        with _transport(self.redis_url):
            try:
                return self._inspected(scripts["INSPECT"](keys=[key], args=[self.token_prefix]))
            except _RedisResponseError:
                return None

    def capture_tokens(self, tags: Sequence[str]) -> list[str]:
        if not tags:
            return []
        _, scripts = self._sync_client()
        with _transport(self.redis_url):
            return [_token(raw) for raw in scripts["CAPTURE"](args=self._capture_args(tags))]

    def set(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str] | None
    ) -> bool:
        client, scripts = self._sync_client()
        with _transport(self.redis_url):
            if not tags and len(items) == 1:
                key, body, ttl_ms = items[0]
                client.set(key, _HEADER_END + body, px=min(ttl_ms, _MAX_TTL_MS))
                return True
            keys = [key for key, _, _ in items]
            args = self._set_args(items, tags, tokens)
            try:
                return bool(client.evalsha(_SET_SHA, len(keys), *keys, *args))
            except _NoScriptError:
                return bool(scripts["SET"](keys=keys, args=args))

    def set_unawaited(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str]
    ) -> None:
        """:meth:`set` with captured tokens, without waiting for the reply: the command is written and the
        connection goes back to the pool, which reads the reply before the connection's next command
        (commands on one connection run in order, so this thread's next read sees the entry). EVAL with
        the script's text cannot fail with NOSCRIPT, whose reply would come too late to retry."""
        client, _ = self._sync_client()
        pool = client.connection_pool
        if not hasattr(pool, "owe_reply"):
            self.set(items, tags, tokens)
            return
        keys = [key for key, _, _ in items]
        args = self._set_args(items, tags, tokens)
        with _transport(self.redis_url):
            connection = pool.get_connection()
            try:
                connection.send_command("EVAL", lua.SET, len(keys), *keys, *args)
                pool.owe_reply(connection)
            except BaseException:
                connection.disconnect()
                raise
            finally:
                pool.release(connection)

    def delete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        _, scripts = self._sync_client()
        with _transport(self.redis_url):
            return int(scripts["DELETE"](keys=list(keys), args=[self.token_prefix]))

    def ttl(self, key: str) -> int | None:
        _, scripts = self._sync_client()
        with _transport(self.redis_url):
            result = scripts["TTL"](keys=[key], args=[self.token_prefix])
        return None if result is None else int(result)

    def expire(self, key: str, ttl_ms: int) -> bool:
        _, scripts = self._sync_client()
        with _transport(self.redis_url):
            return bool(scripts["EXPIRE"](keys=[key], args=[self.token_prefix, min(ttl_ms, _MAX_TTL_MS)]))

    def invalidate(self, tags: Sequence[str]) -> int:
        if not tags:
            return 0
        _, scripts = self._sync_client()
        with _transport(self.redis_url):
            return int(scripts["INVALIDATE"](args=self._invalidate_args(tags)))

    def scan(self, pattern: str, limit: int | None) -> list[str]:
        client, scripts = self._sync_client()
        meta = self.meta_prefix.encode()
        found: list[str] = []
        with _transport(self.redis_url):
            batch: list[bytes] = []
            for raw in client.scan_iter(match=pattern, count=_SCAN_BATCH):
                if raw.startswith(meta):
                    continue
                batch.append(raw)
                if len(batch) >= _SCAN_BATCH:
                    found += self._keep_alive(batch, scripts["ALIVE"](keys=batch, args=[self.token_prefix]))
                    batch = []
                    if limit is not None and len(found) >= limit:
                        break
            if batch:
                found += self._keep_alive(batch, scripts["ALIVE"](keys=batch, args=[self.token_prefix]))
        return found[:limit] if limit is not None else found

    @staticmethod
    def _keep_alive(batch: list[bytes], flags: list[int]) -> list[str]:
        return [key.decode("utf-8", "surrogateescape") for key, ok in zip(batch, flags) if ok]

    def flush(self) -> int:
        client, _ = self._sync_client()
        removed = 0
        with _transport(self.redis_url):
            batch: list[bytes] = []
            for raw in client.scan_iter(match=escape_glob(self.namespace) + ":*", count=_SCAN_BATCH):
                batch.append(raw)
                if len(batch) >= _SCAN_BATCH:
                    removed += client.unlink(*batch)
                    batch = []
            if batch:
                removed += client.unlink(*batch)
        return removed

    def ping(self) -> None:
        client, _ = self._sync_client()
        with _transport(self.redis_url):
            client.ping()

    def usage(self) -> tuple[int, int]:
        client, _ = self._sync_client()
        meta = self.meta_prefix.encode()
        with _transport(self.redis_url):
            count = sum(
                1
                for raw in client.scan_iter(match=escape_glob(self.namespace) + ":*", count=_SCAN_BATCH)
                if not raw.startswith(meta)
            )
            memory = int(client.info("memory").get("used_memory", 0))
        return count, memory

    def add_counters(self, counters: dict[str, int]) -> None:
        client, _ = self._sync_client()
        with _transport(self.redis_url):
            pipe = client.pipeline(transaction=False)
            for name, delta in counters.items():
                pipe.hincrby(self.meta_prefix + "stats", name, delta)
            pipe.hsetnx(self.meta_prefix + "stats", "started_at", int(time.time()))  # first publication
            pipe.execute()

    def read_counters(self) -> dict[str, int]:
        client, _ = self._sync_client()
        with _transport(self.redis_url):
            raw = client.hgetall(self.meta_prefix + "stats")
        return {k.decode(): int(v) for k, v in raw.items()}

    def close(self) -> None:
        client, self._sync = self._sync, None
        if client is not None:
            with contextlib.suppress(Exception):
                client.close()
                client.connection_pool.disconnect()

    def _aguard(self, bulk: bool = False) -> _AsyncGuard:
        loop = asyncio.get_running_loop()
        watchdog = self._watchdogs.get(loop)
        if watchdog is None:
            watchdog = self._watchdogs[loop] = _Watchdog(loop)
        return _AsyncGuard(self, watchdog, self.connection_timeout if bulk else self.operation_timeout)

    def _lock_keys(self, key: str) -> tuple[str, str]:
        user = self.user_key(key)
        return f"{self.meta_prefix}lock:{user}", f"{self.meta_prefix}wake:{user}"

    def _wait_slice(self, timeout: float) -> float:
        # BLPOP must return before the socket timeout fires, or a slow wait would look like an outage
        return max(0.01, min(timeout, self.operation_timeout / 2))

    def acquire_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        _, scripts = self._sync_client()
        with _transport(self.redis_url):
            return bool(scripts["LOCK"](keys=list(self._lock_keys(key)), args=[owner, ttl_ms]))

    def release_lock(self, key: str, owner: str) -> None:
        _, scripts = self._sync_client()
        with _transport(self.redis_url):
            scripts["UNLOCK"](keys=list(self._lock_keys(key)), args=[owner])

    def wait_for_release(self, key: str, timeout: float) -> None:
        client, _ = self._sync_client()
        wake = self._lock_keys(key)[1]
        with _transport(self.redis_url):
            if client.blpop([wake], timeout=self._wait_slice(timeout)) is not None:
                # pass the wake-up on to the next waiter; the list must still expire on its own
                client.pipeline(transaction=False).lpush(wake, "1").pexpire(wake, _WAKE_TTL_MS).execute()

    async def aacquire_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        _, scripts = self._async_client()
        async with self._aguard():
            return bool(await scripts["LOCK"](keys=list(self._lock_keys(key)), args=[owner, ttl_ms]))

    async def arelease_lock(self, key: str, owner: str) -> None:
        _, scripts = self._async_client()
        async with self._aguard():
            await scripts["UNLOCK"](keys=list(self._lock_keys(key)), args=[owner])

    async def await_for_release(self, key: str, timeout: float) -> None:
        client, _ = self._async_client()
        wake = self._lock_keys(key)[1]
        async with self._aguard():
            if await client.blpop([wake], timeout=self._wait_slice(timeout)) is not None:
                relay = client.pipeline(transaction=False).lpush(wake, "1").pexpire(wake, _WAKE_TTL_MS)
                await relay.execute()

    # --- async face --------------------------------------------------------------------------------
    async def aget(self, key: str) -> bytes | None:
        batcher = self._batchers.get(asyncio.get_running_loop())
        if batcher is None:
            batcher = self._batchers[asyncio.get_running_loop()] = _ReadBatcher(self)
        if batcher.idle():
            return await self._aget_now(key)  # nothing in flight: no reason to wait for company
        return await batcher.join(key)

    async def _aget_now(self, key: str) -> bytes | None:
        client, scripts = self._async_client()
        batcher = self._batchers[asyncio.get_running_loop()]
        batcher.in_flight += 1
        try:
            async with self._aguard():
                try:
                    frame: bytes | None = await client.evalsha(_GET_SHA, 1, key, self.token_prefix)
                except _NoScriptError:
                    frame = await scripts["GET"](keys=[key], args=[self.token_prefix])  # loads the script
                except _RedisResponseError:
                    return None  # e.g. a key of another type under our prefix: garbage is a miss
                return _body(frame)
        finally:
            batcher.done_one()

    async def aget_or_capture(self, key: str, tags: Sequence[str]) -> tuple[bytes | None, list[str] | None]:
        if not tags:
            return await self.aget(key), []
        client, scripts = self._async_client()
        args = self._capture_args(tags)
        async with self._aguard():
            try:
                found = await client.evalsha(_GET_SHA, 1, key, *args)
            except _NoScriptError:
                found = await scripts["GET"](keys=[key], args=args)  # loads the script
            except _RedisResponseError:
                return None, None
        return _frame_or_tokens(found)

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        frames = await self._aget_frames(keys)
        return [_body(r) if isinstance(r, bytes) else None for r in frames]

    async def aread_recorded_many(self, keys: Sequence[str]) -> list[Inspected | None]:
        return [_inspected_frame(r) for r in await self._aget_frames(keys)]

    async def _aget_frames(self, keys: Sequence[str]) -> list[Any]:
        """One pipeline of GET scripts (EVALSHA straight in; loaded only if the server lacks it)."""
        client, _ = self._async_client()
        async with self._aguard():
            for _ in range(2):
                pipe = client.pipeline(transaction=False)
                for key in keys:
                    pipe.evalsha(_GET_SHA, 1, key, self.token_prefix)
                results = await pipe.execute(raise_on_error=False)
                if not any(isinstance(r, _NoScriptError) for r in results):
                    break
                await client.script_load(lua.GET)
        return list(results)

    def keep_task(self, task: asyncio.Future[Any]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def ainspect(self, key: str) -> Inspected | None:
        _, scripts = self._async_client()
        async with self._aguard():
            try:
                return self._inspected(await scripts["INSPECT"](keys=[key], args=[self.token_prefix]))
            except _RedisResponseError:
                return None

    async def acapture_tokens(self, tags: Sequence[str]) -> list[str]:
        if not tags:
            return []
        _, scripts = self._async_client()
        async with self._aguard():
            return [_token(raw) for raw in await scripts["CAPTURE"](args=self._capture_args(tags))]

    async def aset(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str] | None
    ) -> bool:
        client, scripts = self._async_client()
        async with self._aguard():
            if not tags and len(items) == 1:
                key, body, ttl_ms = items[0]
                await client.set(key, _HEADER_END + body, px=min(ttl_ms, _MAX_TTL_MS))
                return True
            keys = [key for key, _, _ in items]
            args = self._set_args(items, tags, tokens)
            try:
                return bool(await client.evalsha(_SET_SHA, len(keys), *keys, *args))
            except _NoScriptError:
                return bool(await scripts["SET"](keys=keys, args=args))

    async def adelete(self, keys: Sequence[str]) -> int:
        if not keys:
            return 0
        _, scripts = self._async_client()
        async with self._aguard():
            return int(await scripts["DELETE"](keys=list(keys), args=[self.token_prefix]))

    async def attl(self, key: str) -> int | None:
        _, scripts = self._async_client()
        async with self._aguard():
            result = await scripts["TTL"](keys=[key], args=[self.token_prefix])
        return None if result is None else int(result)

    async def aexpire(self, key: str, ttl_ms: int) -> bool:
        _, scripts = self._async_client()
        async with self._aguard():
            args = [self.token_prefix, min(ttl_ms, _MAX_TTL_MS)]
            return bool(await scripts["EXPIRE"](keys=[key], args=args))

    async def ainvalidate(self, tags: Sequence[str]) -> int:
        if not tags:
            return 0
        _, scripts = self._async_client()
        async with self._aguard():
            return int(await scripts["INVALIDATE"](args=self._invalidate_args(tags)))

    async def ascan(self, pattern: str, limit: int | None) -> list[str]:
        client, scripts = self._async_client()
        meta = self.meta_prefix.encode()
        found: list[str] = []
        async with self._aguard(bulk=True):
            batch: list[bytes] = []
            async for raw in client.scan_iter(match=pattern, count=_SCAN_BATCH):
                if raw.startswith(meta):
                    continue
                batch.append(raw)
                if len(batch) >= _SCAN_BATCH:
                    flags = await scripts["ALIVE"](keys=batch, args=[self.token_prefix])
                    found += self._keep_alive(batch, flags)
                    batch = []
                    if limit is not None and len(found) >= limit:
                        break
            if batch:
                found += self._keep_alive(batch, await scripts["ALIVE"](keys=batch, args=[self.token_prefix]))
        return found[:limit] if limit is not None else found

    async def aflush(self) -> int:
        client, _ = self._async_client()
        removed = 0
        async with self._aguard(bulk=True):
            batch: list[bytes] = []
            async for raw in client.scan_iter(match=escape_glob(self.namespace) + ":*", count=_SCAN_BATCH):
                batch.append(raw)
                if len(batch) >= _SCAN_BATCH:
                    removed += await client.unlink(*batch)
                    batch = []
            if batch:
                removed += await client.unlink(*batch)
        return removed

    async def aping(self) -> None:
        client, _ = self._async_client()
        async with self._aguard():
            await client.ping()

    async def ausage(self) -> tuple[int, int]:
        client, _ = self._async_client()
        meta = self.meta_prefix.encode()
        count = 0
        async with self._aguard(bulk=True):
            async for raw in client.scan_iter(match=escape_glob(self.namespace) + ":*", count=_SCAN_BATCH):
                if not raw.startswith(meta):
                    count += 1
            memory = int((await client.info("memory")).get("used_memory", 0))
        return count, memory

    async def aadd_counters(self, counters: dict[str, int]) -> None:
        client, _ = self._async_client()
        async with self._aguard():
            pipe = client.pipeline(transaction=False)
            for name, delta in counters.items():
                pipe.hincrby(self.meta_prefix + "stats", name, delta)
            pipe.hsetnx(self.meta_prefix + "stats", "started_at", int(time.time()))  # first publication
            await pipe.execute()

    async def aread_counters(self) -> dict[str, int]:
        client, _ = self._async_client()
        async with self._aguard():
            raw = await client.hgetall(self.meta_prefix + "stats")
        return {k.decode(): int(v) for k, v in raw.items()}

    async def aclose(self) -> None:
        clients = list(self._async.items())
        self._async.clear()
        current = asyncio.get_running_loop()
        for loop, (client, _) in clients:
            if loop is current:
                with contextlib.suppress(Exception):
                    await client.aclose()
        self.close()
