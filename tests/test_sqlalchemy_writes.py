"""Every way of writing invalidates what it changed, after the outermost commit and only then."""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Column, Integer, MetaData, Table, delete, event, insert, select, text, update
from sqlalchemy.orm import Session, selectinload

from yokedcache.sqlalchemy import cache_queries

from .test_sqlalchemy_support import (
    Article,
    Author,
    Comment,
    Env,
    Label,
    Manager,
    Person,
    article_labels,
    env_fixture,  # noqa: F401  (the env fixture)
    make_cache,
    make_engine,
    pg_schema_fixture,  # noqa: F401  (the pg_schema fixture)
    seed,
    sqlite_savepoints,
)

Query = Callable[[Session], Any]


def label_names(s: Session) -> list[str]:
    return list(s.scalars(select(Label.name).order_by(Label.id)))


def labels_per_article(s: Session) -> list[tuple[int, list[int]]]:
    statement = select(Article).options(selectinload(Article.labels)).order_by(Article.id)
    return [(a.id, [label.id for label in a.labels]) for a in s.scalars(statement)]


def author_names(s: Session) -> list[str]:
    return list(s.scalars(select(Author.name).order_by(Author.id)))


def comment_ids(s: Session) -> list[int]:
    return list(s.scalars(select(Comment.id).order_by(Comment.id)))


def person_ids(s: Session) -> list[int]:
    return list(s.scalars(select(Person.id).order_by(Person.id)))


def article_ids(s: Session) -> list[int]:
    return list(s.scalars(select(Article.id).order_by(Article.id)))


def comment_articles(s: Session) -> list[int | None]:
    return list(s.scalars(select(Comment.article_id).order_by(Comment.id)))


def _keep(obj: Any) -> Any:
    """Hold a strong reference: the identity map is weak, and a lone collection outlives its parent."""
    _kept.append(obj)
    return obj


_kept: list[Any] = []


# name: (the write, a query that must see it, its answer before, its answer after)
WRITES: dict[str, tuple[Callable[[Session], Any], Query, Any, Any]] = {
    "orm insert": (
        lambda s: s.add(Label(id=3, name="orm")),
        label_names,
        ["python", "sql"],
        ["python", "sql", "orm"],
    ),
    "orm update": (
        lambda s: setattr(s.get(Author, 1), "name", "al"),
        author_names,
        ["ada", "bob"],
        ["al", "bob"],
    ),
    "orm delete, link rows cascade": (
        lambda s: s.delete(s.get(Article, 2)),
        labels_per_article,
        [(1, [1, 2]), (2, [2]), (3, [])],
        [(1, [1, 2]), (3, [])],
    ),
    "many-to-many append": (
        lambda s: _keep(s.get(Article, 3)).labels.append(s.get(Label, 1)),
        labels_per_article,
        [(1, [1, 2]), (2, [2]), (3, [])],
        [(1, [1, 2]), (2, [2]), (3, [1])],
    ),
    "many-to-many remove": (
        lambda s: _keep(s.get(Article, 1)).labels.remove(s.get(Label, 2)),
        labels_per_article,
        [(1, [1, 2]), (2, [2]), (3, [])],
        [(1, [1]), (2, [2]), (3, [])],
    ),
    "joined inheritance update": (
        lambda s: setattr(s.get(Manager, 2), "level", 9),
        lambda s: [(m.name, m.level) for m in s.scalars(select(Manager))],
        [("max", 3)],
        [("max", 9)],
    ),
    "orm bulk insert": (
        lambda s: s.execute(insert(Label), [{"id": 7, "name": "bulk"}, {"id": 8, "name": "more"}]),
        label_names,
        ["python", "sql"],
        ["python", "sql", "bulk", "more"],
    ),
    "orm bulk update": (
        lambda s: s.execute(update(Author).where(Author.id == 2).values(name="robert")),
        author_names,
        ["ada", "bob"],
        ["ada", "robert"],
    ),
    "orm bulk delete": (
        lambda s: s.execute(delete(Comment).where(Comment.id == 2)),
        comment_ids,
        [1, 2],
        [1],
    ),
    "core statement on the connection": (
        lambda s: s.connection().execute(article_labels.delete().where(article_labels.c.label_id == 2)),
        labels_per_article,
        [(1, [1, 2]), (2, [2]), (3, [])],
        [(1, [1]), (2, []), (3, [])],
    ),
    "text()": (
        lambda s: s.execute(text("UPDATE yc_authors SET name = 'txt' WHERE id = 1")),
        author_names,
        ["ada", "bob"],
        ["txt", "bob"],
    ),
    "exec_driver_sql, quoted name": (
        lambda s: s.connection().exec_driver_sql('DELETE FROM "yc_comments" WHERE id = 1'),
        comment_ids,
        [1, 2],
        [2],
    ),
    "database cascade (ON DELETE CASCADE)": (
        lambda s: s.execute(text("DELETE FROM yc_authors WHERE id = 2")),
        article_ids,
        [1, 2, 3],
        [1, 2],
    ),
    "database cascade (ON DELETE SET NULL)": (
        lambda s: s.execute(text("DELETE FROM yc_articles WHERE id = 3")),
        comment_articles,
        [1, 3],
        [1, None],
    ),
}


@pytest.mark.parametrize("case", [c for c in WRITES if "database cascade" not in c])
def test_a_committed_write_is_seen_by_the_next_read(env: Env, case: str) -> None:
    _write_then_read(env, case)


def _write_then_read(env: Env, case: str) -> None:
    write, query, before, after = WRITES[case]
    for _ in range(2):  # miss, then hit
        with env.session() as session:
            assert query(session) == before
    with env.session() as session:
        write(session)
        session.commit()
    with env.session() as session:
        assert query(session) == after


@pytest.fixture
def fk_env(env: Env) -> Env:
    if env.database == "sqlite":  # foreign keys (and so database cascades) are opt-in per SQLite connection
        event.listen(env.engine, "connect", lambda dbapi, _: dbapi.execute("PRAGMA foreign_keys=ON"))
        env.engine.dispose()
    return env


@pytest.mark.parametrize("case", [c for c in WRITES if "database cascade" in c])
def test_database_cascades_invalidate_the_child_tables(fk_env: Env, case: str) -> None:
    _write_then_read(fk_env, case)


def test_rollback_invalidates_nothing(env: Env) -> None:
    with env.session() as session:
        label_names(session)
    with env.session() as session:
        session.add(Label(id=5, name="never"))
        session.flush()
        session.rollback()
    env.sql()
    with env.session() as session:
        assert label_names(session) == ["python", "sql"]
    assert env.sql() == 0


def test_a_transaction_reads_its_own_writes_and_other_tables_stay_cached(env: Env) -> None:
    for _ in range(2):
        with env.session() as session:
            label_names(session)
            author_names(session)
    env.sql()
    with env.session() as session:
        session.get(Author, 1).name = "changed"
        session.flush()
        assert author_names(session) == ["changed", "bob"]  # bypassed: this transaction wrote yc_authors
        assert label_names(session) == ["python", "sql"]  # untouched table: still a hit
        assert env.sql() == 3  # get, update, select authors
        with env.plain() as other:
            assert author_names(other) == ["ada", "bob"]  # not committed yet: nothing published
        session.commit()
    with env.session() as session:
        assert author_names(session) == ["changed", "bob"]


def test_autoflush_makes_pending_changes_count_as_writes(env: Env) -> None:
    with env.session() as session:
        author_names(session)
    with env.session() as session:
        session.add(Author(id=3, name="cy"))
        assert author_names(session) == ["ada", "bob", "cy"]
        session.rollback()
    with env.session() as session:
        assert author_names(session) == ["ada", "bob"]


def test_writes_through_plain_connections_and_sessions_are_published(env: Env) -> None:
    with env.session() as session:
        label_names(session)  # a caching session makes this database watched
    with env.engine.begin() as conn:
        conn.execute(update(Label).where(Label.id == 1).values(name="core"))
    with env.session() as session:
        assert label_names(session) == ["core", "sql"]
    with env.plain() as plain:
        plain.get(Label, 2).name = "plain"
        plain.commit()
    with env.session() as session:
        assert label_names(session) == ["core", "plain"]


def test_an_autocommit_connection_publishes_each_statement(env: Env, request: Any, tmp_path: Any) -> None:
    engine = env.engine.execution_options(isolation_level="AUTOCOMMIT")
    with cache_queries(Session(engine), cache=env.cache) as session:
        label_names(session)
    with cache_queries(Session(engine), cache=env.cache) as writer:
        writer.execute(update(Label).where(Label.id == 2).values(name="auto"))
        with env.session() as reader:  # the writer has not committed, but AUTOCOMMIT already did
            assert label_names(reader) == ["python", "auto"]


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)  # DO blocks are PostgreSQL's
def test_an_unresolvable_raw_write_invalidates_everything(env: Env) -> None:
    for _ in range(2):
        with env.session() as session:
            label_names(session)
            author_names(session)
    with env.session() as session:
        session.execute(
            text("DO $$ BEGIN EXECUTE 'UPDATE ' || 'yc_lab' || 'els SET name = ''dyn'' WHERE id = 1'; END $$")
        )
        session.commit()
    env.sql()
    with env.session() as session:
        assert label_names(session) == ["dyn", "sql"]
        author_names(session)
    assert env.sql() == 2


@pytest.mark.parametrize("how", ["text", "metadata"])
def test_ddl_invalidates_the_tables_it_changes(env: Env, how: str) -> None:
    scratch = Table("yc_scratch", MetaData(), Column("x", Integer))
    with env.engine.begin() as conn:
        scratch.drop(conn, checkfirst=True)
        scratch.create(conn)
        conn.execute(scratch.insert(), [{"x": 1}])
    for _ in range(2):
        with env.session() as session:
            assert session.scalars(select(scratch.c.x)).all() == [1]
    with env.session() as session:
        if how == "text":
            session.execute(text("DROP TABLE yc_scratch"))
            session.execute(text("CREATE TABLE yc_scratch (x INTEGER)"))
        else:
            scratch.drop(session.connection())
            scratch.create(session.connection())
        session.commit()
    with env.session() as session:
        assert session.scalars(select(scratch.c.x)).all() == []


# --- savepoints ---------------------------------------------------------------------------------------------

LEVEL_TABLES = [  # the table each nesting level writes, and a cached query of it
    (lambda s: s.add(Label(id=10, name="root")), label_names),
    (lambda s: s.add(Comment(id=10, body="level 1")), comment_ids),
    (lambda s: s.add(Person(id=10, kind="person", name="level 2")), lambda s: person_ids(s)),
    (lambda s: s.get(Author, 2).__setattr__("name", "level 3"), author_names),
]


@pytest.fixture(params=["sqlite", "postgres"])
def savepoint_env(request: pytest.FixtureRequest, tmp_path: Any, prefix: str) -> Any:
    engine = make_engine(request.param, request, tmp_path)
    if request.param == "sqlite":
        sqlite_savepoints(engine)
    with Session(engine) as session:
        seed(session)
    cache = make_cache("memory", prefix, request)
    yield engine, cache
    engine.dispose()


@pytest.mark.parametrize("ends", list(itertools.product(["release", "rollback"], repeat=3)))
@pytest.mark.parametrize("root", ["commit", "rollback"])
def test_savepoints_three_deep(savepoint_env: Any, ends: tuple[str, ...], root: str) -> None:
    engine, cache = savepoint_env
    counter = _Counter(engine)

    def session() -> Session:
        return cache_queries(Session(engine), cache=cache)

    def answers() -> list[Any]:
        with session() as s:
            return [query(s) for _, query in LEVEL_TABLES]

    before = answers()
    with session() as s:
        LEVEL_TABLES[0][0](s)
        s.flush()
        savepoints = []
        for level in (1, 2, 3):
            savepoints.append(s.begin_nested())
            LEVEL_TABLES[level][0](s)
            s.flush()
        for savepoint, end in zip(reversed(savepoints), reversed(ends)):
            savepoint.commit() if end == "release" else savepoint.rollback()
        s.commit() if root == "commit" else s.rollback()

    survived = [root == "commit"]
    for end in ends:  # a level survives if it and every level around it were kept
        survived.append(survived[-1] and end == "release")
    counter.reset()
    after = answers()
    misses = counter.per_query
    with Session(engine) as plain:
        truth = [query(plain) for _, query in LEVEL_TABLES]
    assert after == truth, "a cached answer differs from the database"
    for level, kept in enumerate(survived):
        assert (after[level] != before[level]) == kept
    assert misses == [int(kept) for kept in survived]  # only changed tables were invalidated


class _Counter:
    """SELECTs sent per query of :data:`LEVEL_TABLES`, in order."""

    def __init__(self, engine: Any) -> None:
        self.statements: list[str] = []
        event.listen(engine, "before_cursor_execute", lambda c, cur, st, *a: self.statements.append(st))

    def reset(self) -> None:
        self.statements.clear()

    @property
    def per_query(self) -> list[int]:
        tables = ["yc_labels", "yc_comments", "yc_people", "yc_authors"]
        selects = [s for s in self.statements if s.lstrip().upper().startswith("SELECT")]
        return [sum(1 for s in selects if f"FROM {t}" in s) for t in tables]


# --- interleavings ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("pause_at", ["before_cursor_execute", "after_cursor_execute"])
@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)  # SQLite would block the writer
def test_a_reader_racing_a_writer_never_plants_a_stale_value(env: Env, pause_at: str) -> None:
    """The reader misses, reaches the database, and is held there while a writer commits; whatever it read,
    the next reader must see the write."""
    statement = select(Author.name).where(Author.id == 1)
    reached, release = threading.Event(), threading.Event()
    reader_session = env.session()

    def hold(conn: Any, cursor: Any, sql: str, *args: Any) -> None:
        if "yc_authors" in sql and threading.current_thread().name == "reader":
            reached.set()
            assert release.wait(10)

    event.listen(env.engine, pause_at, hold)
    answers: list[str] = []
    reader = threading.Thread(target=lambda: answers.append(reader_session.scalar(statement)), name="reader")
    reader.start()
    assert reached.wait(10)
    with env.session() as writer:
        writer.execute(update(Author).where(Author.id == 1).values(name="written"))
        writer.commit()
    release.set()
    reader.join(10)
    reader_session.close()
    event.remove(env.engine, pause_at, hold)
    assert answers == ["written" if pause_at == "before_cursor_execute" else "ada"]
    for _ in range(2):
        with env.session() as session:
            assert session.scalar(statement) == "written"
