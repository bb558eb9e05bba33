"""The SQLAlchemy tutorial (seed/000), run as written in fresh processes on SQLite and PostgreSQL, with the
memory backend and with Redis.

``tests/tutorial/`` holds the tutorial's files verbatim (plus the imports it forgot); ``run_tutorial.py``
drives them and counts the SQL statements the database receives, so "a hit" means "0 statements".
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
TUTORIAL = ROOT / "tests" / "tutorial"


def psycopg2_url(url: str) -> str:
    return "postgresql+psycopg2://" + url.split("://", 1)[1] if url.startswith("postgresql://") else url


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'tutorial.db'}"
        return
    import sqlalchemy

    url = psycopg2_url(request.getfixturevalue("postgres_url"))
    schema = f"yc_tut_{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(url)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    try:
        # The tutorial's tables are called users/posts: a private schema keeps parallel runs apart.
        yield f"{url}?options=-csearch_path%3D{schema}"
    finally:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()


@pytest.fixture
def tutorial_env(
    database_url: str, backend_kind: str, request: pytest.FixtureRequest
) -> Iterator[dict[str, str]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YOKEDCACHE_")}
    env["PYTHONPATH"] = str(ROOT / "src")
    env["DATABASE_URL"] = database_url
    prefix = f"yctut{uuid.uuid4().hex[:8]}"
    env["YOKEDCACHE_KEY_PREFIX"] = prefix
    if backend_kind == "redis":
        env["YOKEDCACHE_REDIS_URL"] = request.getfixturevalue("redis_url")
    yield env
    if backend_kind == "redis":
        import redis

        client = redis.Redis.from_url(env["YOKEDCACHE_REDIS_URL"])
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)


def test_tutorial_runs_as_written(tutorial_env: dict[str, str], backend_kind: str) -> None:
    done = subprocess.run(
        [sys.executable, "run_tutorial.py", "full"],
        cwd=TUTORIAL,
        env=tutorial_env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    result: dict[str, Any] = json.loads(next(line for line in lines if line.startswith("RESULT "))[7:])
    assert result["backend"] == backend_kind

    # Pattern 1: the second call sends no SQL; invalidate_tags(["users"]) makes it query again.
    assert result["p1_user_miss"] >= 1 and result["p1_user_hit"] == 0 and result["p1_user_equal"]
    assert result["p1_missing_miss"] >= 1 and result["p1_missing_hit"] == 0 and result["p1_missing_is_none"]
    assert result["p1_posts_miss"] >= 1 and result["p1_posts_hit"] == 0
    assert result["p1_posts_hit_explicit_default"] == 0  # limit=10 spelled out: the same entry
    assert result["p1_posts"] == [["Long read", 203, "bob"], ["Hello", 5, "alice"]]
    assert result["p1_stats_miss"] == 4 and result["p1_stats_hit"] == 0 and result["p1_stats_equal"]
    assert result["p1_user_after_invalidate"] >= 1 and result["p1_user_hit_after_recompute"] == 0
    assert result["p1_posts_after_users_invalidated"] == 0  # another tag: untouched

    # Pattern 3: repositories return mapped User/Post objects; classes never share entries.
    assert result["p3_user_miss"] >= 1 and result["p3_user_hit_other_instance"] == 0
    assert result["p3_user_type"] == "User" and result["p3_user_columns_equal"]
    assert result["p3_post_hit"] == 0
    assert result["p3_types_never_shared"] == ["Post", "User"]
    assert result["p3_post_title"] == "Hello"
    assert result["p3_active_hit"] == 0 and result["p3_active_types"] == ["User"]
    assert result["p3_active"] == ["alice", "bob", "carol", "erin"]
    assert result["p3_by_username_hit"] == 0 and result["p3_by_username"] == "carol@example.com"
    assert result["p3_active_after_create"] >= 1  # create() invalidated "users"
    assert result["p3_active_after_create_names"][-1] == "frank"
    assert result["p3_published_after_create"] >= 1 and result["p3_published_counts"] == [2, 3]
    repository_stats = result["repository_stats"]  # the hits above were @cached hits, not SQL-level ones
    for name in ("UserRepository.get_by_id", "UserRepository.get_active_users", "PostRepository.get_by_id"):
        assert repository_stats[name][0] >= 1, (name, repository_stats)
    assert repository_stats["UserRepository.get_active_users"][1] == 2  # first call, and after create()

    # Warming by calling the decorated functions concurrently, then everything is served from cache.
    assert "Full cache warming completed" in lines
    assert result["warm_statements"] >= 50
    assert result["after_warm_statements"] == 0

    # Monitoring: the first call queries, the second is a hit.
    assert result["monitor_statements"] == 1
    assert result["monitor_calls"] == ["cached_user_first_call", "cached_user_second_call"]
    assert any(line.startswith("cached_user_second_call: ") for line in lines)
    stats = result["function_stats"]
    assert stats["hits"] > 0 and stats["misses"] > 0 and 0 < stats["hit_rate"] < 1


class Server:
    """A tutorial process answering commands on stdin (see run_tutorial.py ``serve``)."""

    def __init__(self, env: dict[str, str]) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "run_tutorial.py", "serve"],
            cwd=TUTORIAL,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    def send(self, command: str) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        assert line, self.proc.stderr.read() if self.proc.stderr else "no output"
        reply: dict[str, Any] = json.loads(line)
        return reply

    def close(self) -> None:
        if self.proc.poll() is None:
            assert self.proc.stdin is not None
            self.proc.stdin.write("quit\n")
            self.proc.stdin.flush()
            self.proc.wait(timeout=30)


@pytest.mark.parametrize("backend_kind", ["redis"], indirect=True)
@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_a_second_process_sees_entries_and_invalidations(tutorial_env: dict[str, str]) -> None:
    first = Server(tutorial_env)
    second: Server | None = None
    try:
        assert first.send("call 2") == {"command": "call", "statements": 1, "username": "bob"}
        second = Server(tutorial_env)  # started after the first one created and seeded the tables
        assert second.send("call 2") == {
            "command": "call",
            "statements": 0,
            "username": "bob",
        }  # shared entry
        first.send("rename 2 robert")
        # The commit retired the entry everywhere: get_user_by_id's query read the users table.
        assert second.send("call 2") == {"command": "call", "statements": 1, "username": "robert"}
        assert first.send("call 2") == {"command": "call", "statements": 0, "username": "robert"}
        assert first.send("invalidate")["result"] >= 1  # the tutorial's explicit tag still works
        assert second.send("call 2") == {"command": "call", "statements": 1, "username": "robert"}
    finally:
        first.close()
        if second is not None:
            second.close()
