"""Entry envelope and type-faithful value encoding: pure functions, no I/O.

- :mod:`.values`: ``dumps``/``loads`` of a value body (JSON via orjson, msgpack, opt-in pickle).
- :mod:`.envelope`: ``seal``/``open_envelope``/``peek`` of the bytes stored per entry (header,
  optional HMAC signature, optional zlib compression).
- :mod:`.orm`: SQLAlchemy mapped instances inside values (only when SQLAlchemy is already imported).
"""

from yokedcache.codec.envelope import (
    FORMAT_VERSION,
    MAGIC,
    EntryInfo,
    Opened,
    open_envelope,
    peek,
    seal,
)
from yokedcache.codec.orm import is_mapped_instance
from yokedcache.codec.values import MARKER, CorruptPayload, dumps, loads, resolve_class

__all__ = [
    "FORMAT_VERSION",
    "MAGIC",
    "MARKER",
    "CorruptPayload",
    "EntryInfo",
    "Opened",
    "dumps",
    "is_mapped_instance",
    "loads",
    "open_envelope",
    "peek",
    "resolve_class",
    "seal",
]
