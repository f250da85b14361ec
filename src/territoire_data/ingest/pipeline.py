"""The ingest pipeline: decode -> validate -> batch -> write -> acknowledge, with dead letters and metrics.

Two tasks share one event loop: the collector decodes messages into the next batch while the writer commits the
previous one (at most one batch waits between them: back-pressure). A batch flushes on size or on time counted
from its first message. Messages are acknowledged only after the transaction holding them (observations and dead
letters alike) has committed; a database outage is retried with backoff, so nothing is acknowledged unstored.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from territoire_data.ingest.metrics import IngestMetrics
from territoire_data.ingest.model import Decoded, Ignored, InboundMessage, Reading, Rejection
from territoire_data.ingest.store import DeadLetter, ObservationStore, WriteResult, is_transient

logger = logging.getLogger(__name__)


class MessageSource(Protocol):
    def get_nowait(self) -> InboundMessage | None: ...

    async def wait(self, seconds: float) -> None: ...

    def pending(self) -> int: ...

    def ack(self, messages: Sequence[InboundMessage]) -> int: ...


DecodeFn = Callable[[InboundMessage, datetime], Decoded]


@dataclass
class Batch:
    messages: list[InboundMessage] = field(default_factory=list)
    readings: list[tuple[int, Reading]] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    first: float = 0.0  # monotonic time the first message arrived


class Pipeline:
    """Drives one source into one store."""

    def __init__(
        self,
        source: MessageSource,
        decode: DecodeFn,
        store: ObservationStore,
        metrics: IngestMetrics,
        *,
        batch_size: int,
        batch_ms: int,
        shutdown_grace_seconds: float = 15.0,
    ) -> None:
        self.source = source
        self.decode = decode
        self.store = store
        self.metrics = metrics
        self.batch_size = batch_size
        self.batch_seconds = batch_ms / 1000
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.committed_batches = 0

    async def run(self, stop: asyncio.Event) -> None:
        """Run until `stop` is set, then flush what was received and acknowledge what was stored."""
        batches: asyncio.Queue[Batch | None] = asyncio.Queue(maxsize=1)
        collector = asyncio.create_task(self._collect_loop(stop, batches), name="ingest-collector")
        writer = asyncio.create_task(self._write_loop(stop, batches), name="ingest-writer")
        try:
            await asyncio.gather(collector, writer)
        finally:
            for task in (collector, writer):
                task.cancel()

    def _add(self, batch: Batch, message: InboundMessage, now: datetime) -> None:
        if not batch.messages:
            batch.first = message.received
        index = len(batch.messages)
        batch.messages.append(message)
        try:
            decoded = self.decode(message, now)
        except Rejection as rejection:
            batch.dead.append(DeadLetter(message.topic, rejection.reason, rejection.detail, message.payload))
            return
        if isinstance(decoded, Ignored):
            self.metrics.ignored(decoded.kind)
        else:
            batch.readings.extend((index, reading) for reading in decoded)

    async def _collect(self, stop: asyncio.Event) -> Batch:
        """One batch: wait for a first message, then take more until the batch is full or its time is up."""
        batch = Batch()
        deadline = 0.0
        while len(batch.messages) < self.batch_size:
            message = self.source.get_nowait()
            if message is None:
                if stop.is_set():
                    break
                if batch.messages:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        break
                    await self.source.wait(remaining)
                else:
                    await self.source.wait(0.25)
                continue
            if not batch.messages:
                deadline = time.monotonic() + self.batch_seconds
            self._add(batch, message, datetime.now(UTC))
            if len(batch.messages) % 256 == 0:
                await asyncio.sleep(0)  # let the writer's I/O progress while we decode
                if time.monotonic() >= deadline:
                    break
        return batch

    async def _collect_loop(self, stop: asyncio.Event, batches: asyncio.Queue[Batch | None]) -> None:
        try:
            while not stop.is_set():
                batch = await self._collect(stop)
                if batch.messages:
                    self.metrics.received.inc(len(batch.messages))
                    await batches.put(batch)
            # Stopping: flush what already arrived; what comes later is redelivered to the next session.
            while True:
                batch = await self._collect(stop)
                if not batch.messages:
                    break
                self.metrics.received.inc(len(batch.messages))
                await batches.put(batch)
        finally:
            await batches.put(None)

    async def _write_loop(self, stop: asyncio.Event, batches: asyncio.Queue[Batch | None]) -> None:
        while (batch := await batches.get()) is not None:
            if not await self.write(batch, stop):
                # Could not store before the shutdown grace ran out: leave the rest unacknowledged.
                while (await batches.get()) is not None:
                    pass
                return

    async def write(self, batch: Batch, stop: asyncio.Event) -> bool:
        """Store a batch (retrying transient failures) and acknowledge it; False if given up at shutdown."""
        started = time.monotonic()
        delay = 0.1
        stop_seen: float | None = None
        while True:
            try:
                result = await self._write_once(batch)
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self.metrics.db_errors.inc()
                self.store.discard()
                logger.warning(
                    "batch of %d messages not stored (%s: %s); retrying", len(batch.messages), type(exc).__name__, exc
                )
                if stop.is_set():
                    stop_seen = stop_seen or time.monotonic()
                    if time.monotonic() - stop_seen > self.shutdown_grace_seconds:
                        logger.error(
                            "giving up at shutdown: %d messages left unacknowledged (they will be redelivered)",
                            len(batch.messages),
                        )
                        return False
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        self.source.ack(batch.messages)
        self._account(batch, result, started)
        return True

    async def _write_once(self, batch: Batch) -> WriteResult:
        try:
            return await self.store.write(batch.readings, batch.dead, batch.messages)
        except Exception as exc:
            if is_transient(exc):
                raise
            # A batch the database refuses for a reason of its own (not an outage): store message by message,
            # so only the offending ones become dead letters.
            logger.exception("batch refused by the database; storing its %d messages one by one", len(batch.messages))
            return await self._write_one_by_one(batch)

    async def _write_one_by_one(self, batch: Batch) -> WriteResult:
        total = WriteResult(rejected=list(batch.dead))
        if batch.dead:
            await self.store.write([], batch.dead, batch.messages)
        by_message: dict[int, list[tuple[int, Reading]]] = {}
        for index, reading in batch.readings:
            by_message.setdefault(index, []).append((0, reading))
        for index, readings in by_message.items():
            message = batch.messages[index]
            try:
                result = await self.store.write(readings, [], [message])
            except Exception as exc:
                if is_transient(exc):
                    raise
                letter = DeadLetter(
                    message.topic, "store_failed", f"{type(exc).__name__}: {exc}"[:500], message.payload
                )
                await self.store.write([], [letter], [message])
                total.rejected.append(letter)
                continue
            total.stored += result.stored
            total.duplicates += result.duplicates
            total.rejected.extend(result.rejected)
        return total

    def _account(self, batch: Batch, result: WriteResult, started: float) -> None:
        now = time.monotonic()
        metrics = self.metrics
        metrics.acknowledged.inc(len(batch.messages))
        metrics.stored.inc(result.stored)
        metrics.duplicates.inc(result.duplicates)
        for letter in result.rejected:
            metrics.rejected(letter.reason)
        metrics.batch_seconds.observe(now - started)
        metrics.batch_size.observe(len(batch.messages))
        metrics.lag_seconds.set(now - batch.first if self.source.pending() else 0.0)
        if batch.readings:
            newest = max(reading.time for _, reading in batch.readings)
            metrics.delay_seconds.observe(max(0.0, (datetime.now(UTC) - newest).total_seconds()))
        self.committed_batches += 1
        if result.rejected:
            logger.info(
                "%d message(s) rejected in this batch, e.g. %s", len(result.rejected), result.rejected[0].reason
            )
