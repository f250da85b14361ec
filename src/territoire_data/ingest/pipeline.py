"""The ingest pipeline: decode -> validate -> batch -> write -> acknowledge, with dead letters and metrics.

Two halves. The `Pipeline` (next to the broker client) collects messages into batches that flush on size or on
time counted from their first message, hands each batch to a sink, and acknowledges the batch only once the sink
says it is committed, in the order received. The `StoreSink` decodes and validates a batch, then writes
observations and dead letters in one transaction, retrying database outages with backoff, so nothing is acknowledged
unstored. The MQTT worker runs the sinks in a child process (see ingest.mqtt.process) so that decoding and writing
never compete with the network thread for the interpreter; a bounded number of batches is in flight (one decoding,
the others being written on their own connections) while the next one fills: beyond that, back-pressure.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Protocol

from territoire_data.ingest.metrics import IngestMetrics
from territoire_data.ingest.model import Decoded, Ignored, InboundMessage, RawMessage, Reading, Rejection
from territoire_data.ingest.store import DeadLetter, ObservationStore, WriteResult, is_transient

logger = logging.getLogger(__name__)

DecodeFn = Callable[[RawMessage, datetime], Decoded]


@dataclass
class Outcome:
    """What storing a batch did, for acknowledgement and metrics (small: it crosses a process boundary)."""

    stored: int = 0
    duplicates: int = 0
    rejected: list[str] = field(default_factory=list)  # one reason per dead letter
    ignored: list[str] = field(default_factory=list)  # one kind per ignored message
    newest: datetime | None = None
    database_errors: int = 0


class MessageSource(Protocol):
    def take(self, limit: int) -> list[InboundMessage]: ...

    async def wait(self, seconds: float, count: int = 1) -> None:
        """Until `count` messages are waiting or `seconds` pass."""
        ...

    def pending(self) -> int: ...

    def oldest(self) -> float | None:
        """Monotonic arrival time of the oldest message waiting to be taken, None when none waits."""
        ...

    def ack(self, messages: Sequence[InboundMessage]) -> int: ...


class Sink(Protocol):
    """Stores batches in the order submitted; several may be in flight (one decoding while one is written)."""

    async def submit(self, messages: Sequence[InboundMessage]) -> None: ...

    async def result(self, stop: asyncio.Event) -> Outcome | None:
        """The outcome of the oldest submitted batch; None if it could not be stored before shutdown."""
        ...


@dataclass
class Prepared:
    """A decoded batch, ready to be written."""

    messages: Sequence[RawMessage]
    readings: list[tuple[int, Reading]]
    dead: list[DeadLetter]
    outcome: Outcome
    decode_seconds: float


class StoreSink:
    """Decodes a batch and stores it through an ObservationStore, retrying transient database failures."""

    def __init__(
        self,
        decode: DecodeFn,
        store: ObservationStore,
        *,
        shutdown_grace_seconds: float = 15.0,
        parent_pid: int | None = None,
    ) -> None:
        self.decode = decode
        self.store = store
        self.shutdown_grace_seconds = shutdown_grace_seconds
        self.parent_pid = parent_pid  # in a child process: give up when the parent is gone

    def prepare(self, messages: Sequence[RawMessage]) -> Prepared:
        """Decode and validate a batch (CPU only: can run while the previous batch is being written)."""
        started = time.perf_counter()
        outcome = Outcome()
        now = datetime.now(UTC)
        readings: list[tuple[int, Reading]] = []
        dead: list[DeadLetter] = []
        decode = self.decode
        for index, message in enumerate(messages):
            try:
                decoded = decode(message, now)
            except Rejection as rejection:
                dead.append(DeadLetter(message.topic, rejection.reason, rejection.detail, message.payload))
                continue
            if isinstance(decoded, Ignored):
                outcome.ignored.append(decoded.kind)
            else:
                readings.extend((index, reading) for reading in decoded)
        return Prepared(messages, readings, dead, outcome, time.perf_counter() - started)

    async def store_prepared(self, prepared: Prepared, stop: asyncio.Event) -> Outcome | None:
        """Store a decoded batch in one transaction, retrying transient failures; None if given up."""
        messages, readings, dead, outcome = prepared.messages, prepared.readings, prepared.dead, prepared.outcome
        decoded = time.perf_counter()
        delay = 0.1
        stop_seen: float | None = None
        while True:
            try:
                result = await self._write_once(readings, dead, messages)
                break
            except Exception as exc:
                if not is_transient(exc):
                    raise
                outcome.database_errors += 1
                self.store.discard()
                logger.warning(
                    "batch of %d messages not stored (%s: %s); retrying", len(messages), type(exc).__name__, exc
                )
                if self.parent_pid is not None and os.getppid() != self.parent_pid:
                    return None
                if stop.is_set():
                    stop_seen = stop_seen or time.monotonic()
                    if time.monotonic() - stop_seen > self.shutdown_grace_seconds:
                        return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
        logger.debug(
            "batch of %d: decoded in %.0f ms, stored in %.0f ms",
            len(messages),
            prepared.decode_seconds * 1000,
            (time.perf_counter() - decoded) * 1000,
        )
        outcome.stored = result.stored
        outcome.duplicates = result.duplicates
        outcome.rejected = [letter.reason for letter in result.rejected]
        if readings:
            outcome.newest = max(reading.time for _, reading in readings)
        if result.rejected:
            logger.info("%d message(s) rejected, e.g. %s", len(result.rejected), result.rejected[0].reason)
        return outcome

    async def _write_once(
        self, readings: list[tuple[int, Reading]], dead: list[DeadLetter], messages: Sequence[RawMessage]
    ) -> WriteResult:
        try:
            return await self.store.write(readings, dead, messages)
        except Exception as exc:
            if is_transient(exc):
                raise
            # Refused by the database for a reason of its own (not an outage): store message by message, so only
            # the offending ones become dead letters.
            logger.exception("batch refused by the database; storing its %d messages one by one", len(messages))
            return await self._write_one_by_one(readings, dead, messages)

    async def _write_one_by_one(
        self, readings: list[tuple[int, Reading]], dead: list[DeadLetter], messages: Sequence[RawMessage]
    ) -> WriteResult:
        total = WriteResult(rejected=list(dead))
        if dead:
            await self.store.write([], dead, messages)
        by_message: dict[int, list[tuple[int, Reading]]] = {}
        for index, reading in readings:
            by_message.setdefault(index, []).append((0, reading))
        for index, own in by_message.items():
            message = messages[index]
            try:
                result = await self.store.write(own, [], [message])
            except Exception as exc:
                if is_transient(exc):
                    raise
                detail = f"{type(exc).__name__}: {exc}"[:500]
                letter = DeadLetter(message.topic, "store_failed", detail, message.payload)
                await self.store.write([], [letter], [message])
                total.rejected.append(letter)
                continue
            total.stored += result.stored
            total.duplicates += result.duplicates
            total.rejected.extend(result.rejected)
        return total


@dataclass
class Batch:
    messages: list[InboundMessage] = field(default_factory=list)
    first: float = 0.0  # monotonic time the first message arrived


class Pipeline:
    """Drives one source into one sink: batches, hands over, acknowledges after commit, counts."""

    def __init__(
        self,
        source: MessageSource,
        sink: Sink,
        metrics: IngestMetrics,
        *,
        batch_size: int,
        batch_ms: int,
        in_flight: int = 2,
    ) -> None:
        self.source = source
        self.sink = sink
        self.metrics = metrics
        self.batch_size = batch_size
        self.batch_seconds = batch_ms / 1000
        self.in_flight = in_flight
        self.committed_batches = 0
        # Arrival time of the first message of each batch taken and not yet acknowledged, oldest first.
        self.unacknowledged: deque[float] = deque()

    def lag(self) -> float:
        """Age in seconds of the oldest message received and not acknowledged (0 when caught up)."""
        if self.unacknowledged:
            oldest = self.unacknowledged[0]
        else:
            waiting = self.source.oldest()
            if waiting is None:
                return 0.0
            oldest = waiting
        return max(0.0, time.monotonic() - oldest)

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

    async def _collect(self, stop: asyncio.Event) -> Batch:
        """One batch: wait for a first message, then take more until the batch is full or its time is up.

        Messages are taken in bulk, and the source wakes us only when a whole batch is waiting (or the time is
        up), so collecting costs nothing per message.
        """
        batch = Batch()
        messages = batch.messages
        deadline = 0.0
        source = self.source
        while (missing := self.batch_size - len(messages)) > 0:
            taken = source.take(missing)
            if taken:
                if not messages:
                    deadline = time.monotonic() + self.batch_seconds
                    batch.first = taken[0].received
                messages += taken
                continue
            if stop.is_set():
                break
            if messages:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                await source.wait(remaining, missing)
            else:
                await source.wait(0.25)
        return batch

    async def _collect_loop(self, stop: asyncio.Event, batches: asyncio.Queue[Batch | None]) -> None:
        try:
            while True:
                stopping = stop.is_set()
                batch = await self._collect(stop)
                if batch.messages:
                    self.metrics.received.inc(len(batch.messages))
                    self.metrics.last_message.set(time.time())
                    self.unacknowledged.append(batch.first)
                    await batches.put(batch)
                elif stopping:
                    # Stopped and drained: what arrives later is redelivered to the next session.
                    break
        finally:
            await batches.put(None)

    async def _write_loop(self, stop: asyncio.Event, batches: asyncio.Queue[Batch | None]) -> None:
        """Submit batches to the sink, at most `in_flight` unacknowledged; a second task acknowledges them."""
        slots = asyncio.Semaphore(self.in_flight)
        submitted: asyncio.Queue[tuple[Batch, float] | None] = asyncio.Queue()
        acker = asyncio.create_task(self._ack_loop(stop, submitted, slots), name="ingest-acker")
        try:
            while (batch := await batches.get()) is not None:
                await slots.acquire()
                if acker.done():
                    if acker.exception() is not None:
                        break  # raised below
                    continue  # given up at shutdown: drain without storing
                await self.sink.submit(batch.messages)
                submitted.put_nowait((batch, time.monotonic()))
        finally:
            submitted.put_nowait(None)
            await acker

    async def _ack_loop(
        self, stop: asyncio.Event, submitted: asyncio.Queue[tuple[Batch, float] | None], slots: asyncio.Semaphore
    ) -> None:
        try:
            while (item := await submitted.get()) is not None:
                if not await self._finish(item, stop):
                    logger.error("giving up at shutdown: messages left unacknowledged (they will be redelivered)")
                    return
                slots.release()
        finally:
            for _ in range(self.in_flight + 1):
                slots.release()  # never leave the submitting side waiting on a finished acker

    async def _finish(self, item: tuple[Batch, float], stop: asyncio.Event) -> bool:
        """Wait for a submitted batch's outcome, then acknowledge it; False if it was given up."""
        batch, started = item
        outcome = await self.sink.result(stop)
        if outcome is None:
            return False
        written = time.monotonic()
        self.source.ack(batch.messages)
        if self.unacknowledged:
            self.unacknowledged.popleft()
        self._account(batch, outcome, started)
        logger.debug(
            "batch of %d: collected in %.0f ms, written in %.0f ms, acknowledged in %.0f ms",
            len(batch.messages),
            (started - batch.first) * 1000,
            (written - started) * 1000,
            (time.monotonic() - written) * 1000,
        )
        return True

    def _account(self, batch: Batch, outcome: Outcome, started: float) -> None:
        now = time.monotonic()
        metrics = self.metrics
        metrics.acknowledged.inc(len(batch.messages))
        metrics.stored.inc(outcome.stored)
        metrics.duplicates.inc(outcome.duplicates)
        metrics.db_errors.inc(outcome.database_errors)
        for reason in outcome.rejected:
            metrics.rejected(reason)
        for kind in outcome.ignored:
            metrics.ignored(kind)
        metrics.batch_seconds.observe(now - started)
        metrics.batch_size.observe(len(batch.messages))
        if outcome.newest is not None:
            metrics.delay_seconds.observe(max(0.0, (datetime.now(UTC) - outcome.newest).total_seconds()))
        self.committed_batches += 1
