"""The MQTT connector's dataset is created through the catalog: its vocabularies are checked there."""

from __future__ import annotations

import asyncpg
import pytest

from territoire_data.catalog.datasets import DatasetMeta, ensure_sensors_dataset
from territoire_data.errors import ConflictError, ValidationFailedError


async def test_a_sensors_dataset_is_created_once_with_its_metadata(db: asyncpg.Connection) -> None:
    meta = DatasetMeta(title="Capteurs", themes=("ENVI",), licence="etalab-2.0", update_frequency="UPDATE_CONT")
    first = await ensure_sensors_dataset(db, "capteurs-air", meta)
    again = await ensure_sensors_dataset(db, "capteurs-air", DatasetMeta(title="Autre titre"))
    assert first == again
    row = await db.fetchrow("SELECT kind, title, themes, update_frequency FROM dataset WHERE id = $1", first)
    assert dict(row) == {"kind": "sensors", "title": "Capteurs", "themes": ["ENVI"], "update_frequency": "UPDATE_CONT"}


@pytest.mark.parametrize(
    ("meta", "message"),
    [
        (DatasetMeta(title="x", themes=("AIR",)), "not EU data themes"),
        (DatasetMeta(title="x", update_frequency="sometimes"), "update frequency"),
        (DatasetMeta(title="x", licence="wtfpl"), "licence"),
    ],
)
async def test_metadata_outside_the_catalog_vocabularies_is_refused(
    db: asyncpg.Connection, meta: DatasetMeta, message: str
) -> None:
    with pytest.raises(ValidationFailedError, match=message):
        await ensure_sensors_dataset(db, "capteurs-refuses", meta)
    assert await db.fetchval("SELECT count(*) FROM dataset WHERE slug = 'capteurs-refuses'") == 0


async def test_a_table_dataset_of_that_slug_is_a_conflict(db: asyncpg.Connection) -> None:
    await db.execute("INSERT INTO dataset (slug, kind, title) VALUES ('un-tableau', 'table', 'Un tableau')")
    with pytest.raises(ConflictError, match="not a sensors dataset"):
        await ensure_sensors_dataset(db, "un-tableau", DatasetMeta(title="x"))
