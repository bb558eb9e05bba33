"""Type-faithful encoding of Python values into JSON (orjson) or msgpack bodies.

A value is written as a *tree* made only of what both formats carry natively (``dict`` with ``str``
keys, ``list``, ``str``, 64-bit ``int``, ``float``, ``bool``, ``None``; msgpack also ``bytes``).
Everything else is a **tagged node**, a one-key dict ``{"__yc__": [tag, *args]}``:

=========  ======================================  ===============================================
tag        args                                    value
=========  ======================================  ===============================================
``t``      ``[items]``                             ``tuple``
``s/fs``   ``[items]``                             ``set`` / ``frozenset``
``d``      ``[[key, value], ...]``                 ``dict`` with a non-``str`` key or the marker key
``i``      hex string                              ``int`` outside the 64-bit range
``f``      ``"nan"``/``"inf"``/``"-inf"``          non-finite ``float`` (JSON only)
``b/ba``   base64 text (JSON) or bytes (msgpack)   ``bytes`` (JSON only) / ``bytearray``
``sx``     UTF-8 with surrogates, as ``b``         ``str`` holding lone surrogates
``dt/tm``  naive ISO text, tz, fold                ``datetime`` / ``time``
``da``     ISO text                                ``date``
``td``     days, seconds, microseconds             ``timedelta``
``dec``    ``str(value)``                          ``Decimal``
``u``      hex string                              ``UUID``
``e/ef``   module, qualname, member name / value   ``Enum`` member / composite ``Flag``
``nt``     module, qualname, ``{field: value}``    ``NamedTuple``
``dc``     module, qualname, ``{field: value}``    dataclass instance
``pd``     module, qualname, ``{state: value}``    pydantic v2 model (its pickle state)
``o``      see :mod:`yokedcache.codec.orm`         SQLAlchemy mapped instance
=========  ======================================  ===============================================

Plain data therefore costs nothing: when a value holds no tagged type at all it is handed to
orjson/msgpack as is (``plain=True``) and the reader skips the tag-restoring walk.

Time zones: ``datetime.timezone`` (offset and name) and ``zoneinfo.ZoneInfo`` (by key) are kept;
other ``tzinfo`` classes are refused rather than flattened to an offset. Subclasses of builtins
other than enums and named tuples (``OrderedDict``, ``str`` subclasses, ...) are refused too: never
a lossy copy.

Pydantic models are written from their pickle state (``__getstate__``: field values as they are,
fields set, extra, private) and restored with ``__setstate__``, the path pydantic itself uses for
``copy`` and pickle. Unlike ``model_dump`` this keeps nested models and non-JSON field types, and
unlike ``model_construct`` it cannot mix up a field with another field's alias or run default
factories.

Security: decoding never imports a module and never calls anything named by the payload except the
constructor of a class of the recorded kind, resolved from :data:`sys.modules` (see
:func:`resolve_class`). Pickle is used only when the caller allows it on both sides.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import enum
import pickle
import sys
import types
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import orjson

from yokedcache.codec import orm
from yokedcache.exceptions import CacheSerializationError
from yokedcache.models import SerializationMethod

MARKER = "__yc__"
"""Key of a tagged node. A user dict holding this key is written as a ``d`` node: no collision."""

_INT_MIN = -(2**63)  # what orjson and msgpack both carry natively
_INT_MAX = 2**64 - 1

_JSON = SerializationMethod.JSON
_MSGPACK = SerializationMethod.MSGPACK
_PICKLE = SerializationMethod.PICKLE

_NoneType = type(None)
# Types written as they are by the plain path (range of ints: checked by the serializer itself).
_JSON_SCALARS: frozenset[type] = frozenset((str, int, bool, _NoneType))
_MSGPACK_SCALARS: frozenset[type] = frozenset((str, int, bool, _NoneType, bytes, float))
_STR_ONLY: frozenset[type] = frozenset((str,))


class CorruptPayload(Exception):
    """A body cannot be decoded: bad bytes, unknown tag, unresolvable class, pickle while off.

    Deliberately not a :class:`~yokedcache.exceptions.CacheError`: it never reaches users, the
    envelope layer turns it into a miss.
    """


class _Unsupported(Exception):
    """Raised inside the encoder; collects the path to the offending value while unwinding."""

    def __init__(self, value: Any, reason: str = "") -> None:
        super().__init__()
        self.type_name = type(value).__qualname__
        self.reason = reason
        self.path: list[str] = []

    def message(self) -> str:
        where = "value" + "".join(reversed(self.path))
        reason = f" ({self.reason})" if self.reason else ""
        return f"cannot serialize object of type {self.type_name} at {where}{reason}"


# --- public API ---


def dumps(value: Any, method: SerializationMethod, *, allow_pickle: bool = False) -> tuple[bytes, bool]:
    """Encode ``value``; return ``(body, plain)``.

    ``plain`` is ``True`` when the body holds no tagged node, so :func:`loads` may return the parsed
    body as is. Raises :class:`CacheSerializationError` for any value that cannot be restored
    exactly (never a lossy substitute) and for ``PICKLE`` without ``allow_pickle``.
    """
    if type(method) is not SerializationMethod:
        method = SerializationMethod.parse(method)
    if method is _JSON:
        if _is_plain(value, _JSON_SCALARS):
            try:
                return orjson.dumps(value), True
            except orjson.JSONEncodeError:
                pass  # an int beyond 64 bits or a lone surrogate: the tagged path handles both
        return _dump_tree(value, binary=False, pack=orjson.dumps), False
    if method is _MSGPACK:
        packb = _msgpack_packb()
        if _is_plain(value, _MSGPACK_SCALARS):
            try:
                return packb(value), True
            except Exception:
                pass  # as above (OverflowError, UnicodeEncodeError)
        return _dump_tree(value, binary=True, pack=packb), False
    if method is _PICKLE:
        if not allow_pickle:
            raise CacheSerializationError(
                "pickle serialization is disabled; set allow_pickle=True to enable it"
            )
        try:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), False
        except Exception as exc:
            raise CacheSerializationError(
                f"cannot pickle object of type {type(value).__qualname__}: {exc}"
            ) from exc
    raise CacheSerializationError(f"unknown serialization method {method!r}")  # pragma: no cover


def loads(body: bytes, method: SerializationMethod, *, plain: bool, allow_pickle: bool = False) -> Any:
    """Decode a body written by :func:`dumps`; raise :class:`CorruptPayload` for anything wrong."""
    try:
        if method is _JSON:
            tree = orjson.loads(body)
            return tree if plain else _Decoder(binary=False).decode(tree)
        if method is _MSGPACK:
            tree = _msgpack_unpackb(body)
            return tree if plain else _Decoder(binary=True).decode(tree)
        if method is _PICKLE:
            if not allow_pickle:
                raise CorruptPayload("pickle payload while pickle is disabled")
            return pickle.loads(body)  # only reached with allow_pickle=True
        raise CorruptPayload(f"unknown serialization method {method!r}")
    except CorruptPayload:
        raise
    except Exception as exc:
        raise CorruptPayload(f"{type(exc).__name__}: {exc}") from exc


def resolve_class(module: Any, qualname: Any) -> type:
    """Find a class by module and qualname **without importing anything**.

    The module must already be in :data:`sys.modules`; the qualname is walked through the namespaces'
    ``__dict__`` (so no module ``__getattr__``, descriptor or metaclass hook runs, and nothing can be
    lazily imported) and every step must be a plain identifier (no ``<locals>``). The caller checks
    that the result is of the expected kind before using it. Raises :class:`CorruptPayload` otherwise.
    """
    if type(module) is not str or type(qualname) is not str:
        raise CorruptPayload("class reference is not a pair of strings")
    obj: Any = sys.modules.get(module)
    if obj is None:
        raise CorruptPayload(f"module {module!r} is not imported in this process")
    for part in qualname.split("."):
        if not part.isidentifier() or not isinstance(obj, (types.ModuleType, type)):
            raise CorruptPayload(f"class {module}.{qualname} cannot be resolved")
        obj = vars(obj).get(part)
        if obj is None:
            raise CorruptPayload(f"class {module}.{qualname} not found")
    if not isinstance(obj, type):
        raise CorruptPayload(f"{module}.{qualname} is not a class")
    return obj


# --- plain check ---


def _is_plain(value: Any, scalars: frozenset[type]) -> bool:
    try:
        return _plain(value, scalars)
    except RecursionError:
        return False  # the tagged path reports it


def _plain(v: Any, scalars: frozenset[type]) -> bool:
    """True when ``v`` holds only natively carried types, so it can be written without any tag.

    Runs on every write of plain data, so the per-item work is done by C builtins (``set(map(type,
    ...))``). Two things are left to the serializer, which raises on them and sends the value down the
    tagged path: ints beyond 64 bits and strings with lone surrogates. Non-finite floats are checked
    here because orjson would silently write them as ``null``.
    """
    t = type(v)
    if t is dict:
        if not set(map(type, v)) <= _STR_ONLY or MARKER in v:
            return False
        items: Any = v.values()
    elif t is list:
        items = v
    elif t in scalars:
        return True
    elif t is float:
        return v - v == 0.0  # False for nan and ±inf
    else:
        return False
    if set(map(type, items)) <= scalars:
        return True
    for x in items:
        tx = type(x)
        if tx in scalars:
            continue
        if tx is float:
            if x - x != 0.0:
                return False
        elif not _plain(x, scalars):
            return False
    return True


# --- encoder ---


def _dump_tree(value: Any, *, binary: bool, pack: Callable[[Any], bytes]) -> bytes:
    strict_str = False
    while True:
        try:
            tree = _Encoder(binary=binary, strict_str=strict_str).encode(value)
        except _Unsupported as exc:
            raise CacheSerializationError(exc.message()) from None
        except RecursionError:
            raise CacheSerializationError(
                "cannot serialize value: nested too deeply or contains a reference cycle"
            ) from None
        try:
            return pack(tree)
        except Exception as exc:
            if not strict_str:
                # most likely a str with lone surrogates: retry, tagging such strings
                strict_str = True
                continue
            raise CacheSerializationError(f"cannot serialize value: {exc}") from exc


def _tag(*args: Any) -> dict[str, list[Any]]:
    return {MARKER: list(args)}


def _utf8_ok(s: str) -> bool:
    if s.isascii():
        return True
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


class _Encoder:
    """One encoding pass; ``refs`` numbers the SQLAlchemy instances already written, by id()."""

    __slots__ = ("binary", "refs", "strict_str")

    def __init__(self, *, binary: bool, strict_str: bool) -> None:
        self.binary = binary
        self.strict_str = strict_str
        self.refs: dict[int, int] = {}

    def encode(self, v: Any) -> Any:
        t = type(v)
        if t is str:
            if self.strict_str and not _utf8_ok(v):
                return _tag("sx", self._bin(v.encode("utf-8", "surrogatepass")))
            return v
        if t is bool or v is None:
            return v
        if t is int:
            if _INT_MIN <= v <= _INT_MAX:
                return v
            return _tag("i", format(v, "x"))  # hex: not limited by sys.get_int_max_str_digits()
        if t is float:
            if self.binary or v - v == 0.0:
                return v
            return _tag("f", "nan" if v != v else ("inf" if v > 0 else "-inf"))
        handler = _ENCODERS.get(t)
        if handler is not None:
            return handler(self, v)
        return self._object(v)

    def child(self, v: Any, segment: str) -> Any:
        """Encode a nested value, naming it in the error path if it is unsupported."""
        try:
            return self.encode(v)
        except _Unsupported as exc:
            exc.path.append(segment)
            raise

    def _bin(self, b: bytes) -> Any:
        return b if self.binary else base64.b64encode(b).decode("ascii")

    # --- containers ---

    def _items(self, v: Any, set_like: bool = False) -> list[Any]:
        out = []
        try:
            for x in v:
                out.append(self.encode(x))
        except _Unsupported as exc:
            exc.path.append("[<element>]" if set_like else f"[{len(out)}]")
            raise
        return out

    def _list(self, v: list[Any]) -> list[Any]:
        return self._items(v)

    def _tuple(self, v: tuple[Any, ...]) -> Any:
        return _tag("t", self._items(v))

    def _set(self, v: set[Any]) -> Any:
        return _tag("s", self._items(v, set_like=True))

    def _frozenset(self, v: frozenset[Any]) -> Any:
        return _tag("fs", self._items(v, set_like=True))

    def _dict(self, v: dict[Any, Any]) -> Any:
        strict = self.strict_str
        if all(type(k) is str and k != MARKER and (not strict or _utf8_ok(k)) for k in v):
            out = {}
            key: Any = None
            try:
                for key, x in v.items():
                    out[key] = self.encode(x)
            except _Unsupported as exc:
                exc.path.append(f"[{key!r}]")
                raise
            return out
        pairs = []
        for k, x in v.items():
            pairs.append([self.child(k, "[<key>]"), self.child(x, f"[{k!r}]")])
        return _tag("d", pairs)

    # --- scalars with a tag ---

    def _bytes(self, v: bytes) -> Any:
        return v if self.binary else _tag("b", self._bin(v))

    def _bytearray(self, v: bytearray) -> Any:
        return _tag("ba", self._bin(bytes(v)))

    def _datetime(self, v: dt.datetime) -> Any:
        return _tag("dt", v.replace(tzinfo=None, fold=0).isoformat(), self._tz(v), v.fold)

    def _time(self, v: dt.time) -> Any:
        return _tag("tm", v.replace(tzinfo=None, fold=0).isoformat(), self._tz(v), v.fold)

    def _tz(self, v: dt.datetime | dt.time) -> Any:
        tz = v.tzinfo
        if tz is None:
            return None
        if type(tz) is dt.timezone:
            offset = tz.utcoffset(None)
            micros = (offset.days * 86400 + offset.seconds) * 1_000_000 + offset.microseconds
            name = tz.tzname(None)
            if name == dt.timezone(offset).tzname(None):
                return micros
            return [micros, name]
        zoneinfo = sys.modules.get("zoneinfo")
        key = getattr(tz, "key", None)
        if zoneinfo is not None and type(tz) is zoneinfo.ZoneInfo and key is not None:
            return str(key)
        raise _Unsupported(
            v,
            f"time zone {type(tz).__qualname__} is not supported; use datetime.timezone or zoneinfo.ZoneInfo",
        )

    def _date(self, v: dt.date) -> Any:
        return _tag("da", v.isoformat())

    def _timedelta(self, v: dt.timedelta) -> Any:
        return _tag("td", v.days, v.seconds, v.microseconds)

    def _decimal(self, v: Decimal) -> Any:
        return _tag("dec", str(v))

    def _uuid(self, v: uuid.UUID) -> Any:
        return _tag("u", v.hex)

    # --- classes ---

    def _object(self, v: Any) -> Any:
        t = type(v)
        if isinstance(v, enum.Enum):
            mod, qual = self.class_ref(t, v)
            name = v._name_
            if name is not None and t.__members__.get(name) is v:
                return _tag("e", mod, qual, name)
            if isinstance(v, enum.Flag):
                return _tag("ef", mod, qual, self.child(v._value_, ".value"))
            raise _Unsupported(v, "enum value is not a member")
        if isinstance(v, tuple) and isinstance(getattr(t, "_fields", None), tuple):
            mod, qual = self.class_ref(t, v)
            return _tag("nt", mod, qual, self._fields(zip(t._fields, v, strict=True)))
        if orm.is_mapped_instance(v):
            return _tag("o", *orm.encode_instance(v, self.child, self.refs, self.class_ref))
        if dataclasses.is_dataclass(t):
            mod, qual = self.class_ref(t, v)
            fields = ((f.name, getattr(v, f.name)) for f in dataclasses.fields(v))
            return _tag("dc", mod, qual, self._fields(fields))
        base_model = _pydantic_base_model()
        if base_model is not None and isinstance(v, base_model):
            mod, qual = self.class_ref(t, v)
            state = v.__getstate__()
            return _tag("pd", mod, qual, self._fields(state.items()))
        raise _Unsupported(v)

    def _fields(self, items: Any) -> dict[str, Any]:
        return {name: self.child(x, f".{name}") for name, x in items}

    def class_ref(self, cls: type, v: Any) -> tuple[str, str]:
        """``(module, qualname)`` of ``cls``, refusing classes a reader could never resolve."""
        mod, qual = cls.__module__, cls.__qualname__
        try:
            found = resolve_class(mod, qual)
        except CorruptPayload:
            found = None
        if found is not cls:
            raise _Unsupported(
                v,
                f"class {mod}.{qual} cannot be found by module and qualname; define it at module level",
            )
        return mod, qual


_ENCODERS: dict[type, Callable[[_Encoder, Any], Any]] = {
    list: _Encoder._list,
    dict: _Encoder._dict,
    tuple: _Encoder._tuple,
    set: _Encoder._set,
    frozenset: _Encoder._frozenset,
    bytes: _Encoder._bytes,
    bytearray: _Encoder._bytearray,
    dt.datetime: _Encoder._datetime,
    dt.date: _Encoder._date,
    dt.time: _Encoder._time,
    dt.timedelta: _Encoder._timedelta,
    Decimal: _Encoder._decimal,
    uuid.UUID: _Encoder._uuid,
}


# --- decoder ---


class _Decoder:
    """One decoding pass over a tagged tree. ``refs`` holds SQLAlchemy instances by their number."""

    __slots__ = ("binary", "refs")

    def __init__(self, *, binary: bool) -> None:
        self.binary = binary
        self.refs: dict[int, Any] = {}

    def decode(self, n: Any) -> Any:
        t = type(n)
        if t is str or t is int or t is float or t is bool or n is None:
            return n
        if t is dict:
            if MARKER in n:
                return self._tagged(n)
            out = {}
            for k, x in n.items():
                if type(k) is not str:
                    raise CorruptPayload("map key is not a string")
                out[k] = self.decode(x)
            return out
        if t is list:
            return [self.decode(x) for x in n]
        if t is bytes and self.binary:
            return n
        raise CorruptPayload(f"unexpected {t.__name__} in body")

    def _tagged(self, n: dict[str, Any]) -> Any:
        spec = n[MARKER]
        if len(n) != 1 or type(spec) is not list or not spec or type(spec[0]) is not str:
            raise CorruptPayload("malformed tagged node")
        handler = _DECODERS.get(spec[0])
        if handler is None:
            raise CorruptPayload(f"unknown tag {spec[0]!r}")
        return handler(self, spec)

    def _list_arg(self, spec: list[Any]) -> list[Any]:
        _, items = spec
        if type(items) is not list:
            raise CorruptPayload("expected a list")
        return [self.decode(x) for x in items]

    def _bin(self, b: Any) -> bytes:
        if self.binary:
            if type(b) is not bytes:
                raise CorruptPayload("expected bytes")
            return b
        if type(b) is not str:
            raise CorruptPayload("expected base64 text")
        return base64.b64decode(b, validate=True)

    def _tuple(self, spec: list[Any]) -> Any:
        return tuple(self._list_arg(spec))

    def _set(self, spec: list[Any]) -> Any:
        return set(self._list_arg(spec))

    def _frozenset(self, spec: list[Any]) -> Any:
        return frozenset(self._list_arg(spec))

    def _dict(self, spec: list[Any]) -> Any:
        _, pairs = spec
        if type(pairs) is not list:
            raise CorruptPayload("expected a list of pairs")
        out = {}
        for pair in pairs:
            if type(pair) is not list or len(pair) != 2:
                raise CorruptPayload("expected a key/value pair")
            out[self.decode(pair[0])] = self.decode(pair[1])
        return out

    def _int(self, spec: list[Any]) -> Any:
        _, text = spec
        if type(text) is not str:
            raise CorruptPayload("expected hex text")
        return int(text, 16)

    def _float(self, spec: list[Any]) -> Any:
        _, text = spec
        if text not in ("nan", "inf", "-inf"):
            raise CorruptPayload("bad float")
        return float(text)

    def _bytes(self, spec: list[Any]) -> Any:
        _, b = spec
        return self._bin(b)

    def _bytearray(self, spec: list[Any]) -> Any:
        _, b = spec
        return bytearray(self._bin(b))

    def _surrogate_str(self, spec: list[Any]) -> Any:
        _, b = spec
        return self._bin(b).decode("utf-8", "surrogatepass")

    def _datetime(self, spec: list[Any]) -> Any:
        _, text, tz, fold = spec
        value = dt.datetime.fromisoformat(_text(text))
        return value.replace(tzinfo=_tz(tz), fold=_fold(fold))

    def _time(self, spec: list[Any]) -> Any:
        _, text, tz, fold = spec
        value = dt.time.fromisoformat(_text(text))
        return value.replace(tzinfo=_tz(tz), fold=_fold(fold))

    def _date(self, spec: list[Any]) -> Any:
        _, text = spec
        return dt.date.fromisoformat(_text(text))

    def _timedelta(self, spec: list[Any]) -> Any:
        _, days, seconds, micros = spec
        if type(days) is not int or type(seconds) is not int or type(micros) is not int:
            raise CorruptPayload("bad timedelta")
        return dt.timedelta(days=days, seconds=seconds, microseconds=micros)

    def _decimal(self, spec: list[Any]) -> Any:
        _, text = spec
        return Decimal(_text(text))

    def _uuid(self, spec: list[Any]) -> Any:
        _, text = spec
        return uuid.UUID(hex=_text(text))

    def _enum(self, spec: list[Any]) -> Any:
        _, mod, qual, name = spec
        cls = resolve_class(mod, qual)
        if not issubclass(cls, enum.Enum) or type(name) is not str:
            raise CorruptPayload(f"{mod}.{qual} is not an Enum")
        member = cls.__members__.get(name)
        if member is None:
            raise CorruptPayload(f"{mod}.{qual} has no member {name!r}")
        return member

    def _flag(self, spec: list[Any]) -> Any:
        _, mod, qual, value = spec
        cls = resolve_class(mod, qual)
        if not issubclass(cls, enum.Flag):
            raise CorruptPayload(f"{mod}.{qual} is not a Flag")
        return cls(self.decode(value))

    def _namedtuple(self, spec: list[Any]) -> Any:
        _, mod, qual, fields = spec
        cls = resolve_class(mod, qual)
        names = getattr(cls, "_fields", None)
        if not issubclass(cls, tuple) or not isinstance(names, tuple):
            raise CorruptPayload(f"{mod}.{qual} is not a NamedTuple")
        values = self._fields(fields, names)
        return tuple.__new__(cls, [values[name] for name in names])

    def _dataclass(self, spec: list[Any]) -> Any:
        _, mod, qual, fields = spec
        cls = resolve_class(mod, qual)
        if not dataclasses.is_dataclass(cls):
            raise CorruptPayload(f"{mod}.{qual} is not a dataclass")
        values = self._fields(fields, [f.name for f in dataclasses.fields(cls)])
        obj = object.__new__(cls)
        for name, value in values.items():
            object.__setattr__(obj, name, value)  # bypasses frozen=True and any custom __setattr__
        return obj

    def _pydantic(self, spec: list[Any]) -> Any:
        _, mod, qual, fields = spec
        cls: Any = resolve_class(mod, qual)
        base_model = _pydantic_base_model()
        if base_model is None or not issubclass(cls, base_model):
            raise CorruptPayload(f"{mod}.{qual} is not a pydantic model")
        if type(fields) is not dict:
            raise CorruptPayload("expected a field map")
        state = {name: self.decode(x) for name, x in fields.items()}
        values = state.get("__dict__")
        if type(values) is not dict or set(values) != set(cls.model_fields):
            raise CorruptPayload(f"stored fields do not match {mod}.{qual}")
        model = cls.__new__(cls)
        # pydantic's own restore path (used by copy and pickle): no validation, no defaults
        model.__setstate__(state)
        return model

    def _mapped(self, spec: list[Any]) -> Any:
        return orm.decode_instance(spec[1:], self.decode, self.refs, resolve_class)

    def _fields(self, fields: Any, names: Any) -> dict[str, Any]:
        if type(fields) is not dict or list(fields) != list(names):
            raise CorruptPayload("stored fields do not match the class")
        return {name: self.decode(x) for name, x in fields.items()}


_DECODERS: dict[str, Callable[[_Decoder, list[Any]], Any]] = {
    "t": _Decoder._tuple,
    "s": _Decoder._set,
    "fs": _Decoder._frozenset,
    "d": _Decoder._dict,
    "i": _Decoder._int,
    "f": _Decoder._float,
    "b": _Decoder._bytes,
    "ba": _Decoder._bytearray,
    "sx": _Decoder._surrogate_str,
    "dt": _Decoder._datetime,
    "tm": _Decoder._time,
    "da": _Decoder._date,
    "td": _Decoder._timedelta,
    "dec": _Decoder._decimal,
    "u": _Decoder._uuid,
    "e": _Decoder._enum,
    "ef": _Decoder._flag,
    "nt": _Decoder._namedtuple,
    "dc": _Decoder._dataclass,
    "pd": _Decoder._pydantic,
    "o": _Decoder._mapped,
}


def _text(v: Any) -> str:
    if type(v) is not str:
        raise CorruptPayload("expected text")
    return v


def _fold(v: Any) -> int:
    if v not in (0, 1) or type(v) is not int:
        raise CorruptPayload("bad fold")
    return int(v)


def _tz(v: Any) -> dt.tzinfo | None:
    if v is None:
        return None
    if type(v) is int:
        return dt.timezone(dt.timedelta(microseconds=v))
    if type(v) is list:
        micros, name = v
        if type(micros) is not int or type(name) is not str:
            raise CorruptPayload("bad time zone")
        return dt.timezone(dt.timedelta(microseconds=micros), name)
    if type(v) is str:
        import zoneinfo  # standard library; ZoneInfo validates the key (no paths)

        return zoneinfo.ZoneInfo(v)
    raise CorruptPayload("bad time zone")


# --- optional deps ---


def _pydantic_base_model() -> Any:
    """pydantic's ``BaseModel`` if pydantic is already imported (else nothing is imported)."""
    module = sys.modules.get("pydantic.main")
    return None if module is None else getattr(module, "BaseModel", None)


def _msgpack_packb() -> Callable[[Any], bytes]:
    try:
        import msgpack
    except ImportError:
        raise CacheSerializationError(
            "msgpack serialization needs the msgpack package (pip install 'yokedcache[msgpack]')"
        ) from None
    # use_bin_type=True is the default since msgpack 1.0
    packb: Callable[[Any], bytes] = msgpack.packb
    return packb


def _reject_ext(code: int, data: bytes) -> Any:
    raise CorruptPayload(f"msgpack extension type {code} is not used by yokedcache")


def _msgpack_unpackb(body: bytes) -> Any:
    import msgpack

    return msgpack.unpackb(
        body, raw=False, use_list=True, strict_map_key=True, ext_hook=_reject_ext, timestamp=0
    )


__all__ = ["MARKER", "CorruptPayload", "dumps", "loads", "resolve_class"]
