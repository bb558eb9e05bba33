"""Metrics for yokedcache: Prometheus, StatsD and OpenTelemetry collectors behind one ``CacheMetrics``.

```python
from yokedcache import YokedCache
from yokedcache.monitoring import CacheMetrics, PrometheusCollector

cache = YokedCache(metrics=CacheMetrics([PrometheusCollector(namespace="myapp", port=9100)]))
```

``YokedCache(enable_metrics=True)`` without ``metrics=`` builds :func:`metrics_from_config`. Importing this
module imports no optional package; a collector whose package is missing raises ``ImportError`` naming the
``observability`` extra (except OpenTelemetry, which then records nothing).
"""

from __future__ import annotations

from typing import Any

from .core import HOOKS, CacheMetrics, Collector
from .fleet import fleet_stats, function_counters, shared_stats
from .otel import OpenTelemetryCollector
from .prometheus import PrometheusCollector, metrics_asgi_app
from .statsd import StatsDCollector


def metrics_from_config(config: Any) -> CacheMetrics:
    """``PrometheusCollector(port=config.prometheus_port)``, plus a ``StatsDCollector`` if ``statsd_host``."""
    collectors: list[Any] = [PrometheusCollector(port=config.prometheus_port)]
    if config.statsd_host:
        collectors.append(StatsDCollector(config.statsd_host, config.statsd_port))
    return CacheMetrics(collectors)


__all__ = [
    "HOOKS",
    "CacheMetrics",
    "Collector",
    "OpenTelemetryCollector",
    "PrometheusCollector",
    "StatsDCollector",
    "fleet_stats",
    "function_counters",
    "metrics_asgi_app",
    "metrics_from_config",
    "shared_stats",
]
