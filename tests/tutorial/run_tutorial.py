"""Drives the tutorial's modules (models, cached_queries, repositories, cache_warming, monitoring) as
written.

Run in a fresh process (the tutorial's files in ``examples/blog`` import each other as top-level modules,
so that folder goes first on ``sys.path``), with ``DATABASE_URL`` and, for Redis, ``YOKEDCACHE_REDIS_URL`` and
``YOKEDCACHE_KEY_PREFIX`` set: that is how the tutorial's ``cache = YokedCache()`` and
``create_engine(DATABASE_URL)`` pick their targets.

Every SQL statement the database receives is counted with a ``before_cursor_execute`` listener, so a cache hit
is a call that sent 0 statements.

Modes:
- ``full``: seeds the tables, exercises Pattern 1, Pattern 3, cache warming and monitoring, and prints one
  ``RESULT {json}`` line with what was observed;
- ``serve``: reads commands from stdin (``call ID``, ``invalidate``, ``rename ID NAME``, ``quit``) and answers
  each with one JSON line, so a test can interleave two processes sharing Redis.
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

# The tutorial's files are the ones in examples/blog (verbatim but for missing imports): run those.
sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "examples" / "blog"))

import models
from models import Post, SessionLocal, User
from sqlalchemy import event

STATEMENTS: list[str] = []


def _count(conn: Any, cursor: Any, statement: str, *rest: Any) -> None:
    STATEMENTS.append(statement)


event.listen(models.engine, "before_cursor_execute", _count)

import cached_queries  # noqa: E402  (after the listener: its import must not run SQL we miss)
from cached_queries import cache, get_published_posts, get_user_by_id, get_user_stats  # noqa: E402


async def measured(awaitable: Any) -> tuple[Any, int]:
    """The awaitable's result and how many SQL statements it sent."""
    before = len(STATEMENTS)
    result = await awaitable
    return result, len(STATEMENTS) - before


def seed() -> None:
    with SessionLocal() as session:
        if session.query(User).count():
            return
        users = [
            User(username=name, email=f"{name}@example.com", full_name=name.title(), is_active=name != "dave")
            for name in ("alice", "bob", "carol", "dave", "erin")
        ]
        session.add_all(users)
        session.flush()
        session.add_all(
            [
                # Explicit times: the tutorial orders posts by created_at, and rows added in one flush
                # can get equal default timestamps (then their order would be the database's choice).
                Post(title="Hello", content="short", published=True, author_id=users[0].id,
                     created_at=datetime(2024, 1, 1, 9, 0)),
                Post(title="Long read", content="x" * 250, published=True, author_id=users[1].id,
                     created_at=datetime(2024, 1, 1, 10, 0)),
                Post(title="Draft", content="wip", published=False, author_id=users[0].id,
                     created_at=datetime(2024, 1, 1, 11, 0)),
            ]
        )
        session.commit()


class RepositorySession:
    """A session for the repositories, whose ``create`` does ``await self.session.commit()``.

    The tutorial gets it from ``cached_dependency`` (Pattern 2), whose sessions' ``commit`` returns an
    awaitable (API.md §8.2). It is used when it exists; otherwise a plain session gets that behaviour here.
    The dependency's generator is kept open until ``close()``: its teardown ends the session's special powers.
    """

    def __init__(self) -> None:
        self.generator: Any = None
        try:
            from yokedcache import cached_dependency
        except (ImportError, AttributeError):
            cached_dependency = None
        if cached_dependency is not None:
            dependency = cached_dependency(models.get_session, cache=cache, ttl=300, table_name="users")
            self.generator = dependency()
            self.session = next(self.generator)
            self.kind = "cached_dependency"
            return
        self.session = SessionLocal()
        self.kind = "emulated"
        commit = self.session.commit

        def awaitable_commit() -> Any:
            commit()
            future = asyncio.get_event_loop().create_future()
            future.set_result(None)
            return future

        self.session.commit = awaitable_commit  # type: ignore[method-assign]

    def close(self) -> None:
        if self.generator is not None:
            self.generator.close()
        else:
            self.session.close()


async def full() -> dict[str, Any]:
    seed()
    out: dict[str, Any] = {}

    # --- Pattern 1 ---------------------------------------------------------------------------------
    first, out["p1_user_miss"] = await measured(get_user_by_id(1))
    again, out["p1_user_hit"] = await measured(get_user_by_id(1))
    out["p1_user_equal"] = first == again and first["username"] == "alice"
    _, out["p1_missing_miss"] = await measured(get_user_by_id(999))
    missing, out["p1_missing_hit"] = await measured(get_user_by_id(999))
    out["p1_missing_is_none"] = missing is None
    posts, out["p1_posts_miss"] = await measured(get_published_posts())
    _, out["p1_posts_hit"] = await measured(get_published_posts())
    _, out["p1_posts_hit_explicit_default"] = await measured(get_published_posts(limit=10))
    out["p1_posts"] = [(p["title"], len(p["content"]), p["author"]["username"]) for p in posts]
    stats, out["p1_stats_miss"] = await measured(get_user_stats())
    stats_again, out["p1_stats_hit"] = await measured(get_user_stats())
    out["p1_stats_equal"] = stats == stats_again and stats["total_users"] == 5
    await cache.invalidate_tags(["users"])
    _, out["p1_user_after_invalidate"] = await measured(get_user_by_id(1))
    _, out["p1_user_hit_after_recompute"] = await measured(get_user_by_id(1))
    _, out["p1_posts_after_users_invalidated"] = await measured(get_published_posts())

    # --- Pattern 3 ---------------------------------------------------------------------------------
    from repositories import PostRepository, UserRepository

    provider = RepositorySession()
    session, out["p3_session"] = provider.session, provider.kind
    users = UserRepository(session)
    user, out["p3_user_miss"] = await measured(users.get_by_id(1))
    with SessionLocal() as other:
        cached_user, out["p3_user_hit_other_instance"] = await measured(UserRepository(other).get_by_id(1))
    columns = ("id", "username", "email", "full_name", "is_active", "created_at")
    out["p3_user_type"] = type(cached_user).__name__
    out["p3_user_columns_equal"] = all(getattr(user, c) == getattr(cached_user, c) for c in columns)
    await PostRepository(session).get_by_id(1)
    post_again, out["p3_post_hit"] = await measured(PostRepository(session).get_by_id(1))
    user_again, _ = await measured(users.get_by_id(1))
    out["p3_types_never_shared"] = [type(post_again).__name__, type(user_again).__name__]
    out["p3_post_title"] = post_again.title
    _, out["p3_active_miss"] = await measured(users.get_active_users())
    active_again, out["p3_active_hit"] = await measured(users.get_active_users())
    out["p3_active"] = [u.username for u in active_again]
    out["p3_active_types"] = sorted({type(u).__name__ for u in active_again})
    by_name, out["p3_by_username_miss"] = await measured(users.get_by_username("carol"))
    _, out["p3_by_username_hit"] = await measured(users.get_by_username("carol"))
    out["p3_by_username"] = by_name.email
    created = await users.create({"username": "frank", "email": "frank@example.com", "full_name": "Frank"})
    out["p3_created_id"] = created.id
    after_create, out["p3_active_after_create"] = await measured(users.get_active_users())
    out["p3_active_after_create_names"] = [u.username for u in after_create]
    published, _ = await measured(PostRepository(session).get_published())
    await PostRepository(session).create(
        {"title": "New", "content": "fresh", "published": True, "author_id": created.id}
    )
    published_after, out["p3_published_after_create"] = await measured(
        PostRepository(session).get_published()
    )
    out["p3_published_counts"] = [len(published), len(published_after)]
    provider.close()

    # --- cache warming -----------------------------------------------------------------------------
    import cache_warming

    await cache.invalidate_tags(["users", "posts", "analytics"])
    _, out["warm_statements"] = await measured(cache_warming.full_cache_warm())
    served = 0
    for user_id in range(1, 51):
        _, n = await measured(get_user_by_id(user_id))
        served += n
    _, n_posts = await measured(get_published_posts(limit=20))
    _, n_stats = await measured(get_user_stats())
    out["after_warm_statements"] = served + n_posts + n_stats

    # --- monitoring --------------------------------------------------------------------------------
    import monitoring

    await cache.invalidate_tags(["users"])
    _, out["monitor_statements"] = await measured(monitoring.performance_test())
    out["monitor_calls"] = sorted(monitoring.monitor.get_stats())

    function_stats = (await cache.get_stats()).functions
    out["function_stats"] = function_stats.get("cached_queries.get_user_by_id")
    out["repository_stats"] = {
        name.split(".", 1)[1]: [stats["hits"], stats["misses"]]
        for name, stats in function_stats.items()
        if name.startswith("repositories.")
    }
    out["backend"] = cache.backend.kind
    out["cached_queries_module"] = cached_queries.get_user_by_id.__module__
    await cache.flush_all()
    await cache.disconnect()
    return out


async def serve() -> None:
    seed()
    loop = asyncio.get_running_loop()
    while True:
        line = (await loop.run_in_executor(None, sys.stdin.readline)).split()
        if not line or line[0] == "quit":
            break
        reply: dict[str, Any] = {"command": line[0]}
        if line[0] == "call":
            user, reply["statements"] = await measured(get_user_by_id(int(line[1])))
            reply["username"] = user and user["username"]
        elif line[0] == "invalidate":
            reply["result"] = await cache.invalidate_tags(["users"])
        elif line[0] == "rename":
            with SessionLocal() as session:
                session.query(User).filter(User.id == int(line[1])).update({"username": line[2]})
                session.commit()
        print(json.dumps(reply), flush=True)
    await cache.disconnect()


if __name__ == "__main__":
    if sys.argv[1] == "full":
        result = asyncio.run(full())
        print("RESULT " + json.dumps(result, default=str))
    else:
        asyncio.run(serve())
