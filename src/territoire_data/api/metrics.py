"""Prometheus metrics of the API: requests by route and status, latency by route, both pools, the database.

With several workers (`serve --workers N`) every worker writes its samples to files in PROMETHEUS_MULTIPROC_DIR
(prometheus_client's multiprocess mode; `serving` makes one directory per run) and `/metrics`, whichever worker
answers, reads them all: counters and histograms add up, the pool gauges are summed over the live workers
(`livesum`), and a dead worker's live gauges are dropped (`serving` marks it dead). Without that directory (one
process, tests) the app's own registry answers. Database-wide figures (size, partitions, rejections) are read
from PostgreSQL at scrape time, once, by the worker that answers.
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine
from sqlalchemy.pool import QueuePool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from territoire_data.db.readpool import READ_POOL_WAIT, pool_of
from territoire_data.db.replicas import ReplicaRouter

logger = logging.getLogger(__name__)

LATENCY_BUCKETS = (0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def multiprocess_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, when this process runs in it."""
    return os.environ.get(MULTIPROC_ENV) or None


class HttpMetrics:
    """The HTTP and pool metrics of one app (in that app's registry; in multiprocess mode, in the shared files)."""

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
        self.in_progress = Gauge(
            "territoire_http_requests_in_progress",
            "Requests being answered, all workers together",
            registry=registry,
            multiprocess_mode="livesum",
        )
        pool_gauges = (
            ("territoire_db_pool_size", "Configured size of the database pools (SQLAlchemy), all workers"),
            ("territoire_db_pool_checked_out", "Connections in use (SQLAlchemy pools), all workers"),
            ("territoire_db_pool_checked_in", "Idle connections (SQLAlchemy pools), all workers"),
            ("territoire_db_pool_overflow", "Connections opened beyond the pool size, all workers"),
            ("territoire_read_pool_size", "Connections of the read pools (asyncpg), all workers"),
            ("territoire_read_pool_in_use", "Read pool connections checked out, all workers"),
        )
        self.pools = {
            name: Gauge(name, doc, registry=registry, multiprocess_mode="livesum") for name, doc in pool_gauges
        }
        registry.register(READ_POOL_WAIT)

    def sample_pools(self, engine: AsyncEngine) -> None:
        """Copy this worker's pool state into the gauges (at scrape time, and every second in the background)."""
        pool = engine.sync_engine.pool
        if isinstance(pool, QueuePool):
            self.pools["territoire_db_pool_size"].set(pool.size())
            self.pools["territoire_db_pool_checked_out"].set(pool.checkedout())
            self.pools["territoire_db_pool_checked_in"].set(pool.checkedin())
            self.pools["territoire_db_pool_overflow"].set(max(pool.overflow(), 0))
        reads = pool_of(engine)
        if reads is not None:
            self.pools["territoire_read_pool_size"].set(reads.get_size())
            self.pools["territoire_read_pool_in_use"].set(reads.get_size() - reads.get_idle_size())


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

        self.metrics.in_progress.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.in_progress.dec()
            route = _route_label(scope)
            method = scope.get("method", "GET")
            self.metrics.requests.labels(method, route, str(status)).inc()
            self.metrics.latency.labels(method, route).observe(time.perf_counter() - start)


class _Families(Collector):
    """Metric families computed elsewhere, served as they are."""

    def __init__(self, families: Iterable[GaugeMetricFamily]) -> None:
        self.families = list(families)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        return self.families


DATABASE_SQL = """
SELECT pg_database_size(current_database()) AS size,
       (SELECT count(*) FROM pg_inherits WHERE inhparent = 'observation'::regclass) AS partitions
"""
REJECTIONS_SQL = """
SELECT source, split_part(reason, ':', 1) AS reason, count(*) AS n, extract(epoch FROM max(at)) AS last
  FROM ingest_rejection GROUP BY 1, 2
"""


async def database_families(engine: AsyncEngine) -> list[GaugeMetricFamily]:
    """Database size, observation partitions, and rejections kept by connector and reason (one scrape, one read)."""
    size = GaugeMetricFamily("territoire_database_size_bytes", "Size of the platform's database on disk")
    partitions = GaugeMetricFamily("territoire_observation_partitions", "Monthly partitions of the observation table")
    kept = GaugeMetricFamily(
        "territoire_rejections", "Rejected messages and rows kept (ingest_rejection), by connector and reason",
        labels=("connector", "reason"),
    )  # fmt: skip
    last = GaugeMetricFamily(
        "territoire_rejection_last_timestamp_seconds",
        "When the newest kept rejection of a connector happened (Unix time)",
        labels=("connector",),
    )
    up = GaugeMetricFamily("territoire_database_up", "1 when /metrics could read the database")
    try:
        async with engine.connect() as conn:
            await conn.execute(text("SET LOCAL statement_timeout = 5000"))
            row = (await conn.execute(text(DATABASE_SQL))).one()
            rows = (await conn.execute(text(REJECTIONS_SQL))).all()
    except Exception as exc:  # the database is away: say so, serve the rest
        logger.warning("metrics: database figures unavailable (%s)", type(exc).__name__)
        up.add_metric([], 0)
        return [up]
    up.add_metric([], 1)
    size.add_metric([], row.size)
    partitions.add_metric([], row.partitions)
    newest: dict[str, float] = {}
    for item in rows:
        kept.add_metric([item.source, item.reason], item.n)
        newest[item.source] = max(newest.get(item.source, 0.0), float(item.last))
    for connector, moment in newest.items():
        last.add_metric([connector], moment)
    return [up, size, partitions, kept, last]


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


async def render(app_state: Any) -> bytes:
    """The text exposition for a scrape: every worker's samples (or this process's), then the database's."""
    metrics: HttpMetrics = app_state.http_metrics
    metrics.sample_pools(app_state.engine)
    extra = _Families(await database_families(app_state.engine))
    if multiprocess_dir():
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        registry.register(extra)
        registry.register(ReplicaCollector(app_state.replicas))  # this worker's view of the standby
        return generate_latest(registry)
    return (
        generate_latest(app_state.metrics_registry)
        + generate_latest(_registry_of(extra))
        + generate_latest(_registry_of(ReplicaCollector(app_state.replicas)))
    )


def _registry_of(collector: Collector) -> CollectorRegistry:
    registry = CollectorRegistry()
    registry.register(collector)
    return registry
