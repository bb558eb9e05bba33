"""``@cached``: the contract of API.md §8.1, on the memory backend and on Redis.

Every test counts executions of the decorated function, so a hit and a miss are told apart by what ran,
not by timing.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import decimal
import inspect
import logging
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from yokedcache import (
    CacheConnectionError,
    CacheSerializationError,
    YokedCache,
    cached,
    get_default_cache,
    set_default_cache,
)

ROOT = Path(__file__).resolve().parent.parent


class Counter:
    def __init__(self) -> None:
        self.n = 0

    def __call__(self) -> int:
        self.n += 1
        return self.n


@pytest.fixture
def default_cache(cache: YokedCache) -> Iterator[YokedCache]:
    set_default_cache(cache)
    yield cache
    set_default_cache(None)


# --- kinds of callables --------------------------------------------------------------------------------


async def test_async_function_second_call_is_a_hit(cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=cache, ttl=60)
    async def square(x: int) -> int:
        runs()
        return x * x

    assert await square(4) == 16
    assert await square(4) == 16
    assert runs.n == 1
    assert await square(5) == 25
    assert runs.n == 2


def test_sync_function_uses_the_native_sync_path(sync_cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=sync_cache, ttl=60)
    def square(x: int) -> int:
        runs()
        return x * x

    assert not inspect.iscoroutinefunction(square)
    assert square(3) == 9
    assert square(3) == 9
    assert runs.n == 1


async def test_sync_function_inside_a_running_loop(cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=cache, ttl=60)
    def double(x: int) -> int:
        runs()
        return 2 * x

    assert double(2) == 4
    assert double(2) == 4
    assert runs.n == 1
    assert await cache.get(double.cache_key(2).split(":", 1)[1]) == 4


def test_bare_decorator_uses_the_default_cache(sync_cache: YokedCache) -> None:
    runs = Counter()

    @cached
    def ident(x: int) -> int:
        runs()
        return x

    set_default_cache(sync_cache)
    try:
        assert ident(1) == 1
        assert ident(1) == 1
        assert runs.n == 1
        assert ident.cache_key(1).startswith(f"{sync_cache.config.key_prefix}:fn:")
    finally:
        set_default_cache(None)


class Service:
    runs = Counter()

    def __init__(self, name: str) -> None:
        self.name = name

    @cached(ttl=60, tags=["svc"])
    async def instance_method(self, x: int) -> str:
        Service.runs()
        return f"{self.name}:{x}"

    @cached(ttl=60)
    @classmethod
    async def class_above(cls, x: int) -> str:
        Service.runs()
        return f"{cls.__name__}:{x}"

    @classmethod
    @cached(ttl=60)
    async def class_below(cls, x: int) -> str:
        Service.runs()
        return f"{cls.__name__}:{x}"

    @cached(ttl=60)
    @staticmethod
    async def static_above(x: int) -> int:
        Service.runs()
        return x + 100

    @staticmethod
    @cached(ttl=60)
    async def static_below(x: int) -> int:
        Service.runs()
        return x + 200

    @cached(ttl=60)
    def sync_method(self, x: int) -> str:
        Service.runs()
        return f"sync:{self.name}:{x}"


@pytest.mark.parametrize(
    ("attr", "expected"),
    [
        ("instance_method", "a:1"),
        ("class_above", "Service:1"),
        ("class_below", "Service:1"),
        ("static_above", 101),
        ("static_below", 201),
    ],
)
async def test_methods_classmethods_staticmethods(
    default_cache: YokedCache, attr: str, expected: Any
) -> None:
    Service.runs.n = 0
    first, second = Service("a"), Service("b")
    assert await getattr(first, attr)(1) == expected
    assert await getattr(first, attr)(1) == expected
    assert Service.runs.n == 1
    if attr != "instance_method":  # self is not in the key: entries are shared across instances
        assert await getattr(Service, attr)(1) == expected
        assert Service.runs.n == 1
    else:
        assert await second.instance_method(1) == "a:1"  # shared: self is left out of the key
        assert Service.runs.n == 1
        assert await Service.instance_method(second, 1) == "a:1"
    assert await getattr(first, attr)(2) != expected  # other arguments: other entry
    assert Service.runs.n == 2


def test_sync_method(sync_cache: YokedCache) -> None:
    set_default_cache(sync_cache)
    try:
        Service.runs.n = 0
        assert Service("a").sync_method(3) == "sync:a:3"
        assert Service("z").sync_method(3) == "sync:a:3"
        assert Service.runs.n == 1
    finally:
        set_default_cache(None)


def test_generator_functions_are_refused() -> None:
    with pytest.raises(TypeError, match="generator"):

        @cached
        def numbers() -> Iterator[int]:
            yield 1

    with pytest.raises(TypeError, match="generator"):

        @cached(ttl=5)
        async def anumbers() -> Any:
            yield 1


def test_signature_and_metadata_are_preserved() -> None:
    @cached(ttl=5)
    async def documented(user_id: int, verbose: bool = False) -> dict[str, int]:
        """Docstring kept."""
        return {}

    assert documented.__name__ == "documented"
    assert documented.__doc__ == "Docstring kept."
    assert list(inspect.signature(documented).parameters) == ["user_id", "verbose"]
    assert inspect.iscoroutinefunction(documented)
    bound = Service("a").instance_method
    assert list(inspect.signature(bound).parameters) == ["x"]


# --- the default cache -----------------------------------------------------------------------------


async def test_default_cache_is_resolved_at_call_time(
    backend_kind: str, cache_config: dict[str, Any]
) -> None:
    runs = Counter()

    @cached(ttl=600, tags=["users"])  # decorated before any default exists: nothing is bound yet
    async def get_user(user_id: int) -> dict[str, int]:
        runs()
        return {"id": user_id}

    first = YokedCache(**cache_config)
    second = YokedCache(**{**cache_config, "key_prefix": cache_config["key_prefix"] + "b"})
    try:
        set_default_cache(first)
        assert await get_user(1) == {"id": 1}
        assert await get_user(1) == {"id": 1}
        assert runs.n == 1
        assert await first.exists(get_user.cache_key(1).split(":", 1)[1])
        set_default_cache(second)  # a new default takes effect on the next call
        assert get_default_cache() is second
        assert await get_user(1) == {"id": 1}
        assert runs.n == 2
        assert get_user.cache_key(1).startswith(second.config.key_prefix + ":")
        await second.invalidate_tags(["users"])
        assert await get_user(1) == {"id": 1}
        assert runs.n == 3
    finally:
        set_default_cache(None)
        for c in (first, second):
            await c.flush_all()
            await c.disconnect()


def _run_python(code: str, env: dict[str, str] | None = None) -> str:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("YOKEDCACHE_")}
    full_env.update(env or {})
    full_env["PYTHONPATH"] = str(ROOT / "src")
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=full_env, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


def test_default_cache_is_the_first_cache_created_in_a_fresh_process() -> None:
    out = _run_python(
        "import asyncio\n"
        "from yokedcache import YokedCache, cached, get_default_cache\n"
        "@cached(ttl=600, tags=['users'])\n"
        "async def f(x):\n"
        "    return x * 2\n"
        "cache = YokedCache(key_prefix='firstcache')\n"
        "other = YokedCache(key_prefix='secondcache')\n"
        "async def main():\n"
        "    assert await f(21) == 42\n"
        "    key = f.cache_key(21).split(':', 1)[1]\n"
        "    print(get_default_cache() is cache, await cache.get(key), await other.get(key))\n"
        "asyncio.run(main())\n"
    )
    assert out == "True 42 None"


def test_default_cache_comes_from_the_environment_when_none_was_created(redis_url: str) -> None:
    prefix = f"ycenv{uuid.uuid4().hex[:8]}"
    out = _run_python(
        "from yokedcache import cached, get_default_cache\n"
        "@cached(ttl=60)\n"
        "def f(x):\n"
        "    return x + 1\n"
        "print(f(1), f.cache_key(1).split(':')[0], get_default_cache().backend.kind)\n"
        "get_default_cache().flush_all_sync()\n",
        env={"YOKEDCACHE_REDIS_URL": redis_url, "YOKEDCACHE_KEY_PREFIX": prefix},
    )
    assert out == f"2 {prefix} redis"


# --- options -------------------------------------------------------------------------------------


async def test_ttl_and_default_ttl(cache: YokedCache) -> None:
    @cached(cache=cache, ttl=120)
    async def explicit() -> int:
        return 1

    @cached(cache=cache)
    async def default() -> int:
        return 2

    await explicit()
    await default()
    user_key = explicit.cache_key().split(":", 1)[1]
    assert 110 <= (await cache.ttl(user_key) or 0) <= 120
    assert 290 <= (await cache.ttl(default.cache_key().split(":", 1)[1]) or 0) <= 300


async def test_ttl_zero_never_stores(cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=cache, ttl=0)
    async def volatile() -> int:
        return runs()

    assert [await volatile(), await volatile()] == [1, 2]


def test_negative_ttl_is_refused() -> None:
    with pytest.raises(ValueError, match="ttl"):
        cached(ttl=-1)


async def test_static_tags_invalidate(cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=cache, ttl=60, tags=["users", "tenant:1"])
    async def users() -> list[str]:
        runs()
        return ["ann"]

    await users()
    await users()
    assert runs.n == 1
    await cache.invalidate_tags(["tenant:1"])
    await users()
    assert runs.n == 2
    assert sorted((await cache.get_meta(users.cache_key().split(":", 1)[1]) or {})["tags"]) == [
        "tenant:1",
        "users",
    ]


async def test_tag_templates_use_bound_arguments(cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=cache, ttl=60, tags=["users", "user:{user_id}"])
    async def get_user(user_id: int, verbose: bool = False) -> int:
        runs()
        return user_id

    await get_user(1)
    await get_user(user_id=2)
    assert runs.n == 2
    await cache.invalidate_tags(["user:1"])
    await get_user(1)
    await get_user(2)
    assert runs.n == 3  # only user 1 was invalidated
    meta = await cache.get_meta(get_user.cache_key(2).split(":", 1)[1])
    assert meta is not None and meta["tags"] == ["user:2", "users"]


async def test_tags_callable_receives_bound_arguments(cache: YokedCache) -> None:
    seen: list[dict[str, Any]] = []

    def tags_of(user_id: int, region: str) -> list[str]:
        seen.append({"user_id": user_id, "region": region})
        return [f"user:{user_id}", f"region:{region}"]

    class Repo:
        @cached(cache=cache, ttl=60, tags=tags_of)
        async def get(self, user_id: int, region: str = "eu") -> str:
            return f"{user_id}@{region}"

    assert await Repo().get(7) == "7@eu"
    assert seen == [{"user_id": 7, "region": "eu"}]  # defaults applied; self not forced on the callable
    meta = await cache.get_meta(Repo().get.cache_key(7).split(":", 1)[1])
    assert meta is not None and meta["tags"] == ["region:eu", "user:7"]


def test_tag_template_naming_an_unknown_parameter_fails_at_decoration() -> None:
    with pytest.raises(ValueError, match="user_id"):

        @cached(tags=["user:{user_id}"])
        async def f(uid: int) -> int:
            return uid


async def test_cache_key_prefix_key_builder_exclude_args(cache: YokedCache) -> None:
    @cached(cache=cache, ttl=60, cache_key_prefix="users")
    async def prefixed(x: int) -> int:
        return x

    @cached(cache=cache, ttl=60, key_builder=lambda x, trace_id=None: f"custom:{x}")
    async def built(x: int, trace_id: str | None = None) -> int:
        return x

    runs = Counter()

    @cached(cache=cache, ttl=60, exclude_args=["trace_id"])
    async def excluded(x: int, trace_id: str) -> int:
        runs()
        return x

    prefix = cache.config.key_prefix
    assert prefixed.cache_key(1).startswith(f"{prefix}:users:{prefixed.__module__}.")
    assert built.cache_key(1, trace_id="a") == f"{prefix}:custom:1"
    await built(5, trace_id="t")
    assert await cache.get("custom:5") == 5
    await excluded(1, "t1")
    await excluded(1, trace_id="t2")
    assert runs.n == 1


def test_exclude_args_must_name_parameters() -> None:
    with pytest.raises(ValueError, match="nope"):
        cached(exclude_args=["nope"])(lambda x: x)


async def test_condition_decides_what_is_stored(cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=cache, ttl=60, condition=lambda result: bool(result))
    async def search(q: str) -> list[str]:
        runs()
        return [q] if q else []

    assert await search("") == []
    assert await search("") == []
    assert runs.n == 2  # empty result: returned, not stored
    await search("a")
    await search("a")
    assert runs.n == 3


async def test_serialization_option(cache: YokedCache) -> None:
    @cached(cache=cache, ttl=60, serialization="msgpack")
    async def packed() -> dict[str, bytes]:
        return {"raw": b"\x00\x01"}

    @cached(cache=cache, ttl=60)
    async def default() -> dict[str, int]:
        return {"a": 1}

    assert await packed() == {"raw": b"\x00\x01"}
    assert await packed() == {"raw": b"\x00\x01"}
    await default()
    packed_meta = await cache.get_meta(packed.cache_key().split(":", 1)[1])
    default_meta = await cache.get_meta(default.cache_key().split(":", 1)[1])
    assert packed_meta is not None and packed_meta["serialization"] == "msgpack"
    assert default_meta is not None and default_meta["serialization"] == "json"  # never pickle by default


def test_unknown_serialization_fails_at_decoration() -> None:
    with pytest.raises(ValueError):
        cached(serialization="yaml")(lambda: 1)


# --- results -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Point:
    x: int
    y: float
    label: str | None = None


try:
    import pydantic

    class UserModel(pydantic.BaseModel):
        id: int
        name: str
        joined: dt.datetime
        tags: list[str] = []

except ImportError:  # pragma: no cover
    UserModel = None  # type: ignore[assignment,misc]


RESULTS: list[Any] = [
    None,
    {"a": 1, "b": [1, 2], "c": {"d": None}},
    [1, "two", 3.0],
    (1, ("nested", 2)),
    {1: "int key", "1": "str key"},
    {1, 2, 3},
    Point(1, 2.5, "p"),
    [Point(1, 1.0), Point(2, 2.0)],
    dt.datetime(2024, 5, 1, 12, 30, tzinfo=dt.timezone.utc),
    decimal.Decimal("1.10"),
    b"\x00bytes",
]
if UserModel is not None:
    RESULTS.append(UserModel(id=1, name="ann", joined=dt.datetime(2024, 1, 1), tags=["x"]))


@pytest.mark.parametrize("result", RESULTS, ids=lambda r: type(r).__name__)
async def test_results_come_back_as_the_same_type(cache: YokedCache, result: Any) -> None:
    runs = Counter()

    @cached(cache=cache, ttl=60)
    async def produce() -> Any:
        runs()
        return result

    first = await produce()
    second = await produce()
    assert runs.n == 1
    assert first is result
    assert type(second) is type(result)
    assert second == result
    if isinstance(result, list) and result and dataclasses.is_dataclass(result[0]):
        assert all(type(item) is Point for item in second)


async def test_none_is_cached_and_exceptions_are_not(cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=cache, ttl=60)
    async def maybe(x: int) -> int | None:
        n = runs()
        if x < 0 and n <= 3:
            raise ValueError("negative")
        return None

    assert await maybe(1) is None
    assert await maybe(1) is None
    assert runs.n == 1
    for _ in range(2):
        with pytest.raises(ValueError):
            await maybe(-1)
    assert runs.n == 3
    assert await maybe(-1) is None  # the third attempt succeeds: nothing was cached in between
    assert runs.n == 4


async def test_unserializable_result_is_returned_not_cached(cache: YokedCache, caplog: Any) -> None:
    runs = Counter()

    class Opaque:
        pass

    @cached(cache=cache, ttl=60)
    async def produce() -> Opaque:
        runs()
        return Opaque()

    with caplog.at_level(logging.WARNING, logger="yokedcache"):
        assert isinstance(await produce(), Opaque)
        assert isinstance(await produce(), Opaque)
    assert runs.n == 2


async def test_unserializable_result_raises_with_fallback_off(cache_config: dict[str, Any]) -> None:
    cache = YokedCache(**{**cache_config, "fallback_enabled": False})

    @cached(cache=cache, ttl=60)
    async def produce() -> object:
        return object()

    with pytest.raises(CacheSerializationError):
        await produce()
    await cache.disconnect()


# --- helpers: __wrapped__, cache_key, invalidate, refresh ----------------------------------------------


async def test_function_helpers(cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=cache, ttl=60)
    async def compute(x: int, scale: int = 10) -> int:
        return x * scale + runs()

    assert await compute(1) == 11
    assert await compute.__wrapped__(1) == 12  # the original: bypasses the cache
    assert await compute(1) == 11
    key = compute.cache_key(1)
    assert key == compute.cache_key(x=1, scale=10)
    assert key.startswith(f"{cache.config.key_prefix}:fn:{__name__}.")
    assert len(key.rsplit(":", 1)[1]) == 32
    assert await compute.refresh(1) == 13  # runs, stores and returns
    assert await compute(1) == 13
    assert await compute.invalidate(1) is True
    assert await compute.invalidate(1) is False
    assert await compute(1) == 14


def test_sync_function_helpers(sync_cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=sync_cache, ttl=60)
    def compute(x: int) -> int:
        return x + runs()

    assert compute(1) == 2
    assert compute.refresh(1) == 3
    assert compute(1) == 3
    assert compute.invalidate(1) is True
    assert compute(1) == 4
    assert compute.__wrapped__(1) == 5


async def test_method_helpers_through_instance_and_class(cache: YokedCache) -> None:
    runs = Counter()

    class Repo:
        def __init__(self, name: str) -> None:
            self.name = name

        @cached(cache=cache, ttl=60)
        async def get(self, item_id: int) -> str:
            return f"{self.name}:{item_id}:{runs()}"

    repo = Repo("r")
    assert await repo.get(1) == "r:1:1"
    key = repo.get.cache_key(1)
    assert key == Repo.get.cache_key(1) == Repo("other").get.cache_key(item_id=1)  # self omitted
    assert await repo.get.__wrapped__(repo, 1) == "r:1:2"
    assert await repo.get.refresh(1) == "r:1:3"
    assert await repo.get(1) == "r:1:3"
    assert await Repo.get.invalidate(1) is True  # through the class: no self needed
    assert await repo.get(1) == "r:1:4"
    assert await repo.get.invalidate(1) is True
    assert await repo.get(1) == "r:1:5"
    with pytest.raises(TypeError, match="instance"):
        Repo.get.refresh(1)


async def test_classmethod_helpers(default_cache: YokedCache) -> None:
    Service.runs.n = 0
    assert await Service.class_above(5) == "Service:5"
    assert Service.class_above.cache_key(5) == Service("x").class_above.cache_key(5)
    assert await Service.class_above.refresh(5) == "Service:5"
    assert Service.runs.n == 2
    assert await Service.class_above.invalidate(5) is True
    assert await Service.class_below(5) == "Service:5"
    assert await Service.class_below.invalidate(5) is True


# --- per-function stats ----------------------------------------------------------------------------


async def test_per_function_stats(cache: YokedCache) -> None:
    @cached(cache=cache, ttl=60)
    async def slow(x: int) -> int:
        await asyncio.sleep(0.02)
        return x

    for x in (1, 1, 1, 2, 2):
        await slow(x)
    name = f"{__name__}.{slow.__qualname__}"
    stats = (await cache.get_stats()).functions[name]
    assert stats["hits"] == 3
    assert stats["misses"] == 2
    assert stats["hit_rate"] == pytest.approx(0.6)
    assert stats["mean_miss_ms"] >= 20
    assert 0 < stats["mean_hit_ms"] < stats["mean_miss_ms"]
    assert stats["time_saved_ms"] == pytest.approx(3 * (stats["mean_miss_ms"] - stats["mean_hit_ms"]))
    assert cache.get_stats_sync().functions[name]["hits"] == 3


# --- stale values ------------------------------------------------------------------------------------


async def test_serve_stale_on_error(cache: YokedCache, caplog: Any) -> None:
    state = {"fail": False, "runs": 0}

    @cached(cache=cache, ttl=1, serve_stale_on_error=True, stale_if_error_ttl=30, tags=["t"])
    async def fetch() -> str:
        state["runs"] += 1
        if state["fail"]:
            raise RuntimeError("source down")
        return f"v{state['runs']}"

    assert await fetch() == "v1"
    state["fail"] = True
    await asyncio.sleep(1.2)
    with caplog.at_level(logging.WARNING, logger="yokedcache"):
        assert await fetch() == "v1"  # expired, retained, the function raised: the last good value
    assert state["runs"] == 2
    assert any("last good value" in r.getMessage() for r in caplog.records)
    await cache.invalidate_tags(["t"])  # never serve an invalidated value, even stale
    with pytest.raises(RuntimeError):
        await fetch()


async def test_serve_stale_on_error_window_ends(cache: YokedCache) -> None:
    state = {"fail": False}

    @cached(cache=cache, ttl=1, serve_stale_on_error=True, stale_if_error_ttl=0.5)
    async def fetch() -> str:
        if state["fail"]:
            raise RuntimeError("down")
        return "ok"

    await fetch()
    state["fail"] = True
    await asyncio.sleep(1.7)
    with pytest.raises(RuntimeError):
        await fetch()


async def test_stale_while_revalidate(cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=cache, ttl=1, stale_ttl=30)
    async def fetch() -> int:
        await asyncio.sleep(0.05)
        return runs()

    assert await fetch() == 1
    await asyncio.sleep(1.1)
    assert await fetch() == 1  # stale, returned without waiting for the refresh...
    assert runs.n == 1  # ...which is still running in the background
    assert await fetch() == 1  # still stale; only one refresh runs
    deadline = time.monotonic() + 10  # the refresh lands in ~50 ms; wait for it, not for a fixed timer
    while (value := await fetch()) == 1 and time.monotonic() < deadline:
        await asyncio.sleep(0.02)
    assert value == 2
    assert runs.n == 2  # the stale reads meanwhile started no second refresh


def test_stale_while_revalidate_sync(sync_cache: YokedCache) -> None:
    runs = Counter()

    @cached(cache=sync_cache, ttl=1, stale_ttl=30)
    def fetch() -> int:
        time.sleep(0.05)
        return runs()

    assert fetch() == 1
    time.sleep(1.1)
    assert fetch() == 1  # stale; the refresh runs in the background
    deadline = time.monotonic() + 10  # the refresh lands in ~50 ms; wait for it, not for a fixed timer
    while (value := fetch()) == 1 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert value == 2
    assert runs.n == 2  # the stale reads meanwhile started no second refresh


async def test_early_refresh_refreshes_hot_keys_before_expiry(cache: YokedCache) -> None:
    """Statistical: 8 hot keys (TTL 2 s) hit every 10 ms until after their expiry. Each must be recomputed
    in the background before it expires, and no call may ever see a miss."""
    computed_at: dict[int, list[float]] = {}

    @cached(cache=cache, ttl=2, early_refresh=True)
    async def hot(k: int) -> int:
        computed_at.setdefault(k, []).append(time.time())
        await asyncio.sleep(0.02)
        return len(computed_at[k])

    keys = range(8)
    await asyncio.gather(*(hot(k) for k in keys))
    stats = cache.function_stats[f"{__name__}.{hot.__qualname__}"]
    first_misses = stats.misses
    assert first_misses == 8
    born = {k: computed_at[k][0] for k in keys}
    # An entry is fresh for 2 s from when it was *stored*, after its computation: that is its expiry, not
    # born + 2.0 (tens of ms earlier, more on a loaded machine, where a correct refresh can start).
    expires: dict[int, float] = {}
    for k in keys:
        entry = await cache.lookup(hot.cache_key(k).split(":", 1)[1])
        assert entry is not None and entry.fresh_until is not None
        expires[k] = entry.fresh_until
        assert born[k] + 2.0 <= expires[k] < born[k] + 3.0, "ttl=2 not honoured (jitter is 0 here)"
    await asyncio.sleep(1.4)
    deadline = max(expires.values()) + 0.6  # well past every key's expiry
    while time.time() < deadline:
        await asyncio.gather(*(hot(k) for k in keys))
        await asyncio.sleep(0.01)
    assert stats.misses == first_misses, "a hot key expired into a miss"
    for k in keys:
        assert len(computed_at[k]) >= 2, f"key {k} was never refreshed"
        assert computed_at[k][1] < expires[k], "the refresh started only after expiry"


# --- cache failures ----------------------------------------------------------------------------------


async def test_cache_errors_never_break_the_call(caplog: Any) -> None:
    cache = YokedCache(
        redis_url="redis://127.0.0.1:1/0", operation_timeout=0.2, connection_timeout=0.2, connection_retries=0
    )
    runs = Counter()

    @cached(cache=cache, ttl=60, tags=["users"], single_flight=True)
    async def get_user(user_id: int) -> dict[str, int]:
        runs()
        return {"id": user_id}

    @cached(cache=cache, ttl=60, lock=True, early_refresh=True, serve_stale_on_error=True)
    def get_user_sync(user_id: int) -> dict[str, int]:
        runs()
        return {"id": user_id}

    with caplog.at_level(logging.WARNING, logger="yokedcache"):
        assert await get_user(1) == {"id": 1}
        assert await get_user(1) == {"id": 1}
        assert get_user_sync(2) == {"id": 2}
        assert await get_user.invalidate(1) is False
    assert runs.n == 3
    assert cache.get_stats_sync().errors >= 3


async def test_fallback_disabled_raises_connection_error() -> None:
    cache = YokedCache(
        redis_url="redis://127.0.0.1:1/0",
        operation_timeout=0.2,
        connection_timeout=0.2,
        connection_retries=0,
        fallback_enabled=False,
    )
    runs = Counter()

    @cached(cache=cache, ttl=60)
    async def f() -> int:
        return runs()

    @cached(cache=cache, ttl=60)
    def g() -> int:
        return runs()

    with pytest.raises(CacheConnectionError):
        await f()
    with pytest.raises(CacheConnectionError):
        g()
    assert runs.n == 0


# --- FastAPI -----------------------------------------------------------------------------------------


try:
    import fastapi
except ImportError:  # pragma: no cover
    fastapi = None  # type: ignore[assignment]


@pytest.mark.skipif(fastapi is None, reason="fastapi not installed")
def test_fastapi_route_with_request_argument(sync_cache: YokedCache) -> None:
    from fastapi.testclient import TestClient

    runs = Counter()
    app = fastapi.FastAPI()

    @app.get("/users/{user_id}")
    @cached(cache=sync_cache, ttl=60, tags=["users"])
    async def get_user(user_id: int, request: fastapi.Request, verbose: bool = False) -> dict[str, Any]:
        runs()
        return {"id": user_id, "verbose": verbose}

    with TestClient(app) as client:
        assert client.get("/users/3").json() == {"id": 3, "verbose": False}
        assert client.get("/users/3", headers={"X-Other": "1"}).json() == {"id": 3, "verbose": False}
        assert client.get("/users/3?verbose=true").json() == {"id": 3, "verbose": True}
    assert runs.n == 2  # the Request is not part of the key


def test_partials_and_callable_objects(sync_cache: YokedCache) -> None:
    import functools

    runs = Counter()

    def power(base: int, exp: int) -> int:
        runs()
        return base**exp

    class Doubler:
        def __call__(self, x: int) -> int:
            runs()
            return 2 * x

    square = cached(cache=sync_cache, ttl=60)(functools.partial(power, exp=2))
    double = cached(cache=sync_cache, ttl=60)(Doubler())
    assert [square(3), square(3), double(4), double(4)] == [9, 9, 8, 8]
    assert runs.n == 2
    assert ".Doubler:" in double.cache_key(4)


async def test_retained_entries_are_invisible_to_other_operations(cache: YokedCache) -> None:
    @cached(cache=cache, ttl=1, stale_ttl=30)
    async def fetch() -> dict[str, int]:
        return {"n": 1}

    await fetch()
    user_key = fetch.cache_key().split(":", 1)[1]
    assert await cache.get(user_key) == {"n": 1}
    await asyncio.sleep(1.1)
    assert await cache.get(user_key) is None
    assert not await cache.exists(user_key)
