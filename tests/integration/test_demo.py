"""The demo territory: real datasets and sensor history, loaded through the platform's own paths, rerunnable."""

from __future__ import annotations

import os
import subprocess
import sys

import asyncpg
import httpx
import pytest

from territoire_data.demo import load_demo
from territoire_data.settings import Settings

pytestmark = pytest.mark.db


async def test_demo_loads_datasets_and_sensor_history_once(
    settings: Settings, db: asyncpg.Connection, client: httpx.AsyncClient
) -> None:
    first = await load_demo(settings, history_hours=2)
    assert first.sensor_messages == 9 * 40  # every device every quarter hour over two hours, both ends
    assert first.observations > first.sensor_messages  # air quality sensors send several quantities
    datasets = {r["slug"]: r for r in await db.fetch("SELECT slug, kind, licence, themes FROM dataset")}
    assert {"sanisettes-paris", "capteurs-lorawan", "capteurs-ttn", "capteurs-senml"} <= set(datasets)
    assert all(d["licence"] in ("etalab-2.0", "odbl-1.0") for d in datasets.values())
    assert await db.fetchval("SELECT count(*) FROM thing") == 40
    # Nantes, every one of them.
    assert await db.fetchval(
        "SELECT count(*) FROM location WHERE ST_Within(geom, ST_MakeEnvelope(-1.65, 47.15, -1.45, 47.3, 4326))"
    ) == await db.fetchval("SELECT count(*) FROM location")

    again = await load_demo(settings, history_hours=2)
    assert again.observations == 0
    assert all(item.get("status") == "skipped" for item in again.datasets)

    # The catalog names every demo dataset's licence and themes.
    listed = (await client.get("/api/v1/datasets", params={"limit": 50})).json()
    # 7 file datasets (two of them territorial divisions), 3 sensor datasets, 5 indicators published as datasets
    assert listed["total"] == 15
    for item in listed["items"]:
        assert item["licence"], item["slug"]
        assert item["themes"], item["slug"]


def test_demo_command_refuses_an_unmigrated_database_with_one_line(settings: Settings) -> None:
    env = {**os.environ, "TERRITOIRE_DATABASE_URL": settings.database_url.rsplit("/", 1)[0] + "/postgres"}
    result = subprocess.run(
        [sys.executable, "-m", "territoire_data.cli", "demo"], env=env, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "error: the database schema is not up to date: run `territoire-data migrate` first"
    )
