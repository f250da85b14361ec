"""MQTT readings move an indicator: a real Mosquitto, the ChirpStack connector's worker, the database's triggers and
the refresher the API runs; the touched day is recomputed, and only it."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pytest
import yaml

from territoire_data.db.raw import connect_raw
from territoire_data.demo import DEMO_DIVISIONS
from territoire_data.indicators.compute import Refresher
from territoire_data.ingest.files.demo import load_demo_datasets
from territoire_data.settings import Settings
from tests.conftest import ROOT, TEST_ADMIN_AUTH
from tests.integration.mqtt_helpers import Publisher, RunningWorker, connector_for, until

pytestmark = [pytest.mark.db, pytest.mark.mqtt]

PARIS = ZoneInfo("Europe/Paris")
EUI = "a840410000180001"
DAY1 = datetime(2026, 2, 3, 9, tzinfo=PARIS)
DAY2 = datetime(2026, 2, 4, 9, tzinfo=PARIS)


def uplink(prefix: str, at: datetime, pm10: float) -> tuple[str, dict[str, Any]]:
    """An air-quality sensor at Place Royale (quartier Centre Ville) sending PM10 through ChirpStack v4."""
    topic = f"{prefix}/application/air/device/{EUI}/event/up"
    return topic, {
        "deduplicationId": str(uuid.uuid4()),
        "time": at.astimezone(UTC).isoformat(),
        "deviceInfo": {
            "applicationName": "air",
            "deviceProfileName": "Capteur air",
            "deviceName": "Qualité de l'air – Place Royale",
            "devEui": EUI,
            "tags": {"latitude": "47.2136", "longitude": "-1.5593"},
        },
        "fCnt": int(at.timestamp()) % 65536,
        "fPort": 2,
        "object": {"pm10": pm10},
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -80, "snr": 7.5}],
    }


async def values(db: asyncpg.Connection) -> dict[datetime, tuple[float, datetime]]:
    rows = await db.fetch(
        "SELECT v.period_start, v.value, v.computed_at FROM indicator_value v "
        "JOIN indicator i ON i.id = v.indicator_id WHERE i.slug = 'pm10-moyenne-journaliere' AND v.record_count > 0"
    )
    return {r["period_start"]: (r["value"], r["computed_at"]) for r in rows}


async def test_mqtt_readings_recompute_the_day_they_fall_on_and_only_it(
    db: asyncpg.Connection, settings: Settings, client: httpx.AsyncClient, mqtt_url: str, topic_prefix: str
) -> None:
    await load_demo_datasets(settings)
    for slug, declaration in DEMO_DIVISIONS.items():
        declared = await client.put(f"/api/v1/divisions/{slug}", json=declaration.model_dump(), headers=TEST_ADMIN_AUTH)
        assert declared.status_code == 200, declared.text
    config = connector_for(
        topic_prefix,
        dataset={"slug": "capteurs-air-test", "title": "Capteurs air", "description": "Jeu de test"},
        quantities={"pm10": {"name": "Particules PM10", "unit": "ug/m3"}},
    )
    worker = await RunningWorker(settings, config).start()
    publisher = Publisher(mqtt_url)
    refresher = Refresher(lambda: connect_raw(settings, application_name="test-indicators"), debounce=0.1)
    try:
        publisher.publish_all([uplink(topic_prefix, DAY1, 20.0), uplink(topic_prefix, DAY2, 30.0)])
        await until(lambda: _stored(db, 2), what="two readings stored")
        definition = yaml.safe_load((ROOT / "indicators" / "pm10-moyenne-journaliere.yaml").read_text("utf-8"))
        body = json.loads(json.dumps(definition))
        created = await client.post("/api/v1/indicators", json=body, headers=TEST_ADMIN_AUTH)
        assert created.status_code == 201, created.text
        before = await values(db)
        day1 = DAY1.replace(hour=0).astimezone(UTC)
        day2 = DAY2.replace(hour=0).astimezone(UTC)
        assert {k: v[0] for k, v in before.items()} == {day1: 20.0, day2: 30.0}

        refresher.start()
        await until(lambda: refresher.rounds >= 1, what="refresher listening")
        publisher.publish_all([uplink(topic_prefix, DAY1 + timedelta(hours=3), 80.0)])  # a pollution peak on day 1

        async def day1_moved() -> bool:
            return (await values(db)).get(day1, (None,))[0] == pytest.approx(50.0)

        await until(day1_moved, seconds=20, what="day 1 recomputed to the mean of 20 and 80")
        after = await values(db)
        assert after[day1][1] > before[day1][1]
        assert after[day2] == before[day2]  # day 2 untouched: same value, same computed_at
        assert await db.fetchval("SELECT count(*) FROM indicator_dirty") == 0

        # The portal and the choropleth collection show it too.
        detail = (await client.get("/api/v1/indicators/pm10-moyenne-journaliere")).json()
        assert detail["latest"]["period"] == "2026-02-04"
        series = (
            await client.get(
                "/api/v1/indicators/pm10-moyenne-journaliere/values",
                params={"unit": next(v["unit"] for v in detail["latest"]["values"] if v["name"] == "Centre Ville")},
            )
        ).json()["items"]
        assert [(s["period"], s["value"]) for s in series] == [("2026-02-03", 50.0), ("2026-02-04", 30.0)]
    finally:
        await refresher.stop()
        publisher.close()
        await worker.stop()


async def _stored(db: asyncpg.Connection, n: int) -> bool:
    return int(await db.fetchval("SELECT count(*) FROM observation")) == n
