"""Processes reading and writing PostgreSQL through the cache never read older than a returned commit.

A shorter run of ``benchmarks/consistency_stress.py``: one writer process and two reader processes (two
threads each) share one Redis and one table of counters for a few seconds. Every read is checked against
the commits that had returned before it began (see that module for the paths exercised).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Integer, String, create_engine
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column

from yokedcache import YokedCache, cached
from yokedcache.sqlalchemy import cache_queries

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.fixture
def stress() -> Iterator[Any]:
    """The stress module; its directory stays on ``sys.path`` while the spawned processes import it."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        import consistency_stress

        yield consistency_stress
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_no_stale_reads_across_processes(stress: Any, redis_url: str, postgres_url: str, prefix: str) -> None:
    config = stress.StressConfig(
        postgres_url=postgres_url,
        redis_url=redis_url,
        key_prefix=prefix,
        table=f"yc_stress_{prefix}",
        seconds=4.0,
        processes=3,
        rows=4,
        reader_threads=2,
        write_pause_ms=40.0,
    )
    report = stress.run_stress(config)  # drops the table and flushes the prefix whatever happens
    summary = report.summary()

    assert report.errors == [], summary
    assert report.stale == [], summary
    assert report.unknown_values == [], summary
    assert report.own_write_misreads == [], summary
    assert report.ledger_gaps == [], summary
    assert report.cache_errors == 0, summary
    assert report.commits >= 20, summary
    assert report.reads >= 300, summary
    assert set(report.reads_by_path) == set(stress.READ_PATHS), summary
    assert min(report.reads_by_path.values()) >= 20, summary
    assert report.served_from_cache >= 30, "too few reads were hits to test the hit path\n" + summary
    assert report.passed


# --- values computed from ORM state loaded before the computation ------------------------------------------
#
# ``@cached`` learns what a value depends on from the SQL sent while computing it (``policy/reads.py``), with
# tokens captured before each statement. A value can also come from ORM state the caller's session loaded
# *earlier*: an object already in the identity map (``Session.get`` sends no SQL, and a query returning an
# identity already present keeps its loaded attributes), or an ORM instance passed as an argument. Stored
# with tokens newer than that data, such a value would be served after a commit it never saw; instead it is
# returned to its caller and not stored. Each case is one request computing the value and another, starting
# after a commit returned, reading it.


class _Model:
    def __init__(self, postgres_url: str, table: str) -> None:
        class Base(DeclarativeBase):
            pass

        class User(Base):
            __tablename__ = table

            id: Mapped[int] = mapped_column(Integer, primary_key=True)
            name: Mapped[str] = mapped_column(String(40))

        url = postgres_url.replace("postgresql://", "postgresql+psycopg2://", 1)
        self.Base, self.User, self.engine = Base, User, create_engine(url)
        Base.metadata.create_all(self.engine)


@pytest.fixture
def model(postgres_url: str, prefix: str) -> Iterator[_Model]:
    found = _Model(postgres_url, f"yc_state_{prefix}")
    yield found
    found.Base.metadata.drop_all(found.engine)
    found.engine.dispose()


@pytest.mark.parametrize(
    "case", ["query returns an older identity", "get from the identity map", "ORM argument"]
)
def test_a_value_from_earlier_session_state_is_not_served_after_a_commit(
    model: _Model, redis_url: str, prefix: str, case: str
) -> None:
    cache = YokedCache(redis_url=redis_url, key_prefix=prefix)
    User = model.User

    @cached(cache=cache, tags=["users"])
    def name_by_query(db: Session, user_id: int) -> str:
        return db.query(User).filter(User.id == user_id).one().name

    @cached(cache=cache, tags=["users"])
    def name_by_get(db: Session, user_id: int) -> str:
        return db.get(User, user_id).name

    @cached(cache=cache)
    def name_of(user: Any) -> str:
        return user.name

    def commit_name(name: str) -> None:
        with cache_queries(Session(model.engine), cache=cache) as writer:
            writer.get(User, 1).name = name
            writer.commit()

    def compute(db: Session, user: Any) -> str:
        if case == "query returns an older identity":
            return name_by_query(db, 1)
        if case == "get from the identity map":
            return name_by_get(db, 1)
        return name_of(user)

    try:
        with Session(model.engine) as db:
            db.add(User(id=1, name="ada"))
            db.commit()
        with Session(model.engine) as db:  # request 1 loads the user early on
            user = db.get(User, 1)
            if case == "query returns an older identity":
                commit_name("bob")  # another request commits while request 1 runs
                compute(db, user)  # request 1 sees its session's view ("ada"), as SQLAlchemy defines it
            else:
                compute(db, user)
                commit_name("bob")
        with Session(model.engine) as db:  # request 2 starts after the commit returned
            user = db.get(User, 1)
            assert user.name == "bob"
            assert compute(db, user) == "bob"
    finally:
        cache.flush_all_sync()
        cache.disconnect_sync()
