"""The demo territory's datasets load from demo/data with their metadata, and loading again is a no-op."""

from __future__ import annotations

import asyncpg
import pytest

from territoire_data.ingest.files.demo import load_demo_datasets
from territoire_data.settings import Settings

pytestmark = pytest.mark.db


async def test_demo_datasets_load_once_with_metadata(settings: Settings, db: asyncpg.Connection) -> None:
    reports = await load_demo_datasets(settings)
    assert [r["status"] for r in reports] == ["succeeded"] * 7
    rows = {
        r["slug"]: r
        for r in await db.fetch("SELECT slug, row_count, licence, publisher, description, geometry_type FROM dataset")
    }
    assert {slug: r["row_count"] for slug, r in rows.items()} == {
        "sanisettes-paris": 615,
        "bornes-recharge-irve": 100,
        "precipitations-alba-la-romaine": 100,
        "sites-comptage-velo-loire": 3,
        "comptages-velo-loire-2022": 3650,
        "communes-nantes-metropole": 24,
        "quartiers-nantes": 11,
    }
    assert rows["sanisettes-paris"]["licence"] == "odbl-1.0"
    assert rows["bornes-recharge-irve"]["licence"] == "etalab-2.0"
    assert rows["precipitations-alba-la-romaine"]["publisher"] == "Météo-France"
    assert all(r["description"] for r in rows.values())
    assert rows["comptages-velo-loire-2022"]["geometry_type"] is None
    # The territorial divisions: real polygons, and INSEE populations for the communes.
    assert rows["communes-nantes-metropole"]["geometry_type"] in ("Polygon", "MultiPolygon", "Geometry")
    assert rows["quartiers-nantes"]["geometry_type"] == "Polygon"
    communes = await db.fetchval("SELECT table_name FROM dataset WHERE slug = 'communes-nantes-metropole'")
    nantes = await db.fetchrow(f"SELECT nom, population FROM datasets.\"{communes}\" WHERE code::text = '44109'")
    assert nantes["nom"] == "Nantes" and nantes["population"] > 300_000
    again = await load_demo_datasets(settings)
    assert [r["status"] for r in again] == ["skipped"] * 7
