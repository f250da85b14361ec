"""Conformance class Receive Updates via MQTT (section 14.2): every topic of the standard, whatever path wrote."""

from __future__ import annotations

import asyncio
import queue
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from territoire_data.sensorthings.mqtt import LOCK_KEY
from territoire_data.settings import Settings
from tests.integration.sensorthings.conftest import AUTH, BASE, Subscriber, create, get, thing_body

pytestmark = [pytest.mark.db, pytest.mark.mqtt]


async def _next(sub: Subscriber, wait: float = 10) -> tuple[str, dict[str, Any]]:
    return await asyncio.to_thread(sub.next, wait)


async def test_observations_stored_by_http_sql_and_copy_are_published(
    sta: httpx.AsyncClient, bridge: Any, db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    sub = Subscriber(
        settings.mqtt_url, [f"{topic_prefix}/v1.1/Datastreams({ds})/Observations", f"{topic_prefix}/v1.1/Observations"]
    )
    try:
        # 1. over HTTP
        created = await create(
            sta, f"Datastreams({ds})/Observations", {"result": 21.5, "phenomenonTime": "2026-11-01T10:00:00Z"}
        )
        got = {(await _next(sub))[0], (await _next(sub))[0]}
        assert got == {f"{topic_prefix}/v1.1/Datastreams({ds})/Observations", f"{topic_prefix}/v1.1/Observations"}
        # 2. a plain INSERT ... ON CONFLICT DO NOTHING, as the ingest worker's merge does (duplicates not re-sent)
        await db.execute(
            "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
            "SELECT $1, t::timestamptz, 1 FROM unnest($2::text[]) t "
            "ON CONFLICT (datastream_id, phenomenon_time) DO NOTHING",
            ds,
            ["2026-11-01T10:00:00Z", "2026-11-01T11:00:00Z"],
        )
        messages = [await _next(sub), await _next(sub)]
        body = messages[0][1]
        assert body["phenomenonTime"] == "2026-11-01T11:00:00Z"
        assert body["result"] == 1.0
        assert body["@iot.selfLink"].endswith(f"/Observations({body['@iot.id']})")
        assert body["Datastream@iot.navigationLink"].endswith("/Datastream")
        assert "MultiDatastream@iot.navigationLink" not in body  # an Observation of a Datastream has none
        assert body["@iot.id"] != created["@iot.id"]
        # 3. COPY, as the CSV connector does
        await db.copy_records_to_table(
            "observation",
            records=[(ds, datetime(2026, 11, 1, 12, tzinfo=UTC), 7.0)],
            columns=["datastream_id", "phenomenon_time", "result_number"],
        )
        _topic, body = await _next(sub)
        assert body["result"] == 7.0
        await _next(sub)
        with pytest.raises(queue.Empty):
            sub.next(timeout=0.5)
    finally:
        sub.close()
    assert bridge.published == 3


async def test_restricted_observations_are_not_published(
    sta: httpx.AsyncClient, bridge: Any, db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    dataset = await db.fetchval(
        "INSERT INTO dataset (slug, title, kind, access, status) "
        "VALUES ('s', 'S', 'sensors', 'restricted', 'published') RETURNING id"
    )
    await _idle(bridge)  # the Thing created above has reached its topics already
    handled = bridge.notifications_handled
    await db.execute("UPDATE datastream SET dataset_id = $1 WHERE id = $2", dataset, ds)
    sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/v1.1/#"])
    try:
        await db.execute(
            "INSERT INTO observation (datastream_id, phenomenon_time, result_number) VALUES ($1, now(), 1)", ds
        )
        for _ in range(100):  # the bridge has read (and withheld) both before the dataset opens
            if bridge.notifications_handled >= handled + 2:
                break
            await asyncio.sleep(0.05)
        assert bridge.published == 0
        await db.execute("UPDATE datastream SET dataset_id = NULL WHERE id = $1", ds)
        await db.execute(
            "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
            "VALUES ($1, now() - interval '1 minute', 2)",
            ds,
        )
        results = {(await _next(sub))[1]["result"] for _ in range(2)}
        assert results == {2.0}
        with pytest.raises(queue.Empty):
            sub.next(timeout=0.5)
    finally:
        sub.close()


async def _idle(bridge: Any) -> None:
    """Wait until the bridge has handled every notification so far (none new for half a second)."""
    seen, quiet = -1, 0
    while quiet < 10:
        await asyncio.sleep(0.05)
        now = bridge.notifications_handled
        quiet = quiet + 1 if now == seen and bridge._notifications.empty() else 0
        seen = now


async def test_sta_mqtt_command_publishes(sta: httpx.AsyncClient, sta_settings: Settings, settings: Settings) -> None:
    """The real `territoire-data sta-mqtt` process (no prefix: the standard's topics)."""
    import os
    import sys

    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    sub = Subscriber(settings.mqtt_url, [f"v1.1/Datastreams({ds})/Observations"])
    env = {**os.environ, "TERRITOIRE_DATABASE_URL": settings.database_url, "TERRITOIRE_MQTT_URL": settings.mqtt_url}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "territoire_data.cli", "sta-mqtt", env=env)
    try:
        held = 0
        for _ in range(300):  # until the process holds the publisher lock (30 s at most on a loaded machine)
            await asyncio.sleep(0.1)
            conn = await asyncpg.connect(settings.database_url)
            try:
                held = await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1 "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    LOCK_KEY,
                ) and await conn.fetchval(  # the bridge takes the lock, then LISTENs: wait for both
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
                )
            finally:
                await conn.close()
            if held:
                break
        assert held, "the sta-mqtt process did not take the publisher lock and LISTEN within 30 s"
        await create(sta, f"Datastreams({ds})/Observations", {"result": 3, "phenomenonTime": "2026-11-01T00:00:00Z"})
        topic, body = await _next(sub)
        assert topic == f"v1.1/Datastreams({ds})/Observations"
        assert body["result"] == 3.0
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        sub.close()


async def test_sta_mqtt_command_stops_at_once_while_waiting_for_its_broker(settings: Settings) -> None:
    """SIGTERM while the bridge still waits for an unreachable broker ends it at once (it waited 30 s before)."""
    import os
    import sys
    import time

    from tests.conftest import free_port

    env = {
        **os.environ,
        "TERRITOIRE_DATABASE_URL": settings.database_url,
        "TERRITOIRE_MQTT_URL": f"mqtt://127.0.0.1:{free_port()}",
    }
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "territoire_data.cli", "sta-mqtt", env=env)
    try:
        await asyncio.sleep(4)  # started, and trying to connect
        assert process.returncode is None
        process.terminate()
        began = time.monotonic()
        await asyncio.wait_for(process.wait(), 10)
        assert time.monotonic() - began < 3
        assert process.returncode == 0
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


# --- every entity type, entity and property topics, $select topics (section 14.2) --------------------------------


class Collected:
    """Messages of a Subscriber gathered by topic, waiting until the expected topics have arrived."""

    def __init__(self, sub: Subscriber, prefix: str) -> None:
        self.sub = sub
        self.prefix = prefix + "/"
        self.by_topic: dict[str, list[dict[str, Any]]] = {}

    async def until(self, *topics: str, wait: float = 15) -> dict[str, list[dict[str, Any]]]:
        deadline = asyncio.get_running_loop().time() + wait
        while not all(t in self.by_topic for t in topics):
            left = deadline - asyncio.get_running_loop().time()
            assert left > 0, f"missing {set(topics) - set(self.by_topic)}; got {sorted(self.by_topic)}"
            topic, body = await _next(self.sub, left)
            self.by_topic.setdefault(topic.removeprefix(self.prefix), []).append(body)
        return self.by_topic

    def quiet(self, timeout: float = 0.7) -> None:
        """Nothing more arrives (what must not be published was not)."""
        try:
            topic, _body = self.sub.next(timeout=timeout)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {topic}")


LOCATION = {
    "name": "Bellecour",
    "description": "place",
    "encodingType": "application/geo+json",
    "location": {"type": "Point", "coordinates": [4.832, 45.757]},
}


async def test_new_entities_reach_entity_set_and_navigation_topics(
    sta: httpx.AsyncClient, bridge: Any, settings: Settings, topic_prefix: str
) -> None:
    sets = ["Things", "Locations", "HistoricalLocations", "Sensors", "ObservedProperties", "Datastreams"]
    sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/v1.1/{name}" for name in sets])
    try:
        collected = Collected(sub, topic_prefix)
        thing = await create(sta, "Things", thing_body())
        got = await collected.until(*(f"v1.1/{name}" for name in sets))
        assert got["v1.1/Things"][0]["@iot.id"] == thing["@iot.id"]
        assert got["v1.1/Things"][0]["name"] == "Station Bellecour"
        assert got["v1.1/Things"][0]["@iot.selfLink"] == thing["@iot.selfLink"]
        assert got["v1.1/Locations"][0]["location"]["coordinates"] == [4.832, 45.757]
        assert got["v1.1/Datastreams"][0]["unitOfMeasurement"]["symbol"] == "°C"
        assert got["v1.1/HistoricalLocations"][0]["Thing@iot.navigationLink"].endswith("/Thing")
    finally:
        sub.close()
    tid = thing["@iot.id"]
    datastream = (await get(sta, f"Things({tid})/Datastreams", **{"$expand": "Sensor,ObservedProperty"}))["value"][0]
    sensor, prop = datastream["Sensor"]["@iot.id"], datastream["ObservedProperty"]["@iot.id"]
    location = await create(sta, "Locations", LOCATION)
    lid = location["@iot.id"]
    navigation = [
        f"v1.1/Things({tid})/Datastreams",
        f"v1.1/Sensors({sensor})/Datastreams",
        f"v1.1/ObservedProperties({prop})/Datastreams",
        f"v1.1/Things({tid})/Locations",
        f"v1.1/Locations({lid})/Things",
        f"v1.1/Things({tid})/HistoricalLocations",
        f"v1.1/Locations({lid})/HistoricalLocations",
        f"v1.1/Datastreams({datastream['@iot.id']})/Observations",
        "v1.1/FeaturesOfInterest",
    ]
    sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/{t}" for t in navigation])
    try:
        collected = Collected(sub, topic_prefix)
        new_ds = {
            **{k: datastream[k] for k in ("description", "unitOfMeasurement", "observationType")},
            "name": "second",
            "Sensor": {"@iot.id": sensor},
            "ObservedProperty": {"@iot.id": prop},
        }
        created = await create(sta, f"Things({tid})/Datastreams", new_ds)
        await sta.patch(f"{BASE}/Things({tid})", json={"Locations": [{"@iot.id": lid}]}, headers=AUTH)
        await create(sta, f"Datastreams({datastream['@iot.id']})/Observations", {"result": 1})
        got = await collected.until(*navigation)
        for topic in navigation[:3]:
            assert [d["@iot.id"] for d in got[topic]] == [created["@iot.id"]], topic
        assert got[f"v1.1/Things({tid})/Locations"][0]["@iot.id"] == lid
        assert got[f"v1.1/Locations({lid})/Things"][0]["@iot.id"] == tid
        history = got[f"v1.1/Things({tid})/HistoricalLocations"][0]
        assert got[f"v1.1/Locations({lid})/HistoricalLocations"][0]["@iot.id"] == history["@iot.id"]
        assert got["v1.1/FeaturesOfInterest"][0]["feature"]["type"] == "Point"  # made from the Location
    finally:
        sub.close()


async def test_entity_and_property_topics_on_update(
    sta: httpx.AsyncClient, bridge: Any, db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    thing = await create(sta, "Things", thing_body())
    tid = thing["@iot.id"]
    ds = (await get(sta, f"Things({tid})/Datastreams"))["value"][0]["@iot.id"]
    observation = await create(sta, f"Datastreams({ds})/Observations", {"result": 1, "phenomenonTime": "2026-01-01"})
    oid = observation["@iot.id"]
    topics = [
        f"v1.1/Things({tid})",
        f"v1.1/Things({tid})/name",
        f"v1.1/Things({tid})/description",
        f"v1.1/Things({tid})/properties",
        f"v1.1/Observations({oid})",
        f"v1.1/Observations({oid})/result",
        f"v1.1/Datastreams({ds})",
    ]
    sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/{t}" for t in topics])
    try:
        collected = Collected(sub, topic_prefix)
        response = await sta.patch(f"{BASE}/Things({tid})", json={"name": "renamed"}, headers=AUTH)
        assert response.status_code == 200
        got = await collected.until(f"v1.1/Things({tid})", f"v1.1/Things({tid})/name")
        assert got[f"v1.1/Things({tid})"][0]["name"] == "renamed"
        assert got[f"v1.1/Things({tid})"][0]["properties"] == {"owner": "Métropole de Lyon", "floors": 3}
        assert got[f"v1.1/Things({tid})/name"] == [{"name": "renamed"}]
        # by SQL, as another program would: the properties topic, and no message for what did not change
        await db.execute("UPDATE thing SET properties = '{\"floors\": 4}', name = name WHERE id = $1", tid)
        got = await collected.until(f"v1.1/Things({tid})/properties")
        assert got[f"v1.1/Things({tid})/properties"] == [{"properties": {"floors": 4}}]
        assert len(got[f"v1.1/Things({tid})/name"]) == 1
        await db.execute("UPDATE thing SET name = name WHERE id = $1", tid)  # nothing changes: nothing sent
        response = await sta.patch(f"{BASE}/Observations({oid})", json={"result": 2.5}, headers=AUTH)
        assert response.status_code == 200
        got = await collected.until(f"v1.1/Observations({oid})/result")
        assert got[f"v1.1/Observations({oid})/result"] == [{"result": 2.5}]
        assert got[f"v1.1/Observations({oid})"][0]["phenomenonTime"] == "2026-01-01T00:00:00Z"
        # new Observations move the Datastream's phenomenonTime: computed, not sent (the Observations are)
        await create(sta, f"Datastreams({ds})/Observations", {"result": 3, "phenomenonTime": "2026-02-01"})
        collected.quiet()
        assert f"v1.1/Things({tid})/description" not in collected.by_topic
        assert f"v1.1/Datastreams({ds})" not in collected.by_topic
    finally:
        sub.close()


async def _registered(bridge: Any, path: str) -> None:
    """Wait until the bridge has heard from the broker that someone subscribed to a `$select` topic of `path`."""
    for _ in range(100):
        if bridge.registry.selections(path):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"the bridge never heard of a $select subscription on {path}")


async def test_select_topics_publish_the_selected_properties(
    sta: httpx.AsyncClient, bridge: Any, settings: Settings, topic_prefix: str
) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    topics = [
        "v1.1/Observations?$select=result,phenomenonTime",
        f"v1.1/Datastreams({ds})/Observations?$select=id,result",
        "v1.1/Things?$select=name",
    ]
    await _idle(bridge)  # the Thing above has been published before anyone asked for this selection
    sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/{t}" for t in topics])
    try:
        for path in ("v1.1/Observations", f"v1.1/Datastreams({ds})/Observations", "v1.1/Things"):
            await _registered(bridge, path)
        collected = Collected(sub, topic_prefix)
        created = await create(
            sta, f"Datastreams({ds})/Observations", {"result": 42, "phenomenonTime": "2026-03-01T00:00:00Z"}
        )
        await create(sta, "Things", {"name": "another", "description": "x"})
        got = await collected.until(*topics)
        assert got[topics[0]] == [{"result": 42.0, "phenomenonTime": "2026-03-01T00:00:00Z"}]
        assert got[topics[1]] == [{"@iot.id": created["@iot.id"], "result": 42.0}]
        assert got[topics[2]] == [{"name": "another"}]
        sub.client.unsubscribe(f"{topic_prefix}/{topics[2]}")  # the last subscriber leaves: no more selection
        for _ in range(100):
            if not bridge.registry.selections("v1.1/Things"):
                break
            await asyncio.sleep(0.05)
        assert bridge.registry.selections("v1.1/Things") == []
        assert bridge.registry.selections("v1.1/Observations")
    finally:
        sub.close()


async def test_restricted_entities_are_never_published(
    sta: httpx.AsyncClient, bridge: Any, db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    dataset = await db.fetchval(
        "INSERT INTO dataset (slug, title, kind, access, status) "
        "VALUES ('r', 'R', 'sensors', 'restricted', 'published') RETURNING id"
    )
    sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/v1.1/#"])
    try:
        collected = Collected(sub, topic_prefix)
        hidden = await db.fetchval(
            "INSERT INTO thing (name, description, dataset_id) VALUES ('hidden', '', $1) RETURNING id", dataset
        )
        async with db.transaction():  # a Location of the hidden Thing only: hidden too
            location = await db.fetchval(
                "INSERT INTO location (name, description, encoding_type, location, geom) VALUES "
                "('secret spot', '', 'application/geo+json', '{\"type\": \"Point\", \"coordinates\": [1, 2]}', "
                "ST_SetSRID(ST_MakePoint(1, 2), 4326)) RETURNING id"
            )
            await db.execute("INSERT INTO thing_location (thing_id, location_id) VALUES ($1, $2)", hidden, location)
        await db.execute("UPDATE thing SET name = 'still hidden' WHERE id = $1", hidden)
        await db.execute("UPDATE location SET name = 'secret too' WHERE id = $1", location)
        # a public Thing afterwards: once it arrives, the bridge has handled (and withheld) all the above
        public = await create(sta, "Things", {"name": "public", "description": ""})
        got = await collected.until("v1.1/Things")
        assert [t["@iot.id"] for t in got["v1.1/Things"]] == [public["@iot.id"]]
        collected.quiet()
        assert set(collected.by_topic) == {"v1.1/Things"}
    finally:
        sub.close()


async def test_entity_notifications_split_big_statements_and_skip_bulk_ones(db: asyncpg.Connection) -> None:
    """What the triggers send (migration 0003_stagaps): every id within pg_notify's size, or `*` past 10,000 rows."""
    payloads: list[str] = []

    def listen(_conn: object, _pid: int, _channel: str, payload: str) -> None:
        payloads.append(payload)

    await db.add_listener("sta_entity", listen)  # this session's own notifications reach it too
    try:
        await db.execute(
            "INSERT INTO sensor (name, description, encoding_type, metadata) "
            "SELECT 'sensor ' || i, '', 'application/pdf', 'm' FROM generate_series(1, 3000) i"
        )
        await db.execute("UPDATE sensor SET metadata = 'changed' WHERE id <= 1500")
        await db.execute("UPDATE sensor SET metadata = metadata")  # nothing changes: nothing sent
        await db.execute(
            "INSERT INTO sensor (name, description, encoding_type, metadata) "
            "SELECT 'bulk ' || i, '', 'application/pdf', 'm' FROM generate_series(1, 10001) i"
        )
        await db.execute("UPDATE sensor SET name = name || '!'")
        await asyncio.sleep(0.2)
    finally:
        await db.remove_listener("sta_entity", listen)
    created = [p for p in payloads if p.startswith("Sensor|C|")]
    assert all(len(p) < 8000 for p in payloads) and len(created) > 1
    ids = [int(i) for p in created if not p.endswith("|*") for i in p.split("|")[2].split(",")]
    assert ids == list(range(1, 3001))
    assert "Sensor|C|*" in payloads
    updated = [p for p in payloads if p.startswith("Sensor|U|")]
    items = [i for p in updated if not p.endswith("|*") for i in p.split("|")[2].split(",")]
    assert items == [f"{i}:metadata" for i in range(1, 1501)]
    assert updated[-1] == "Sensor|U|*"
