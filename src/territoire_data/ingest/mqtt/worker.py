"""The long-lived MQTT ingest worker: broker -> decoders -> batches -> PostGIS, acknowledged after commit."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
from collections.abc import Awaitable, Callable
from datetime import datetime
from functools import partial

from territoire_data.ingest.metrics import IngestMetrics
from territoire_data.ingest.model import Decoded, InboundMessage
from territoire_data.ingest.mqtt.client import MqttSource
from territoire_data.ingest.mqtt.config import ConnectorConfig
from territoire_data.ingest.mqtt.decoders import decode_payload
from territoire_data.ingest.pipeline import Pipeline
from territoire_data.ingest.registry import EntityRegistry, QuantityInfo
from territoire_data.ingest.store import ObservationStore, is_transient
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)


def default_client_id(config: ConnectorConfig) -> str:
    """A stable client id, so a restarted worker finds its persistent session again."""
    return config.broker.client_id or f"territoire-{config.name}-{socket.gethostname()}"[:64]


def _decode(config: ConnectorConfig, max_payload_bytes: int, message: InboundMessage, now: datetime) -> Decoded:
    return decode_payload(message.topic, message.payload, config, now, max_payload_bytes)


async def _with_retry(what: str, attempt: Callable[[], Awaitable[None]], stop: asyncio.Event) -> None:
    """Run `attempt` until it succeeds, backing off on transient failures; CancelledError if stopped meanwhile."""
    delay = 0.5
    while True:
        try:
            await attempt()
            return
        except Exception as exc:
            if not is_transient(exc):
                raise
            logger.warning("%s failed (%s: %s); retrying in %.1f s", what, type(exc).__name__, exc, delay)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), delay)
        if stop.is_set():
            raise asyncio.CancelledError
        delay = min(delay * 2, 10.0)


class MqttWorker:
    """One connector's worker; `run(stop)` returns once stopped, flushed and acknowledged."""

    def __init__(
        self,
        settings: Settings,
        config: ConnectorConfig,
        *,
        client_id: str | None = None,
        metrics: IngestMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.config = config
        self.client_id = client_id or default_client_id(config)
        self.metrics = metrics or IngestMetrics(config.name)
        self.batch_size = config.batch_size or settings.ingest_batch_size
        self.batch_ms = config.batch_ms or settings.ingest_batch_ms
        self.store = ObservationStore(
            settings.asyncpg_dsn, source=config.name, statement_timeout_ms=settings.db_statement_timeout_ms
        )
        self.source = MqttSource(settings, config, client_id=self.client_id, queue_size=max(4 * self.batch_size, 1000))
        self.metrics.pending.set_function(lambda: self.source.received - self.source.acknowledged)
        self.pipeline: Pipeline | None = None

    async def _prepare(self) -> None:
        dataset = self.config.dataset
        await self.store.connect()
        dataset_id = await self.store.ensure_dataset(
            slug=dataset.slug,
            title=dataset.title,
            description=dataset.description,
            access=dataset.access,
            licence=dataset.licence,
            publisher=dataset.publisher,
            keywords=dataset.keywords,
        )
        quantities = {
            key: QuantityInfo(
                name=spec.name or key,
                definition=spec.definition,
                description=spec.description,
                unit_name=spec.unit_name,
            )
            for key, spec in self.config.quantities.items()
        }
        self.store.registry = EntityRegistry(
            self.config.name, dataset_id, auto_register=self.config.auto_register, quantities=quantities
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Connect to the database (retrying), then to the broker, and ingest until `stop` is set."""
        try:
            await _with_retry("connecting to the database", self._prepare, stop)
        except asyncio.CancelledError:
            return
        self.source.start()
        logger.info(
            "worker %s started: %s -> dataset %r (batches of %d or %d ms)",
            self.client_id,
            ", ".join(self.config.subscriptions()),
            self.config.dataset.slug,
            self.batch_size,
            self.batch_ms,
        )
        self.pipeline = Pipeline(
            self.source,
            partial(_decode, self.config, self.settings.ingest_max_payload_bytes),
            self.store,
            self.metrics,
            batch_size=self.batch_size,
            batch_ms=self.batch_ms,
        )
        try:
            await self.pipeline.run(stop)
        finally:
            await asyncio.to_thread(self.source.stop)
            await self.store.close()
            logger.info(
                "worker %s stopped: %d received, %d acknowledged",
                self.client_id,
                self.source.received,
                self.source.acknowledged,
            )


async def run_until_signalled(
    settings: Settings, config: ConnectorConfig, *, client_id: str | None, metrics_port: int | None
) -> None:
    """The CLI's entry: run a worker until SIGTERM or SIGINT, then shut down cleanly."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    metrics = IngestMetrics(config.name)
    if metrics_port:
        metrics.serve(metrics_port)
        logger.info("metrics on http://127.0.0.1:%d/metrics", metrics_port)
    await MqttWorker(settings, config, client_id=client_id, metrics=metrics).run(stop)
