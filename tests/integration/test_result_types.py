"""Results checked against their Datastream's observationType on every write door (SensorThings 1.1, table 12).

Found by driving the platform with outside clients: a Datastream of type OM_TruthObservation took `900` and
`"n/a"` over HTTP and over MQTT. Each door is tried here with a result that fits and one that does not.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.observation_types import CATEGORY, COUNT, MEASUREMENT, OBSERVATION, TRUTH, result_problem
from territoire_data.sensorthings.mqtt import StaMqttBridge
from territoire_data.settings import Settings
from tests.integration.mqtt_helpers import Publisher, RunningWorker, chirpstack_up, connector_for, count, until
from tests.integration.sensorthings.conftest import (
    ADMIN_TOKEN,
    AUTH,
    BASE,
    Subscriber,
    app_client,
    create,
    get,
    multi_datastream_body,
    thing_body,
)

pytestmark = pytest.mark.db


@pytest.fixture
async def sta(settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    async with app_client(settings, engine) as http:
        yield http


async def _datastream(sta: httpx.AsyncClient, observation_type: str, name: str = "Station") -> int:
    thing = await create(sta, "Things", thing_body(name, observation_type=observation_type))
    return int((await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"])


def test_each_type_accepts_its_own_results_only() -> None:
    fits = {
        MEASUREMENT: [21.5, 0, -3, 1e300],
        COUNT: [0, 12, 3.0],
        TRUTH: [True, False],
        CATEGORY: ["calme", "http://vocab.example/agitation/calme", ""],
        OBSERVATION: [None, 1, "x", True, {"pm10": 1}, [1, 2]],
    }
    misfits = {
        MEASUREMENT: ["21.5", True, None, {"v": 1}, [1], float("nan"), float("inf")],
        COUNT: [2.5, "3", False, None],
        TRUTH: [900, "n/a", "true", 1, 0, None],
        CATEGORY: [3, True, None, ["a"], {"a": 1}],
        OBSERVATION: [],
    }
    for kind, values in fits.items():
        assert all(result_problem(kind, v) is None for v in values), kind
    for kind, values in misfits.items():
        for value in values:
            problem = result_problem(kind, value)
            assert problem is not None and kind.rsplit("/", 1)[1] in problem, (kind, value)


async def test_http_create_refuses_a_result_of_another_type(sta: httpx.AsyncClient) -> None:
    truth = await _datastream(sta, TRUTH, "Porte")
    for bad in (900, "n/a"):
        response = await sta.post(
            f"{BASE}/Datastreams({truth})/Observations",
            json={"phenomenonTime": "2026-11-01T00:00:00Z", "result": bad},
            headers=AUTH,
        )
        assert response.status_code == 400, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        assert "OM_TruthObservation result must be a boolean" in response.json()["detail"]
    # the same through the collection, naming the Datastream in the body
    response = await sta.post(
        f"{BASE}/Observations",
        json={"phenomenonTime": "2026-11-01T00:00:00Z", "result": "open", "Datastream": {"@iot.id": truth}},
        headers=AUTH,
    )
    assert response.status_code == 400
    await create(sta, f"Datastreams({truth})/Observations", {"phenomenonTime": "2026-11-01T00:00:00Z", "result": True})
    count_ds = await _datastream(sta, COUNT, "Compteur")
    assert (
        await sta.post(f"{BASE}/Datastreams({count_ds})/Observations", json={"result": 2.5}, headers=AUTH)
    ).status_code == 400
    await create(sta, f"Datastreams({count_ds})/Observations", {"result": 7})
    category = await _datastream(sta, CATEGORY, "Agitation")
    assert (
        await sta.post(f"{BASE}/Datastreams({category})/Observations", json={"result": 3}, headers=AUTH)
    ).status_code == 400
    await create(sta, f"Datastreams({category})/Observations", {"result": "calme"})
    assert [o["result"] for o in (await get(sta, "Observations", **{"$orderby": "id"}))["value"]] == [
        True,
        7,
        "calme",
    ]


async def test_http_update_keeps_results_and_types_consistent(sta: httpx.AsyncClient) -> None:
    measurement = await _datastream(sta, MEASUREMENT)
    observation = await create(sta, f"Datastreams({measurement})/Observations", {"result": 21.5})
    url = f"{BASE}/Observations({observation['@iot.id']})"
    assert (await sta.patch(url, json={"result": "n/a"}, headers=AUTH)).status_code == 400
    assert (await sta.patch(url, json={"result": 22}, headers=AUTH)).status_code == 200
    # moving it to a Datastream of booleans: its number does not fit there
    truth = await _datastream(sta, TRUTH, "Porte")
    moved = await sta.patch(url, json={"Datastream": {"@iot.id": truth}}, headers=AUTH)
    assert moved.status_code == 400 and "OM_TruthObservation" in moved.json()["detail"]
    # a Datastream's type changes only when what it holds fits the new one
    retyped = await sta.patch(f"{BASE}/Datastreams({measurement})", json={"observationType": TRUTH}, headers=AUTH)
    assert retyped.status_code == 400 and "1 of its Observations" in retyped.json()["detail"]
    assert (
        await sta.patch(f"{BASE}/Datastreams({measurement})", json={"observationType": COUNT}, headers=AUTH)
    ).status_code == 200
    assert (await get(sta, f"Datastreams({measurement})"))["observationType"] == COUNT
    # unknown observation types are refused when declared
    bad = await sta.patch(f"{BASE}/Datastreams({measurement})", json={"observationType": "x"}, headers=AUTH)
    assert bad.status_code == 400 and "not a SensorThings observation type" in bad.json()["detail"]
    body = thing_body("Autre", observation_type="OM_Nothing")
    assert (await sta.post(f"{BASE}/Things", json=body, headers=AUTH)).status_code == 400
    assert (await get(sta, "Things", **{"$filter": "name eq 'Autre'"}))["value"] == []  # nothing half-made


async def test_batch_and_create_observations_check_every_row(sta: httpx.AsyncClient) -> None:
    truth = await _datastream(sta, TRUTH, "Porte")
    batch = {
        "requests": [
            {"id": "ok", "method": "post", "url": f"Datastreams({truth})/Observations", "body": {"result": False}},
            {"id": "bad", "method": "post", "url": f"Datastreams({truth})/Observations", "body": {"result": 900}},
        ]
    }
    response = await sta.post(f"{BASE}/$batch", json=batch, headers=AUTH)
    replies = {r["id"]: r for r in response.json()["responses"]}
    assert replies["ok"]["status"] == 201
    assert replies["bad"]["status"] == 400
    body = [
        {
            "Datastream": {"@iot.id": truth},
            "components": ["phenomenonTime", "result"],
            "dataArray": [["2026-11-02T00:00:00Z", True], ["2026-11-02T01:00:00Z", "n/a"]],
        }
    ]
    response = await sta.post(f"{BASE}/CreateObservations", json=body, headers=AUTH)
    assert response.status_code == 400
    assert "dataArray[1]/result" in response.json()["detail"]
    # the whole request is refused: the good first row is not stored either
    assert len((await get(sta, f"Datastreams({truth})/Observations"))["value"]) == 1
    # a MultiDatastream checks each member against its own multiObservationDataTypes (null: not observed)
    mds = multi_datastream_body("Vent", properties=("speed", "gust"))
    mid = (await create(sta, "MultiDatastreams", mds))["@iot.id"]
    assert (
        await sta.post(f"{BASE}/MultiDatastreams({mid})/Observations", json={"result": [3.5, "fort"]}, headers=AUTH)
    ).status_code == 400
    await create(sta, f"MultiDatastreams({mid})/Observations", {"result": [3.5, None]})


@pytest.mark.mqtt
async def test_sensorthings_mqtt_create_keeps_the_refusal_with_its_reason(
    sta: httpx.AsyncClient, settings: Settings, db: asyncpg.Connection, topic_prefix: str
) -> None:
    bridge = StaMqttBridge(settings, topic_prefix=f"{topic_prefix}/")
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(bridge.run(stop, ready))
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.wait_for(bridge.is_publisher.wait(), 30)
    truth = await _datastream(sta, TRUTH, "Porte")
    topic = f"{topic_prefix}/v1.1/Datastreams({truth})/Observations"
    publisher = Subscriber(settings.mqtt_url, [f"{topic_prefix}/unused"])
    try:
        publisher.publish(topic, {"result": "n/a", "phenomenonTime": "2026-11-01T08:00:00Z"}, f"Bearer {ADMIN_TOKEN}")
        publisher.publish(topic, {"result": True, "phenomenonTime": "2026-11-01T09:00:00Z"}, f"Bearer {ADMIN_TOKEN}")
        await until(lambda: count(db, "SELECT count(*) FROM observation"), what="the good one stored")
        await until(lambda: count(db, "SELECT count(*) FROM ingest_rejection"), what="the bad one kept")
    finally:
        publisher.close()
        stop.set()
        await asyncio.wait_for(task, 30)
    reason = await db.fetchval("SELECT reason FROM ingest_rejection WHERE source = 'sta-mqtt'")
    assert "OM_TruthObservation result must be a boolean, not the string 'n/a'" in reason
    assert await count(db, "SELECT count(*) FROM observation") == 1


@pytest.mark.mqtt
async def test_ingest_connector_sends_a_misfit_to_the_dead_letters(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    worker = await RunningWorker(settings, connector_for(topic_prefix)).start()
    publisher = Publisher(mqtt_url)
    eui = "70b3d50000000042"
    try:
        # the first value makes the Datastream an OM_Measurement; a later "n/a" from the same device cannot join it
        publisher.publish_all([chirpstack_up(topic_prefix, eui, 1, temperature=21.5)])
        await until(lambda: worker.worker.source.acknowledged >= 1, what="first acknowledged")
        publisher.publish_all(
            [
                chirpstack_up(topic_prefix, eui, 2, temperature="n/a"),
                chirpstack_up(topic_prefix, eui, 3, temperature=22),
            ]
        )
        await until(lambda: worker.worker.source.acknowledged >= 3, what="three acknowledged")
    finally:
        publisher.close()
        await worker.stop()
    assert await count(db, "SELECT count(*) FROM observation") == 2
    row = await db.fetchrow("SELECT reason, payload FROM ingest_rejection")
    assert row["reason"].startswith("wrong_type: temperature: an OM_Measurement result must be a number")
    assert '"n/a"' in row["payload"]
    kinds: list[Any] = [r["observation_type"] for r in await db.fetch("SELECT observation_type FROM datastream")]
    assert kinds == [MEASUREMENT]
