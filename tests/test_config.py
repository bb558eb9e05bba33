"""Tests for yokedcache.config: CacheConfig, TableCacheConfig and the TTL helpers."""

from __future__ import annotations

import itertools
import os
import random
from pathlib import Path
from typing import Any

import pytest
import yaml

from yokedcache.config import (
    ENV_FIELD_NAMES,
    FIELD_NAMES,
    CacheConfig,
    ResolvedTableSettings,
    TableCacheConfig,
    effective_table_settings,
    env_var_name,
    jittered_ttl_ms,
    redact_url,
    resolve_ttl,
)
from yokedcache.exceptions import CacheError, ConfigValidationError
from yokedcache.models import SerializationMethod


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No YOKEDCACHE_* variable from the outer environment may leak into a test."""
    for name in list(os.environ):
        if name.startswith("YOKEDCACHE_"):
            monkeypatch.delenv(name, raising=False)


def _write(tmp_path: Path, text: str, name: str = "cache.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def _assert_names(exc: ConfigValidationError, field: str, value: Any) -> None:
    assert exc.field == field
    assert exc.value == value
    assert field in str(exc)
    assert repr(value) in str(exc)


class FakeBackend:
    """Stands in for a backend object (config does not inspect backends)."""


# ----------------------------------------------------------------------------------------------
# Defaults
# ----------------------------------------------------------------------------------------------

EXPECTED_DEFAULTS: dict[str, Any] = {
    "redis_url": None,
    "default_ttl": 300,
    "key_prefix": "yokedcache",
    "default_serialization": SerializationMethod.JSON,
    "ttl_jitter_percent": 10.0,
    "allow_pickle": False,
    "signing_key": None,
    "allow_legacy_insecure_deserialization": True,
    "max_connections": 50,
    "connection_timeout": 30.0,
    "operation_timeout": 0.5,
    "connection_pool_kwargs": {},
    "fallback_enabled": True,
    "connection_retries": 3,
    "retry_delay": 0.1,
    "enable_circuit_breaker": False,
    "circuit_breaker_failure_threshold": 5,
    "circuit_breaker_timeout": 60.0,
    "invalidation_queue_size": 10000,
    "enable_fuzzy": False,
    "fuzzy_threshold": 80,
    "enable_compression": False,
    "compression_threshold": 1024,
    "memory_max_size": 10000,
    "memory_cleanup_interval": 300,
    "memory_max_bytes": None,
    "max_value_bytes": None,
    "enable_metrics": False,
    "prometheus_port": 8000,
    "statsd_host": None,
    "statsd_port": 8125,
    "log_level": "INFO",
    "stats_publish_interval": 10.0,
    "backend": None,
    "default_backend": None,
    "prefix_backends": {},
    "tables": {},
}


def test_defaults() -> None:
    config = CacheConfig()
    for name, expected in EXPECTED_DEFAULTS.items():
        actual = getattr(config, name)
        assert actual == expected, name
        assert type(actual) is type(expected), name
    assert set(FIELD_NAMES) == set(EXPECTED_DEFAULTS)
    assert config.backend_kind == "memory"
    assert config.signing_key_bytes is None
    assert CacheConfig.from_env() == config


def test_env_fields() -> None:
    no_env = {"connection_pool_kwargs", "backend", "default_backend", "prefix_backends", "tables"}
    assert set(ENV_FIELD_NAMES) == set(FIELD_NAMES) - no_env
    assert env_var_name("default_ttl") == "YOKEDCACHE_DEFAULT_TTL"


def test_config_validation_error_is_value_error() -> None:
    with pytest.raises(ValueError):
        CacheConfig(default_ttl=0)
    with pytest.raises(CacheError):
        CacheConfig(default_ttl=0)


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [
        ("redis_url", "redis://localhost:6379/1", "redis://localhost:6379/1"),
        ("default_ttl", "42", 42),
        ("key_prefix", "myapp", "myapp"),
        ("default_serialization", "msgpack", SerializationMethod.MSGPACK),
        ("default_serialization", "MsgPack", SerializationMethod.MSGPACK),
        ("ttl_jitter_percent", "0", 0.0),
        ("ttl_jitter_percent", "12.5", 12.5),
        ("allow_pickle", "true", True),
        ("signing_key", "s3cret", "s3cret"),
        ("allow_legacy_insecure_deserialization", "off", False),
        ("max_connections", "7", 7),
        ("connection_timeout", "2.5", 2.5),
        ("operation_timeout", "0.25", 0.25),
        ("fallback_enabled", "No", False),
        ("connection_retries", "0", 0),
        ("retry_delay", "0.5", 0.5),
        ("enable_circuit_breaker", "YES", True),
        ("circuit_breaker_failure_threshold", "9", 9),
        ("circuit_breaker_timeout", "3", 3.0),
        ("invalidation_queue_size", "5", 5),
        ("enable_fuzzy", "1", True),
        ("fuzzy_threshold", "55", 55),
        ("enable_compression", "On", True),
        ("compression_threshold", "0", 0),
        ("memory_max_size", "11", 11),
        ("memory_cleanup_interval", "0", 0),
        ("memory_max_bytes", "1048576", 1048576),
        ("max_value_bytes", "2048", 2048),
        ("enable_metrics", "TRUE", True),
        ("prometheus_port", "9100", 9100),
        ("statsd_host", "statsd.local", "statsd.local"),
        ("statsd_port", "8126", 8126),
        ("log_level", "debug", "DEBUG"),
        ("stats_publish_interval", "0", 0.0),
    ],
)
def test_env_values_read(
    monkeypatch: pytest.MonkeyPatch, field: str, raw: str, expected: Any
) -> None:
    monkeypatch.setenv(env_var_name(field), raw)
    value = getattr(CacheConfig(), field)
    assert value == expected
    assert type(value) is type(expected)
    assert getattr(CacheConfig.from_env(), field) == expected


@pytest.mark.parametrize("raw", ["1", "true", "True", "YES", "on"])
def test_env_booleans_true(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("YOKEDCACHE_ENABLE_FUZZY", raw)
    assert CacheConfig().enable_fuzzy is True


@pytest.mark.parametrize("raw", ["0", "false", "FALSE", "no", "Off"])
def test_env_booleans_false(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("YOKEDCACHE_FALLBACK_ENABLED", raw)
    assert CacheConfig().fallback_enabled is False


@pytest.mark.parametrize("raw", ["JSON", "json", "Pickle", "pickle"])
def test_env_enum_by_name_or_value(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("YOKEDCACHE_ALLOW_PICKLE", "1")
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_SERIALIZATION", raw)
    assert CacheConfig().default_serialization is SerializationMethod.parse(raw)


def test_env_empty_is_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_TTL", "")
    monkeypatch.setenv("YOKEDCACHE_REDIS_URL", "")
    monkeypatch.setenv("YOKEDCACHE_ENABLE_FUZZY", "  ")
    config = CacheConfig()
    assert config.default_ttl == 300
    assert config.redis_url is None
    assert config.enable_fuzzy is False


def test_env_redis_url_selects_redis(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_REDIS_URL", "redis://cache:6379/0")
    assert CacheConfig().backend_kind == "redis"


def test_from_env_with_mapping() -> None:
    config = CacheConfig.from_env({"YOKEDCACHE_DEFAULT_TTL": "9", "YOKEDCACHE_KEY_PREFIX": "x"})
    assert (config.default_ttl, config.key_prefix) == (9, "x")


@pytest.mark.parametrize(
    ("variable", "raw"),
    [
        ("YOKEDCACHE_DEFAULT_TTL", "abc"),
        ("YOKEDCACHE_DEFAULT_TTL", "0"),
        ("YOKEDCACHE_DEFAULT_TTL", "1.5"),
        ("YOKEDCACHE_ENABLE_FUZZY", "maybe"),
        ("YOKEDCACHE_DEFAULT_SERIALIZATION", "xml"),
        ("YOKEDCACHE_TTL_JITTER_PERCENT", "100"),
        ("YOKEDCACHE_CONNECTION_TIMEOUT", "nan"),
        ("YOKEDCACHE_OPERATION_TIMEOUT", "0"),
        ("YOKEDCACHE_INVALIDATION_QUEUE_SIZE", "0"),
        ("YOKEDCACHE_REDIS_URL", "not a url"),
        ("YOKEDCACHE_KEY_PREFIX", "a b"),
        ("YOKEDCACHE_LOG_LEVEL", "LOUD"),
        ("YOKEDCACHE_PROMETHEUS_PORT", "70000"),
        ("YOKEDCACHE_STATS_PUBLISH_INTERVAL", "-1"),
    ],
)
def test_env_bad_value_names_variable(
    monkeypatch: pytest.MonkeyPatch, variable: str, raw: str
) -> None:
    monkeypatch.setenv(variable, raw)
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig()
    _assert_names(info.value, variable, raw)


def test_env_pickle_without_allow_pickle_names_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_SERIALIZATION", "pickle")
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig()
    _assert_names(info.value, "YOKEDCACHE_DEFAULT_SERIALIZATION", "pickle")


def test_unknown_env_variables_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_SOMETHING_ELSE", "x")
    monkeypatch.setenv("YOKEDCACHE_TABLES", "not read")
    assert CacheConfig() == CacheConfig.from_env({})


# ----------------------------------------------------------------------------------------------
# Precedence
# ----------------------------------------------------------------------------------------------


def test_precedence_kwargs_over_yaml_over_env_over_default(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_TTL", "11")
    monkeypatch.setenv("YOKEDCACHE_KEY_PREFIX", "from_env")
    monkeypatch.setenv("YOKEDCACHE_MAX_CONNECTIONS", "13")
    path = _write(tmp_path, "default_ttl: 22\nkey_prefix: from_yaml\n")

    # env beats default
    assert CacheConfig().max_connections == 13
    assert CacheConfig().fuzzy_threshold == 80
    # kwargs beat env
    assert CacheConfig(default_ttl=33).default_ttl == 33

    config = CacheConfig.from_yaml(path)
    assert config.default_ttl == 22  # YAML beats env
    assert config.key_prefix == "from_yaml"
    assert config.max_connections == 13  # env fills what YAML does not set
    assert config.fuzzy_threshold == 80  # default otherwise

    over = CacheConfig.from_yaml(path, default_ttl=44)
    assert over.default_ttl == 44  # explicit arguments beat YAML
    assert over.key_prefix == "from_yaml"
    assert config.replace(default_ttl=55).default_ttl == 55


def test_yaml_null_for_nullable_beats_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YOKEDCACHE_REDIS_URL", "redis://env-host:6379/0")
    assert CacheConfig.from_yaml(_write(tmp_path, "redis_url: null\n")).redis_url is None
    assert CacheConfig(redis_url=None).redis_url is None
    assert CacheConfig().redis_url == "redis://env-host:6379/0"


def test_none_for_non_nullable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_TTL", "77")
    assert CacheConfig(default_ttl=None).default_ttl == 77
    assert CacheConfig(key_prefix=None).key_prefix == "yokedcache"


# ----------------------------------------------------------------------------------------------
# Validation of explicit values
# ----------------------------------------------------------------------------------------------

INVALID: list[tuple[str, Any]] = [
    ("default_ttl", 0),
    ("default_ttl", -5),
    ("default_ttl", 1.5),
    ("default_ttl", True),
    ("default_ttl", "abc"),
    ("default_ttl", [300]),
    ("key_prefix", ""),
    ("key_prefix", "my app"),
    ("key_prefix", "tab\there"),
    ("key_prefix", "a*"),
    ("key_prefix", "a?"),
    ("key_prefix", "a[b]"),
    ("key_prefix", "a]"),
    ("key_prefix", "a\\b"),
    ("key_prefix", "app:v1"),
    ("key_prefix", 5),
    ("ttl_jitter_percent", -0.1),
    ("ttl_jitter_percent", 100),
    ("ttl_jitter_percent", 150.0),
    ("ttl_jitter_percent", True),
    ("ttl_jitter_percent", float("inf")),
    ("redis_url", "not a url"),
    ("redis_url", "http://x"),
    ("redis_url", "localhost:6379"),
    ("redis_url", "redis://"),
    ("redis_url", "redis://:pw@/0"),
    ("redis_url", "redis://host:notaport/0"),
    ("redis_url", "redis://host:99999/0"),
    ("redis_url", "redis://host:6379/db"),
    ("redis_url", "unix://"),
    ("redis_url", "redis+sentinel://"),
    ("redis_url", "redis+sentinel://h1:26379"),
    ("redis_url", "redis+sentinel://h1:bad/mymaster"),
    ("redis_url", "redis+sentinel://h1:26379/mymaster/x"),
    ("redis_url", 6379),
    ("default_serialization", "xml"),
    ("default_serialization", 3),
    ("max_connections", 0),
    ("max_connections", False),
    ("connection_timeout", 0),
    ("connection_timeout", -1.0),
    ("connection_timeout", float("nan")),
    ("operation_timeout", 0),
    ("operation_timeout", -0.5),
    ("connection_retries", -1),
    ("retry_delay", -0.1),
    ("circuit_breaker_failure_threshold", 0),
    ("circuit_breaker_timeout", 0),
    ("fuzzy_threshold", -1),
    ("fuzzy_threshold", 101),
    ("compression_threshold", -1),
    ("memory_max_size", 0),
    ("memory_cleanup_interval", -1),
    ("memory_max_bytes", 0),
    ("max_value_bytes", 0),
    ("invalidation_queue_size", 0),
    ("prometheus_port", 0),
    ("prometheus_port", 65536),
    ("statsd_port", 0),
    ("statsd_port", 70000),
    ("statsd_host", ""),
    ("log_level", "LOUD"),
    ("log_level", 10),
    ("stats_publish_interval", -1),
    ("signing_key", 123),
    ("signing_key", ""),
    ("allow_pickle", "maybe"),
    ("allow_pickle", 1),
    ("enable_fuzzy", 0),
    ("connection_pool_kwargs", ["a"]),
    ("connection_pool_kwargs", {1: "a"}),
    ("prefix_backends", ["hot"]),
    ("prefix_backends", {"": FakeBackend()}),
    ("tables", ["users"]),
    ("tables", {"users": 5}),
    ("backend", "redis"),
]


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_invalid_value_raises(field: str, value: Any) -> None:
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig(**{field: value})
    exc = info.value
    assert exc.field.split(".")[0] == field
    assert field in str(exc)
    assert repr(exc.value) in str(exc)
    if isinstance(value, float) and value != value:  # NaN
        assert exc.value != exc.value
    elif not isinstance(value, (dict, list)):
        assert exc.value == value


@pytest.mark.parametrize(("field", "value"), INVALID)
def test_invalid_value_raises_from_yaml(tmp_path: Path, field: str, value: Any) -> None:
    if field in {"backend", "prefix_backends"} or (isinstance(value, float) and value != value):
        pytest.skip("not expressible in YAML")
    path = _write(tmp_path, yaml.safe_dump({field: value}))
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig.from_yaml(path)
    assert info.value.field.split(".")[0] == field


def test_invalid_reports_exact_field_and_value() -> None:
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig(default_ttl="abc")
    _assert_names(info.value, "default_ttl", "abc")
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig(redis_url="http://x")
    _assert_names(info.value, "redis_url", "http://x")


def test_pickle_requires_allow_pickle() -> None:
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig(default_serialization=SerializationMethod.PICKLE)
    assert info.value.field == "default_serialization"
    assert "default_serialization" in str(info.value)
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig(default_serialization="pickle")
    _assert_names(info.value, "default_serialization", "pickle")
    config = CacheConfig(default_serialization="PICKLE", allow_pickle=True)
    assert config.default_serialization is SerializationMethod.PICKLE


def test_table_pickle_requires_allow_pickle() -> None:
    tables = {"users": {"serialization_method": "pickle"}}
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig(tables=tables)
    assert info.value.field == "tables.users.serialization_method"
    assert CacheConfig(tables=tables, allow_pickle=True).tables["users"].serialization_method == (
        SerializationMethod.PICKLE
    )


def test_backend_and_default_backend_not_both() -> None:
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig(backend=FakeBackend(), default_backend=FakeBackend())
    assert info.value.field == "default_backend"
    assert "default_backend" in str(info.value)


def test_unknown_keyword() -> None:
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig(default_tll=5)
    _assert_names(info.value, "default_tll", 5)
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig().replace(bogus=1)
    _assert_names(info.value, "bogus", 1)


@pytest.mark.parametrize(
    "url",
    [
        "redis://localhost",
        "redis://localhost:6379/0",
        "redis://:secret@localhost:6379/2",
        "redis://user:secret@localhost:6379/0",
        "rediss://cache.example.com:6380/0",
        "redis://[::1]:6379/0",
        "unix:///var/run/redis.sock",
        "unix:///tmp/redis.sock?db=3",
        "redis+sentinel://s1:26379,s2:26379/mymaster",
        "redis+sentinel://:pw@s1:26379/mymaster/1",
        "rediss+sentinel://s1/mymaster",
    ],
)
def test_valid_redis_urls(url: str) -> None:
    config = CacheConfig(redis_url=url)
    assert config.redis_url == url
    assert config.backend_kind == "redis"


def test_strings_for_numbers_and_bools_parse_consistently() -> None:
    config = CacheConfig(
        default_ttl="60", retry_delay="0.2", enable_fuzzy="yes", fuzzy_threshold=" 70 "
    )
    assert (config.default_ttl, config.retry_delay, config.enable_fuzzy) == (60, 0.2, True)
    assert config.fuzzy_threshold == 70
    assert CacheConfig(connection_timeout=5).connection_timeout == 5.0
    assert isinstance(CacheConfig(connection_timeout=5).connection_timeout, float)


def test_boundaries_accepted() -> None:
    config = CacheConfig(
        default_ttl=1,
        ttl_jitter_percent=99.9,
        connection_retries=0,
        retry_delay=0,
        fuzzy_threshold=100,
        compression_threshold=0,
        memory_cleanup_interval=0,
        memory_max_bytes=1,
        max_value_bytes=1,
        prometheus_port=65535,
        statsd_port=1,
        stats_publish_interval=0,
        log_level="warning",
        key_prefix="app.v1-cache_x",
    )
    assert config.ttl_jitter_percent == 99.9
    assert config.log_level == "WARNING"


def test_signing_key_bytes() -> None:
    assert CacheConfig(signing_key="clé").signing_key_bytes == "clé".encode()
    assert CacheConfig(signing_key=b"\x00\x01").signing_key_bytes == b"\x00\x01"


def test_backend_objects() -> None:
    backend = FakeBackend()
    config = CacheConfig(backend=backend, redis_url="redis://h:6379/0")
    assert config.backend is backend
    assert config.backend_kind == "custom"
    hot = FakeBackend()
    routed = CacheConfig(default_backend=backend, prefix_backends={"hot": hot})
    assert routed.prefix_backends == {"hot": hot}
    assert routed.backend_kind == "custom"


# ----------------------------------------------------------------------------------------------
# Immutability and replace
# ----------------------------------------------------------------------------------------------


def test_read_only() -> None:
    config = CacheConfig()
    with pytest.raises(AttributeError):
        config.default_ttl = 5


def test_replace_returns_validated_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    base = CacheConfig(default_ttl=100, tables={"users": {"ttl": 5}})
    monkeypatch.setenv("YOKEDCACHE_KEY_PREFIX", "env_changed_later")
    changed = base.replace(redis_url="redis://h/0")
    assert changed.redis_url == "redis://h/0"
    assert changed.default_ttl == 100
    assert changed.key_prefix == "yokedcache"  # the environment is not read again
    assert changed.tables == base.tables
    assert base.redis_url is None
    assert base.replace() == base
    assert base.replace(default_ttl=None).default_ttl == 100
    with pytest.raises(ConfigValidationError) as info:
        base.replace(default_ttl=0)
    _assert_names(info.value, "default_ttl", 0)


# ----------------------------------------------------------------------------------------------
# YAML
# ----------------------------------------------------------------------------------------------


def test_from_yaml_reads_fields_and_tables(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
redis_url: redis://localhost:6379/0
default_ttl: 120
default_serialization: msgpack
enable_fuzzy: "yes"
tables:
  users:
    ttl: 600
    tags: [users, people]
    enable_compression: true
    query_specific_ttls:
      "SELECT * FROM users WHERE active": 60
  posts:
""",
    )
    config = CacheConfig.from_yaml(path)
    assert config.redis_url == "redis://localhost:6379/0"
    assert config.default_ttl == 120
    assert config.default_serialization is SerializationMethod.MSGPACK
    assert config.enable_fuzzy is True
    users = config.tables["users"]
    assert isinstance(users, TableCacheConfig)
    assert users.ttl == 600
    assert users.tags == {"users", "people"}
    assert users.enable_compression is True
    assert users.query_specific_ttls == {"SELECT * FROM users WHERE active": 60}
    assert config.tables["posts"] == TableCacheConfig()


def test_from_yaml_accepts_str_path_and_empty_file(tmp_path: Path) -> None:
    path = _write(tmp_path, "")
    assert CacheConfig.from_yaml(str(path)) == CacheConfig()


def test_yaml_unknown_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "default_ttl: 5\nbogus_option: 1\n")
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig.from_yaml(path)
    _assert_names(info.value, "bogus_option", 1)


def test_yaml_unknown_table_key(tmp_path: Path) -> None:
    path = _write(tmp_path, "tables:\n  users:\n    tll: 5\n")
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig.from_yaml(path)
    _assert_names(info.value, "tables.users.tll", 5)


def test_yaml_bad_table_value(tmp_path: Path) -> None:
    path = _write(tmp_path, "tables:\n  users:\n    ttl: 0\n")
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig.from_yaml(path)
    _assert_names(info.value, "tables.users.ttl", 0)


def test_yaml_not_a_mapping(tmp_path: Path) -> None:
    with pytest.raises(ConfigValidationError):
        CacheConfig.from_yaml(_write(tmp_path, "- a\n- b\n"))
    with pytest.raises(ConfigValidationError):
        CacheConfig.from_yaml(_write(tmp_path, "a: [unclosed\n", "bad.yaml"))


def test_yaml_rejects_backend_objects(tmp_path: Path) -> None:
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig.from_yaml(_write(tmp_path, "backend: redis\n"))
    assert info.value.field == "backend"


def test_missing_yaml_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        CacheConfig.from_yaml(tmp_path / "nope.yaml")


def _full_config() -> CacheConfig:
    return CacheConfig(
        redis_url="redis://user:pa55@localhost:6379/3",
        default_ttl=123,
        key_prefix="app",
        default_serialization="msgpack",
        ttl_jitter_percent=5,
        signing_key="topsecret",
        connection_timeout=2,
        operation_timeout=0.2,
        connection_pool_kwargs={"health_check_interval": 30, "password": "pa55"},
        enable_circuit_breaker=True,
        invalidation_queue_size=99,
        memory_max_bytes=1 << 20,
        statsd_host="localhost",
        log_level="debug",
        stats_publish_interval=0,
        tables={
            "users": TableCacheConfig(
                ttl=60,
                tags={"b", "a"},
                serialization_method=SerializationMethod.JSON,
                enable_fuzzy=False,
                fuzzy_threshold=90,
                enable_compression=True,
                compression_threshold=10,
                query_specific_ttls={"where active": 30},
            ),
            "posts": {"ttl": 30},
        },
    )


def test_to_dict_shape() -> None:
    backend = FakeBackend()
    data = _full_config().replace(default_backend=backend, prefix_backends={"x": backend}).to_dict()
    assert "backend" not in data
    assert "default_backend" not in data
    assert "prefix_backends" not in data
    assert data["default_serialization"] == "MSGPACK"
    assert data["tables"]["users"]["tags"] == ["a", "b"]
    assert data["tables"]["users"]["serialization_method"] == "JSON"
    assert data["tables"]["posts"]["ttl"] == 30
    assert data["operation_timeout"] == 0.2
    assert data["invalidation_queue_size"] == 99
    assert set(data) == set(FIELD_NAMES) - {"backend", "default_backend", "prefix_backends"}


def test_yaml_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = _full_config()
    path = _write(tmp_path, config.to_yaml())
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_TTL", "999")  # YAML fields beat the environment
    loaded = CacheConfig.from_yaml(path)
    assert loaded == config
    assert loaded.to_dict() == config.to_dict()
    assert loaded.tables["users"].tags == {"a", "b"}

    default = CacheConfig()
    assert CacheConfig.from_yaml(_write(tmp_path, default.to_yaml(), "d.yaml")) == default

    binary = CacheConfig(signing_key=b"\x00\xffkey")
    assert CacheConfig.from_yaml(_write(tmp_path, binary.to_yaml(), "b.yaml")) == binary


def test_redact() -> None:
    config = _full_config()
    data = config.to_dict(redact=True)
    assert data["redis_url"] == "redis://user:***@localhost:6379/3"
    assert data["signing_key"] == "***"
    assert data["connection_pool_kwargs"]["password"] == "***"
    assert data["connection_pool_kwargs"]["health_check_interval"] == 30
    text = config.to_yaml(redact=True)
    assert "pa55" not in text
    assert "topsecret" not in text
    assert "pa55" not in repr(config)
    assert "topsecret" not in repr(config)
    plain = config.to_dict()
    assert plain["redis_url"] == "redis://user:pa55@localhost:6379/3"
    assert plain["signing_key"] == "topsecret"
    assert CacheConfig().to_dict(redact=True)["redis_url"] is None
    assert CacheConfig().to_dict(redact=True)["signing_key"] is None


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis://user:pw@host:6379/0", "redis://user:***@host:6379/0"),
        ("redis://:pw@host:6379/0", "redis://:***@host:6379/0"),
        ("redis://host:6379/0", "redis://host:6379/0"),
        ("rediss://u:p@w@host", "rediss://u:***@host"),
        ("unix:///tmp/r.sock?db=1&password=pw", "unix:///tmp/r.sock?db=1&password=***"),
        ("redis+sentinel://:pw@s1:26379,s2:26379/m", "redis+sentinel://:***@s1:26379,s2:26379/m"),
    ],
)
def test_redact_url(url: str, expected: str) -> None:
    assert redact_url(url) == expected


# ----------------------------------------------------------------------------------------------
# TableCacheConfig
# ----------------------------------------------------------------------------------------------


def test_table_config_defaults_and_normalisation() -> None:
    table = TableCacheConfig()
    assert table.ttl is None
    assert table.tags == set()
    assert table.query_specific_ttls == {}
    assert table.serialization_method is None
    normalised = TableCacheConfig(tags="one", serialization_method="msgpack")  # type: ignore[arg-type]
    assert normalised.tags == {"one"}
    assert normalised.serialization_method is SerializationMethod.MSGPACK
    with pytest.raises(TypeError):
        TableCacheConfig(60)  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("ttl", 0),
        ("ttl", True),
        ("ttl", "x"),
        ("tags", 5),
        ("tags", ["", "a"]),
        ("serialization_method", "yaml"),
        ("enable_fuzzy", "perhaps"),
        ("fuzzy_threshold", 101),
        ("enable_compression", 2),
        ("compression_threshold", -1),
        ("query_specific_ttls", {"where x": 0}),
        ("query_specific_ttls", {"   ": 5}),
        ("query_specific_ttls", ["where x"]),
    ],
)
def test_table_config_invalid(field: str, value: Any) -> None:
    with pytest.raises(ConfigValidationError) as info:
        TableCacheConfig(**{field: value})
    assert info.value.field.startswith(field)
    with pytest.raises(ConfigValidationError) as info:
        CacheConfig(tables={"users": {field: value}})
    assert info.value.field.startswith(f"tables.users.{field}")
    assert "tables.users" in str(info.value)


# ----------------------------------------------------------------------------------------------
# effective_table_settings
# ----------------------------------------------------------------------------------------------


def _tables_config() -> CacheConfig:
    return CacheConfig(
        allow_pickle=True,
        tables={
            "users": TableCacheConfig(
                ttl=600,
                tags={"users", "people"},
                serialization_method=SerializationMethod.MSGPACK,
                query_specific_ttls={"WHERE   users.active": 30, "where users.active = true": 20},
            ),
            "posts": TableCacheConfig(
                ttl=180,
                tags={"posts"},
                enable_compression=True,
                compression_threshold=100,
                query_specific_ttls={"from posts": 90},
            ),
            "audit": TableCacheConfig(enable_compression=False),
            "zeta": TableCacheConfig(serialization_method=SerializationMethod.PICKLE),
        },
    )


def test_effective_single_table() -> None:
    settings = effective_table_settings(_tables_config(), ["users"])
    assert settings.ttl == 600
    assert settings.tags == {"users", "people"}
    assert settings.serialization is SerializationMethod.MSGPACK
    assert settings.compression is None


def test_effective_several_tables() -> None:
    settings = effective_table_settings(_tables_config(), ["users", "posts", "audit", "zeta"])
    assert settings.ttl == 180  # smallest
    assert settings.tags == {"users", "people", "posts"}  # union
    assert settings.compression is True  # any enables it
    assert settings.compression_threshold == 100
    # alphabetically first table that sets one: audit (unset) < posts (unset) < users < zeta
    assert settings.serialization is SerializationMethod.MSGPACK
    assert settings.tables == ("audit", "posts", "users", "zeta")


def test_effective_alphabetical_serialization_not_input_order() -> None:
    config = CacheConfig(
        allow_pickle=True,
        tables={
            "b": TableCacheConfig(serialization_method=SerializationMethod.PICKLE),
            "a": TableCacheConfig(serialization_method=SerializationMethod.JSON),
        },
    )
    assert effective_table_settings(config, ["b", "a"]).serialization is SerializationMethod.JSON
    assert effective_table_settings(config, ["b"]).serialization is SerializationMethod.PICKLE


def test_effective_compression_false_only_when_disabled() -> None:
    config = _tables_config()
    assert effective_table_settings(config, ["audit"]).compression is False
    assert effective_table_settings(config, ["audit", "users"]).compression is False
    assert effective_table_settings(config, ["audit", "posts"]).compression is True


def test_effective_unknown_tables_and_schema() -> None:
    config = _tables_config()
    assert effective_table_settings(config, []) == ResolvedTableSettings()
    nothing = effective_table_settings(config, ["comments"])
    assert nothing.ttl is None
    assert nothing.tags == frozenset()
    assert nothing.serialization is None
    assert nothing.compression is None
    qualified = effective_table_settings(config, ["public.users", "comments"])
    assert qualified.ttl == 600
    assert qualified.tables == ("users",)


def test_effective_query_specific_ttls() -> None:
    config = _tables_config()
    sql = "SELECT users.id\n  FROM users\n WHERE users.active   = TRUE"
    # both users fragments match after normalisation; the longest wins (20), beating table ttl 600
    assert effective_table_settings(config, ["users"], sql).ttl == 20
    assert (
        effective_table_settings(config, ["users"], "select * from users where users.active").ttl
        == 30
    )
    # no fragment matches: table TTL
    assert effective_table_settings(config, ["users"], "select * from users").ttl == 600
    # fragments of other tables in the set count too; longest across tables wins
    joined = "SELECT * FROM posts JOIN users ON 1=1 WHERE users.active = true"
    assert effective_table_settings(config, ["users", "posts"], joined).ttl == 20
    assert effective_table_settings(config, ["users", "posts"], "select * FROM  Posts").ttl == 90
    # without SQL query_specific_ttls are not consulted
    assert effective_table_settings(config, ["posts"]).ttl == 180


def test_effective_query_ttl_tie_takes_smallest() -> None:
    config = CacheConfig(
        tables={
            "a": TableCacheConfig(query_specific_ttls={"where x": 50}),
            "b": TableCacheConfig(query_specific_ttls={"WHERE X": 40}),
        }
    )
    assert effective_table_settings(config, ["a", "b"], "select 1 where x").ttl == 40


# ----------------------------------------------------------------------------------------------
# TTL helpers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("explicit", "table", "default", "expected"),
    [(5, 10, 300, 5), (None, 10, 300, 10), (None, None, 300, 300), (0, 10, 300, 0)],
)
def test_resolve_ttl(explicit: int | None, table: int | None, default: int, expected: int) -> None:
    assert resolve_ttl(explicit, table, default) == expected


def test_jitter_zero_percent_is_exact() -> None:
    assert jittered_ttl_ms(300, 0) == 300_000
    assert jittered_ttl_ms(1.2345, 0) == 1234 or jittered_ttl_ms(1.2345, 0) == 1235
    assert jittered_ttl_ms(0.0001, 0) == 1
    assert jittered_ttl_ms(0, 0) == 1
    assert all(jittered_ttl_ms(60, 0, rng=random.random) == 60_000 for _ in range(100))


@pytest.mark.parametrize(("ttl", "percent"), [(300, 10), (1, 50), (60, 99.9), (0.5, 10)])
def test_jitter_bounds(ttl: float, percent: float) -> None:
    rng = random.Random(1234).random
    base = ttl * 1000
    low, high = base * (1 - percent / 100), base * (1 + percent / 100)
    samples = [jittered_ttl_ms(ttl, percent, rng=rng) for _ in range(5000)]
    assert all(isinstance(s, int) for s in samples)
    assert all(low <= s <= high for s in samples), (min(samples), max(samples), low, high)
    # the whole range is used, roughly uniformly
    spread = high - low
    assert min(samples) < low + spread * 0.05
    assert max(samples) > high - spread * 0.05
    mean = sum(samples) / len(samples)
    assert abs(mean - base) < spread * 0.05


def test_jitter_extremes_of_rng() -> None:
    assert jittered_ttl_ms(100, 10, rng=lambda: 0.0) == 90_000
    assert jittered_ttl_ms(100, 10, rng=lambda: 0.9999999999) == 110_000
    assert jittered_ttl_ms(100, 10, rng=lambda: 0.5) == 100_000
    assert jittered_ttl_ms(0.001, 50, rng=lambda: 0.0) == 1  # at least 1 ms


def test_jitter_rejects_bad_arguments() -> None:
    for ttl, percent in itertools.product([-1, float("nan")], [10]):
        with pytest.raises(ValueError):
            jittered_ttl_ms(ttl, percent)
    for percent in (-1, 100, 150):
        with pytest.raises(ValueError):
            jittered_ttl_ms(10, percent)
