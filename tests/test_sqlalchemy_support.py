"""Models, databases and helpers shared by the SQLAlchemy integration tests (this module has no tests).

Every test runs against a real database: a fresh SQLite file, or a PostgreSQL schema created for this test
session (so concurrent test runs on the same server never see each other's tables). SQL statements are
counted with a ``before_cursor_execute`` listener, which is how the tests tell hits from misses.
"""

from __future__ import annotations

import datetime as dt
import decimal
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
from sqlalchemy import (
    Boolean,
    Column,
    DateTime,
    Engine,
    ForeignKey,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    create_engine,
    event,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, relationship

from yokedcache import YokedCache


class Base(DeclarativeBase):
    metadata = MetaData()


article_labels = Table(
    "yc_article_labels",
    Base.metadata,
    Column("article_id", ForeignKey("yc_articles.id", ondelete="CASCADE"), primary_key=True),
    Column("label_id", ForeignKey("yc_labels.id", ondelete="CASCADE"), primary_key=True),
)


class Author(Base):
    __tablename__ = "yc_authors"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(50))
    active: Mapped[bool] = mapped_column(Boolean, default=True)
    balance: Mapped[decimal.Decimal] = mapped_column(Numeric(10, 2), default=decimal.Decimal("0"))
    joined: Mapped[dt.datetime] = mapped_column(DateTime, default=lambda: dt.datetime(2024, 1, 2, 3, 4, 5))
    articles: Mapped[list[Article]] = relationship(back_populates="author", order_by="Article.id")


class Article(Base):
    __tablename__ = "yc_articles"
    id: Mapped[int] = mapped_column(primary_key=True)
    title: Mapped[str] = mapped_column(String(100))
    published: Mapped[bool] = mapped_column(Boolean, default=False)
    author_id: Mapped[int | None] = mapped_column(ForeignKey("yc_authors.id", ondelete="CASCADE"))
    author: Mapped[Author | None] = relationship(back_populates="articles")
    labels: Mapped[list[Label]] = relationship(secondary=article_labels, order_by="Label.id")
    comments: Mapped[list[Comment]] = relationship(order_by="Comment.id", passive_deletes=True)


class Label(Base):
    __tablename__ = "yc_labels"
    id: Mapped[int] = mapped_column(primary_key=True)
    name: Mapped[str] = mapped_column(String(30))


class Comment(Base):
    __tablename__ = "yc_comments"
    id: Mapped[int] = mapped_column(primary_key=True)
    body: Mapped[str] = mapped_column(String(100))
    article_id: Mapped[int | None] = mapped_column(ForeignKey("yc_articles.id", ondelete="SET NULL"))


class Person(Base):
    __tablename__ = "yc_people"
    id: Mapped[int] = mapped_column(primary_key=True)
    kind: Mapped[str] = mapped_column(String(20))
    name: Mapped[str] = mapped_column(String(50))
    __mapper_args__ = {"polymorphic_on": "kind", "polymorphic_identity": "person"}


class Manager(Person):
    __tablename__ = "yc_managers"
    id: Mapped[int] = mapped_column(ForeignKey("yc_people.id"), primary_key=True)
    level: Mapped[int] = mapped_column(Integer)
    __mapper_args__ = {"polymorphic_identity": "manager"}


def seed(session: Session) -> None:
    """Two authors, three articles, two labels, two comments, two people."""
    python, sql = Label(id=1, name="python"), Label(id=2, name="sql")
    ada = Author(id=1, name="ada", balance=decimal.Decimal("10.50"))
    bob = Author(id=2, name="bob", active=False)
    session.add_all([ada, bob])
    session.add_all(
        [
            Article(id=1, title="first", published=True, author=ada, labels=[python, sql]),
            Article(id=2, title="second", published=False, author=ada, labels=[sql]),
            Article(id=3, title="third", published=True, author=bob),
            Comment(id=1, body="nice", article_id=1),
            Comment(id=2, body="meh", article_id=3),
            Person(id=1, kind="person", name="pat"),
            Manager(id=2, name="max", level=3),
        ]
    )
    session.commit()


# --- databases -------------------------------------------------------------------------------------------


@pytest.fixture(name="pg_schema", scope="session")
def pg_schema_fixture(postgres_url: str) -> Iterator[str]:
    """A PostgreSQL schema of our own for this test session, with the tables created; dropped at the end."""
    schema = f"yc_sa_{uuid.uuid4().hex[:10]}"
    admin = create_engine(psycopg2_url(postgres_url))
    with admin.begin() as conn:
        conn.exec_driver_sql(f"CREATE SCHEMA {schema}")
    engine = pg_engine(postgres_url, schema)
    Base.metadata.create_all(engine)
    engine.dispose()
    yield schema
    with admin.begin() as conn:
        conn.exec_driver_sql(f"DROP SCHEMA {schema} CASCADE")
    admin.dispose()


def psycopg2_url(postgres_url: str) -> str:
    """SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3; the fixture's URL is meant for psycopg2."""
    return postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1)


def pg_engine(postgres_url: str, schema: str, **options: Any) -> Engine:
    url = psycopg2_url(postgres_url)
    return create_engine(url, connect_args={"options": f"-csearch_path={schema}"}, **options)


def asyncpg_url(postgres_url: str) -> str:
    return postgres_url.replace("postgresql://", "postgresql+asyncpg://", 1)


def clear_tables(engine: Engine) -> None:
    names = ", ".join(t.name for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            conn.execute(text(f"TRUNCATE {names} CASCADE"))
        else:
            for table in reversed(Base.metadata.sorted_tables):
                conn.execute(table.delete())


def sqlite_savepoints(engine: Engine) -> Engine:
    """pysqlite's own transaction handling breaks SAVEPOINT; SQLAlchemy's documented recipe fixes it."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_connection: Any, record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN")

    return engine


# --- statement counting ----------------------------------------------------------------------------------


@dataclass
class Statements:
    """SQL statements an engine sent, as seen by ``before_cursor_execute``."""

    seen: list[str] = field(default_factory=list)

    def attach(self, engine: Engine) -> Statements:
        event.listen(engine, "before_cursor_execute", self._record)
        return self

    def _record(self, conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.strip().upper() not in ("BEGIN", "COMMIT", "ROLLBACK"):
            self.seen.append(statement)

    def count(self) -> int:
        return len(self.seen)

    def reset(self) -> None:
        self.seen.clear()

    def take(self) -> int:
        """Statements sent since the last call (and start counting again)."""
        count = len(self.seen)
        self.seen.clear()
        return count


@dataclass
class Env:
    """One database and one cache under test."""

    engine: Engine
    cache: YokedCache
    statements: Statements
    database: str

    def session(self, **options: Any) -> Session:
        from yokedcache.sqlalchemy import cache_queries

        return cache_queries(Session(self.engine, **options), cache=self.cache)

    def plain(self) -> Session:
        return Session(self.engine)

    def sql(self) -> int:
        """Statements sent since the last call (and reset the count)."""
        return self.statements.take()


def make_cache(backend: str, prefix: str, request: pytest.FixtureRequest, **options: Any) -> YokedCache:
    if backend == "redis":
        options["redis_url"] = request.getfixturevalue("redis_url")
    return YokedCache(key_prefix=prefix, ttl_jitter_percent=0, **options)


def make_engine(database: str, request: pytest.FixtureRequest, tmp_path: Any, **options: Any) -> Engine:
    if database == "postgres":
        url = request.getfixturevalue("postgres_url")
        engine = pg_engine(url, request.getfixturevalue("pg_schema"), **options)
        clear_tables(engine)
        return engine
    engine = create_engine(f"sqlite:///{tmp_path}/db.sqlite", **options)
    Base.metadata.create_all(engine)
    return engine


@pytest.fixture(name="env", params=["sqlite+memory", "postgres+redis"])
def env_fixture(request: pytest.FixtureRequest, tmp_path: Any, prefix: str) -> Iterator[Env]:
    """A seeded database and a cache: SQLite with the memory backend, PostgreSQL with Redis."""
    database, backend = request.param.split("+")
    engine = make_engine(database, request, tmp_path)
    with Session(engine) as session:
        seed(session)
    cache = make_cache(backend, prefix, request)
    statements = Statements().attach(engine)
    yield Env(engine, cache, statements, database)
    cache.flush_all_sync()
    cache.disconnect_sync()
    engine.dispose()
