"""Memcached backend: ``pymemcache`` for the sync face, ``aiomcache`` (clients per event loop) for the async.

Memcached has no scripting, no key enumeration and keys of at most 250 printable bytes, so this backend
differs from Redis in four ways:

* **Hashed keys.** Every memcached key is ``yc:<kind>:<sha256 hex>`` of the namespace generation and the full
  key (or tag), so any user key (long, non-ASCII, with spaces) is storable.
* **Two round trips per tagged hit.** An entry is a frame ``magic | expires-at ms | recorded (tag, token)
  pairs | body``. A read is one ``get_multi`` of the entry *and* the namespace generation key, then — only if
  the entry recorded tags — one ``get_multi`` of the tags' current tokens, compared in Python. An untagged
  hit is one round trip. (Memcached cannot check the tokens server-side as the Redis script does.)
* **Flush by generation.** Memcached cannot list a namespace's keys, so every entry, token, write-count and
  counter key embeds the namespace's current *generation* (a random token stored, without expiry, at
  ``yc:g:<sha256(namespace)>``). ``flush`` replaces the generation: everything written under the old one
  becomes unreachable at once in every process, and memcached's LRU reclaims it later. The generation is
  fetched in the same ``get_multi`` as the entry, so this costs no extra round trip. A generation lost to
  eviction or a restart is recreated with a new random value: the namespace then reads as empty, never stale.
* **No listings.** ``scan`` (patterns, ``get_all_keys``, ``invalidate_pattern``, ``get_keys_by_tag``, fuzzy
  and vector search) raises ``CacheError``.

A process learns the generation on its first operation (one extra round trip, once); writes cost one
round trip for the generation and tokens, one ``set_many`` and one ``incr`` per tag (the write counts behind
``invalidate_tags``' return value).

Expiry is checked against the millisecond deadline in the frame (memcached's own expiry, in whole seconds,
only reclaims memory), so TTLs are as exact as on Redis. Tag tokens have no expiry. Races are resolved in the
safe direction: a write racing an invalidation records the old token and is simply never served.

Servers are selected per key with rendezvous hashing (pymemcache's ``RendezvousHash``, the hasher of its
``HashClient``, so the key-to-server map matches a ``HashClient`` over the same servers). ``HashClient``
itself is not used because of its failure handling: within ``retry_timeout`` it silently returns defaults
(an ``add`` that never ran reads as "key exists", a failed ``get`` as a miss) and it removes dead servers,
remapping their keys — when such a server comes back its old tag tokens would make invalidated entries live
again. Here a server failure is a ``CacheConnectionError`` (the policy layer's fallback and circuit breaker
handle it) and the key map never changes.

The async face uses ``aiomcache`` clients kept per event loop (one per server, pools of
``max_connections``). aiomcache has no timeouts and returns a connection to its pool even when a command
was cut short, so every command runs under ``connection_timeout`` and a timed-out, cancelled or garbled
command discards that client's connections; its ``incr`` raises on a missing key (handled as "missing").
``usage()`` (``key_count``/``memory_usage_mb`` in the stats) reports the whole server(s): memcached
cannot count one namespace.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import math
import struct
import threading
import time
from collections.abc import Awaitable, Callable, Generator, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

from ..exceptions import CacheConnectionError, CacheError
from .base import Backend, Inspected, decode_recorded, encode_recorded, new_token

try:  # the `memcached` extra
    from pymemcache.client.base import PooledClient as _PooledClient
    from pymemcache.client.rendezvous import RendezvousHash as _RendezvousHash
    from pymemcache.exceptions import MemcacheError as _MemcacheError
    from pymemcache.exceptions import MemcacheServerError as _MemcacheServerError
    from pymemcache.exceptions import MemcacheUnexpectedCloseError as _MemcacheClosed
except ImportError:  # pragma: no cover - exercised only without the extra
    _PooledClient = None

try:
    import aiomcache as _aiomcache
except ImportError:  # pragma: no cover
    _aiomcache = None  # type: ignore[assignment]

T = TypeVar("T")
Cmd = tuple[Any, ...]
Op = Generator[Cmd, Any, T]

_MAGIC = b"YCm1"
_HEAD = struct.Struct(">QI")  # expires-at (epoch ms, 0 = never), header length
_THIRTY_DAYS = 30 * 24 * 3600  # memcached reads larger expiry values as absolute UNIX times
_MAX_DEADLINE = 2**63 - 1  # ms; "practically forever" TTLs are clamped to fit the frame
_GEN_ATTEMPTS = 8
_WAIT_SLICE = 1.0  # s: longest single wait for a compute lock (the caller loops)
_POLL_INTERVAL = 0.01
_UNSUPPORTED = "{} is not supported by the memcached backend (memcached cannot enumerate keys)"


class _Frame(NamedTuple):
    expires_at: int  # epoch ms, 0 = never
    recorded: tuple[tuple[str, str], ...]  # (tag, token) at write time
    body: bytes


def _frame(body: bytes, recorded: Sequence[tuple[str, str]], expires_at: int) -> bytes:
    header = encode_recorded(recorded)
    return _MAGIC + _HEAD.pack(expires_at, len(header)) + header + body


def _unframe(raw: bytes | None) -> _Frame | None:
    """Parse a stored frame; ``None`` for anything that is not one (garbage is a miss)."""
    if raw is None or len(raw) < 4 + _HEAD.size or not raw.startswith(_MAGIC):
        return None
    expires_at, length = _HEAD.unpack_from(raw, 4)
    start = 4 + _HEAD.size
    if start + length > len(raw):
        return None
    recorded = decode_recorded(raw[start : start + length])
    return None if recorded is None else _Frame(expires_at, recorded, bytes(raw[start + length :]))


def _now_ms() -> int:
    return int(time.time() * 1000)


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode("utf-8", "surrogatepass")).hexdigest()


def _as_int(raw: bytes | None) -> int | None:
    if raw is None:
        return None
    try:
        return int(raw)
    except ValueError:
        return None


def _parse_server(server: Any) -> tuple[str, int]:
    if isinstance(server, (tuple, list)) and len(server) == 2:
        return str(server[0]), int(server[1])
    if not isinstance(server, str) or not server.strip():
        raise ValueError(f"memcached servers are 'host:port' strings or (host, port) pairs, got {server!r}")
    text = server.strip()
    if text.startswith("["):  # [v6]:port
        host, _, rest = text[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif text.count(":") == 1:
        host, _, port = text.partition(":")
    else:
        host, port = text, ""
    try:
        return host, int(port or 11211)
    except ValueError:
        raise ValueError(f"invalid memcached server {server!r}") from None


def _client_options(behaviors: dict[str, Any] | None, timeout: float) -> dict[str, Any]:
    """pylibmc-style ``behaviors`` mapped onto pymemcache options; distribution/hash ones are ignored
    (keys are always placed by rendezvous hashing)."""
    options: dict[str, Any] = {"connect_timeout": timeout, "timeout": timeout, "no_delay": True}
    for name, value in (behaviors or {}).items():
        if name == "tcp_nodelay":
            options["no_delay"] = bool(value)
        elif name == "connect_timeout" and value:  # milliseconds in libmemcached
            options["connect_timeout"] = float(value) / 1000
        elif name in ("receive_timeout", "send_timeout") and value:  # microseconds
            options["timeout"] = max(float(value) / 1_000_000, 0.001)
    return options


class MemcachedBackend(Backend):
    kind = "memcached"

    def __init__(
        self,
        servers: Sequence[Any] | str = ("localhost:11211",),
        key_prefix: str | None = None,
        behaviors: dict[str, Any] | None = None,
        connection_timeout: float = 30,
        *,
        max_connections: int = 10,
    ) -> None:
        if _PooledClient is None or _aiomcache is None:
            raise ImportError(
                "MemcachedBackend needs the 'memcached' extra: pip install 'yokedcache[memcached]'"
            )
        super().__init__(key_prefix)
        if isinstance(servers, str):
            servers = [s for s in servers.split(",") if s.strip()]
        parsed = [_parse_server(s) for s in servers]
        if not parsed:
            raise ValueError("MemcachedBackend needs at least one server")
        if connection_timeout <= 0:
            raise ValueError(f"connection_timeout must be > 0, got {connection_timeout!r}")
        self.servers: dict[str, tuple[str, int]] = {f"{h}:{p}": (h, p) for h, p in parsed}
        self.behaviors = dict(behaviors or {})
        self.connection_timeout = float(connection_timeout)
        self.max_connections = max_connections
        self._options = _client_options(self.behaviors, self.connection_timeout)
        self._hasher = _RendezvousHash(nodes=list(self.servers))
        self._sync: dict[str, Any] = {}
        self._async: dict[asyncio.AbstractEventLoop, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._generation: tuple[str, str] | None = None  # (namespace, generation) last seen

    # --- key layout ------------------------------------------------------------------------------------
    def _node(self, key: str) -> str:
        if len(self.servers) == 1:
            return next(iter(self.servers))
        node: str = self._hasher.get_node(key)
        return node

    def _group(self, keys: Sequence[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for key in dict.fromkeys(keys):
            groups.setdefault(self._node(key), []).append(key)
        return groups

    def _gen_key(self) -> str:
        return f"yc:g:{_digest(self.namespace)}"

    def _entry_key(self, gen: str, full_key: str) -> str:
        return f"yc:e:{_digest(gen, full_key)}"

    def _token_key(self, gen: str, tag: str) -> str:
        return f"yc:t:{_digest(gen, self.namespace, tag)}"

    def _count_key(self, gen: str, tag: str, token: str) -> str:
        return f"yc:n:{_digest(gen, self.namespace, tag, token)}"

    def _counter_key(self, gen: str, name: str) -> str:
        return f"yc:c:{_digest(gen, self.namespace, name)}"

    def _names_key(self, gen: str) -> str:
        return f"yc:cn:{_digest(gen, self.namespace)}"

    def _lock_key(self, gen: str, full_key: str) -> str:
        return f"yc:l:{_digest(gen, full_key)}"

    def entry_key(self, full_key: str) -> str | None:
        """The memcached key holding ``full_key`` under the generation last seen (for tests and debugging)."""
        gen = self._known_gen()
        return self._entry_key(gen, full_key) if gen else None

    def _known_gen(self) -> str:
        known = self._generation
        return known[1] if known is not None and known[0] == self.namespace else ""

    def _remember(self, gen: str) -> None:
        self._generation = (self.namespace, gen)

    @staticmethod
    def _exptime(ttl_ms: int) -> int:
        """Memcached expiry for an entry whose frame deadline is ``ttl_ms`` away (reclaim only).

        Beyond 30 days memcached wants an absolute time on *its* clock; rather than trust two clocks the
        item is then left to the LRU (the frame deadline still ends it on time)."""
        if ttl_ms <= 0:
            return 0
        seconds = math.ceil(ttl_ms / 1000) + 1
        return seconds if seconds <= _THIRTY_DAYS else 0

    @staticmethod
    def _deadline(ttl_ms: int) -> int:
        """Frame deadline (epoch ms, 0 = never) of an entry expiring in ``ttl_ms``."""
        return min(_now_ms() + ttl_ms, _MAX_DEADLINE) if ttl_ms > 0 else 0

    # --- operations, written once as generators of memcached commands ---------------------------------
    def _read(self, keys_of: Callable[[str], list[str]]) -> Op[tuple[str, dict[str, bytes]]]:
        """``get_multi`` of ``keys_of(generation)`` plus the generation key, under the current generation."""
        gen_key = self._gen_key()
        gen = self._known_gen()
        for _ in range(_GEN_ATTEMPTS):
            keys = keys_of(gen) if gen else []
            found: dict[str, bytes] = yield ("get", [gen_key, *keys])
            current = found.get(gen_key)
            if current is None:  # first use of the namespace, or the generation was evicted
                candidate = new_token()
                if (yield ("add", gen_key, candidate.encode(), 0)):
                    self._remember(candidate)
                    return candidate, {}  # nothing can be stored under a generation just created
                gen = ""
                continue
            value = current.decode("ascii", "replace")
            if value == gen:
                return gen, found
            gen = value
            self._remember(gen)
        raise CacheConnectionError("memcached: the namespace generation kept changing (flush storm?)")

    def _live_frames(self, keys: Sequence[str]) -> Op[tuple[str, list[_Frame | None]]]:
        gen, found = yield from self._read(lambda g: [self._entry_key(g, k) for k in keys])
        now = _now_ms()
        frames: list[_Frame | None] = []
        for key in keys:
            frame = _unframe(found.get(self._entry_key(gen, key)))
            if frame is not None and frame.expires_at and frame.expires_at <= now:
                frame = None
            frames.append(frame)
        tags = {tag for frame in frames if frame is not None for tag, _ in frame.recorded}
        if tags:
            token_keys = {tag: self._token_key(gen, tag) for tag in tags}
            current: dict[str, bytes] = yield ("get", list(token_keys.values()))
            frames = [
                frame
                if frame is not None
                and all(current.get(token_keys[tag]) == token.encode() for tag, token in frame.recorded)
                else None
                for frame in frames
            ]
        return gen, frames

    def _op_get_many(self, keys: Sequence[str]) -> Op[list[bytes | None]]:
        _, frames = yield from self._live_frames(keys)
        return [None if frame is None else frame.body for frame in frames]

    def _op_get(self, key: str) -> Op[bytes | None]:
        bodies = yield from self._op_get_many([key])
        return bodies[0]

    def _op_inspect(self, key: str) -> Op[Inspected | None]:
        _, frames = yield from self._live_frames([key])
        frame = frames[0]
        if frame is None:
            return None
        ttl_ms = max(1, frame.expires_at - _now_ms()) if frame.expires_at else None
        return Inspected(frame.body, tuple(frame.recorded), ttl_ms)

    def _op_ttl(self, key: str) -> Op[int | None]:
        found = yield from self._op_inspect(key)
        if found is None:
            return None
        return -1 if found.ttl_ms is None else found.ttl_ms

    def _current_tokens(self, gen: str, tags: Sequence[str], found: dict[str, bytes]) -> Op[list[str]]:
        """The tags' tokens (from ``found``), creating missing ones with ``add`` so racing writers agree."""
        tokens: list[str] = []
        for tag in tags:
            key = self._token_key(gen, tag)
            raw = found.get(key)
            attempts = 0
            while raw is None:
                candidate = new_token()
                attempts += 1
                if attempts > 3:  # added and evicted over and over: just take ours
                    yield ("set", {key: candidate.encode()}, 0)
                    raw = candidate.encode()
                elif (yield ("add", key, candidate.encode(), 0)):
                    raw = candidate.encode()
                else:
                    raw = (yield ("get", [key])).get(key)
            tokens.append(raw.decode("ascii", "replace"))
        return tokens

    def _op_capture_tokens(self, tags: Sequence[str]) -> Op[list[str]]:
        if not tags:
            return []
        gen, found = yield from self._read(lambda g: [self._token_key(g, t) for t in tags])
        tokens = yield from self._current_tokens(gen, tags, found)
        return tokens

    def _op_set(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str] | None
    ) -> Op[bool]:
        gen, found = yield from self._read(lambda g: [self._token_key(g, t) for t in tags])
        if tokens is None:
            current = yield from self._current_tokens(gen, tags, found)
        else:
            for tag, token in zip(tags, tokens):
                if found.get(self._token_key(gen, tag)) != token.encode():
                    return False  # computed from data older than an invalidation
            current = list(tokens)
        recorded = tuple(zip(tags, current))
        if not items:
            return True
        frames = {
            self._entry_key(gen, key): _frame(body, recorded, self._deadline(ttl_ms))
            for key, body, ttl_ms in items
        }
        # one batch: the longest memcached expiry covers every frame deadline (jitter differs per item)
        ttls = [ttl_ms for _, _, ttl_ms in items]
        exptime = 0 if min(ttls) <= 0 else self._exptime(max(ttls))
        stored: bool = yield ("set", frames, exptime)
        for tag, token in recorded:
            yield from self._add_count(self._count_key(gen, tag, token), len(items))
        return stored

    def _add_count(self, key: str, delta: int) -> Op[None]:
        for _ in range(3):
            if (yield ("incr", key, delta)) is not None:
                return
            if (yield ("add", key, str(delta).encode(), 0)):
                return

    def _op_delete(self, keys: Sequence[str]) -> Op[int]:
        if not keys:
            return 0
        gen, frames = yield from self._live_frames(keys)
        yield ("delete", [self._entry_key(gen, key) for key in keys])
        return sum(frame is not None for frame in frames)

    def _op_expire(self, key: str, ttl_ms: int) -> Op[bool]:
        for _ in range(3):
            gen, frames = yield from self._live_frames([key])
            if frames[0] is None:
                return False
            entry_key = self._entry_key(gen, key)
            raw, cas = yield ("gets", entry_key)
            frame = _unframe(raw)
            if frame is None or frame != frames[0] or cas is None:
                continue  # rewritten meanwhile: check the new value's liveness
            new = _frame(frame.body, frame.recorded, self._deadline(ttl_ms))
            if (yield ("cas", entry_key, new, cas, self._exptime(ttl_ms))):
                return True
        return False

    def _op_invalidate(self, tags: Sequence[str]) -> Op[int]:
        if not tags:
            return 0
        gen, found = yield from self._read(lambda g: [self._token_key(g, t) for t in tags])
        fresh = {self._token_key(gen, tag): new_token().encode() for tag in tags}
        yield ("set", fresh, 0)
        count_keys = []
        for tag in tags:
            old = found.get(self._token_key(gen, tag))
            if old is not None:
                count_keys.append(self._count_key(gen, tag, old.decode("ascii", "replace")))
        if not count_keys:
            return 0
        counts: dict[str, bytes] = yield ("get", count_keys)
        yield ("delete", count_keys)
        return sum(_as_int(raw) or 0 for raw in counts.values())

    def _op_flush(self) -> Op[int]:
        gen = new_token()
        yield ("set", {self._gen_key(): gen.encode()}, 0)
        self._remember(gen)
        return 0  # memcached cannot count what became unreachable

    def _op_usage(self) -> Op[tuple[int, int]]:
        stats: list[dict[str, str]] = yield ("stats",)
        items = sum(_stat(s, "curr_items") for s in stats)
        used = sum(_stat(s, "bytes") for s in stats)
        return items, used

    def _op_add_counters(self, counters: dict[str, int]) -> Op[None]:
        gen, _ = yield from self._read(lambda g: [])
        for name, delta in counters.items():
            if not delta:
                continue
            key = self._counter_key(gen, name)
            for _ in range(3):
                if (yield ("incr" if delta > 0 else "decr", key, abs(delta))) is not None:
                    break
                if (yield ("add", key, str(max(delta, 0)).encode(), 0)):
                    yield from self._register_counter(gen, name)
                    break

    def _register_counter(self, gen: str, name: str) -> Op[None]:
        key = self._names_key(gen)
        line = f"{name}\n".encode()
        for _ in range(3):
            if (yield ("append", key, line)):
                return
            if (yield ("add", key, line, 0)):
                return

    def _op_read_counters(self) -> Op[dict[str, int]]:
        gen, found = yield from self._read(lambda g: [self._names_key(g)])
        raw = found.get(self._names_key(gen))
        if not raw:
            return {}
        names = sorted({n for n in raw.decode("utf-8", "replace").split("\n") if n})
        keys = {name: self._counter_key(gen, name) for name in names}
        values: dict[str, bytes] = yield ("get", list(keys.values()))
        out: dict[str, int] = {}
        for name, key in keys.items():
            value = _as_int(values.get(key))
            if value is not None:
                out[name] = value
        return out

    def _op_acquire_lock(self, key: str, owner: str, ttl_ms: int) -> Op[bool]:
        gen, _ = yield from self._read(lambda g: [])
        lease = max(1, math.ceil(ttl_ms / 1000))  # memcached expiry has whole seconds
        acquired: bool = yield ("add", self._lock_key(gen, key), owner.encode(), lease)
        return acquired

    def _op_release_lock(self, key: str, owner: str) -> Op[None]:
        gen, found = yield from self._read(lambda g: [self._lock_key(g, key)])
        lock_key = self._lock_key(gen, key)
        if found.get(lock_key) == owner.encode():
            yield ("delete", [lock_key])

    def _op_lock_held(self, key: str) -> Op[bool]:
        gen, found = yield from self._read(lambda g: [self._lock_key(g, key)])
        return self._lock_key(gen, key) in found

    # --- drivers ---------------------------------------------------------------------------------------
    def _run(self, op: Op[T]) -> T:
        try:
            cmd = next(op)
            while True:
                cmd = op.send(self._exec(cmd))
        except StopIteration as stop:
            return stop.value

    async def _arun(self, op: Op[T]) -> T:
        try:
            cmd = next(op)
            while True:
                cmd = op.send(await self._aexec(cmd))
        except StopIteration as stop:
            return stop.value

    # --- sync transport (pymemcache) -------------------------------------------------------------------
    def _sync_client(self, node: str) -> Any:
        client = self._sync.get(node)
        if client is None:
            with self._lock:
                client = self._sync.get(node)
                if client is None:
                    client = _PooledClient(
                        self.servers[node],
                        max_pool_size=self.max_connections,
                        default_noreply=False,
                        **self._options,
                    )
                    self._sync[node] = client
        return client

    @contextlib.contextmanager
    def _transport(self, node: str) -> Iterator[None]:
        try:
            yield
        except (_MemcacheClosed, OSError) as exc:
            raise CacheConnectionError(f"memcached at {node}: {type(exc).__name__}: {exc}") from exc
        except _MemcacheError as exc:
            raise CacheConnectionError(f"memcached at {node}: {type(exc).__name__}: {exc}") from exc

    def _exec(self, cmd: Cmd) -> Any:
        name = cmd[0]
        if name == "get":
            out: dict[str, bytes] = {}
            for node, keys in self._group(cmd[1]).items():
                with self._transport(node):
                    out.update(self._sync_client(node).get_many(keys))
            return out
        if name == "set":
            ok = True
            for node, keys in self._group(list(cmd[1])).items():
                values = {k: cmd[1][k] for k in keys}
                with self._transport(node):
                    client = self._sync_client(node)
                    try:
                        failed = client.set_many(values, expire=cmd[2], noreply=False)
                    except _MemcacheServerError as exc:
                        if not _too_large(exc):
                            raise
                        # pymemcache drops the connection at the first error, so which of the batch were
                        # stored is unknown: store them one by one, skipping the oversized ones
                        failed = [k for k, v in values.items() if not self._set_one(client, k, v, cmd[2])]
                ok = ok and not failed
            return ok
        if name == "delete":
            for node, keys in self._group(cmd[1]).items():
                with self._transport(node):
                    self._sync_client(node).delete_many(keys, noreply=False)
            return None
        if name in ("stats", "version"):
            results = []
            for node in self.servers:
                with self._transport(node):
                    client = self._sync_client(node)
                    results.append(client.stats() if name == "stats" else client.version())
            if name == "version":
                return None
            return [{_text(k): _text(v) for k, v in r.items()} for r in results]
        key = cmd[1]
        node = self._node(key)
        with self._transport(node):
            client = self._sync_client(node)
            if name == "gets":
                return client.gets(key)
            if name == "add":
                return bool(client.add(key, cmd[2], expire=cmd[3], noreply=False))
            if name == "cas":
                return bool(client.cas(key, cmd[2], cmd[3], expire=cmd[4], noreply=False))
            if name in ("incr", "decr"):
                result = getattr(client, name)(key, cmd[2], noreply=False)
                return None if result is None else int(result)
            if name == "append":
                return bool(client.append(key, cmd[2], noreply=False))
        raise AssertionError(f"unknown memcached command {name!r}")

    @staticmethod
    def _set_one(client: Any, key: str, value: bytes, exptime: int) -> bool:
        try:
            return bool(client.set(key, value, expire=exptime, noreply=False))
        except _MemcacheServerError as exc:
            if not _too_large(exc):
                raise
            return False  # over memcached's item size limit (1 MiB by default): not stored

    # --- async transport (aiomcache, per event loop) --------------------------------------------------
    def _async_clients(self) -> dict[str, Any]:
        loop = asyncio.get_running_loop()
        clients = self._async.get(loop)
        if clients is None:
            for old in [lp for lp in self._async if lp.is_closed()]:
                del self._async[old]  # their connections died with their loop
            clients = self._async[loop] = {}
        return clients

    async def _acall(self, node: str, call: Callable[[Any], Awaitable[T]]) -> T:
        clients = self._async_clients()
        client = clients.get(node)
        if client is None:
            host, port = self.servers[node]
            client = clients[node] = _aiomcache.Client(
                host, port, pool_size=self.max_connections, pool_minsize=1
            )
        try:
            return await asyncio.wait_for(call(client), self.connection_timeout)
        except (asyncio.CancelledError, asyncio.TimeoutError, OSError, EOFError) as exc:
            # a command cut short leaves its connection mid-response: drop every connection of this client
            await self._discard(clients, node, client)
            if isinstance(exc, asyncio.CancelledError):
                raise
            raise CacheConnectionError(f"memcached at {node}: {type(exc).__name__}: {exc}") from exc
        except _aiomcache.ClientException as exc:
            await self._discard(clients, node, client)
            raise CacheConnectionError(f"memcached at {node}: protocol error: {exc}") from exc

    @staticmethod
    async def _discard(clients: dict[str, Any], node: str, client: Any) -> None:
        if clients.get(node) is client:
            del clients[node]
        with contextlib.suppress(Exception):
            await client.close()

    async def _aexec(self, cmd: Cmd) -> Any:
        name = cmd[0]
        if name == "get":
            groups = list(self._group(cmd[1]).items())
            replies = await asyncio.gather(
                *(self._acall(node, _call("multi_get", *(k.encode() for k in keys))) for node, keys in groups)
            )  # several servers are asked at once
            out: dict[str, bytes] = {}
            for (_, keys), values in zip(groups, replies):
                out.update({k: v for k, v in zip(keys, values) if v is not None})
            return out
        if name == "set":
            ok = True
            for key, value in cmd[1].items():
                ok = await self._aset_one(key, value, cmd[2]) and ok
            return ok
        if name == "delete":
            for key in dict.fromkeys(cmd[1]):
                await self._acall(self._node(key), _call("delete", key.encode()))
            return None
        if name in ("stats", "version"):
            results = []
            for node in self.servers:
                result = await self._acall(node, _call(name))
                if name == "stats":
                    results.append(result)
            return [{_text(k): _text(v) for k, v in r.items()} for r in results] if results else None
        key = cmd[1]
        node = self._node(key)
        raw_key = key.encode()
        if name == "gets":
            return await self._acall(node, _call("gets", raw_key))
        if name == "add":
            return await self._acall(node, _call("add", raw_key, cmd[2], exptime=cmd[3]))
        if name == "cas":
            return await self._acall(node, _call("cas", raw_key, cmd[2], cmd[3], exptime=cmd[4]))
        if name in ("incr", "decr"):
            return await self._acall(
                node, functools.partial(_incr_decr, name=name, key=raw_key, delta=cmd[2])
            )
        if name == "append":
            return await self._acall(node, _call("append", raw_key, cmd[2]))
        raise AssertionError(f"unknown memcached command {name!r}")

    async def _aset_one(self, key: str, value: bytes, exptime: int) -> bool:
        async def store(client: Any) -> bool:
            try:
                return bool(await client.set(key.encode(), value, exptime=exptime))
            except _aiomcache.ClientException as exc:
                if "too large" in str(exc):
                    return False  # over memcached's item size limit: not stored, connection still in sync
                raise

        return await self._acall(self._node(key), store)

    # --- sync face -------------------------------------------------------------------------------------
    def get(self, key: str) -> bytes | None:
        return self._run(self._op_get(key))

    def get_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return self._run(self._op_get_many(keys))

    def inspect(self, key: str) -> Inspected | None:
        return self._run(self._op_inspect(key))

    def capture_tokens(self, tags: Sequence[str]) -> list[str]:
        return self._run(self._op_capture_tokens(tags))

    def set(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str] | None
    ) -> bool:
        return self._run(self._op_set(items, tags, tokens))

    def delete(self, keys: Sequence[str]) -> int:
        return self._run(self._op_delete(keys))

    def ttl(self, key: str) -> int | None:
        return self._run(self._op_ttl(key))

    def expire(self, key: str, ttl_ms: int) -> bool:
        return self._run(self._op_expire(key, ttl_ms))

    def invalidate(self, tags: Sequence[str]) -> int:
        return self._run(self._op_invalidate(tags))

    def scan(self, pattern: str, limit: int | None) -> list[str]:
        raise CacheError(_UNSUPPORTED.format("listing keys by pattern"))

    def flush(self) -> int:
        return self._run(self._op_flush())

    def ping(self) -> None:
        self._exec(("version",))

    def usage(self) -> tuple[int, int]:
        """Items and bytes of the whole memcached server(s): memcached cannot count one namespace."""
        return self._run(self._op_usage())

    def add_counters(self, counters: dict[str, int]) -> None:
        self._run(self._op_add_counters(counters))

    def read_counters(self) -> dict[str, int]:
        return self._run(self._op_read_counters())

    def close(self) -> None:
        with self._lock:
            clients, self._sync = self._sync, {}
        for client in clients.values():
            with contextlib.suppress(Exception):
                client.close()

    # cross-process compute lock: ``add`` with the lease as expiry; waiters poll (memcached has no pub/sub)
    def acquire_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        return self._run(self._op_acquire_lock(key, owner, ttl_ms))

    def release_lock(self, key: str, owner: str) -> None:
        self._run(self._op_release_lock(key, owner))

    def wait_for_release(self, key: str, timeout: float) -> None:
        deadline = time.monotonic() + min(timeout, _WAIT_SLICE)
        while self._run(self._op_lock_held(key)) and time.monotonic() < deadline:
            time.sleep(_POLL_INTERVAL)

    async def aacquire_lock(self, key: str, owner: str, ttl_ms: int) -> bool:
        return await self._arun(self._op_acquire_lock(key, owner, ttl_ms))

    async def arelease_lock(self, key: str, owner: str) -> None:
        await self._arun(self._op_release_lock(key, owner))

    async def await_for_release(self, key: str, timeout: float) -> None:
        deadline = time.monotonic() + min(timeout, _WAIT_SLICE)
        while await self._arun(self._op_lock_held(key)) and time.monotonic() < deadline:
            await asyncio.sleep(_POLL_INTERVAL)

    # --- async face ------------------------------------------------------------------------------------
    async def aget(self, key: str) -> bytes | None:
        return await self._arun(self._op_get(key))

    async def aget_many(self, keys: Sequence[str]) -> list[bytes | None]:
        return await self._arun(self._op_get_many(keys))

    async def ainspect(self, key: str) -> Inspected | None:
        return await self._arun(self._op_inspect(key))

    async def acapture_tokens(self, tags: Sequence[str]) -> list[str]:
        return await self._arun(self._op_capture_tokens(tags))

    async def aset(
        self, items: Sequence[tuple[str, bytes, int]], tags: Sequence[str], tokens: Sequence[str] | None
    ) -> bool:
        return await self._arun(self._op_set(items, tags, tokens))

    async def adelete(self, keys: Sequence[str]) -> int:
        return await self._arun(self._op_delete(keys))

    async def attl(self, key: str) -> int | None:
        return await self._arun(self._op_ttl(key))

    async def aexpire(self, key: str, ttl_ms: int) -> bool:
        return await self._arun(self._op_expire(key, ttl_ms))

    async def ainvalidate(self, tags: Sequence[str]) -> int:
        return await self._arun(self._op_invalidate(tags))

    async def ascan(self, pattern: str, limit: int | None) -> list[str]:
        raise CacheError(_UNSUPPORTED.format("listing keys by pattern"))

    async def aflush(self) -> int:
        return await self._arun(self._op_flush())

    async def aping(self) -> None:
        await self._aexec(("version",))

    async def ausage(self) -> tuple[int, int]:
        return await self._arun(self._op_usage())

    async def aadd_counters(self, counters: dict[str, int]) -> None:
        await self._arun(self._op_add_counters(counters))

    async def aread_counters(self) -> dict[str, int]:
        return await self._arun(self._op_read_counters())

    async def aclose(self) -> None:
        current = asyncio.get_running_loop()
        loops = list(self._async.items())
        self._async.clear()
        for loop, clients in loops:
            if loop is current:
                for client in clients.values():
                    with contextlib.suppress(Exception):
                        await client.close()
        self.close()


def _stat(stats: dict[str, str], name: str) -> int:
    try:
        return int(stats.get(name, "0"))
    except ValueError:
        return 0


def _call(method: str, *args: Any, **kwargs: Any) -> Callable[[Any], Awaitable[Any]]:
    """``client -> client.<method>(*args, **kwargs)``: one aiomcache command for ``_acall``."""

    def call(client: Any) -> Awaitable[Any]:
        return getattr(client, method)(*args, **kwargs)

    return call


def _too_large(exc: BaseException) -> bool:
    return not isinstance(exc, _MemcacheClosed) and "too large" in str(exc)


def _text(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


async def _incr_decr(client: Any, *, name: str, key: bytes, delta: int) -> int | None:
    """aiomcache raises on NOT_FOUND (the reply is only in the message) instead of returning ``None``."""
    try:
        result = await getattr(client, name)(key, delta)
    except _aiomcache.ClientException as exc:
        if "NOT_FOUND" in str(exc):
            return None
        raise
    return None if result is None else int(result)
