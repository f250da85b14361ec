"""The demo: simulated Nantes traffic ingested by the shipped connectors; low-rate latency under a second."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncpg
import pytest

from territoire_data.ingest.mqtt.config import load_connector
from territoire_data.ingest.mqtt.simulate import run_simulation
from territoire_data.settings import Settings
from tests.integration.mqtt_helpers import Publisher, RunningWorker, chirpstack_up, connector_for, count, until

pytestmark = [pytest.mark.db, pytest.mark.mqtt]

CONNECTORS = Path(__file__).resolve().parents[2] / "connectors"


async def test_simulated_territory_is_ingested_by_the_shipped_connectors(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    workers = []
    for name in ("chirpstack-v4", "ttn-v3", "senml"):
        shipped = load_connector(CONNECTORS / f"{name}.yaml")
        config = shipped.model_copy(update={"topics": [f"{topic_prefix}/{t}" for t in shipped.topics]})
        workers.append(await RunningWorker(settings, config, client_id=f"{name}-{topic_prefix}").start())
    try:
        published = await asyncio.to_thread(run_simulation, mqtt_url, rate=2000, count=400, prefix=topic_prefix)
        assert published == 400
        await until(lambda: sum(w.worker.source.acknowledged for w in workers) >= 400, what="all acknowledged")
    finally:
        for worker in workers:
            await worker.stop()
    assert await count(db, "SELECT count(*) FROM ingest_rejection") == 0
    assert await count(db, "SELECT count(*) FROM thing") == 40
    assert await count(db, "SELECT count(DISTINCT thing_id) FROM thing_location") == 40
    assert await count(db, "SELECT count(*) FROM dataset WHERE kind = 'sensors'") == 3
    per_property = dict(
        await db.fetch(
            "SELECT op.external_key, count(*) FROM observation o JOIN datastream d ON d.id = o.datastream_id "
            "JOIN observed_property op ON op.id = d.observed_property_id GROUP BY 1"
        )
    )
    assert set(per_property) == {
        "pm10",
        "pm2_5",
        "no2",
        "temperature",
        "humidity",
        "count",
        "occupied",
        "battery",
        "laeq",
    }
    inside_nantes = await count(
        db,
        "SELECT count(*) FROM location WHERE ST_Intersects(geom, ST_MakeEnvelope(-1.65, 47.15, -1.45, 47.30, 4326))",
    )
    assert inside_nantes == 40


async def test_an_observation_is_queryable_within_a_second_of_publication_at_low_rate(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    worker = await RunningWorker(settings, connector_for(topic_prefix, batch_ms=200)).start()
    publisher = Publisher(mqtt_url)
    delays = []
    try:
        for seq in range(5):
            topic, event = chirpstack_up(topic_prefix, "70b3d50000000001", seq)
            started = time.monotonic()
            publisher.publish(topic, event)
            await until(lambda n=seq: _stored(db, 2 * (n + 1)), seconds=5, what="observation stored")
            delays.append(time.monotonic() - started)
            await asyncio.sleep(0.2)
    finally:
        publisher.close()
        await worker.stop()
    assert max(delays) < 1.0, delays


async def _stored(db: asyncpg.Connection, expected: int) -> bool:
    return await count(db, "SELECT count(*) FROM observation") >= expected
