"""Run the SQLAlchemy tutorial end to end and show what the cache does.

    python examples/demo.py            # SQLite file + in-memory cache, no service needed
    python examples/demo.py --serve    # serve the tutorial's FastAPI app instead

It needs ``pip install 'yokedcache[sqlalchemy]'``, plus ``fastapi uvicorn`` for ``--serve`` (``make demo`` and
``make serve`` install all of it into .venv).

Set DATABASE_URL (e.g. postgresql://postgres@127.0.0.1/test) and YOKEDCACHE_REDIS_URL
(e.g. redis://127.0.0.1:6379/0) to run the same thing on PostgreSQL and Redis. Both modes DROP and recreate
the tutorial's ``users`` and ``posts`` tables in that database and flush the cache's key prefix, so point
them at a scratch database. ``--serve`` listens on 127.0.0.1, port $PORT (default 8000).
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import importlib.util
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).parent
BLOG = HERE / "blog"


def missing_requirements(serve: bool) -> list[str]:
    """What to pip install before this can run (empty when everything is there)."""
    needed = {"sqlalchemy": "yokedcache[sqlalchemy]", "greenlet": "yokedcache[sqlalchemy]"}
    if serve:
        needed |= {"fastapi": "fastapi", "uvicorn": "uvicorn"}
    return sorted({package for module, package in needed.items() if importlib.util.find_spec(module) is None})


def postgres_driver(url: str) -> str:
    """SQLAlchemy 2.1 reads ``postgresql://`` as psycopg (3); the tutorial installs psycopg2-binary.
    Name the driver that is installed when only psycopg2 is."""
    if not url.startswith("postgresql://"):
        return url
    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url.split("://", 1)[1]
    return url


def configure_environment() -> None:
    """The tutorial's modules read DATABASE_URL at import time; default to a fresh SQLite file of this run's
    own (removed at exit), so that concurrent runs never share or delete each other's database."""
    if "DATABASE_URL" in os.environ:
        os.environ["DATABASE_URL"] = postgres_driver(os.environ["DATABASE_URL"])
    else:
        directory = tempfile.mkdtemp(prefix="yokedcache-demo-")
        atexit.register(shutil.rmtree, directory, ignore_errors=True)
        os.environ["DATABASE_URL"] = f"sqlite:///{Path(directory) / 'tutorial.db'}"
    sys.path.insert(0, str(BLOG))


class StatementCounter:
    """Counts SQL statements sent to the database: a cache hit sends none."""

    def __init__(self, engine: Any) -> None:
        from sqlalchemy import event

        self.count = 0
        event.listen(engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1


def seed(models: Any, users: int = 60, posts_per_user: int = 4) -> None:
    from datetime import datetime, timedelta

    models.Base.metadata.drop_all(bind=models.engine)
    models.Base.metadata.create_all(bind=models.engine)
    start = datetime(2026, 1, 1)
    with models.SessionLocal() as session:
        for i in range(1, users + 1):
            user = models.User(
                username=f"user{i}",
                email=f"user{i}@example.com",
                full_name=f"User Number {i}",
                is_active=i % 7 != 0,
            )
            session.add(user)
            for j in range(posts_per_user):
                session.add(
                    models.Post(
                        title=f"Post {j} by user{i}",
                        content=("Lorem ipsum dolor sit amet. " * 12),
                        published=j % 2 == 0,
                        created_at=start + timedelta(hours=i * 10 + j),
                        author=user,
                    )
                )
        session.commit()


async def measure(counter: StatementCounter, call: Callable[[], Awaitable[Any]]) -> tuple[float, int, Any]:
    before = counter.count
    started = time.perf_counter()
    result = await call()
    return (time.perf_counter() - started) * 1000, counter.count - before, result


def session_query(dependency: Any, query: Callable[[Any], Any]) -> Callable[[], Awaitable[Any]]:
    """Open a session through the cached dependency, as FastAPI would, run one query, close it."""

    async def run() -> Any:
        generator = dependency()
        db = next(generator)
        try:
            return query(db)
        finally:
            generator.close()

    return run


async def run_demo() -> None:
    from rich.console import Console
    from rich.progress import Progress
    from rich.table import Table
    from sqlalchemy import select

    # isort: split
    # The tutorial's modules (examples/blog is on sys.path): they build the engine and the cache on import.
    import cache_warming
    import cached_queries
    import models
    from cached_sessions import cached_get_session
    from monitoring import performance_test
    from repositories import PostRepository, UserRepository

    console = Console()
    if not console.is_terminal:  # a log or a pipe: wide enough that no table cell wraps
        console = Console(width=140)
    cache = cached_queries.cache
    backend = cache.backend.kind
    console.print(
        f"[bold]yokedcache demo[/bold] — database {models.engine.url.render_as_string()}, cache: {backend}"
    )
    seed(models)
    await cache.flush_all()
    counter = StatementCounter(models.engine)

    def repo_call(repo_cls: Any, method: str, *args: Any) -> Callable[[], Awaitable[Any]]:
        async def run() -> Any:
            generator = cached_get_session()
            db = next(generator)
            try:
                return await getattr(repo_cls(db), method)(*args)
            finally:
                generator.close()

        return run

    queries: list[tuple[str, str, Callable[[], Awaitable[Any]]]] = [
        ("1 @cached", "get_user_by_id(1)", lambda: cached_queries.get_user_by_id(1)),
        ("1 @cached", "get_published_posts(limit=10)", lambda: cached_queries.get_published_posts(limit=10)),
        ("1 @cached", "get_user_stats()", cached_queries.get_user_stats),
        (
            "2 session",
            "query(User).filter(id == 1).first()",
            session_query(
                cached_get_session, lambda db: db.query(models.User).filter(models.User.id == 1).first()
            ),
        ),
        (
            "2 session",
            "select(Post).where(published).order_by(id desc).limit(20)",
            session_query(
                cached_get_session,
                lambda db: (
                    db.execute(
                        select(models.Post)
                        .where(models.Post.published == True)  # noqa: E712
                        .order_by(models.Post.id.desc())
                        .limit(20)
                    )
                    .scalars()
                    .all()
                ),
            ),
        ),
        ("3 repository", "UserRepository.get_by_id(2)", repo_call(UserRepository, "get_by_id", 2)),
        ("3 repository", "PostRepository.get_published(10)", repo_call(PostRepository, "get_published", 10)),
    ]

    table = Table(title="Each query twice: the second call is served by the cache")
    for column in ("pattern", "query", "first call", "cached call", "SQL first", "SQL cached", "speed-up"):
        table.add_column(
            column,
            justify="left" if column in ("pattern", "query") else "right",
            overflow="fold" if column == "query" else "ellipsis",  # narrow terminals: whole names, folded
        )
    for pattern, name, call in queries:
        first_ms, first_sql, _ = await measure(counter, call)
        cached_ms, cached_sql, _ = await measure(counter, call)
        speedup = f"{first_ms / cached_ms:.0f}×" if cached_ms else "-"  # noqa: RUF001
        table.add_row(
            pattern,
            name,
            f"{first_ms:.2f} ms",
            f"{cached_ms:.3f} ms",
            str(first_sql),
            str(cached_sql),
            speedup,
        )
    console.print(table)

    stats = await cache.get_stats()
    rates = Table(title=f"Hit rates (overall {stats.hit_rate:.0%})")
    for column in ("cached function or query shape", "hits", "misses", "hit rate", "time saved"):
        rates.add_column(column)
    named = [(".".join(name.split(".")[-2:]), figures) for name, figures in stats.functions.items()]
    named += [(" ".join(shape.split())[:70], figures) for shape, figures in stats.queries.items()]
    for name, figures in named:
        rates.add_row(
            name,
            str(figures["hits"]),
            str(figures["misses"]),
            f"{figures['hit_rate']:.0%}",
            f"{figures.get('time_saved_ms', 0):.1f} ms",
        )
    console.print(rates)

    console.print(
        "\n[bold]A write:[/bold] PostRepository.create(...) commits a new post through the cached session"
    )
    await repo_call(
        PostRepository,
        "create",
        {"title": "Fresh post", "content": "just written", "published": True, "author_id": 3},
    )()
    after = Table(title="After the commit: what was refreshed and what is still cached")
    for column in ("query", "SQL sent", "state"):
        after.add_column(column, overflow="fold")
    for _pattern, name, call in queries:
        _, sql, result = await measure(counter, call)
        state = "[green]still cached[/green]" if sql == 0 else "[yellow]refreshed from the database[/yellow]"
        if (
            name.startswith("select(Post)")
            or name.startswith("get_published")
            or name.startswith("PostRepository")
        ):
            fresh = "Fresh post" in repr([getattr(p, "title", p) for p in (result or [])])
            state += " (new post visible)" if fresh else " [red](new post missing!)[/red]"
        after.add_row(name, str(sql), state)
    console.print(after)
    console.print(
        "Every cached value depends on the tables its SQL read, session queries and @cached functions\n"
        "alike, so the commit that wrote [i]posts[/i] refreshed exactly the entries that read posts:\n"
        'get_user_stats too, though its tag "analytics" was never invalidated. Entries that read only\n'
        "[i]users[/i] are still cached."
    )

    console.print("\n[bold]Warming[/bold] (the tutorial's cache_warming.py), with a progress bar")
    await cache.invalidate_tags(["users", "posts", "analytics"])
    user_ids = list(range(1, 51))
    with Progress(console=console) as progress:
        task = progress.add_task("warming users", total=len(user_ids))

        async def warm_one(user_id: int) -> None:
            await cached_queries.get_user_by_id(user_id)
            progress.advance(task)

        await asyncio.gather(*(warm_one(u) for u in user_ids))
    await cache_warming.warm_popular_content()
    before = counter.count
    await asyncio.gather(*(cached_queries.get_user_by_id(u) for u in user_ids))
    console.print(f"50 warmed users read back with {counter.count - before} SQL statements")
    await cache.invalidate_tags(["users"])  # so the tutorial's performance test starts with a miss
    await performance_test()
    await cache.disconnect()


def serve() -> None:
    import uvicorn

    # isort: split
    import models
    from app import app
    from cached_queries import cache

    seed(models)
    cache.flush_all_sync()  # entries cached by an earlier run (Redis keeps them) describe the old tables
    port = int(os.environ.get("PORT", "8000"))
    base = f"http://127.0.0.1:{port}"
    print(f"Serving the tutorial's blog on {base} (database {models.engine.url.render_as_string()}) — try:")
    for path in ("/users", "/users/1", "/posts", "/posts/1", "/published", "/profile/1", "/stats", "/docs"):
        print(f"  {base}{path}")
    print(
        f"  curl -X POST {base}/users -H 'content-type: application/json' "
        '-d \'{"username": "ada", "email": "ada@example.com"}\''
    )
    print(
        f"  curl -X PATCH {base}/users/1 -H 'content-type: application/json' "
        '-d \'{"full_name": "Ada L."}\'',
        flush=True,
    )
    # uvicorn re-raises SIGTERM after its graceful shutdown; exit normally then, so that atexit removes the
    # demo's temporary database.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    uvicorn.run(app, host="127.0.0.1", port=port)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--serve", action="store_true", help="serve the FastAPI app instead of running the demo"
    )
    args = parser.parse_args()
    missing = missing_requirements(args.serve)
    if missing:
        packages = " ".join(f"'{name}'" for name in missing)
        sys.exit(f"{Path(__file__).name} needs more packages: pip install {packages}")
    configure_environment()
    if args.serve:
        serve()
    else:
        asyncio.run(run_demo())


if __name__ == "__main__":
    main()
