"""Less travelled paths to the freshness guarantee: a reader that starts after an invalidation (or a commit
on a watched database) returned is never served older data. Each test forces one interleaving: nested
cached values, dependency values computed from a session's earlier state, an invalidation queued while
the shared backend is down next to an in-process route, raw writes to tables known only by name, and a
repository whose session answers from its identity map."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest
from sqlalchemy import column, select, table
from sqlalchemy.orm import Session

from yokedcache import YokedCache, cached, cached_dependency
from yokedcache.backends.memory import MemoryBackend

from .test_sqlalchemy_support import (
    Author,
    Env,
    env_fixture,  # noqa: F401  (the env fixture)
    pg_schema_fixture,  # noqa: F401  (the pg_schema fixture)
)

# --- a value computed from another cached value is retired with it ---------------------------------------


def test_outer_cached_value_over_an_inner_cached_hit_is_retired_by_the_commit(env: Env) -> None:
    @cached(cache=env.cache, ttl=600)
    def author_name(author_id: int) -> str:
        with env.plain() as session:
            return session.get(Author, author_id).name  # type: ignore[union-attr]

    @cached(cache=env.cache, ttl=600)
    def greeting(author_id: int) -> str:
        return f"hello {author_name(author_id)}"

    assert author_name(1) == "ada"  # the inner value is cached first (e.g. by another request)
    assert greeting(1) == "hello ada"  # the outer value is computed from the inner *hit*
    with env.plain() as session:  # a commit on the watched database, which the inner value read
        session.get(Author, 1).name = "al"  # type: ignore[union-attr]
        session.commit()
    assert author_name(1) == "al"  # the inner value was retired, as promised
    assert greeting(1) == "hello al"  # the outer one must be too


# --- a dependency value computed from a session's earlier state is not stored -----------------------------


def test_cached_dependency_does_not_store_a_value_from_older_session_state(env: Env) -> None:
    def author_name(author_id: int, db: Session) -> str:
        return db.get(Author, author_id).name  # type: ignore[union-attr]  # answered from the identity map

    dependency = cached_dependency(author_name, cache=env.cache, table_name="yc_authors")

    def commit_name(name: str) -> None:
        with env.session() as writer:  # a caching session: its commit invalidates table:yc_authors
            writer.get(Author, 1).name = name  # type: ignore[union-attr]
            writer.commit()

    with env.plain() as db:  # request 1 loads the author early on (another dependency, say)
        loaded = db.get(Author, 1)  # noqa: F841  (held: the identity map keeps only referenced objects)
        commit_name("al")  # another request commits while request 1 runs
        assert dependency(1, db) == "ada"  # request 1 sees its session's view, as SQLAlchemy defines it
    with env.plain() as db:  # request 2 starts after the commit returned
        assert dependency(1, db) == "al"


# --- an invalidation the shared backend missed still hides this process's in-memory entries ---------------


async def test_a_queued_invalidation_hides_the_entries_of_an_in_process_route_at_once(prefix: str) -> None:
    local = MemoryBackend()
    cache = YokedCache(
        redis_url="redis://127.0.0.1:1/15",  # the shared backend is down (connection refused)
        key_prefix=prefix,
        prefix_backends={"local": local},  # keys "local:..." live in this process's memory
        connection_retries=0,
    )
    delivered = threading.Event()
    replay = local.invalidate

    def held_replay(tags: Any) -> int:
        # The background replayer delivers the queue to the memory route about 50 ms later; hold it until
        # the read below is done, so the read cannot be saved by that timing.
        if threading.current_thread().name == "yokedcache-replay":
            delivered.wait(5)
        return replay(tags)

    local.invalidate = held_replay  # type: ignore[method-assign]
    try:
        assert await cache.set("local:price", 10, tags=["prices"]) is True
        assert await cache.get("local:price") == 10
        await cache.invalidate_tags("prices")  # Redis unreachable: queued, logged (fallback on: returns)
        # The memory route is reachable; this process's own read starts after the invalidation returned.
        assert await cache.get("local:price") is None
    finally:
        delivered.set()
        await cache.disconnect()


# --- a raw write to a table known only by name, however it is spelled -----------------------------------


@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_a_raw_write_to_an_uncatalogued_table_retires_cached_reads_of_it(env: Env, pg_schema: str) -> None:
    with env.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE IF EXISTS yc_name_only")
        conn.exec_driver_sql("CREATE TABLE yc_name_only (id INTEGER PRIMARY KEY, n INTEGER)")
        conn.exec_driver_sql("INSERT INTO yc_name_only VALUES (1, 1)")
    lite = table("yc_name_only", column("id"), column("n"))  # a lightweight Core table: in no MetaData
    query = select(lite.c.n).where(lite.c.id == 1)

    def read() -> int:
        with env.session() as session:  # a caching session
            return int(session.execute(query).scalar_one())

    try:
        assert read() == 1
        env.sql()
        assert read() == 1
        assert env.sql() == 0  # served from the cache
        with env.engine.connect() as conn:  # raw SQL on the watched database, schema-qualified
            conn.exec_driver_sql(f"UPDATE {pg_schema}.yc_name_only SET n = 2 WHERE id = 1")
            conn.commit()
        assert read() == 2
    finally:
        with env.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS yc_name_only")


# --- a repository's session answering from its identity map inside @cached --------------------------------


def test_cached_method_reading_an_object_its_session_loaded_earlier_is_not_stored(env: Env) -> None:
    class Repository:
        def __init__(self, session: Session) -> None:
            self.session = session

        @cached(cache=env.cache, ttl=600, tags="authors")
        def name_of(self, author_id: int) -> str:
            return self.session.get(Author, author_id).name  # type: ignore[union-attr]

    with env.plain() as early:
        repository = Repository(early)
        loaded = early.get(Author, 1)  # noqa: F841  (the request loaded it before the write)
        with env.session() as writer:
            writer.get(Author, 1).name = "al"  # type: ignore[union-attr]
            writer.commit()
        env.cache.invalidate_tags_sync("authors")
        assert repository.name_of(1) == "ada"  # its session's view, as SQLAlchemy defines it...
    with env.plain() as later:
        assert Repository(later).name_of(1) == "al"  # ...but never handed to a request that came later


def test_cached_method_over_objects_loaded_in_a_cached_computation_is_stored_and_retired(env: Env) -> None:
    """Objects the repository's session loaded inside a tracked computation carry the tokens captured then:
    a later method answering from them is stored under those tokens, and a commit since retires it."""

    class Repository:
        def __init__(self, session: Session) -> None:
            self.session = session

        @cached(cache=env.cache, ttl=600)
        def load(self, author_id: int) -> int:
            self.held = self.session.scalars(select(Author).where(Author.id == author_id)).one()
            return self.held.id  # held: the identity map keeps only referenced objects

        @cached(cache=env.cache, ttl=600)
        def name_of(self, author_id: int) -> str:
            return self.session.get(Author, author_id).name  # type: ignore[union-attr]

    with env.plain() as session:
        repository = Repository(session)
        assert repository.load(1) == 1  # loads Author 1 into the session, inside a tracked computation
        env.sql()
        assert repository.name_of(1) == "ada"  # answered from the identity map: no SQL...
        assert env.sql() == 0
    with env.plain() as session:
        assert Repository(session).name_of(1) == "ada"  # ...yet stored: a hit, no SQL either
        assert env.sql() == 0
    with env.session() as writer:
        writer.get(Author, 1).name = "al"  # type: ignore[union-attr]
        writer.commit()
    with env.plain() as session:
        assert Repository(session).name_of(1) == "al"  # the commit retired it (it adopted table tags)


# The interleaving needs the leader's second call to reach its computation without suspending (an
# in-process backend answers without yielding to the event loop); over Redis the joiner would start first.
@pytest.mark.parametrize("env", ["sqlite+memory"], indirect=True)
async def test_a_joiner_does_not_take_a_later_flight_computed_from_older_session_state(env: Env) -> None:
    """A caller that joins a computation which started after its call usually gets data newer than its
    call; not when that computation answered from objects its session had loaded before."""
    release = asyncio.Event()

    class Repository:
        def __init__(self, session: Session, wait: bool = False) -> None:
            self.session = session
            self.wait = wait

        @cached(cache=env.cache, ttl=600, tags="authors")
        async def name_of(self, author_id: int) -> str:
            if self.wait:
                await release.wait()  # the first computation is slow: the commit lands meanwhile
            await asyncio.sleep(0.01)  # every computation yields at least once
            return self.session.get(Author, author_id).name  # type: ignore[union-attr]

    with env.plain() as old, env.plain() as first, env.plain() as late:
        held = old.get(Author, 1)  # noqa: F841  (loaded before the write; held in the identity map)

        async def first_then_old() -> tuple[str, str]:
            value = await Repository(first, wait=True).name_of(1)  # flight 1: its store will be refused
            return value, await Repository(old).name_of(1)  # flight 2, from the older session state

        leader = asyncio.ensure_future(first_then_old())
        await asyncio.sleep(0.05)
        with env.session() as writer:
            writer.get(Author, 1).name = "al"  # type: ignore[union-attr]
            writer.commit()
        await env.cache.invalidate_tags("authors")
        joiner = asyncio.ensure_future(Repository(late).name_of(1))  # called after the commit returned
        await asyncio.sleep(0.05)  # it joins flight 1, which started before it: not taken; it tries again
        release.set()
        assert await joiner == "al"
        assert (await leader)[1] == "ada"  # the older session's own view, never shared
