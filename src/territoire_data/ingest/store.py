"""Writes a batch in one transaction: entities registered, observations merged idempotently, dead letters kept.

Observations go through `db.bulk.copy_and_merge` (COPY into staging, one INSERT ... ON CONFLICT DO NOTHING on
(datastream_id, phenomenon_time)), so a redelivered message never makes a duplicate.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

import asyncpg
import orjson

from territoire_data.catalog.datasets import DatasetMeta, ensure_sensors_dataset
from territoire_data.db.bulk import copy_and_merge
from territoire_data.db.failover import CommitWatch, is_failover_error
from territoire_data.ingest.model import RawMessage, Reading
from territoire_data.ingest.registry import EntityRegistry
from territoire_data.observation_types import result_problem

logger = logging.getLogger(__name__)

PAYLOAD_LIMIT = 64 * 1024  # ingest_rejection.payload holds at most 64 KiB

OBSERVATION_COLUMNS = (
    "datastream_id",
    "phenomenon_time",
    "result_number",
    "result_string",
    "result_boolean",
    "result_json",
    "parameters",
    "feature_of_interest_id",
)
REJECTION_COLUMNS = ("source", "topic", "reason", "payload", "payload_bytes", "dataset_id")


def bounded_payload(payload: bytes) -> str:
    """The payload as text for a dead letter: UTF-8 with replacement, no NUL, at most 64 KiB once encoded."""
    text = payload[:PAYLOAD_LIMIT].decode("utf-8", errors="replace").replace("\x00", "\ufffd")
    encoded = text.encode("utf-8")
    if len(encoded) > PAYLOAD_LIMIT:
        text = encoded[:PAYLOAD_LIMIT].decode("utf-8", errors="ignore")
    return text


@dataclass(frozen=True, slots=True)
class DeadLetter:
    """A message that will be kept in ingest_rejection instead of being stored."""

    topic: str
    reason: str  # one of model.REASONS
    detail: str
    payload: bytes


@dataclass
class WriteResult:
    stored: int = 0  # new observation rows
    duplicates: int = 0  # readings that were already stored (redeliveries)
    rejected: list[DeadLetter] = field(default_factory=list)  # including those found unresolvable at write time
    months_created: int = 0


def is_transient(exc: BaseException) -> bool:
    """Whether a database failure is worth retrying the whole batch (connection lost, server restarting, a
    failover under way, a commit not known to be on the synchronous standby)."""
    return is_failover_error(exc) or isinstance(
        exc,
        TimeoutError
        | asyncpg.exceptions.OperatorInterventionError
        | asyncpg.exceptions.TransactionRollbackError
        | asyncpg.exceptions.InsufficientResourcesError,
    )


def months_of(readings: Sequence[Reading]) -> set[tuple[int, int]]:
    """The (year, month) in UTC of every reading (decoders give UTC times)."""
    months = set()
    for reading in readings:
        moment = reading.time
        if moment.utcoffset():
            moment = moment.astimezone(UTC)
        months.add((moment.year, moment.month))
    return months


async def merge_observations(conn: asyncpg.Connection, records: list[tuple[object, ...]]) -> int:
    """COPY `records` (OBSERVATION_COLUMNS) into staging and merge them: a redelivered reading (same Datastream,
    same time) is ignored. Returns how many were new."""
    written = await copy_and_merge(
        conn,
        schema="public",
        table="observation",
        columns=OBSERVATION_COLUMNS,
        records=records,
        conflict_columns=("datastream_id", "phenomenon_time"),
        on_conflict="ignore",
    )
    assert isinstance(written, int)
    return written


class ObservationStore:
    """Owns one database connection and writes batches through it; the caller retries on transient errors."""

    def __init__(self, dsn: str, *, source: str, statement_timeout_ms: int = 30_000) -> None:
        self.dsn = dsn
        self.registry: EntityRegistry | None = None  # set once the connector's dataset is known
        self.source = source
        self.statement_timeout_ms = statement_timeout_ms
        self.conn: asyncpg.Connection | None = None
        self.commit_watch: CommitWatch | None = None
        self.months: set[tuple[int, int]] = set()  # observation partitions known to exist

    def sibling(self) -> ObservationStore:
        """Another store on its own connection, sharing the registry and the known partitions (parallel writes)."""
        other = ObservationStore(self.dsn, source=self.source, statement_timeout_ms=self.statement_timeout_ms)
        other.registry = self.registry
        other.months = self.months
        return other

    async def connect(self) -> asyncpg.Connection:
        if self.conn is None or self.conn.is_closed():
            settings = {"application_name": f"territoire-data-ingest-{self.source}"[:63]}
            if self.statement_timeout_ms:
                settings["statement_timeout"] = str(self.statement_timeout_ms)
            self.conn = await asyncpg.connect(self.dsn, server_settings=settings, timeout=10)
            self.commit_watch = CommitWatch(self.conn)
            if not self.months:
                rows = await self.conn.fetch(
                    "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                    "WHERE i.inhparent = 'observation'::regclass AND c.relname ~ '^observation_[0-9]{4}_[0-9]{2}$'"
                )
                for row in rows:
                    year, month = row["relname"].split("_")[1:]
                    self.months.add((int(year), int(month)))
        return self.conn

    async def close(self) -> None:
        if self.conn is not None and not self.conn.is_closed():
            try:
                await asyncio.wait_for(self.conn.close(), 5)
            except (OSError, TimeoutError, asyncpg.InterfaceError):
                self.conn.terminate()
        self.conn = None

    def discard(self) -> None:
        """Drop a connection that failed; the next write reconnects."""
        if self.conn is not None:
            self.conn.terminate()
        self.conn = None

    async def ensure_dataset(
        self,
        *,
        slug: str,
        title: str,
        description: str,
        access: str,
        licence: str | None,
        publisher: str | None,
        keywords: Sequence[str],
        themes: Sequence[str] = (),
        update_frequency: str | None = None,
        status: str = "draft",
    ) -> int:
        """The id of the connector's dataset, created through the catalog (kind 'sensors') when missing: a draft,
        or published when the connector says `publish: auto` (an existing dataset keeps its status)."""
        meta = DatasetMeta(
            title=title,
            description=description,
            keywords=tuple(keywords),
            themes=tuple(themes),
            licence=licence,
            publisher=publisher,
            update_frequency=update_frequency,
            access=access,
            status=status,
        )
        return await ensure_sensors_dataset(await self.connect(), slug, meta)

    async def _ensure_months(self, conn: asyncpg.Connection, needed: set[tuple[int, int]]) -> int:
        """Create the monthly partitions this batch touches that do not exist yet (rows never land in default)."""
        created = 0
        for year, month in sorted(needed):
            start = datetime(year, month, 1, tzinfo=UTC)
            created += await conn.fetchval(
                "SELECT ensure_observation_partitions($1::timestamptz, $1::timestamptz + interval '1 day')", start
            )
        return created

    async def write(
        self,
        readings: Sequence[tuple[int, Reading]],
        dead: Sequence[DeadLetter],
        messages: Sequence[RawMessage],
        *,
        keep_dead_letters: bool = True,
    ) -> WriteResult:
        """Store a batch in one transaction: readings (tagged with their message index) and dead letters (unless
        `keep_dead_letters` is off: a replay leaves the rejections it retried where they are).

        `messages` gives the message of each index, so that a message whose device cannot be resolved
        (auto-registration off) becomes a dead letter as a whole.
        """
        assert self.registry is not None, "ensure_dataset first"
        registry = self.registry
        conn = await self.connect()
        result = WriteResult(rejected=list(dead))
        just_readings = [reading for _, reading in readings]
        needed_months = months_of(just_readings) - self.months
        if needed_months:
            async with conn.transaction():
                result.months_created = await self._ensure_months(conn, needed_months)
            self.months |= needed_months
        watch = self.commit_watch
        assert watch is not None
        watch.arm()
        async with conn.transaction():
            # nothing to create or look up (known devices): no query, the positions just read
            resolution = await registry.resolve(conn, registry.missing(just_readings))
            ids = registry.datastreams
            built: list[tuple[int, tuple[object, ...]]] = []
            refused: dict[int, tuple[str, str]] = {}
            for index, reading in readings:
                pair = (reading.device.key, reading.quantity)
                ds_id = ids.get(pair) or resolution.datastreams.get(pair)
                if ds_id is None:
                    reason = resolution.unresolved.get(pair, "unknown_datastream")
                    refused.setdefault(index, (reason, _refusal_detail(reason)))
                    continue
                value = reading.value
                kind = registry.kind_of(ds_id, resolution)
                problem = result_problem(kind, value) if kind else None
                if problem:  # e.g. "n/a" from a device whose Datastream holds numbers
                    refused.setdefault(index, ("wrong_type", f"{reading.quantity}: {problem}"))
                    continue
                built.append(
                    (
                        index,
                        (
                            ds_id,
                            reading.time,
                            float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None,
                            value if isinstance(value, str) else None,
                            value if isinstance(value, bool) else None,
                            orjson.dumps(value).decode() if isinstance(value, dict | list) else None,
                            orjson.dumps(reading.parameters).decode() if reading.parameters else None,
                            registry.feature_id(reading, resolution),
                        ),
                    )
                )
            # A message is stored whole or not at all: drop the records of refused messages.
            records = [record for index, record in built if index not in refused]
            if refused:
                for index, (reason, detail) in refused.items():
                    message = messages[index]
                    result.rejected.append(DeadLetter(message.topic, reason, detail, message.payload))
            if records:
                written = await merge_observations(conn, records)
                result.stored = written
                result.duplicates = len(records) - written
            if result.rejected and keep_dead_letters:
                await copy_and_merge(
                    conn,
                    schema="public",
                    table="ingest_rejection",
                    columns=REJECTION_COLUMNS,
                    records=[
                        (
                            self.source,
                            d.topic,
                            f"{d.reason}: {d.detail}"[:1000],
                            bounded_payload(d.payload),
                            len(d.payload),
                            registry.dataset_id,
                        )
                        for d in result.rejected
                    ],
                )
        # Acknowledged only if durable: a commit that warned (its wait for the synchronous standby cancelled)
        # raises NotDurable, and the batch is written again (idempotently) once the cluster is whole.
        await watch.check()
        registry.remember(resolution)
        return result


def _refusal_detail(reason: str) -> str:
    if reason == "unknown_device":
        return "device is not registered and auto-registration is off"
    return "datastream is not registered and auto-registration is off"
