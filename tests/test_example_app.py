"""The tutorial's blog served by its real FastAPI app (``examples/blog/app.py``), driven over ASGI.

``tests/example_app/drive_app.py`` runs in a fresh interpreter per configuration (the tutorial's modules build
their engine and cache at import time from ``DATABASE_URL`` and ``YOKEDCACHE_*``), seeds a small blog, sends
the requests and prints, for each, the status, the body, the SQL statements the database received and the
pooled connections still checked out. This file asserts what the design promises:

- a repeated read is served by the cache: 0 SQL statements;
- a commit that writes a table refreshes every cached value that read it (session queries, ``@cached``
  functions and repository methods alike) and leaves the others cached;
- error responses close their session (no connection stays checked out) and invalidate nothing.

Configurations: SQLite file + in-memory cache (always), PostgreSQL + Redis (fails with CI=true when a service
is missing, skips elsewhere).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
DRIVER = ROOT / "tests" / "example_app" / "drive_app.py"
MARKER = "DRIVE_APP_RESULT:"


def psycopg2_url(url: str) -> str:
    """SQLAlchemy 2.1 reads ``postgresql://`` as psycopg 3; the test environment has psycopg2."""
    return "postgresql+psycopg2://" + url.split("://", 1)[1] if url.startswith("postgresql://") else url


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("YOKEDCACHE_") and k != "DATABASE_URL"}


@pytest.fixture(scope="module", params=["sqlite+memory", "postgresql+redis"])
def app_env(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, str]]:
    env = clean_env()
    env["YOKEDCACHE_KEY_PREFIX"] = f"ycapp{uuid.uuid4().hex[:10]}"
    if request.param == "sqlite+memory":
        env["DATABASE_URL"] = f"sqlite:///{tmp_path_factory.mktemp('blog') / 'blog.db'}"
        yield env
        return

    import redis
    import sqlalchemy

    env["YOKEDCACHE_REDIS_URL"] = request.getfixturevalue("redis_url")
    url = psycopg2_url(request.getfixturevalue("postgres_url"))
    schema = f"yc_app_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    # The tutorial's tables are called users/posts: a private schema keeps parallel runs and tests apart.
    env["DATABASE_URL"] = f"{url}?options=-csearch_path%3D{schema}"
    try:
        yield env
    finally:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
        client = redis.Redis.from_url(env["YOKEDCACHE_REDIS_URL"])
        for key in client.scan_iter(f"{env['YOKEDCACHE_KEY_PREFIX']}:*"):
            client.delete(key)
        client.close()


def drive(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(DRIVER)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )
    assert done.returncode == 0, f"driver failed\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    assert len(lines) == 1, done.stdout
    return json.loads(lines[0][len(MARKER) :])


@pytest.fixture(scope="module")
def run(app_env: dict[str, str]) -> dict[str, Any]:
    return drive(app_env)


def steps_of(run: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {step["name"]: step for step in run["steps"]}


def test_configuration_is_the_one_asked_for(run: dict[str, Any], app_env: dict[str, str]) -> None:
    if "YOKEDCACHE_REDIS_URL" in app_env:
        assert (run["database"], run["cache_backend"]) == ("postgresql", "redis")
    else:
        assert (run["database"], run["cache_backend"]) == ("sqlite", "memory")


def test_repeated_reads_send_no_sql(run: dict[str, Any]) -> None:
    steps = steps_of(run)
    for name in ("users", "user1", "posts", "profile1", "published", "stats"):
        first, second = steps[f"{name}_1"], steps[f"{name}_2"]
        assert first["status"] == second["status"] == 200, (first, second)
        assert first["sql"] >= 1, first
        assert second["sql"] == 0, f"{second['request']} sent {second['sql']} SQL statements on a repeat"
        if name != "stats":  # /stats carries the cache's counters, which move
            assert second["body"] == first["body"]
    assert len(steps["users_1"]["body"]) == 5
    assert [p["published"] for p in steps["posts_1"]["body"]] == [True] * 5
    assert steps["user1_1"]["body"]["username"] == "user1"


def test_creating_a_user_refreshes_what_read_users_only(run: dict[str, Any]) -> None:
    steps = steps_of(run)
    created = steps["create_user"]
    assert created["status"] == 201 and created["body"]["username"] == "ada"

    users = steps["users_after_create_user"]
    assert users["sql"] >= 1 and "ada" in [u["username"] for u in users["body"]]
    # GET /users/1 read the users table (and is tagged "users"): refreshed, with the same content.
    user1 = steps["user1_after_create_user"]
    assert user1["sql"] >= 1 and user1["body"] == steps["user1_1"]["body"]
    # GET /posts read only posts: still cached.
    assert steps["posts_after_create_user"]["sql"] == 0
    stats = steps["stats_after_create_user"]
    assert stats["sql"] >= 1 and stats["body"]["site"]["total_users"] == 6


def test_patch_is_visible_at_once_without_explicit_invalidation(run: dict[str, Any]) -> None:
    steps = steps_of(run)
    assert steps["patch_user1"]["status"] == 200
    assert steps["patch_user1"]["body"]["full_name"] == "Ada Lovelace"
    for name in ("user1_after_patch", "users_after_patch", "profile1_after_patch"):
        step = steps[name]
        assert step["sql"] >= 1, f"{step['request']} was served stale from the cache after the PATCH"
    assert steps["user1_after_patch"]["body"]["full_name"] == "Ada Lovelace"
    assert steps["users_after_patch"]["body"][0]["full_name"] == "Ada Lovelace"
    assert steps["profile1_after_patch"]["body"]["full_name"] == "Ada Lovelace"
    assert steps["user1_after_patch_again"]["sql"] == 0
    assert steps["user1_after_patch_again"]["body"]["full_name"] == "Ada Lovelace"
    assert steps["posts_after_patch"]["sql"] == 0


def test_creating_a_post_refreshes_what_read_posts_only(run: dict[str, Any]) -> None:
    steps = steps_of(run)
    created = steps["create_post"]
    assert created["status"] == 201 and created["body"]["title"] == "Fresh post"

    posts = steps["posts_after_create_post"]
    assert posts["sql"] >= 1 and "Fresh post" in [p["title"] for p in posts["body"]]
    assert len(posts["body"]) == 6
    assert steps["posts_after_create_post_again"]["sql"] == 0
    published = steps["published_after_create_post"]
    assert published["sql"] >= 1 and published["body"][0]["title"] == "Fresh post"
    assert published["body"][0]["author"]["username"] == "user2"
    # Nothing that read only users was touched by a commit writing posts.
    assert steps["users_after_create_post"]["sql"] == 0
    assert steps["user1_after_create_post"]["sql"] == 0
    assert steps["user1_after_create_post"]["body"]["full_name"] == "Ada Lovelace"


def test_error_paths_close_their_sessions_and_invalidate_nothing(run: dict[str, Any]) -> None:
    steps = steps_of(run)
    expected = {
        "missing_user": 404,
        "missing_user_again": 404,
        "missing_post": 404,
        "missing_profile": 404,
        "patch_missing_user": 404,
        "duplicate_user": 409,
        "post_unknown_author": 422,
        "invalid_body": 422,
    }
    for name, status in expected.items():
        assert steps[name]["status"] == status, steps[name]
    assert steps["duplicate_user"]["body"]["detail"] == "username or email already taken"
    # The failed writes rolled back: the cached lists are still current and still served from the cache.
    assert steps["users_after_errors"]["sql"] == 0
    assert len(steps["users_after_errors"]["body"]) == 6
    assert steps["posts_after_errors"]["sql"] == 0
    assert len(steps["posts_after_errors"]["body"]) == 6
    # No connection leaked, after any request, nor at the end.
    leaked = [(step["request"], step["checked_out"]) for step in run["steps"] if step["checked_out"]]
    assert leaked == []
    assert run["checked_out_at_end"] == 0


def test_stats_count_the_hits(run: dict[str, Any]) -> None:
    final = steps_of(run)["stats_final"]
    assert final["status"] == 200
    counters = final["body"]["cache"]
    assert counters["cache_hits"] > 0 and counters["cache_misses"] > 0
    assert counters["errors"] == 0
    assert final["body"]["site"] == {
        **final["body"]["site"],
        "total_users": 6,
        "total_posts": 11,
        "published_posts": 6,
    }
    hit_shapes = [shape for shape, figures in counters["queries"].items() if figures["hits"] > 0]
    assert any("FROM users" in shape for shape in hit_shapes), hit_shapes
    assert any("FROM posts" in shape for shape in hit_shapes), hit_shapes
