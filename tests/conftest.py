"""Shared fixtures: real Redis and PostgreSQL, isolated by a fresh key prefix per test.

With CI=true a missing service fails the run; elsewhere the tests that need it skip with the reason.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest

REDIS_URL = os.environ.get("YOKEDCACHE_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
POSTGRES_URL = os.environ.get("YOKEDCACHE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
MARIADB_URL = os.environ.get("YOKEDCACHE_TEST_MARIADB_URL", "mysql+pymysql://root@127.0.0.1:3306/test")
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")


def _redis_reachable() -> str | None:
    try:
        import redis

        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=1).ping()
        return None
    except Exception as exc:  # pragma: no cover - depends on the machine
        return f"Redis not reachable at {REDIS_URL}: {exc}"


def _postgres_reachable() -> str | None:
    try:
        import psycopg2

        psycopg2.connect(POSTGRES_URL, connect_timeout=2).close()
        return None
    except Exception as exc:  # pragma: no cover
        return f"PostgreSQL not reachable at {POSTGRES_URL}: {exc}"


def _mariadb_reachable() -> str | None:
    try:
        from sqlalchemy import create_engine

        engine = create_engine(MARIADB_URL, connect_args={"connect_timeout": 2})
        with engine.connect():
            pass
        engine.dispose()
        return None
    except Exception as exc:  # pragma: no cover
        return f"MariaDB not reachable at {MARIADB_URL}: {exc}"


def _need(reason: str | None) -> None:
    if reason is None:
        return
    if IN_CI:
        pytest.fail(f"CI=true and a required service is missing: {reason}")
    pytest.skip(reason)


@pytest.fixture(scope="session")
def redis_url() -> str:
    _need(_redis_reachable())
    return REDIS_URL


@pytest.fixture(scope="session")
def postgres_url() -> str:
    _need(_postgres_reachable())
    return POSTGRES_URL


@pytest.fixture(scope="session")
def mariadb_url() -> str:
    _need(_mariadb_reachable())
    return MARIADB_URL


@pytest.fixture(autouse=True)
def _no_yokedcache_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """A developer's YOKEDCACHE_* variables must not change what the tests see."""
    for name in list(os.environ):
        if name.startswith("YOKEDCACHE_") and not name.startswith("YOKEDCACHE_TEST_"):
            monkeypatch.delenv(name)


@pytest.fixture
def prefix() -> str:
    return f"yct{uuid.uuid4().hex[:10]}"


@pytest.fixture(params=["memory", "redis"])
def backend_kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def cache_config(backend_kind: str, prefix: str, request: pytest.FixtureRequest) -> dict[str, object]:
    """Keyword arguments for a YokedCache on the parametrized backend.

    ``operation_timeout`` is generous: on a loaded machine a batch (or 50 concurrent calls) can take longer
    than the 0.5 s default, and a timed-out operation silently degrades to a miss or an unstored value,
    failing tests that are not about timeouts. Tests of the timeout set their own.
    """
    options: dict[str, object] = {"key_prefix": prefix, "ttl_jitter_percent": 0, "operation_timeout": 5.0}
    if backend_kind == "redis":
        options["redis_url"] = request.getfixturevalue("redis_url")
    return options


@pytest.fixture
async def cache(cache_config: dict[str, object]) -> AsyncIterator[object]:
    from yokedcache import YokedCache

    instance = YokedCache(**cache_config)
    yield instance
    await instance.flush_all()
    await instance.disconnect()


@pytest.fixture
def sync_cache(cache_config: dict[str, object]) -> Iterator[object]:
    from yokedcache import YokedCache

    instance = YokedCache(**cache_config)
    yield instance
    instance.flush_all_sync()
    instance.disconnect_sync()


@pytest.fixture
def own_redis() -> Iterator[object]:
    """A redis-server of this test's own, on a free port."""
    from tests.redis_server import RedisServer

    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture(params=["async", "sync"])
def face(request: pytest.FixtureRequest) -> str:
    """Which face of the API a test drives: the async methods or their ``*_sync`` twins."""
    return str(request.param)


@pytest.fixture
def api(cache: object, face: str) -> object:
    from tests.api_faces import Api

    return Api(cache, face)  # type: ignore[arg-type]
