"""The MQTT worker against a real Mosquitto and PostGIS: stored once, bad input kept as dead letters."""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import orjson
import pytest

from territoire_data.errors import ConfigurationError
from territoire_data.ingest.mqtt.worker import MqttWorker
from territoire_data.settings import Settings
from tests.conftest import free_port
from tests.integration.mqtt_helpers import Publisher, RunningWorker, chirpstack_up, connector_for, count, until

pytestmark = [pytest.mark.db, pytest.mark.mqtt]


@pytest.mark.parametrize("protocol", ["5", "3.1.1"])
async def test_uplinks_become_things_datastreams_and_observations_once(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str, protocol: str
) -> None:
    config = connector_for(topic_prefix, broker={"client_id": f"w-{topic_prefix}", "protocol": protocol})
    worker = await RunningWorker(settings, config).start()
    publisher = Publisher(mqtt_url)
    try:
        messages = [chirpstack_up(topic_prefix, f"70b3d5{d:010x}", seq) for d in range(5) for seq in range(40)]
        publisher.publish_all(messages)
        await until(lambda: worker.worker.source.acknowledged >= 200, what="200 acknowledged")
        assert await count(db, "SELECT count(*) FROM observation") == 400
        # The same messages again (a redelivery): nothing new.
        publisher.publish_all(messages[:50])
        await until(lambda: worker.worker.source.acknowledged >= 250, what="250 acknowledged")
    finally:
        publisher.close()
        await worker.stop()
    assert await count(db, "SELECT count(*) FROM observation") == 400
    assert await count(db, "SELECT count(*) FROM thing") == 5
    assert await count(db, "SELECT count(*) FROM datastream") == 10
    assert await count(db, "SELECT count(*) FROM observed_property") == 2
    assert await count(db, "SELECT count(*) FROM sensor") == 1
    assert await count(db, "SELECT count(*) FROM location l JOIN thing_location tl ON tl.location_id = l.id") == 5
    assert await count(db, "SELECT count(*) FROM observation_default") == 0
    # each device reports a position: its observations have its FeatureOfInterest (one per device here), and
    # its Datastreams an observedArea (migration 0008_obsarea)
    assert await count(db, "SELECT count(*) FROM observation WHERE feature_of_interest_id IS NULL") == 0
    assert await count(db, "SELECT count(*) FROM feature_of_interest") == 5
    assert await count(db, "SELECT count(DISTINCT feature_of_interest_id) FROM observation") == 5
    assert await count(db, "SELECT count(*) FROM datastream WHERE observed_area IS NULL") == 0
    assert (
        await count(
            db,
            "SELECT count(*) FROM observation o JOIN datastream d ON d.id = o.datastream_id "
            "JOIN thing_location tl ON tl.thing_id = d.thing_id JOIN location l ON l.id = tl.location_id "
            "JOIN feature_of_interest f ON f.id = o.feature_of_interest_id WHERE NOT ST_Equals(f.geom, l.geom)",
        )
        == 0
    )
    dataset = await db.fetchrow("SELECT kind, access, title FROM dataset WHERE slug = 'capteurs-test'")
    assert dict(dataset) == {"kind": "sensors", "access": "public", "title": "Capteurs de test"}
    stream = await db.fetchrow(
        "SELECT d.unit_of_measurement, d.observation_type, op.name FROM datastream d "
        "JOIN observed_property op ON op.id = d.observed_property_id WHERE op.external_key = 'temperature' LIMIT 1"
    )
    assert orjson.loads(stream["unit_of_measurement"])["symbol"] == "Cel"
    assert stream["observation_type"].endswith("OM_Measurement")
    assert stream["name"] == "Température"
    assert await count(db, "SELECT count(*) FROM ingest_rejection") == 0


async def test_bad_payloads_are_dead_letters_and_the_good_ones_around_them_are_stored(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    worker = await RunningWorker(settings, connector_for(topic_prefix)).start()
    publisher = Publisher(mqtt_url)
    topic, good = chirpstack_up(topic_prefix, "70b3d50000000001", 1)
    no_time = {k: v for k, v in good.items() if k != "time"}
    future = {**good, "time": "2999-01-01T00:00:00Z"}
    bad: list[tuple[str, bytes | dict[str, object]]] = [
        (topic, b"{not json"),
        (topic, orjson.dumps(good).replace(b'"co2":401', b'"co2":NaN')),
        (topic, no_time),
        (topic, future),
        (topic, {**good, "object": {"temperature": 1}, "deviceInfo": {"devEui": ["x"]}}),
        (topic, b"\xff\xfe" + b"x" * (settings.ingest_max_payload_bytes + 10)),
        (topic.replace("/up", "/banana"), good),
    ]
    items: list[tuple[str, object]] = []
    for i, (bad_topic, payload) in enumerate(bad):
        items.append(chirpstack_up(topic_prefix, "70b3d50000000001", 100 + i))
        items.append((bad_topic, payload))
    items.append(chirpstack_up(topic_prefix, "70b3d50000000001", 200))
    try:
        publisher.publish_all(items)  # type: ignore[arg-type]
        await until(lambda: worker.worker.source.acknowledged >= len(items), what="all acknowledged")
    finally:
        publisher.close()
        await worker.stop()
    assert await count(db, "SELECT count(*) FROM observation") == 2 * (len(bad) + 1)
    rows = await db.fetch("SELECT source, topic, reason, payload, payload_bytes FROM ingest_rejection ORDER BY id")
    reasons = [row["reason"].split(":", 1)[0] for row in rows]
    assert reasons == [
        "invalid_json",
        "non_finite",
        "missing_time",
        "future_time",
        "wrong_type",
        "too_large",
        "unknown_format",
    ]
    assert {row["source"] for row in rows} == {"test-chirpstack-v4"}
    assert rows[0]["topic"] == topic
    assert rows[0]["payload"] == "{not json"
    big = rows[5]
    assert big["payload_bytes"] == settings.ingest_max_payload_bytes + 12
    assert len(big["payload"].encode()) <= 64 * 1024
    assert big["payload"].startswith("\ufffd\ufffd")


async def test_unknown_devices_are_rejected_when_auto_registration_is_off(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    config = connector_for(topic_prefix)
    worker = await RunningWorker(settings, config).start()
    publisher = Publisher(mqtt_url)
    try:
        publisher.publish_all([chirpstack_up(topic_prefix, "70b3d50000000001", 1)])
        await until(lambda: worker.worker.source.acknowledged >= 1, what="registration")
    finally:
        await worker.stop()
    locked = await RunningWorker(settings, config.model_copy(update={"auto_register": False})).start()
    try:
        publisher.publish_all(
            [
                chirpstack_up(topic_prefix, "70b3d50000000001", 2),  # known device and quantities
                chirpstack_up(topic_prefix, "70b3d50000000002", 3),  # unknown device
                chirpstack_up(topic_prefix, "70b3d50000000001", 4, temperature=3, humidity=50),  # unknown quantity
            ]
        )
        await until(lambda: locked.worker.source.acknowledged >= 3, what="3 acknowledged")
    finally:
        publisher.close()
        await locked.stop()
    assert await count(db, "SELECT count(*) FROM observation") == 4
    assert await count(db, "SELECT count(*) FROM thing") == 1
    reasons = [r["reason"] for r in await db.fetch("SELECT reason FROM ingest_rejection ORDER BY id")]
    assert [r.split(":", 1)[0] for r in reasons] == ["unknown_device", "unknown_datastream"]
    # the refused device's position is not published as a FeatureOfInterest (one with no Observation is public)
    assert await count(db, "SELECT count(*) FROM feature_of_interest") == 1


async def test_clean_stop_acknowledges_everything_stored_so_nothing_is_redelivered(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    config = connector_for(topic_prefix)
    worker = await RunningWorker(settings, config).start()
    publisher = Publisher(mqtt_url)
    try:
        publisher.publish_all([chirpstack_up(topic_prefix, "70b3d50000000001", seq) for seq in range(300)])
        await until(lambda: _stored(db, 600), what="all stored")
    finally:
        await worker.stop()
    # Messages published while no worker runs wait in the persistent session.
    publisher.publish_all([chirpstack_up(topic_prefix, "70b3d50000000001", seq) for seq in range(300, 310)])
    publisher.close()
    again = await RunningWorker(settings, config).start()  # same client id: same session
    try:
        await until(lambda: _stored(db, 620), what="queued messages stored")
        await asyncio.sleep(0.5)
    finally:
        await again.stop()
    assert again.worker.source.received == 10  # nothing that was stored came back
    assert await count(db, "SELECT count(*) FROM observation") == 620


async def test_metrics_count_received_stored_and_rejected_by_reason(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    port = free_port()
    worker = await RunningWorker(settings, connector_for(topic_prefix)).start()
    worker.worker.metrics.serve(port)
    publisher = Publisher(mqtt_url)
    topic, event = chirpstack_up(topic_prefix, "70b3d50000000001", 1)
    try:
        publisher.publish_all(
            [(topic, event), (topic, event), (topic, b"nope"), (topic.replace("/up", "/join"), event)]
        )
        await until(lambda: worker.worker.source.acknowledged >= 4, what="all acknowledged")
        async with httpx.AsyncClient() as http:
            text = (await http.get(f"http://127.0.0.1:{port}/metrics")).text
    finally:
        publisher.close()
        await worker.stop()
    labels = '{connector="test-chirpstack-v4"}'
    assert f"territoire_ingest_messages_received_total{labels} 4.0" in text
    assert f"territoire_ingest_messages_acknowledged_total{labels} 4.0" in text
    assert f"territoire_ingest_observations_stored_total{labels} 2.0" in text
    assert f"territoire_ingest_observations_duplicate_total{labels} 2.0" in text
    assert 'territoire_ingest_messages_rejected_total{connector="test-chirpstack-v4",reason="invalid_json"} 1.0' in text
    assert 'territoire_ingest_messages_ignored_total{connector="test-chirpstack-v4",kind="chirpstack-join"} 1.0' in text
    assert "territoire_ingest_batch_seconds_count" in text
    assert f"territoire_ingest_lag_seconds{labels}" in text


async def _stored(db: asyncpg.Connection, expected: int) -> bool:
    return await count(db, "SELECT count(*) FROM observation") >= expected


async def test_a_device_that_moves_keeps_one_location_and_a_history(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    worker = await RunningWorker(settings, connector_for(topic_prefix)).start()
    publisher = Publisher(mqtt_url)
    eui = "70b3d50000000009"
    messages = []
    for seq, latitude in ((1, "47.2184"), (2, "47.2184"), (3, "47.2300")):
        topic, event = chirpstack_up(topic_prefix, eui, seq)
        event["deviceInfo"]["tags"]["latitude"] = latitude  # type: ignore[index]
        messages.append((topic, event))
    try:
        for done, message in enumerate(messages, start=1):  # one batch each, in order
            publisher.publish_all([message])
            await until(lambda n=done: worker.worker.source.acknowledged >= n, what="stored")
    finally:
        publisher.close()
        await worker.stop()
    assert await count(db, "SELECT count(*) FROM location") == 1
    assert await db.fetchval("SELECT ST_Y(geom) FROM location") == pytest.approx(47.23)
    assert await count(db, "SELECT count(*) FROM thing_location") == 1
    history = await db.fetch(
        "SELECT h.time, l.location_id IS NOT NULL AS linked FROM historical_location h "
        "LEFT JOIN location_historical_location l ON l.historical_location_id = h.id ORDER BY h.time"
    )
    assert len(history) == 2  # first position, then the move; the repeated position is not history
    assert all(row["linked"] for row in history)
    # a FeatureOfInterest per place it reported from: its observations before the move keep the first one
    features = await db.fetch(
        "SELECT o.phenomenon_time, ST_Y(f.geom) AS lat FROM observation o "
        "JOIN feature_of_interest f ON f.id = o.feature_of_interest_id ORDER BY 1, 2"
    )
    assert [round(r["lat"], 4) for r in features] == [47.2184] * 4 + [47.23] * 2  # two quantities a message
    assert await count(db, "SELECT count(*) FROM feature_of_interest") == 2
    area = await db.fetchval("SELECT ST_AsText(observed_area) FROM datastream LIMIT 1")
    assert "47.2184" in area and "47.23" in area  # the box spans both places
    # a new worker (nothing cached) and a message with no position: the place the device was last seen at
    again = await RunningWorker(settings, connector_for(topic_prefix)).start()
    publisher = Publisher(mqtt_url)
    topic, event = chirpstack_up(topic_prefix, eui, 4)
    event["deviceInfo"]["tags"] = {}  # type: ignore[index]
    try:
        publisher.publish_all([(topic, event)])
        await until(lambda: again.worker.source.acknowledged >= 1, what="stored")
    finally:
        publisher.close()
        await again.stop()
    last = await db.fetch(
        "SELECT DISTINCT ST_Y(f.geom) AS lat FROM observation o JOIN feature_of_interest f "
        "ON f.id = o.feature_of_interest_id WHERE o.phenomenon_time = (SELECT max(phenomenon_time) FROM observation)"
    )
    assert [round(r["lat"], 4) for r in last] == [47.23]
    assert await count(db, "SELECT count(*) FROM feature_of_interest") == 2  # the same feature, not a new one


async def test_a_message_the_database_refuses_becomes_a_dead_letter_and_its_batch_is_stored(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    worker = await RunningWorker(settings, connector_for(topic_prefix, batch_ms=300)).start()
    publisher = Publisher(mqtt_url)
    eui = "70b3d50000000001"
    refused = chirpstack_up(topic_prefix, eui, 2, label="a\u0000b")  # PostgreSQL text cannot hold NUL
    try:
        publisher.publish_all([chirpstack_up(topic_prefix, eui, 1), refused, chirpstack_up(topic_prefix, eui, 3)])
        await until(lambda: worker.worker.source.acknowledged >= 3, what="all acknowledged")
    finally:
        publisher.close()
        await worker.stop()
    assert await count(db, "SELECT count(*) FROM observation") == 4
    reasons = [r["reason"] for r in await db.fetch("SELECT reason FROM ingest_rejection")]
    assert len(reasons) == 1
    assert reasons[0].startswith("store_failed: ")


async def test_a_connector_naming_a_tabular_dataset_stops_with_a_clear_error(
    db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    await db.execute("INSERT INTO dataset (slug, kind, title) VALUES ('capteurs-test', 'table', 'Un tableau')")
    worker = MqttWorker(settings, connector_for(topic_prefix))
    with pytest.raises(ConfigurationError, match="not a sensors dataset"):
        await asyncio.wait_for(worker.run(asyncio.Event()), 30)
