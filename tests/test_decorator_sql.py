"""``@cached`` around SQLAlchemy code, on SQLite and PostgreSQL, with the memory backend and Redis.

Hits and misses are told apart by the SQL statements the database actually received (a
``before_cursor_execute`` listener), and ORM results must come back as the mapped classes with every
column attribute that was loaded.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

sqlalchemy = pytest.importorskip("sqlalchemy")

from sqlalchemy import Boolean, Column, DateTime, ForeignKey, Integer, String, Text, event, inspect, text  # noqa: E402
from sqlalchemy.orm import (  # noqa: E402
    DeclarativeBase,
    Session,
    joinedload,
    relationship,
    sessionmaker,
)
from sqlalchemy.orm.exc import DetachedInstanceError  # noqa: E402

from yokedcache import YokedCache, cached  # noqa: E402


class Base(DeclarativeBase):
    pass


class Author(Base):
    __tablename__ = "yc_dec_authors"
    id = Column(Integer, primary_key=True)
    username = Column(String(50), unique=True)
    email = Column(String(100))
    is_active = Column(Boolean, default=True)
    created_at = Column(DateTime, default=lambda: dt.datetime(2024, 1, 2, 3, 4, 5, 678901))
    articles = relationship("Article", back_populates="author")


class Article(Base):
    __tablename__ = "yc_dec_articles"
    id = Column(Integer, primary_key=True)
    title = Column(String(200))
    body = Column(Text)
    published = Column(Boolean, default=False)
    author_id = Column(Integer, ForeignKey("yc_dec_authors.id"))
    author = relationship("Author", back_populates="articles")


def psycopg2_url(url: str) -> str:
    """SQLAlchemy 2.1 maps ``postgresql://`` to psycopg 3; the environment provides psycopg2."""
    return "postgresql+psycopg2://" + url.split("://", 1)[1] if url.startswith("postgresql://") else url


COLUMNS = ("id", "username", "email", "is_active", "created_at")


class Database:
    def __init__(self, url: str, connect_args: dict[str, Any]) -> None:
        self.engine = sqlalchemy.create_engine(url, connect_args=connect_args)
        self.Session = sessionmaker(bind=self.engine, expire_on_commit=False)
        self.statements: list[str] = []
        event.listen(self.engine, "before_cursor_execute", self._count)

    def _count(self, conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
        self.statements.append(statement)

    def count(self) -> int:
        return len(self.statements)


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Database]:
    if request.param == "sqlite":
        database = Database(f"sqlite:///{tmp_path / 'dec.db'}", {})
        schema = None
    else:
        url = psycopg2_url(request.getfixturevalue("postgres_url"))
        schema = f"yc_dec_{uuid.uuid4().hex[:10]}"
        admin = sqlalchemy.create_engine(url)
        with admin.begin() as conn:
            conn.execute(text(f"CREATE SCHEMA {schema}"))
        database = Database(url, {"options": f"-csearch_path={schema}"})
    Base.metadata.create_all(database.engine)
    with database.Session() as session:
        authors = [Author(id=i, username=f"user{i}", email=f"u{i}@example.com") for i in range(1, 4)]
        session.add_all(authors)
        session.add_all(
            [
                Article(id=i, title=f"title {i}", body="x" * 50, published=i % 2 == 1, author_id=1)
                for i in range(1, 5)
            ]
        )
        session.commit()
    database.statements.clear()
    yield database
    database.engine.dispose()
    if schema is not None:
        with admin.begin() as conn:
            conn.execute(text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


class AuthorRepository:
    executions = 0

    def __init__(self, session: Session) -> None:
        self.session = session

    @cached(ttl=600, tags=["authors"])
    async def get_by_id(self, author_id: int) -> Author | None:
        AuthorRepository.executions += 1
        return self.session.query(Author).filter(Author.id == author_id).first()

    @cached(ttl=600, tags=["authors"])
    async def active(self, limit: int = 50) -> list[Author]:
        return (
            self.session.query(Author)
            .filter(Author.is_active.is_(True))
            .order_by(Author.id)
            .limit(limit)
            .all()
        )


class ArticleRepository:
    def __init__(self, session: Session) -> None:
        self.session = session

    @cached(ttl=600, tags=["articles"])
    async def get_by_id(self, article_id: int) -> Article | None:
        return self.session.query(Article).filter(Article.id == article_id).first()

    @cached(ttl=600, tags=["articles", "authors"])
    async def published_with_authors(self) -> list[Article]:
        return (
            self.session.query(Article)
            .options(joinedload(Article.author))
            .filter(Article.published.is_(True))
            .order_by(Article.id)
            .all()
        )


@pytest.fixture
def default(cache: YokedCache) -> Iterator[YokedCache]:
    from yokedcache import set_default_cache

    set_default_cache(cache)
    yield cache
    set_default_cache(None)


def assert_same_columns(cached_obj: Any, original: dict[str, Any]) -> None:
    assert type(cached_obj) is Author
    assert {c: getattr(cached_obj, c) for c in COLUMNS} == original


async def test_repository_returns_mapped_instances_and_hits_send_no_sql(
    db: Database, default: YokedCache
) -> None:
    with db.Session() as session:
        repo = AuthorRepository(session)
        before = db.count()
        first = await repo.get_by_id(1)
        assert db.count() - before == 1
        assert first is not None
        original = {c: getattr(first, c) for c in COLUMNS}
    with db.Session() as other_session:  # another instance, another session: the entry is shared
        before = db.count()
        again = await AuthorRepository(other_session).get_by_id(1)
        assert db.count() == before  # a hit sends no SQL at all
    assert_same_columns(again, original)
    assert isinstance(again.created_at, dt.datetime) and again.created_at.microsecond == 678901
    assert inspect(again).detached
    with pytest.raises(DetachedInstanceError):
        _ = again.articles  # not loaded when cached: raises instead of silently querying


async def test_lists_of_instances_and_loaded_relationships(db: Database, default: YokedCache) -> None:
    with db.Session() as session:
        authors = await AuthorRepository(session).active()
        articles = await ArticleRepository(session).published_with_authors()
        expected_authors = [{c: getattr(a, c) for c in COLUMNS} for a in authors]
        expected_articles = [(a.id, a.title, a.author.username) for a in articles]
    before = db.count()
    with db.Session() as session:
        cached_authors = await AuthorRepository(session).active()
        cached_articles = await ArticleRepository(session).published_with_authors()
    assert db.count() == before
    assert type(cached_authors) is list and len(cached_authors) == 3
    for obj, original in zip(cached_authors, expected_authors):
        assert_same_columns(obj, original)
    assert [type(a) for a in cached_articles] == [Article, Article]
    assert [(a.id, a.title, a.author.username) for a in cached_articles] == expected_articles
    assert cached_articles[0].author is cached_articles[1].author  # shared identity kept


async def test_repositories_of_different_classes_never_share(db: Database, default: YokedCache) -> None:
    with db.Session() as session:
        author = await AuthorRepository(session).get_by_id(1)
        article = await ArticleRepository(session).get_by_id(1)
        assert type(author) is Author and type(article) is Article
        assert type(await AuthorRepository(session).get_by_id(1)) is Author
        assert type(await ArticleRepository(session).get_by_id(1)) is Article


async def test_invalidation_makes_the_next_call_query_again(db: Database, default: YokedCache) -> None:
    with db.Session() as session:
        repo = AuthorRepository(session)
        await repo.get_by_id(2)
        session.query(Author).filter(Author.id == 2).update({"email": "changed@example.com"})
        session.commit()
        before = db.count()
        again = await repo.get_by_id(2)  # the commit retired the entry: get_by_id read the authors table
        assert db.count() - before == 1
        assert again is not None and again.email == "changed@example.com"
        await repo.get_by_id(2)
        assert db.count() - before == 1  # cached again
        await default.invalidate_tags(["authors"])
        fresh = await repo.get_by_id(2)
        assert db.count() - before == 2
        assert fresh is not None and fresh.email == "changed@example.com"


async def test_session_arguments_are_left_out_of_the_key(db: Database, cache: YokedCache) -> None:
    @cached(cache=cache, ttl=60, tags=["authors"])
    async def get_author(session: Session, author_id: int) -> Author | None:
        return session.get(Author, author_id)

    with db.Session() as one:
        await get_author(one, 3)
    before = db.count()
    with db.Session() as two:
        found = await get_author(two, 3)
    assert db.count() == before
    assert found is not None and found.username == "user3"


def test_sync_functions_with_a_sync_session(db: Database, sync_cache: YokedCache) -> None:
    @cached(cache=sync_cache, ttl=60, tags=["authors"])
    def usernames(session: Session, active: bool = True) -> list[str]:
        return [
            a.username for a in session.query(Author).filter(Author.is_active.is_(active)).order_by(Author.id)
        ]

    with db.Session() as session:
        assert usernames(session) == ["user1", "user2", "user3"]
        before = db.count()
        assert usernames(session, active=True) == ["user1", "user2", "user3"]
        assert db.count() == before


async def test_orm_instance_argument_is_keyed_by_identity(db: Database, cache: YokedCache) -> None:
    """An ORM instance argument is keyed by class + identity, but its state was loaded before the call and
    may predate the latest commit, so the value is computed and returned, never stored (pass the primary
    key instead to cache it)."""
    runs: list[int] = []

    @cached(cache=cache, ttl=60, tags=["articles"])
    async def titles_of(author: Author) -> list[str]:
        runs.append(author.id)
        return sorted(a.title for a in author.articles)

    with db.Session() as one:
        author = one.get(Author, 1)
        assert titles_of.cache_key(author) == titles_of.cache_key(one.get(Author, 1))
        assert titles_of.cache_key(author) != titles_of.cache_key(one.get(Author, 2))
        assert await titles_of(author) == ["title 1", "title 2", "title 3", "title 4"]
    with db.Session() as two:
        await titles_of(two.get(Author, 1))
        await titles_of(two.get(Author, 2))
    assert runs == [1, 1, 2]
    assert await cache.get_all_keys() == []


async def test_cached_instances_can_be_merged_back_without_sql(db: Database, default: YokedCache) -> None:
    with db.Session() as session:
        await AuthorRepository(session).get_by_id(1)
    with db.Session() as session:
        detached = await AuthorRepository(session).get_by_id(1)
        before = db.count()
        attached = session.merge(detached, load=False)
        assert db.count() == before
        assert attached.username == "user1"
        assert attached in session
