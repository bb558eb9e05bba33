"""Less travelled paths to the freshness guarantee: a reader that starts after an invalidation (or a commit
on a watched database) returned is never served older data. Each test forces one interleaving: nested
cached values (hit, miss, and shared through single flight), dependency values computed from a session's
earlier state, an invalidation queued while the shared backend is down next to an in-process route,
writes to tables known only by name, and single-flight joiners."""

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


async def test_outer_value_carries_the_tags_of_an_inner_value_it_computed(cache: YokedCache) -> None:
    data = {"v": 1}

    @cached(cache=cache, ttl=600, tags=["inner"])
    async def inner() -> int:
        return data["v"]

    @cached(cache=cache, ttl=600)
    async def outer() -> int:
        return await inner() * 10

    assert await outer() == 10  # the inner value is computed (a miss) inside the outer computation
    data["v"] = 2
    await cache.invalidate_tags(["inner"])
    assert await outer() == 20


def test_outer_value_over_an_inner_value_of_an_orm_object_is_stored_and_retired(env: Env) -> None:
    """An inner value computed from an ORM object is never stored (the object may predate its tokens), but
    the outer computation loaded that object itself, so the outer value is stored, and retired with it."""
    computed: list[int] = []

    @cached(cache=env.cache, ttl=600, tags="shouting")
    def shout(author: Author) -> str:
        return author.name.upper()

    @cached(cache=env.cache, ttl=600)
    def page(author_id: int) -> str:
        computed.append(author_id)
        with env.plain() as session:
            return "page of " + shout(session.get(Author, author_id))  # type: ignore[arg-type]

    assert page(1) == page(1) == "page of ADA"
    assert computed == [1]  # the outer value was stored
    env.cache.invalidate_tags_sync("shouting")  # the inner value's own tag reaches the outer one
    assert page(1) == "page of ADA"
    assert computed == [1, 1]
    with env.session() as writer:
        writer.get(Author, 1).name = "al"  # type: ignore[union-attr]
        writer.commit()
    assert page(1) == "page of AL"  # and so does the table it read


async def test_outer_value_computed_from_get_many_is_retired_with_the_entries(cache: YokedCache) -> None:
    await cache.set("a", 1, tags=["prices"])
    await cache.set("b", 2, tags=["stock"])

    @cached(cache=cache, ttl=600)
    async def total() -> int:
        found = await cache.get_many(["a", "b"])
        return sum(v or 0 for v in found.values())

    assert await total() == 3
    await cache.invalidate_tags(["stock"])  # retires "b", and so the total computed from it
    await cache.set("b", 5, tags=["stock"])
    assert await total() == 6


async def test_a_joiner_inside_its_own_computation_learns_what_the_shared_result_read(
    cache: YokedCache,
) -> None:
    gate = asyncio.Event()

    @cached(cache=cache, ttl=600)
    async def inner() -> int:
        await gate.wait()
        return int(await cache.get("base", 0))  # a cached value tagged "base"

    @cached(cache=cache, ttl=600)
    async def outer(n: int) -> int:
        return await inner() * 10 + n

    await cache.set("base", 1, tags=["base"])
    leading = asyncio.ensure_future(outer(1))  # its inner() call computes...
    await asyncio.sleep(0.05)
    joining = asyncio.ensure_future(outer(2))  # ...this one's inner() call joins it
    await asyncio.sleep(0.05)
    gate.set()
    assert (await leading, await joining) == (11, 12)
    await cache.invalidate_tags(["base"])  # retires everything computed from the old "base"...
    await cache.set("base", 2, tags=["base"])
    assert (await inner(), await outer(1), await outer(2)) == (2, 21, 22)  # ...the joiner's value included


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


@pytest.mark.parametrize("inner_first", [False, True], ids=["dependency-miss", "dependency-hit"])
async def test_a_cached_dependency_value_used_inside_a_computation_passes_on_its_tags(
    cache: YokedCache, inner_first: bool
) -> None:
    flags = {"new_editor": False}

    def feature_flags(tenant: str) -> dict[str, bool]:
        return dict(flags)

    cached_flags = cached_dependency(feature_flags, cache=cache, ttl=600, tags="flags")

    @cached(cache=cache, ttl=600)
    async def page(tenant: str) -> str:  # stands for a response cached around the dependency
        return "new editor" if cached_flags(tenant)["new_editor"] else "old editor"

    if inner_first:
        assert cached_flags("acme") == {"new_editor": False}  # the dependency value is cached first
    assert await page("acme") == "old editor"
    flags["new_editor"] = True
    await cache.invalidate_tags("flags")
    assert await page("acme") == "new editor"


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


def _schema_qualified_raw_update(env: Env, schema: str) -> None:
    with env.engine.connect() as conn:  # raw SQL on the watched database, schema-qualified
        conn.exec_driver_sql(f"UPDATE {schema}.yc_name_only SET n = n + 1 WHERE id = 1")
        conn.commit()


def _core_update_through_a_qualified_clause(env: Env, schema: str) -> None:
    qualified = table("yc_name_only", column("id"), column("n"), schema=schema)
    with env.engine.begin() as conn:  # Core, through another lightweight clause spelling the schema
        conn.execute(qualified.update().where(qualified.c.id == 1).values(n=qualified.c.n + 1))


@pytest.mark.parametrize("write", [_schema_qualified_raw_update, _core_update_through_a_qualified_clause])
@pytest.mark.parametrize("env", ["postgres+redis"], indirect=True)
def test_a_write_to_an_uncatalogued_table_retires_cached_reads_of_it(
    env: Env, pg_schema: str, write: Any
) -> None:
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
        write(env, pg_schema)
        assert read() == 2
    finally:
        with env.engine.begin() as conn:
            conn.exec_driver_sql("DROP TABLE IF EXISTS yc_name_only")


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
            # a query returns the object already in the identity map as it was loaded (no refresh)
            return self.session.scalars(select(Author).where(Author.id == author_id)).one().name

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


def test_a_raw_write_also_retires_name_only_reads_sharing_a_known_tables_name() -> None:
    from sqlalchemy import Column, Integer, MetaData, Table

    from yokedcache.integrations.sqlalchemy.catalog import Catalog, name_only_tags

    known = Table("daily", MetaData(), Column("id", Integer, primary_key=True), schema="reporting")
    catalog = Catalog.build([known])
    read_tags = set(name_only_tags(table("daily", column("id"))))  # a lightweight read of "daily"
    written = catalog.written_by_sql("UPDATE daily SET id = 2")
    assert "reporting.daily" in written  # the known table...
    assert read_tags <= written  # ...and the name-only reads of the same name


def test_a_memory_entry_read_inside_a_computation_counts_as_used_and_a_metadata_call_does_not() -> None:
    cache = YokedCache(memory_max_size=3)  # the memory backend evicts the least recently used entry

    @cached(cache=cache, ttl=600)
    def reads_hot() -> int:
        return int(cache.get_sync("hot"))

    cache.set_sync("hot", 1, tags=["t"])
    cache.set_sync("cold", 2, tags=["t"])
    assert reads_hot() == 1  # a read inside a computation is a use; the computed value takes the third slot
    cache.get_meta_sync("cold")  # looking at an entry's metadata is not
    cache.set_sync("new", 3)  # so the least recently used, evicted now, is "cold"
    assert cache.get_sync("cold") is None
    assert cache.get_sync("hot") == 1
