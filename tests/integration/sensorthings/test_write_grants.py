"""SensorThings writes follow the dataset grants (a publisher changes only what its datasets hold) and every
create/update/delete is in the audit trail, one event per request, over HTTP, $batch and MQTT."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.settings import Settings
from tests.catalog_helpers import mark_published
from tests.conftest import make_key
from tests.integration.sensorthings.conftest import AUTH, BASE, Subscriber, thing_body

pytestmark = pytest.mark.db


async def _datasets(http: httpx.AsyncClient) -> None:
    for slug, access in (("mine", "public"), ("theirs", "public"), ("hidden", "restricted")):
        response = await http.post(
            "/api/v1/datasets", json={"slug": slug, "title": slug, "kind": "sensors", "access": access}, headers=AUTH
        )
        assert response.status_code == 201, response.text
    await mark_published("mine", "theirs", "hidden")


def _key(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def _thing(http: httpx.AsyncClient, headers: dict[str, str], dataset: str | None, name: str) -> dict[str, Any]:
    body = thing_body(name)
    if dataset is not None:
        body["@territoire.dataset"] = dataset
    response = await http.post(f"{BASE}/Things", json=body, headers=headers)
    assert response.status_code == 201, response.text
    thing: dict[str, Any] = response.json()
    streams = (await http.get(f"{BASE}/Things({thing['@iot.id']})/Datastreams", headers=headers)).json()["value"]
    thing["datastream"] = streams[0]["@iot.id"]
    return thing


async def test_a_publisher_writes_only_the_entities_of_its_datasets(
    sta: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    await _datasets(sta)
    mine = _key(await make_key(engine, "publisher", [("mine", "write")]))
    nobody = _key(await make_key(engine, "publisher"))
    # A new Thing joins the dataset it names, or the only one its key writes.
    own = await _thing(sta, mine, "mine", "own")
    implicit = await _thing(sta, mine, None, "implicit")
    ids = await db.fetch(
        "SELECT dataset_id FROM thing WHERE id = ANY($1::bigint[])", [own["@iot.id"], implicit["@iot.id"]]
    )
    mine_id = await db.fetchval("SELECT id FROM dataset WHERE slug = 'mine'")
    assert {r[0] for r in ids} == {mine_id}
    assert await db.fetchval("SELECT dataset_id FROM datastream WHERE id = $1", own["datastream"]) == mine_id
    for headers, dataset, status in (
        (mine, "theirs", 403),  # visible, not writable
        (mine, "hidden", 404),  # restricted and not granted: as if missing
        (mine, "nope", 404),
        (nobody, "mine", 403),
        (nobody, None, 403),  # no dataset to put it in
    ):
        body = {**thing_body("x"), **({"@territoire.dataset": dataset} if dataset else {})}
        response = await sta.post(f"{BASE}/Things", json=body, headers=headers)
        assert response.status_code == status, (dataset, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    theirs = await _thing(sta, AUTH, "theirs", "theirs")
    orphan = await _thing(sta, AUTH, None, "of no dataset")  # an admin may leave the dataset out: public, admin-only
    observation = {"phenomenonTime": "2026-11-01T00:00:00Z", "result": 1}
    refused = [
        sta.patch(f"{BASE}/Things({theirs['@iot.id']})", json={"name": "x"}, headers=mine),
        sta.delete(f"{BASE}/Things({theirs['@iot.id']})", headers=mine),
        sta.patch(f"{BASE}/Things({orphan['@iot.id']})", json={"name": "x"}, headers=mine),
        sta.post(f"{BASE}/Datastreams({theirs['datastream']})/Observations", json=observation, headers=mine),
        sta.post(
            f"{BASE}/Observations", json={**observation, "Datastream": {"@iot.id": theirs["datastream"]}}, headers=mine
        ),
        sta.post(
            f"{BASE}/CreateObservations",
            json=[{"Datastream": {"@iot.id": theirs["datastream"]}, "components": ["result"], "dataArray": [[1]]}],
            headers=mine,
        ),
        # moving its own Datastream under their Thing would write into their dataset
        sta.patch(
            f"{BASE}/Datastreams({own['datastream']})", json={"Thing": {"@iot.id": theirs["@iot.id"]}}, headers=mine
        ),
        sta.post(
            f"{BASE}/Things({theirs['@iot.id']})/Datastreams/$ref", json={"@iot.id": own["datastream"]}, headers=mine
        ),
        sta.patch(f"{BASE}/Things({own['@iot.id']})", json={"name": "x"}, headers=nobody),
    ]
    for response in await asyncio.gather(*refused):
        assert response.status_code == 403, response.text
    assert await db.fetchval("SELECT count(*) FROM observation") == 0
    assert await db.fetchval("SELECT name FROM thing WHERE id = $1", theirs["@iot.id"]) == "theirs"
    # what it may write, it writes
    allowed = await sta.patch(f"{BASE}/Things({own['@iot.id']})", json={"name": "renamed"}, headers=mine)
    assert allowed.status_code == 200
    posted = await sta.post(f"{BASE}/Datastreams({own['datastream']})/Observations", json=observation, headers=mine)
    assert posted.status_code == 201
    # a Sensor shared with their Datastream belongs to both datasets: only an admin changes it
    sensor = (await sta.get(f"{BASE}/Datastreams({own['datastream']})/Sensor")).json()["@iot.id"]
    linked = await sta.patch(
        f"{BASE}/Datastreams({theirs['datastream']})", json={"Sensor": {"@iot.id": sensor}}, headers=AUTH
    )
    assert linked.status_code == 200
    assert (await sta.patch(f"{BASE}/Sensors({sensor})", json={"name": "x"}, headers=mine)).status_code == 403
    other_sensor = (await sta.get(f"{BASE}/Datastreams({implicit['datastream']})/Sensor")).json()["@iot.id"]
    assert (await sta.patch(f"{BASE}/Sensors({other_sensor})", json={"name": "y"}, headers=mine)).status_code == 200
    deleted = await sta.delete(f"{BASE}/Things({implicit['@iot.id']})", headers=mine)
    assert deleted.status_code == 200
    # $batch: each request is judged on its own
    batch = await sta.post(
        f"{BASE}/$batch",
        json={
            "requests": [
                {
                    "id": "a",
                    "method": "post",
                    "url": f"Datastreams({own['datastream']})/Observations",
                    "body": {"phenomenonTime": "2026-11-02T00:00:00Z", "result": 2},
                },
                {
                    "id": "b",
                    "method": "post",
                    "url": f"Datastreams({theirs['datastream']})/Observations",
                    "body": {"phenomenonTime": "2026-11-02T00:00:00Z", "result": 2},
                },
            ]
        },
        headers=mine,
    )
    assert [r["status"] for r in batch.json()["responses"]] == [201, 403]


async def _events(db: asyncpg.Connection, since: int = 0) -> list[dict[str, Any]]:
    rows = await db.fetch(
        "SELECT id, actor, action, target_type, target_id, host(remote_addr) AS remote, details::text AS details "
        "FROM audit_event WHERE id > $1 AND action LIKE 'sta.%' ORDER BY id",
        since,
    )
    return [{**dict(r), "details": orjson.loads(r["details"])} for r in rows]


async def test_every_write_is_audited_once_with_who_what_and_where(
    sta: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    await _datasets(sta)
    key = await make_key(engine, "publisher", [("mine", "write")])
    mine = _key(key)
    actor = f"key:{key.split('_')[1]}"
    mine_id = await db.fetchval("SELECT id FROM dataset WHERE slug = 'mine'")
    thing = await _thing(sta, mine, "mine", "audited")
    [created] = await _events(db)
    assert created["actor"] == actor
    assert (created["action"], created["target_type"], created["target_id"]) == (
        "sta.create",
        "Thing",
        str(thing["@iot.id"]),
    )
    assert created["remote"] == "127.0.0.1"
    assert created["details"]["via"] == "http"
    assert created["details"]["created"] == {
        "Thing": 1,
        "Location": 1,
        "Datastream": 1,
        "Sensor": 1,
        "ObservedProperty": 1,
    }
    assert created["details"]["datasets"] == [mine_id]
    last = created["id"]
    # 10,000 observations in one dataArray request: one event that counts them
    start = 1_790_000_000  # 2026-09-21: one observation a second
    data = [[_iso(start + i), float(i)] for i in range(10_000)]
    response = await sta.post(
        f"{BASE}/CreateObservations",
        json=[
            {
                "Datastream": {"@iot.id": thing["datastream"]},
                "components": ["phenomenonTime", "result"],
                "dataArray": data,
            }
        ],
        headers=mine,
    )
    assert response.status_code == 201, response.text
    assert await db.fetchval("SELECT count(*) FROM observation") == 10_000
    [bulk] = await _events(db, last)
    assert bulk["action"] == "sta.create"
    assert bulk["details"]["created"] == {"Observation": 10_000}
    last = bulk["id"]
    await sta.patch(f"{BASE}/Things({thing['@iot.id']})", json={"name": "renamed"}, headers=mine)
    loc = await sta.post(f"{BASE}/Locations", json=thing_body()["Locations"][0], headers=mine)
    await sta.post(
        f"{BASE}/Things({thing['@iot.id']})/Locations/$ref", json={"@iot.id": loc.json()["@iot.id"]}, headers=mine
    )
    await sta.post(
        f"{BASE}/$batch",
        json={"requests": [{"id": "1", "method": "delete", "url": f"Datastreams({thing['datastream']})"}]},
        headers=mine,
    )
    refused = await sta.patch(
        f"{BASE}/Things({thing['@iot.id']})", json={"name": "x"}, headers=_key(await make_key(engine, "publisher"))
    )
    assert refused.status_code == 403
    events = await _events(db, last)
    assert [(e["action"], e["target_type"], e["details"]["via"]) for e in events] == [
        ("sta.update", "Thing", "http"),
        ("sta.create", "Location", "http"),
        ("sta.link", "Thing", "http"),
        ("sta.delete", "Datastream", "batch"),
    ]
    assert {e["actor"] for e in events} == {actor}


def _iso(epoch: int) -> str:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@pytest.mark.mqtt
async def test_mqtt_creates_are_audited_and_need_a_write_grant(
    sta: httpx.AsyncClient,
    bridge: Any,
    db: asyncpg.Connection,
    engine: AsyncEngine,
    settings: Settings,
    topic_prefix: str,
) -> None:
    await _datasets(sta)
    key = await make_key(engine, "publisher", [("mine", "write")])
    own = await _thing(sta, AUTH, "mine", "own")
    theirs = await _thing(sta, AUTH, "theirs", "theirs")
    sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/v1.1/#"])
    try:
        for ds in (theirs["datastream"], own["datastream"]):
            sub.publish(
                f"{topic_prefix}/v1.1/Datastreams({ds})/Observations",
                {"result": 5, "phenomenonTime": "2026-11-01T08:00:00Z"},
                f"Bearer {key}",
            )
        for _ in range(200):
            if (
                await db.fetchval("SELECT count(*) FROM observation")
                + await db.fetchval("SELECT count(*) FROM ingest_rejection")
                >= 2
            ):
                break
            await asyncio.sleep(0.05)
    finally:
        sub.close()
    assert await db.fetchval("SELECT datastream_id FROM observation") == own["datastream"]
    reason = await db.fetchval("SELECT reason FROM ingest_rejection WHERE source = 'sta-mqtt'")
    assert "write grant" in reason
    events = [e for e in await _events(db) if e["details"]["via"] == "mqtt"]
    assert len(events) == 1
    assert events[0]["actor"] == f"key:{key.split('_')[1]}"
    assert (events[0]["action"], events[0]["target_type"]) == ("sta.create", "Observation")
    assert events[0]["details"]["path"].endswith(f"v1.1/Datastreams({own['datastream']})/Observations")
