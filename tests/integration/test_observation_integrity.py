"""Observation -> Datastream and -> FeatureOfInterest integrity without per-row foreign keys (migrations 0004_mqtt,
0009_foicheck): the same guarantees."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from territoire_data.db.bulk import copy_and_merge
from tests.observation_helpers import create_datastreams

pytestmark = pytest.mark.db

T0 = datetime(2026, 11, 2, tzinfo=UTC)


async def _observe(db: asyncpg.Connection, datastream_id: int, minutes: int = 1) -> None:
    await db.execute(
        "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
        "SELECT $1, $2::timestamptz + g * interval '1 minute', g FROM generate_series(1, $3) g",
        datastream_id,
        T0,
        minutes,
    )


async def test_an_observation_of_a_missing_datastream_is_refused_like_a_foreign_key(db: asyncpg.Connection) -> None:
    await create_datastreams(db)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="observation_datastream_id_fkey") as refused:
        await db.execute("INSERT INTO observation (datastream_id, phenomenon_time) VALUES (1, $1), (99, $1)", T0)
    assert refused.value.detail == 'Key (datastream_id)=(99) is not present in table "datastream".'
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with db.transaction():
            await copy_and_merge(
                db,
                schema="public",
                table="observation",
                columns=("datastream_id", "phenomenon_time"),
                records=[(2, T0), (7, T0)],
                conflict_columns=("datastream_id", "phenomenon_time"),
                on_conflict="ignore",
            )
    await _observe(db, 1)
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute("UPDATE observation SET datastream_id = 42")
    assert await db.fetchval("SELECT count(*) FROM observation") == 1


async def test_deleting_a_datastream_or_its_thing_deletes_its_observations(db: asyncpg.Connection) -> None:
    await create_datastreams(db, 3)
    for datastream_id in (1, 2, 3):
        await _observe(db, datastream_id, 30)
    await db.execute("DELETE FROM datastream WHERE id = 1")
    by_datastream = dict(await db.fetch("SELECT datastream_id, count(*) FROM observation GROUP BY 1"))
    assert by_datastream == {2: 30, 3: 30}
    assert await db.fetchval("SELECT count(*) FROM observation_rollup_15min WHERE datastream_id = 1") == 0
    await db.execute("DELETE FROM thing")  # cascades to its datastreams, then to their observations
    assert await db.fetchval("SELECT count(*) FROM observation") == 0
    assert await db.fetchval("SELECT count(*) FROM observation_rollup_15min") == 0


async def test_a_referenced_datastream_keeps_its_id_and_truncating_datastreams_empties_observations(
    db: asyncpg.Connection,
) -> None:
    await create_datastreams(db)
    await _observe(db, 1)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="still referenced"):
        await db.execute("UPDATE datastream SET id = 50 WHERE id = 1")
    await db.execute("UPDATE datastream SET id = 51 WHERE id = 2")  # nothing refers to it
    await db.execute("TRUNCATE datastream CASCADE")
    assert await db.fetchval("SELECT count(*) FROM observation") == 0


async def test_a_datastream_being_written_to_cannot_be_deleted_before_the_writer_commits(
    db: asyncpg.Connection, database_url: str
) -> None:
    await create_datastreams(db)
    writer = await asyncpg.connect(database_url)
    try:
        async with writer.transaction():
            await _observe(writer, 1, 5)
            # The writer holds the datastream row (FOR KEY SHARE, as a foreign key would): a delete has to wait.
            await db.execute("SET lock_timeout = '300ms'")
            with pytest.raises(asyncpg.LockNotAvailableError):
                await db.execute("DELETE FROM datastream WHERE id = 1")
            await db.execute("RESET lock_timeout")
        await db.execute("DELETE FROM datastream WHERE id = 1")  # once committed, the delete takes them along
    finally:
        await writer.close()
    assert await db.fetchval("SELECT count(*) FROM observation") == 0


async def test_observations_of_an_existing_datastream_are_stored_in_bulk(db: asyncpg.Connection) -> None:
    await create_datastreams(db)
    records = [(1 + i % 2, T0 + timedelta(seconds=i)) for i in range(2000)]
    async with db.transaction():
        written = await copy_and_merge(
            db,
            schema="public",
            table="observation",
            columns=("datastream_id", "phenomenon_time"),
            records=records,
            conflict_columns=("datastream_id", "phenomenon_time"),
            on_conflict="ignore",
        )
    assert written == 2000


# --- Observation -> FeatureOfInterest (migration 0009_foicheck): the same, and ON DELETE SET NULL ----------------


async def _features(db: asyncpg.Connection, count: int = 2) -> list[int]:
    rows = await db.fetch(
        "INSERT INTO feature_of_interest (name, feature, geom) "
        'SELECT \'f\' || g, \'{"type": "Point", "coordinates": [4.8, 45.7]}\', '
        "ST_SetSRID(ST_MakePoint(4.8 + g / 100.0, 45.7), 4326) FROM generate_series(1, $1) g RETURNING id",
        count,
    )
    return [row["id"] for row in rows]


async def test_an_observation_of_a_missing_feature_is_refused_like_a_foreign_key(db: asyncpg.Connection) -> None:
    await create_datastreams(db)
    first, second = await _features(db)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="observation_feature_of_interest_id_fkey") as refused:
        await db.execute(
            "INSERT INTO observation (datastream_id, phenomenon_time, feature_of_interest_id) "
            "VALUES (1, $1, $2), (2, $1, $3)",
            T0,
            first,
            second + 100,
        )
    assert refused.value.detail == (
        f'Key (feature_of_interest_id)=({second + 100}) is not present in table "feature_of_interest".'
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        async with db.transaction():
            await copy_and_merge(
                db,
                schema="public",
                table="observation",
                columns=("datastream_id", "phenomenon_time", "feature_of_interest_id"),
                records=[(1, T0, first), (2, T0, 999_999)],
                conflict_columns=("datastream_id", "phenomenon_time"),
                on_conflict="ignore",
            )
    await db.execute(
        "INSERT INTO observation (datastream_id, phenomenon_time, feature_of_interest_id) VALUES (1, $1, $2)",
        T0,
        first,
    )
    with pytest.raises(asyncpg.ForeignKeyViolationError):
        await db.execute("UPDATE observation SET feature_of_interest_id = $1", second + 100)
    with pytest.raises(asyncpg.ForeignKeyViolationError, match="still referenced"):
        await db.execute("UPDATE feature_of_interest SET id = $1 WHERE id = $2", second + 200, first)
    await db.execute("UPDATE feature_of_interest SET id = $1 WHERE id = $2", second + 300, second)  # unreferenced
    assert await db.fetchval("SELECT feature_of_interest_id FROM observation") == first


async def test_deleting_or_truncating_features_unsets_them_and_a_feature_in_use_cannot_go_meanwhile(
    db: asyncpg.Connection, database_url: str
) -> None:
    await create_datastreams(db)
    first, second = await _features(db)
    for datastream_id, feature in ((1, first), (2, second)):
        await db.execute(
            "INSERT INTO observation (datastream_id, phenomenon_time, feature_of_interest_id) VALUES ($1, $2, $3)",
            datastream_id,
            T0,
            feature,
        )
    await db.execute("DELETE FROM feature_of_interest WHERE id = $1", first)
    by_datastream = dict(await db.fetch("SELECT datastream_id, feature_of_interest_id FROM observation"))
    assert by_datastream == {1: None, 2: second}
    writer = await asyncpg.connect(database_url)
    try:
        async with writer.transaction():
            await writer.execute(
                "INSERT INTO observation (datastream_id, phenomenon_time, feature_of_interest_id) VALUES (1, $1, $2)",
                T0 + timedelta(minutes=1),
                second,
            )
            await db.execute("SET lock_timeout = '300ms'")
            with pytest.raises(asyncpg.LockNotAvailableError):  # held FOR KEY SHARE, as a foreign key does
                await db.execute("DELETE FROM feature_of_interest WHERE id = $1", second)
            await db.execute("RESET lock_timeout")
    finally:
        await writer.close()
    await db.execute("TRUNCATE feature_of_interest CASCADE")  # (multi_observation keeps its foreign key)
    assert await db.fetchval("SELECT count(*) FROM observation WHERE feature_of_interest_id IS NOT NULL") == 0
    assert await db.fetchval("SELECT count(*) FROM observation") == 3
