"""Prometheus metrics of an ingest worker: received, stored, rejected by reason, batch latency, lag."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

BATCH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)
DELAY_BUCKETS = (0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 15.0, 60.0, 300.0, 3600.0)


class IngestMetrics:
    """The metrics of one worker, in their own registry (served by `serve(port)`)."""

    def __init__(self, connector: str, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        labels = ("connector",)
        self.received = Counter(
            "territoire_ingest_messages_received", "Messages received from the broker", labels, registry=self.registry
        ).labels(connector)
        self.acknowledged = Counter(
            "territoire_ingest_messages_acknowledged",
            "Messages acknowledged to the broker after their batch committed",
            labels,
            registry=self.registry,
        ).labels(connector)
        self.stored = Counter(
            "territoire_ingest_observations_stored", "New observation rows committed", labels, registry=self.registry
        ).labels(connector)
        self.duplicates = Counter(
            "territoire_ingest_observations_duplicate",
            "Readings already stored (redelivered messages), ignored",
            labels,
            registry=self.registry,
        ).labels(connector)
        self._rejected = Counter(
            "territoire_ingest_messages_rejected",
            "Messages sent to ingest_rejection, by reason",
            ("connector", "reason"),
            registry=self.registry,
        )
        self._ignored = Counter(
            "territoire_ingest_messages_ignored",
            "Well-formed messages without measurements (joins, logs...), by kind",
            ("connector", "kind"),
            registry=self.registry,
        )
        self.batch_seconds = Histogram(
            "territoire_ingest_batch_seconds",
            "Time to write and commit one batch",
            labels,
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        ).labels(connector)
        self.batch_size = Histogram(
            "territoire_ingest_batch_messages",
            "Messages per committed batch",
            labels,
            buckets=(1, 10, 100, 500, 1000, 2500, 5000, 10000, 50000),
            registry=self.registry,
        ).labels(connector)
        self.lag_seconds = Gauge(
            "territoire_ingest_lag_seconds",
            "Age of the oldest message received and not yet acknowledged (0 when caught up)",
            labels,
            registry=self.registry,
        ).labels(connector)
        self.pending = Gauge(
            "territoire_ingest_messages_pending",
            "Messages received and not yet acknowledged",
            labels,
            registry=self.registry,
        ).labels(connector)
        self.delay_seconds = Histogram(
            "territoire_ingest_observation_delay_seconds",
            "Commit time minus phenomenon time of the newest reading of each batch",
            labels,
            buckets=DELAY_BUCKETS,
            registry=self.registry,
        ).labels(connector)
        self.last_message = Gauge(
            "territoire_ingest_last_message_timestamp_seconds",
            "When the connector last received a message (Unix time)",
            labels,
            registry=self.registry,
        ).labels(connector)
        self.expected_period = Gauge(
            "territoire_ingest_expected_period_seconds",
            "The longest silence expected of the connector's devices (its `expected_period_seconds`)",
            labels,
            registry=self.registry,
        ).labels(connector)
        self.db_errors = Counter(
            "territoire_ingest_database_errors", "Failed batch writes (retried)", labels, registry=self.registry
        ).labels(connector)
        self.connector = connector

    def rejected(self, reason: str, count: int = 1) -> None:
        self._rejected.labels(self.connector, reason).inc(count)

    def ignored(self, kind: str) -> None:
        self._ignored.labels(self.connector, kind).inc()

    def serve(self, port: int, address: str = "127.0.0.1") -> None:
        """Expose /metrics on a small HTTP server thread."""
        start_http_server(port, addr=address, registry=self.registry)
