"""OpenTelemetry: one span ``cache.<operation>`` per backend call, plus counters and a duration histogram.

The cache reports a backend call once it has finished (``observe(operation, backend, seconds)``), so
spans are created after the fact with explicit start and end times, under the context that was current
when the call ran. A ``get`` learns whether it hit only from the ``record_get`` that follows it
synchronously, so its span is held until then and carries ``cache.hit`` (or an error status when
``record_error`` follows); a ``get`` followed by neither (``exists``) is ended by the next event of its
thread, with its own times. Spans carry ``cache.backend`` (and
``cache.operation``), never the key: the hooks do not see keys, and keys may hold personal data.

Without ``opentelemetry`` installed the collector is a silent no-op (tracing is optional by nature).
"""

from __future__ import annotations

import threading
import time
from typing import Any

from .core import Collector, logger


class OpenTelemetryCollector(Collector):
    """Spans and metrics through OpenTelemetry; ``None`` providers mean the global ones."""

    never_raises = True

    def __init__(self, tracer_provider: Any = None, meter_provider: Any = None) -> None:
        self._tracer: Any = None
        self._pending = threading.local()
        try:
            from opentelemetry import context, metrics, trace
        except ImportError:
            logger.debug("opentelemetry is not installed: OpenTelemetryCollector records nothing")
            return
        from .. import __version__

        self._context = context
        self._client_kind = trace.SpanKind.CLIENT
        self._error_status = trace.Status(trace.StatusCode.ERROR, "cache backend call failed")
        self._tracer = trace.get_tracer("yokedcache", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("yokedcache", __version__, meter_provider=meter_provider)
        counter = meter.create_counter
        self._gets = counter("yokedcache.cache.gets", description="Cache lookups")
        self._hits = counter("yokedcache.cache.hits", description="Lookups that hit")
        self._misses = counter("yokedcache.cache.misses", description="Lookups that missed")
        self._sets = counter("yokedcache.cache.sets", description="Entries written")
        self._deletes = counter("yokedcache.cache.deletes", description="Entries removed")
        self._invalidations = counter("yokedcache.cache.invalidations", description="Tags invalidated")
        self._errors = counter("yokedcache.cache.errors", description="Failed backend calls")
        self._evictions = counter("yokedcache.cache.evictions", description="Entries evicted")
        self._duration = meter.create_histogram(
            "yokedcache.cache.operation_duration", unit="s", description="Duration of backend calls"
        )
        create_gauge = getattr(meter, "create_gauge", None)  # opentelemetry-api >= 1.23
        self._gauges: dict[str, Any] = {}
        if create_gauge is not None:
            for name in ("hit_rate", "size_bytes", "keys_count", "circuit_breaker_state"):
                self._gauges[name] = create_gauge(f"yokedcache.cache.{name}")

    @property
    def enabled(self) -> bool:
        return self._tracer is not None

    # --- spans ---------------------------------------------------------------------------------------
    def _emit(
        self, pending: tuple[Any, ...], extra: dict[str, Any] | None = None, failed: bool = False
    ) -> None:
        operation, backend_kind, start_ns, end_ns, parent = pending
        attributes: dict[str, Any] = {"cache.operation": operation, "cache.backend": backend_kind}
        if extra:
            attributes.update(extra)
        span = self._tracer.start_span(
            f"cache.{operation}",
            context=parent,
            kind=self._client_kind,
            attributes=attributes,
            start_time=start_ns,
        )
        if failed:
            span.set_status(self._error_status)
        span.end(end_time=end_ns)

    def _flush(self, extra: dict[str, Any] | None = None, failed: bool = False) -> None:
        pending = getattr(self._pending, "span", None)
        if pending is not None:
            self._pending.span = None
            self._emit(pending, extra, failed)

    def flush(self) -> None:
        """End this thread's held ``get`` span now (normally the next event does)."""
        if self._tracer is not None:
            try:
                self._flush()
            except Exception as exc:
                logger.debug("OpenTelemetry span failed: %s", exc)

    # --- hooks ---------------------------------------------------------------------------------------
    def observe(self, operation: str, backend_kind: str, seconds: float) -> None:
        if self._tracer is None:
            return
        try:
            self._flush()
            end_ns = time.time_ns()
            pending = (
                operation,
                backend_kind,
                end_ns - int(seconds * 1e9),
                end_ns,
                self._context.get_current(),
            )
            if operation == "get":
                self._pending.span = pending
            else:
                self._emit(pending)
            self._duration.record(seconds, {"operation": operation, "backend": backend_kind})
        except Exception as exc:
            logger.debug("OpenTelemetry observe failed: %s", exc)

    def record_get(self, hit: bool) -> None:
        if self._tracer is None:
            return
        try:
            self._flush({"cache.hit": hit})
            self._gets.add(1)
            (self._hits if hit else self._misses).add(1)
        except Exception as exc:
            logger.debug("OpenTelemetry record_get failed: %s", exc)

    def _add(self, counter_name: str, n: int, failed: bool = False) -> None:
        if self._tracer is None:
            return
        try:
            self._flush(failed=failed)
            if n:
                getattr(self, counter_name).add(n)
        except Exception as exc:
            logger.debug("OpenTelemetry counter failed: %s", exc)

    def record_set(self, n: int) -> None:
        self._add("_sets", n)

    def record_delete(self, n: int) -> None:
        self._add("_deletes", n)

    def record_invalidation(self, n: int) -> None:
        self._add("_invalidations", n)

    def record_error(self) -> None:
        self._add("_errors", 1, failed=True)

    def record_eviction(self, n: int) -> None:
        self._add("_evictions", n)

    def record_stats(self, snapshot: Any, breaker_state_number: int) -> None:
        if self._tracer is None or not self._gauges:
            return
        try:
            values = {
                "hit_rate": float(snapshot.hit_rate),
                "size_bytes": float(snapshot.memory_usage_mb) * 1024 * 1024,
                "keys_count": int(snapshot.key_count),
                "circuit_breaker_state": int(breaker_state_number),
            }
            for name, value in values.items():
                self._gauges[name].set(value)
        except Exception as exc:
            logger.debug("OpenTelemetry record_stats failed: %s", exc)
