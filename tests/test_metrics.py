"""Metrics: CacheMetrics fan-out and isolation, Prometheus (scraped over HTTP), StatsD, OpenTelemetry."""

from __future__ import annotations

import logging
import socket
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from yokedcache import YokedCache, cached
from yokedcache.monitoring import (
    CacheMetrics,
    Collector,
    OpenTelemetryCollector,
    PrometheusCollector,
    StatsDCollector,
    metrics_asgi_app,
    metrics_from_config,
)

prometheus_client = pytest.importorskip("prometheus_client")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """``{(sample name, sorted labels): value}`` from ``http://127.0.0.1:<port>/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return parse(text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


class Recorder(Collector):
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []
        self.started = 0

    def start(self) -> None:
        self.started += 1

    def record_get(self, hit: bool) -> None:
        self.events.append(("get", hit))

    def record_set(self, n: int) -> None:
        self.events.append(("set", n))

    def observe(self, operation: str, backend_kind: str, seconds: float) -> None:
        self.events.append(("observe", operation, backend_kind))


class Exploding(Collector):
    def record_get(self, hit: bool) -> None:
        raise RuntimeError("collector bug")

    def observe(self, operation: str, backend_kind: str, seconds: float) -> None:
        raise RuntimeError("collector bug")


@pytest.fixture
def registry() -> Any:
    return prometheus_client.CollectorRegistry()


@pytest.fixture
def namespace(prefix: str) -> str:
    return f"ns_{prefix}"


# --- CacheMetrics -------------------------------------------------------------------------------------
def test_fan_out_reaches_every_collector_and_starts_them_on_first_event(prefix: str) -> None:
    first, second = Recorder(), Recorder()
    metrics = CacheMetrics([first, second])
    cache = YokedCache(key_prefix=prefix, metrics=metrics)
    assert first.started == 0  # building a cache does no I/O
    cache.set_sync("k", 1)
    assert cache.get_sync("k") == 1
    assert cache.get_sync("missing") is None
    for recorder in (first, second):
        assert recorder.started == 1
        assert ("set", 1) in recorder.events
        assert [e for e in recorder.events if e[0] == "get"] == [("get", True), ("get", False)]


def test_a_failing_collector_is_logged_once_and_never_affects_caching(
    prefix: str, caplog: pytest.LogCaptureFixture
) -> None:
    healthy = Recorder()
    metrics = CacheMetrics([Exploding(), healthy])
    cache = YokedCache(key_prefix=prefix, metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="yokedcache.monitoring"):
        cache.set_sync("k", "v")
        for _ in range(5):
            assert cache.get_sync("k") == "v"
    reports = [r for r in caplog.records if "Exploding" in r.getMessage()]
    assert len(reports) == 1
    assert metrics.collector_errors >= 5  # every failure counted, one logged
    assert len([e for e in healthy.events if e[0] == "get"]) == 5  # the others still see everything


def test_hooks_no_collector_implements_are_harmless() -> None:
    metrics = CacheMetrics([Collector()])
    metrics.record_get(True)
    metrics.record_function("f", True, 0.1)
    metrics.record_eviction(3)
    metrics.record_stats(object(), 0)
    assert metrics.collector_errors == 0


async def test_async_operations_and_backend_calls_are_recorded(redis_url: str, prefix: str) -> None:
    recorder = Recorder()
    cache = YokedCache(redis_url=redis_url, key_prefix=prefix, metrics=CacheMetrics([recorder]))
    try:
        await cache.set("k", 1)
        assert await cache.get("k") == 1
    finally:
        await cache.flush_all()
        await cache.disconnect()
    assert ("get", True) in recorder.events and ("set", 1) in recorder.events
    assert ("observe", "set", "redis") in recorder.events
    assert ("observe", "get", "redis") in recorder.events


# --- Prometheus ---------------------------------------------------------------------------------------
def test_prometheus_counters_and_gauges_over_http(prefix: str, registry: Any, namespace: str) -> None:
    port = free_port()
    collector = PrometheusCollector(namespace=namespace, port=port, registry=registry)
    cache = YokedCache(key_prefix=prefix, metrics=CacheMetrics([collector]))
    cache.set_sync("user:1", {"name": "a"}, tags=["users"])
    cache.set_sync("user:2", {"name": "b"})
    cache.set_sync("blob", "x" * 5000)  # memory_usage_mb has 4 decimals: make size_bytes visible
    assert cache.get_sync("user:1") == {"name": "a"}
    assert cache.get_sync("user:1") == {"name": "a"}
    assert cache.get_sync("user:404") is None
    assert cache.delete_sync("user:2")
    cache.invalidate_tags_sync(["users"])
    cache.get_stats_sync()

    samples = scrape(port)
    metric = f"{namespace}_cache_"
    assert samples[(metric + "gets_total", ())] == 3
    assert samples[(metric + "hits_total", ())] == 2
    assert samples[(metric + "misses_total", ())] == 1
    assert samples[(metric + "sets_total", ())] == 3
    assert samples[(metric + "deletes_total", ())] == 1
    assert samples[(metric + "invalidations_total", ())] == 1
    assert samples[(metric + "errors_total", ())] == 0
    assert samples[(metric + "evictions_total", ())] == 0
    assert samples[(metric + "hit_rate", ())] == pytest.approx(2 / 3)
    assert samples[(metric + "keys_count", ())] == 2
    assert samples[(metric + "size_bytes", ())] > 0
    assert samples[(metric + "circuit_breaker_state", ())] == 0


def test_prometheus_histogram_and_labels_never_carry_keys(
    redis_url: str, prefix: str, registry: Any, namespace: str
) -> None:
    collector = PrometheusCollector(namespace=namespace, registry=registry, labels={"service": "api"})
    cache = YokedCache(redis_url=redis_url, key_prefix=prefix, metrics=CacheMetrics([collector]))
    try:
        cache.set_sync("secret-key-name", 1, tags=["secret-tag"])
        for _ in range(3):
            cache.get_sync("secret-key-name")
    finally:
        cache.flush_all_sync()
        cache.disconnect_sync()
    text = prometheus_client.generate_latest(registry).decode()
    assert "secret-key-name" not in text and "secret-tag" not in text
    samples = parse(text)
    labels = (("backend", "redis"), ("operation", "get"), ("service", "api"))
    assert samples[(f"{namespace}_cache_operation_duration_seconds_count", labels)] == 3
    assert samples[(f"{namespace}_cache_operation_duration_seconds_sum", labels)] > 0
    inf_bucket = (("backend", "redis"), ("le", "+Inf"), ("operation", "get"), ("service", "api"))
    assert samples[(f"{namespace}_cache_operation_duration_seconds_bucket", inf_bucket)] == 3
    assert samples[(f"{namespace}_cache_hits_total", (("service", "api"),))] == 3


def test_same_namespace_collectors_share_series(prefix: str, registry: Any, namespace: str) -> None:
    caches = [
        YokedCache(
            key_prefix=f"{prefix}{i}",
            metrics=CacheMetrics([PrometheusCollector(namespace=namespace, registry=registry)]),
        )
        for i in range(2)
    ]
    for cache in caches:
        cache.set_sync("k", 1)
        cache.get_sync("k")
    samples = parse(prometheus_client.generate_latest(registry).decode())
    assert samples[(f"{namespace}_cache_hits_total", ())] == 2
    assert samples[(f"{namespace}_cache_sets_total", ())] == 2


def test_constant_labels_are_validated(registry: Any, namespace: str) -> None:
    with pytest.raises(ValueError, match="operation"):
        PrometheusCollector(namespace=namespace, registry=registry, labels={"operation": "x"})
    PrometheusCollector(namespace=namespace, registry=registry, labels={"service": "a"})
    with pytest.raises(ValueError, match="same label names"):
        PrometheusCollector(namespace=namespace, registry=registry, labels={"region": "eu"})


def test_prometheus_function_and_eviction_metrics_are_bounded(registry: Any, namespace: str) -> None:
    metrics = CacheMetrics([PrometheusCollector(namespace=namespace, registry=registry)])
    metrics.record_function("app.users.get_user", True, 0.001)
    metrics.record_function("app.users.get_user", False, 0.05)
    metrics.record_eviction(4)
    for i in range(150):
        metrics.record_function(f"app.generated.f{i}", True, 0.001)
    samples = parse(prometheus_client.generate_latest(registry).decode())
    calls = f"{namespace}_cache_function_calls_total"
    assert samples[(calls, (("function", "app.users.get_user"), ("result", "hit")))] == 1
    assert samples[(calls, (("function", "app.users.get_user"), ("result", "miss")))] == 1
    assert samples[(f"{namespace}_cache_evictions_total", ())] == 4
    functions = {dict(labels)["function"] for name, labels in samples if name == calls}
    assert len(functions) == 101 and "other" in functions  # 100 names, then "other"


def test_cached_functions_feed_the_metrics(prefix: str, registry: Any, namespace: str) -> None:
    cache = YokedCache(
        key_prefix=prefix,
        metrics=CacheMetrics([PrometheusCollector(namespace=namespace, registry=registry)]),
    )

    @cached(cache=cache)
    def double(x: int) -> int:
        return x * 2

    assert [double(1), double(1), double(2)] == [2, 2, 4]
    samples = parse(prometheus_client.generate_latest(registry).decode())
    assert samples[(f"{namespace}_cache_hits_total", ())] == 1
    assert samples[(f"{namespace}_cache_misses_total", ())] == 2


def test_a_busy_port_is_logged_and_caching_goes_on(
    prefix: str, registry: Any, namespace: str, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as busy:
        busy.bind(("", 0))
        busy.listen()
        port = busy.getsockname()[1]
        collector = PrometheusCollector(namespace=namespace, port=port, registry=registry)
        cache = YokedCache(key_prefix=prefix, metrics=CacheMetrics([collector]))
        with caplog.at_level(logging.ERROR, logger="yokedcache.monitoring"):
            assert cache.set_sync("k", 1)
            assert cache.get_sync("k") == 1
    assert any(str(port) in r.getMessage() for r in caplog.records)


async def test_metrics_asgi_app(prefix: str, registry: Any, namespace: str) -> None:
    httpx = pytest.importorskip("httpx")
    cache = YokedCache(
        key_prefix=prefix,
        metrics=CacheMetrics([PrometheusCollector(namespace=namespace, registry=registry)]),
    )
    await cache.get("nothing")
    transport = httpx.ASGITransport(app=metrics_asgi_app(registry))
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        response = await client.get("/")
    assert response.status_code == 200
    assert parse(response.text)[(f"{namespace}_cache_misses_total", ())] == 1


def test_enable_metrics_builds_collectors_from_config(prefix: str) -> None:
    port = free_port()
    cache = YokedCache(
        key_prefix=prefix, enable_metrics=True, prometheus_port=port, statsd_host="127.0.0.1", statsd_port=9
    )
    assert isinstance(cache.metrics, CacheMetrics)
    kinds = [type(c) for c in cache.metrics.collectors]
    assert kinds == [PrometheusCollector, StatsDCollector]
    cache.set_sync("k", 1)
    assert cache.get_sync("k") == 1
    assert scrape(port)[("yokedcache_cache_hits_total", ())] >= 1
    only_prometheus = metrics_from_config(cache.config.replace(statsd_host=None))
    assert [type(c) for c in only_prometheus.collectors] == [PrometheusCollector]


def test_missing_extra_names_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    with pytest.raises(ImportError, match=r"yokedcache\[observability\]"):
        PrometheusCollector()
    monkeypatch.setitem(sys.modules, "statsd", None)
    with pytest.raises(ImportError, match=r"yokedcache\[observability\]"):
        StatsDCollector()


# --- StatsD -------------------------------------------------------------------------------------------
@pytest.fixture
def udp_listener() -> Iterator[socket.socket]:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    sock.settimeout(2)
    yield sock
    sock.close()


def received_lines(sock: socket.socket, until: str) -> list[str]:
    lines: list[str] = []
    while not any(line.startswith(until) for line in lines):
        data, _ = sock.recvfrom(65535)
        lines += data.decode().splitlines()
    return lines


def test_statsd_lines(redis_url: str, prefix: str, udp_listener: socket.socket) -> None:
    port = udp_listener.getsockname()[1]
    collector = StatsDCollector("127.0.0.1", port, prefix="test.cache")
    cache = YokedCache(redis_url=redis_url, key_prefix=prefix, metrics=CacheMetrics([collector]))
    cache.set_sync("statsd-secret-key", 1)
    cache.get_sync("statsd-secret-key")
    cache.get_sync("missing")
    cache.delete_sync("statsd-secret-key")
    cache.get_stats_sync()
    cache.disconnect_sync()
    lines = received_lines(udp_listener, "test.cache.circuit_breaker_state")
    assert not any("secret" in line for line in lines)
    assert "test.cache.sets:1|c" in lines
    assert lines.count("test.cache.gets:1|c") == 2
    assert "test.cache.hits:1|c" in lines and "test.cache.misses:1|c" in lines
    assert "test.cache.deletes:1|c" in lines
    timings = [line for line in lines if line.startswith("test.cache.operation_duration.get:")]
    assert timings and all(line.endswith("|h") for line in timings)
    assert float(timings[0].split(":")[1].split("|")[0]) < 1  # seconds, not milliseconds
    assert "test.cache.keys_count:0|g" in lines


def test_statsd_dogstatsd_tags(redis_url: str, prefix: str, udp_listener: socket.socket) -> None:
    port = udp_listener.getsockname()[1]
    collector = StatsDCollector("127.0.0.1", port, prefix="test.cache", use_tags=True)
    cache = YokedCache(redis_url=redis_url, key_prefix=prefix, metrics=CacheMetrics([collector]))
    cache.set_sync("k", 1)
    cache.get_sync("k")
    cache.get_sync("missing")
    cache.flush_all_sync()
    cache.disconnect_sync()
    lines = received_lines(udp_listener, "test.cache.gets:1|c|#result:miss")
    assert "test.cache.gets:1|c|#result:hit" in lines
    durations = [line for line in lines if line.startswith("test.cache.operation_duration:")]
    assert any(line.endswith("|h|#operation:get,backend:redis") for line in durations)
    assert not any(line.startswith(("test.cache.hits", "test.cache.misses")) for line in lines)


def test_statsd_sample_rate_is_marked(prefix: str, udp_listener: socket.socket) -> None:
    port = udp_listener.getsockname()[1]
    collector = StatsDCollector("127.0.0.1", port, prefix="s", sample_rate=0.999999)
    metrics = CacheMetrics([collector])
    metrics.record_set(3)
    assert received_lines(udp_listener, "s.sets") == ["s.sets:3|c|@0.999999"]
    with pytest.raises(ValueError):
        StatsDCollector(sample_rate=0)


# --- OpenTelemetry ------------------------------------------------------------------------------------
def test_opentelemetry_spans_and_metrics(redis_url: str, prefix: str) -> None:
    sdk_trace = pytest.importorskip("opentelemetry.sdk.trace")
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    tracer_provider = sdk_trace.TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    collector = OpenTelemetryCollector(
        tracer_provider=tracer_provider, meter_provider=MeterProvider(metric_readers=[reader])
    )
    cache = YokedCache(redis_url=redis_url, key_prefix=prefix, metrics=CacheMetrics([collector]))
    tracer = tracer_provider.get_tracer("test")
    with tracer.start_as_current_span("request") as parent:
        cache.set_sync("k", 1)
        cache.get_sync("k")
        cache.get_sync("missing")
    cache.flush_all_sync()
    cache.disconnect_sync()

    spans: dict[tuple[str, Any], Any] = {}
    for span in exporter.get_finished_spans():
        attributes = dict(span.attributes or {})
        spans[(span.name, attributes.get("cache.hit"))] = (span, attributes)
    (hit, hit_attributes), (_, miss_attributes) = spans[("cache.get", True)], spans[("cache.get", False)]
    assert hit_attributes["cache.backend"] == miss_attributes["cache.backend"] == "redis"
    assert "k" not in hit_attributes.values()  # never the key
    assert ("cache.set", None) in spans
    assert hit.parent is not None and hit.parent.span_id == parent.get_span_context().span_id
    assert hit.start_time is not None and hit.end_time is not None and hit.start_time <= hit.end_time

    data: Any = reader.get_metrics_data()
    points = {
        metric.name: sum(point.value for point in metric.data.data_points)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if hasattr(metric.data.data_points[0], "value")
    }
    assert points["yokedcache.cache.gets"] == 2
    assert points["yokedcache.cache.hits"] == 1
    assert points["yokedcache.cache.sets"] == 1


def test_opentelemetry_missing_is_a_silent_no_op(prefix: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    collector = OpenTelemetryCollector()
    assert not collector.enabled
    cache = YokedCache(key_prefix=prefix, metrics=CacheMetrics([collector]))
    cache.set_sync("k", 1)
    assert cache.get_sync("k") == 1
    assert cache.metrics.collector_errors == 0
