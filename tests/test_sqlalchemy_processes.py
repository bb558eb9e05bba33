"""Two processes, one Redis: entries are shared (stable keys) and a commit in one is seen by the other."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from sqlalchemy import create_engine, select
from sqlalchemy.orm import Session

from yokedcache import YokedCache
from yokedcache.sqlalchemy import cache_queries

from .test_sqlalchemy_support import Author, Base, Statements, seed

ROOT = Path(__file__).resolve().parent.parent

WORKER = """
import json, sys
sys.path.insert(0, {root!r})
from sqlalchemy import create_engine, event, select
from sqlalchemy.orm import Session
from yokedcache import YokedCache
from yokedcache.sqlalchemy import cache_queries
from tests.test_sqlalchemy_support import Author

engine = create_engine({url!r})
sent = []
event.listen(engine, "before_cursor_execute", lambda c, cur, st, *a: sent.append(st))
cache = YokedCache(redis_url={redis!r}, key_prefix={prefix!r})
with cache_queries(Session(engine), cache=cache) as session:
    names = list(session.scalars(select(Author.name).order_by(Author.id)))
    if len(sys.argv) > 1:
        session.get(Author, 2).name = sys.argv[1]
        session.commit()
print(json.dumps({{"names": names, "statements": len(sent)}}))
"""


def run_worker(script: Path, *args: str) -> dict[str, Any]:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run(
        [sys.executable, str(script), *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def test_two_processes_share_entries_and_see_each_others_commits(
    redis_url: str, prefix: str, tmp_path: Path
) -> None:
    url = f"sqlite:///{tmp_path}/shared.sqlite"
    engine = create_engine(url)
    Base.metadata.create_all(engine)
    with Session(engine) as session:
        seed(session)
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), url=url, redis=redis_url, prefix=prefix))
    cache = YokedCache(redis_url=redis_url, key_prefix=prefix)
    statements = Statements().attach(engine)
    query = select(Author.name).order_by(Author.id)
    try:
        assert run_worker(script) == {"names": ["ada", "bob"], "statements": 1}
        with cache_queries(Session(engine), cache=cache) as session:
            assert list(session.scalars(query)) == ["ada", "bob"]
        assert statements.count() == 0, "the other process's entry was not found: keys differ per process"

        with cache_queries(Session(engine), cache=cache) as session:
            session.get(Author, 1).name = "written here"
            session.commit()
        assert run_worker(script, "written there")["names"] == ["written here", "bob"]
        with cache_queries(Session(engine), cache=cache) as session:
            assert list(session.scalars(query)) == ["written here", "written there"]
    finally:
        cache.flush_all_sync()
        cache.disconnect_sync()
        engine.dispose()
