"""The tables derived from observations by statement triggers stay exact through every kind of write.

15-minute and daily rollups and each Datastream's two newest phenomenonTimes (migrations 0002_sta, 0006_stadb)
are compared, after each step of a mixed sequence of writes (out-of-order and late inserts, the ingest's
COPY + merge upsert, updates of results and of times, deletes of the newest rows and of old ones, a Datastream
deleted, TRUNCATE), with the same values computed from the observations themselves.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from territoire_data.db.bulk import copy_and_merge
from tests.observation_helpers import create_datastreams

pytestmark = pytest.mark.db

T0 = datetime(2026, 3, 30, 22, tzinfo=UTC)  # the days (and a month) around T0 get rows

EXPECTED_ROLLUP = """
    SELECT datastream_id, {bucket} AS bucket, count(*) AS n, sum(result_number) AS total,
           min(result_number) AS min_value, max(result_number) AS max_value, max(phenomenon_time) AS last_time,
           (array_agg(result_number ORDER BY phenomenon_time DESC))[1] AS last_value
    FROM observation WHERE result_number IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
"""
EXPECTED_LATEST = """
    SELECT d.id, x.t[1] AS latest, x.t[2] AS previous FROM datastream d LEFT JOIN (
        SELECT datastream_id, (array_agg(phenomenon_time ORDER BY phenomenon_time DESC))[1:2] AS t
        FROM observation GROUP BY 1) x ON x.datastream_id = d.id ORDER BY 1
"""


def _rows(records: list[asyncpg.Record]) -> list[tuple[object, ...]]:
    # sums are compared rounded: an incremental sum adds in another order than a recomputed one
    return [tuple(round(v, 6) if isinstance(v, float) else v for v in r.values()) for r in records]


async def _check(db: asyncpg.Connection, step: str) -> None:
    day = "date_trunc('day', phenomenon_time AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'"
    quarter = "date_bin(interval '15 minutes', phenomenon_time, timestamptz '2000-01-01 00:00:00+00')"
    expected = _rows(await db.fetch(EXPECTED_ROLLUP.format(bucket=quarter)))
    assert _rows(await db.fetch("SELECT * FROM observation_rollup_15min ORDER BY 1, 2")) == expected, step
    # daily rollups: the days before each Datastream's rollup_day_until (the start of the newest day it was sent)
    expected_days = _rows(await db.fetch(EXPECTED_ROLLUP.format(bucket=day)))
    until = dict(await db.fetch("SELECT id, rollup_day_until FROM datastream"))
    closed = [r for r in expected_days if until[r[0]] is not None and r[1] < until[r[0]]]
    assert _rows(await db.fetch("SELECT * FROM observation_rollup_day ORDER BY 1, 2")) == closed, f"days after {step}"
    # and what the aggregates read (days closed, then the 15-minute rows of the others) is every day
    read = """
        SELECT datastream_id, sta_day(bucket), sum(n), sum(total), min(min_value), max(max_value), max(last_time),
               (array_agg(last_value ORDER BY last_time DESC))[1]
        FROM (SELECT r.* FROM observation_rollup_day r JOIN datastream d ON d.id = r.datastream_id
              WHERE r.bucket < d.rollup_day_until
              UNION ALL SELECT q.* FROM observation_rollup_15min q JOIN datastream d ON d.id = q.datastream_id
              WHERE q.bucket >= COALESCE(d.rollup_day_until, '-infinity')) x
        GROUP BY 1, 2 ORDER BY 1, 2"""
    assert _rows(await db.fetch(read)) == expected_days, f"days read after {step}"
    latest = await db.fetch("SELECT id, latest_phenomenon_time, previous_phenomenon_time FROM datastream ORDER BY 1")
    assert [tuple(r) for r in latest] == [tuple(r) for r in await db.fetch(EXPECTED_LATEST)], f"latest after {step}"


async def test_rollups_and_latest_times_stay_exact_through_every_write(db: asyncpg.Connection) -> None:
    rng = random.Random(5)
    await create_datastreams(db, 3)
    insert = (
        "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
        "SELECT * FROM unnest($1::bigint[], $2::timestamptz[], $3::float8[]) ON CONFLICT DO NOTHING"
    )

    def batch(
        count: int, spread_minutes: int, ids: tuple[int, ...] = (1, 2, 3)
    ) -> tuple[list[int], list[datetime], list[float | None]]:
        ds = [rng.choice(ids) for _ in range(count)]
        times = [T0 + timedelta(minutes=rng.randrange(-spread_minutes, spread_minutes)) for _ in range(count)]
        values = [None if rng.random() < 0.1 else round(rng.uniform(-10, 40), 2) for _ in range(count)]
        return ds, times, values

    await db.execute(insert, *batch(400, 3000))
    await _check(db, "a first batch")
    assert await db.fetchval("SELECT count(*) FROM observation_rollup_day") > 0  # closed days exist
    await db.execute(insert, *batch(1, 3000))
    await _check(db, "a single row")
    # late data, older than everything, and newer data in a later statement, out of order
    await db.execute(insert, [1, 2], [T0 - timedelta(days=20), T0 - timedelta(days=21)], [1.0, 2.0])
    await db.execute(
        insert, [1, 1, 2], [T0 - timedelta(days=1, minutes=3), T0 + timedelta(days=4), T0], [3.0, 4.0, 5.0]
    )
    await db.execute(insert, *batch(50, 6000))
    await _check(db, "late and out-of-order rows")
    # the ingest's COPY + merge upsert: some keys exist (an UPDATE), some are new (an INSERT), one statement
    newest = await db.fetch(
        "SELECT datastream_id, phenomenon_time FROM observation ORDER BY phenomenon_time DESC LIMIT 5"
    )
    records = [(r["datastream_id"], r["phenomenon_time"], 99.5) for r in newest]
    records += [(3, T0 + timedelta(days=3, minutes=m), float(m)) for m in range(3)]
    async with db.transaction():
        await copy_and_merge(
            db,
            schema="public",
            table="observation",
            columns=("datastream_id", "phenomenon_time", "result_number"),
            records=records,
            conflict_columns=("datastream_id", "phenomenon_time"),
            on_conflict="update",
        )
    await _check(db, "an upsert")
    await db.execute("UPDATE observation SET result_number = result_number * 2 WHERE result_number < 0")
    await _check(db, "results updated")
    # times moved: the newest row of Datastream 1 goes back a month, a row of 2 becomes the newest of 1
    await db.execute(
        "UPDATE observation SET phenomenon_time = phenomenon_time - interval '31 days' WHERE (datastream_id, "
        "phenomenon_time) = (SELECT datastream_id, max(phenomenon_time) FROM observation WHERE datastream_id = 1 "
        "GROUP BY 1)"
    )
    await db.execute(
        "UPDATE observation SET datastream_id = 1, phenomenon_time = $1 WHERE id = "
        "(SELECT min(id) FROM observation WHERE datastream_id = 2)",
        T0 + timedelta(days=9),
    )
    await _check(db, "times and Datastreams moved")
    # the newest rows deleted, one at a time and together; old rows deleted (retention)
    for _ in range(3):
        await db.execute(
            "DELETE FROM observation WHERE id = (SELECT id FROM observation WHERE datastream_id = 2 "
            "ORDER BY phenomenon_time DESC LIMIT 1)"
        )
        await _check(db, "the newest row deleted")
    await db.execute(
        "DELETE FROM observation WHERE phenomenon_time > (SELECT max(phenomenon_time) - interval '1 hour' "
        "FROM observation)"
    )
    await db.execute("DELETE FROM observation WHERE phenomenon_time < $1", T0 - timedelta(hours=30))
    await _check(db, "newest and oldest deleted")
    # down to one observation, then none, then one again
    await db.execute(
        "DELETE FROM observation WHERE datastream_id = 3 AND phenomenon_time < "
        "(SELECT max(phenomenon_time) FROM observation WHERE datastream_id = 3)"
    )
    await _check(db, "one observation left")
    assert await db.fetchval("SELECT previous_phenomenon_time FROM datastream WHERE id = 3") is None
    await db.execute("DELETE FROM observation WHERE datastream_id = 3")
    await _check(db, "no observation left")
    await db.execute(insert, [3], [T0], [7.0])
    await _check(db, "one again")
    # a Datastream deleted takes its observations and rollups along
    await db.execute("DELETE FROM datastream WHERE id = 2")
    await _check(db, "a Datastream deleted")
    assert await db.fetchval("SELECT count(*) FROM observation_rollup_day WHERE datastream_id = 2") == 0
    # a bulk load without the triggers, then the rebuild
    await db.execute("ALTER TABLE observation DISABLE TRIGGER observation_sta_inserted")
    try:
        await db.execute(insert, *batch(300, 9000, (1, 3)))
    finally:
        await db.execute("ALTER TABLE observation ENABLE TRIGGER observation_sta_inserted")
    await db.fetchval("SELECT sta_rebuild_rollups()")
    await _check(db, "a rebuild")
    await db.execute("TRUNCATE observation")
    await _check(db, "TRUNCATE")
    assert await db.fetchval("SELECT count(latest_phenomenon_time) FROM datastream") == 0


async def test_a_day_is_not_closed_while_another_transaction_writes_to_its_datastream(
    db: asyncpg.Connection, database_url: str
) -> None:
    """Closing a day reads its 15-minute rollups: not while a concurrent writer's increments are uncommitted."""
    await create_datastreams(db, 1)
    insert = "INSERT INTO observation (datastream_id, phenomenon_time, result_number) VALUES (1, $1, $2)"
    for minutes in (0, 10, 20):
        await db.execute(insert, T0 + timedelta(minutes=minutes), 1.0)  # day D (T0's) is the newest: none closed
    assert await db.fetchval("SELECT count(*) FROM observation_rollup_day") == 0
    writer = await asyncpg.connect(database_url)
    try:
        async with writer.transaction():
            # day D, uncommitted; inside the extents and older than the two newest: the writer holds its
            # Datastream FOR KEY SHARE only (a newer row would update it, and the next writer wait for that)
            await writer.execute(insert, T0 + timedelta(minutes=5), 2.0)
            # another statement brings day D + 1: day D must not be closed without the writer's row
            await db.execute("SET lock_timeout = '5s'")
            await db.execute(insert, T0 + timedelta(days=1), 3.0)
            await _check(db, "a newer day while a writer is open")
            assert await db.fetchval("SELECT count(*) FROM observation_rollup_day") == 0
        await db.execute(insert, T0 + timedelta(days=1, minutes=1), 4.0)  # the writer committed: now it closes
        await _check(db, "the next statement")
        day = T0.replace(hour=0)
        assert await db.fetchval("SELECT n FROM observation_rollup_day WHERE bucket = $1", day) == 4
    finally:
        await writer.close()
