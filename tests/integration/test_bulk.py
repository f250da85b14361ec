"""The bulk writer: COPY into staging, one merge; idempotent and upserting modes."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from territoire_data.db.bulk import copy_and_merge

pytestmark = pytest.mark.db


async def _datastream(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO thing (name) VALUES ('t'); INSERT INTO sensor (name) VALUES ('s');"
        "INSERT INTO observed_property (name) VALUES ('p');"
        "INSERT INTO datastream (name, thing_id, sensor_id, observed_property_id) VALUES ('d', 1, 1, 1)"
    )


async def test_redelivered_observations_are_ignored_not_duplicated(db: asyncpg.Connection) -> None:
    await _datastream(db)
    t0 = datetime.now(UTC).replace(microsecond=0)
    rows = [(1, t0 + timedelta(minutes=i), float(i)) for i in range(1000)]
    async with db.transaction():
        written = await copy_and_merge(
            db,
            schema="public",
            table="observation",
            columns=("datastream_id", "phenomenon_time", "result_number"),
            records=rows,
            conflict_columns=("datastream_id", "phenomenon_time"),
            on_conflict="ignore",
        )
    assert written == 1000
    async with db.transaction():
        again = await copy_and_merge(
            db,
            schema="public",
            table="observation",
            columns=("datastream_id", "phenomenon_time", "result_number"),
            records=rows[:10] + rows[:10],
            conflict_columns=("datastream_id", "phenomenon_time"),
            on_conflict="ignore",
        )
    assert again == 0
    assert await db.fetchval("SELECT count(*) FROM observation") == 1000
    assert await db.fetchval("SELECT count(DISTINCT id) FROM observation") == 1000


async def test_upsert_keeps_the_last_record_of_a_key_and_derives_columns_set_wise(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE datasets.t (code text PRIMARY KEY, v int, geom geometry(Point, 4326))")
    records = [("a", 1, 2.35, 48.85), ("b", 2, 2.0, 47.0), ("a", 3, 2.36, 48.86)]
    async with db.transaction():
        written = await copy_and_merge(
            db,
            schema="datasets",
            table="t",
            columns=("code", "v", "lon", "lat"),
            records=records,
            stage_types={"code": "text", "v": "int", "lon": "float8", "lat": "float8"},
            target_expressions={"code": "code", "v": "v", "geom": "ST_SetSRID(ST_MakePoint(lon, lat), 4326)"},
            conflict_columns=("code",),
            on_conflict="update",
        )
    assert written == 2
    row = await db.fetchrow("SELECT v, ST_X(geom) AS x FROM datasets.t WHERE code = 'a'")
    assert (row["v"], row["x"]) == (3, 2.36)


async def test_a_failing_merge_leaves_the_table_as_it_was(db: asyncpg.Connection) -> None:
    await db.execute("CREATE TABLE datasets.u (code text PRIMARY KEY, v int NOT NULL)")
    await db.execute("INSERT INTO datasets.u VALUES ('keep', 1)")
    with pytest.raises(asyncpg.UniqueViolationError):
        async with db.transaction():
            await copy_and_merge(db, schema="datasets", table="u", columns=("code", "v"), records=[("x", 1), ("x", 2)])
    assert await db.fetch("SELECT code FROM datasets.u") == [("keep",)]
