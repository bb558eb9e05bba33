"""The README's demo (``make demo`` runs ``python examples/demo.py``) and ``--serve``, run as a user would.

- With this interpreter (always): the demo on SQLite + the in-memory cache, the demo on PostgreSQL + Redis
  (fails with CI=true when a service is missing, skips elsewhere), and ``--serve`` answering over real HTTP.
- On a fresh virtual environment (slow, so only with CI=true or YOKEDCACHE_TEST_FRESH_VENV=1): ``python -m
  venv``, ``pip install '<repo>[sqlalchemy]'`` (what the demo's docstring asks for), the demo from a scratch
  directory, then ``--serve`` after ``pip install fastapi uvicorn``.

Each run's output is checked row by row: the tables' titles, every query, 0 SQL statements for every cached
call, what the write refreshed and what it left cached, and the warming line.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "examples" / "demo.py"
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
FRESH_VENV = IN_CI or os.environ.get("YOKEDCACHE_TEST_FRESH_VENV") == "1"
DEMO_SECONDS = 30

TITLES = (
    "Each query twice: the second call is served by the cache",
    "Hit rates (overall ",
    "After the commit: what was refreshed and what is still cached",
)
STILL = "still cached"
REFRESHED_WITH_POST = "refreshed from the database (new post visible)"
# What the write (PostRepository.create commits a post) must do to each query's cached value: the entries
# that read ``posts`` are refreshed (and show the new post), those that read only ``users`` stay cached.
AFTER_THE_WRITE = {
    "get_user_by_id(1)": STILL,
    "get_published_posts(limit=10)": REFRESHED_WITH_POST,
    "get_user_stats()": "refreshed from the database",
    "query(User).filter(id == 1).first()": STILL,
    "select(Post).where(published).order_by(id desc).limit(20)": REFRESHED_WITH_POST,
    "UserRepository.get_by_id(2)": STILL,
    "PostRepository.get_published(10)": REFRESHED_WITH_POST,
}
QUERIES = tuple(AFTER_THE_WRITE)
SERVED_PATHS = ("/users", "/users/1", "/posts", "/posts/1", "/published", "/profile/1", "/stats", "/docs")
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


# --- running it ---------------------------------------------------------------------------------------------


def demo_env(tmp: Path, **extra: str) -> dict[str, str]:
    """The caller's environment without anything that would change what the demo does or prints."""
    dropped = {
        "DATABASE_URL",
        "PORT",
        "PYTHONPATH",
        "VIRTUAL_ENV",
        "FORCE_COLOR",
        "TTY_COMPATIBLE",
        "COLUMNS",
    }
    env = {k: v for k, v in os.environ.items() if k not in dropped and not k.startswith("YOKEDCACHE_")}
    env.update(TMPDIR=str(tmp), PYTHONIOENCODING="utf-8", PYTHONUNBUFFERED="1", NO_COLOR="1")
    env.update(extra)
    return env


def run_demo(python: Path | str, tmp: Path, **env: str) -> tuple[str, float]:
    cwd = tmp / "cwd"
    cwd.mkdir(exist_ok=True)
    started = time.monotonic()
    done = subprocess.run(
        [str(python), str(DEMO)],
        cwd=cwd,
        env=demo_env(tmp, **env),
        capture_output=True,
        encoding="utf-8",
        timeout=120,
        check=False,
    )
    seconds = time.monotonic() - started
    assert done.returncode == 0, f"demo failed\nstdout:\n{done.stdout}\nstderr:\n{done.stderr}"
    return ANSI.sub("", done.stdout), seconds


def leftovers(tmp: Path) -> list[str]:
    """The demo's temporary SQLite databases that were not removed at exit."""
    return sorted(p.name for p in tmp.glob("yokedcache-demo*"))


# --- reading its output -------------------------------------------------------------------------------------


def section(out: str, start: str, end: str) -> str:
    assert start in out, f"{start!r} missing from the demo's output:\n{out}"
    rest = out.split(start, 1)[1]
    assert end in rest, f"{end!r} missing after {start!r}:\n{out}"
    return rest.split(end, 1)[0]


def table_rows(text: str) -> dict[str, list[str]]:
    """Rows of a rich table (box characters), keyed by the cell that names a query."""
    rows: dict[str, list[str]] = {}
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("│"):
            continue
        cells = [cell.strip() for cell in line.strip("│").split("│")]
        for cell in cells:
            if cell in QUERIES:
                rows[cell] = cells
    return rows


def check_demo_output(out: str) -> None:
    for title in TITLES:
        assert title in out, f"title {title!r} missing:\n{out}"

    calls = table_rows(section(out, TITLES[0], TITLES[1]))
    assert sorted(calls) == sorted(QUERIES), out
    for name, cells in calls.items():
        _pattern, _query, first_ms, cached_ms, sql_first, sql_cached, _speedup = cells
        assert first_ms.endswith(" ms") and cached_ms.endswith(" ms"), cells
        assert int(sql_first) >= 1, f"{name}: the first call sent no SQL: {cells}"
        assert int(sql_cached) == 0, f"{name}: the cached call sent {sql_cached} SQL statements: {cells}"

    rates = section(out, TITLES[1], "A write:")
    for function in (
        "cached_queries.get_user_by_id",
        "UserRepository.get_by_id",
        "PostRepository.get_published",
    ):
        assert function in rates, rates

    after = table_rows(section(out, TITLES[2], "Every cached value"))
    assert sorted(after) == sorted(QUERIES), out
    for name, expected in AFTER_THE_WRITE.items():
        _query, sql, state = after[name]
        assert state == expected, f"{name}: {state!r}, expected {expected!r}\n{out}"
        assert (int(sql) == 0) == (expected == STILL), after[name]
    assert "new post missing" not in out

    assert "50 warmed users read back with 0 SQL statements" in out, out
    assert re.search(r"cached_user_first_call: \d+\.\d+s avg", out), out
    assert re.search(r"cached_user_second_call: \d+\.\d+s avg", out), out


# --- fixtures -----------------------------------------------------------------------------------------------


@pytest.fixture
def postgres_and_redis(postgres_url: str, redis_url: str) -> Iterator[dict[str, str]]:
    """DATABASE_URL (a private schema, dropped afterwards) and YOKEDCACHE_* (a prefix, deleted afterwards)."""
    import redis
    import sqlalchemy

    admin_url = "postgresql+psycopg2://" + postgres_url.split("://", 1)[1]
    schema = f"yc_demo_{uuid.uuid4().hex[:10]}"
    prefix = f"ycdemo{uuid.uuid4().hex[:10]}"
    admin = sqlalchemy.create_engine(admin_url)
    with admin.begin() as conn:
        conn.execute(sqlalchemy.text(f"CREATE SCHEMA {schema}"))
    try:
        # The URL as a user would write it (plain postgresql://): the demo picks the installed driver.
        yield {
            "DATABASE_URL": f"{postgres_url}?options=-csearch_path%3D{schema}",
            "YOKEDCACHE_REDIS_URL": redis_url,
            "YOKEDCACHE_KEY_PREFIX": prefix,
        }
    finally:
        with admin.begin() as conn:
            conn.execute(sqlalchemy.text(f"DROP SCHEMA {schema} CASCADE"))
        admin.dispose()
        client = redis.Redis.from_url(redis_url)
        for key in client.scan_iter(f"{prefix}:*"):
            client.delete(key)
        client.close()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def serve_and_check(python: Path | str, tmp: Path) -> None:
    """``demo.py --serve`` on a free PORT: it answers over real HTTP and prints URLs with that port."""
    import httpx

    port = free_port()
    base = f"http://127.0.0.1:{port}"
    cwd = tmp / "serve-cwd"
    cwd.mkdir(exist_ok=True)
    stdout_path, stderr_path = tmp / "serve.out", tmp / "serve.err"
    with stdout_path.open("w") as stdout, stderr_path.open("w") as stderr:
        server = subprocess.Popen(
            [str(python), str(DEMO), "--serve"],
            cwd=cwd,
            env=demo_env(tmp, PORT=str(port)),
            stdout=stdout,
            stderr=stderr,
        )
    try:
        with httpx.Client(base_url=base, timeout=5, trust_env=False) as client:
            deadline = time.monotonic() + 30
            while True:
                assert server.poll() is None, f"the server exited:\n{stderr_path.read_text()}"
                try:
                    users = client.get("/users")
                    break
                except httpx.TransportError:
                    assert time.monotonic() < deadline, f"no answer on {base}:\n{stderr_path.read_text()}"
                    time.sleep(0.2)
            assert users.status_code == 200
            assert [u["username"] for u in users.json()[:2]] == ["user1", "user2"]
            docs = client.get("/docs")
            assert docs.status_code == 200 and "swagger-ui" in docs.text.lower()
            assert "/users/{user_id}" in client.get("/openapi.json").json()["paths"]
            # A write over HTTP is visible on the next read (served through the cached session).
            assert client.get("/users/1").json()["full_name"] == "User Number 1"
            assert client.patch("/users/1", json={"full_name": "Ada L."}).status_code == 200
            assert client.get("/users/1").json()["full_name"] == "Ada L."
    finally:
        server.terminate()
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    printed = stdout_path.read_text()
    assert f"Serving the tutorial's blog on {base}" in printed, printed
    for path in SERVED_PATHS:
        assert f"  {base}{path}\n" in printed, f"{base}{path} not printed:\n{printed}"
    assert f"curl -X POST {base}/users" in printed, printed
    urls = re.findall(r"https?://[^\s/']+", printed)
    assert urls and set(urls) == {base}, f"URLs with another address or port: {sorted(set(urls))}"
    assert leftovers(tmp) == [], "the demo's temporary database outlived the server"


# --- the tests ----------------------------------------------------------------------------------------------


def test_demo_on_sqlite_and_memory(tmp_path: Path) -> None:
    out, seconds = run_demo(sys.executable, tmp_path)
    check_demo_output(out)
    assert "yokedcache demo — database sqlite:///" in out and "cache: memory" in out, out.splitlines()[0]
    assert seconds < DEMO_SECONDS, f"the demo took {seconds:.1f} s"
    assert leftovers(tmp_path) == [], "the demo's temporary database outlived it"


def test_demo_on_postgresql_and_redis(tmp_path: Path, postgres_and_redis: dict[str, str]) -> None:
    out, seconds = run_demo(sys.executable, tmp_path, **postgres_and_redis)
    check_demo_output(out)
    header = out.splitlines()[0]
    assert "database postgresql" in header and "cache: redis" in header, header
    assert seconds < DEMO_SECONDS, f"the demo took {seconds:.1f} s"
    # A second run on the same database and prefix starts from scratch: the same rows again.
    out, _ = run_demo(sys.executable, tmp_path, **postgres_and_redis)
    check_demo_output(out)


def test_serve_answers_over_http(tmp_path: Path) -> None:
    serve_and_check(sys.executable, tmp_path)


@pytest.mark.skipif(
    not FRESH_VENV,
    reason="slow: creates a virtual environment and pip-installs the project; "
    "runs with CI=true or YOKEDCACHE_TEST_FRESH_VENV=1",
)
@pytest.mark.timeout(900)
def test_demo_on_a_fresh_virtual_environment(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    python = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")

    def pip_install(*requirements: str) -> float:
        started = time.monotonic()
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "--quiet", *requirements],
            env=demo_env(tmp_path),
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert done.returncode == 0, f"pip install {requirements} failed:\n{done.stdout}\n{done.stderr}"
        return time.monotonic() - started

    install_seconds = pip_install(f"{ROOT}[sqlalchemy]")  # what the demo's docstring asks for
    where = subprocess.run(
        [str(python), "-c", "import yokedcache; print(yokedcache.__file__)"],
        cwd=tmp_path,
        env=demo_env(tmp_path),
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert str(venv) in where, f"yokedcache was not imported from the new environment: {where}"

    out, demo_seconds = run_demo(python, tmp_path)
    check_demo_output(out)
    assert demo_seconds < DEMO_SECONDS, f"the demo took {demo_seconds:.1f} s"
    assert leftovers(tmp_path) == []

    # --serve says what it lacks, then works once that is installed.
    lacking = subprocess.run(
        [str(python), str(DEMO), "--serve"],
        cwd=tmp_path,
        env=demo_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert lacking.returncode != 0 and "pip install 'fastapi' 'uvicorn'" in lacking.stderr, lacking.stderr
    serve_install_seconds = pip_install("fastapi", "uvicorn")
    serve_and_check(python, tmp_path)
    print(
        f"\nfresh venv: pip install {install_seconds:.1f} s "
        f"(+ fastapi uvicorn {serve_install_seconds:.1f} s), demo {demo_seconds:.1f} s"
    )
