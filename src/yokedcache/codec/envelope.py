"""The bytes stored for one cache entry.

Layout (big-endian)::

    offset  size  field
    0       3     magic b"\\xfeYC" (0xFE never starts UTF-8 text, so no legacy JSON payload
                  matches; a pickle starts with 0x80)
    3       1     FORMAT_VERSION (1)
    4       1     flags: bits 0-1 method (0 json, 1 msgpack, 2 pickle), bit 2 compressed (zlib),
                  bit 3 signed, bit 4 plain (body has no type tags); other bits must be 0
    5       8     created_at, float64 UNIX seconds
    13      16    only if timed (bit 5): fresh_until and compute_seconds, float64 each
    13|29   32    only if signed: HMAC-SHA256(signing_key,
                                  u32 len(key) + key UTF-8 + header (incl. timing) + body)
    ...     ...   body (as stored: compressed when the flag says so)

A *timed* entry is one kept past its freshness (for stale-while-revalidate or stale-if-error): readers
that do not ask for stale values treat it as a miss once ``fresh_until`` has passed.

The MAC covers the key, so an entry copied under another key fails verification, and the header, so
flags cannot be flipped (e.g. to make a body read as pickle). It is checked before decompressing or
decoding anything.

:func:`open_envelope` never raises: garbage, truncation, an unknown version, a bad or missing
signature, pickle while pickle is off, or an undecodable body all give ``None`` (a miss).
"""

from __future__ import annotations

import hmac
import math
import struct
import zlib
from typing import Any, NamedTuple

import orjson

from yokedcache.codec.values import dumps, loads
from yokedcache.exceptions import CacheSerializationError
from yokedcache.models import SerializationMethod

FORMAT_VERSION = 1
MAGIC = b"\xfeYC"

_HEADER = struct.Struct(">3sBBd")
_HEADER_SIZE = _HEADER.size  # 13
_MAC_SIZE = 32
_KEY_LENGTH = struct.Struct(">I")

_METHOD_MASK = 0b11
_COMPRESSED = 1 << 2
_SIGNED = 1 << 3
_PLAIN = 1 << 4
_TIMED = 1 << 5
_KNOWN_FLAGS = _METHOD_MASK | _COMPRESSED | _SIGNED | _PLAIN | _TIMED
_TIMING = struct.Struct(">dd")
_PLAIN_JSON = _PLAIN  # method code 0, not compressed, not signed

_METHODS = (SerializationMethod.JSON, SerializationMethod.MSGPACK, SerializationMethod.PICKLE)
_METHOD_CODES = {method: code for code, method in enumerate(_METHODS)}
_JSON = SerializationMethod.JSON
_PICKLE = SerializationMethod.PICKLE


class Opened(NamedTuple):
    """A decoded entry; ``fresh_until`` is ``None`` unless the entry was sealed as timed."""

    value: Any
    method: SerializationMethod
    compressed: bool
    created_at: float
    fresh_until: float | None = None
    compute_seconds: float = 0.0


class EntryInfo(NamedTuple):
    """What :func:`peek` reads from a header; ``size_bytes`` is the whole stored entry."""

    method: SerializationMethod
    compressed: bool
    created_at: float
    size_bytes: int
    signed: bool


def seal(
    value: Any,
    *,
    key: str,
    method: SerializationMethod,
    allow_pickle: bool,
    compression_threshold: int | None,
    signing_key: bytes | None,
    max_value_bytes: int | None,
    created_at: float,
    fresh_until: float | None = None,
    compute_seconds: float = 0.0,
) -> bytes:
    """Encode ``value`` as the entry stored under ``key``.

    ``compression_threshold``: ``None`` turns compression off; otherwise bodies of at least that
    many bytes are zlib-compressed (kept only if that makes them smaller). Raises
    :class:`CacheSerializationError` for unsupported values, pickle while not allowed, and entries
    larger than ``max_value_bytes``.
    """
    method = SerializationMethod.parse(method)
    if not math.isfinite(created_at):
        raise ValueError(f"created_at must be a finite UNIX time, got {created_at!r}")
    body, plain = dumps(value, method, allow_pickle=allow_pickle)
    flags = _METHOD_CODES[method]
    if plain:
        flags |= _PLAIN
    if compression_threshold is not None and len(body) >= compression_threshold:
        packed = zlib.compress(body)
        if len(packed) < len(body):
            body = packed
            flags |= _COMPRESSED
    timing = b""
    if fresh_until is not None:
        if not (math.isfinite(fresh_until) and math.isfinite(compute_seconds)):
            raise ValueError("fresh_until and compute_seconds must be finite")
        flags |= _TIMED
        timing = _TIMING.pack(fresh_until, compute_seconds)
    if signing_key is not None:
        flags |= _SIGNED
        header = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, created_at) + timing
        entry = b"".join((header, _mac(signing_key, key, header, body), body))
    else:
        entry = _HEADER.pack(MAGIC, FORMAT_VERSION, flags, created_at) + timing + body
    if max_value_bytes is not None and len(entry) > max_value_bytes:
        raise CacheSerializationError(
            f"serialized value for key {key!r} is {len(entry)} bytes, "
            f"over the limit max_value_bytes={max_value_bytes}"
        )
    return entry


def open_envelope(
    data: bytes,
    *,
    key: str,
    allow_pickle: bool,
    signing_key: bytes | None,
    allow_legacy: bool,
) -> Opened | None:
    """Decode an entry read under ``key``; ``None`` for any problem at all. Never raises.

    With ``signing_key``, unsigned entries (legacy ones included) are refused; without it, a signed
    entry is accepted unverified (the reader has no key to check it with). ``allow_legacy`` reads
    un-enveloped bytes as plain JSON when they parse; nothing else is ever tried on them.
    """
    try:
        if type(data) is not bytes:
            data = bytes(data)
        if data[:3] != MAGIC:
            if not allow_legacy or signing_key is not None or data[:1] == b"\x80":
                return None
            return Opened(orjson.loads(data), _JSON, False, 0.0)
        _, version, flags, created_at = _HEADER.unpack_from(data)
        if version != FORMAT_VERSION or flags & ~_KNOWN_FLAGS or created_at - created_at != 0.0:
            return None
        if flags == _PLAIN_JSON and signing_key is None:  # the common hit: skip everything else
            return Opened(orjson.loads(data[_HEADER_SIZE:]), _JSON, False, created_at)
        method = _METHODS[flags & _METHOD_MASK]  # code 3 -> IndexError -> None
        if method is _PICKLE and not allow_pickle:
            return None
        start = _HEADER_SIZE
        fresh_until: float | None = None
        compute_seconds = 0.0
        if flags & _TIMED:
            fresh_until, compute_seconds = _TIMING.unpack_from(data, start)
            if not (math.isfinite(fresh_until) and math.isfinite(compute_seconds)):
                return None
            start += _TIMING.size
        header_end = start
        if flags & _SIGNED:
            start += _MAC_SIZE
            if len(data) < start:
                return None
            if signing_key is not None:
                expected = _mac(signing_key, key, data[:header_end], data[start:])
                if not hmac.compare_digest(expected, data[header_end:start]):
                    return None
        elif signing_key is not None:
            return None
        body = data[start:]
        compressed = bool(flags & _COMPRESSED)
        if compressed:
            body = zlib.decompress(body)
        value = loads(body, method, plain=bool(flags & _PLAIN), allow_pickle=allow_pickle)
        return Opened(value, method, compressed, created_at, fresh_until, compute_seconds)
    except Exception:  # CorruptPayload, zlib.error, struct.error, IndexError, MemoryError, ...
        return None


def peek(data: bytes) -> EntryInfo | None:
    """Header facts of an entry, without decoding or verifying it; ``None`` if not an entry."""
    try:
        if type(data) is not bytes:
            data = bytes(data)
        if len(data) < _HEADER_SIZE:
            return None
        magic, version, flags, created_at = _HEADER.unpack_from(data)
        if magic != MAGIC or version != FORMAT_VERSION or flags & ~_KNOWN_FLAGS:
            return None
        if not math.isfinite(created_at) or flags & _METHOD_MASK >= len(_METHODS):
            return None
        signed = bool(flags & _SIGNED)
        minimum = _HEADER_SIZE + (_TIMING.size if flags & _TIMED else 0) + (_MAC_SIZE if signed else 0)
        if len(data) < minimum:
            return None
        return EntryInfo(
            _METHODS[flags & _METHOD_MASK], bool(flags & _COMPRESSED), created_at, len(data), signed
        )
    except Exception:
        return None


def _mac(signing_key: bytes, key: str, header: bytes, body: bytes) -> bytes:
    key_bytes = key.encode("utf-8", "surrogatepass")
    message = b"".join((_KEY_LENGTH.pack(len(key_bytes)), key_bytes, header, body))
    return hmac.digest(signing_key, message, "sha256")


__all__ = ["FORMAT_VERSION", "MAGIC", "EntryInfo", "Opened", "open_envelope", "peek", "seal"]
