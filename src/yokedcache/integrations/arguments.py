"""Canonical encoding of call arguments into stable cache keys.

Keys must be equal for equal calls in every process and after restarts, and different for different calls:

- arguments are bound to the signature with defaults applied and visited **in signature order**, so
  ``f(1, b=2)``, ``f(b=2, a=1)`` and ``f(1)`` (with ``b=2`` the default) give one key;
- values are encoded with their type (``1``, ``1.0``, ``True`` and ``"1"`` differ), dicts and sets
  independently of order;
- every encoding is self-delimiting (strings and reprs carry their length), so two different argument
  lists can never concatenate to the same text;
- anything without a stable representation is refused by name instead of silently producing a per-call
  key (the classic ``<object at 0x...>`` bug).

The hot path is a dict lookup on the exact type of each argument; the full type analysis (dataclasses,
pydantic, ORM identities, excluded framework objects) runs only for other types, and "is this type a
session/request to leave out?" is answered once per type.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import decimal
import enum
import hashlib
import inspect
import sys
import uuid
from collections.abc import Callable, Iterable
from typing import Any

from ..exceptions import CacheKeyError

_EMPTY: Any = inspect.Parameter.empty


class Unstable(Exception):
    """Raised inside the encoder; turned into CacheKeyError naming the parameter."""


def _qualname(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


# --- framework objects that never belong in a key ------------------------------------------------------

_EXCLUDED_TYPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sqlalchemy.orm", ("Session", "scoped_session")),
    ("sqlalchemy.engine", ("Connection", "Engine")),
    ("sqlalchemy.ext.asyncio", ("AsyncSession", "AsyncConnection", "AsyncEngine", "async_scoped_session")),
    ("starlette.requests", ("HTTPConnection",)),  # Request and WebSocket derive from it
    ("starlette.websockets", ("WebSocket",)),
    ("starlette.responses", ("Response",)),
    ("starlette.background", ("BackgroundTasks",)),
)

_excluded_by_type: dict[type, bool] = {}


def is_excluded_type(tp: type) -> bool:
    """True for SQLAlchemy sessions/connections/engines and Starlette request-scoped objects.

    Cached per type. That is sound although the frameworks may be imported later: a class deriving from
    ``Session`` cannot exist before ``sqlalchemy.orm`` is imported, so a type found "not excluded" stays so.
    """
    found = _excluded_by_type.get(tp)
    if found is None:
        found = False
        for module, names in _EXCLUDED_TYPES:
            mod = sys.modules.get(module)
            if mod is None:
                continue
            for name in names:
                base = getattr(mod, name, None)
                if isinstance(base, type) and issubclass(tp, base):
                    found = True
        if len(_excluded_by_type) > 4096:  # dynamically created classes must not grow this forever
            _excluded_by_type.clear()
        _excluded_by_type[tp] = found
    return found


# --- the canonical encoding ----------------------------------------------------------------------------


def _enc(value: Any) -> str:
    encoder = _ENCODERS.get(type(value))
    if encoder is not None:
        return encoder(value)
    return _encode_object(value)


def _enc_str(value: str) -> str:
    return f"s{len(value)}:{value}"


def _enc_int(value: int) -> str:
    return f"i{value};"


def _enc_float(value: float) -> str:
    return f"f{value!r};"


def _enc_bool(value: bool) -> str:
    return "T" if value else "F"


def _enc_none(value: None) -> str:
    return "N"


def _enc_list(value: list[Any]) -> str:
    return "l[" + "".join([_enc(item) for item in value]) + "]"


def _enc_tuple(value: tuple[Any, ...]) -> str:
    return "t[" + "".join([_enc(item) for item in value]) + "]"


def _enc_dict(value: dict[Any, Any]) -> str:
    return "d{" + "".join(sorted([_enc(k) + "=" + _enc(v) for k, v in value.items()])) + "}"


def _enc_set(value: set[Any]) -> str:
    return "S{" + "".join(sorted([_enc(item) for item in value])) + "}"


def _enc_frozenset(value: frozenset[Any]) -> str:
    return "z{" + "".join(sorted([_enc(item) for item in value])) + "}"


def _enc_bytes(value: bytes) -> str:
    return f"b{value.hex()};"


def _enc_bytearray(value: bytearray) -> str:
    return f"B{value.hex()};"


def _enc_datetime(value: dt.datetime | dt.date | dt.time) -> str:
    return f"D{type(value).__name__}:{value.isoformat()};"


def _enc_timedelta(value: dt.timedelta) -> str:
    return f"td{value.days},{value.seconds},{value.microseconds};"


def _enc_decimal(value: decimal.Decimal) -> str:
    return f"dec{value};"


def _enc_uuid(value: uuid.UUID) -> str:
    return f"u{value.hex};"


_ENCODERS: dict[type, Callable[[Any], str]] = {
    str: _enc_str,
    int: _enc_int,
    float: _enc_float,
    bool: _enc_bool,
    type(None): _enc_none,
    list: _enc_list,
    tuple: _enc_tuple,
    dict: _enc_dict,
    set: _enc_set,
    frozenset: _enc_frozenset,
    bytes: _enc_bytes,
    bytearray: _enc_bytearray,
    dt.datetime: _enc_datetime,
    dt.date: _enc_datetime,
    dt.time: _enc_datetime,
    dt.timedelta: _enc_timedelta,
    decimal.Decimal: _enc_decimal,
    uuid.UUID: _enc_uuid,
}

_BUILTIN_BASES = (str, int, float, tuple, list, dict, set, frozenset, bytes)


def _encode_object(value: Any) -> str:
    """Everything that is not an exact builtin type: user hooks, structured types, identities, reprs."""
    tp = type(value)
    if isinstance(value, type):
        return f"C{_qualname(value)};"  # a class is identified by its import path
    custom = getattr(value, "__cache_key__", None)
    if callable(custom):
        return f"k{_qualname(tp)}(" + _enc(custom()) + ")"
    if isinstance(value, enum.Enum):
        return f"e{_qualname(tp)}.{value.name};"
    identity = _orm_identity(value)
    if identity is not None:
        return f"o{_qualname(tp)}(" + _enc(identity) + ")"
    if dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return f"c{_qualname(tp)}(" + _enc_dict(fields) + ")"
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return f"c{_qualname(tp)}(" + _enc(value.model_dump(mode="python")) + ")"
    if isinstance(value, _BUILTIN_BASES):  # subclasses: NamedTuple, OrderedDict, str enums' cousins...
        base: Any = next(t for t in tp.__mro__ if t in _BUILTIN_BASES)
        return f"c{_qualname(tp)}(" + _ENCODERS[base](base(value)) + ")"
    for base_type in (dt.datetime, dt.date, dt.time, dt.timedelta, decimal.Decimal, uuid.UUID):
        if isinstance(value, base_type):  # subclasses of the value types (pendulum, ...)
            return f"c{_qualname(tp)}(" + _ENCODERS[base_type](value) + ")"
    if tp.__repr__ is not object.__repr__:
        text = repr(value)
        if "0x" not in text:  # an address means the repr changes per object and per process
            return f"r{_qualname(tp)}:{len(text)}:{text}"
    raise Unstable(tp.__qualname__)


def _orm_identity(value: Any) -> tuple[Any, ...] | None:
    """The primary key of a persistent SQLAlchemy instance; None for anything that is not mapped."""
    if "sqlalchemy.orm" not in sys.modules or not hasattr(value, "_sa_instance_state"):
        return None
    state = value._sa_instance_state
    if state.key is None:
        raise Unstable(f"{type(value).__qualname__} (a transient or pending ORM object has no identity yet)")
    return tuple(state.key[1])


def canonical(value: Any) -> str:
    """The canonical text of one value (raises ``Unstable`` for values without a stable form)."""
    return _enc(value)


# --- binding and hashing -------------------------------------------------------------------------------


class KeyBuilder:
    """Binds a call to a function's signature and hashes its canonical arguments.

    The signature is analysed once. Binding by hand (positional arguments, keywords, defaults) is several
    times faster than ``Signature.bind``, which stays the fallback for ``*args``/``**kwargs``,
    positional-only parameters and every call the fast path does not understand (it raises the
    ``TypeError`` the real call would).
    """

    def __init__(
        self, func: Callable[..., Any], exclude: Iterable[str] = (), *, skip_first: bool | None = None
    ) -> None:
        self.signature = inspect.signature(func)
        params = list(self.signature.parameters.values())
        positional_kinds = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
        if skip_first is None:
            skip_first = bool(params) and params[0].name in ("self", "cls")
        self.skip_first = bool(skip_first and params and params[0].kind in positional_kinds)
        self.names = [p.name for p in params]
        self.excluded = frozenset(exclude)
        self.var_keyword: str | None = next(
            (p.name for p in params if p.kind is inspect.Parameter.VAR_KEYWORD), None
        )
        unknown = self.excluded - set(self.names)
        if unknown and self.var_keyword is None:
            raise ValueError(f"exclude_args names unknown parameters {sorted(unknown)} of {func.__qualname__}")
        self.key_params: list[tuple[str, str]] = [
            (p.name, f"{p.name}=")
            for index, p in enumerate(params)
            if not (index == 0 and self.skip_first) and p.name not in self.excluded
        ]
        self.defaults = {p.name: p.default for p in params if p.default is not _EMPTY}
        self.fast = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
        self.positional = sum(1 for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
        self.count = len(params)

    def placeholder_self(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Helpers called without ``self``/``cls`` get a stand-in: it is never part of the key."""
        return (None, *args) if self.skip_first else args

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments by parameter name, in signature order, defaults applied."""
        if self.fast:
            given = len(args)
            if not kwargs and given == self.count:
                return dict(zip(self.names, args))
            if given <= self.positional:
                bound: dict[str, Any] = {}
                used = 0
                defaults = self.defaults
                for index, name in enumerate(self.names):
                    if index < given:
                        bound[name] = args[index]
                    elif name in kwargs:
                        bound[name] = kwargs[name]
                        used += 1
                    else:
                        default = defaults.get(name, _EMPTY)
                        if default is _EMPTY:
                            return self._slow_bind(args, kwargs)  # raises the missing-argument TypeError
                        bound[name] = default
                if used == len(kwargs):
                    return bound
        return self._slow_bind(args, kwargs)

    def _slow_bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self.signature.bind(*args, **kwargs)  # raises TypeError like the real call would
        bound.apply_defaults()
        return dict(bound.arguments)

    def template_values(self, bound: dict[str, Any]) -> dict[str, Any]:
        """The bound arguments with ``**kwargs`` flattened in: what tag templates and tag callables see."""
        if self.var_keyword is None:
            return bound
        flat = {k: v for k, v in bound.items() if k != self.var_keyword}
        flat.update(bound.get(self.var_keyword) or {})
        return flat

    def digest(self, bound: dict[str, Any]) -> str:
        """First 32 hex chars of the SHA-256 of the canonical arguments."""
        parts: list[str] = []
        name = ""
        try:
            for name, prefix in self.key_params:
                value = bound[name]
                encoder = _ENCODERS.get(type(value))
                if encoder is not None:
                    parts.append(prefix + encoder(value))
                elif name == self.var_keyword:
                    extra = {
                        k: v
                        for k, v in value.items()
                        if k not in self.excluded and not is_excluded_type(type(v))
                    }
                    parts.append(prefix + _enc_dict(extra))
                elif not is_excluded_type(type(value)):
                    parts.append(prefix + _encode_object(value))
        except Unstable as exc:
            raise CacheKeyError(
                f"argument {name!r} has no stable cache key representation ({exc}); "
                f"pass key_builder=... or exclude_args=[{name!r}], or give its class a "
                "__cache_key__() method",
                parameter=name,
            ) from None
        except RecursionError:
            raise CacheKeyError(
                f"argument {name!r} is too deeply nested (or self-referencing) to build a cache key; "
                f"pass key_builder=... or exclude_args=[{name!r}]",
                parameter=name,
            ) from None
        text = "".join(parts)
        return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:32]


__all__ = ["KeyBuilder", "Unstable", "canonical", "is_excluded_type"]
