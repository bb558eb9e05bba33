"""``CacheMetrics``: the one object a cache reports to, fanning events out to collectors.

The cache calls these hooks on its hot path (a memory hit is a few microseconds), so their cost matters
more than their elegance:

* hooks are plain attributes bound once, when the first event arrives, to the cheapest callable that is
  still correct: nothing for a hook no collector implements, the collector's own method when a single
  collector that promises never to raise implements it (no loop, no extra frame), else a loop that
  catches each collector's errors;
* collectors with a ``start()`` method (an HTTP endpoint, a UDP socket) are started on that first event,
  so building a cache does no I/O.

A collector's exception is logged once (per collector) and never reaches the cache.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Iterable
from typing import Any

logger = logging.getLogger("yokedcache.monitoring")

#: Every hook the cache (and the integrations) call, with its arguments.
HOOKS: tuple[str, ...] = (
    "record_get",  # (hit: bool) once per lookup
    "record_set",  # (n: int) entries written
    "record_delete",  # (n: int) entries removed
    "record_invalidation",  # (n: int) tags invalidated
    "record_error",  # () a backend call failed after retries
    "record_eviction",  # (n: int) entries evicted by a bounded backend
    "record_function",  # (name: str, hit: bool, seconds: float) one @cached call
    "observe",  # (operation: str, backend_kind: str, seconds: float) one backend call
    "record_stats",  # (snapshot: CacheStats, breaker_state_number: int) from get_stats()
)

EXTRA = "observability"


def require(module: str, feature: str) -> Any:
    """Import an optional dependency, or raise ImportError naming the extra that provides it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ImportError(
            f"{feature} needs the '{EXTRA}' extra ({module} is not installed): "
            f"pip install 'yokedcache[{EXTRA}]'"
        ) from None


class Collector:
    """Base class of metric collectors: every hook is a no-op; override the ones you need.

    Hooks a subclass leaves alone cost nothing (the cache never calls them). Set ``never_raises = True``
    only if every overridden hook catches its own errors: a lone such collector is called directly.
    """

    never_raises = False

    def start(self) -> None:
        """Open sockets or endpoints; called once, on the cache's first recorded event."""

    def record_get(self, hit: bool) -> None: ...

    def record_set(self, n: int) -> None: ...

    def record_delete(self, n: int) -> None: ...

    def record_invalidation(self, n: int) -> None: ...

    def record_error(self) -> None: ...

    def record_eviction(self, n: int) -> None: ...

    def record_function(self, name: str, hit: bool, seconds: float) -> None: ...

    def observe(self, operation: str, backend_kind: str, seconds: float) -> None: ...

    def record_stats(self, snapshot: Any, breaker_state_number: int) -> None: ...


def _noop(*args: Any) -> None:
    return None


class CacheMetrics:
    """Fans the cache's metric hooks out to ``collectors``; see the module docstring.

    ``CacheMetrics([PrometheusCollector(), StatsDCollector()])``. Any object with some of the hook methods
    (:data:`HOOKS`) is accepted as a collector; :class:`Collector` is a convenient base.
    """

    record_get: Callable[[bool], None]
    record_set: Callable[[int], None]
    record_delete: Callable[[int], None]
    record_invalidation: Callable[[int], None]
    record_error: Callable[[], None]
    record_eviction: Callable[[int], None]
    record_function: Callable[[str, bool, float], None]
    observe: Callable[[str, str, float], None]
    record_stats: Callable[[Any, int], None]

    def __init__(self, collectors: Iterable[Any] = ()) -> None:
        self.collectors: list[Any] = list(collectors)
        self.collector_errors = 0
        self._reported: set[int] = set()
        self._lock = threading.Lock()
        self._started = False
        for name in HOOKS:
            setattr(self, name, self._first_event(name))

    def _first_event(self, name: str) -> Callable[..., None]:
        def first(*args: Any) -> None:
            self.start()
            getattr(self, name)(*args)

        return first

    def start(self) -> None:
        """Start the collectors and bind the hooks' fast paths (done by the first event; idempotent)."""
        with self._lock:
            if self._started:
                return
            for collector in self.collectors:
                start = getattr(collector, "start", None)
                if start is not None:
                    self._guarded(collector, start)()
            for name in HOOKS:
                setattr(self, name, self._bind(name))
            self._started = True

    def _bind(self, name: str) -> Callable[..., None]:
        targets: list[tuple[Any, Callable[..., None]]] = []
        for collector in self.collectors:
            hook = getattr(collector, name, None)
            if hook is None or getattr(hook, "__func__", None) is getattr(Collector, name):
                continue  # not implemented (Collector's no-op): never called
            targets.append((collector, hook))
        if not targets:
            return _noop
        if len(targets) == 1:
            collector, hook = targets[0]
            return hook if getattr(collector, "never_raises", False) else self._guarded(collector, hook)
        pairs = tuple(targets)

        def fan_out(*args: Any) -> None:
            for collector, hook in pairs:
                try:
                    hook(*args)
                except Exception:
                    self._failed(collector)

        return fan_out

    def _guarded(self, collector: Any, hook: Callable[..., None]) -> Callable[..., None]:
        def call(*args: Any) -> None:
            try:
                hook(*args)
            except Exception:
                self._failed(collector)

        return call

    def _failed(self, collector: Any) -> None:
        self.collector_errors += 1
        if id(collector) in self._reported:
            return
        self._reported.add(id(collector))
        logger.error(
            "metrics collector %s failed (reported once; caching is unaffected)",
            type(collector).__name__,
            exc_info=True,
        )

    def __repr__(self) -> str:
        names = ", ".join(type(c).__name__ for c in self.collectors)
        return f"CacheMetrics([{names}])"


class FunctionNames:
    """Bounds a label (function names): the first ``limit`` distinct names, then ``"other"``."""

    __slots__ = ("_names", "limit")

    def __init__(self, limit: int = 100) -> None:
        self.limit = limit
        self._names: set[str] = set()

    def __call__(self, name: str) -> str:
        if name in self._names:
            return name
        if len(self._names) >= self.limit:
            return "other"
        self._names.add(name)
        return name
