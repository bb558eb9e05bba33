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

import orjson

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
#
# Each value is turned into a *canonical tree* made only of JSON scalars (str, int, finite float, bool,
# None) and tuples, and the key hashes the tree's JSON text (orjson: one C call for the whole call). JSON
# tells those scalars apart (``1``, ``1.0``, ``true``, ``"1"``) and is unambiguous, so equal texts mean
# equal trees. Every other value becomes a tuple whose first item is a short tag naming its kind, so a list
# never meets a tuple or a set with the same items, and leaves JSON cannot carry exactly (bytes, NaN and
# infinities, integers beyond 64 bits, strings with lone surrogates) are tagged too. Containers of plain
# leaves are built without a Python call per item.
#
# The rare leaves are tagged lazily: orjson refuses big integers and lone surrogates, and writes NaN and
# infinities as ``null``, so only a refusal or a ``null`` in the output sends the tree through ``_strict``
# (which is the definition; the fast path is taken only when it would change nothing).

_LEAF: frozenset[type] = frozenset((str, int, float, bool, type(None)))
_EXCLUDED_MARK = ("x",)  # stands in for a session/request argument: constant, and no value encodes to it


def _canon(value: Any) -> Any:
    tp = type(value)
    if tp in _LEAF:
        return value
    encoder = _CANON.get(tp)
    if encoder is not None:
        return encoder(value)
    return _canon_object(value)


def _c_list(value: list[Any]) -> tuple[Any, ...]:
    return ("l", *[x if type(x) in _LEAF else _canon(x) for x in value])


def _c_tuple(value: tuple[Any, ...]) -> tuple[Any, ...]:
    return ("t", *[x if type(x) in _LEAF else _canon(x) for x in value])


def _c_dict(value: dict[Any, Any]) -> tuple[Any, ...]:
    if _STR.issuperset(map(type, value)) and _LEAF.issuperset(map(type, value.values())):
        return ("d", *sorted(value.items()))  # str keys are unique: values are never compared
    items = [(k, x if type(x) in _LEAF else _canon(x)) for k, x in value.items()]
    if _STR.issuperset(map(type, value)):
        items.sort()  # unique str keys (the usual case): a total order, and values are never compared
    else:
        items = [(k if type(k) in _LEAF else _canon(k), x) for k, x in items]
        items.sort(key=_repr_first)  # mixed keys: order by their canonical text
    return ("d", *items)


_STR: frozenset[type] = frozenset((str,))


def _repr_first(item: tuple[Any, Any]) -> str:
    return repr(item[0])


def _c_set(value: set[Any] | frozenset[Any]) -> tuple[Any, ...]:
    tag = "S" if type(value) is set else "z"
    return (tag, *sorted([x if type(x) in _LEAF else _canon(x) for x in value], key=repr))


def _c_bytes(value: bytes) -> tuple[Any, ...]:
    return ("b", value.hex())


def _c_bytearray(value: bytearray) -> tuple[Any, ...]:
    return ("B", value.hex())


def _c_temporal(value: dt.datetime | dt.date | dt.time) -> tuple[Any, ...]:
    return ("D", type(value).__name__, value.isoformat())


def _c_timedelta(value: dt.timedelta) -> tuple[Any, ...]:
    return ("td", value.days, value.seconds, value.microseconds)


def _c_decimal(value: decimal.Decimal) -> tuple[Any, ...]:
    return ("dec", str(value))


def _c_uuid(value: uuid.UUID) -> tuple[Any, ...]:
    return ("u", value.hex)


_CANON: dict[type, Callable[[Any], Any]] = {
    bytes: _c_bytes,
    list: _c_list,
    tuple: _c_tuple,
    dict: _c_dict,
    set: _c_set,
    frozenset: _c_set,
    bytearray: _c_bytearray,
    dt.datetime: _c_temporal,
    dt.date: _c_temporal,
    dt.time: _c_temporal,
    dt.timedelta: _c_timedelta,
    decimal.Decimal: _c_decimal,
    uuid.UUID: _c_uuid,
}

_BUILTIN_BASES = (str, int, float, bytes, tuple, list, dict, set, frozenset)
_VALUE_BASES = (dt.datetime, dt.date, dt.time, dt.timedelta, decimal.Decimal, uuid.UUID)


def _canon_object(value: Any) -> tuple[Any, ...]:
    """Everything that is not an exact builtin type: user hooks, structured types, identities, reprs."""
    tp = type(value)
    if isinstance(value, type):
        return ("C", _qualname(value))  # a class is identified by its import path
    custom = getattr(value, "__cache_key__", None)
    if callable(custom):
        return ("k", _qualname(tp), _canon(custom()))
    if isinstance(value, enum.Enum):
        return ("e", _qualname(tp), value.name)
    identity = _orm_identity(value)
    if identity is not None:
        return ("o", _qualname(tp), _canon(identity))
    if dataclasses.is_dataclass(value):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return ("c", _qualname(tp), _c_dict(fields))
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        return ("c", _qualname(tp), _canon(value.model_dump(mode="python")))
    if isinstance(value, _BUILTIN_BASES):  # subclasses: NamedTuple, OrderedDict, str subclasses, ...
        base: Any = next(t for t in tp.__mro__ if t in _BUILTIN_BASES)
        return ("c", _qualname(tp), _canon(base(value)))
    for base in _VALUE_BASES:  # subclasses of the value types (pendulum's DateTime, ...)
        if isinstance(value, base):
            return ("c", _qualname(tp), _CANON[base](value))
    if tp.__repr__ is not object.__repr__:
        text = repr(value)
        if "0x" not in text:  # an address means the repr changes per object and per process
            return ("r", _qualname(tp), text)
    raise Unstable(tp.__qualname__)


def _orm_identity(value: Any) -> tuple[Any, ...] | None:
    """The primary key of a persistent SQLAlchemy instance; None for anything that is not mapped."""
    if "sqlalchemy.orm" not in sys.modules or not hasattr(value, "_sa_instance_state"):
        return None
    state = value._sa_instance_state
    if state.key is None:
        raise Unstable(f"{type(value).__qualname__} (a transient or pending ORM object has no identity yet)")
    return tuple(state.key[1])


def _strict(tree: Any) -> Any:
    """Tag the leaves JSON cannot carry exactly: NaN and infinities, integers beyond 64 bits, strings with
    lone surrogates."""
    tp = type(tree)
    if tp is tuple or tp is list:
        return tuple(_strict(x) for x in tree)
    if tp is float and tree - tree != 0:
        return ("f", repr(tree))
    if tp is int and not _INT_MIN <= tree <= _INT_MAX:
        return ("i", str(tree))
    if tp is str:
        try:
            tree.encode("utf-8")
        except UnicodeEncodeError:
            return ("sx", tree.encode("utf-8", "surrogatepass").hex())
    return tree


_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1


def _dumps(tree: Any) -> bytes:
    try:
        text = orjson.dumps(tree)
    except orjson.JSONEncodeError:
        return orjson.dumps(_strict(tree))
    if b"null" in text:  # None, or a NaN/infinity that orjson wrote as null
        return orjson.dumps(_strict(tree))
    return text


def canonical(value: Any) -> bytes:
    """The canonical text of one value (raises ``Unstable`` for values without a stable form)."""
    return _dumps(_canon(value))


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
            raise ValueError(f"exclude_args names unknown parameters {sorted(unknown)} of {func!r}")
        key_indexes = [
            index
            for index, p in enumerate(params)
            if not (index == 0 and self.skip_first) and p.name not in self.excluded
        ]
        self.key_names: list[str] = [params[i].name for i in key_indexes]
        # For all-positional calls: which arguments make the key (None: all of them, in order).
        self.key_indexes: list[int] | None = None if len(key_indexes) == len(params) else key_indexes
        self.defaults = {p.name: p.default for p in params if p.default is not _EMPTY}
        self.fast = all(p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) for p in params)
        self.positional = sum(1 for p in params if p.kind is p.POSITIONAL_OR_KEYWORD)
        self.count = len(params)
        # Every parameter can be given positionally: a call with exactly that many positional arguments
        # and no keywords binds in order (the commonest call, kept to a zip).
        self.all_positional = self.fast and self.positional == self.count

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments by parameter name, in signature order, defaults applied."""
        if self.fast:
            given = len(args)
            if not kwargs and given == self.count and self.all_positional:
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
        """First 32 hex chars of the SHA-256 of the canonical arguments (in signature order)."""
        return self._hash([bound[name] for name in self.key_names])

    def digest_call(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """``digest(bind(args, kwargs))`` without building the bound dict for all-positional calls."""
        if not kwargs and len(args) == self.count and self.all_positional:
            key_indexes = self.key_indexes
            return self._hash(list(args) if key_indexes is None else [args[i] for i in key_indexes])
        return self.digest(self.bind(args, kwargs))

    def _hash(self, values: list[Any]) -> str:
        if not _LEAF.issuperset(map(type, values)):
            self._canonicalize(values)
        return hashlib.sha256(_dumps(values)).hexdigest()[:32]

    def _canonicalize(self, values: list[Any]) -> None:
        """Replace, in place, each argument that is not a plain leaf by its canonical tree."""
        name = ""
        try:
            for index, value in enumerate(values):
                tp = type(value)
                if tp in _LEAF:
                    continue
                name = self.key_names[index]
                encoder = _CANON.get(tp)
                if name == self.var_keyword:
                    values[index] = _c_dict(
                        {
                            k: v
                            for k, v in value.items()
                            if k not in self.excluded and not is_excluded_type(type(v))
                        }
                    )
                elif encoder is not None:
                    values[index] = encoder(value)
                elif is_excluded_type(tp):
                    values[index] = _EXCLUDED_MARK
                else:
                    values[index] = _canon_object(value)
        except Unstable as exc:
            raise CacheKeyError(
                f"argument {name!r} has no stable cache key representation ({exc}); "
                f"pass key_builder=... or exclude_args=[{name!r}], or give its class a "
                "__cache_key__() method",
                parameter=name,
            ) from None
        except RecursionError:
            raise CacheKeyError(
                f"argument {name!r} is too deeply nested (or refers to itself) to build a cache key; "
                f"pass key_builder=... or exclude_args=[{name!r}]",
                parameter=name,
            ) from None


__all__ = ["KeyBuilder", "Unstable", "canonical", "is_excluded_type"]
