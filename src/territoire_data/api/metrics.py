"""Prometheus metrics: requests by route and status, latency, and the database pool."""

from __future__ import annotations

import math
import time
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from territoire_data.db.replicas import ReplicaRouter

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class HttpMetrics:
    """The HTTP metrics of one app, in that app's own registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "territoire_http_requests_total",
            "HTTP requests by method, route template and status",
            ("method", "route", "status"),
            registry=registry,
        )
        self.latency = Histogram(
            "territoire_http_request_duration_seconds",
            "HTTP request latency by method and route template",
            ("method", "route"),
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )


def _route_label(scope: Scope) -> str:
    route = scope.get("route")
    path = getattr(route, "path", None)
    if path:
        return str(path)
    # Mounted static files and unmatched paths: a bounded label, never the raw path.
    root_path = scope.get("root_path") or ""
    return f"mount:{root_path}" if root_path else "unmatched"


class MetricsMiddleware:
    """Pure ASGI middleware (no per-request task) that times requests and counts statuses."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_label(scope)
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)


class PoolCollector(Collector):
    """Reads the SQLAlchemy pool's state at scrape time."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    def collect(self) -> Iterable[GaugeMetricFamily]:
        pool = self.engine.sync_engine.pool
        if not isinstance(pool, QueuePool):
            return
        for name, doc, value in (
            ("territoire_db_pool_size", "Configured size of the database pool", pool.size()),
            ("territoire_db_pool_checked_out", "Connections in use", pool.checkedout()),
            ("territoire_db_pool_checked_in", "Idle connections in the pool", pool.checkedin()),
            (
                "territoire_db_pool_overflow",
                "Connections opened beyond the pool size",
                max(pool.overflow(), 0),
            ),
        ):
            yield GaugeMetricFamily(name, doc, value=value)


class ReplicaCollector(Collector):
    """The read replica at scrape time: its lag, whether reads use it, and where reads went and why."""

    def __init__(self, replicas: ReplicaRouter) -> None:
        self.replicas = replicas

    def collect(self) -> Iterable[GaugeMetricFamily | CounterMetricFamily]:
        replicas = self.replicas
        if not replicas.configured:
            return
        lag = GaugeMetricFamily(
            "territoire_db_read_replica_lag_seconds",
            "Replication delay of the read replica (TERRITOIRE_DATABASE_READ_URL); NaN while unreachable",
            value=replicas.lag if replicas.lag is not None else math.nan,
        )
        in_use = GaugeMetricFamily(
            "territoire_db_read_replica_in_use",
            "1 while anonymous reads go to the replica, 0 while they fall back to the primary "
            "(lag over TERRITOIRE_READ_MAX_LAG_MS, or unreachable)",
            value=1.0 if replicas.usable() else 0.0,
        )
        limit = GaugeMetricFamily(
            "territoire_db_read_replica_max_lag_seconds", "TERRITOIRE_READ_MAX_LAG_MS", value=replicas.max_lag
        )
        reads = CounterMetricFamily(
            "territoire_db_reads",
            "Reads by the node they went to (replica or primary) and why (replica, keyed, lag, unreachable)",
            labels=("target", "reason"),
        )
        for (target, reason), count in sorted(replicas.reads.items()):
            reads.add_metric((target, reason), count)
        yield from (lag, in_use, limit, reads)
