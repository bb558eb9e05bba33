"""The cache key of one query execution: ``sql:<h>``.

``<h>`` hashes the payload format, the database (:func:`writes.database_identity`: no password, no driver),
the statement shape's stable digest (structure and the schema of the tables it reads), the bound parameter
values in statement order plus the execution parameters by name, and a ``schema_translate_map`` if any.

Parameter values are encoded strictly by type — ``1``, ``1.0``, ``True`` and ``"1"`` differ — and only for
types whose value fully defines them. Anything else (an arbitrary object, even one with a friendly
``str()``) raises :class:`UnknownParameter` and the query is not cached: a key built from ``str(obj)`` could
make two different queries share an entry.
"""

from __future__ import annotations

import datetime as dt
import decimal
import enum
import hashlib
import uuid
from collections.abc import Mapping
from typing import Any

import orjson

from .statements import Shape


class UnknownParameter(Exception):
    """A parameter value of a type without a canonical encoding."""


def _canon(value: Any) -> Any:
    tp = type(value)
    if value is None or tp is str or tp is bool:
        return value
    if tp is int:
        return ["i", str(value)]
    if tp is float:
        return ["f", repr(value)]
    if tp in (list, tuple):
        return ["l" if tp is list else "t", [_canon(v) for v in value]]
    if tp is dict:
        pairs = [[_canon(k), _canon(v)] for k, v in value.items()]
        return ["m", sorted(pairs, key=lambda pair: orjson.dumps(pair[0]))]
    if tp in (bytes, bytearray, memoryview):
        return ["y", bytes(value).hex()]
    if isinstance(value, enum.Enum):
        return ["e", f"{tp.__module__}.{tp.__qualname__}", value.name]
    if isinstance(value, (dt.datetime, dt.date, dt.time)):
        return [tp.__name__, value.isoformat()]
    if tp is dt.timedelta:
        return ["td", value.days, value.seconds, value.microseconds]
    if isinstance(value, decimal.Decimal):
        return ["d", str(value)]
    if isinstance(value, uuid.UUID):
        return ["u", value.hex]
    raise UnknownParameter(tp.__qualname__)


def query_key(
    identity: str,
    shape: Shape,
    bound_values: list[Any],
    parameters: Mapping[str, Any] | None,
    translate_map: Mapping[Any, Any] | None,
) -> str:
    """``sql:<h>`` for one execution (raises :class:`UnknownParameter`)."""
    params = sorted([str(k), _canon(v)] for k, v in (parameters or {}).items())
    translate = sorted([str(k), str(v)] for k, v in translate_map.items()) if translate_map else None
    material = [identity, shape.digest, [_canon(v) for v in bound_values], params, translate]
    try:
        text = orjson.dumps(material)
    except TypeError as exc:  # e.g. a dict key orjson cannot sort
        raise UnknownParameter(str(exc)) from None
    return "sql:" + hashlib.sha256(text).hexdigest()[:32]
