"""Replay rejected MQTT messages once a connector or a device is fixed: decode the stored payloads again with the
current connector definition and store what now passes, exactly once.

Each batch is one transaction: the observations of the messages that pass are merged (idempotently, as live
ingest does) and their rejections are marked `replayed_at` in the same commit, so a second replay finds nothing
left to do and an interrupted one resumes where it stopped. A message that still fails keeps its rejection,
with the new reason in `replay_outcome`; no second rejection is written. Payloads were kept as text (UTF-8, at
most 64 KiB): a binary or truncated payload cannot be replayed and says so.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime

import asyncpg

from territoire_data.ingest.model import RawMessage
from territoire_data.ingest.mqtt.config import ConnectorConfig
from territoire_data.ingest.mqtt.process import make_sink, prepare_store
from territoire_data.ingest.pipeline import StoreSink
from territoire_data.ingest.store import PAYLOAD_LIMIT, ObservationStore
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

BATCH = 500


@dataclass
class ReplayReport:
    connector: str
    examined: int = 0
    stored: int = 0  # rejections whose message is now stored (its observations merged)
    observations: int = 0  # new observation rows
    ignored: int = 0  # well-formed messages without measurements: done, nothing to store
    still_rejected: dict[str, int] = field(default_factory=dict)  # reason -> count

    def as_dict(self) -> dict[str, object]:
        return {
            "connector": self.connector,
            "examined": self.examined,
            "stored": self.stored,
            "observations": self.observations,
            "ignored": self.ignored,
            "still_rejected": self.still_rejected,
        }


async def replay(
    settings: Settings,
    config: ConnectorConfig,
    *,
    reason: str | None = None,
    since: datetime | None = None,
    ids: list[int] | None = None,
    dry_run: bool = False,
) -> ReplayReport:
    """Replay the connector's rejections not replayed yet (optionally of one reason, since a time, or by id)."""
    store = await prepare_store(settings, config)
    sink = make_sink(settings, config, store, None)
    report = ReplayReport(config.name)
    last_id = 0
    try:
        conn = await store.connect()
        while True:
            rows = await conn.fetch(
                """SELECT id, topic, payload, payload_bytes FROM ingest_rejection
                    WHERE source = $1 AND replayed_at IS NULL AND id > $2
                      AND ($3::text IS NULL OR reason_code = $3) AND ($4::timestamptz IS NULL OR at >= $4)
                      AND ($5::bigint[] IS NULL OR id = ANY($5))
                    ORDER BY id LIMIT $6""",
                config.name,
                last_id,
                reason,
                since,
                ids,
                BATCH,
            )
            if not rows:
                break
            last_id = rows[-1]["id"]
            await _replay_batch(store, sink, rows, report, dry_run)
    finally:
        await store.close()
    logger.info("replay of %s: %s", config.name, report.as_dict())
    return report


async def _replay_batch(
    store: ObservationStore, sink: StoreSink, rows: list[asyncpg.Record], report: ReplayReport, dry_run: bool
) -> None:
    messages: list[RawMessage] = []
    ids: list[int] = []
    outcomes: dict[int, str] = {}  # rejection id -> why it cannot be replayed at all
    for row in rows:
        report.examined += 1
        payload = (row["payload"] or "").encode("utf-8")
        if row["payload_bytes"] is not None and row["payload_bytes"] > min(len(payload), PAYLOAD_LIMIT):
            outcomes[row["id"]] = "not replayable: the payload was kept truncated"
            continue
        if "\ufffd" in (row["payload"] or ""):
            outcomes[row["id"]] = "not replayable: the payload was not UTF-8 text"
            continue
        messages.append(RawMessage(row["topic"] or "", payload))
        ids.append(row["id"])
    prepared = sink.prepare(messages)
    decode_failures = {id(letter.payload): letter.reason for letter in prepared.dead}
    with_readings = {index for index, _ in prepared.readings}
    conn = await store.connect()
    async with conn.transaction():
        written = None
        if prepared.readings and not dry_run:
            written = await store.write(prepared.readings, [], messages, keep_dead_letters=False)
        refused = {id(letter.payload): letter.reason for letter in (written.rejected if written else [])}
        done: list[int] = []
        for index, (rejection_id, message) in enumerate(zip(ids, messages, strict=True)):
            why = decode_failures.get(id(message.payload)) or refused.get(id(message.payload))
            if why is not None:
                outcomes[rejection_id] = f"still rejected: {why}"
            elif index in with_readings:
                done.append(rejection_id)
                report.stored += 1
            else:
                done.append(rejection_id)
                report.ignored += 1
        for outcome in outcomes.values():
            key = outcome.removeprefix("still rejected: ")
            report.still_rejected[key] = report.still_rejected.get(key, 0) + 1
        if written is not None:
            report.observations += written.stored
        if dry_run:
            return
        if done:
            await conn.execute(
                "UPDATE ingest_rejection SET replayed_at = now(), replay_outcome = 'stored' WHERE id = ANY($1)", done
            )
        if outcomes:
            await conn.executemany(
                "UPDATE ingest_rejection SET replay_outcome = $2 WHERE id = $1", list(outcomes.items())
            )
