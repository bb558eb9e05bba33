"""Canonical encoding of call arguments into stable cache keys.

Keys must be equal for equal calls in every process and after restarts, and different for different calls:
values are encoded with their type (``1``, ``1.0``, ``True`` and ``"1"`` differ), dicts and sets
independently of order, and anything without a stable representation is refused by name instead of
silently producing a per-call key (the classic ``<object at 0x...>`` bug).
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


class Unstable(Exception):
    """Raised inside the encoder; turned into CacheKeyError naming the parameter."""


def _qualname(tp: type) -> str:
    return f"{tp.__module__}.{tp.__qualname__}"


def _is_excluded_instance(value: Any) -> bool:
    """SQLAlchemy sessions/connections/engines and Starlette request objects never belong in a key."""
    for module, names in _EXCLUDED_TYPES:
        mod = sys.modules.get(module)
        if mod is None:
            continue
        for name in names:
            tp = getattr(mod, name, None)
            if isinstance(tp, type) and isinstance(value, tp):
                return True
    return False


_EXCLUDED_TYPES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("sqlalchemy.orm", ("Session",)),
    ("sqlalchemy.engine", ("Connection", "Engine")),
    ("sqlalchemy.ext.asyncio", ("AsyncSession", "AsyncConnection", "AsyncEngine")),
    ("starlette.requests", ("Request", "HTTPConnection")),
    ("starlette.websockets", ("WebSocket",)),
    ("starlette.responses", ("Response",)),
    ("starlette.background", ("BackgroundTasks",)),
)


def _encode(value: Any, out: list[str]) -> None:
    tp = type(value)
    if value is None:
        out.append("N")
    elif tp is str:
        out.append(f"s{len(value)}:{value}")
    elif tp is bool:
        out.append("T" if value else "F")
    elif tp is int:
        out.append(f"i{value};")
    elif tp is float:
        out.append(f"f{value!r};")
    elif tp in (list, tuple):
        out.append("l[" if tp is list else "t[")
        for item in value:
            _encode(item, out)
        out.append("]")
    elif tp is dict:
        out.append("d{" + "".join(sorted(_pair(k, v) for k, v in value.items())) + "}")
    elif tp in (set, frozenset):
        out.append(("S{" if tp is set else "F{") + "".join(sorted(_one(v) for v in value)) + "}")
    elif tp in (bytes, bytearray):
        out.append(f"b{value.hex()};")
    elif isinstance(value, enum.Enum):
        out.append(f"e{_qualname(tp)}.{value.name};")
    elif isinstance(value, (dt.datetime, dt.date, dt.time)):
        out.append(f"D{tp.__name__}:{value.isoformat()};")
    elif isinstance(value, dt.timedelta):
        out.append(f"td{value.total_seconds()!r};")
    elif isinstance(value, (decimal.Decimal, uuid.UUID)):
        out.append(f"{tp.__name__}:{value};")
    else:
        _encode_object(value, out)


def _encode_object(value: Any, out: list[str]) -> None:
    tp = type(value)
    custom = getattr(value, "__cache_key__", None)
    if callable(custom):
        out.append(f"k{_qualname(tp)}(")
        _encode(custom(), out)
        out.append(")")
        return
    if isinstance(value, (str, int, float, tuple, list, dict)):  # subclasses, NamedTuple included
        out.append(f"c{_qualname(tp)}(")
        base: Any = next(t for t in tp.__mro__ if t in _BUILTIN_BASES)
        _encode(base(value), out)
        out.append(")")
        return
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        out.append(f"c{_qualname(tp)}(")
        _encode({f.name: getattr(value, f.name) for f in dataclasses.fields(value)}, out)
        out.append(")")
        return
    pydantic = sys.modules.get("pydantic")
    if pydantic is not None and isinstance(value, pydantic.BaseModel):
        out.append(f"c{_qualname(tp)}(")
        _encode(value.model_dump(mode="python"), out)
        out.append(")")
        return
    identity = _orm_identity(value)
    if identity is not None:
        out.append(f"o{_qualname(tp)}(")
        _encode(identity, out)
        out.append(")")
        return
    if tp.__repr__ is not object.__repr__:
        text = repr(value)
        if "0x" not in text:
            out.append(f"r{_qualname(tp)}:{text};")
            return
    raise Unstable(tp.__qualname__)


def _orm_identity(value: Any) -> tuple[Any, ...] | None:
    if "sqlalchemy" not in sys.modules or not hasattr(value, "_sa_instance_state"):
        return None
    state = value._sa_instance_state
    if state.key is None:
        raise Unstable(f"{type(value).__qualname__} (a transient/pending ORM object has no identity)")
    return tuple(state.key[1])


_BUILTIN_BASES = (str, int, float, tuple, list, dict)
_PLAIN_TYPES = frozenset({str, int, float, bool, type(None), bytes})


def _one(value: Any) -> str:
    out: list[str] = []
    _encode(value, out)
    return "".join(out)


def _pair(key: Any, value: Any) -> str:
    return _one(key) + "=" + _one(value)


class KeyBuilder:
    """Binds a call to a function's signature and hashes the canonical arguments.

    The signature is analysed once; binding by hand is several times faster than ``Signature.bind``.
    """

    def __init__(self, func: Callable[..., Any], exclude: Iterable[str] = ()) -> None:
        self.signature = inspect.signature(func)
        params = list(self.signature.parameters.values())
        self.skip_first = bool(params) and params[0].name in ("self", "cls")
        self.excluded = set(exclude)
        self.params = params
        self.simple = all(
            p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY, p.POSITIONAL_ONLY) for p in params
        )
        self.names = [p.name for p in params]
        self.defaults = {p.name: p.default for p in params if p.default is not p.empty}

    def placeholder_self(self, args: tuple[Any, ...]) -> tuple[Any, ...]:
        """Helpers called without ``self``/``cls`` get a stand-in: it is never part of the key."""
        return (None, *args) if self.skip_first else args

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Arguments by parameter name, defaults applied; ``**kwargs`` kept as a sorted dict."""
        if self.simple and len(args) <= len(self.names):
            bound = dict(zip(self.names, args))
            for name, value in kwargs.items():
                if name in bound or name not in self.names:
                    return self._slow_bind(args, kwargs)
                bound[name] = value
            if len(bound) != len(self.names):
                for name, default in self.defaults.items():
                    bound.setdefault(name, default)
                if len(bound) != len(self.names):
                    return self._slow_bind(args, kwargs)
            return bound
        return self._slow_bind(args, kwargs)

    def _slow_bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        bound = self.signature.bind(*args, **kwargs)  # raises TypeError like the real call would
        bound.apply_defaults()
        return dict(bound.arguments)

    def digest(self, bound: dict[str, Any]) -> str:
        out: list[str] = []
        for index, (name, value) in enumerate(bound.items()):
            if (index == 0 and self.skip_first) or name in self.excluded:
                continue
            if type(value) not in _PLAIN_TYPES and _is_excluded_instance(value):
                continue
            out.append(f"{name}=")
            try:
                _encode(value, out)
            except Unstable as exc:
                raise CacheKeyError(
                    f"argument {name!r} has no stable cache key representation ({exc}); "
                    f"pass key_builder=... or exclude_args=[{name!r}], or give its class a "
                    "__cache_key__() method",
                    parameter=name,
                ) from None
            out.append(";")
        return hashlib.sha256("".join(out).encode("utf-8", "surrogatepass")).hexdigest()[:32]
