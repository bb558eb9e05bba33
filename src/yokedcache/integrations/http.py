"""``HTTPCacheMiddleware``: a pure ASGI response cache that never shares a response across users.

A cacheable request (method in ``methods``, path not excluded, no ``Authorization``/``Cookie`` unless a
``key_builder`` says how to key them) is looked up under ``http:<request key>``. A hit is answered from the
stored entry without calling the app; a miss runs the app and holds its response back, up to
``max_body_size`` bytes, so it can be stored with an ETag before it is sent. Everything else passes through.

Decisions worth knowing:

- The stored entry is a plain dict (status, headers without hop-by-hop ones, body, ETag, creation time);
  the cache keeps it type-faithfully. The ETag is the app's, else ``"<first 32 hex of SHA-256(body)>"``,
  so every process computes the same one (never Python's ``hash()``).
- Responses marked ``no-store`` or ``private``, carrying ``Set-Cookie`` or ``Vary: *``, server-sent event
  streams, responses with trailers, and bodies over ``max_body_size`` are forwarded, never stored.
- Only ``Cache-Control`` of the *response* matters; a request's ``Cache-Control`` is ignored, so a client
  cannot force a refresh for everybody. ``Vary`` (other than ``*``) is stored and sent but is not part of
  the default key: vary the key with a ``key_builder`` when responses differ by request header.
- ``X-YokedCache``: ``HIT`` (served from the cache), ``MISS`` (the app answered; stored if storable) or
  ``BYPASS`` (cache not consulted: excluded path, credentials, request body over ``max_body_size``, or
  a cache that raised). Methods not in ``methods`` and non-HTTP scopes get no header at all.
- A ``key_builder`` result that is not a non-empty ``str`` raises ``CacheKeyError`` (a programming error
  is reported, not silently turned into "never cached"); ``HEAD`` and ``GET`` share an entry only if the
  builder gives them the same key.
- Concurrent misses of one key each run the app (no single-flight): responses are streamed through send
  callbacks and cannot be shared between waiting requests without buffering them all.
- Any cache failure (unreachable backend, even with ``fallback_enabled=False``) turns the request into a
  plain pass-through; the response is never an error because of the cache.
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
import logging
import math
import re
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from ..exceptions import CacheKeyError
from ..keys import normalize_tags
from ..policy.cache import YokedCache
from ..policy.reads import ReadFrame, reads_of

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
KeyBuilder = Callable[[Any], "str | Awaitable[str]"]

logger = logging.getLogger("yokedcache")

HIT, MISS, BYPASS = b"HIT", b"MISS", b"BYPASS"
_STATUS_HEADER = b"x-yokedcache"
_OK_ONLY = frozenset({200})
# RFC 9111 §3: statuses cacheable by default (206 excluded: partial content is not a whole response).
_NON_OK = frozenset({200, 203, 204, 300, 301, 404, 405, 410, 414, 501})
# RFC 9110 §7.6.1; plus headers this middleware computes itself for every response it sends.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"proxy-connection",
        b"te",
        b"trailer",
        b"trailers",
        b"transfer-encoding",
        b"upgrade",
    }
)
_NOT_STORED = _HOP_BY_HOP | {b"content-length", b"age", _STATUS_HEADER}
# What a 304 repeats from the full response (RFC 9110 §15.4.5), plus our own headers.
_NOT_MODIFIED_HEADERS = frozenset(
    {b"cache-control", b"content-location", b"date", b"etag", b"expires", b"vary", b"age", _STATUS_HEADER}
)
_ENTITY_TAG = re.compile(r'(?:W/)?"[^"]*"')
_ENTRY_VERSION = 1
_MISSING: Any = object()


class HTTPCacheMiddleware:
    """Cache whole HTTP responses in a ``YokedCache`` under ``http:<request key>``.

    ``app.add_middleware(HTTPCacheMiddleware, cache=cache, ttl=60)``. See API §12 for the contract.
    """

    def __init__(
        self,
        app: ASGIApp,
        cache: YokedCache,
        ttl: int = 60,
        key_builder: KeyBuilder | None = None,
        methods: Iterable[str] = ("GET", "HEAD"),
        exclude_paths: Iterable[str] = (),
        cache_non_ok: bool = False,
        tags: str | Iterable[str] = (),
        cache_control_extra: str | None = None,
        max_body_size: int = 1_048_576,
    ) -> None:
        if ttl <= 0:
            raise ValueError(f"ttl must be > 0, got {ttl!r}")
        if max_body_size < 0:
            raise ValueError(f"max_body_size must be >= 0, got {max_body_size!r}")
        if key_builder is not None:
            _request_class()  # fail at startup, not on the first request, if the `web` extra is missing
        self.app = app
        self.cache = cache
        self.ttl = int(ttl)
        self.key_builder = key_builder
        self.methods = frozenset(method.upper() for method in methods)
        self.exclude_paths = tuple(exclude_paths)
        self.statuses = _NON_OK if cache_non_ok else _OK_ONLY
        self.tags = normalize_tags(tags)
        self.cache_control_extra = cache_control_extra.strip() if cache_control_extra else None
        self.max_body_size = max_body_size

    # --- entry point -----------------------------------------------------------------------------------
    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"].upper() not in self.methods:
            await self.app(scope, receive, send)
            return
        if self._excluded(scope["path"]) or (self.key_builder is None and _has_credentials(scope)):
            await self.app(scope, receive, _marking(send, BYPASS))
            return
        request_body = _RequestBody(receive)
        key = await self._key(scope, request_body)
        if key is None:
            await self.app(scope, request_body.replay(), _marking(send, BYPASS))
            return
        found, entry, remaining = await self._lookup(key)
        if not found:  # the cache raised (fallback off): the app answers, nothing is stored
            await self.app(scope, request_body.replay(), _marking(send, BYPASS))
            return
        if entry is not None:
            await self.send_entry(scope, send, entry, HIT, remaining)
            return
        tokens = None
        if scope["method"].upper() != "HEAD":  # HEAD misses are answered by the app and never stored
            tokens = await self._capture_tokens(key)
        if tokens is None:
            await self.app(scope, request_body.replay(), _marking(send, MISS))
            return
        with reads_of(self.cache, key) as reads:  # tables the app's SQL reads become tags of the entry
            response = _HeldResponse(self, scope, send, key, tokens, reads)
            await self.app(scope, request_body.replay(), response)
            await response.app_returned()

    def _excluded(self, path: str) -> bool:
        for prefix in self.exclude_paths:
            base = prefix.rstrip("/")
            if path in (prefix, base) or path.startswith(base + "/"):
                return True
        return False

    # --- keys ------------------------------------------------------------------------------------------
    async def _key(self, scope: Scope, request_body: _RequestBody) -> str | None:
        """``http:<request key>``, or ``None`` when the request cannot be keyed (body over the limit)."""
        if self.key_builder is not None:
            request = _request_class()(scope, receive=request_body.receive)
            built = self.key_builder(request)
            if inspect.isawaitable(built):
                built = await built
            if not isinstance(built, str) or not built:
                raise CacheKeyError(f"HTTPCacheMiddleware key_builder must return a non-empty str: {built!r}")
            return f"http:{built}"
        method = scope["method"].upper()
        method = "GET" if method == "HEAD" else method
        key = f"http:{method}:{_full_url(scope)}"
        if method == "GET":
            return key
        body = await request_body.read(self.max_body_size)
        if body is None:
            return None
        return f"{key}:{hashlib.sha256(body).hexdigest()}"

    # --- cache access (every failure is a pass-through) -------------------------------------------------
    async def _lookup(self, key: str) -> tuple[bool, dict[str, Any] | None, int | None]:
        """(lookup worked, live entry or ``None``, remaining TTL); both reads run concurrently."""
        results: tuple[Any, ...] = await asyncio.gather(
            self.cache.get(key, _MISSING), self.cache.ttl(key), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException):
                if not isinstance(result, Exception):
                    raise result  # cancellation and friends are not cache failures
                logger.warning("HTTP cache lookup failed, serving from the app: %s", result)
                return False, None, None
        stored, remaining = results
        return True, (stored if _is_entry(stored) else None), remaining

    async def _capture_tokens(self, key: str) -> list[str] | None:
        try:
            return await self.cache.capture_tokens(self.tags, key)
        except Exception as exc:
            logger.warning("HTTP cache could not read tag tokens, response will not be stored: %s", exc)
            return None

    async def store(self, key: str, entry: dict[str, Any], tokens: list[str], reads: ReadFrame) -> None:
        tags, all_tokens = reads.merge_into(self.tags, tokens)
        try:
            await self.cache.store_computed(key, entry, all_tokens, tags, ttl=self.ttl)
        except Exception as exc:
            logger.warning("HTTP cache could not store %s: %s", key, exc)

    # --- responses -------------------------------------------------------------------------------------
    def storable(self, status: int, headers: list[tuple[bytes, bytes]]) -> bool:
        if status not in self.statuses:
            return False
        for name, value in headers:
            lowered = value.lower()
            if name == b"set-cookie":
                return False
            if name == b"cache-control" and _directives(lowered) & {"no-store", "private"}:
                return False
            if name == b"vary" and b"*" in {token.strip() for token in lowered.split(b",")}:
                return False
            if name == b"content-type" and lowered.startswith(b"text/event-stream"):
                return False
            if name == b"content-length" and lowered.strip().isdigit() and int(lowered) > self.max_body_size:
                return False
        return True

    def cache_control(self, max_age: int) -> bytes:
        value = f"max-age={max(0, max_age)}"
        if self.cache_control_extra:
            value += f", {self.cache_control_extra}"
        return value.encode("latin-1")

    async def send_entry(
        self, scope: Scope, send: Send, entry: dict[str, Any], state: bytes, remaining: int | None
    ) -> None:
        """Send a stored (or just stored) response: full, headers only for HEAD, or 304."""
        status: int = entry["status"]
        body: bytes = entry["body"]
        headers = [(bytes(name), bytes(value)) for name, value in entry["headers"]]
        age = max(0, math.floor(time.time() - float(entry["created"])))
        if not any(name == b"cache-control" for name, _ in headers):
            max_age = self.ttl
            if state == HIT:
                max_age = remaining if remaining is not None else self.ttl - age
            headers.append((b"cache-control", self.cache_control(max_age)))
        if state == HIT:
            headers.append((b"age", str(age).encode()))
        headers.append((_STATUS_HEADER, state))
        method = scope["method"].upper()
        if method in ("GET", "HEAD") and 200 <= status < 300 and _none_match(scope, entry["etag"]):
            kept = [(name, value) for name, value in headers if name in _NOT_MODIFIED_HEADERS]
            await send({"type": "http.response.start", "status": 304, "headers": kept})
            await send(_body_message(b"", more_body=False))
            return
        if status >= 200 and status not in (204, 304):
            headers.append((b"content-length", str(len(body)).encode()))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send(_body_message(b"" if method == "HEAD" else body, more_body=False))


class _HeldResponse:
    """The ``send`` given to the app on a miss.

    A storable response is held back until its body is complete (then stored and sent with its ETag) or
    exceeds ``max_body_size`` (then everything held is forwarded and the rest streams through, unstored).
    Anything unexpected — an unstorable status or header, ``pathsend``, trailers — switches to forwarding.
    """

    def __init__(
        self,
        middleware: HTTPCacheMiddleware,
        scope: Scope,
        send: Send,
        key: str,
        tokens: list[str],
        reads: ReadFrame,
    ) -> None:
        self.middleware = middleware
        self.scope = scope
        self.send = send
        self.key = key
        self.tokens = tokens
        self.reads = reads
        self.forwarding = False
        self.done = False
        self.start: Message | None = None
        self.chunks: list[bytes] = []
        self.size = 0

    async def __call__(self, message: Message) -> None:
        if self.forwarding or self.done:
            await self.send(message)
            return
        kind = message["type"]
        if kind == "http.response.start" and self.start is None:
            headers = [(bytes(name).lower(), bytes(value)) for name, value in message.get("headers", [])]
            if message.get("trailers") or not self.middleware.storable(message["status"], headers):
                self.forwarding = True
                await self.send(_with_status_header(message, MISS))
                return
            self.start = message
            return
        if kind == "http.response.body" and self.start is not None:
            body = bytes(message.get("body", b""))
            self.size += len(body)
            if self.size > self.middleware.max_body_size:
                await self._give_up(message)
                return
            self.chunks.append(body)
            if not message.get("more_body", False):
                await self._complete()
            return
        await self._give_up(message)

    async def _give_up(self, message: Message) -> None:
        """Stop holding: forward what was held, then ``message``, then everything after it."""
        await self._forward_held()
        await self.send(message)

    async def _forward_held(self) -> None:
        self.forwarding = True
        if self.start is not None:
            await self.send(_with_status_header(self.start, MISS))
        if self.chunks:
            await self.send(_body_message(b"".join(self.chunks), more_body=True))
        self.chunks = []

    async def _complete(self) -> None:
        assert self.start is not None
        self.done = True
        body = b"".join(self.chunks)
        self.chunks = []
        headers = [
            (bytes(name).lower(), bytes(value))
            for name, value in self.start.get("headers", [])
            if bytes(name).lower() not in _NOT_STORED
        ]
        etag = next((value.decode("latin-1") for name, value in headers if name == b"etag"), None)
        if etag is None:
            etag = _body_etag(body)
            headers.append((b"etag", etag.encode("latin-1")))
        entry = {
            "v": _ENTRY_VERSION,
            "status": int(self.start["status"]),
            "headers": headers,
            "body": body,
            "etag": etag,
            "created": time.time(),
        }
        # Stored before the response is sent: a client that got this response finds it cached.
        await self.middleware.store(self.key, entry, self.tokens, self.reads)
        await self.middleware.send_entry(self.scope, self.send, entry, MISS, None)

    async def app_returned(self) -> None:
        """The app returned without finishing its body: forward whatever it did send, as it sent it."""
        if not self.forwarding and not self.done:
            await self._forward_held()


class _RequestBody:
    """The server's ``receive``, recording what is read so the app can read the same messages again."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self._messages: list[Message] = []

    async def receive(self) -> Message:
        message = await self._receive()
        self._messages.append(message)
        return message

    async def read(self, limit: int) -> bytes | None:
        """The whole request body, or ``None`` if it exceeds ``limit`` bytes or the client went away."""
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await self.receive()
            if message["type"] != "http.request":
                return None
            chunk = bytes(message.get("body", b""))
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not message.get("more_body", False):
                return b"".join(chunks)

    def replay(self) -> Receive:
        pending = list(self._messages)

        async def receive() -> Message:
            if pending:
                return pending.pop(0)
            return await self._receive()

        return receive


# --- pure helpers ------------------------------------------------------------------------------------------
def _request_class() -> Any:
    try:
        from starlette.requests import Request
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError(
            "HTTPCacheMiddleware(key_builder=...) needs Starlette: pip install 'yokedcache[web]'"
        ) from exc
    return Request


def _has_credentials(scope: Scope) -> bool:
    return any(bytes(name).lower() in (b"authorization", b"cookie") for name, _ in scope.get("headers", []))


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", []):
        if bytes(name).lower() == wanted:
            return bytes(value)
    return None


def _full_url(scope: Scope) -> str:
    """``scheme://host/path?query`` with path and query exactly as the client sent them."""
    scheme = scope.get("scheme", "http")
    host_header = _header(scope, b"host")
    if host_header is not None:
        host = host_header.decode("latin-1").lower()
    elif scope.get("server"):
        server_host, port = scope["server"]
        host = f"{server_host}:{port}" if port is not None else str(server_host)
    else:
        host = ""
    raw_path = scope.get("raw_path")
    path = bytes(raw_path).decode("latin-1") if raw_path else scope.get("root_path", "") + scope["path"]
    query = bytes(scope.get("query_string", b"")).decode("latin-1")
    return f"{scheme}://{host}{path}" + (f"?{query}" if query else "")


def _marking(send: Send, state: bytes) -> Send:
    """Wrap ``send`` to add ``X-YokedCache: <state>`` to the response start."""

    async def marked(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = _with_status_header(message, state)
        await send(message)

    return marked


def _body_message(body: bytes, *, more_body: bool) -> Message:
    return {"type": "http.response.body", "body": body, "more_body": more_body}


def _with_status_header(message: Message, state: bytes) -> Message:
    headers = [(k, v) for k, v in message.get("headers", []) if bytes(k).lower() != _STATUS_HEADER]
    headers.append((_STATUS_HEADER, state))
    return {**message, "headers": headers}


def _directives(cache_control: bytes) -> set[str]:
    """Directive names of a Cache-Control value (``private="set-cookie"`` → ``private``)."""
    text = cache_control.decode("latin-1").lower()
    return {part.split("=", 1)[0].strip() for part in text.split(",")}


def _body_etag(body: bytes) -> str:
    return f'"{hashlib.sha256(body).hexdigest()[:32]}"'


def _opaque(tag: str) -> str:
    return tag[2:] if tag.startswith("W/") else tag


def _none_match(scope: Scope, etag: str) -> bool:
    """Does the request's ``If-None-Match`` match ``etag`` (weak comparison, ``*`` matches any)?"""
    header = _header(scope, b"if-none-match")
    if header is None:
        return False
    text = header.decode("latin-1").strip()
    if text == "*":
        return True
    target = _opaque(etag.strip())
    return any(_opaque(tag) == target for tag in _ENTITY_TAG.findall(text))


def _is_entry(value: Any) -> bool:
    """Is ``value`` an entry this middleware stored (and not something else under the same key)?"""
    if type(value) is not dict or value.get("v") != _ENTRY_VERSION:
        return False
    try:
        return (
            isinstance(value["status"], int)
            and isinstance(value["body"], (bytes, bytearray))
            and isinstance(value["etag"], str)
            and isinstance(value["created"], (int, float))
            and all(
                isinstance(name, (bytes, bytearray)) and isinstance(content, (bytes, bytearray))
                for name, content in value["headers"]
            )
        )
    except (KeyError, TypeError, ValueError):
        return False
