"""Drive the blog example's real FastAPI app (``examples/blog/app.py``) in this fresh process and print what
happened as JSON.

The tutorial's modules read ``DATABASE_URL`` and ``YOKEDCACHE_*`` at import time and import each other by
bare name, so each configuration needs its own interpreter: ``tests/test_example_app.py`` runs this script
once per configuration. Every request is recorded with its status, body, the number of SQL statements the
database received while it was served (a ``before_cursor_execute`` listener on ``models.engine``) and the
number of pooled connections still checked out after it.

    DATABASE_URL=sqlite:////tmp/x.db python tests/example_app/drive_app.py
"""

from __future__ import annotations

import asyncio
import json
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "examples" / "blog"))

import httpx  # noqa: E402
from sqlalchemy import event  # noqa: E402

# isort: split
# The example's modules, by bare name as the tutorial imports them; models.py creates the tables on import.
import models  # noqa: E402
from app import app  # noqa: E402
from cached_queries import cache  # noqa: E402

MARKER = "DRIVE_APP_RESULT:"
USERS = 5
POSTS_PER_USER = 2


def seed() -> None:
    """A small blog: USERS users, each with POSTS_PER_USER posts of which the first is published."""
    models.Base.metadata.drop_all(bind=models.engine)
    models.Base.metadata.create_all(bind=models.engine)
    with models.SessionLocal() as session:
        for i in range(1, USERS + 1):
            user = models.User(username=f"user{i}", email=f"user{i}@example.com", full_name=f"User {i}")
            session.add(user)
            for j in range(POSTS_PER_USER):
                session.add(
                    models.Post(
                        title=f"Post {j} by user{i}",
                        content="text " * 10,
                        published=j == 0,
                        created_at=datetime(2020, 1, i, j),  # older than any post the flows create,
                        author=user,
                    )
                )
        session.commit()


class Statements:
    def __init__(self) -> None:
        self.count = 0
        event.listen(models.engine, "before_cursor_execute", self._seen)

    def _seen(self, *args: Any) -> None:
        self.count += 1


async def run_flows() -> list[dict[str, Any]]:
    statements = Statements()
    steps: list[dict[str, Any]] = []
    transport = httpx.ASGITransport(app=app)  # raises the app's unhandled exceptions: a 500 fails the run
    async with httpx.AsyncClient(transport=transport, base_url="http://blog.test") as client:

        async def call(name: str, method: str, path: str, body: dict[str, Any] | None = None) -> None:
            before = statements.count
            response = await client.request(method, path, json=body)
            steps.append(
                {
                    "name": name,
                    "request": f"{method} {path}",
                    "status": response.status_code,
                    "sql": statements.count - before,
                    "checked_out": models.engine.pool.checkedout(),
                    "body": response.json(),
                }
            )

        # Reads, twice each: the second is served by the cache.
        for round_ in (1, 2):
            await call(f"users_{round_}", "GET", "/users")
            await call(f"user1_{round_}", "GET", "/users/1")
            await call(f"posts_{round_}", "GET", "/posts")
            await call(f"profile1_{round_}", "GET", "/profile/1")
            await call(f"published_{round_}", "GET", "/published")
            await call(f"stats_{round_}", "GET", "/stats")

        # A commit that writes users: what read users is refreshed, what read only posts stays cached.
        await call("create_user", "POST", "/users", {"username": "ada", "email": "ada@example.com"})
        await call("users_after_create_user", "GET", "/users")
        await call("user1_after_create_user", "GET", "/users/1")
        await call("posts_after_create_user", "GET", "/posts")
        await call("stats_after_create_user", "GET", "/stats")

        # An attribute update (no explicit invalidation in the endpoint: the commit does it).
        await call("patch_user1", "PATCH", "/users/1", {"full_name": "Ada Lovelace"})
        await call("user1_after_patch", "GET", "/users/1")
        await call("user1_after_patch_again", "GET", "/users/1")
        await call("users_after_patch", "GET", "/users")
        await call("profile1_after_patch", "GET", "/profile/1")
        await call("posts_after_patch", "GET", "/posts")

        # A commit that writes posts: the post lists are refreshed, the user reads stay cached.
        await call(
            "create_post", "POST", "/posts",
            {"title": "Fresh post", "content": "just written", "published": True, "author_id": 2},
        )  # fmt: skip
        await call("posts_after_create_post", "GET", "/posts")
        await call("posts_after_create_post_again", "GET", "/posts")
        await call("published_after_create_post", "GET", "/published")
        await call("users_after_create_post", "GET", "/users")
        await call("user1_after_create_post", "GET", "/users/1")

        # Error paths: each must close its session (checked_out back to 0) and invalidate nothing.
        await call("missing_user", "GET", "/users/999")
        await call("missing_user_again", "GET", "/users/999")
        await call("missing_post", "GET", "/posts/999")
        await call("missing_profile", "GET", "/profile/999")
        await call("patch_missing_user", "PATCH", "/users/999", {"full_name": "nobody"})
        await call("duplicate_user", "POST", "/users", {"username": "ada", "email": "ada@example.com"})
        await call(
            "post_unknown_author", "POST", "/posts",
            {"title": "Orphan", "content": "x", "published": True, "author_id": 999},
        )  # fmt: skip
        await call("invalid_body", "POST", "/users", {"username": "no email"})
        await call("users_after_errors", "GET", "/users")
        await call("posts_after_errors", "GET", "/posts")
        await call("stats_final", "GET", "/stats")
    return steps


async def main() -> None:
    seed()
    await cache.flush_all()  # entries a previous run left under this prefix would describe other rows
    try:
        steps = await run_flows()
        result = {
            "database": models.engine.dialect.name,
            "driver": models.engine.dialect.driver,
            "cache_backend": cache.backend.kind,
            "steps": steps,
            "checked_out_at_end": models.engine.pool.checkedout(),
        }
    finally:
        await cache.flush_all()
        await cache.disconnect()
        models.engine.dispose()
    print(MARKER + json.dumps(result))


if __name__ == "__main__":
    asyncio.run(main())
