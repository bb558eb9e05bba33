"""AsyncSession: the same caching, with cache I/O awaited inside SQLAlchemy's greenlet."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine
from sqlalchemy.orm import Session, selectinload

from yokedcache import YokedCache
from yokedcache.sqlalchemy import cache_queries

from .test_sqlalchemy_support import (
    Article,
    Author,
    Base,
    Label,
    Statements,
    asyncpg_url,
    clear_tables,
    make_cache,
    pg_engine,
    pg_schema_fixture,  # noqa: F401  (the pg_schema fixture)
    seed,
)


@dataclass
class AsyncEnv:
    engine: AsyncEngine
    cache: YokedCache
    statements: Statements

    def session(self) -> AsyncSession:
        return cache_queries(AsyncSession(self.engine), cache=self.cache)

    def sql(self) -> int:
        return self.statements.take()


@pytest.fixture(params=["aiosqlite+memory", "asyncpg+redis"])
async def aenv(request: pytest.FixtureRequest, tmp_path: Any, prefix: str) -> AsyncIterator[AsyncEnv]:
    driver, backend = request.param.split("+")
    if driver == "asyncpg":
        url, schema = request.getfixturevalue("postgres_url"), request.getfixturevalue("pg_schema")
        sync_engine = pg_engine(url, schema)
        clear_tables(sync_engine)
        settings = {"server_settings": {"search_path": schema}}
        engine = create_async_engine(asyncpg_url(url), connect_args=settings)
    else:
        database = f"{tmp_path}/async.sqlite"
        from sqlalchemy import create_engine

        sync_engine = create_engine(f"sqlite:///{database}")
        Base.metadata.create_all(sync_engine)
        engine = create_async_engine(f"sqlite+aiosqlite:///{database}")
    with Session(sync_engine) as session:
        seed(session)
    sync_engine.dispose()
    cache = make_cache(backend, prefix, request)
    async with engine.connect():
        pass  # the first connection runs the dialect's own setup statements: not counted
    yield AsyncEnv(engine, cache, Statements().attach(engine.sync_engine))
    await cache.flush_all()
    await cache.disconnect()
    await engine.dispose()


async def titles(session: AsyncSession) -> list[tuple[str, list[str]]]:
    statement = select(Author).options(selectinload(Author.articles)).order_by(Author.id)
    authors = (await session.execute(statement)).scalars().all()
    return [(a.name, [article.title for article in a.articles]) for a in authors]


async def test_hits_send_no_sql(aenv: AsyncEnv) -> None:
    expected = [("ada", ["first", "second"]), ("bob", ["third"])]
    for _ in range(2):
        async with aenv.session() as session:
            assert await titles(session) == expected
            assert (await session.get(Label, 2)).name == "sql"
            assert await session.scalar(select(Article.title).where(Article.id == 3)) == "third"
    assert aenv.sql() == 4  # first round: authors, their articles (selectin), label, title; then none


async def test_commit_publishes_before_it_returns_without_the_sync_client(
    aenv: AsyncEnv, monkeypatch: pytest.MonkeyPatch
) -> None:
    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("an AsyncSession must not block the event loop on the sync client")

    for name in ("invalidate_tags_sync", "get_sync", "get_or_capture_sync", "capture_tokens_sync"):
        monkeypatch.setattr(aenv.cache, name, refuse)
    monkeypatch.setattr(aenv.cache, "store_computed_sync", refuse)
    async with aenv.session() as session:
        await titles(session)
    async with aenv.session() as session:
        (await session.get(Article, 3)).title = "renamed"
        await session.execute(update(Author).where(Author.id == 1).values(name="ada l."))
        await session.commit()
    async with aenv.session() as session:
        assert await titles(session) == [("ada l.", ["first", "second"]), ("bob", ["renamed"])]


@pytest.mark.parametrize("aenv", ["asyncpg+redis"], indirect=True)
async def test_a_snapshot_transaction_stores_only_under_its_start_tokens(aenv: AsyncEnv) -> None:
    """REPEATABLE READ on asyncpg: cached like any session, but a miss read from a snapshot older than a
    commit is not stored (its tokens were captured when the transaction began)."""
    engine = aenv.engine.execution_options(isolation_level="REPEATABLE READ")
    async with cache_queries(AsyncSession(engine), cache=aenv.cache) as reader:
        await reader.execute(select(Author.id))  # the snapshot is taken here
        async with aenv.session() as writer:
            (await writer.get(Label, 1)).name = "renamed"
            await writer.commit()
        old = (await reader.execute(select(Label).order_by(Label.id))).scalars().all()
        assert [label.name for label in old] == ["python", "sql"]
    aenv.sql()
    for _ in range(2):
        async with cache_queries(AsyncSession(engine), cache=aenv.cache) as session:
            fresh = (await session.execute(select(Label).order_by(Label.id))).scalars().all()
            assert [label.name for label in fresh] == ["renamed", "sql"]
    assert aenv.sql() == 1  # the old rows were not stored; the new ones were, and then hit


async def test_rollback_and_savepoints(aenv: AsyncEnv) -> None:
    async with aenv.session() as session:
        await titles(session)
    async with aenv.session() as session:
        (await session.get(Author, 2)).name = "rolled back"
        await session.flush()
        await session.rollback()
    aenv.sql()
    async with aenv.session() as session:
        assert await titles(session) == [("ada", ["first", "second"]), ("bob", ["third"])]
    assert aenv.sql() == 0
    async with aenv.session() as session:
        async with session.begin_nested():
            (await session.get(Author, 2)).name = "kept"
        nested = await session.begin_nested()
        (await session.get(Article, 1)).title = "dropped"
        await nested.rollback()
        await session.commit()
    async with aenv.session() as session:
        assert await titles(session) == [("ada", ["first", "second"]), ("kept", ["third"])]
