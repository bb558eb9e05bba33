"""``@cached``: function and method caching that stays correct under concurrency and invalidation.

A call builds its key from the bound arguments (:mod:`.arguments`), reads the entry (one round trip), and on
a miss captures the tags' tokens *before* running the function, so a result computed from data that an
invalidation has since replaced is never served afterwards (the backend refuses the write). Concurrent
misses of one key share one execution (in-process single flight, and with ``lock=True`` a lease in the
backend shared by every process).

Entries always hold the value itself. When a feature needs an entry's age (``stale_ttl``,
``serve_stale_on_error``, ``early_refresh``) the entry is stored *timed*: its envelope records when the
value stops being fresh (jittered per entry) and how long it took to compute, and the backend keeps it for
the retention window after that. Plain reads (``cache.get``) never see it past its freshness; the
decorator reads it with ``cache.lookup`` and decides between "fresh", "serve stale and refresh" and "miss".

The decorator uses only the cache's public API plus the documented integration hooks: ``lookup``,
``fill`` (tokens captured before computing, single flight, the cross-process lock), ``function_stats``
and ``keep_task``.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import logging
import math
import random
import string
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any, TypeVar, overload

from ..codec.envelope import Opened
from ..config import jittered_ttl_ms
from ..keys import normalize_tags
from ..models import SerializationMethod
from ..policy.cache import MISSING, StorePlan, YokedCache, get_default_cache
from .arguments import KeyBuilder
from .sqlalchemy import inputs_predate

F = TypeVar("F", bound=Callable[..., Any])
logger = logging.getLogger("yokedcache")

_EARLY_SPREAD = 0.01  # early refresh: the exponential's scale is at least this fraction of the TTL


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


def _as_list(tags: Any) -> list[str]:
    if tags is None:
        return []
    if isinstance(tags, str):
        return [tags]
    return list(tags)


def _template_fields(template: str) -> list[str]:
    """Root names of a tag template's ``{placeholders}`` (``"user:{user.id}"`` → ``["user"]``)."""
    roots = []
    for _, field, _, _ in string.Formatter().parse(template):
        if field is not None:
            root = field.split(".", 1)[0].split("[", 1)[0]
            if not root or root.isdigit():
                raise ValueError(f"tag template {template!r} must name parameters, e.g. 'user:{{user_id}}'")
            roots.append(root)
    return roots


def _keyword_filter(func: Callable[..., Any]) -> frozenset[str] | None:
    """Names a tags callable accepts, or None when it takes ``**kwargs`` (then it gets everything)."""
    try:
        params = inspect.signature(func).parameters.values()
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return frozenset(p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY))


class _Options:
    """Everything a decorated function needs, computed once at decoration time."""

    def __init__(self, func: Callable[..., Any], skip_first: bool | None, **options: Any) -> None:
        self.func = func
        qualname = getattr(func, "__qualname__", None) or type(func).__qualname__  # partials, callables
        self.name = f"{getattr(func, '__module__', None) or 'builtins'}.{qualname}"
        self.cache: YokedCache | None = options["cache"]
        self.ttl: float | None = options["ttl"]
        self.serialization: SerializationMethod | str | None = options["serialization"]
        if self.serialization is not None:
            SerializationMethod.parse(self.serialization)  # a typo fails at import, not at the first miss
        self.single_flight: bool = options["single_flight"]
        self.serve_stale_on_error: bool = options["serve_stale_on_error"]
        self.stale_ttl: float = float(options["stale_ttl"])
        self.stale_if_error_ttl: float = float(options["stale_if_error_ttl"])
        self.key_builder: Callable[..., str] | None = options["key_builder"]
        self.condition: Callable[[Any], bool] | None = options["condition"]
        self.early_refresh: bool = options["early_refresh"]
        self.lock: bool = options["lock"]
        self.lock_timeout: float = float(options["lock_timeout"])
        if self.stale_ttl < 0 or self.stale_if_error_ttl < 0 or self.lock_timeout <= 0:
            raise ValueError("stale_ttl and stale_if_error_ttl must be >= 0 and lock_timeout > 0")
        self.segment = f"{options['cache_key_prefix'] or 'fn'}:{self.name}"
        self.keys = KeyBuilder(func, options["exclude_args"], skip_first=skip_first)
        self._init_tags(options["tags"])
        self.records = self.early_refresh or self.stale_ttl > 0 or self.serve_stale_on_error
        self.retention = self.stale_ttl
        if self.serve_stale_on_error:
            self.retention = max(self.stale_ttl, self.stale_if_error_ttl)
        self.refreshing: set[str] = set()
        self.refreshing_lock = threading.Lock()

    # --- tags ----------------------------------------------------------------------------------------
    def _init_tags(self, spec: Any) -> None:
        self.static_tags: tuple[str, ...] | None = None
        self.tag_callable: Callable[..., Any] | None = None
        self.tag_accepts: frozenset[str] | None = None
        self.tag_templates: list[str] = []
        if callable(spec):
            self.tag_callable = spec
            self.tag_accepts = _keyword_filter(spec)
            return
        tags = _as_list(spec)
        known = set(self.keys.names)
        for tag in tags:
            if not isinstance(tag, str):
                raise ValueError(f"tags must be strings, got {tag!r}")
            for root in _template_fields(tag):
                if root not in known and self.keys.var_keyword is None:
                    raise ValueError(f"tag template {tag!r} names {root!r}, which is not a parameter")
        if any("{" in t for t in tags):
            self.tag_templates = tags
        else:
            self.static_tags = normalize_tags(tags)

    def tags_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
        if self.static_tags is not None:
            return self.static_tags
        values = self.keys.template_values(self.keys.bind(args, kwargs))
        if self.tag_callable is not None:
            accepts = self.tag_accepts
            given = values if accepts is None else {k: v for k, v in values.items() if k in accepts}
            return normalize_tags(self.tag_callable(**given))
        return normalize_tags([t.format_map(values) if "{" in t else t for t in self.tag_templates])

    # --- keys, caches, stats -------------------------------------------------------------------------
    def resolve_cache(self) -> YokedCache:
        return self.cache if self.cache is not None else get_default_cache()

    def stats(self, cache: YokedCache) -> FunctionStats:
        found = cache.function_stats.get(self.name)
        if found is None:
            found = cache.function_stats.setdefault(self.name, FunctionStats())
        return found

    def key_for(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> str:
        """A call's user key; ``CacheKeyError`` for an unstable argument, ``TypeError`` for a bad call."""
        if self.key_builder is not None:
            self.keys.bind(args, kwargs)  # a call the function would refuse fails here, not later
            return str(self.key_builder(*args, **kwargs))
        return f"{self.segment}:{self.keys.digest_call(args, kwargs)}"

    def ttl_for(self, cache: YokedCache) -> float:
        return float(cache.config.default_ttl if self.ttl is None else self.ttl)

    # --- storing and judging entries ------------------------------------------------------------------
    def plan(self, cache: YokedCache) -> Callable[[Any, float], StorePlan | None]:
        """How ``fill`` stores a result of this function: not at all (``ttl=0``, ``condition`` false),
        plainly, or timed with a freshness deadline and a retention window after it."""

        def planned(value: Any, seconds: float) -> StorePlan | None:
            if self.ttl == 0 or (self.condition is not None and not self.condition(value)):
                return None
            if not self.records:
                return StorePlan(value, self.ttl)
            ttl = self.ttl_for(cache)
            jitter = cache.config.ttl_jitter_percent
            fresh = jittered_ttl_ms(ttl, jitter) / 1000  # spread expiries like plain entries are spread
            keep = self.retention
            if self.early_refresh:
                keep = max(keep, 2 * self.spread(seconds, ttl))  # grace while a refresh is in flight
            # The cache jitters the TTL it is given again; stretch it so the entry outlives fresh + keep.
            return StorePlan(value, (fresh + keep) / (1 - jitter / 100), fresh_for=fresh)

        return planned

    @staticmethod
    def spread(seconds: float, ttl: float) -> float:
        return max(seconds, ttl * _EARLY_SPREAD, 0.001)

    def wants_early_refresh(self, fresh_until: float, seconds: float, ttl: float, now: float) -> bool:
        """XFetch (Vattani et al.), shifted by two compute times so the refresh ends before expiry.

        A hit recomputes early with probability ``exp(-(fresh_until - 2δ - now) / δ)``, δ being the recorded
        compute time (at least 1 % of the TTL): rare far from expiry, certain in the last 2δ, and higher
        for slower functions. Hot keys are therefore refreshed before they expire, and keys computed
        together do not all refresh together.
        """
        delta = self.spread(seconds, ttl)
        return now - delta * math.log(random.random() or 1e-300) >= fresh_until - 2 * delta

    def claim_refresh(self, key: str) -> bool:
        with self.refreshing_lock:
            if key in self.refreshing:
                return False
            self.refreshing.add(key)
            return True

    def end_refresh(self, key: str) -> None:
        with self.refreshing_lock:
            self.refreshing.discard(key)

    def judge(self, found: Opened, key: str, cache: YokedCache) -> str | None:
        """For a found entry: ``None`` (serve), ``"refresh"`` (serve and refresh in the background) or
        ``"miss"`` (compute now)."""
        fresh_until = found.fresh_until
        if fresh_until is None:
            return None
        now = time.time()
        if now < fresh_until:
            ttl = self.ttl_for(cache)
            if self.early_refresh and self.wants_early_refresh(fresh_until, found.compute_seconds, ttl, now):
                return "refresh"
            return None
        if now < fresh_until + self.stale_ttl:
            return "refresh"
        if self.early_refresh and key in self.refreshing:
            return None  # an early refresh is about to land: keep serving during its grace period
        return "miss"

    def stale_usable(self, found: Opened | None) -> bool:
        """``serve_stale_on_error``: is this retained entry within ``stale_if_error_ttl`` of expiry?"""
        if found is None or found.fresh_until is None:
            return found is not None
        return time.time() < found.fresh_until + max(self.stale_ttl, self.stale_if_error_ttl)

    def record_call(self, cache: YokedCache, stats: FunctionStats, hit: bool, seconds: float) -> None:
        if hit:
            stats.hits += 1
            stats.hit_seconds += seconds
        else:
            stats.misses += 1
            stats.miss_seconds += seconds
        if cache.metrics is not None:
            cache.metrics.record_function(self.name, hit, seconds)


def _fill_options(opts: _Options, cache: YokedCache, args: Any, kwargs: Any, shared: bool) -> dict[str, Any]:
    """How ``fill`` computes a miss of this function (``shared``: with single flight and the lock)."""
    return {
        "tags": opts.tags_for(args, kwargs),
        "serialization": opts.serialization,
        "single_flight": shared and opts.single_flight,
        "plan": opts.plan(cache),
        "lock": opts.lock_timeout if shared and opts.lock else None,
        "vouched": not inputs_predate((*args, *kwargs.values()), time.monotonic_ns()),
    }


def _make_async(opts: _Options) -> Callable[..., Any]:
    func = opts.func

    def fill(cache: YokedCache, key: str, args: Any, kwargs: Any, shared: bool) -> Any:
        """Run the function for a miss (``shared``: with single flight and the lock) and store it."""
        options = _fill_options(opts, cache, args, kwargs, shared)
        return cache.fill(key, lambda: func(*args, **kwargs), **options)

    def refresh_in_background(cache: YokedCache, key: str, args: Any, kwargs: Any) -> None:
        if not opts.claim_refresh(key):
            return

        async def run() -> None:
            try:
                await fill(cache, key, args, kwargs, shared=False)
            except Exception as exc:
                logger.warning("background refresh of %s failed: %s", opts.name, exc)
            finally:
                opts.end_refresh(key)

        cache.keep_task(asyncio.ensure_future(run()))

    @functools.wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache = opts.resolve_cache()
        key = opts.key_for(args, kwargs)
        stats = opts.stats(cache)
        started = time.perf_counter()
        found: Opened | None = None
        if not opts.records:  # the common case: a plain entry is fresh while it exists
            value = await cache.get(key, MISSING)
            if value is not MISSING:
                opts.record_call(cache, stats, True, time.perf_counter() - started)
                return value
        else:
            found = await cache.lookup(key)
            action = "miss" if found is None else opts.judge(found, key, cache)
            cache.count_read(action != "miss")
            if action != "miss":
                if action == "refresh":
                    refresh_in_background(cache, key, args, kwargs)
                opts.record_call(cache, stats, True, time.perf_counter() - started)
                return found.value  # type: ignore[union-attr]
        try:
            return await fill(cache, key, args, kwargs, shared=True)
        except Exception:
            if opts.serve_stale_on_error and opts.stale_usable(found):
                logger.warning("%s failed; serving its last good value", opts.name, exc_info=True)
                return found.value  # type: ignore[union-attr]
            raise
        finally:
            opts.record_call(cache, stats, False, time.perf_counter() - started)

    async def refresh(*args: Any, **kwargs: Any) -> Any:
        """Run the function now, store its result and return it."""
        cache = opts.resolve_cache()
        return await fill(cache, opts.key_for(args, kwargs), args, kwargs, shared=False)

    async def invalidate(*args: Any, **kwargs: Any) -> bool:
        """Delete this call's entry; True if one was removed."""
        return await opts.resolve_cache().delete(opts.key_for(args, kwargs))

    wrapper.refresh = refresh  # type: ignore[attr-defined]
    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    return wrapper


def _make_sync(opts: _Options) -> Callable[..., Any]:
    func = opts.func

    def fill(cache: YokedCache, key: str, args: Any, kwargs: Any, shared: bool) -> Any:
        options = _fill_options(opts, cache, args, kwargs, shared)
        return cache.fill_sync(key, lambda: func(*args, **kwargs), **options)

    def refresh_in_background(cache: YokedCache, key: str, args: Any, kwargs: Any) -> None:
        if not opts.claim_refresh(key):
            return

        def run() -> None:
            try:
                fill(cache, key, args, kwargs, shared=False)
            except Exception as exc:
                logger.warning("background refresh of %s failed: %s", opts.name, exc)
            finally:
                opts.end_refresh(key)

        threading.Thread(target=run, name=f"yokedcache-refresh-{opts.name}", daemon=True).start()

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache = opts.resolve_cache()
        key = opts.key_for(args, kwargs)
        stats = opts.stats(cache)
        started = time.perf_counter()
        found: Opened | None = None
        if not opts.records:
            value = cache.get_sync(key, MISSING)
            if value is not MISSING:
                opts.record_call(cache, stats, True, time.perf_counter() - started)
                return value
        else:
            found = cache.lookup_sync(key)
            action = "miss" if found is None else opts.judge(found, key, cache)
            cache.count_read(action != "miss")
            if action != "miss":
                if action == "refresh":
                    refresh_in_background(cache, key, args, kwargs)
                opts.record_call(cache, stats, True, time.perf_counter() - started)
                return found.value  # type: ignore[union-attr]
        try:
            return fill(cache, key, args, kwargs, shared=True)
        except Exception:
            if opts.serve_stale_on_error and opts.stale_usable(found):
                logger.warning("%s failed; serving its last good value", opts.name, exc_info=True)
                return found.value  # type: ignore[union-attr]
            raise
        finally:
            opts.record_call(cache, stats, False, time.perf_counter() - started)

    def refresh(*args: Any, **kwargs: Any) -> Any:
        cache = opts.resolve_cache()
        return fill(cache, opts.key_for(args, kwargs), args, kwargs, shared=False)

    def invalidate(*args: Any, **kwargs: Any) -> bool:
        return opts.resolve_cache().delete_sync(opts.key_for(args, kwargs))

    wrapper.refresh = refresh  # type: ignore[attr-defined]
    wrapper.invalidate = invalidate  # type: ignore[attr-defined]
    return wrapper


def _decorate(func: Any, options: dict[str, Any], skip_first: bool | None = None) -> Any:
    if isinstance(func, staticmethod):
        return staticmethod(_decorate(func.__func__, options, skip_first=False))
    if isinstance(func, classmethod):
        inner = _decorate(func.__func__, options, skip_first=True)
        return CachedClassMethod(inner)
    if isinstance(func, (CachedMethod, CachedClassMethod)) or hasattr(func, "yokedcache_options"):
        raise TypeError(f"{func!r} is already decorated with @cached")
    if not callable(func):
        raise TypeError(f"@cached needs a function, got {type(func).__name__}")
    if inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func):
        raise TypeError(
            f"@cached cannot cache generator function {getattr(func, '__qualname__', func)!r}: its items "
            "are produced lazily; return a list instead"
        )
    opts = _Options(func, skip_first, **options)
    is_async = inspect.iscoroutinefunction(func)
    wrapper = _make_async(opts) if is_async else _make_sync(opts)
    wrapper.__wrapped__ = func  # type: ignore[attr-defined]
    call_refresh = wrapper.refresh  # type: ignore[attr-defined]
    call_invalidate = wrapper.invalidate  # type: ignore[attr-defined]

    def cache_key(*args: Any, **kwargs: Any) -> str:
        """The full stored key (``<key_prefix>:<user key>``) of a call, without I/O."""
        return opts.resolve_cache().full_key(opts.key_for(args, kwargs))

    wrapper.cache_key = cache_key  # type: ignore[attr-defined]
    wrapper.invalidate = call_invalidate  # type: ignore[attr-defined]
    wrapper.refresh = call_refresh  # type: ignore[attr-defined]
    wrapper.yokedcache_options = opts  # type: ignore[attr-defined]
    if opts.keys.skip_first:
        return (AsyncCachedMethod if is_async else CachedMethod)(wrapper)
    return wrapper


class CachedMethod:
    """``@cached`` on a method (first parameter ``self`` or ``cls``).

    Binds like a function. Through an instance, ``cache_key``/``invalidate``/``refresh`` know which
    instance they belong to; through the class, ``cache_key``/``invalidate`` take the arguments after
    ``self`` (it is never part of the key) and ``refresh`` is unavailable (it would need an instance).
    """

    def __init__(self, wrapper: Callable[..., Any]) -> None:
        # updated=(): the wrapper's helpers take ``self`` first; they must not shadow the methods below.
        functools.update_wrapper(self, wrapper, updated=())
        opts: _Options = wrapper.yokedcache_options  # type: ignore[attr-defined]
        self.__wrapped__ = opts.func  # the original: calling it bypasses the cache
        self._call = wrapper
        self._opts = opts
        self._bound = AsyncBoundCachedMethod if inspect.iscoroutinefunction(wrapper) else BoundCachedMethod
        self.yokedcache_options = opts

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(*args, **kwargs)

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        return self._bound(self._call, instance)

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        """The full stored key of a call, given the arguments after ``self``."""
        return self._call.cache_key(None, *args, **kwargs)  # type: ignore[attr-defined]

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        """Delete a call's entry, given the arguments after ``self`` (awaitable for async methods)."""
        return self._call.invalidate(None, *args, **kwargs)  # type: ignore[attr-defined]

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        raise TypeError(f"{self._opts.name}.refresh needs an instance: call it as obj.method.refresh(...)")

    def __repr__(self) -> str:
        return f"<cached method {self._opts.name}>"


class AsyncCachedMethod(CachedMethod):
    """An async cached method: ``__call__`` is a coroutine function, so frameworks see it as async."""

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call(*args, **kwargs)


class BoundCachedMethod:
    """A cached method bound to an instance (or, for classmethods, to a class)."""

    __slots__ = ("__self__", "_call")

    def __init__(self, call: Callable[..., Any], instance: Any) -> None:
        self._call = call
        self.__self__ = instance

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._call(self.__self__, *args, **kwargs)

    @property
    def __func__(self) -> Callable[..., Any]:
        return self._call

    @property
    def __signature__(self) -> inspect.Signature:
        signature = inspect.signature(self._call)
        return signature.replace(parameters=list(signature.parameters.values())[1:])

    def cache_key(self, *args: Any, **kwargs: Any) -> str:
        return self._call.cache_key(self.__self__, *args, **kwargs)  # type: ignore[attr-defined]

    def invalidate(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.invalidate(self.__self__, *args, **kwargs)  # type: ignore[attr-defined]

    def refresh(self, *args: Any, **kwargs: Any) -> Any:
        return self._call.refresh(self.__self__, *args, **kwargs)  # type: ignore[attr-defined]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._call, name)

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, BoundCachedMethod)
            and other._call is self._call
            and other.__self__ is self.__self__
        )

    def __hash__(self) -> int:
        return hash((id(self._call), id(self.__self__)))

    def __repr__(self) -> str:
        return f"<bound cached method {self._call.yokedcache_options.name} of {self.__self__!r}>"  # type: ignore[attr-defined]


class AsyncBoundCachedMethod(BoundCachedMethod):
    __slots__ = ()

    async def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return await self._call(self.__self__, *args, **kwargs)


class CachedClassMethod(classmethod):
    """``@cached`` above ``@classmethod``: binds to the class, so ``Cls.method.refresh(...)`` works too."""

    def __init__(self, method: CachedMethod) -> None:
        super().__init__(method)
        self._method = method
        self.yokedcache_options = method.yokedcache_options

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if owner is None:
            owner = type(instance)
        return self._method._bound(self._method._call, owner)


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
    """Cache a function's results; see API.md §8.1 for every option.

    Works on ``async def`` and plain ``def`` functions, methods, classmethods and staticmethods (above or
    below ``@classmethod``/``@staticmethod``). Without ``cache=`` the process default cache is used,
    resolved at call time. ``ttl=0`` runs the function every time (nothing is stored).
    """
    if ttl is not None and (isinstance(ttl, bool) or not ttl >= 0 or not math.isfinite(ttl)):
        raise ValueError(f"ttl must be a finite number >= 0, got {ttl!r}")
    if isinstance(exclude_args, str):
        exclude_args = (exclude_args,)
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


__all__ = ["BoundCachedMethod", "CachedMethod", "FunctionStats", "cached"]
