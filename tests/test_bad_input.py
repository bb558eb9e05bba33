"""Bad keys, bad values, bad configuration and garbage in the store, each with its outcome from API.md.

Garbage is written straight into the storage under the cache's own key: with redis-py at
``<prefix>:<key>`` for Redis (both with the entry frame's ``\\x1d`` header end and without), through the
backend's byte contract for memory. Reading it must be a counted miss that removes it, never an exception,
and never code execution.
"""

from __future__ import annotations

import pickle
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import redis

from tests.api_faces import Api
from yokedcache import (
    CacheConfig,
    CacheError,
    CacheKeyError,
    CacheSerializationError,
    ConfigValidationError,
    SerializationMethod,
    YokedCache,
)
from yokedcache.codec.envelope import seal

# --- a forged pickle: unpickling it calls _record_unpickle (importable by name) -----------------------
UNPICKLED: list[str] = []


def _record_unpickle(marker: str) -> str:
    UNPICKLED.append(marker)
    return marker


class Forged:
    def __reduce__(self) -> tuple[Callable[[str], str], tuple[str]]:
        return _record_unpickle, ("pwned",)


def forged_pickle() -> bytes:
    payload = pickle.dumps(Forged(), protocol=pickle.HIGHEST_PROTOCOL)
    assert pickle.loads(payload) == "pwned" and UNPICKLED == ["pwned"]  # the payload is live ...
    UNPICKLED.clear()  # ... so an empty list afterwards proves the cache never unpickled it
    return payload


def forged_envelope(full_key: str) -> bytes:
    """The forged pickle inside a well-formed envelope flagged as pickle (unsigned)."""
    return seal(Forged(), key=full_key, method=SerializationMethod.PICKLE, allow_pickle=True,
                compression_threshold=None, signing_key=None, max_value_bytes=None, created_at=time.time())




class RawStore:
    """Reads and writes stored bytes under a cache's key, below the cache."""

    def __init__(self, cache: YokedCache, client: redis.Redis | None) -> None:
        self.cache = cache
        self.client = client

    def full(self, key: str) -> str:
        return f"{self.cache.config.key_prefix}:{key}"

    @property
    def framings(self) -> list[bool]:
        return [True, False] if self.client is not None else [True]

    def write(self, key: str, body: bytes, *, framed: bool = True) -> None:
        if self.client is not None:
            self.client.set(self.full(key), (b"\x1d" + body) if framed else body, px=60_000)
        else:
            self.cache.backend.set([(self.full(key), body, 60_000)], [], None)

    def read(self, key: str) -> bytes | None:
        """The stored body (without the Redis frame), ``None`` if nothing is stored."""
        if self.client is not None:
            raw = self.client.get(self.full(key))
            if raw is None:
                return None
            return raw.split(b"\x1d", 1)[1] if b"\x1d" in raw else raw
        return self.cache.backend.get(self.full(key))

    def present(self, key: str) -> bool:
        if self.client is not None:
            return bool(self.client.exists(self.full(key)))
        return self.cache.backend.get(self.full(key)) is not None


@pytest.fixture
def raw(cache: YokedCache, backend_kind: str) -> Iterator[RawStore]:
    if backend_kind == "redis":
        client = redis.Redis.from_url(str(cache.config.redis_url))
        yield RawStore(cache, client)
        client.close()
    else:
        yield RawStore(cache, None)


def same_store(cache: YokedCache, backend_kind: str, **options: Any) -> YokedCache:
    """Another cache over the same storage and prefix, with other options (e.g. a signing key)."""
    base: dict[str, Any] = {"key_prefix": cache.config.key_prefix, "ttl_jitter_percent": 0}
    if backend_kind == "redis":
        base["redis_url"] = cache.config.redis_url
    else:
        base["backend"] = cache.backend
    return YokedCache(**{**base, **options})


# --- keys --------------------------------------------------------------------------------------------

BAD_KEYS = [
    pytest.param(1, id="int"),
    pytest.param(b"k", id="bytes"),
    pytest.param(None, id="None"),
    pytest.param("", id="empty"),
    pytest.param("__yc__:t:x", id="reserved"),
    # a str with no UTF-8 form: no backend client can encode it, so it is refused on all of them alike
    pytest.param("lone\ud800surrogate", id="lone-surrogate"),
]


@pytest.mark.parametrize("bad", BAD_KEYS)
async def test_bad_keys_raise_cache_key_error_from_every_operation(api: Api, bad: Any) -> None:
    calls: list[int] = []

    def factory() -> int:
        calls.append(1)
        return 1

    operations: list[tuple[str, tuple[Any, ...]]] = [
        ("get", (bad,)),
        ("set", (bad, 1)),
        ("delete", (bad,)),
        ("exists", (bad,)),
        ("ttl", (bad,)),
        ("expire", (bad, 10)),
        ("get_or_set", (bad, factory)),
        ("get_meta", (bad,)),
        ("get_many", (["fine", bad],)),
        ("set_many", ({"fine": 1, bad: 2},)),
        ("delete_many", (["fine", bad],)),
    ]
    for name, args in operations:
        with pytest.raises(CacheKeyError) as info:
            await api(name, *args)
        assert isinstance(info.value, ValueError)
    assert calls == []  # the factory never ran


async def test_bad_keys_raise_even_with_fallback_off(cache_config: dict[str, Any]) -> None:
    strict = YokedCache(**{**cache_config, "fallback_enabled": False})
    with pytest.raises(CacheKeyError):
        await strict.get(5)  # type: ignore[arg-type]
    with pytest.raises(CacheKeyError):
        strict.set_sync("__yc__:x", 1)
    await strict.disconnect()


UNUSUAL_KEYS = [
    pytest.param("k" * 2000, id="2000-chars"),
    pytest.param("ключ:漢字:é:🙂", id="non-ascii"),
    pytest.param("ctl\x00\x01\t\n\x1d\x1e\x1f\x7fend", id="control-chars"),
    pytest.param("glob*?[x]\\y", id="glob-chars"),
    pytest.param("x:__yc__:y", id="reserved-inside"),
    pytest.param(" ", id="space"),
]


@pytest.mark.parametrize("key", UNUSUAL_KEYS)
async def test_unusual_keys_round_trip_and_are_listed_as_given(api: Api, key: str) -> None:
    assert await api("set", key, {"v": key}, tags=["t"]) is True
    assert await api("get", key) == {"v": key}
    assert await api("exists", key) is True
    assert await api("ttl", key) == 300
    assert (await api("get_meta", key))["key"] == key
    assert await api("get_many", [key]) == {key: {"v": key}}
    assert await api("get_all_keys") == [key]
    assert await api("get_keys_by_tag", "t") == [key]
    assert await api("delete", key) is True
    assert await api("get", key, "D") == "D"
    assert await api("set", key, 1) is True
    assert await api("invalidate_pattern", "*") == 1


# --- values that cannot be stored ---------------------------------------------------------------------


@pytest.fixture
def open_file(tmp_path: Any) -> Iterator[Any]:
    with open(tmp_path / "f.txt", "w") as handle:
        yield handle


UNSERIALIZABLE = ["object", "lambda", "file", "nested"]


def unserializable(kind: str, open_file: Any) -> Any:
    return {
        "object": object(),
        "lambda": lambda: 1,
        "file": open_file,
        "nested": {"fine": [1, 2, {"deep": object()}]},
    }[kind]


@pytest.mark.parametrize("kind", UNSERIALIZABLE)
async def test_unserializable_value_is_not_stored_with_fallback_on(
    api: Api, kind: str, open_file: Any
) -> None:
    value = unserializable(kind, open_file)
    assert await api("set", "k", value) is False
    assert await api("exists", "k") is False
    assert await api("get", "k", "D") == "D"
    assert await api("set_many", {"good": 1, "bad": value}) is False
    assert await api("exists", "bad") is False
    assert await api("get_or_set", "computed", lambda: value) is value  # returned, not stored
    assert await api("exists", "computed") is False
    assert await api("get_all_keys", 100) in ([], ["good"])


@pytest.mark.parametrize("kind", UNSERIALIZABLE)
async def test_unserializable_value_raises_with_fallback_off(
    cache_config: dict[str, Any], face: str, kind: str, open_file: Any
) -> None:
    strict = YokedCache(**{**cache_config, "fallback_enabled": False})
    api = Api(strict, face)
    value = unserializable(kind, open_file)
    with pytest.raises(CacheSerializationError):
        await api("set", "k", value)
    with pytest.raises(CacheSerializationError):
        await api("set_many", {"bad": value})
    assert await api("exists", "k") is False
    assert await api("exists", "bad") is False
    await strict.flush_all()
    await strict.disconnect()


async def test_pickle_and_oversized_values_are_refused(cache_config: dict[str, Any], face: str) -> None:
    lenient = YokedCache(**{**cache_config, "max_value_bytes": 200})
    strict = YokedCache(**{**cache_config, "max_value_bytes": 200, "fallback_enabled": False})
    try:
        assert await Api(lenient, face)("set", "p", [1], serialization="pickle") is False
        assert await Api(lenient, face)("set", "big", "x" * 1000) is False
        assert await Api(lenient, face)("set", "small", "x" * 10) is True
        assert await Api(lenient, face)("get_all_keys") == ["small"]
        with pytest.raises(CacheSerializationError):
            await Api(strict, face)("set", "p", [1], serialization=SerializationMethod.PICKLE)
        with pytest.raises(CacheSerializationError):
            await Api(strict, face)("set", "big", "x" * 1000)
        assert await Api(lenient, face)("exists", "big") is False
    finally:
        await lenient.flush_all()
        await lenient.disconnect()
        await strict.disconnect()


async def test_bad_arguments_are_value_errors(api: Api) -> None:
    with pytest.raises(ValueError):
        await api("set", "k", 1, tags=[1])
    with pytest.raises(ValueError):
        await api("set", "k", 1, tags=[""])
    with pytest.raises(ValueError):
        await api("set", "k", 1, tags=["bad\x1ftag"])
    with pytest.raises(ValueError):
        await api("set", "k", 1, serialization="xml")
    with pytest.raises(ValueError):
        await api("set", "k", 1, tags=["lone\udc80"])
    with pytest.raises(ValueError):
        await api("invalidate_tags", [None])
    assert await api("exists", "k") is False


async def test_non_finite_ttls_are_value_errors(api: Api) -> None:
    await api("set", "live", 1)
    for ttl in (float("nan"), float("inf"), float("-inf")):
        with pytest.raises(ValueError):
            await api("set", "k", 1, ttl=ttl)
        with pytest.raises(ValueError):
            await api("set_many", {"k": 1}, ttl=ttl)
    with pytest.raises(ValueError):
        await api("expire", "live", float("nan"))
    assert await api("exists", "k") is False
    assert await api("ttl", "live") == 300


async def test_expire_with_an_infinite_ttl_is_a_value_error(api: Api) -> None:
    await api("set", "live", 1)
    with pytest.raises(ValueError):
        await api("expire", "live", float("inf"))


# --- garbage in the store ------------------------------------------------------------------------------


async def assert_counted_miss_and_removed(api: Api, raw: RawStore, key: str) -> None:
    errors = (await api("get_stats")).errors
    misses = (await api("get_stats")).cache_misses
    assert raw.present(key)
    assert await api("get", key, "DEFAULT") == "DEFAULT"
    stats = await api("get_stats")
    assert stats.errors == errors + 1
    assert stats.cache_misses == misses + 1
    assert not raw.present(key), "the garbage entry must be deleted"


GARBAGE = [
    pytest.param(b"\x00\xffgarbage\x1e\x1f\x80", id="random-bytes"),
    pytest.param(b"", id="empty"),
    pytest.param(b"\xfeYC", id="magic-only"),
    pytest.param(b"\xfeYC\x01\x00" + b"\x00" * 8 + b"\x93{not json", id="bad-body"),
    pytest.param(b"\xfeYC\x07\x00" + b"\x00" * 8 + b"[1]", id="unknown-version"),
    pytest.param(b"{\"unterminated\": ", id="broken-json"),
]


@pytest.mark.parametrize("garbage", GARBAGE)
async def test_garbage_entry_is_a_counted_miss_and_is_deleted(
    api: Api, raw: RawStore, garbage: bytes
) -> None:
    for framed in raw.framings:
        key = f"garbage-{framed}"
        raw.write(key, garbage, framed=framed)
        await assert_counted_miss_and_removed(api, raw, key)
        assert await api("get_meta", key) is None
        assert await api("exists", key) is False


async def test_truncated_entry_is_a_counted_miss(api: Api, raw: RawStore) -> None:
    await api("set", "real", {"payload": "v" * 200, "n": list(range(20))})
    body = raw.read("real")
    assert body is not None and body.startswith(b"\xfeYC")
    for cut in (len(body) // 2, len(body) - 1, 14, 5):
        for framed in raw.framings:
            key = f"cut-{cut}-{framed}"
            raw.write(key, body[:cut], framed=framed)
            await assert_counted_miss_and_removed(api, raw, key)
    assert await api("get", "real") == {"payload": "v" * 200, "n": list(range(20))}


async def test_forged_pickle_is_never_unpickled(api: Api, raw: RawStore, cache: YokedCache) -> None:
    payload = forged_pickle()
    full = raw.full("evil")
    enveloped = forged_envelope(full)
    UNPICKLED.clear()
    for framed in raw.framings:
        raw.write("evil", payload, framed=framed)
        await assert_counted_miss_and_removed(api, raw, "evil")
        raw.write("evil", enveloped, framed=framed)
        await assert_counted_miss_and_removed(api, raw, "evil")
    raw.write("evil", enveloped)
    assert await api("get_many", ["evil"]) == {"evil": None}
    assert UNPICKLED == []


async def test_forged_pickle_is_refused_by_a_signed_cache_that_allows_pickle(
    cache: YokedCache, raw: RawStore, backend_kind: str, face: str
) -> None:
    signed = same_store(cache, backend_kind, signing_key="k", allow_pickle=True)
    api = Api(signed, face)
    full = raw.full("evil")
    enveloped = forged_envelope(full)
    UNPICKLED.clear()
    for body in (forged_pickle(), enveloped):
        raw.write("evil", body)
        await assert_counted_miss_and_removed(api, raw, "evil")
    assert UNPICKLED == []
    await signed.disconnect()


async def test_legacy_json_is_read_only_when_allowed(
    cache: YokedCache, raw: RawStore, backend_kind: str
) -> None:
    raw.write("legacy", b'{"a": [1, 2]}')
    assert await cache.get("legacy") == {"a": [1, 2]}  # allow_legacy_insecure_deserialization defaults on
    strict = same_store(cache, backend_kind, allow_legacy_insecure_deserialization=False)
    api = Api(strict, "async")
    await assert_counted_miss_and_removed(api, raw, "legacy")
    await strict.disconnect()


# --- signing -----------------------------------------------------------------------------------------


def flip(body: bytes, index: int) -> bytes:
    return body[:index] + bytes([body[index] ^ 0x01]) + body[index + 1 :]


async def test_signed_cache_treats_a_tampered_entry_as_a_counted_miss(
    cache: YokedCache, raw: RawStore, backend_kind: str, face: str
) -> None:
    signed = same_store(cache, backend_kind, signing_key="k")
    api = Api(signed, face)
    value = {"amount": 100, "to": "alice"}
    assert await api("set", "k", value) is True
    assert await api("get", "k") == value
    body = raw.read("k")
    assert body is not None
    for index in (len(body) - 1, 20, 4):  # the body, the MAC, the flags
        raw.write("k", flip(body, index))
        await assert_counted_miss_and_removed(api, raw, "k")
    raw.write("elsewhere", body)  # an intact signed entry copied under another key
    await assert_counted_miss_and_removed(api, raw, "elsewhere")
    await signed.disconnect()


async def test_signed_cache_refuses_unsigned_and_foreign_entries(
    cache: YokedCache, raw: RawStore, backend_kind: str, face: str
) -> None:
    signed = same_store(cache, backend_kind, signing_key="k")
    other_key = same_store(cache, backend_kind, signing_key=b"another key")
    assert await cache.set("unsigned", [1, 2]) is True
    await assert_counted_miss_and_removed(Api(signed, face), raw, "unsigned")
    assert await other_key.set("foreign", [1, 2]) is True
    await assert_counted_miss_and_removed(Api(signed, face), raw, "foreign")
    assert await signed.set("mine", [3]) is True
    assert await Api(signed, face)("get", "mine") == [3]
    await signed.disconnect()
    await other_key.disconnect()


# --- configuration -------------------------------------------------------------------------------------

BAD_CONFIG = [
    pytest.param("default_ttl", -5, id="negative-default-ttl"),
    pytest.param("default_ttl", 0, id="zero-default-ttl"),
    pytest.param("default_serialization", "xml", id="unknown-serialization"),
    pytest.param("redis_url", "not a url", id="malformed-url"),
    pytest.param("redis_url", "http://localhost:6379/0", id="wrong-scheme"),
    pytest.param("ttl_jitter_percent", 150, id="jitter-150"),
    pytest.param("ttl_jitter_percent", -1, id="jitter-negative"),
    pytest.param("key_prefix", "has space", id="prefix-space"),
    pytest.param("key_prefix", "glob*", id="prefix-glob"),
    pytest.param("max_connections", "many", id="not-an-int"),
    pytest.param("fallback_enabled", "maybe", id="not-a-bool"),
    pytest.param("bogus_option", 1, id="unknown-keyword"),
]


@pytest.mark.parametrize(("field", "value"), BAD_CONFIG)
@pytest.mark.parametrize("build", [CacheConfig, YokedCache], ids=["CacheConfig", "YokedCache"])
def test_bad_config_names_field_and_value(build: Callable[..., Any], field: str, value: Any) -> None:
    with pytest.raises(ConfigValidationError) as info:
        build(**{field: value})
    error = info.value
    assert isinstance(error, ValueError) and isinstance(error, CacheError)
    assert error.field == field
    assert error.value == value
    assert field in str(error)
    assert repr(value) in str(error) or str(value) in str(error)


def test_bad_config_from_the_environment_names_the_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YOKEDCACHE_DEFAULT_TTL", "-5")
    with pytest.raises(ConfigValidationError) as info:
        YokedCache()
    assert "YOKEDCACHE_DEFAULT_TTL" in str(info.value) and "-5" in str(info.value)


def test_yokedcache_overrides_beat_the_config() -> None:
    with pytest.raises(ConfigValidationError) as info:
        YokedCache(CacheConfig(default_ttl=10), default_ttl=-1)
    assert info.value.field == "default_ttl"
    assert YokedCache(CacheConfig(default_ttl=10), default_ttl=20).config.default_ttl == 20


# --- helpers used above must stay honest ---------------------------------------------------------------


def test_the_forged_payload_would_run_code_if_unpickled() -> None:
    payload = forged_pickle()
    assert pickle.loads(payload) == "pwned"
    assert UNPICKLED == ["pwned"]
    UNPICKLED.clear()
