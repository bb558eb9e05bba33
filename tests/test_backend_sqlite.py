"""SQLiteBackend through YokedCache.

The whole API suite of ``test_cache_api`` (both faces) runs here against a SQLite file, re-collected with this
module's ``cache_config``/``backend_kind``/``second_view`` fixtures (the second view is a second backend
object on the same file). Below it: what only a shared file shows — other processes, garbage rows, glob
translation, purging, concurrency, failures.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from tests import test_cache_api as _suite
from tests.api_faces import Api
from yokedcache import CacheConnectionError, YokedCache
from yokedcache.backends.sqlite import SQLiteBackend, glob_to_sqlite
from yokedcache.keys import glob_to_regex

# --- the API suite, against SQLite --------------------------------------------------------------------------

# its tests, and its ``api``/``face`` fixtures, collected again in this module with the fixtures below
globals().update(
    {name: obj for name, obj in vars(_suite).items() if name.startswith("test_") or name in ("api", "face")}
)


@pytest.fixture
def backend_kind() -> str:
    return "sqlite"


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "cache.db"


@pytest.fixture
def cache_config(prefix: str, db_path: Path) -> dict[str, object]:
    return {"key_prefix": prefix, "ttl_jitter_percent": 0, "backend": SQLiteBackend(db_path)}


@pytest.fixture
async def second_view(cache: YokedCache, db_path: Path) -> AsyncIterator[Callable[..., YokedCache]]:
    """Another cache with its own backend object (own connections) on the same file and prefix."""
    made: list[YokedCache] = []

    def make(**options: Any) -> YokedCache:
        base: dict[str, Any] = {"key_prefix": cache.config.key_prefix, "ttl_jitter_percent": 0}
        other = YokedCache(**{**base, "backend": SQLiteBackend(db_path), **options})
        made.append(other)
        return other

    yield make
    for other in made:
        await other.disconnect()


# --- helpers ------------------------------------------------------------------------------------------------


def sqlite_cache(path: Path, prefix: str, **options: Any) -> YokedCache:
    backend = options.pop("backend", None) or SQLiteBackend(path)
    return YokedCache(backend=backend, key_prefix=prefix, ttl_jitter_percent=0, **options)


def run_child(script: str, *args: str) -> Any:
    """Run ``script`` in a fresh interpreter; it prints one JSON document, returned here."""
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def raw(path: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path, timeout=10) as conn:
        return conn.execute(sql, params).fetchall()


# --- construction -------------------------------------------------------------------------------------------


def test_construction_does_no_io_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "dir" / "c.db"
    backend = SQLiteBackend(path, key_prefix="own")
    assert not path.exists()
    cache = YokedCache(backend=backend, key_prefix="ignored")
    assert backend.namespace == "own" and backend.kind == "sqlite"
    assert cache.set_sync("k", 1) is True  # parent directories are created on first use
    assert raw(path, "SELECT key FROM entries") == [("own:k",)]
    assert raw(path, "PRAGMA journal_mode") == [("wal",)]
    for bad in (":memory:", "file::memory:?cache=shared"):
        with pytest.raises(ValueError):
            SQLiteBackend(bad)
    with pytest.raises(ValueError):
        SQLiteBackend(path, timeout=0)


def test_lazy_export_from_the_backends_package() -> None:
    from yokedcache import backends

    assert backends.SQLiteBackend is SQLiteBackend


# --- other processes ----------------------------------------------------------------------------------------

_CHILD = """
import asyncio, json, sys
from yokedcache import YokedCache
from yokedcache.backends.sqlite import SQLiteBackend

path, prefix = sys.argv[1:]
cache = YokedCache(backend=SQLiteBackend(path), key_prefix=prefix, ttl_jitter_percent=0)

async def main():
    seen = await cache.get("mine")
    keys = sorted(await cache.get_all_keys())
    invalidated = await cache.invalidate_tags("shared")
    stored = cache.set_sync("theirs", {"from": "child"}, ttl=60, tags=["child"])
    await cache.disconnect()
    return {"seen": seen, "keys": keys, "invalidated": invalidated, "stored": stored}

print(json.dumps(asyncio.run(main())))
"""


async def test_a_second_process_sees_values_and_its_invalidations_are_seen(
    db_path: Path, prefix: str
) -> None:
    cache = sqlite_cache(db_path, prefix)
    assert await cache.set("mine", [1, 2], tags=["shared"]) is True
    assert await cache.set("untagged", "u") is True
    result = run_child(_CHILD, str(db_path), prefix)
    assert result == {"seen": [1, 2], "keys": ["mine", "untagged"], "invalidated": 1, "stored": True}
    assert await cache.get("mine", "D") == "D"  # invalidated by the child
    assert cache.get_sync("untagged") == "u"
    assert await cache.get("theirs") == {"from": "child"}
    assert 55 <= (await cache.ttl("theirs") or 0) <= 60
    assert await cache.invalidate_tags("child") == 1
    assert cache.get_sync("theirs", "D") == "D"
    await cache.disconnect()


_WRITER = """
import json, sys
from yokedcache import YokedCache
from yokedcache.backends.sqlite import SQLiteBackend

path, prefix, me = sys.argv[1:]
cache = YokedCache(backend=SQLiteBackend(path), key_prefix=prefix, fallback_enabled=False)
for i in range(60):
    assert cache.set_sync(f"{me}:{i}", i, tags=["all", f"w{me}"])
    assert cache.get_sync(f"{me}:{i}") in (i, None)  # None only if another writer just invalidated "all"
    if i % 20 == 19:
        cache.invalidate_tags_sync("all")
cache.set_sync(f"{me}:last", "done", tags=[f"w{me}"])
print(json.dumps(cache.get_sync(f"{me}:last")))
"""


def test_concurrent_writer_processes_never_fail_or_lose_a_write(db_path: Path, prefix: str) -> None:
    SQLiteBackend(db_path).ping()  # create the file and schema before the race
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_WRITER), str(db_path), prefix, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(4)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err  # fallback off: a busy database would have raised
        assert json.loads(out) == "done"
    cache = sqlite_cache(db_path, prefix)
    assert cache.get_many_sync([f"{n}:last" for n in range(4)]) == {f"{n}:last": "done" for n in range(4)}


# --- tags, stale writes, counters ---------------------------------------------------------------------------


async def test_a_write_computed_before_an_invalidation_is_refused(db_path: Path, prefix: str) -> None:
    cache = sqlite_cache(db_path, prefix)
    other = sqlite_cache(db_path, prefix)
    tokens = await cache.capture_tokens(["t"], "k")
    assert tokens is not None and len(tokens) == 1
    assert await other.invalidate_tags("t") == 0
    assert await cache.store_computed("k", "old", tokens, ["t"]) == "stale"
    assert await cache.exists("k") is False
    fresh = cache.capture_tokens_sync(["t"], "k")
    assert cache.store_computed_sync("k", "new", fresh, ["t"]) == "stored"
    assert await other.get("k") == "new"


def test_shared_counters_add_up_and_flush_resets_them(db_path: Path, prefix: str) -> None:
    first, second = SQLiteBackend(db_path, key_prefix=prefix), SQLiteBackend(db_path, key_prefix=prefix)
    first.add_counters({"cache_hits": 3, "sets": 1})
    second.add_counters({"cache_hits": 2})
    assert first.read_counters() == {"cache_hits": 5, "sets": 1}
    assert SQLiteBackend(db_path, key_prefix="other").read_counters() == {}
    second.flush()
    assert first.read_counters() == {}


# --- keys, globs, flush -------------------------------------------------------------------------------------

_PATTERNS = [
    "*",
    "a*",
    "a\\*b",
    "a?b",
    "[ab]*",
    "[^a]*",
    "[a-c]x",
    "[c-a]x",  # reversed range
    "\\[x]",
    "x[",  # unterminated class: runs to the end
    "x[]",  # empty class: matches nothing
    "[^]",  # any one character
    "*\\?",
    "a]b",
    "\\\\*",
    "[]]*",
    "[\\]]",
    "[]-a]*",
    "[a-]",
    "[-a]",
    "[\\^]",
    "[^^]*",
    "[!-/]",  # a range holding none of ] - ^
    "[Z-a]",  # a range holding ] and ^
    "[,-.]",  # a range holding -
    "tail\\",  # a trailing backslash is itself
    "h?llo",
    "[h]é*",
]
_KEYS = [
    "a*b", "aXb", "ab", "b", "bx", "cx", "[x]", "x[", "x[]", "x]", "what?", "a]b", "\\back", "]", "x",
    "héllo", "a:b", "^", "-", "a", "Z", "_", "[", "a-", "tail\\", "tail", ",", ".", "/", "é",
]  # fmt: skip


@pytest.mark.parametrize("pattern", _PATTERNS)
def test_glob_translation_matches_the_redis_semantics(pattern: str) -> None:
    check_translation(pattern, _KEYS)


def test_random_globs_translate_exactly() -> None:
    rng = random.Random(20260526)
    alphabet = "ab-]^[\\*?x:"
    keys = ["".join(rng.choice("ab-]^[\\x:?*") for _ in range(rng.randint(0, 5))) for _ in range(60)]
    for _ in range(400):
        check_translation("".join(rng.choice(alphabet) for _ in range(rng.randint(1, 7))), keys)


def check_translation(pattern: str, keys: list[str]) -> None:
    regex = glob_to_regex(pattern)
    translated = glob_to_sqlite(pattern)
    with sqlite3.connect(":memory:") as conn:
        for key in keys:
            expected = bool(regex.match(key))
            if translated is None:
                assert not expected, (pattern, key)
                continue
            (matched,) = conn.execute("SELECT ? GLOB ?", (key, translated)).fetchone()
            assert bool(matched) == expected, (pattern, translated, key)


def test_listings_and_patterns_on_odd_keys(db_path: Path, prefix: str) -> None:
    cache = sqlite_cache(db_path, prefix)
    keys = {k: i for i, k in enumerate(_KEYS)}
    keys["long:" + "x" * 3000] = -1
    keys["nul\x00inside"] = -2  # SQLite's GLOB stops at NUL: such keys are left to the regex
    assert cache.set_many_sync(keys) is True
    assert sorted(cache.get_all_keys_sync()) == sorted(keys)
    for pattern in [*_PATTERNS, "*inside", "nul?inside", "*\U0010ffff*", "\U0010ffff*"]:
        regex = glob_to_regex(pattern)
        assert sorted(cache.get_keys_by_pattern_sync(pattern)) == sorted(k for k in keys if regex.match(k))
    assert cache.invalidate_pattern_sync("a\\*b") == 1
    assert cache.get_sync("aXb") == keys["aXb"]


def test_flush_all_leaves_other_prefixes_alone(db_path: Path, prefix: str) -> None:
    mine = sqlite_cache(db_path, prefix)
    neighbour = sqlite_cache(db_path, prefix + "x")  # "<prefix>x:..." sorts right after "<prefix>:..."
    for cache in (mine, neighbour):
        assert cache.set_sync("k", cache.config.key_prefix, tags=["t"]) is True
    neighbour.backend.add_counters({"sets": 1})
    assert mine.flush_all_sync() is True
    assert mine.get_sync("k") is None
    assert neighbour.get_sync("k") == prefix + "x"
    assert neighbour.backend.read_counters() == {"sets": 1}
    assert neighbour.invalidate_tags_sync("t") == 1  # its tokens and counts survived
    # (a prefix can never be "<prefix>:<more>": key_prefix refuses ':' so namespaces cannot nest)


# --- expiry and purging -------------------------------------------------------------------------------------


async def test_expired_and_invalidated_rows_are_purged(db_path: Path, prefix: str) -> None:
    cache = sqlite_cache(db_path, prefix)
    await cache.set("short", 1, ttl=0.05)
    await cache.set("tagged", 2, tags=["t"])
    await cache.set("kept", 3)
    time.sleep(0.1)
    await cache.invalidate_tags("t")
    assert len(raw(db_path, "SELECT key FROM entries")) == 3  # nothing purged yet
    assert await cache.get_many(["short", "tagged", "kept"]) == {"short": None, "tagged": None, "kept": 3}
    assert raw(db_path, "SELECT key FROM entries") == [(f"{prefix}:kept",)]  # purged on read


def test_the_sweep_deletes_expired_rows_nobody_reads(db_path: Path, prefix: str) -> None:
    backend = SQLiteBackend(db_path, sweep_interval=0.05)
    cache = sqlite_cache(db_path, prefix, backend=backend)
    cache.set_many_sync({f"k{i}": i for i in range(10)}, ttl=0.01)
    time.sleep(0.1)
    assert len(raw(db_path, "SELECT key FROM entries")) == 10
    cache.set_sync("trigger", 1)  # a write after the interval sweeps
    assert raw(db_path, "SELECT key FROM entries") == [(f"{prefix}:trigger",)]


# --- garbage and failures -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "column, value",
    [("body", b"\x00garbage\xff"), ("body", "text, not a blob"), ("tags", "{not json"), ("tags", '[["t"]]')],
)
async def test_garbage_written_into_the_file_is_a_miss(
    db_path: Path, prefix: str, face: str, column: str, value: object
) -> None:
    cache = sqlite_cache(db_path, prefix)
    api = Api(cache, face)
    assert await api("set", "k", {"v": 1}) is True
    with sqlite3.connect(db_path) as conn:
        conn.execute(f"UPDATE entries SET {column} = ? WHERE key = ?", (value, f"{prefix}:k"))
    assert await api("get", "k", "D") == "D"
    assert await api("exists", "k") is False
    assert await api("get_meta", "k") is None
    assert await api("get_many", ["k"]) == {"k": None}
    assert await api("get_all_keys") == []
    assert await api("set", "k", 2) is True  # and it can be overwritten normally
    assert await api("get", "k") == 2


@pytest.mark.parametrize("face_name", ["async", "sync"])
async def test_an_unusable_file_is_a_connection_error(tmp_path: Path, prefix: str, face_name: str) -> None:
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("x")
    path = blocker / "cache.db"  # its parent is a file
    tolerant = Api(sqlite_cache(path, prefix, connection_retries=0), face_name)
    assert await tolerant("set", "k", 1) is False
    assert await tolerant("get", "k", "D") == "D"
    assert await tolerant("health") is False
    assert (await tolerant("get_stats")).errors >= 2
    strict = Api(sqlite_cache(path, prefix, connection_retries=0, fallback_enabled=False), face_name)
    with pytest.raises(CacheConnectionError, match="sqlite"):
        await strict("get", "k")
    corrupt = tmp_path / "corrupt.db"
    corrupt.write_bytes(b"this is not a database" * 100)
    with pytest.raises(CacheConnectionError):
        await Api(sqlite_cache(corrupt, prefix, fallback_enabled=False), face_name)("set", "k", 1)


def test_a_held_write_lock_times_out_as_a_connection_error(db_path: Path, prefix: str) -> None:
    backend = SQLiteBackend(db_path, timeout=0.2)
    cache = sqlite_cache(db_path, prefix, backend=backend, fallback_enabled=False, connection_retries=0)
    assert cache.set_sync("k", 1) is True
    blocker = sqlite3.connect(db_path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert cache.get_sync("k") == 1  # WAL: readers are not blocked by a writer
        started = time.monotonic()
        with pytest.raises(CacheConnectionError, match="locked"):
            cache.set_sync("k", 2)
        assert time.monotonic() - started < 2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert cache.set_sync("k", 3) is True


async def test_close_then_reuse_and_a_second_event_loop(db_path: Path, prefix: str) -> None:
    cache = sqlite_cache(db_path, prefix)
    async with cache:
        await cache.set("k", 1)
    assert await cache.get("k") == 1  # usable after disconnect
    cache.disconnect_sync()
    assert cache.get_sync("k") == 1


# --- compute lock -------------------------------------------------------------------------------------------


async def test_the_compute_lock_is_exclusive_and_expires(db_path: Path, prefix: str) -> None:
    first = SQLiteBackend(db_path, key_prefix=prefix)
    second = SQLiteBackend(db_path, key_prefix=prefix)
    key = f"{prefix}:k"
    assert first.acquire_lock(key, "a", 10_000) is True
    assert await second.aacquire_lock(key, "b", 10_000) is False
    second.release_lock(key, "b")  # not the owner: no effect
    assert second.acquire_lock(key, "b", 10_000) is False
    started = time.monotonic()
    second.wait_for_release(key, 0.1)  # held: waits up to the timeout
    assert time.monotonic() - started >= 0.09
    await first.arelease_lock(key, "a")
    started = time.monotonic()
    await second.await_for_release(key, 5)  # free: returns at once
    assert time.monotonic() - started < 0.5
    assert second.acquire_lock(key, "b", 50) is True
    time.sleep(0.08)
    assert first.acquire_lock(key, "a", 10_000) is True  # the lease expired


def test_cached_with_lock_computes_once_across_threads(db_path: Path, prefix: str) -> None:
    import threading

    from yokedcache import cached

    cache = sqlite_cache(db_path, prefix)
    calls: list[int] = []

    @cached(cache=cache, ttl=60, lock=True, lock_timeout=5, single_flight=False)
    def slow(x: int) -> int:
        calls.append(x)
        time.sleep(0.2)
        return x * 2

    results: list[int] = []
    threads = [threading.Thread(target=lambda: results.append(slow(21))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [42] * 4
    assert calls == [21]


def test_backend_file_is_plain_sqlite_with_the_documented_tables(db_path: Path, prefix: str) -> None:
    cache = sqlite_cache(db_path, prefix)
    cache.set_sync("k", 1, tags=["t"])
    tables = {name for (name,) in raw(db_path, "SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"entries", "tokens", "counts", "counters"} <= tables
    ((key, tags, expires_at),) = raw(db_path, "SELECT key, tags, expires_at FROM entries")
    assert key == f"{prefix}:k" and isinstance(expires_at, float)
    assert [tag for tag, _ in json.loads(tags)] == ["t"]
    assert raw(db_path, "SELECT tag FROM tokens") == [(f"{prefix}:__yc__:t:t",)]
    assert os.path.exists(str(db_path) + "-wal")
