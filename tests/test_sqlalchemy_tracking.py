"""Read tracking: a value computed from SQL reads is retired by the commits that change what it read."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import select, text
from sqlalchemy.orm import Session

from yokedcache import YokedCache
from yokedcache.sqlalchemy import reads_of

from .test_sqlalchemy_support import (
    Article,
    Author,
    Env,
    Label,
    env_fixture,  # noqa: F401  (the env fixture)
    pg_schema_fixture,  # noqa: F401  (the pg_schema fixture)
)

MISSING = object()


def computed(cache: YokedCache, key: str, tags: tuple[str, ...], compute: Callable[[], Any]) -> Any:
    """What a caching decorator does with a read frame: tokens first, compute tracked, store merged."""
    found = cache.get_sync(key, MISSING)
    if found is not MISSING:
        return found
    tokens = cache.capture_tokens_sync(tags, key)
    with reads_of(cache, key) as frame:
        value = compute()
    stored_tags, stored_tokens = frame.merge_into(tags, tokens)
    cache.store_computed_sync(key, value, stored_tokens, stored_tags)
    return value


def author_names(env: Env, session: Session) -> Callable[[], list[str]]:
    return lambda: list(session.scalars(select(Author.name).order_by(Author.id)))


@pytest.mark.parametrize("caching", [True, False], ids=["caching session", "plain session"])
def test_a_tracked_value_is_retired_by_commits_to_what_it_read(env: Env, caching: bool) -> None:
    def names() -> list[str]:
        with env.session() if caching else env.plain() as session:
            return computed(env.cache, "fn:names", ("people",), author_names(env, session))

    assert names() == ["ada", "bob"]
    assert names() == ["ada", "bob"]
    with env.session() as session:
        session.get(Label, 1).name = "unrelated"
        session.commit()
    env.sql()
    assert names() == ["ada", "bob"]
    assert env.sql() == 0  # another table's commit left the value alone
    with env.plain() as session:  # any session's commit on a watched database is published
        session.get(Author, 2).name = "robert"
        session.commit()
    assert names() == ["ada", "robert"]
    meta = env.cache.get_meta_sync("fn:names")
    assert meta is not None and set(meta["tags"]) == {"people", "table:*", "table:yc_authors"}


def test_a_hit_from_the_sql_cache_is_tracked_too(env: Env) -> None:
    with env.session() as session:
        author_names(env, session)()  # the SQL cache now holds the query
    env.sql()
    with env.session() as session:
        assert computed(env.cache, "fn:hit", (), author_names(env, session)) == ["ada", "bob"]
    assert env.sql() == 0
    with env.session() as session:
        session.get(Author, 1).name = "al"
        session.commit()
    with env.session() as session:
        assert computed(env.cache, "fn:hit", (), author_names(env, session)) == ["al", "bob"]


def test_lazy_loads_and_nested_computations_add_their_tables(env: Env) -> None:
    def titles() -> list[str]:
        with env.plain() as session:

            def inner() -> str:
                return session.get(Author, 1).name

            first = session.get(Article, 1)
            return [first.author.name, computed(env.cache, "fn:inner", (), inner)]

    assert computed(env.cache, "fn:outer", (), titles) == ["ada", "ada"]
    tags = set(env.cache.get_meta_sync("fn:outer")["tags"])  # type: ignore[index]
    assert {"table:yc_articles", "table:yc_authors"} <= tags


def test_reads_that_cannot_be_named_make_the_value_unstorable(env: Env) -> None:
    with env.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS yc_elsewhere (x INTEGER)")

    def unknown() -> int:
        with env.plain() as session:
            return len(session.execute(text("SELECT x FROM yc_elsewhere")).all())

    assert computed(env.cache, "fn:unknown", (), unknown) == 0
    assert env.cache.get_sync("fn:unknown", MISSING) is MISSING


async def test_frames_follow_async_sessions_into_the_greenlet(tmp_path: Any, cache: YokedCache) -> None:
    from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

    from .test_sqlalchemy_support import Base

    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path}/t.db")
    async with engine.begin() as conn:
        await conn.run_sync(Base.metadata.create_all)
    async with AsyncSession(engine) as session:
        session.add(Label(id=1, name="one"))
        await session.commit()
    tokens = await cache.capture_tokens((), "fn:async")
    with reads_of(cache, "fn:async") as frame:
        async with AsyncSession(engine) as session:
            await session.scalars(select(Label))
    tags, merged = frame.merge_into((), tokens)
    assert "table:yc_labels" in tags and merged is not None
    await engine.dispose()


# --- the tutorial's Pattern 3, end to end ------------------------------------------------------------------


def test_pattern_3_attribute_updates_retire_cached_repository_results(tmp_path: Any, sync_cache: Any) -> None:
    from . import test_dependency as tutorial

    engine = tutorial.create_engine(f"sqlite:///{tmp_path}/p3.db")
    tutorial.Base.metadata.create_all(engine)
    tutorial.SessionLocal.configure(bind=engine)
    tutorial.cache = sync_cache
    tutorial.set_default_cache(sync_cache)
    try:
        with tutorial.SessionLocal() as session:
            session.add(tutorial.User(id=1, username="alice", email="a@example.com", full_name="Alice"))
            session.commit()
        cached_get_session, _, _ = tutorial.pattern_2()

        async def full_name() -> str:
            for db in tutorial.use(cached_get_session):
                return (await tutorial.UserRepository(db).get_by_id(1)).full_name
            raise AssertionError("unreachable")

        assert asyncio.run(full_name()) == "Alice"
        for db in tutorial.use(cached_get_session):
            db.query(tutorial.User).filter(tutorial.User.id == 1).one().full_name = "Alice Liddell"
            db.commit()
        assert asyncio.run(full_name()) == "Alice Liddell"
    finally:
        tutorial.set_default_cache(None)
        engine.dispose()


def test_dependency_values_are_retired_by_commits_to_the_tables_they_read(
    tmp_path: Any, sync_cache: Any
) -> None:
    """A non-session dependency (feature flags read from the database) follows the tables it read."""
    from sqlalchemy import Boolean, Column, String, create_engine, event, select
    from sqlalchemy.orm import Session, declarative_base

    from yokedcache import cached_dependency

    base = declarative_base()

    class Flag(base):  # type: ignore[valid-type, misc]
        __tablename__ = "yc_flags"
        name = Column(String, primary_key=True)
        enabled = Column(Boolean)

    engine = create_engine(f"sqlite:///{tmp_path}/flags.db")
    base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Flag(name="beta", enabled=False))
        session.commit()
    statements = []
    event.listen(engine, "before_cursor_execute", lambda *args: statements.append(args[2]))

    def feature_flags() -> dict[str, bool]:
        with Session(engine) as session:
            return {flag.name: flag.enabled for flag in session.scalars(select(Flag))}

    flags = cached_dependency(feature_flags, cache=sync_cache)
    assert flags() == {"beta": False}
    reads = len(statements)
    assert flags() == {"beta": False}
    assert len(statements) == reads  # served from the cache
    with Session(engine) as session:
        session.get(Flag, "beta").enabled = True
        session.commit()
    assert flags() == {"beta": True}  # the commit to yc_flags retired the cached value
    engine.dispose()


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
@pytest.mark.parametrize("caching", [True, False], ids=["caching session", "plain session"])
def test_a_tracked_value_read_from_a_snapshot_older_than_a_commit_is_not_stored(
    env: Env, caching: bool
) -> None:
    """Inside a REPEATABLE READ transaction, tokens are captured before its first statement (its snapshot),
    never at a later read: a value computed from rows older than a commit cannot be stored."""
    engine = env.engine.execution_options(isolation_level="REPEATABLE READ")

    def rename_bob() -> None:
        with env.plain() as writer:
            writer.get(Author, 2).name = "robert"
            writer.commit()

    def session() -> Session:
        from yokedcache.sqlalchemy import cache_queries

        plain = Session(engine)
        return cache_queries(plain, cache=env.cache) if caching else plain

    def names(commit_in_between: bool) -> list[str]:
        with session() as reader:

            def compute() -> list[str]:
                reader.execute(select(Label.id)).all()  # the snapshot is taken here
                if commit_in_between:  # another thread: its SQL is no part of this computation
                    writer = threading.Thread(target=rename_bob)
                    writer.start()
                    writer.join()
                return list(reader.scalars(select(Author.name).order_by(Author.id)))

            return computed(env.cache, "fn:snapshot-names", ("people",), compute)

    assert names(commit_in_between=True) == ["ada", "bob"]  # what the snapshot shows
    env.sql()
    assert names(commit_in_between=False) == ["ada", "robert"]  # not the old value: it was not stored
    assert env.sql() >= 1
    assert names(commit_in_between=False) == ["ada", "robert"]  # this one was stored
    assert env.sql() == 0


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_a_snapshot_older_than_another_read_of_the_same_table_makes_the_value_unstorable(env: Env) -> None:
    """A computation reads a table through a fresh session (today's token), then from a REPEATABLE READ
    transaction that began before a commit (its start token): the two tokens differ, so the value mixes
    both sides of the commit and is not stored, whichever token came first."""
    older = Session(env.engine.execution_options(isolation_level="REPEATABLE READ"))
    try:
        # its first statement runs inside a computation: start tokens captured, then the snapshot taken
        computed(env.cache, "fn:open-snapshot", (), lambda: older.execute(select(Label.id)).all())
        with env.plain() as writer:
            writer.get(Author, 2).name = "robert"
            writer.commit()

        def mixed() -> list[str]:
            with env.plain() as fresh:
                fresh.execute(select(Author.id)).all()
            return list(older.scalars(select(Author.name).order_by(Author.id)))

        assert computed(env.cache, "fn:mixed", ("people",), mixed) == ["ada", "bob"]  # the snapshot's rows
        assert env.cache.get_sync("fn:mixed", MISSING) is MISSING  # not stored
    finally:
        older.close()


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_rows_fetched_from_a_cursor_make_the_value_unstorable(env: Env) -> None:
    """FETCH names no table (the cursor's query was declared earlier): what it read cannot be tracked."""

    def through_a_cursor() -> list[str]:
        with env.plain() as session:
            session.execute(text("DECLARE names CURSOR FOR SELECT name FROM yc_authors ORDER BY id"))
            return list(session.scalars(text("FETCH ALL FROM names")))

    assert computed(env.cache, "fn:cursor", ("people",), through_a_cursor) == ["ada", "bob"]
    assert env.cache.get_sync("fn:cursor", MISSING) is MISSING
