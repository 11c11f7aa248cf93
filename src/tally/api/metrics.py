"""Prometheus metrics of the HTTP service, in a registry of its own (one per app).

Counted per request: ``tally_api_operations_total{operation,result}`` (result: the result code or
problem code) and ``tally_api_request_duration_seconds{operation}``. Read at scrape time from the
readiness probe: drain lag, journal entries, replication lag, readiness and its reason; plus
whatever installed extensions collect (recharge intents by state, circuit, freeze)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tally.api.context import Readiness

LATENCY_BUCKETS_S = (
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0,
)  # fmt: skip
UNMATCHED = "unmatched"


class ApiMetrics:
    """With ``PROMETHEUS_MULTIPROC_DIR`` set (``tally serve --workers N``), the counters live in
    prometheus-client's per-process files and this registry reads them all (any worker's
    /metrics counts every worker's requests)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        shared = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
        own = None if shared else self.registry
        if shared:
            MultiProcessCollector(self.registry)  # type: ignore[no-untyped-call]
        self.operations = Counter(
            "tally_api_operations",
            "API operations by result code",
            ["operation", "result"],
            registry=own,
        )
        self.latency = Histogram(
            "tally_api_request_duration_seconds",
            "API request latency",
            ["operation"],
            buckets=LATENCY_BUCKETS_S,
            registry=own,
        )

    def add(self, collector: Collector) -> None:
        self.registry.register(collector)

    def record(self, scope: Scope, status: int, started: float) -> None:
        """One request: its operation (the route's name), the result the handler marked (else
        ok / the status) and its latency since ``started`` (``time.perf_counter()``)."""
        operation = getattr(scope.get("route"), "name", None) or UNMATCHED
        state = scope.get("state") or {}
        result = state.get("tally_result") or ("ok" if status < 400 else str(status))
        self.operations.labels(operation, result).inc()
        self.latency.labels(operation).observe(time.perf_counter() - started)


class ReadinessCollector(Collector):
    def __init__(self, probe: Callable[[], Readiness]) -> None:
        self.probe = probe

    def collect(self) -> Iterator[GaugeMetricFamily]:
        state = self.probe()
        ready = GaugeMetricFamily(
            "tally_ready", "1 when the service accepts traffic", labels=["reason"]
        )
        ready.add_metric([state.reason or ""], 1.0 if state.ready else 0.0)
        yield ready
        for name, check, value, help_text in (
            (
                "tally_drain_lag_seconds",
                "drain",
                "lag_s",
                "age of the oldest undrained journal entry",
            ),
            ("tally_journal_entries", "drain", "entries", "journal entries not yet trimmed"),
            ("tally_replication_lag_seconds", "replication", "lag_s", "largest replica lag"),
            (
                "tally_replication_lag_bytes",
                "replication",
                "lag_bytes",
                "largest replica offset gap",
            ),
            ("tally_replicas_connected", "replication", "replicas", "replicas connected"),
            ("tally_pending_credits", "ledger", "unsettled_credits", "credits not yet settled"),
        ):
            raw = state.value(check, value)
            if isinstance(raw, int | float):
                yield GaugeMetricFamily(name, help_text, value=float(raw))
        yield from _shard_metrics(state)

    def describe(self) -> list[Any]:
        return []  # collected lazily: no probe at registration


def _shard_metrics(state: Readiness) -> Iterator[GaugeMetricFamily]:
    """On a Redis Cluster (readiness has a ``shards`` check): how many shards serve, and each
    shard's state (1 serving, 0 not, with the reason)."""
    shards = state.checks.get("shards")
    if shards is None:
        return
    serving = shards.values.get("serving")
    if isinstance(serving, int):
        yield GaugeMetricFamily(
            "tally_store_shards_serving", "cluster shards that serve", value=float(serving)
        )
    family = GaugeMetricFamily(
        "tally_store_shard_serving",
        "1 when the cluster shard serves, else 0 with the reason",
        labels=["shard", "reason"],
    )
    for key, value in shards.values.items():
        if key.startswith("shard_") and isinstance(value, str):
            up = value == "serving"
            family.add_metric([key[6:], "" if up else value], 1.0 if up else 0.0)
    yield family


class FailoverCollector(Collector):
    """Sentinel failovers seen since start (anything with a ``failovers`` count: the store's
    SwitchMasterListener)."""

    def __init__(self, source: Any) -> None:
        self.source = source

    def collect(self) -> Iterator[CounterMetricFamily]:
        yield CounterMetricFamily(
            "tally_sentinel_failovers",
            "primaries Sentinel replaced (+switch-master) since start",
            value=float(self.source.failovers),
        )

    def describe(self) -> list[Any]:
        return []


class MetricsMiddleware:
    """Times every request and counts it by route name and the result the handler recorded."""

    def __init__(self, app: ASGIApp, metrics: ApiMetrics) -> None:
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            self.metrics.record(scope, status, started)
