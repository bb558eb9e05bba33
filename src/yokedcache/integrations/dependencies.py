"""``cached_dependency``: FastAPI dependencies whose values are cached, or whose sessions cache queries.

The wrapper is the same kind of callable as the dependency (plain, coroutine, generator or async generator
function) with the same ``__signature__``, so FastAPI's ``Depends`` resolves its parameters and
sub-dependencies exactly as before, and it can be called directly (``db = next(dep())``).

Two behaviours, chosen by what the dependency produces (remembered after the first call):

- **A SQLAlchemy session** (``Session``, ``AsyncSession``, or a scoped one). Sessions are never stored: the
  wrapper hands on *the same object* with query caching switched on (:func:`cache_queries` with the
  dependency's ``ttl``, ``table_name`` and ``tags``). For a generator the rest of the user's generator runs
  as written: an exception raised while the session is in use is thrown into it (its ``except``/rollback
  runs, and if it swallows the exception so does the wrapper), its ``finally`` closes the session — the
  wrapper never closes it a second time. A sync ``Session`` also gets instance-level ``commit``,
  ``rollback``, ``flush``, ``refresh`` and ``close`` that run synchronously and return an already completed
  awaitable, so code written for either session kind (``db.commit()`` or ``await db.commit()``) works
  without "never awaited" warnings. Caching and these patches are removed at teardown.
- **Anything else.** The produced value (a generator's first yield) is cached under
  ``dep:<module>.<qualname>:<h>`` by the dependency's canonical arguments (sessions, requests and the like
  are left out of the key), tagged ``tags`` plus ``table:<table_name>`` and the table's configured tags for a
  specific name, with TTL ``ttl`` > ``tables[table_name].ttl`` > ``default_ttl``. Tokens are captured before
  the dependency runs. On a hit the dependency does not run at all (nor a generator's setup or teardown).
"""

from __future__ import annotations

import functools
import inspect
import sys
import time
from collections.abc import AsyncGenerator, Callable, Generator, Iterable, Sequence
from typing import Any

from ..config import effective_table_settings
from ..exceptions import CacheKeyError
from ..keys import normalize_tags
from ..policy.cache import MISSING, YokedCache, get_default_cache
from ..policy.reads import ReadFrame, current_frame, reads_of
from .arguments import KeyBuilder
from .sqlalchemy import inputs_predate

AUTO_DETECT = "auto_detect"
_PATCHED = ("commit", "rollback", "flush", "refresh", "close")


class _Completed:
    """The result of a call that has already run, awaitable too: ``await db.commit()`` on a sync session.

    Not a coroutine, so leaving it un-awaited (plain ``db.commit()``) warns about nothing.
    """

    __slots__ = ("value",)

    def __init__(self, value: Any) -> None:
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # unreachable: makes __await__ a generator that finishes at once

    def __repr__(self) -> str:
        return f"<completed: {self.value!r}>"


class _Completing:
    """A session method whose result is also awaitable. A small class rather than ``functools.wraps`` on
    a closure: five of these are made for every request's session, and copying each method's metadata
    cost more than the rest of the set-up; the metadata is read through to the method instead."""

    __slots__ = ("method",)

    def __init__(self, method: Callable[..., Any]) -> None:
        self.method = method

    def __call__(self, *args: Any, **kwargs: Any) -> _Completed:
        return _Completed(self.method(*args, **kwargs))

    def __getattr__(self, name: str) -> Any:  # __name__, __doc__, __wrapped__-style introspection
        return getattr(self.method, name)

    def __repr__(self) -> str:
        return f"<awaitable-result {self.method!r}>"


def _is_session(value: Any) -> bool:
    if "sqlalchemy.orm" not in sys.modules:
        return False
    from sqlalchemy.orm import Session, scoped_session

    if isinstance(value, (Session, scoped_session)):
        return True
    if "sqlalchemy.ext.asyncio" in sys.modules:
        from sqlalchemy.ext.asyncio import AsyncSession, async_scoped_session

        return isinstance(value, (AsyncSession, async_scoped_session))
    return False


class _SessionUse:
    """Query caching (and, for sync sessions, awaitable methods) for the lifetime of one dependency use."""

    def __init__(self, value: Any, spec: _Spec, cache: YokedCache) -> None:
        from .sqlalchemy.session import cache_queries, sync_session_of

        self.session = sync_session_of(value)
        self.patched = self.session is value or not hasattr(value, "sync_session")
        cache_queries(value, cache=cache, ttl=spec.ttl, table_name=spec.table_name, tags=spec.user_tags)
        if self.patched:
            for name in _PATCHED:
                self.session.__dict__[name] = _Completing(getattr(self.session, name))

    def release(self) -> None:
        from .sqlalchemy.session import stop_caching

        if self.patched:
            for name in _PATCHED:
                self.session.__dict__.pop(name, None)
        stop_caching(self.session)


class _Spec:
    """The dependency, its options, and what it was found to produce."""

    def __init__(
        self,
        dependency: Callable[..., Any],
        cache: YokedCache | None,
        ttl: float | None,
        table_name: str | None,
        tags: str | Iterable[str] | None,
    ) -> None:
        self.dependency = dependency
        self.cache = cache
        self.ttl = ttl
        self.table_name = None if table_name in (None, AUTO_DETECT) else table_name
        self.user_tags = normalize_tags(tags)
        extra = [f"table:{self.table_name}"] if self.table_name else []
        self.tags = normalize_tags([*self.user_tags, *extra])
        name = getattr(dependency, "__qualname__", type(dependency).__qualname__)
        self.segment = f"dep:{getattr(dependency, '__module__', None) or 'builtins'}.{name}"
        self.keys = KeyBuilder(dependency)
        self.produces_session: bool | None = None

    def resolve_cache(self) -> YokedCache:
        return self.cache if self.cache is not None else get_default_cache()

    def key(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str | None, CacheKeyError | None]:
        """The value key, or the reason there is none (raised later unless a session comes out)."""
        if self.produces_session:
            return None, None
        try:
            return f"{self.segment}:{self.keys.digest_call(args, kwargs)}", None
        except CacheKeyError as exc:
            if self.produces_session is False:
                raise
            return None, exc

    def settings(self, cache: YokedCache) -> tuple[tuple[str, ...], float | None]:
        """Tags and TTL of a stored value (table settings apply for a specific ``table_name``)."""
        if not self.table_name:
            return self.tags, self.ttl
        table = effective_table_settings(cache.config, [self.table_name])
        ttl = self.ttl if self.ttl is not None else table.ttl
        return normalize_tags([*self.tags, *table.tags]), ttl

    def classify(self, value: Any, key: str | None, key_error: CacheKeyError | None) -> bool:
        """Remember what the dependency produces; True for a session. A value without key raises."""
        self.produces_session = _is_session(value)
        if not self.produces_session and key is None:
            assert key_error is not None
            raise key_error
        return self.produces_session


def _forward(gen: Generator[Any, Any, Any], first: Any) -> Generator[Any, Any, Any]:
    """Yield ``first``, then behave as the rest of ``gen``: sends, throws, close are passed on (PEP 380)."""
    to_yield = first
    while True:
        try:
            sent = yield to_yield
        except GeneratorExit:
            gen.close()
            raise
        except BaseException as exc:
            try:
                to_yield = gen.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                to_yield = gen.send(sent)
            except StopIteration as stop:
                return stop.value


def _closing(gen: Generator[Any, Any, Any], error: BaseException) -> BaseException:
    gen.close()
    return error


def _vouched(tokens: list[str] | None, args: Any, kwargs: Any, since_ns: int) -> list[str] | None:
    """``tokens``, or ``None`` (do not store) when the arguments carry database state loaded before
    ``since_ns``: a session's identity map answers ``get`` from memory, so the value may predate them."""
    return None if inputs_predate((*args, *kwargs.values()), since_ns) else tokens


def _enclosing_depends_on(cache: YokedCache, key: str, tags: Sequence[str], tokens: list[str] | None) -> None:
    """A computation this dependency ran inside (an HTTP-cached response) depends on the value's own tags
    too; their tokens were captured before the value was computed."""
    outer = current_frame()
    if outer is not None and tags:
        own = ReadFrame(cache, key)
        own.add(tags, tokens)
        outer.absorb(own)


def _sync_generator(spec: _Spec) -> Callable[..., Generator[Any, Any, Any]]:
    def wrapper(*args: Any, **kwargs: Any) -> Generator[Any, Any, Any]:
        cache = spec.resolve_cache()
        key, key_error = spec.key(args, kwargs)
        tags, ttl = spec.settings(cache)
        tokens: list[str] | None = []
        if key is not None:
            value, tokens = cache.get_or_capture_sync(key, tags, MISSING)  # a miss: tokens, same request
            if value is not MISSING:
                yield value
                return
        since = time.monotonic_ns()
        with reads_of(cache, key or "_") as reads:  # tables it reads become tags of its value
            gen = spec.dependency(*args, **kwargs)
            first = next(gen)
        try:
            is_session = spec.classify(first, key, key_error)
        except CacheKeyError as exc:
            raise _closing(gen, exc) from None
        if is_session:
            use = _SessionUse(first, spec, cache)
            try:
                return (yield from _forward(gen, first))
            finally:
                use.release()
        assert key is not None
        all_tags, all_tokens = reads.merge_into(tags, _vouched(tokens, args, kwargs, since))
        cache.store_computed_sync(key, first, all_tokens, all_tags, ttl=ttl)
        _enclosing_depends_on(cache, key, tags, tokens)
        return (yield from _forward(gen, first))

    return wrapper


def _async_generator(spec: _Spec) -> Callable[..., AsyncGenerator[Any, Any]]:
    async def wrapper(*args: Any, **kwargs: Any) -> AsyncGenerator[Any, Any]:
        cache = spec.resolve_cache()
        key, key_error = spec.key(args, kwargs)
        tags, ttl = spec.settings(cache)
        tokens: list[str] | None = []
        if key is not None:
            value, tokens = await cache.get_or_capture(key, tags, MISSING)
            if value is not MISSING:
                yield value
                return
        since = time.monotonic_ns()
        with reads_of(cache, key or "_") as reads:
            agen = spec.dependency(*args, **kwargs)
            first = await agen.__anext__()
        try:
            is_session = spec.classify(first, key, key_error)
        except CacheKeyError as exc:
            await agen.aclose()
            raise exc from None
        use = _SessionUse(first, spec, cache) if is_session else None
        if use is None:
            assert key is not None
            all_tags, all_tokens = reads.merge_into(tags, _vouched(tokens, args, kwargs, since))
            await cache.store_computed(key, first, all_tokens, all_tags, ttl=ttl)
            _enclosing_depends_on(cache, key, tags, tokens)
        try:
            to_yield = first
            while True:  # the async twin of _forward: async generators cannot ``yield from``
                try:
                    sent = yield to_yield
                except GeneratorExit:
                    await agen.aclose()
                    raise
                except BaseException as exc:
                    try:
                        to_yield = await agen.athrow(exc)
                    except StopAsyncIteration:
                        return
                else:
                    try:
                        to_yield = await agen.asend(sent)
                    except StopAsyncIteration:
                        return
        finally:
            if use is not None:
                use.release()

    return wrapper


def _sync_function(spec: _Spec) -> Callable[..., Any]:
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache = spec.resolve_cache()
        key, key_error = spec.key(args, kwargs)
        tags, ttl = spec.settings(cache)
        tokens: list[str] | None = []
        if key is not None:
            value, tokens = cache.get_or_capture_sync(key, tags, MISSING)
            if value is not MISSING:
                return value
        since = time.monotonic_ns()
        with reads_of(cache, key or "_") as reads:
            value = spec.dependency(*args, **kwargs)
        if spec.classify(value, key, key_error):
            _SessionUse(value, spec, cache)  # a returned session is the caller's: caching stays on
            return value
        assert key is not None
        all_tags, all_tokens = reads.merge_into(tags, _vouched(tokens, args, kwargs, since))
        cache.store_computed_sync(key, value, all_tokens, all_tags, ttl=ttl)
        _enclosing_depends_on(cache, key, tags, tokens)
        return value

    return wrapper


def _async_function(spec: _Spec) -> Callable[..., Any]:
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        cache = spec.resolve_cache()
        key, key_error = spec.key(args, kwargs)
        tags, ttl = spec.settings(cache)
        tokens: list[str] | None = []
        if key is not None:
            value, tokens = await cache.get_or_capture(key, tags, MISSING)
            if value is not MISSING:
                return value
        since = time.monotonic_ns()
        with reads_of(cache, key or "_") as reads:
            value = await spec.dependency(*args, **kwargs)
        if spec.classify(value, key, key_error):
            _SessionUse(value, spec, cache)
            return value
        assert key is not None
        all_tags, all_tokens = reads.merge_into(tags, _vouched(tokens, args, kwargs, since))
        await cache.store_computed(key, value, all_tokens, all_tags, ttl=ttl)
        _enclosing_depends_on(cache, key, tags, tokens)
        return value

    return wrapper


def _wrapper_of_the_same_kind(spec: _Spec) -> Callable[..., Any]:
    dependency = spec.dependency
    if inspect.isasyncgenfunction(dependency):
        return _async_generator(spec)
    if inspect.isgeneratorfunction(dependency):
        return _sync_generator(spec)
    if inspect.iscoroutinefunction(dependency):
        return _async_function(spec)
    return _sync_function(spec)


def cached_dependency(
    dependency: Callable[..., Any],
    *,
    cache: YokedCache | None = None,
    ttl: float | None = None,
    table_name: str | None = None,
    tags: str | Iterable[str] | None = None,
) -> Callable[..., Any]:
    """Wrap a dependency so its value is cached, or its SQLAlchemy session caches queries (see module doc)."""
    if ttl is not None and ttl < 0:
        raise ValueError(f"ttl must be >= 0, got {ttl!r}")
    if not callable(dependency):
        raise TypeError(f"cached_dependency needs a callable, got {dependency!r}")
    wrapper = _wrapper_of_the_same_kind(_Spec(dependency, cache, ttl, table_name, tags))
    functools.update_wrapper(wrapper, dependency)
    wrapper.__signature__ = inspect.signature(dependency)  # type: ignore[attr-defined]
    return wrapper


__all__ = ["cached_dependency"]
