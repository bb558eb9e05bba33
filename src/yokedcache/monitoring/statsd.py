"""StatsD exporter: one UDP datagram per event, fire-and-forget, through the ``statsd`` package.

Lines are ``<prefix>.<metric>:<value>|<type>[|@<rate>][|#<tags>]``: counters ``gets``, ``hits``, ``misses``,
``sets``, ``deletes``, ``invalidations``, ``errors``, ``evictions`` (``c``); ``operation_duration.<op>`` in
**seconds** as a histogram (``h``, per API.md; the ``statsd`` package's ``timing()`` would send
milliseconds as ``ms``, so lines are formatted here and only its socket is used); gauges ``hit_rate``,
``size_bytes``, ``keys_count``, ``circuit_breaker_state`` (``g``, on ``get_stats()``). With
``use_tags=True`` (DogStatsD) lookups are one ``gets`` line tagged ``#result:hit|miss`` and durations
one ``operation_duration`` line tagged ``#operation:<op>,backend:<kind>``.

A datagram is a system call (~2-5 µs), more than a memory hit costs; use ``sample_rate`` on busy caches.
"""

from __future__ import annotations

import random
import re
from typing import Any

from .core import Collector, FunctionNames, logger, require

_UNSAFE = re.compile(r"[^A-Za-z0-9_.\-]")


def _clean(name: str) -> str:
    """A metric-name or tag-safe rendering (no ``:|@#,`` or whitespace)."""
    return _UNSAFE.sub("_", name)


class StatsDCollector(Collector):
    """Sends the cache's metrics to a StatsD (or DogStatsD, ``use_tags=True``) server over UDP.

    The socket is opened (and ``host`` resolved) on the cache's first operation; if that fails the error
    is logged once and the collector stays silent.
    """

    never_raises = True

    def __init__(
        self,
        host: str = "localhost",
        port: int = 8125,
        prefix: str = "yokedcache.cache",
        sample_rate: float = 1.0,
        use_tags: bool = False,
    ) -> None:
        require("statsd", "StatsDCollector")
        if not 0 < sample_rate <= 1:
            raise ValueError(f"sample_rate must be in (0, 1], got {sample_rate!r}")
        self.host = host
        self.port = port
        self.prefix = prefix.rstrip(".")
        self.sample_rate = sample_rate
        self.use_tags = use_tags
        self._rate = "" if sample_rate >= 1 else f"|@{sample_rate}"
        self._client: Any = None
        self._function_name = FunctionNames()

    def start(self) -> None:
        if self._client is not None:
            return
        statsd = require("statsd", "StatsDCollector")
        try:
            self._client = statsd.StatsClient(self.host, self.port, prefix=None)
        except OSError as exc:
            logger.error("StatsD at %s:%s unusable, not sending metrics: %s", self.host, self.port, exc)

    def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()

    # --- sending -------------------------------------------------------------------------------------
    def _send(self, *lines: str) -> None:
        """One datagram with ``lines`` (already prefixed); transport errors are dropped (UDP)."""
        client = self._client
        if client is None:
            return
        try:
            client._send("\n".join(lines))  # the package's socket send; it swallows socket errors
        except Exception as exc:
            logger.debug("StatsD send failed: %s", exc)

    def _sampled(self) -> bool:
        return self.sample_rate >= 1 or random.random() < self.sample_rate

    def _count(self, metric: str, n: int) -> None:
        if n and self._sampled():
            self._send(f"{self.prefix}.{metric}:{n}|c{self._rate}")

    # --- hooks ---------------------------------------------------------------------------------------
    def record_get(self, hit: bool) -> None:
        if not self._sampled():
            return
        p, rate = self.prefix, self._rate
        if self.use_tags:
            self._send(f"{p}.gets:1|c{rate}|#result:{'hit' if hit else 'miss'}")
        else:
            self._send(f"{p}.gets:1|c{rate}", f"{p}.{'hits' if hit else 'misses'}:1|c{rate}")

    def record_set(self, n: int) -> None:
        self._count("sets", n)

    def record_delete(self, n: int) -> None:
        self._count("deletes", n)

    def record_invalidation(self, n: int) -> None:
        self._count("invalidations", n)

    def record_error(self) -> None:
        self._count("errors", 1)

    def record_eviction(self, n: int) -> None:
        self._count("evictions", n)

    def observe(self, operation: str, backend_kind: str, seconds: float) -> None:
        if not self._sampled():
            return
        op = _clean(operation)
        if self.use_tags:
            tags = f"|#operation:{op},backend:{_clean(backend_kind)}"
            self._send(f"{self.prefix}.operation_duration:{seconds:.6f}|h{self._rate}{tags}")
        else:
            self._send(f"{self.prefix}.operation_duration.{op}:{seconds:.6f}|h{self._rate}")

    def record_function(self, name: str, hit: bool, seconds: float) -> None:
        if not self._sampled():
            return
        fn, result, rate = _clean(self._function_name(name)), ("hit" if hit else "miss"), self._rate
        if self.use_tags:
            tags = f"|#function:{fn},result:{result}"
            self._send(
                f"{self.prefix}.function_calls:1|c{rate}{tags}",
                f"{self.prefix}.function_duration:{seconds:.6f}|h{rate}{tags}",
            )
        else:
            base = f"{self.prefix}.function.{fn}"
            self._send(f"{base}.{result}s:1|c{rate}", f"{base}.duration:{seconds:.6f}|h{rate}")

    def record_stats(self, snapshot: Any, breaker_state_number: int) -> None:
        p = self.prefix
        try:
            lines = (
                f"{p}.hit_rate:{float(snapshot.hit_rate):.6f}|g",
                f"{p}.size_bytes:{int(float(snapshot.memory_usage_mb) * 1024 * 1024)}|g",
                f"{p}.keys_count:{int(snapshot.key_count)}|g",
                f"{p}.circuit_breaker_state:{int(breaker_state_number)}|g",
            )
        except Exception as exc:
            logger.debug("ignoring stats snapshot %r: %s", snapshot, exc)
            return
        self._send(*lines)
