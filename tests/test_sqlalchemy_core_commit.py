"""A commit on a connection that stays open is published before ``commit()`` returns, and only a commit
that happened is published.

Every read goes through a caching session on another pooled connection, while the writing connection is
still checked out and idle: nothing but the commit itself can have published the writes.
"""

from __future__ import annotations

import sqlite3
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from sqlalchemy import Column, ForeignKey, Integer, MetaData, Table, create_engine, exc, select, text, update
from sqlalchemy.orm import Session

from yokedcache import CacheConnectionError, YokedCache
from yokedcache.sqlalchemy import cache_queries

from .test_sqlalchemy_async import AsyncEnv, aenv  # noqa: F401  (the aenv fixture)
from .test_sqlalchemy_support import (
    Base,
    Env,
    Label,
    env_fixture,  # noqa: F401  (the env fixture)
    pg_schema_fixture,  # noqa: F401  (the pg_schema fixture)
    seed,
)

SEEDED = ["python", "sql"]
POSTGRES_ONLY = pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)


def label_names(session: Session) -> list[str]:
    return list(session.scalars(select(Label.name).order_by(Label.id)))


def read(env: Env) -> tuple[list[str], int]:
    """The labels as a fresh caching session sees them, and how many statements that took (0: a hit)."""
    env.sql()
    with env.session() as session:
        names = label_names(session)
    return names, env.sql()


def warm(env: Env) -> None:
    assert read(env) == (SEEDED, 1)
    assert read(env) == (SEEDED, 0)


def test_conn_commit_publishes_before_it_returns(env: Env) -> None:
    warm(env)
    with env.engine.connect() as conn:
        conn.execute(update(Label).where(Label.id == 1).values(name="core"))
        conn.commit()
        assert read(env) == (["core", "sql"], 1)
    assert read(env) == (["core", "sql"], 0)


@POSTGRES_ONLY
def test_another_process_sees_the_invalidation_before_the_connection_closes(
    env: Env, redis_url: str, prefix: str
) -> None:
    warm(env)
    keys = env.cache.get_keys_by_tag_sync("table:yc_labels")
    # Same Redis, same prefix, never registered with this process's engines: it learns only from the tokens.
    other = YokedCache(redis_url=redis_url, key_prefix=prefix, ttl_jitter_percent=0)
    missing = object()
    try:
        assert keys
        assert all(other.get_sync(key, missing) is not missing for key in keys)
        with env.engine.connect() as conn:
            conn.execute(update(Label).where(Label.id == 2).values(name="elsewhere"))
            conn.commit()
            assert [other.get_sync(key, missing) for key in keys] == [missing] * len(keys)
    finally:
        other.disconnect_sync()


async def test_async_conn_commit_publishes_before_it_returns(aenv: AsyncEnv) -> None:  # noqa: F811
    async def names() -> tuple[list[str], int]:
        aenv.sql()
        async with aenv.session() as session:
            found = list(await session.scalars(select(Label.name).order_by(Label.id)))
        return found, aenv.sql()

    assert await names() == (SEEDED, 1)
    assert await names() == (SEEDED, 0)
    async with aenv.engine.connect() as conn:
        await conn.execute(update(Label).where(Label.id == 1).values(name="async"))
        await conn.commit()
        assert await names() == (["async", "sql"], 1)
    assert await names() == (["async", "sql"], 0)


def test_a_session_bound_to_a_connection_kept_open_publishes_at_its_commit(env: Env) -> None:
    warm(env)
    with env.engine.connect() as conn:
        with Session(bind=conn) as writer:  # a plain session: no caching state, no after_commit publication
            writer.get_one(Label, 2).name = "orm"
            writer.commit()
        assert not conn.closed
        assert read(env) == (["python", "orm"], 1)


def test_a_rollback_on_a_connection_kept_open_publishes_nothing(env: Env) -> None:
    warm(env)
    with env.engine.connect() as conn:
        conn.execute(update(Label).where(Label.id == 1).values(name="kept"))
        conn.commit()
        assert read(env) == (["kept", "sql"], 1)
        conn.execute(update(Label).where(Label.id == 2).values(name="undone"))
        conn.rollback()
        assert read(env) == (["kept", "sql"], 0)
    assert read(env) == (["kept", "sql"], 0)


@pytest.fixture
def deferred_child(env: Env) -> Iterator[Table]:
    """A child table whose foreign key PostgreSQL checks only at commit; dropped afterwards."""
    suffix = uuid.uuid4().hex[:10]
    metadata = MetaData()
    parent = Table(f"yc_parent_{suffix}", metadata, Column("id", Integer, primary_key=True))
    child = Table(
        f"yc_child_{suffix}",
        metadata,
        Column("id", Integer, primary_key=True),
        Column("parent_id", Integer, ForeignKey(parent.c.id, deferrable=True, initially="DEFERRED")),
    )
    metadata.create_all(env.engine)
    with env.engine.begin() as conn:
        conn.execute(parent.insert().values(id=1))
        conn.execute(child.insert().values(id=1, parent_id=1))
    yield child
    metadata.drop_all(env.engine)


@POSTGRES_ONLY
def test_a_commit_the_database_refuses_publishes_nothing_then_or_later(
    env: Env, deferred_child: Table
) -> None:
    def child_ids() -> tuple[list[int], int]:
        env.sql()
        with env.session() as session:
            found = list(session.scalars(select(deferred_child.c.id).order_by(deferred_child.c.id)))
        return found, env.sql()

    assert child_ids() == ([1], 1)
    assert child_ids() == ([1], 0)
    with env.engine.connect() as conn:
        conn.execute(deferred_child.insert().values(id=2, parent_id=99))
        with pytest.raises(exc.IntegrityError):
            conn.commit()
        conn.rollback()
        assert child_ids() == ([1], 0)
    assert child_ids() == ([1], 0)  # nor when the connection goes back to the pool: nothing was committed


@POSTGRES_ONLY
def test_a_commit_that_loses_its_connection_invalidates_all_the_same(env: Env) -> None:
    warm(env)
    with env.engine.connect() as conn:
        conn.execute(update(Label).where(Label.id == 1).values(name="lost"))
        pid = conn.execute(text("SELECT pg_backend_pid()")).scalar_one()
        with env.engine.connect() as admin:
            assert admin.execute(text("SELECT pg_terminate_backend(:pid, 5000)"), {"pid": pid}).scalar_one()
        with pytest.raises(exc.OperationalError) as raised:
            conn.commit()
        assert raised.value.connection_invalidated
        # The client cannot know whether COMMIT was applied, so the entry must not be trusted.
        assert read(env) == (SEEDED, 1)


def test_a_publication_that_fails_with_fallback_off_is_raised_by_commit(
    own_redis: Any, tmp_path: Any
) -> None:
    engine = create_engine(f"sqlite:///{tmp_path}/fallback_off.sqlite")
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        seed(session)
    cache = YokedCache(
        redis_url=own_redis.url, key_prefix="off", fallback_enabled=False, operation_timeout=0.3,
        connection_timeout=1.0, ttl_jitter_percent=0,
    )  # fmt: skip
    try:
        with cache_queries(Session(engine), cache=cache) as session:
            assert label_names(session) == SEEDED
        own_redis.stop()
        with engine.connect() as conn:
            conn.execute(update(Label).where(Label.id == 1).values(name="unpublished"))
            with pytest.raises(CacheConnectionError):
                conn.commit()
            conn.rollback()  # SQLAlchemy keeps a transaction whose commit raised until it is rolled back
        with Session(engine) as plain:
            assert label_names(plain) == ["unpublished", "sql"]  # the database commit itself went through
    finally:
        cache.disconnect_sync()
        engine.dispose()


class _InterruptedAfterCommit(sqlite3.Connection):
    """A driver connection whose next ``commit()`` is interrupted right after the database committed."""

    interruption: type[BaseException] | None = None

    def commit(self) -> None:
        super().commit()
        interruption, type(self).interruption = type(self).interruption, None
        if interruption is not None:
            raise interruption("interrupted after the database committed")


@pytest.mark.parametrize("interruption", [KeyboardInterrupt, RuntimeError, TimeoutError])
def test_a_commit_interrupted_after_the_database_committed_is_published(
    tmp_path: Any, interruption: type[BaseException]
) -> None:
    """Whether an interrupted commit went through is unknown to the caller, so it counts as one: an
    ordinary exception publishes at once, an interruption when the connection goes back to the pool."""
    database = f"sqlite:///{tmp_path}/interrupted.sqlite"
    engine = create_engine(database, connect_args={"factory": _InterruptedAfterCommit})
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        seed(session)
    cache = YokedCache(key_prefix=f"int{uuid.uuid4().hex[:8]}", ttl_jitter_percent=0)
    try:
        for _ in range(2):
            with cache_queries(Session(engine), cache=cache) as session:
                assert label_names(session) == SEEDED
        with cache_queries(Session(engine), cache=cache) as writer:
            writer.execute(update(Label).where(Label.id == 1).values(name="interrupted"))
            _InterruptedAfterCommit.interruption = interruption
            with pytest.raises(interruption):
                writer.commit()
        with Session(engine) as plain:
            assert label_names(plain) == ["interrupted", "sql"]  # the database did commit
        with cache_queries(Session(engine), cache=cache) as session:
            assert label_names(session) == ["interrupted", "sql"]
    finally:
        engine.dispose()
