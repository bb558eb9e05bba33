"""Cached SELECTs in a sync Session: hits send no SQL, results equal uncached ones, bypasses stay uncached."""

from __future__ import annotations

import decimal
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import bindparam, func, inspect, literal_column, select, text
from sqlalchemy.exc import InvalidRequestError
from sqlalchemy.orm import Session, aliased, joinedload, selectinload, subqueryload

from yokedcache import TableCacheConfig
from yokedcache.integrations.sqlalchemy import rows as rows_module

from .test_sqlalchemy_support import (
    Article,
    Author,
    Comment,
    Env,
    Label,
    Manager,
    Person,
    env_fixture,  # noqa: F401  (the env fixture)
    make_cache,
    pg_schema_fixture,  # noqa: F401  (the pg_schema fixture)
)


def plain(value: Any) -> Any:
    """A comparable picture of a result: entities as (class, primary key, loaded columns), recursively."""
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if hasattr(value, "_mapping"):
        return ("row", list(value._mapping.keys()), [plain(v) for v in value])
    if hasattr(value, "_sa_instance_state"):
        state = inspect(value)
        columns = {p.key: state.dict[p.key] for p in state.mapper.column_attrs if p.key in state.dict}
        return (type(value).__name__, state.identity, sorted(columns.items()))
    return value


SHAPES: dict[str, Callable[[Session], Any]] = {
    "entities": lambda s: s.execute(select(Author).order_by(Author.id)).scalars().all(),
    "entity rows": lambda s: s.execute(select(Author).order_by(Author.id)).all(),
    "entity and column": lambda s: s.execute(
        select(Article, Author.name).join(Article.author).order_by(Article.id)
    ).all(),
    "two entities, outer join": lambda s: s.execute(
        select(Author, Article).outerjoin(Article, (Article.author_id == Author.id) & (Article.id > 2))
        .order_by(Author.id)
    ).all(),
    "columns": lambda s: s.execute(
        select(Author.name, Author.balance, Author.joined).order_by(Author.id)
    ).all(),
    "mappings": lambda s: s.execute(select(Author.id, Author.name).order_by(Author.id)).mappings().all(),
    "scalar": lambda s: s.scalar(select(func.count(Article.id))),
    "scalars of a column": lambda s: s.scalars(select(Article.title).order_by(Article.title.desc())).all(),
    "aggregate rows": lambda s: s.execute(
        select(Author.name, func.count(Article.id).label("n")).join(Author.articles).group_by(Author.name)
        .order_by(Author.name)
    ).all(),
    "get": lambda s: s.get(Author, 1),
    "get missing": lambda s: s.get(Author, 99),
    "legacy all": lambda s: s.query(Article).filter(Article.published.is_(True)).order_by(Article.id).all(),
    "legacy first": lambda s: s.query(Author).filter(Author.name == "bob").first(),
    "legacy count": lambda s: s.query(Article).count(),
    "legacy one": lambda s: s.query(Author).filter(Author.id == 1).one(),
    "legacy scalar": lambda s: s.query(Author.name).filter(Author.id == 2).scalar(),
    "legacy tuples": lambda s: s.query(Author, Article.title).join(Author.articles)
    .order_by(Article.id).all(),
    "legacy iteration": lambda s: list(s.query(Label).order_by(Label.id)),
    "polymorphic base": lambda s: s.execute(select(Person).order_by(Person.id)).scalars().all(),
    "joined inheritance": lambda s: s.execute(select(Manager)).scalars().all(),
    "joined eager collection": lambda s: s.execute(
        select(Author).options(joinedload(Author.articles)).order_by(Author.id)
    ).unique().scalars().all(),
    "subquery": lambda s: s.execute(
        select(Author).where(Author.id.in_(select(Article.author_id).where(Article.published.is_(True))))
        .order_by(Author.id)
    ).scalars().all(),
    "cte": lambda s: s.execute(
        select(Author.name).join(c := select(Article.author_id).cte("c"), c.c.author_id == Author.id)
        .order_by(Author.name)
    ).all(),
    "aliased self-join": lambda s: s.execute(
        select(Author.name, (other := aliased(Author)).name).join(other, other.id != Author.id)
        .order_by(Author.name)
    ).all(),
    "empty": lambda s: s.execute(select(Author).where(Author.name == "nobody")).scalars().all(),
}


@pytest.mark.parametrize("shape", list(SHAPES))
def test_results_equal_uncached_and_a_hit_sends_no_sql(env: Env, shape: str) -> None:
    query = SHAPES[shape]
    with env.plain() as session:
        expected = plain(query(session))
    env.sql()
    with env.session() as session:
        first = plain(query(session))
    assert env.sql() >= 1
    with env.session() as session:
        second = plain(query(session))
    assert env.sql() == 0, f"{shape}: a hit sent SQL"
    assert first == expected
    assert second == expected


def test_joined_eager_collections_still_require_unique(env: Env) -> None:
    statement = select(Author).options(joinedload(Author.articles))
    for _ in range(2):  # miss, then hit
        with env.session() as session, pytest.raises(InvalidRequestError, match="unique"):
            session.execute(statement).scalars().all()
    assert env.sql() == 1


def test_row_mapping_lookup_by_entity_and_column(env: Env) -> None:
    for _ in range(2):
        with env.session() as session:
            row = session.execute(select(Author, Author.name).where(Author.id == 1)).one()
            assert row._mapping[Author].name == "ada"
            assert row._mapping[Author.name] == "ada"
            assert row.name == "ada"
    assert env.sql() == 1


@pytest.mark.parametrize(
    "option",
    [
        lambda: joinedload(Article.labels),
        lambda: selectinload(Article.labels),
        lambda: subqueryload(Article.labels),
    ],
    ids=["joined", "selectin", "subquery"],
)
def test_eager_loaded_relationships_come_back_loaded(env: Env, option: Callable[[], Any]) -> None:
    statement = select(Article).options(option(), selectinload(Article.author)).order_by(Article.id)
    with env.session() as session:
        session.execute(statement).unique().scalars().all()
    env.sql()
    with env.session() as session:
        articles = session.execute(statement).unique().scalars().all()
        assert [[label.name for label in a.labels] for a in articles] == [["python", "sql"], ["sql"], []]
        assert [a.author.name for a in articles] == ["ada", "ada", "bob"]
        assert articles[0].author is articles[1].author  # one identity, one object
    assert env.sql() == 0


def test_unloaded_relationships_lazy_load_normally(env: Env) -> None:
    statement = select(Author).where(Author.id == 1)
    with env.session() as session:
        session.execute(statement).scalar_one()
    env.sql()
    with env.session() as session:
        ada = session.execute(statement).scalar_one()
        assert env.sql() == 0
        assert [a.title for a in ada.articles] == ["first", "second"]
        assert env.sql() == 1  # the lazy load itself is never served from the cache


def test_selectin_tables_are_tags_of_the_parent_entry(env: Env) -> None:
    statement = select(Author).options(selectinload(Author.articles)).order_by(Author.id)
    with env.session() as session:
        session.execute(statement).scalars().all()
    with env.session() as session:
        session.get(Article, 2).title = "renamed"
        session.commit()
    env.sql()
    with env.session() as session:
        authors = session.execute(statement).scalars().all()
        assert [a.title for a in authors[0].articles] == ["first", "renamed"]
    assert env.sql() == 2


# --- identity and sessions -------------------------------------------------------------------------------


def test_a_hit_never_overwrites_pending_changes(env: Env) -> None:
    statement = select(Author).order_by(Author.id)
    with env.session() as session:
        session.execute(statement).scalars().all()
    with env.session(autoflush=False) as session:
        ada = session.get(Author, 1)
        ada.name = "pending"
        authors = session.execute(statement).scalars().all()
        assert authors[0] is ada
        assert ada.name == "pending"
        assert ada in session.dirty


def test_a_hit_fills_what_an_identity_has_not_loaded(env: Env) -> None:
    statement = select(Author).order_by(Author.id)
    with env.session() as session:
        session.execute(statement).scalars().all()
    with env.session() as session:
        ada = session.get(Author, 1)
        session.expire(ada)
        env.sql()
        authors = session.execute(statement).scalars().all()
        assert authors[0] is ada
        assert ada.name == "ada"
        assert env.sql() == 0


def test_rebuilt_objects_are_persistent_clean_and_flush_normally(env: Env) -> None:
    statement = select(Author).where(Author.id == 2)
    with env.session() as session:
        session.execute(statement).scalar_one()
    with env.session() as session:
        bob = session.execute(statement).scalar_one()
        state = inspect(bob)
        assert state.persistent and not state.modified and bob not in session.dirty
        assert bob.balance == decimal.Decimal("0.00")
        bob.name = "robert"
        session.commit()
    with env.plain() as session:
        assert session.get(Author, 2).name == "robert"


def test_sessions_without_caching_are_untouched(env: Env) -> None:
    for _ in range(2):
        with env.plain() as session:
            session.execute(select(Author)).scalars().all()
    assert env.sql() == 2


# --- bypass ------------------------------------------------------------------------------------------------

BYPASSED: dict[str, Callable[[Session], Any]] = {
    "for update": lambda s: s.execute(select(Author).with_for_update()).scalars().all(),
    "populate_existing": lambda s: s.execute(
        select(Author).execution_options(populate_existing=True)
    ).scalars().all(),
    "yield_per": lambda s: list(s.execute(select(Author).execution_options(yield_per=1)).scalars()),
    "opted out": lambda s: s.execute(select(Author).execution_options(yokedcache=False)).scalars().all(),
    "volatile now()": lambda s: s.execute(select(Author.name, func.now())).all(),
    "volatile random()": lambda s: s.execute(select(Author).order_by(func.random())).scalars().all(),
    "current_timestamp": lambda s: s.execute(select(Author.name, func.current_timestamp())).all(),
    "text select": lambda s: s.execute(text("SELECT name FROM yc_authors")).all(),
    "parameter of unknown type": lambda s: s.execute(
        select(Author).where(Author.name == bindparam("n", value=_Name("ada")))
    ).scalars().all(),
}


class _Name(str):
    """A str subclass: its value is not a canonical parameter, so the query is not cached."""


@pytest.mark.parametrize("case", list(BYPASSED))
def test_bypassed_statements_always_reach_the_database(env: Env, case: str) -> None:
    for _ in range(2):
        with env.session() as session:
            BYPASSED[case](session)
    assert env.sql() == 2
    assert not any(k.startswith("sql:") for k in env.cache.get_all_keys_sync())


def test_text_fragments_resolve_known_tables_and_bypass_unknown_ones(env: Env) -> None:
    with env.engine.begin() as conn:
        conn.exec_driver_sql("CREATE TABLE IF NOT EXISTS yc_outside (x INTEGER)")
    known = select(Author.name).where(text("id IN (SELECT author_id FROM yc_articles WHERE published)"))
    unknown = select(literal_column("x")).select_from(text("yc_outside"))
    env.sql()
    for _ in range(2):
        with env.session() as session:
            assert sorted(session.execute(known).scalars()) == ["ada", "bob"]
            session.execute(unknown).all()
    assert env.sql() == 3
    with env.session() as session:
        session.get(Article, 3).published = False
        session.commit()
    with env.session() as session:
        assert session.execute(known).scalars().all() == ["ada"]


def test_refresh_and_column_loads_are_bypassed(env: Env) -> None:
    with env.session() as session:
        ada = session.get(Author, 1)
        env.sql()
        session.refresh(ada)
        session.expire(ada, ["name"])
        assert ada.name == "ada"
        session.refresh(ada)
    assert env.sql() == 3


def test_table_name_caches_only_selects_reading_that_table(env: Env) -> None:
    from yokedcache.sqlalchemy import cache_queries

    for _ in range(2):
        with cache_queries(Session(env.engine), cache=env.cache, table_name="yc_labels") as session:
            session.execute(select(Label)).scalars().all()
            session.execute(select(Author)).scalars().all()
    assert env.sql() == 3  # labels: one miss then a hit; authors: never cached


def test_statement_options_override_ttl_and_add_tags(env: Env) -> None:
    with env.session() as session:
        session.execute(select(Label).execution_options(yokedcache={"ttl": 42, "tags": ["labels"]})).all()
    (key,) = [k for k in env.cache.get_all_keys_sync() if k.startswith("sql:")]
    meta = env.cache.get_meta_sync(key)
    assert meta is not None and 40 <= meta["ttl"] <= 42
    assert set(meta["tags"]) == {"labels", "table:*", "table:yc_labels"}
    env.cache.invalidate_tags_sync("labels")
    env.sql()
    with env.session() as session:
        session.execute(select(Label)).all()
    assert env.sql() == 1


def test_bad_statement_options_are_refused(env: Env) -> None:
    with env.session() as session, pytest.raises(ValueError, match="yokedcache"):
        session.execute(select(Label).execution_options(yokedcache={"tll": 3})).all()


def test_ttl_priority_session_then_query_specific_then_table(
    env: Env, request: pytest.FixtureRequest
) -> None:
    from yokedcache.sqlalchemy import cache_queries

    tables = {"yc_labels": TableCacheConfig(ttl=500, tags={"taxonomy"}, query_specific_ttls={"ORDER BY": 77})}
    cache = make_cache("memory", "ttlprio", request, tables=tables)

    def ttl_of(statement: Any, **options: Any) -> int:
        cache.flush_all_sync()
        with cache_queries(Session(env.engine), cache=cache, **options) as session:
            session.execute(statement).all()
        (key,) = cache.get_all_keys_sync()
        meta = cache.get_meta_sync(key)
        assert meta is not None and "taxonomy" in meta["tags"]
        return int(meta["ttl"])

    assert ttl_of(select(Label)) == 500
    assert ttl_of(select(Label).order_by(Label.id)) == 77
    assert ttl_of(select(Label).order_by(Label.id), ttl=9) == 9


# --- keys, payloads, statistics ----------------------------------------------------------------------------


def test_parameters_and_structure_make_different_keys(env: Env) -> None:
    with env.session() as session:
        assert session.get(Author, 1).name == "ada"
        assert session.get(Author, 2).name == "bob"
        assert session.execute(select(Author.name).where(Author.id == 1)).scalar() == "ada"
        assert session.execute(select(Author.name).where(Author.id == 2)).scalar() == "bob"
        assert session.execute(select(Author.id).where(Author.name.in_(["ada", "bob"]))).scalars().all()
        assert session.execute(select(Author.id).where(Author.name.in_(["ada"]))).scalars().all() == [1]
    assert len([k for k in env.cache.get_all_keys_sync() if k.startswith("sql:")]) == 6


def test_a_payload_from_a_changed_model_is_never_rebuilt(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    statement = select(Label).order_by(Label.id)
    with env.session() as session:
        session.execute(statement).scalars().all()
    env.sql()
    monkeypatch.setattr(rows_module, "_fingerprints", _OtherFingerprints())
    with env.session() as session:
        assert [label.name for label in session.execute(statement).scalars()] == ["python", "sql"]
    assert env.sql() == 1


class _OtherFingerprints(dict):  # type: ignore[type-arg]
    """Every mapper fingerprints differently: what a model change looks like to old payloads."""

    def get(self, key: Any, default: Any = None) -> Any:
        return "changed-model"


def test_garbage_under_a_key_is_a_miss(env: Env) -> None:
    statement = select(Label)
    with env.session() as session:
        session.execute(statement).scalars().all()
    (key,) = [k for k in env.cache.get_all_keys_sync() if k.startswith("sql:")]
    env.cache.set_sync(key, {"v": 1, "classes": [["nowhere", "Nothing", "x"]], "objects": [], "rows": []})
    env.sql()
    with env.session() as session:
        assert len(session.execute(statement).scalars().all()) == 2
    assert env.sql() == 1


def test_query_statistics_per_shape(env: Env) -> None:
    statement = select(Comment).order_by(Comment.id)
    for _ in range(3):
        with env.session() as session:
            session.execute(statement).scalars().all()
    queries = env.cache.get_stats_sync().queries
    (entry,) = [q for q in queries.values() if "yc_comments" in q["tables"]]
    assert entry["hits"] == 2 and entry["misses"] == 1
    assert entry["mean_db_ms"] > 0 and entry["time_saved_ms"] >= 0
    assert "FROM yc_comments" in entry["sql"]


def test_query_statistics_are_bounded(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    from yokedcache.integrations.sqlalchemy import stats

    monkeypatch.setattr(stats, "MAX_SHAPES", 3)
    with env.session() as session:
        for number in range(6):
            session.execute(select(Label.id, literal_column(str(number)).label("n"))).all()
    assert len(env.cache.query_stats) == 3


def test_an_unreachable_cache_never_fails_a_query(env: Env) -> None:
    from yokedcache import YokedCache
    from yokedcache.sqlalchemy import cache_queries

    down = YokedCache(
        redis_url="redis://127.0.0.1:1/0", connection_retries=0, connection_timeout=0.2, key_prefix="down"
    )
    for _ in range(2):
        with cache_queries(Session(env.engine), cache=down) as session:
            labels = session.execute(select(Label).order_by(Label.id)).scalars().all()
            assert len(labels) == 2
            session.get(Label, 1).name = "still works"  # in the identity map: no SQL
            session.commit()
    assert env.sql() == 3  # select, update; select (the name is already set: no update)


SNAPSHOT_LEVELS = ["REPEATABLE READ", "SERIALIZABLE"]


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_repeatable_read_transactions_are_cached(env: Env) -> None:
    """Tokens are captured when the transaction begins: its misses are stored and later reads hit."""
    from yokedcache.sqlalchemy import cache_queries

    engine = env.engine.execution_options(isolation_level="REPEATABLE READ")
    for _ in range(3):
        with cache_queries(Session(engine), cache=env.cache) as session:
            assert len(session.execute(select(Label)).scalars().all()) == 2
    assert env.sql() == 1


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_serializable_transactions_read_the_database_and_store_for_others(env: Env) -> None:
    """The database must see a SERIALIZABLE transaction's reads to detect conflicts, so it is never served
    from the cache; what it reads is stored (under its start tokens) for other transactions."""
    from yokedcache.sqlalchemy import cache_queries

    engine = env.engine.execution_options(isolation_level="SERIALIZABLE")
    for _ in range(2):
        with cache_queries(Session(engine), cache=env.cache) as session:
            assert len(session.execute(select(Label)).scalars().all()) == 2
    assert env.sql() == 2
    with env.session() as session:  # READ COMMITTED
        assert len(session.execute(select(Label)).scalars().all()) == 2
    assert env.sql() == 0


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_serializable_write_skew_is_still_detected(env: Env) -> None:
    """Two SERIALIZABLE transactions each read both labels, then rename a different one based on what they
    read: PostgreSQL must abort one of them. Were their reads cache hits, it could not see them."""
    from sqlalchemy import exc, update

    from yokedcache.sqlalchemy import cache_queries

    engine = env.engine.execution_options(isolation_level="SERIALIZABLE")
    statement = select(Label).where(Label.name.in_(["python", "sql"]))
    with cache_queries(Session(engine), cache=env.cache) as warm:
        warm.execute(statement).scalars().all()
    with env.session() as warm:
        assert len(warm.execute(statement).scalars().all()) == 2  # a live entry, were anyone to use it
    first = cache_queries(Session(engine), cache=env.cache)
    second = cache_queries(Session(engine), cache=env.cache)
    try:
        assert len(first.execute(statement).scalars().all()) == 2
        assert len(second.execute(statement).scalars().all()) == 2
        first.execute(update(Label).where(Label.id == 1).values(name="gone"))
        second.execute(update(Label).where(Label.id == 2).values(name="gone too"))
        first.commit()
        with pytest.raises(exc.OperationalError, match="serializ"):
            second.commit()
    finally:
        first.close()
        second.close()


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
@pytest.mark.parametrize("level", SNAPSHOT_LEVELS)
def test_a_snapshot_older_than_a_commit_is_never_stored(env: Env, level: str) -> None:
    """The reader's snapshot is taken, then a writer commits; the reader's miss reads the old rows from its
    snapshot. Tokens captured at that moment would already show the commit, so storing under them would
    plant the old rows for everyone; the tokens captured at transaction start refuse the store."""
    from yokedcache.sqlalchemy import cache_queries

    engine = env.engine.execution_options(isolation_level=level)
    with cache_queries(Session(engine), cache=env.cache) as reader:
        reader.execute(select(Author.id)).all()  # the snapshot is taken here
        with env.session() as writer:
            writer.get(Label, 1).name = "renamed"
            writer.commit()
        old = reader.execute(select(Label).order_by(Label.id)).scalars().all()
        assert [label.name for label in old] == ["python", "sql"]  # what the snapshot shows
    env.sql()
    with env.session() as session:
        fresh = session.execute(select(Label).order_by(Label.id)).scalars().all()
        assert [label.name for label in fresh] == ["renamed", "sql"]
    assert env.sql() == 1  # a miss: the old rows were not stored


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_a_snapshot_taken_before_caching_began_is_not_cached(env: Env) -> None:
    """A session joining a transaction that already ran a statement cannot know when its snapshot was
    taken, so it neither stores nor serves."""
    from yokedcache.sqlalchemy import cache_queries

    engine = env.engine.execution_options(isolation_level="REPEATABLE READ")
    with engine.connect() as connection:
        connection.execute(select(Author.id)).all()
        for _ in range(2):
            session = cache_queries(
                Session(bind=connection, join_transaction_mode="create_savepoint"), cache=env.cache
            )
            assert len(session.execute(select(Label)).scalars().all()) == 2
            session.close()
    assert env.sql() == 1 + 2 * 3  # the first select; per session: savepoint, select, rollback to it
    assert not any(k.startswith("sql:") for k in env.cache.get_all_keys_sync())


def test_table_compression_applies_to_cached_queries(tmp_path: Any) -> None:
    """TableCacheConfig(enable_compression=True) compresses the SQL entries of queries reading that table."""
    from sqlalchemy import Column, Integer, String, create_engine, select
    from sqlalchemy.orm import Session, declarative_base

    from yokedcache import CacheConfig, TableCacheConfig, YokedCache
    from yokedcache.sqlalchemy import cache_queries

    base = declarative_base()

    class Note(base):  # type: ignore[valid-type, misc]
        __tablename__ = "yc_compressed_notes"
        id = Column(Integer, primary_key=True)
        body = Column(String)

    engine = create_engine(f"sqlite:///{tmp_path}/notes.db")
    base.metadata.create_all(engine)
    with Session(engine) as session:
        session.add_all(Note(id=i, body="lorem ipsum " * 40) for i in range(20))
        session.commit()
    config = CacheConfig(
        key_prefix="ycnotes", tables={"yc_compressed_notes": TableCacheConfig(enable_compression=True)}
    )
    cache = YokedCache(config)
    with Session(engine) as session:
        cache_queries(session, cache=cache)
        session.execute(select(Note)).scalars().all()
    keys = cache.get_all_keys_sync()
    assert keys, "the query was not cached"
    metas = [cache.get_meta_sync(key) for key in keys]
    assert all(meta is not None and meta["compressed"] for meta in metas), metas
    engine.dispose()


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_a_snapshot_opened_by_a_raw_driver_statement_is_not_trusted(env: Env) -> None:
    """A pre-ping that runs ``SELECT 1`` on the raw driver connection (the default ``do_ping``, used by
    drivers without their own) opens the transaction, and at REPEATABLE READ its snapshot, before the
    transaction "begins". A commit landing just after it must not be stored under later tokens."""
    from sqlalchemy import create_engine, event
    from sqlalchemy.engine.default import DefaultDialect

    from yokedcache.sqlalchemy import cache_queries

    url = env.engine.url
    options = {"connect_args": {"options": f"-csearch_path={env.engine.dialect.default_schema_name}"}}
    engine = create_engine(url, isolation_level="REPEATABLE READ", pool_pre_ping=True, **options)
    engine.dialect.do_ping = DefaultDialect.do_ping.__get__(engine.dialect)  # type: ignore[method-assign]
    armed = [False]

    @event.listens_for(engine, "checkout")
    def commit_after_the_ping(*args: Any) -> None:  # another process commits in that window
        if armed[0]:
            armed[0] = False
            with env.session() as writer:
                writer.get(Label, 1).name = "renamed"
                writer.commit()

    try:
        with Session(engine) as session:
            session.execute(select(Label.id)).all()  # one pooled connection, pinged at each checkout
        armed[0] = True
        with cache_queries(Session(engine), cache=env.cache) as reader:
            assert [label.name for label in reader.scalars(select(Label).order_by(Label.id))] == [
                "python", "sql",
            ]  # the snapshot predates the commit
        with cache_queries(Session(engine), cache=env.cache) as session:
            assert [label.name for label in session.scalars(select(Label).order_by(Label.id))] == [
                "renamed", "sql",
            ]
    finally:
        engine.dispose()


@pytest.mark.parametrize("first", ["SELECT yc_authors.id FROM yc_authors", "PRAGMA user_version"])
def test_sqlite_in_wal_mode_inside_an_explicit_transaction_stores_only_under_start_tokens(
    tmp_path: Any, first: str
) -> None:
    """With SQLAlchemy's BEGIN recipe, a WAL database gives each transaction a snapshot at its first read
    while other connections commit: a later miss in it must not store the snapshot's rows as current."""
    from sqlalchemy import create_engine

    from yokedcache import YokedCache
    from yokedcache.sqlalchemy import cache_queries

    from .test_sqlalchemy_support import Base, seed, sqlite_savepoints

    url = f"sqlite:///{tmp_path}/wal.sqlite"
    setup = create_engine(url)
    with setup.connect() as conn:
        conn.exec_driver_sql("PRAGMA journal_mode=WAL")  # kept by the database file
    setup.dispose()
    engine = sqlite_savepoints(create_engine(url))
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        seed(session)
        session.commit()
    cache = YokedCache(key_prefix="wal", ttl_jitter_percent=0)
    try:
        with cache_queries(Session(engine), cache=cache) as reader:
            reader.execute(text(first)).all()  # the snapshot starts at this first read
            with cache_queries(Session(engine), cache=cache) as writer:
                writer.get(Label, 1).name = "renamed"
                writer.commit()
            assert [label.name for label in reader.scalars(select(Label).order_by(Label.id))] == [
                "python", "sql",
            ]
        with cache_queries(Session(engine), cache=cache) as session:
            assert [label.name for label in session.scalars(select(Label).order_by(Label.id))] == [
                "renamed", "sql",
            ]
    finally:
        engine.dispose()


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_a_hit_in_a_repeatable_read_transaction_is_one_round_trip(
    env: Env, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Start tokens are captured by the transaction's first cached read, in the request of its lookup
    (or before any other first statement): the first hit costs no extra request."""
    import redis.connection

    from yokedcache.sqlalchemy import cache_queries

    sent = [0]
    original = redis.connection.AbstractConnection.send_packed_command

    def counted(connection: Any, command: Any, check_health: bool = True) -> None:
        sent[0] += 1
        original(connection, command, check_health)

    monkeypatch.setattr(redis.connection.AbstractConnection, "send_packed_command", counted)
    engine = env.engine.execution_options(isolation_level="REPEATABLE READ")
    statement = select(Label).order_by(Label.id)
    with cache_queries(Session(engine), cache=env.cache) as session:
        session.execute(statement).scalars().all()  # a miss: stored under the start tokens
    assert env.sql() == 1
    with cache_queries(Session(engine), cache=env.cache) as session:
        for _ in range(2):
            before = sent[0]
            assert [label.name for label in session.execute(statement).scalars()] == ["python", "sql"]
            assert sent[0] - before == 1
    assert env.sql() == 0


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
@pytest.mark.parametrize(
    ("first", "level"),
    [
        (["DECLARE early CURSOR FOR SELECT 1"], "REPEATABLE READ"),
        (["ANALYZE yc_authors"], "REPEATABLE READ"),
        (["SET TRANSACTION ISOLATION LEVEL REPEATABLE READ", "SELECT count(*) FROM yc_authors"], None),
    ],
    ids=["declare cursor", "analyze", "isolation set by SQL"],
)
def test_a_snapshot_taken_by_raw_sql_is_never_stored_as_current(
    env: Env, first: list[str], level: str | None
) -> None:
    """Raw statements that take the snapshot (or set the isolation level behind SQLAlchemy's back) come
    before the first cached read: tokens captured then would postdate the snapshot."""
    from yokedcache.sqlalchemy import cache_queries

    engine = env.engine if level is None else env.engine.execution_options(isolation_level=level)
    with cache_queries(Session(engine), cache=env.cache) as reader:
        for statement in first:
            reader.execute(text(statement))
        with env.session() as writer:
            writer.get(Label, 1).name = "renamed"
            writer.commit()
        assert [label.name for label in reader.scalars(select(Label).order_by(Label.id))] == ["python", "sql"]
    with env.session() as session:
        assert [label.name for label in session.scalars(select(Label).order_by(Label.id))] == [
            "renamed", "sql",
        ]


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_an_imported_snapshot_is_never_stored_as_current(env: Env) -> None:
    """SET TRANSACTION SNAPSHOT gives the transaction another one's older snapshot."""
    from yokedcache.sqlalchemy import cache_queries

    engine = env.engine.execution_options(isolation_level="REPEATABLE READ")
    with engine.connect() as exporter:
        snapshot_id = exporter.execute(text("SELECT pg_export_snapshot()")).scalar_one()
        with env.session() as writer:
            writer.get(Label, 1).name = "renamed"
            writer.commit()
        with cache_queries(Session(engine), cache=env.cache) as reader:
            reader.execute(text(f"SET TRANSACTION SNAPSHOT '{snapshot_id}'"))
            old = [label.name for label in reader.scalars(select(Label).order_by(Label.id))]
            assert old == ["python", "sql"]
    with env.session() as session:
        assert [label.name for label in session.scalars(select(Label).order_by(Label.id))] == [
            "renamed", "sql",
        ]
