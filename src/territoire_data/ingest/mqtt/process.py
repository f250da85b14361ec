"""Runs the MQTT worker's StoreSink in a child process: decoding and writes there, the broker client here.

Why: paho's network thread already needs most of one core at ten thousand messages per second; decoding JSON and
feeding COPY in the same interpreter would halve the rate (one GIL). Batches go over a pipe as (topic, payload)
tuples; the child answers each with an Outcome once the batch is committed. The child ignores SIGINT/SIGTERM (the
parent decides when to stop, after flushing) and exits when the pipe closes or the parent disappears.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import signal
import time
from collections.abc import Sequence
from datetime import datetime
from functools import partial
from multiprocessing.connection import Connection
from typing import Any

from territoire_data.errors import ConfigurationError, TerritoireError
from territoire_data.ingest.model import Decoded, InboundMessage, RawMessage
from territoire_data.ingest.mqtt.config import ConnectorConfig
from territoire_data.ingest.mqtt.decoders import decode_payload
from territoire_data.ingest.pipeline import Outcome, Prepared, StoreSink
from territoire_data.ingest.registry import EntityRegistry, QuantityInfo
from territoire_data.ingest.store import ObservationStore, is_transient
from territoire_data.logging_setup import configure_logging
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)


def _decode(config: ConnectorConfig, max_payload_bytes: int, message: RawMessage, now: datetime) -> Decoded:
    return decode_payload(message.topic, message.payload, config, now, max_payload_bytes)


async def prepare_store(settings: Settings, config: ConnectorConfig) -> ObservationStore:
    """A store bound to the connector's dataset (created if missing), retrying while the database is away."""
    store = ObservationStore(
        settings.asyncpg_dsn, source=config.name, statement_timeout_ms=settings.db_statement_timeout_ms
    )
    dataset = config.dataset
    delay = 0.5
    while True:
        try:
            dataset_id = await store.ensure_dataset(
                slug=dataset.slug,
                title=dataset.title,
                description=dataset.description,
                access=dataset.access,
                licence=dataset.licence,
                publisher=dataset.publisher,
                keywords=dataset.keywords,
                themes=dataset.themes,
                update_frequency=dataset.update_frequency,
                status="published" if dataset.publish == "auto" else "draft",
            )
            break
        except Exception as exc:
            if not is_transient(exc):
                raise
            store.discard()
            logger.warning("database not reachable (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 10.0)
    quantities = {
        key: QuantityInfo(
            name=spec.name or key, definition=spec.definition, description=spec.description, unit_name=spec.unit_name
        )
        for key, spec in config.quantities.items()
    }
    store.registry = EntityRegistry(config.name, dataset_id, auto_register=config.auto_register, quantities=quantities)
    return store


def make_sink(
    settings: Settings, config: ConnectorConfig, store: ObservationStore, parent_pid: int | None
) -> StoreSink:
    return StoreSink(partial(_decode, config, settings.ingest_max_payload_bytes), store, parent_pid=parent_pid)


def child_main(
    conn: Connection, settings_values: dict[str, Any], config_values: dict[str, Any], parent_pid: int
) -> None:
    """Entry point of the child process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    settings = Settings(_env_file=None, **settings_values)
    configure_logging(settings)  # the parent's format (TERRITOIRE_LOG_JSON too): one format in the journal
    config = ConnectorConfig.model_validate(config_values)
    asyncio.run(_child(conn, settings, config, parent_pid))


async def _child(conn: Connection, settings: Settings, config: ConnectorConfig, parent_pid: int) -> None:
    loop = asyncio.get_running_loop()
    try:
        store = await prepare_store(settings, config)
    except TerritoireError as exc:
        conn.send(("error", exc.detail))
        return
    except Exception as exc:
        conn.send(("error", f"{type(exc).__name__}: {exc}"))
        return
    stores = [store] + [store.sibling() for _ in range(config.writers - 1)]
    sinks = [make_sink(settings, config, each, parent_pid) for each in stores]
    never = asyncio.Event()  # the parent decides when to stop; we only give up if it is gone
    decoded: asyncio.Queue[tuple[int, Prepared] | None] = asyncio.Queue()

    async def read() -> None:
        """Receive and decode batches; decoding one overlaps the database writing the previous ones."""
        seq = 0
        try:
            while True:
                try:
                    batch = await loop.run_in_executor(None, conn.recv)
                except (EOFError, OSError):
                    break
                if batch is None:
                    break
                topics, payloads = batch
                messages = [RawMessage(t, p) for t, p in zip(topics, payloads, strict=True)]
                await decoded.put((seq, sinks[0].prepare(messages)))
                seq += 1
        finally:
            for _ in sinks:
                await decoded.put(None)

    async def write(sink: StoreSink) -> None:
        """One writer: its own connection, one batch per transaction; outcomes carry the batch's number."""
        while (item := await decoded.get()) is not None:
            seq, prepared = item
            outcome = await sink.store_prepared(prepared, never)
            if outcome is None:
                return
            conn.send((seq, outcome))

    conn.send(("ready", None))
    reader = asyncio.create_task(read())
    try:
        await asyncio.gather(*(write(sink) for sink in sinks))
    finally:
        reader.cancel()
        for each in stores:
            await each.close()
        logger.info("storing process done (%.1f s of CPU)", time.process_time())


class ProcessSink:
    """The parent's handle on the child: sends batches, waits for their outcome, observing shutdown."""

    def __init__(self, settings: Settings, config: ConnectorConfig, *, shutdown_grace_seconds: float = 15.0) -> None:
        self.settings = settings
        self.config = config
        self.shutdown_grace_seconds = shutdown_grace_seconds
        context = multiprocessing.get_context("spawn")
        self.conn, child_conn = context.Pipe()
        self.process = context.Process(
            target=child_main,
            args=(child_conn, settings.model_dump(), config.model_dump(by_alias=True), os.getpid()),
            name=f"territoire-ingest-{config.name}",
            daemon=True,
        )
        self._child_conn = child_conn
        self._next = 0  # number of the next batch whose outcome we owe the pipeline
        self._early: dict[int, Outcome] = {}

    async def start(self, stop: asyncio.Event) -> bool:
        """Start the child and wait until it is connected to the database; False if stopped meanwhile."""
        self.process.start()
        self._child_conn.close()
        while True:
            reply = await self._receive(stop, give_up_on_stop=True)
            if reply is None:
                return False
            kind, detail = reply
            if kind == "ready":
                return True
            raise ConfigurationError(str(detail))

    async def _receive(self, stop: asyncio.Event, *, give_up_on_stop: bool) -> Any:
        loop = asyncio.get_running_loop()
        stop_seen: float | None = None
        while True:
            if await loop.run_in_executor(None, self.conn.poll, 0.2):
                try:
                    return self.conn.recv()
                except EOFError:
                    raise RuntimeError("the ingest child process died; see its log") from None
            if not self.process.is_alive():
                raise RuntimeError(f"the ingest child process exited with code {self.process.exitcode}")
            if stop.is_set():
                if give_up_on_stop:
                    return None
                stop_seen = stop_seen or time.monotonic()
                if time.monotonic() - stop_seen > self.shutdown_grace_seconds:
                    return None

    async def submit(self, messages: Sequence[InboundMessage]) -> None:
        """Send a batch to the child; two flat lists pickle much faster than a list of tuples."""
        batch = ([m.topic for m in messages], [m.payload for m in messages])
        await asyncio.get_running_loop().run_in_executor(None, self.conn.send, batch)

    async def result(self, stop: asyncio.Event) -> Outcome | None:
        """The outcome of the oldest batch sent (writers may finish out of order; acknowledgements may not)."""
        while self._next not in self._early:
            reply = await self._receive(stop, give_up_on_stop=False)
            if reply is None:
                return None
            seq, outcome = reply
            self._early[seq] = outcome
        outcome = self._early.pop(self._next)
        self._next += 1
        assert isinstance(outcome, Outcome)
        return outcome

    async def close(self) -> None:
        """Tell the child to finish, then make sure it is gone."""
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(None)
        await asyncio.get_running_loop().run_in_executor(None, self.process.join, 10)
        if self.process.is_alive():
            self.process.terminate()
            await asyncio.get_running_loop().run_in_executor(None, self.process.join, 5)
        self.conn.close()
