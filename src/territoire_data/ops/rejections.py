"""Rejected messages and rows (`ingest_rejection`): listed by connector, reason and time, shown, counted, purged.

One place reads the table for the API (`/api/v1/rejections`), the CLI (`territoire-data rejections`) and the
status view. The connector is the `source` column: an MQTT connector's name, `sta-mqtt` for the SensorThings
bridge, or the file connector's name (rows of an import also carry its `import_id`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg

from territoire_data.db.params import Params

COLUMNS = (
    "id, at, source AS connector, reason_code AS reason, reason AS detail, topic, file, line, dataset_id, "
    "import_id, payload_bytes, replayed_at, replay_outcome"
)


@dataclass(frozen=True)
class RejectionFilter:
    """Which rejections: every field narrows the list (None: no condition)."""

    connector: str | None = None
    reason: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    import_id: int | None = None
    replayed: bool | None = None  # True: replayed and stored since; False: still waiting for a replay

    def where(self, params: Params) -> str:
        conditions = ["TRUE"]
        if self.connector is not None:
            conditions.append(f"source = {params.add(self.connector, 'text')}")
        if self.reason is not None:
            conditions.append(f"reason_code = {params.add(self.reason, 'text')}")
        if self.since is not None:
            conditions.append(f"at >= {params.add(self.since, 'timestamptz')}")
        if self.until is not None:
            conditions.append(f"at < {params.add(self.until, 'timestamptz')}")
        if self.import_id is not None:
            conditions.append(f"import_id = {params.add(self.import_id, 'bigint')}")
        if self.replayed is not None:
            conditions.append("replayed_at IS NOT NULL" if self.replayed else "replayed_at IS NULL")
        return " AND ".join(conditions)


async def list_rejections(
    conn: asyncpg.Connection, which: RejectionFilter, *, limit: int = 100, before_id: int | None = None
) -> list[dict[str, Any]]:
    """Newest first; page with `before_id` (the last id of the previous page)."""
    params = Params()
    where = which.where(params)
    if before_id is not None:
        where += f" AND id < {params.add(before_id, 'bigint')}"
    rows = await conn.fetch(
        f"SELECT {COLUMNS} FROM ingest_rejection WHERE {where} ORDER BY id DESC LIMIT {params.add(limit, 'int')}",  # noqa: S608
        *params.values,
    )
    return [dict(row) for row in rows]


async def get_rejection(conn: asyncpg.Connection, rejection_id: int) -> dict[str, Any] | None:
    """One rejection with its stored payload (bounded to 64 KiB when it was kept)."""
    row = await conn.fetchrow(
        f"SELECT {COLUMNS}, payload FROM ingest_rejection WHERE id = $1",  # noqa: S608
        rejection_id,
    )
    return dict(row) if row else None


async def summarize(conn: asyncpg.Connection, which: RejectionFilter) -> list[dict[str, Any]]:
    """Counts by connector and reason, with the first and last time seen and how many wait for a replay."""
    params = Params()
    rows = await conn.fetch(
        f"""SELECT source AS connector, reason_code AS reason, count(*) AS count,
                   count(*) FILTER (WHERE replayed_at IS NULL) AS not_replayed, min(at) AS first, max(at) AS last
              FROM ingest_rejection WHERE {which.where(params)}
             GROUP BY 1, 2 ORDER BY 1, 3 DESC""",  # noqa: S608
        *params.values,
    )
    return [dict(row) for row in rows]


async def purge(conn: asyncpg.Connection, older_than_days: int, *, dry_run: bool = False) -> int:
    """Delete rejections older than the retention; returns how many (would be) deleted."""
    if dry_run:
        count = await conn.fetchval(
            "SELECT count(*) FROM ingest_rejection WHERE at < now() - make_interval(days => $1)", older_than_days
        )
        return int(count)
    status = await conn.execute(
        "DELETE FROM ingest_rejection WHERE at < now() - make_interval(days => $1)", older_than_days
    )
    return int(status.split()[-1])
