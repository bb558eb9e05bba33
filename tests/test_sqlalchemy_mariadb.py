"""MariaDB, whose default isolation level is REPEATABLE READ: its sessions are cached, and a transaction's
misses are stored only under the tokens captured when it began (its snapshot's start)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import Integer, String, create_engine, select, text, update
from sqlalchemy.engine import Engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from yokedcache import YokedCache, cached
from yokedcache.sqlalchemy import cache_queries

from .test_sqlalchemy_support import Statements, make_cache

SUFFIX = uuid.uuid4().hex[:8]


class Base(DeclarativeBase):
    pass


class Item(Base):
    __tablename__ = f"yc_mdb_items_{SUFFIX}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(40))


class Note(Base):
    __tablename__ = f"yc_mdb_notes_{SUFFIX}"
    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    body: Mapped[str] = mapped_column(String(40))


@dataclass
class MariaEnv:
    engine: Engine
    cache: YokedCache
    statements: Statements

    def session(self) -> Session:
        return cache_queries(Session(self.engine), cache=self.cache)

    def sql(self) -> int:
        return self.statements.take()


@pytest.fixture
def menv(mariadb_url: str, prefix: str, request: pytest.FixtureRequest) -> Iterator[MariaEnv]:
    engine = create_engine(mariadb_url)
    Base.metadata.drop_all(engine)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all([Item(id=1, name="anvil"), Item(id=2, name="rope"), Note(id=1, body="n")])
        session.commit()
    assert engine.dialect.default_isolation_level == "REPEATABLE READ"
    cache = make_cache("redis", prefix, request)
    yield MariaEnv(engine, cache, Statements().attach(engine))
    cache.flush_all_sync()
    cache.disconnect_sync()
    Base.metadata.drop_all(engine)
    engine.dispose()


def names(session: Session) -> list[str]:
    return list(session.scalars(select(Item.name).order_by(Item.id)))


def rename(env: MariaEnv, item_id: int, name: str) -> None:
    with env.session() as writer:
        item = writer.get(Item, item_id)
        assert item is not None
        item.name = name
        writer.commit()


def test_default_repeatable_read_sessions_are_cached_and_invalidated(menv: MariaEnv) -> None:
    for _ in range(3):
        with menv.session() as session:
            assert names(session) == ["anvil", "rope"]
    assert menv.sql() == 1
    rename(menv, 2, "chain")
    menv.sql()
    for _ in range(2):
        with menv.session() as session:
            assert names(session) == ["anvil", "chain"]
    assert menv.sql() == 1


def test_a_miss_from_a_snapshot_older_than_a_commit_is_not_stored(menv: MariaEnv) -> None:
    with menv.session() as reader:
        reader.execute(select(Note.body)).all()  # InnoDB takes the snapshot at the first consistent read
        rename(menv, 1, "hammer")
        assert names(reader) == ["anvil", "rope"]  # the snapshot's rows
    menv.sql()
    with menv.session() as session:
        assert names(session) == ["hammer", "rope"]
    assert menv.sql() == 1  # a miss: the snapshot's rows were not stored


def test_cached_through_a_plain_repeatable_read_session(menv: MariaEnv) -> None:
    """@cached over a plain session: tokens captured before the transaction's first statement."""
    computed: list[list[str]] = []
    commit_in_between = [True]

    @cached(cache=menv.cache, ttl=60)
    def item_names() -> list[str]:
        with Session(menv.engine) as session:
            session.execute(select(Note.body)).all()  # the snapshot
            if commit_in_between.pop() if commit_in_between else False:
                writer = threading.Thread(target=rename, args=(menv, 2, "cable"))  # not part of this call
                writer.start()
                writer.join()
            computed.append(names(session))
            return computed[-1]

    assert item_names() == ["anvil", "rope"]  # the snapshot predates the commit...
    assert item_names() == ["anvil", "cable"]  # ...so it was not stored: computed again
    assert item_names() == ["anvil", "cable"]  # this one was stored
    assert computed == [["anvil", "rope"], ["anvil", "cable"]]


def xa_rename(conn: Any, item_id: int, name: str, *, commit: bool) -> None:
    """An XA transaction renaming one item, prepared, then committed or rolled back."""
    transaction = conn.begin_twophase()
    conn.execute(update(Item).where(Item.id == item_id).values(name=name))
    transaction.prepare()
    if commit:
        transaction.commit()
    else:
        transaction.rollback()


def test_two_phase_commits_publish_before_they_return(menv: MariaEnv) -> None:
    """XA transactions commit through ``do_commit_twophase``, not ``do_commit``: published all the same."""
    for _ in range(2):
        with menv.session() as session:
            assert names(session) == ["anvil", "rope"]
    with cache_queries(Session(menv.engine, twophase=True), cache=menv.cache) as writer:
        item = writer.get(Item, 1)
        assert item is not None
        item.name = "sledge"
        writer.commit()
    with menv.session() as session:
        assert names(session) == ["sledge", "rope"]
    with menv.engine.connect() as conn:
        xa_rename(conn, 2, "twine", commit=True)
        with menv.session() as session:  # the connection is still open: the commit itself published
            assert names(session) == ["sledge", "twine"]
    with menv.engine.connect() as conn:
        xa_rename(conn, 2, "dropped", commit=False)
    menv.sql()
    with menv.session() as session:
        assert names(session) == ["sledge", "twine"]
    assert menv.sql() == 0  # the rolled-back XA transaction published nothing: still a hit


def test_a_consistent_snapshot_started_by_sql_is_never_stored_as_current(menv: MariaEnv) -> None:
    """START TRANSACTION WITH CONSISTENT SNAPSHOT takes the snapshot at once, before any cached read."""
    with menv.session() as reader:
        reader.execute(text("START TRANSACTION WITH CONSISTENT SNAPSHOT"))
        rename(menv, 1, "hammer")
        assert names(reader) == ["anvil", "rope"]
    with menv.session() as session:
        assert names(session) == ["hammer", "rope"]
