"""``@cached``: function and method caching that stays correct under concurrency and invalidation.

A call builds its key from the bound arguments, reads the entry (one round trip), and on a miss captures
the tags' tokens *before* running the function, so a result computed from data that an invalidation has
since replaced is never served afterwards. Concurrent misses of one key share one execution.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import random
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from ..exceptions import CacheConnectionError
from ..backends.base import new_token
from ..keys import normalize_tags
from ..models import SerializationMethod
from ..policy.cache import MISSING, YokedCache, get_default_cache
from .arguments import KeyBuilder

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("yokedcache")

# Stored shape when a stale or early-refresh feature is on: [value, fresh_until (unix s), compute seconds].
_RECORD_MARK = "__yc_record__"


class FunctionStats:
    """Per-function counters; ``as_dict`` derives rates and the time the cache saved."""

    __slots__ = ("hit_seconds", "hits", "miss_seconds", "misses")

    def __init__(self) -> None:
        self.hits = 0
        self.misses = 0
        self.hit_seconds = 0.0
        self.miss_seconds = 0.0

    def as_dict(self) -> dict[str, float]:
        reads = self.hits + self.misses
        mean_hit = self.hit_seconds / self.hits if self.hits else 0.0
        mean_miss = self.miss_seconds / self.misses if self.misses else 0.0
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": self.hits / reads if reads else 0.0,
            "mean_hit_ms": mean_hit * 1000,
            "mean_miss_ms": mean_miss * 1000,
            "time_saved_ms": max(0.0, self.hits * (mean_miss - mean_hit) * 1000),
        }


class _Options:
    """Everything a decorated function needs, computed once at decoration time."""

    def __init__(self, func: Callable[..., Any], **options: Any) -> None:
        self.func = func
        self.name = f"{func.__module__}.{func.__qualname__}"
        self.cache: YokedCache | None = options["cache"]
        self.ttl: float | None = options["ttl"]
        self.serialization: SerializationMethod | str | None = options["serialization"]
        self.single_flight: bool = options["single_flight"]
        self.serve_stale_on_error: bool = options["serve_stale_on_error"]
        self.stale_ttl: float = options["stale_ttl"]
        self.stale_if_error_ttl: float = options["stale_if_error_ttl"]
        self.key_builder: Callable[..., str] | None = options["key_builder"]
        self.condition: Callable[[Any], bool] | None = options["condition"]
        self.early_refresh: bool = options["early_refresh"]
        self.lock: bool = options["lock"]
        self.lock_timeout: float = options["lock_timeout"]
        self.segment = f"{options['cache_key_prefix'] or 'fn'}:{self.name}"
        self.keys = KeyBuilder(func, options["exclude_args"])
        self.tags_spec = options["tags"]
        self.static_tags: tuple[str, ...] | None = None
        if not callable(self.tags_spec) and not any("{" in t for t in _as_list(self.tags_spec)):
            self.static_tags = normalize_tags(self.tags_spec)
        self.records = self.early_refresh or self.stale_ttl > 0 or self.serve_stale_on_error
        self.retention = 0.0
        if self.records:
            self.retention = max(self.stale_ttl, self.stale_if_error_ttl if self.serve_stale_on_error else 0)
        self.refreshing: set[str] = set()

    def resolve_cache(self) -> YokedCache:
        return self.cache if self.cache is not None else get_default_cache()

    def stats(self, cache: YokedCache) -> FunctionStats:
        found = cache.function_stats.get(self.name)
        if found is None:
            found = cache.function_stats.setdefault(self.name, FunctionStats())
        return found

    def key_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
        bound = self.keys.bind(args, kwargs)
        if self.key_builder is not None:
            return str(self.key_builder(*args, **kwargs)), bound
        return f"{self.segment}:{self.keys.digest(bound)}", bound

    def tags_for(self, bound: dict[str, Any]) -> tuple[str, ...]:
        if self.static_tags is not None:
            return self.static_tags
        spec = self.tags_spec
        if callable(spec):
            return normalize_tags(spec(**bound))
        return normalize_tags([t.format_map(bound) if "{" in t else t for t in _as_list(spec)])

    def ttl_for(self, cache: YokedCache) -> float:
        return float(cache.config.default_ttl if self.ttl is None else self.ttl)

    def wrap(self, value: Any, cache: YokedCache, seconds: float) -> tuple[Any, float | None]:
        """The stored form of a result and the backend TTL for it."""
        ttl = self.ttl_for(cache)
        if not self.records:
            return value, self.ttl
        return {_RECORD_MARK: [value, time.time() + ttl, seconds]}, ttl + self.retention

    def unwrap(self, stored: Any) -> tuple[Any, float, float]:
        """(value, fresh_until, compute seconds) of a stored form."""
        if self.records and type(stored) is dict and _RECORD_MARK in stored:
            value, fresh_until, seconds = stored[_RECORD_MARK]
            return value, float(fresh_until), float(seconds)
        return stored, math.inf, 0.0

    def wants_early_refresh(self, fresh_until: float, seconds: float, ttl: float) -> bool:
        """XFetch: recompute early with a probability that grows as expiry nears and with compute time."""
        if not self.early_refresh or fresh_until == math.inf:
            return False
        spread = max(seconds, ttl * 0.01)
        return time.time() - spread * math.log(random.random() or 1e-12) >= fresh_until


def _as_list(tags: Any) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        return [tags]
    return list(tags)


class _Outcome:
    """What a computation produced, for callers that joined it."""

    __slots__ = ("generation", "stale", "value")

    def __init__(self, value: Any, stale: bool, generation: int) -> None:
        self.value = value
        self.stale = stale
        self.generation = generation


def _make_async(opts: _Options) -> Callable[..., Any]:
    func = opts.func

    async def compute(cache: YokedCache, key: str, tags: tuple[str, ...], args: Any, kwargs: Any) -> _Outcome:
        if not opts.lock:
            return await compute_here(cache, key, tags, args, kwargs)
        owner = new_token()
        while True:
            if await cache.acquire_lock(key, owner, opts.lock_timeout):
                try:
                    stored = await cache.peek(key, MISSING)
                    if stored is not MISSING:  # another process finished just before we took the lock
                        return _Outcome(opts.unwrap(stored)[0], False, cache.invalidation_generation)
                    return await compute_here(cache, key, tags, args, kwargs)
                finally:
                    await cache.release_lock(key, owner)
            await cache.wait_for_release(key, opts.lock_timeout)
            stored = await cache.peek(key, MISSING)
            if stored is not MISSING:
                return _Outcome(opts.unwrap(stored)[0], False, cache.invalidation_generation)

    async def compute_here(
        cache: YokedCache, key: str, tags: tuple[str, ...], args: Any, kwargs: Any
    ) -> _Outcome:
        generation = cache.invalidation_generation
        tokens = await cache.capture_tokens(tags, key)
        started = time.perf_counter()
        value = await func(*args, **kwargs)
        outcome = "skipped"
        if opts.condition is None or opts.condition(value):
            stored, ttl = opts.wrap(value, cache, time.perf_counter() - started)
            outcome = await cache.store_computed(
                key, stored, tokens, tags, ttl=ttl, serialization=opts.serialization
            )
        return _Outcome(value, outcome == "stale", generation)

    async def call(cache: YokedCache, key: str, tags: tuple[str, ...], args: Any, kwargs: Any) -> Any:
        if not opts.single_flight:
            return (await compute(cache, key, tags, args, kwargs)).value
        my_generation = cache.invalidation_generation
        while True:
            outcome, joined = await cache.flights.arun(
                cache.full_key(key), lambda: compute(cache, key, tags, args, kwargs)
            )
            # A joiner must not receive a value whose computation started before an invalidation
            # that had returned when the joiner started.
            if not joined or not (outcome.stale or outcome.generation < my_generation):
                return outcome.value

    async def refresh_in_background(cache: YokedCache, key: str, tags: Any, args: Any, kwargs: Any) -> None:
        if key in opts.refreshing:
            return
        opts.refreshing.add(key)

        async def run() -> None:
            try:
                await compute_here(cache, key, tags, args, kwargs)
            except Exception as exc:
                logger.warning("background refresh of %s failed: %s", opts.name, exc)
            finally:
                opts.refreshing.discard(key)

        cache.keep_task(asyncio.ensure_future(run()))

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache = opts.resolve_cache()
        key, bound = opts.key_for(args, kwargs)
        stats = opts.stats(cache)
        started = time.perf_counter()
        stored = await cache.get(key, MISSING)
        if stored is not MISSING:
            value, fresh_until, seconds = opts.unwrap(stored)
            now = time.time()
            if now < fresh_until:
                if opts.wants_early_refresh(fresh_until, seconds, opts.ttl_for(cache)):
                    await refresh_in_background(cache, key, opts.tags_for(bound), args, kwargs)
                stats.hits += 1
                stats.hit_seconds += time.perf_counter() - started
                return value
            if now < fresh_until + opts.stale_ttl:
                await refresh_in_background(cache, key, opts.tags_for(bound), args, kwargs)
                stats.hits += 1
                stats.hit_seconds += time.perf_counter() - started
                return value
        tags = opts.tags_for(bound)
        try:
            value = await call(cache, key, tags, args, kwargs)
        except Exception:
            if opts.serve_stale_on_error and stored is not MISSING:
                logger.warning("%s failed; serving its last good value", opts.name, exc_info=True)
                return opts.unwrap(stored)[0]
            raise
        stats.misses += 1
        stats.miss_seconds += time.perf_counter() - started
        return value

    async def refresh(*args: Any, **kwargs: Any) -> Any:
        cache = opts.resolve_cache()
        key, bound = opts.key_for(args, kwargs)
        return (await compute_here(cache, key, opts.tags_for(bound), args, kwargs)).value

    async def invalidate(*args: Any, **kwargs: Any) -> bool:
        cache = opts.resolve_cache()
        return await cache.delete(opts.key_for(args, kwargs)[0])

    wrapper.refresh = refresh  # type: ignore[attr-defined]
    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    return wrapper


def _make_sync(opts: _Options) -> Callable[..., Any]:
    func = opts.func

    def compute(cache: YokedCache, key: str, tags: tuple[str, ...], args: Any, kwargs: Any) -> _Outcome:
        if not opts.lock:
            return compute_here(cache, key, tags, args, kwargs)
        owner = new_token()
        while True:
            if cache.acquire_lock_sync(key, owner, opts.lock_timeout):
                try:
                    stored = cache.peek_sync(key, MISSING)
                    if stored is not MISSING:
                        return _Outcome(opts.unwrap(stored)[0], False, cache.invalidation_generation)
                    return compute_here(cache, key, tags, args, kwargs)
                finally:
                    cache.release_lock_sync(key, owner)
            cache.wait_for_release_sync(key, opts.lock_timeout)
            stored = cache.peek_sync(key, MISSING)
            if stored is not MISSING:
                return _Outcome(opts.unwrap(stored)[0], False, cache.invalidation_generation)

    def compute_here(cache: YokedCache, key: str, tags: tuple[str, ...], args: Any, kwargs: Any) -> _Outcome:
        generation = cache.invalidation_generation
        tokens = cache.capture_tokens_sync(tags, key)
        started = time.perf_counter()
        value = func(*args, **kwargs)
        outcome = "skipped"
        if opts.condition is None or opts.condition(value):
            stored, ttl = opts.wrap(value, cache, time.perf_counter() - started)
            outcome = cache.store_computed_sync(
                key, stored, tokens, tags, ttl=ttl, serialization=opts.serialization
            )
        return _Outcome(value, outcome == "stale", generation)

    def call(cache: YokedCache, key: str, tags: tuple[str, ...], args: Any, kwargs: Any) -> Any:
        if not opts.single_flight:
            return compute(cache, key, tags, args, kwargs).value
        my_generation = cache.invalidation_generation
        while True:
            outcome, joined = cache.flights.run(
                cache.full_key(key), lambda: compute(cache, key, tags, args, kwargs)
            )
            if not joined or not (outcome.stale or outcome.generation < my_generation):
                return outcome.value

    def refresh_in_background(cache: YokedCache, key: str, tags: Any, args: Any, kwargs: Any) -> None:
        with _refresh_lock:
            if key in opts.refreshing:
                return
            opts.refreshing.add(key)

        def run() -> None:
            try:
                compute_here(cache, key, tags, args, kwargs)
            except Exception as exc:
                logger.warning("background refresh of %s failed: %s", opts.name, exc)
            finally:
                opts.refreshing.discard(key)

        threading.Thread(target=run, name=f"yokedcache-refresh-{opts.name}", daemon=True).start()

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache = opts.resolve_cache()
        key, bound = opts.key_for(args, kwargs)
        stats = opts.stats(cache)
        started = time.perf_counter()
        stored = cache.get_sync(key, MISSING)
        if stored is not MISSING:
            value, fresh_until, seconds = opts.unwrap(stored)
            now = time.time()
            if now < fresh_until or now < fresh_until + opts.stale_ttl:
                if now >= fresh_until or opts.wants_early_refresh(fresh_until, seconds, opts.ttl_for(cache)):
                    refresh_in_background(cache, key, opts.tags_for(bound), args, kwargs)
                stats.hits += 1
                stats.hit_seconds += time.perf_counter() - started
                return value
        tags = opts.tags_for(bound)
        try:
            value = call(cache, key, tags, args, kwargs)
        except Exception:
            if opts.serve_stale_on_error and stored is not MISSING:
                logger.warning("%s failed; serving its last good value", opts.name, exc_info=True)
                return opts.unwrap(stored)[0]
            raise
        stats.misses += 1
        stats.miss_seconds += time.perf_counter() - started
        return value

    def refresh(*args: Any, **kwargs: Any) -> Any:
        cache = opts.resolve_cache()
        key, bound = opts.key_for(args, kwargs)
        return compute_here(cache, key, opts.tags_for(bound), args, kwargs).value

    def invalidate(*args: Any, **kwargs: Any) -> bool:
        return opts.resolve_cache().delete_sync(opts.key_for(args, kwargs)[0])

    wrapper.refresh = refresh  # type: ignore[attr-defined]
    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    return wrapper


_refresh_lock = threading.Lock()


def _decorate(func: Any, options: dict[str, Any]) -> Any:
    if isinstance(func, (classmethod, staticmethod)):
        return type(func)(_decorate(func.__func__, options))
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(f"@cached cannot cache generator function {func.__qualname__}; return a list instead")
    opts = _Options(func, **options)
    wrapper = _make_async(opts) if inspect.iscoroutinefunction(func) else _make_sync(opts)
    wrapper.__wrapped__ = func  # type: ignore[attr-defined]

    def cache_key(*args: Any, **kwargs: Any) -> str:
        """The full stored key (``<key_prefix>:<user key>``) of a call, without I/O."""
        args = opts.keys.placeholder_self(args)
        return opts.resolve_cache().full_key(opts.key_for(args, kwargs)[0])

    def invalidate(*args: Any, **kwargs: Any) -> Any:
        """Delete a call's entry (awaitable for async functions)."""
        return wrapper.invalidate_call(*opts.keys.placeholder_self(args), **kwargs)  # type: ignore[attr-defined]

    wrapper.invalidate_call = wrapper.invalidate  # type: ignore[attr-defined]
    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    wrapper.cache_key = cache_key  # type: ignore[attr-defined]
    wrapper.yokedcache_options = opts  # type: ignore[attr-defined]
    if opts.keys.skip_first and opts.keys.names[0] == "self":
        return CachedMethod(wrapper)
    return wrapper


class CachedMethod:
    """``@cached`` on an instance method: binds like a function, and through an instance its
    ``cache_key``/``invalidate``/``refresh`` helpers know which instance they belong to."""

    def __init__(self, wrapper: Callable[..., Any]) -> None:
        functools.update_wrapper(self, wrapper)
        self._call = wrapper
        self.cache_key = wrapper.cache_key  # type: ignore[attr-defined]
        self.invalidate = wrapper.invalidate  # type: ignore[attr-defined]
        self.yokedcache_options = wrapper.yokedcache_options  # type: ignore[attr-defined]
        if inspect.iscoroutinefunction(wrapper) and hasattr(inspect, "markcoroutinefunction"):
            inspect.markcoroutinefunction(self)  # Python 3.12+: lets frameworks see it is async

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return BoundCachedMethod(self._call, instance)


class BoundCachedMethod:
    __slots__ = ("__self__", "_call")

    def __init__(self, call: Callable[..., Any], instance: Any) -> None:
        self._call = call
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self.__self__, *args, **kwargs)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self._call.cache_key(*args, **kwargs)

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.invalidate_call(self.__self__, *args, **kwargs)  # type: ignore[attr-defined]

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.refresh(self.__self__, *args, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)


@overload
def cached(func: F) -> F: ...


@overload
def cached(
    func: None = None,
    *,
    cache: YokedCache | None = None,
    ttl: float | None = None,
    tags: Iterable[str] | str | Callable[..., Iterable[str]] | None = None,
    cache_key_prefix: str | None = None,
    serialization: SerializationMethod | str | None = None,
    single_flight: bool = True,
    serve_stale_on_error: bool = False,
    stale_ttl: float = 0,
    stale_if_error_ttl: float = 300,
    key_builder: Callable[..., str] | None = None,
    exclude_args: Iterable[str] = (),
    condition: Callable[[Any], bool] | None = None,
    early_refresh: bool = False,
    lock: bool = False,
    lock_timeout: float = 30,
) -> Callable[[F], F]: ...


def cached(
    func: Any = None,
    *,
    cache: YokedCache | None = None,
    ttl: float | None = None,
    tags: Any = None,
    cache_key_prefix: str | None = None,
    serialization: SerializationMethod | str | None = None,
    single_flight: bool = True,
    serve_stale_on_error: bool = False,
    stale_ttl: float = 0,
    stale_if_error_ttl: float = 300,
    key_builder: Callable[..., str] | None = None,
    exclude_args: Iterable[str] = (),
    condition: Callable[[Any], bool] | None = None,
    early_refresh: bool = False,
    lock: bool = False,
    lock_timeout: float = 30,
) -> Any:
    """Cache a function's results; see the API reference for every option.

    Works on ``async def`` and plain ``def`` functions, methods, classmethods and staticmethods. Without
    ``cache=`` the process default cache is used, resolved at call time.
    """
    if ttl is not None and ttl < 0:
        raise ValueError(f"ttl must be >= 0, got {ttl!r}")
    options = {
        "cache": cache,
        "ttl": ttl,
        "tags": tags,
        "cache_key_prefix": cache_key_prefix,
        "serialization": serialization,
        "single_flight": single_flight,
        "serve_stale_on_error": serve_stale_on_error,
        "stale_ttl": stale_ttl,
        "stale_if_error_ttl": stale_if_error_ttl,
        "key_builder": key_builder,
        "exclude_args": tuple(exclude_args),
        "condition": condition,
        "early_refresh": early_refresh,
        "lock": lock,
        "lock_timeout": lock_timeout,
    }
    if func is not None:
        return _decorate(func, options)
    return lambda f: _decorate(f, options)


__all__ = ["CacheConnectionError", "FunctionStats", "cached"]
