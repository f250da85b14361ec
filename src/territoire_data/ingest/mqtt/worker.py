"""The long-lived MQTT ingest worker: broker -> batches -> (child process: decode, PostGIS) -> acknowledge."""

from __future__ import annotations

import asyncio
import logging
import signal
import socket
import time

from territoire_data.ingest.metrics import IngestMetrics
from territoire_data.ingest.mqtt.client import MqttSource
from territoire_data.ingest.mqtt.config import ConnectorConfig
from territoire_data.ingest.mqtt.process import ProcessSink
from territoire_data.ingest.pipeline import Pipeline
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)


def default_client_id(config: ConnectorConfig) -> str:
    """A stable client id, so a restarted worker finds its persistent session again."""
    return config.broker.client_id or f"territoire-{config.name}-{socket.gethostname()}"[:64]


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
        # Room for the batches in flight (writers + 1), one waiting, one filling; MQTT 5 tells the broker this bound.
        self.source = MqttSource(
            settings, config, client_id=self.client_id, queue_size=max((config.writers + 3) * self.batch_size, 1000)
        )
        self.metrics.pending.set_function(lambda: self.source.received - self.source.acknowledged)
        self.metrics.lag_seconds.set_function(lambda: self.pipeline.lag() if self.pipeline is not None else 0.0)
        self.metrics.expected_period.set(config.expected_period_seconds)
        self.pipeline: Pipeline | None = None

    async def run(self, stop: asyncio.Event) -> None:
        """Start the storing child (it waits for the database), then the broker client; ingest until `stop`."""
        sink = ProcessSink(self.settings, self.config)
        try:
            if not await sink.start(stop):
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
                sink,
                self.metrics,
                batch_size=self.batch_size,
                batch_ms=self.batch_ms,
                in_flight=self.config.writers + 1,
            )
            try:
                await self.pipeline.run(stop)
            finally:
                await asyncio.to_thread(self.source.stop)
        finally:
            await sink.close()
            logger.info(
                "worker %s stopped: %d received, %d acknowledged (%.1f s of CPU here)",
                self.client_id,
                self.source.received,
                self.source.acknowledged,
                time.process_time(),
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
