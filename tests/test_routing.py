"""Per-prefix routing (API.md §13): Redis by default, ``hot`` keys in memory, tag/pattern/flush/listing
operations spanning both. Redis is the shared test server (``redis_url`` fixture, db 15); every test uses a
fresh key prefix."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.api_faces import Api
from yokedcache import CacheConfig, YokedCache
from yokedcache.backends.memory import MemoryBackend
from yokedcache.backends.redis import RedisBackend
from yokedcache.backends.sqlite import SQLiteBackend


@pytest.fixture(params=["async", "sync"])
def face_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def redis_raw(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


@pytest.fixture
async def routed(redis_url: str, prefix: str) -> AsyncIterator[YokedCache]:
    config = CacheConfig(
        default_backend=RedisBackend(redis_url=redis_url),
        prefix_backends={"hot": MemoryBackend(max_size=1000)},
        key_prefix=prefix,
        ttl_jitter_percent=0,
    )
    cache = YokedCache(config)
    yield cache
    await cache.flush_all()
    await cache.disconnect()


def hot_backend(cache: YokedCache) -> MemoryBackend:
    backend = cache.backends[1]
    assert isinstance(backend, MemoryBackend)
    return backend


def in_redis(raw: Any, cache: YokedCache, key: str) -> bool:
    return bool(raw.exists(f"{cache.config.key_prefix}:{key}"))


def in_memory(cache: YokedCache, key: str) -> bool:
    return hot_backend(cache).get(f"{cache.config.key_prefix}:{key}") is not None


HOT = ["hot", "hot:x", "hot:x:y"]
COLD = ["hotter", "hot_x", "cold", "cold:hot", "x:hot"]


async def test_hot_keys_live_in_memory_only_and_the_rest_in_redis(
    routed: YokedCache, redis_raw: Any, face_name: str
) -> None:
    api = Api(routed, face_name)
    mapping = {key: key.upper() for key in HOT + COLD}
    assert await api("set_many", dict(list(mapping.items())[:4])) is True
    for key, value in list(mapping.items())[4:]:
        assert await api("set", key, value) is True
    for key in HOT:
        assert in_memory(routed, key) and not in_redis(redis_raw, routed, key), key
    for key in COLD:
        assert in_redis(redis_raw, routed, key) and not in_memory(routed, key), key
    assert await api("get_many", list(mapping)) == mapping
    for key, value in mapping.items():
        assert await api("get", key) == value
        assert await api("exists", key) is True
        assert await api("ttl", key) == 300
    assert await api("expire", "hot:x", 50) is True
    assert await api("ttl", "hot:x") == 50
    assert (await api("get_meta", "hot:x"))["key"] == "hot:x"
    assert await api("delete_many", ["hot", "cold", "missing"]) == 2
    assert await api("get_many", ["hot", "cold"]) == {"hot": None, "cold": None}


async def test_tags_patterns_flush_and_listings_span_both_backends(
    routed: YokedCache, redis_raw: Any, redis_url: str, face_name: str
) -> None:
    api = Api(routed, face_name)
    await api("set_many", {"hot:1": 1, "hot:2": 2, "cold:1": 3, "cold:2": 4}, tags=["t"])
    await api("set", "hot:3", 5, tags="u")
    await api("set", "cold:3", 6, tags="u")
    assert sorted(await api("get_all_keys")) == ["cold:1", "cold:2", "cold:3", "hot:1", "hot:2", "hot:3"]
    assert sorted(await api("get_keys_by_pattern", "*:1")) == ["cold:1", "hot:1"]
    assert len(await api("get_all_keys", limit=4)) == 4  # the limit spans backends too
    assert sorted(await api("get_keys_by_tag", "u")) == ["cold:3", "hot:3"]

    assert await api("invalidate_tags", "t") == 4  # two writes on each backend
    assert await api("get_many", ["hot:1", "cold:1", "hot:3"]) == {"hot:1": None, "cold:1": None, "hot:3": 5}
    other = YokedCache(redis_url=redis_url, key_prefix=routed.config.key_prefix)  # another process' view
    assert await other.get("cold:2") is None and await other.get("cold:3") == 6
    await other.disconnect()

    assert await api("invalidate_pattern", "*:3") == 2
    assert await api("get_all_keys") == []

    neighbour = YokedCache(redis_url=redis_url, key_prefix=routed.config.key_prefix + "x")
    await neighbour.set("kept", 1)
    await api("set_many", {"hot:a": 1, "cold:a": 2})
    assert await api("flush_all") is True
    assert await api("get_many", ["hot:a", "cold:a"]) == {"hot:a": None, "cold:a": None}
    assert hot_backend(routed).internal_sizes()["entries"] == 0
    assert not redis_raw.keys(f"{routed.config.key_prefix}:*")  # nothing of this prefix left in Redis
    assert await neighbour.get("kept") == 1  # never the whole database
    await neighbour.flush_all()
    await neighbour.disconnect()


async def test_health_reports_the_routes(routed: YokedCache, face_name: str) -> None:
    api = Api(routed, face_name)
    report = await api("detailed_health_check")
    assert report["status"] == "healthy"
    assert report["backend_type"] == "redis"
    assert report["routes"] == {"hot": "memory"}
    assert report["redis_connected"] is True
    assert await api("health") is True
    plain = YokedCache(backend=MemoryBackend())
    assert "routes" not in plain.detailed_health_check_sync()


async def test_the_longest_prefix_wins(redis_url: str, prefix: str, tmp_path: Path, redis_raw: Any) -> None:
    hot, db = MemoryBackend(), SQLiteBackend(tmp_path / "routes.db")
    cache = YokedCache(
        default_backend=RedisBackend(redis_url=redis_url),
        prefix_backends={"hot": hot, "hot:db": db},
        key_prefix=prefix,
        ttl_jitter_percent=0,
    )
    await cache.set_many({"hot:db": 1, "hot:db:1": 2, "hot:dbx": 3, "hot:1": 4, "other": 5}, tags="t")
    assert db.get(f"{prefix}:hot:db") is not None and db.get(f"{prefix}:hot:db:1") is not None
    assert hot.get(f"{prefix}:hot:dbx") is not None and hot.get(f"{prefix}:hot:1") is not None
    assert hot.get(f"{prefix}:hot:db") is None
    assert raw_keys(redis_raw, prefix) == [f"{prefix}:other"]
    assert sorted(await cache.get_all_keys()) == ["hot:1", "hot:db", "hot:db:1", "hot:dbx", "other"]
    assert (await cache.detailed_health_check())["routes"] == {"hot:db": "sqlite", "hot": "memory"}
    assert await cache.invalidate_tags("t") == 5
    assert await cache.get_all_keys() == []
    await cache.flush_all()
    await cache.disconnect()


def raw_keys(raw: Any, prefix: str) -> list[str]:
    return sorted(k.decode() for k in raw.keys(f"{prefix}:*") if b":__yc__:" not in k)


async def test_routes_with_their_own_key_prefix(redis_url: str, prefix: str, redis_raw: Any) -> None:
    hot = MemoryBackend(key_prefix=prefix + "hot")
    cache = YokedCache(
        default_backend=RedisBackend(redis_url=redis_url),
        prefix_backends={"hot": hot},
        key_prefix=prefix,
        ttl_jitter_percent=0,
    )
    await cache.set("hot:1", 1)
    await cache.set("cold", 2)
    assert hot.get(f"{prefix}hot:hot:1") is not None  # a backend's key_prefix overrides the cache's
    assert cache.full_key("hot:1") == f"{prefix}hot:hot:1"
    assert sorted(await cache.get_all_keys()) == ["cold", "hot:1"]
    await cache.flush_all()
    assert await cache.get_many(["hot:1", "cold"]) == {"hot:1": None, "cold": None}
    await cache.disconnect()


def test_a_redis_outage_leaves_the_memory_route_working(prefix: str) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens there once closed
    dead = RedisBackend(redis_url=f"redis://127.0.0.1:{port}/0", connection_timeout=0.5)
    cache = YokedCache(
        default_backend=dead,
        prefix_backends={"hot": MemoryBackend()},
        key_prefix=prefix,
        connection_retries=0,
    )
    assert cache.set_sync("hot:1", 1) is True
    assert cache.set_sync("cold", 2) is False  # fallback: the failure value
    assert cache.get_sync("hot:1") == 1
    assert cache.health_sync() is False
