"""DiskCacheBackend through YokedCache.

The whole API suite of ``test_cache_api`` (both faces) runs here against a diskcache directory, re-collected
with this module's fixtures (the second view is a second backend object on the same directory). Below it:
other processes, bytes-only storage (nothing is ever pickled or unpickled), garbage, failures.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import diskcache
import pytest

from tests import test_cache_api as _suite
from tests.api_faces import Api
from yokedcache import CacheConnectionError, YokedCache
from yokedcache.backends.disk import DiskCacheBackend

# --- the API suite, against diskcache -----------------------------------------------------------------------

# its tests, and its ``api``/``face`` fixtures, collected again in this module with the fixtures below
globals().update(
    {name: obj for name, obj in vars(_suite).items() if name.startswith("test_") or name in ("api", "face")}
)


@pytest.fixture
def backend_kind() -> str:
    return "disk"


@pytest.fixture
def directory(tmp_path: Path) -> Path:
    return tmp_path / "diskcache"


@pytest.fixture
def cache_config(prefix: str, directory: Path) -> dict[str, object]:
    return {"key_prefix": prefix, "ttl_jitter_percent": 0, "backend": DiskCacheBackend(directory)}


@pytest.fixture
async def second_view(cache: YokedCache, directory: Path) -> AsyncIterator[Callable[..., YokedCache]]:
    made: list[YokedCache] = []

    def make(**options: Any) -> YokedCache:
        base: dict[str, Any] = {"key_prefix": cache.config.key_prefix, "ttl_jitter_percent": 0}
        other = YokedCache(**{**base, "backend": DiskCacheBackend(directory), **options})
        made.append(other)
        return other

    yield make
    for other in made:
        await other.disconnect()


def disk_cache(directory: Path, prefix: str, **options: Any) -> YokedCache:
    backend = options.pop("backend", None) or DiskCacheBackend(directory)
    return YokedCache(backend=backend, key_prefix=prefix, ttl_jitter_percent=0, **options)


def run_child(script: str, *args: str) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


# --- construction -------------------------------------------------------------------------------------------


def test_construction_does_no_io_and_bad_arguments_are_refused(tmp_path: Path) -> None:
    directory = tmp_path / "lazy"
    backend = DiskCacheBackend(directory, max_size_gb=0.5, key_prefix="own")
    assert not directory.exists()
    cache = YokedCache(backend=backend)
    assert backend.namespace == "own" and backend.kind == "disk"
    assert cache.set_sync("k", 1) is True
    assert directory.exists()
    assert backend.cache.size_limit == int(0.5 * 1024**3)
    for options in ({"max_size_gb": 0}, {"timeout": 0}):
        with pytest.raises(ValueError):
            DiskCacheBackend(directory, **options)

    from yokedcache import backends

    assert backends.DiskCacheBackend is DiskCacheBackend


# --- other processes ----------------------------------------------------------------------------------------

_CHILD = """
import asyncio, json, sys
from yokedcache import YokedCache
from yokedcache.backends.disk import DiskCacheBackend

directory, prefix = sys.argv[1:]
cache = YokedCache(backend=DiskCacheBackend(directory), key_prefix=prefix, ttl_jitter_percent=0)

async def main():
    seen = await cache.get("mine")
    keys = sorted(await cache.get_all_keys())
    invalidated = await cache.invalidate_tags("shared")
    stored = cache.set_sync("theirs", {"from": "child"}, ttl=60, tags=["child"])
    return {"seen": seen, "keys": keys, "invalidated": invalidated, "stored": stored}

print(json.dumps(asyncio.run(main())))
"""


async def test_a_second_process_sees_values_and_its_invalidations_are_seen(
    directory: Path, prefix: str
) -> None:
    cache = disk_cache(directory, prefix)
    assert await cache.set("mine", [1, 2], tags=["shared"]) is True
    assert await cache.set("untagged", "u") is True
    result = run_child(_CHILD, str(directory), prefix)
    assert result == {"seen": [1, 2], "keys": ["mine", "untagged"], "invalidated": 1, "stored": True}
    assert await cache.get("mine", "D") == "D"
    assert cache.get_sync("untagged") == "u"
    assert await cache.get("theirs") == {"from": "child"}
    assert await cache.invalidate_tags("child") == 1
    assert cache.get_sync("theirs", "D") == "D"


_WRITER = """
import json, sys
from yokedcache import YokedCache
from yokedcache.backends.disk import DiskCacheBackend

directory, prefix, me = sys.argv[1:]
cache = YokedCache(backend=DiskCacheBackend(directory), key_prefix=prefix, fallback_enabled=False)
for i in range(40):
    assert cache.set_sync(f"{me}:{i}", i, tags=["all"])
    if i % 10 == 9:
        cache.invalidate_tags_sync("all")
cache.set_sync(f"{me}:last", "done")
print(json.dumps(cache.get_sync(f"{me}:last")))
"""


def test_concurrent_writer_processes_never_fail(directory: Path, prefix: str) -> None:
    DiskCacheBackend(directory).ping()  # create the directory before the race
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_WRITER), str(directory), prefix, str(n)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(3)
    ]
    for proc in procs:
        out, err = proc.communicate(timeout=60)
        assert proc.returncode == 0, err
        assert json.loads(out) == "done"


# --- bytes only ---------------------------------------------------------------------------------------------


class Tripwire:
    """Unpickling this records it: a backend that unpickles what it finds would trip it."""

    tripped = False

    def __reduce__(self) -> tuple[Any, ...]:
        return (_trip, ())


def _trip() -> None:
    Tripwire.tripped = True


def test_everything_is_stored_as_bytes_never_pickled(directory: Path, prefix: str) -> None:
    cache = disk_cache(directory, prefix)
    cache.set_sync("small", {"a": 1}, tags=["t"])
    cache.set_sync("big", "x" * 100_000)  # stored in a file by diskcache
    cache.backend.add_counters({"sets": 2})
    assert cache.get_sync("big") == "x" * 100_000
    plain = diskcache.Cache(str(directory))
    try:
        rows = plain._sql("SELECT key, mode FROM Cache").fetchall()
        assert rows and all(isinstance(key, str) for key, _ in rows)
        assert {mode for _, mode in rows} <= {diskcache.core.MODE_RAW, diskcache.core.MODE_BINARY}
        for key, _ in rows:
            assert isinstance(plain.get(key), bytes)
    finally:
        plain.close()
    with pytest.raises(TypeError):
        cache.backend.cache.set(f"{prefix}:obj", {"not": "bytes"})


@pytest.mark.parametrize("face_name", ["async", "sync"])
async def test_a_pickled_value_planted_in_the_directory_is_never_unpickled(
    directory: Path, prefix: str, face_name: str
) -> None:
    api = Api(disk_cache(directory, prefix), face_name)
    assert await api("set", "k", 1) is True
    plain = diskcache.Cache(str(directory))
    try:
        plain.set(f"{prefix}:k", Tripwire())  # stored pickled by a plain diskcache
        plain.set(f"{prefix}:other", Tripwire())
        plain.set(("tuple", "key"), b"x")  # a pickled key
        assert pickle.loads(pickle.dumps(Tripwire())) is None and Tripwire.tripped  # the tripwire works
        Tripwire.tripped = False
    finally:
        plain.close()
    assert await api("get", "k", "D") == "D"
    assert await api("get_many", ["k", "other"]) == {"k": None, "other": None}
    assert await api("get_all_keys") == []
    assert await api("get_meta", "other") is None
    assert Tripwire.tripped is False
    assert await api("flush_all") is True


@pytest.mark.parametrize("face_name", ["async", "sync"])
async def test_garbage_bytes_are_a_miss(directory: Path, prefix: str, face_name: str) -> None:
    cache = disk_cache(directory, prefix)
    api = Api(cache, face_name)
    backend = cache.backend
    assert isinstance(backend, DiskCacheBackend)
    await api("set", "frame", 1)
    await api("set", "body", 2)
    backend.cache.set(f"{prefix}:frame", b"\x00garbage, not a frame")
    body_raw = backend.cache.get(f"{prefix}:body")
    backend.cache.set(f"{prefix}:body", body_raw[: len(body_raw) - 3] + b"\xff\xfe\xfd")  # a broken envelope
    plain = diskcache.Cache(str(directory))
    plain.set(f"{prefix}:text", "a str value")  # our own Disk refuses to store anything but bytes
    plain.set(f"{prefix}:int", 12345)
    plain.close()
    for key in ("frame", "body", "text", "int"):
        assert await api("get", key, "D") == "D"
        assert await api("exists", key) is False
    assert await api("set", "frame", 3) is True
    assert await api("get", "frame") == 3


# --- flush, tokens, stale writes ----------------------------------------------------------------------------


def test_flush_all_leaves_other_prefixes_alone(directory: Path, prefix: str) -> None:
    mine = disk_cache(directory, prefix)
    neighbour = disk_cache(directory, prefix + "x")
    for cache in (mine, neighbour):
        cache.set_many_sync({f"k{i}": i for i in range(600)}, tags=["t"])  # more than one flush batch
    neighbour.backend.add_counters({"sets": 1})
    assert mine.flush_all_sync() is True
    assert mine.get_all_keys_sync(limit=10_000) == []
    assert mine.get_stats_sync().key_count == 0
    assert len(neighbour.get_all_keys_sync(limit=10_000)) == 600
    assert neighbour.backend.read_counters() == {"sets": 1}
    assert neighbour.invalidate_tags_sync("t") == 600


def test_an_evicted_token_invalidates_its_entries(directory: Path, prefix: str) -> None:
    cache = disk_cache(directory, prefix)
    cache.set_sync("k", 1, tags=["t"])
    cache.backend.cache.delete(f"{prefix}:__yc__:t:t")  # as culling by max_size_gb would
    assert cache.get_sync("k", "D") == "D"
    assert cache.set_sync("k", 2, tags=["t"]) is True
    assert cache.get_sync("k") == 2


async def test_a_write_computed_before_an_invalidation_is_refused(directory: Path, prefix: str) -> None:
    cache = disk_cache(directory, prefix)
    other = disk_cache(directory, prefix)
    tokens = await cache.capture_tokens(["t"], "k")
    assert tokens is not None
    await other.invalidate_tags("t")
    assert await cache.store_computed("k", "old", tokens, ["t"]) == "stale"
    assert cache.store_computed_sync("k", "new", cache.capture_tokens_sync(["t"], "k"), ["t"]) == "stored"
    assert await other.get("k") == "new"


def test_shared_counters(directory: Path, prefix: str) -> None:
    first, second = (
        DiskCacheBackend(directory, key_prefix=prefix),
        DiskCacheBackend(directory, key_prefix=prefix),
    )
    first.add_counters({"cache_hits": 3})
    second.add_counters({"cache_hits": 2, "sets": 1})
    assert first.read_counters() == {"cache_hits": 5, "sets": 1}
    first.flush()
    assert second.read_counters() == {}


# --- failures, lock -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("face_name", ["async", "sync"])
async def test_an_unusable_directory_is_a_connection_error(
    tmp_path: Path, prefix: str, face_name: str
) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    tolerant = Api(disk_cache(blocker / "sub", prefix, connection_retries=0), face_name)
    assert await tolerant("set", "k", 1) is False
    assert await tolerant("get", "k", "D") == "D"
    assert await tolerant("health") is False
    strict = Api(disk_cache(blocker / "sub", prefix, fallback_enabled=False, connection_retries=0), face_name)
    with pytest.raises(CacheConnectionError, match="diskcache"):
        await strict("get", "k")


def test_a_held_write_lock_times_out_as_a_connection_error(directory: Path, prefix: str) -> None:
    backend = DiskCacheBackend(directory, timeout=0.2)
    cache = disk_cache(directory, prefix, backend=backend, fallback_enabled=False, connection_retries=0)
    assert cache.set_sync("k", 1, tags=["t"]) is True
    holder = diskcache.Cache(str(directory))
    try:
        with holder.transact():
            assert cache.get_sync("k") == 1  # readers go on
            with pytest.raises(CacheConnectionError, match="timed out"):
                cache.set_sync("k", 2, tags=["t"])
    finally:
        holder.close()
    assert cache.set_sync("k", 3) is True


async def test_the_compute_lock_is_exclusive_and_expires(directory: Path, prefix: str) -> None:
    first = DiskCacheBackend(directory, key_prefix=prefix)
    second = DiskCacheBackend(directory, key_prefix=prefix)
    key = f"{prefix}:k"
    assert first.acquire_lock(key, "a", 10_000) is True
    assert await second.aacquire_lock(key, "b", 10_000) is False
    second.release_lock(key, "b")
    assert second.acquire_lock(key, "b", 10_000) is False
    await first.arelease_lock(key, "a")
    started = time.monotonic()
    await second.await_for_release(key, 5)
    second.wait_for_release(key, 5)
    assert time.monotonic() - started < 0.5
    assert second.acquire_lock(key, "b", 50) is True
    time.sleep(0.08)
    assert first.acquire_lock(key, "a", 10_000) is True
    assert YokedCache(backend=first, key_prefix=prefix).get_all_keys_sync() == []  # locks are not entries
