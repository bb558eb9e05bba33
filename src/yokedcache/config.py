"""Configuration: :class:`CacheConfig`, :class:`TableCacheConfig` and the TTL helpers.

A :class:`CacheConfig` is built once and is read-only afterwards (use :meth:`CacheConfig.replace`
to derive a changed copy). Every field is resolved, in order of precedence, from:

1. keyword arguments (``CacheConfig(default_ttl=60)``; :meth:`CacheConfig.from_yaml` passes the
   YAML mapping as keyword arguments, and its own ``**overrides`` beat the file);
2. the environment variable ``YOKEDCACHE_<FIELD_NAME_UPPER>`` for fields that have one (an empty
   value counts as unset);
3. the field's default.

Value rules, the same for every source:

* booleans: ``True``/``False`` or the strings ``1/0/true/false/yes/no/on/off`` (any case);
  anything else (``1``, ``"maybe"``) is an error;
* integers: an ``int`` (never a ``bool``, never a ``float``) or a string ``int()`` parses cleanly;
* floats: an ``int``/``float`` (never a ``bool``) or a string ``float()`` parses; NaN and
  infinities are rejected;
* enums: a member, or its name or value in any case;
* ``None`` given for a field that cannot be ``None`` means "unset" (falls back to environment,
  then default); for a nullable field (``redis_url``, ``signing_key``, ``memory_max_bytes``, ...)
  it is the explicit value.

Any bad value raises :class:`~yokedcache.exceptions.ConfigValidationError` whose ``field`` is the
field name (``tables.<name>.<field>`` inside tables; the variable name such as
``YOKEDCACHE_DEFAULT_TTL`` when the value came from the environment) and whose ``value`` is the
offending input.

Two fields go beyond the API table: ``operation_timeout`` (per-operation socket timeout of a
network backend, so a paused backend degrades to a miss well under a second while
``connection_timeout`` stays the connect timeout) and ``invalidation_queue_size`` (how many tags
whose invalidation could not reach the backend are queued for retry).
"""

from __future__ import annotations

import logging
import math
import os
import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit

import yaml

from .exceptions import ConfigValidationError
from .models import SerializationMethod

__all__ = [
    "ENV_FIELD_NAMES",
    "ENV_PREFIX",
    "FIELD_NAMES",
    "REDIS_URL_SCHEMES",
    "CacheConfig",
    "ResolvedTableSettings",
    "TableCacheConfig",
    "effective_table_settings",
    "env_var_name",
    "jittered_ttl_ms",
    "normalize_sql",
    "redact_url",
    "resolve_ttl",
    "validate_redis_url",
]

ENV_PREFIX = "YOKEDCACHE_"
REDIS_URL_SCHEMES: tuple[str, ...] = (
    "redis",
    "rediss",
    "unix",
    "redis+sentinel",
    "rediss+sentinel",
)

_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off"})
_GLOB_CHARS = frozenset("*?[]\\")
_MASK = "***"
_SECRET_KWARG_MARKERS = ("password", "secret", "token")


def env_var_name(field_name: str) -> str:
    """The environment variable of ``field_name``: ``default_ttl`` → ``YOKEDCACHE_DEFAULT_TTL``."""
    return ENV_PREFIX + field_name.upper()


# -------------------------------------------------------------------------------------------------
# Value converters: (value, label) -> normalised value, or ConfigValidationError naming ``label``
# (a field name, ``tables.<t>.<field>`` or an environment variable name).
# -------------------------------------------------------------------------------------------------


def _fail(label: str, value: Any, reason: str) -> NoReturn:
    raise ConfigValidationError(label, value, reason)


def _as_bool(value: Any, label: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    _fail(label, value, "expected a boolean (true/false, 1/0, yes/no, on/off)")


def _as_int(
    value: Any, label: str, *, minimum: int | None = None, maximum: int | None = None
) -> int:
    if isinstance(value, bool):
        _fail(label, value, "expected an integer, not a boolean")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str):
        try:
            number = int(value.strip())
        except ValueError:
            _fail(label, value, "expected an integer")
    else:
        _fail(label, value, f"expected an integer, not {type(value).__name__}")
    if minimum is not None and number < minimum:
        _fail(label, value, f"must be >= {minimum}")
    if maximum is not None and number > maximum:
        _fail(label, value, f"must be <= {maximum}")
    return number


def _as_float(
    value: Any,
    label: str,
    *,
    minimum: float | None = None,
    exclusive_minimum: bool = False,
    maximum: float | None = None,
    exclusive_maximum: bool = False,
) -> float:
    if isinstance(value, bool):
        _fail(label, value, "expected a number, not a boolean")
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        try:
            number = float(value.strip())
        except ValueError:
            _fail(label, value, "expected a number")
    else:
        _fail(label, value, f"expected a number, not {type(value).__name__}")
    if not math.isfinite(number):
        _fail(label, value, "must be a finite number")
    if minimum is not None:
        if exclusive_minimum and number <= minimum:
            _fail(label, value, f"must be > {minimum:g}")
        if not exclusive_minimum and number < minimum:
            _fail(label, value, f"must be >= {minimum:g}")
    if maximum is not None:
        if exclusive_maximum and number >= maximum:
            _fail(label, value, f"must be < {maximum:g}")
        if not exclusive_maximum and number > maximum:
            _fail(label, value, f"must be <= {maximum:g}")
    return number


def _as_serialization(value: Any, label: str) -> SerializationMethod:
    if isinstance(value, (SerializationMethod, str)):
        try:
            return SerializationMethod.parse(value)
        except ValueError:
            pass
    _fail(label, value, "expected one of json, msgpack, pickle")


def _int_range(minimum: int | None = None, maximum: int | None = None) -> Callable[[Any, str], int]:
    def convert(value: Any, label: str) -> int:
        return _as_int(value, label, minimum=minimum, maximum=maximum)

    return convert


def _float_range(
    minimum: float | None = None,
    *,
    exclusive_minimum: bool = False,
    maximum: float | None = None,
    exclusive_maximum: bool = False,
) -> Callable[[Any, str], float]:
    def convert(value: Any, label: str) -> float:
        return _as_float(
            value,
            label,
            minimum=minimum,
            exclusive_minimum=exclusive_minimum,
            maximum=maximum,
            exclusive_maximum=exclusive_maximum,
        )

    return convert


def _as_key_prefix(value: Any, label: str) -> str:
    if not isinstance(value, str):
        _fail(label, value, "expected a string")
    if not value:
        _fail(label, value, "must not be empty")
    if any(ch.isspace() for ch in value):
        _fail(label, value, "must not contain whitespace")
    if any(ch in _GLOB_CHARS for ch in value):
        _fail(label, value, "must not contain glob characters * ? [ ] \\")
    if ":" in value:
        # "app" and "app:v1" would overlap: flushing "app" (every "app:*" key) would wipe "app:v1" too
        _fail(label, value, "must not contain ':' (it separates the prefix from the key)")
    return value


def _as_log_level(value: Any, label: str) -> str:
    if not isinstance(value, str):
        _fail(label, value, "expected a logging level name")
    name = value.strip().upper()
    if not name or not isinstance(logging.getLevelName(name), int):
        _fail(label, value, "expected a logging level name (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    return name


def _as_host(value: Any, label: str) -> str:
    if not isinstance(value, str):
        _fail(label, value, "expected a host name")
    if not value or any(ch.isspace() for ch in value):
        _fail(label, value, "must be a non-empty host name without whitespace")
    return value


def _as_signing_key(value: Any, label: str) -> str | bytes:
    if not isinstance(value, (str, bytes)):
        _fail(label, value, "expected str or bytes")
    if not value:
        _fail(label, value, "must not be empty")
    return value


def _as_redis_url(value: Any, label: str) -> str:
    if not isinstance(value, str):
        _fail(label, value, "expected a Redis URL string")
    reason = _redis_url_problem(value)
    if reason is not None:
        _fail(label, value, reason)
    return value


def _as_kwargs_dict(value: Any, label: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        _fail(label, value, "expected a mapping")
    for key in value:
        if not isinstance(key, str):
            _fail(label, value, f"keys must be strings, got {key!r}")
    return dict(value)


def _as_backend(value: Any, label: str) -> Any:
    if isinstance(value, (str, bytes, int, float, Mapping, list, tuple, set, frozenset)):
        _fail(label, value, "expected a backend instance")
    return value


def _as_prefix_backends(value: Any, label: str) -> dict[str, Any]:
    if not isinstance(value, Mapping):
        _fail(label, value, "expected a mapping of key prefix to backend")
    result: dict[str, Any] = {}
    for prefix, backend in value.items():
        if not isinstance(prefix, str) or not prefix:
            _fail(label, prefix, "prefixes must be non-empty strings")
        if backend is None:
            _fail(f"{label}.{prefix}", backend, "expected a backend instance")
        result[prefix] = _as_backend(backend, f"{label}.{prefix}")
    return result


def _as_tables(value: Any, label: str) -> dict[str, TableCacheConfig]:
    if not isinstance(value, Mapping):
        _fail(label, value, "expected a mapping of table name to table settings")
    result: dict[str, TableCacheConfig] = {}
    for name, table in value.items():
        if not isinstance(name, str) or not name.strip():
            _fail(label, name, "table names must be non-empty strings")
        if isinstance(table, TableCacheConfig):
            result[name] = table
        elif table is None or isinstance(table, Mapping):
            result[name] = TableCacheConfig.from_dict(table or {}, label=f"{label}.{name}")
        else:
            _fail(
                f"{label}.{name}", table, "expected a TableCacheConfig or a mapping of its fields"
            )
    return result


# -------------------------------------------------------------------------------------------------
# Redis URLs
# -------------------------------------------------------------------------------------------------


def _port_problem(port_text: str) -> str | None:
    if not port_text.isdigit() or not 1 <= int(port_text) <= 65535:
        return f"invalid port {port_text!r}"
    return None


def _sentinel_host_problem(item: str) -> str | None:
    if not item:
        return "empty sentinel host"
    if item.startswith("["):
        end = item.find("]")
        if end <= 1:
            return f"invalid sentinel host {item!r}"
        rest = item[end + 1 :]
        if rest and (not rest.startswith(":") or _port_problem(rest[1:])):
            return f"invalid sentinel host {item!r}"
        return None
    host, sep, port = item.partition(":")
    if not host:
        return f"invalid sentinel host {item!r}"
    if sep:
        return _port_problem(port)
    return None


def _redis_url_problem(url: str) -> str | None:
    """Why ``url`` is not an acceptable Redis URL, or ``None`` if it is."""
    if not url or any(ch.isspace() for ch in url):
        return "not a URL"
    if "://" not in url:
        return "not a URL (expected e.g. redis://host:6379/0)"
    try:
        parts = urlsplit(url)
    except ValueError as exc:
        return f"not a valid URL: {exc}"
    scheme = parts.scheme.lower()
    if scheme not in REDIS_URL_SCHEMES:
        expected = ", ".join(REDIS_URL_SCHEMES)
        return f"unsupported scheme {parts.scheme!r}; expected one of {expected}"
    if scheme in ("redis", "rediss"):
        try:
            host = parts.hostname
            _ = parts.port
        except ValueError as exc:
            return f"invalid host or port: {exc}"
        if not host:
            return "missing host"
        db = parts.path.strip("/")
        if db and not db.isdigit():
            return f"database must be a non-negative integer, got {db!r}"
        return None
    if scheme == "unix":
        if not parts.path or parts.path == "/":
            return "missing socket path"
        return None
    # redis+sentinel / rediss+sentinel: [[user]:pass@]h1:p1[,h2:p2]/<service>[/db]
    hosts = parts.netloc.rpartition("@")[2]
    if not hosts:
        return "missing sentinel hosts"
    for item in hosts.split(","):
        problem = _sentinel_host_problem(item)
        if problem:
            return problem
    segments = [s for s in parts.path.split("/") if s]
    if not segments:
        return "missing sentinel service name"
    if len(segments) > 2:
        return "expected /<service>[/<db>] after the sentinel hosts"
    if len(segments) == 2 and not segments[1].isdigit():
        return f"database must be a non-negative integer, got {segments[1]!r}"
    return None


def validate_redis_url(url: str) -> str:
    """Return ``url`` if it is an acceptable ``redis_url``; else raise ConfigValidationError."""
    return _as_redis_url(url, "redis_url")


def redact_url(url: str) -> str:
    """``url`` with its password (userinfo, ``password=`` query parameter) shown as ``***``."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    cut = len(rest)
    for ch in "/?#":
        pos = rest.find(ch)
        if pos != -1:
            cut = min(cut, pos)
    netloc, tail = rest[:cut], rest[cut:]
    if "@" in netloc:
        userinfo, _, hostpart = netloc.rpartition("@")
        if ":" in userinfo:
            user = userinfo.partition(":")[0]
            netloc = f"{user}:{_MASK}@{hostpart}"
    if "?" in tail:
        before, _, query = tail.partition("?")
        query, hash_sep, fragment = query.partition("#")
        pairs = []
        for pair in query.split("&"):
            key, eq, _value = pair.partition("=")
            pairs.append(f"{key}={_MASK}" if eq and key.lower() == "password" else pair)
        tail = before + "?" + "&".join(pairs) + hash_sep + fragment
    return f"{scheme}://{netloc}{tail}"


# -------------------------------------------------------------------------------------------------
# TableCacheConfig
# -------------------------------------------------------------------------------------------------


def normalize_sql(text: str) -> str:
    """Lower-case ``text`` and collapse every whitespace run to one space (ends stripped)."""
    return " ".join(text.lower().split())


def _as_tags(value: Any, label: str) -> set[str]:
    items: Iterable[Any]
    if isinstance(value, str):
        items = [value]
    elif isinstance(value, (set, frozenset, list, tuple)):
        items = value
    else:
        _fail(label, value, "expected a tag or a set/list of tags")
    tags: set[str] = set()
    for tag in items:
        if not isinstance(tag, str) or not tag:
            _fail(label, value, f"tags must be non-empty strings, got {tag!r}")
        tags.add(tag)
    return tags


def _as_query_ttls(value: Any, label: str) -> dict[str, int]:
    if not isinstance(value, Mapping):
        _fail(label, value, "expected a mapping of SQL fragment to TTL seconds")
    result: dict[str, int] = {}
    for fragment, ttl in value.items():
        if not isinstance(fragment, str) or not normalize_sql(fragment):
            _fail(label, fragment, "SQL fragments must be non-empty strings")
        result[fragment] = _as_int(ttl, f"{label}.{fragment}", minimum=1)
    return result


_TABLE_FIELD_NAMES: tuple[str, ...] = (
    "ttl",
    "tags",
    "serialization_method",
    "enable_fuzzy",
    "fuzzy_threshold",
    "enable_compression",
    "compression_threshold",
    "query_specific_ttls",
)


@dataclass(frozen=True, kw_only=True)
class TableCacheConfig:
    """Per-table settings; ``None`` inherits the global value of :class:`CacheConfig`.

    ``tags`` are added to every entry of the table. ``query_specific_ttls`` maps SQL fragments to
    TTLs: a cached query whose compiled SQL (lower-cased, whitespace collapsed) contains the
    same-normalised fragment gets that TTL, the longest matching fragment winning. Inputs are
    normalised on creation (``tags`` may be a string or a list, ``serialization_method`` a name or
    value); bad values raise ConfigValidationError.
    """

    ttl: int | None = None
    tags: set[str] = field(default_factory=set)
    serialization_method: SerializationMethod | None = None
    enable_fuzzy: bool | None = None
    fuzzy_threshold: int | None = None
    enable_compression: bool | None = None
    compression_threshold: int | None = None
    query_specific_ttls: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        def put(name: str, convert: Callable[[Any, str], Any]) -> None:
            value = getattr(self, name)
            if value is not None:
                object.__setattr__(self, name, convert(value, name))

        put("ttl", _int_range(1))
        object.__setattr__(self, "tags", _as_tags(self.tags or set(), "tags"))
        put("serialization_method", _as_serialization)
        put("enable_fuzzy", _as_bool)
        put("fuzzy_threshold", _int_range(0, 100))
        put("enable_compression", _as_bool)
        put("compression_threshold", _int_range(0))
        queries = _as_query_ttls(self.query_specific_ttls or {}, "query_specific_ttls")
        object.__setattr__(self, "query_specific_ttls", queries)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], *, label: str = "tables") -> TableCacheConfig:
        """Build from a mapping of field names; errors name ``<label>.<field>``."""
        for key in data:
            if key not in _TABLE_FIELD_NAMES:
                _fail(f"{label}.{key}", data[key], "unknown table setting")
        try:
            return cls(**data)
        except ConfigValidationError as exc:
            raise ConfigValidationError(f"{label}.{exc.field}", exc.value, exc.reason) from None

    def to_dict(self) -> dict[str, Any]:
        """Plain-data form: tags as a sorted list, the serialization method by name."""
        method = self.serialization_method
        return {
            "ttl": self.ttl,
            "tags": sorted(self.tags),
            "serialization_method": method.name if method is not None else None,
            "enable_fuzzy": self.enable_fuzzy,
            "fuzzy_threshold": self.fuzzy_threshold,
            "enable_compression": self.enable_compression,
            "compression_threshold": self.compression_threshold,
            "query_specific_ttls": dict(self.query_specific_ttls),
        }


# -------------------------------------------------------------------------------------------------
# CacheConfig
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _FieldSpec:
    name: str
    convert: Callable[[Any, str], Any]
    default: Callable[[], Any]
    env: bool = True
    nullable: bool = False
    scalar: bool = True  # emitted by to_dict()


def _const(value: Any) -> Callable[[], Any]:
    return lambda: value


_POSITIVE = _float_range(0.0, exclusive_minimum=True)
_NON_NEGATIVE = _float_range(0.0)

_FIELDS: tuple[_FieldSpec, ...] = (
    _FieldSpec("redis_url", _as_redis_url, _const(None), nullable=True),
    _FieldSpec("default_ttl", _int_range(1), _const(300)),
    _FieldSpec("key_prefix", _as_key_prefix, _const("yokedcache")),
    _FieldSpec("default_serialization", _as_serialization, _const(SerializationMethod.JSON)),
    _FieldSpec(
        "ttl_jitter_percent",
        _float_range(0.0, maximum=100.0, exclusive_maximum=True),
        _const(10.0),
    ),
    _FieldSpec("allow_pickle", _as_bool, _const(False)),
    _FieldSpec("signing_key", _as_signing_key, _const(None), nullable=True),
    _FieldSpec("allow_legacy_insecure_deserialization", _as_bool, _const(True)),
    _FieldSpec("max_connections", _int_range(1), _const(50)),
    _FieldSpec("connection_timeout", _POSITIVE, _const(30.0)),
    _FieldSpec("operation_timeout", _POSITIVE, _const(0.5)),
    _FieldSpec("connection_pool_kwargs", _as_kwargs_dict, dict, env=False),
    _FieldSpec("fallback_enabled", _as_bool, _const(True)),
    _FieldSpec("connection_retries", _int_range(0), _const(3)),
    _FieldSpec("retry_delay", _NON_NEGATIVE, _const(0.1)),
    _FieldSpec("enable_circuit_breaker", _as_bool, _const(False)),
    _FieldSpec("circuit_breaker_failure_threshold", _int_range(1), _const(5)),
    _FieldSpec("circuit_breaker_timeout", _POSITIVE, _const(60.0)),
    _FieldSpec("invalidation_queue_size", _int_range(1), _const(10000)),
    _FieldSpec("enable_fuzzy", _as_bool, _const(False)),
    _FieldSpec("fuzzy_threshold", _int_range(0, 100), _const(80)),
    _FieldSpec("enable_compression", _as_bool, _const(False)),
    _FieldSpec("compression_threshold", _int_range(0), _const(1024)),
    _FieldSpec("memory_max_size", _int_range(1), _const(10000)),
    _FieldSpec("memory_cleanup_interval", _int_range(0), _const(300)),
    _FieldSpec("memory_max_bytes", _int_range(1), _const(None), nullable=True),
    _FieldSpec("max_value_bytes", _int_range(1), _const(None), nullable=True),
    _FieldSpec("enable_metrics", _as_bool, _const(False)),
    _FieldSpec("prometheus_port", _int_range(1, 65535), _const(8000)),
    _FieldSpec("statsd_host", _as_host, _const(None), nullable=True),
    _FieldSpec("statsd_port", _int_range(1, 65535), _const(8125)),
    _FieldSpec("log_level", _as_log_level, _const("INFO")),
    _FieldSpec("stats_publish_interval", _NON_NEGATIVE, _const(10.0)),
    _FieldSpec("backend", _as_backend, _const(None), env=False, nullable=True, scalar=False),
    _FieldSpec(
        "default_backend", _as_backend, _const(None), env=False, nullable=True, scalar=False
    ),
    _FieldSpec("prefix_backends", _as_prefix_backends, dict, env=False, scalar=False),
    _FieldSpec("tables", _as_tables, dict, env=False, scalar=False),
)
_FIELD_BY_NAME: dict[str, _FieldSpec] = {spec.name: spec for spec in _FIELDS}
_BACKEND_FIELDS = frozenset({"backend", "default_backend", "prefix_backends"})

#: Names of every :class:`CacheConfig` field, in declaration order.
FIELD_NAMES: tuple[str, ...] = tuple(spec.name for spec in _FIELDS)
#: Fields read from ``YOKEDCACHE_<NAME>``.
ENV_FIELD_NAMES: tuple[str, ...] = tuple(spec.name for spec in _FIELDS if spec.env)

_UNSET: Any = object()


class CacheConfig:
    """Effective configuration of a cache; see the module docstring for sources and value rules.

    Read-only after creation; :meth:`replace` returns a validated copy with some fields changed.
    """

    redis_url: str | None
    default_ttl: int
    key_prefix: str
    default_serialization: SerializationMethod
    ttl_jitter_percent: float
    allow_pickle: bool
    signing_key: str | bytes | None
    allow_legacy_insecure_deserialization: bool
    max_connections: int
    connection_timeout: float
    operation_timeout: float
    connection_pool_kwargs: dict[str, Any]
    fallback_enabled: bool
    connection_retries: int
    retry_delay: float
    enable_circuit_breaker: bool
    circuit_breaker_failure_threshold: int
    circuit_breaker_timeout: float
    invalidation_queue_size: int
    enable_fuzzy: bool
    fuzzy_threshold: int
    enable_compression: bool
    compression_threshold: int
    memory_max_size: int
    memory_cleanup_interval: int
    memory_max_bytes: int | None
    max_value_bytes: int | None
    enable_metrics: bool
    prometheus_port: int
    statsd_host: str | None
    statsd_port: int
    log_level: str
    stats_publish_interval: float
    backend: Any
    default_backend: Any
    prefix_backends: dict[str, Any]
    tables: dict[str, TableCacheConfig]

    __hash__ = None  # type: ignore[assignment]  # holds dicts; compared by value

    def __init__(self, **fields: Any) -> None:
        self._build(fields, os.environ)

    # -- construction ----------------------------------------------------------------------------

    def _build(self, explicit: Mapping[str, Any], environ: Mapping[str, str]) -> None:
        for name in sorted(explicit):
            if name not in _FIELD_BY_NAME:
                _fail(name, explicit[name], "unknown configuration field")
        raw: dict[str, tuple[Any, str]] = {}
        for spec in _FIELDS:
            value = explicit.get(spec.name, _UNSET)
            if value is None and not spec.nullable:
                value = _UNSET
            label = spec.name
            if value is _UNSET and spec.env:
                env_name = env_var_name(spec.name)
                env_value = environ.get(env_name)
                if env_value is not None and env_value.strip():
                    value, label = env_value, env_name
            if value is _UNSET:
                converted = spec.default()
            elif value is None:
                converted = None
            else:
                converted = spec.convert(value, label)
            raw[spec.name] = (value, label)
            object.__setattr__(self, spec.name, converted)

        if self.default_serialization is SerializationMethod.PICKLE and not self.allow_pickle:
            value, label = raw["default_serialization"]
            _fail(label, value, "PICKLE requires allow_pickle=True")
        for name, table in self.tables.items():
            method = table.serialization_method
            if method is SerializationMethod.PICKLE and not self.allow_pickle:
                label = f"tables.{name}.serialization_method"
                _fail(label, method.name, "PICKLE requires allow_pickle=True")
        if self.backend is not None and self.default_backend is not None:
            reason = "give either backend or default_backend, not both"
            _fail("default_backend", self.default_backend, reason)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> CacheConfig:
        """Same as ``CacheConfig()``; ``environ`` replaces ``os.environ`` when given."""
        config = cls.__new__(cls)
        config._build({}, os.environ if environ is None else environ)
        return config

    @classmethod
    def from_yaml(cls, path: str | os.PathLike[str], **overrides: Any) -> CacheConfig:
        """Load a YAML mapping of field names; unset fields come from the environment, then default.

        ``tables:`` maps table names to :class:`TableCacheConfig` fields; ``overrides`` beat the
        file. A missing file raises ``FileNotFoundError``; unknown keys, malformed YAML and bad
        values raise ConfigValidationError.
        """
        file_path = Path(path)
        text = file_path.read_text(encoding="utf-8")
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            _fail(str(file_path), str(file_path), f"invalid YAML: {exc}")
        if data is None:
            data = {}
        if not isinstance(data, dict):
            _fail(str(file_path), data, "expected a mapping of configuration fields")
        for key, value in data.items():
            if not isinstance(key, str) or key not in _FIELD_BY_NAME:
                _fail(str(key), value, "unknown configuration field")
            if key in _BACKEND_FIELDS and value:
                _fail(key, value, "backend objects cannot be configured from YAML")
        merged = {k: v for k, v in data.items() if k not in _BACKEND_FIELDS}
        merged.update(overrides)
        return cls(**merged)

    def replace(self, **changes: Any) -> CacheConfig:
        """A validated copy with ``changes`` applied; the environment is not read again.

        ``None`` for a field that cannot be ``None`` keeps the current value.
        """
        values: dict[str, Any] = {spec.name: getattr(self, spec.name) for spec in _FIELDS}
        for name, value in changes.items():
            spec = _FIELD_BY_NAME.get(name)
            if spec is not None and value is None and not spec.nullable:
                continue
            values[name] = value
        config = type(self).__new__(type(self))
        config._build(values, {})
        return config

    # -- read-only behaviour ---------------------------------------------------------------------

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"CacheConfig is read-only; use config.replace({name}=...)")

    def __delattr__(self, name: str) -> None:
        raise AttributeError("CacheConfig is read-only")

    def _values(self) -> tuple[Any, ...]:
        return tuple(getattr(self, spec.name) for spec in _FIELDS)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, CacheConfig):
            return NotImplemented
        return self._values() == other._values()

    def __repr__(self) -> str:
        shown = self.to_dict(redact=True)
        parts = []
        for spec in _FIELDS:
            value = getattr(self, spec.name)
            if spec.scalar:
                if value != spec.default():
                    parts.append(f"{spec.name}={shown[spec.name]!r}")
            elif spec.name == "tables":
                if value:
                    parts.append(f"tables={sorted(value)!r}")
            elif value:
                parts.append(f"{spec.name}={value!r}")
        return f"CacheConfig({', '.join(parts)})"

    # -- derived values --------------------------------------------------------------------------

    @property
    def signing_key_bytes(self) -> bytes | None:
        """``signing_key`` as bytes (UTF-8 for a str), or ``None``."""
        key = self.signing_key
        if key is None:
            return None
        return key.encode("utf-8") if isinstance(key, str) else bytes(key)

    @property
    def backend_kind(self) -> str:
        """``"custom"`` with a backend object, else ``"redis"`` or ``"memory"``."""
        if self.backend is not None or self.default_backend is not None:
            return "custom"
        return "redis" if self.redis_url is not None else "memory"

    # -- export ----------------------------------------------------------------------------------

    def to_dict(self, redact: bool = False) -> dict[str, Any]:
        """All scalar fields plus ``tables`` (tags sorted, enums by name); no backend objects.

        ``redact=True`` masks the password in ``redis_url``, ``signing_key`` and password-like
        ``connection_pool_kwargs`` entries as ``"***"``.
        """
        data: dict[str, Any] = {}
        for spec in _FIELDS:
            if not spec.scalar:
                continue
            value = getattr(self, spec.name)
            if spec.name == "connection_pool_kwargs":
                value = {
                    k: (_MASK if redact and _is_secret_name(k) else _plain(v))
                    for k, v in value.items()
                }
            elif redact and spec.name == "redis_url" and value is not None:
                value = redact_url(value)
            elif redact and spec.name == "signing_key" and value is not None:
                value = _MASK
            else:
                value = _plain(value)
            data[spec.name] = value
        data["tables"] = {name: table.to_dict() for name, table in self.tables.items()}
        return data

    def to_yaml(self, redact: bool = False) -> str:
        """:meth:`to_dict` as YAML; ``CacheConfig.from_yaml`` of it gives an equal config."""
        return yaml.safe_dump(
            self.to_dict(redact=redact),
            sort_keys=False,
            default_flow_style=False,
            allow_unicode=True,
        )


def _is_secret_name(name: str) -> bool:
    lowered = name.lower()
    return any(marker in lowered for marker in _SECRET_KWARG_MARKERS)


def _plain(value: Any) -> Any:
    """YAML-safe form: enums by name, containers recursively, unknown objects as their repr."""
    if isinstance(value, SerializationMethod):
        return value.name
    if value is None or isinstance(value, (bool, int, float, str, bytes)):
        return value
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return sorted((_plain(v) for v in value), key=repr)
    return repr(value)


# -------------------------------------------------------------------------------------------------
# Table resolution and TTL helpers
# -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ResolvedTableSettings:
    """Table settings combined for an entry reading several tables; ``None`` = use the global.

    ``ttl`` is the matching ``query_specific_ttls`` TTL if any, else the smallest table ``ttl``.
    ``tables`` lists the configured tables that contributed, sorted.
    """

    ttl: int | None = None
    tags: frozenset[str] = frozenset()
    serialization: SerializationMethod | None = None
    compression: bool | None = None
    compression_threshold: int | None = None
    tables: tuple[str, ...] = ()


def _lookup_table(config: CacheConfig, name: str) -> tuple[str, TableCacheConfig] | None:
    table = config.tables.get(name)
    if table is not None:
        return name, table
    if "." in name:
        short = name.rsplit(".", 1)[1]
        table = config.tables.get(short)
        if table is not None:
            return short, table
    return None


def effective_table_settings(
    config: CacheConfig, table_names: Iterable[str], sql: str | None = None
) -> ResolvedTableSettings:
    """Combine the ``config.tables`` entries of ``table_names``; unconfigured tables are ignored.

    A schema-qualified name (``public.users``) falls back to the unqualified entry (``users``).
    Rules: smallest ``ttl``; union of ``tags``; compression ``True`` if any table enables it
    (``False`` if tables only disable it, ``None`` if none sets it); ``serialization_method`` of
    the alphabetically first table that sets one; smallest ``compression_threshold`` set. With
    ``sql``, a ``query_specific_ttls`` fragment contained in the normalised SQL overrides the
    table TTL, the longest fragment winning (equal lengths: the smallest TTL).
    """
    found: dict[str, TableCacheConfig] = {}
    for name in table_names:
        hit = _lookup_table(config, name)
        if hit is not None:
            found[hit[0]] = hit[1]
    if not found:
        return ResolvedTableSettings()

    names = sorted(found)
    tables = [found[name] for name in names]
    ttls = [t.ttl for t in tables if t.ttl is not None]
    ttl: int | None = min(ttls) if ttls else None

    if sql is not None:
        normalized = normalize_sql(sql)
        best: tuple[int, int] | None = None  # (fragment length, -ttl): max wins
        for table in tables:
            for fragment, fragment_ttl in table.query_specific_ttls.items():
                frag = normalize_sql(fragment)
                if frag and frag in normalized:
                    candidate = (len(frag), -fragment_ttl)
                    if best is None or candidate > best:
                        best = candidate
        if best is not None:
            ttl = -best[1]

    tags: set[str] = set()
    for table in tables:
        tags |= table.tags
    serialization = next(
        (t.serialization_method for t in tables if t.serialization_method is not None), None
    )
    flags = [t.enable_compression for t in tables if t.enable_compression is not None]
    thresholds = [t.compression_threshold for t in tables if t.compression_threshold is not None]
    return ResolvedTableSettings(
        ttl=ttl,
        tags=frozenset(tags),
        serialization=serialization,
        compression=any(flags) if flags else None,
        compression_threshold=min(thresholds) if thresholds else None,
        tables=tuple(names),
    )


def resolve_ttl(explicit: int | None, table_ttl: int | None, default_ttl: int) -> int:
    """TTL priority: ``explicit`` > ``table_ttl`` (query-specific or table) > ``default_ttl``."""
    if explicit is not None:
        return explicit
    if table_ttl is not None:
        return table_ttl
    return default_ttl


def jittered_ttl_ms(
    ttl_seconds: float, jitter_percent: float, rng: Callable[[], float] = random.random
) -> int:
    """A TTL in milliseconds, uniform in ``ttl * (1 ± jitter_percent/100)``; at least 1 ms.

    ``rng`` returns floats in ``[0, 1)``. With ``jitter_percent == 0`` the result is exact.
    """
    if not math.isfinite(ttl_seconds) or ttl_seconds < 0:
        raise ValueError(f"ttl_seconds must be a finite number >= 0, got {ttl_seconds!r}")
    if not 0 <= jitter_percent < 100:
        raise ValueError(f"jitter_percent must be in [0, 100), got {jitter_percent!r}")
    base_ms = ttl_seconds * 1000.0
    if jitter_percent == 0:
        return max(1, round(base_ms))
    spread = base_ms * jitter_percent / 100.0
    low, high = base_ms - spread, base_ms + spread
    value = round(low + (high - low) * rng())
    low_ms, high_ms = math.ceil(low), math.floor(high)
    if low_ms <= high_ms:
        value = min(max(value, low_ms), high_ms)
    return max(1, value)
