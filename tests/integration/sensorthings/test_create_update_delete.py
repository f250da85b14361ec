"""Conformance class Create-Update-Delete (+ dataArray create): deep insert, links, cascades, the write rule."""

from __future__ import annotations

import base64

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from tests.conftest import make_key
from tests.integration.sensorthings.conftest import AUTH, BASE, OBSERVATION, create, get, thing_body

pytestmark = pytest.mark.db


async def test_writes_need_a_publisher_or_admin_key(sta: httpx.AsyncClient, engine: AsyncEngine) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic Zm9vOmJhcg=="}):
        response = await sta.post(f"{BASE}/Things", json={"name": "x", "description": ""}, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
    reader = {"X-API-Key": await make_key(engine, "reader")}
    response = await sta.post(f"{BASE}/Things", json={"name": "x"}, headers=reader)
    assert response.status_code == 403
    assert (await get(sta, "Things"))["value"] == []
    # FROST's client can only send HTTP Basic: the key goes as the password.
    basic = "Basic " + base64.b64encode(f"frost:{AUTH['Authorization'][7:]}".encode()).decode()
    response = await sta.post(f"{BASE}/Things", json={"name": "x"}, headers={"Authorization": basic})
    assert response.status_code == 201


async def test_deep_insert_creates_everything_in_one_post(sta: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    thing = await create(sta, "Things", thing_body(n_ds=2))
    counts = await db.fetchrow(
        "SELECT (SELECT count(*) FROM thing) t, (SELECT count(*) FROM location) l, (SELECT count(*) FROM datastream) d,"
        " (SELECT count(*) FROM sensor) s, (SELECT count(*) FROM observed_property) o,"
        " (SELECT count(*) FROM historical_location) h"
    )
    assert dict(counts) == {"t": 1, "l": 1, "d": 2, "s": 2, "o": 2, "h": 1}
    expanded = await get(
        sta, f"Things({thing['@iot.id']})", **{"$expand": "Datastreams($expand=Sensor,ObservedProperty)"}
    )
    assert {d["Sensor"]["name"] for d in expanded["Datastreams"]} == {
        "DHT22 Station Bellecour 0",
        "DHT22 Station Bellecour 1",
    }


async def test_link_by_id_and_validation(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams", **{"$expand": "Sensor,ObservedProperty"}))["value"][
        0
    ]
    second = await create(
        sta,
        "Datastreams",
        {
            "name": "humidity",
            "description": "",
            "unitOfMeasurement": {"symbol": "%"},
            "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
            "Thing": {"@iot.id": thing["@iot.id"]},
            "Sensor": {"@iot.id": ds["Sensor"]["@iot.id"]},
            "ObservedProperty": {"@iot.id": ds["ObservedProperty"]["@iot.id"]},
        },
    )
    assert (await get(sta, f"Datastreams({second['@iot.id']})/Thing"))["@iot.id"] == thing["@iot.id"]
    bad = [
        ({"name": "no links", "unitOfMeasurement": {}, "observationType": "x"}, 400),
        (
            {
                "name": "x",
                "unitOfMeasurement": {},
                "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                "Thing": {"@iot.id": 999},
                "Sensor": {"@iot.id": 1},
                "ObservedProperty": {"@iot.id": 1},
            },
            404,
        ),
        ({"name": 5, "unitOfMeasurement": {}}, 400),
        ({"name": "x", "bogus": 1}, 400),
    ]
    for body, status in bad:
        response = await sta.post(f"{BASE}/Datastreams", json=body, headers=AUTH)
        assert response.status_code == status, (body, response.text)
    assert (await sta.post(f"{BASE}/Things", content=b"{not json", headers=AUTH)).status_code == 400


async def test_observation_gets_a_feature_of_interest_from_the_location(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body(observation_type=OBSERVATION))
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    first = await create(
        sta, "Observations", {"result": 1, "phenomenonTime": "2026-11-01T00:00:00Z", "Datastream": {"@iot.id": ds}}
    )
    second = await create(
        sta, f"Datastreams({ds})/Observations", {"result": 2, "phenomenonTime": "2026-11-01T01:00:00Z"}
    )
    foi1 = await get(sta, f"Observations({first['@iot.id']})/FeatureOfInterest")
    foi2 = await get(sta, f"Observations({second['@iot.id']})/FeatureOfInterest")
    assert foi1["@iot.id"] == foi2["@iot.id"]
    assert foi1["feature"]["coordinates"] == [4.832, 45.757]
    dup = await sta.post(
        f"{BASE}/Datastreams({ds})/Observations",
        json={"result": 3, "phenomenonTime": "2026-11-01T01:00:00Z"},
        headers=AUTH,
    )
    assert dup.status_code == 409
    given = await create(
        sta,
        f"Datastreams({ds})/Observations",
        {
            "result": {"pm10": 12},
            "phenomenonTime": "2026-11-01T02:00:00Z/2026-11-01T03:00:00Z",
            "FeatureOfInterest": {
                "name": "street",
                "description": "",
                "encodingType": "application/geo+json",
                "feature": {"type": "Point", "coordinates": [4.8, 45.7]},
            },
        },
    )
    assert given["result"] == {"pm10": 12}
    assert given["phenomenonTime"] == "2026-11-01T02:00:00Z/2026-11-01T03:00:00Z"
    assert (await get(sta, f"Observations({given['@iot.id']})/FeatureOfInterest"))["name"] == "street"


async def test_patch_and_historical_location_on_location_change(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body())
    tid = thing["@iot.id"]
    response = await sta.patch(f"{BASE}/Things({tid})", json={"name": "renamed", "properties": {"a": 1}}, headers=AUTH)
    assert response.status_code == 200
    assert response.json()["name"] == "renamed"
    new_location = await create(
        sta,
        "Locations",
        {
            "name": "new place",
            "description": "",
            "encodingType": "application/geo+json",
            "location": {"type": "Point", "coordinates": [5, 45]},
        },
    )
    response = await sta.patch(
        f"{BASE}/Things({tid})", json={"Locations": [{"@iot.id": new_location["@iot.id"]}]}, headers=AUTH
    )
    assert response.status_code == 200
    assert [loc["name"] for loc in (await get(sta, f"Things({tid})/Locations"))["value"]] == ["new place"]
    history = await get(sta, f"Things({tid})/HistoricalLocations", **{"$expand": "Locations", "$orderby": "time"})
    assert [h["Locations"][0]["name"] for h in history["value"]] == ["Station Bellecour site", "new place"]
    moved = await sta.patch(
        f"{BASE}/Locations({new_location['@iot.id']})",
        json={"location": {"type": "Point", "coordinates": [6, 44]}},
        headers=AUTH,
    )
    assert moved.json()["location"]["coordinates"] == [6, 44]
    found = await get(sta, "Locations", **{"$filter": "st_equals(location, geography'POINT(6 44)')"})
    assert [loc["name"] for loc in found["value"]] == ["new place"]
    put = await sta.put(f"{BASE}/Things({tid})", json={"name": "put", "description": "d"}, headers=AUTH)
    assert put.status_code == 200
    assert put.json()["description"] == "d"
    assert (await sta.patch(f"{BASE}/Things(999)", json={"name": "x"}, headers=AUTH)).status_code == 404
    assert (await sta.patch(f"{BASE}/Datastreams(1)", json={"phenomenonTime": "x"}, headers=AUTH)).status_code == 400


async def test_delete_cascades(sta: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    obs = await create(sta, f"Datastreams({ds})/Observations", {"result": 1, "phenomenonTime": "2026-11-01T00:00:00Z"})
    foi = (await get(sta, f"Observations({obs['@iot.id']})/FeatureOfInterest"))["@iot.id"]
    assert (await sta.delete(f"{BASE}/FeaturesOfInterest({foi})", headers=AUTH)).status_code == 200
    assert (await sta.get(f"{BASE}/Observations({obs['@iot.id']})")).status_code == 404
    await create(sta, f"Datastreams({ds})/Observations", {"result": 2, "phenomenonTime": "2026-11-01T00:00:00Z"})
    assert (await sta.delete(f"{BASE}/Things({thing['@iot.id']})", headers=AUTH)).status_code == 200
    left = await db.fetchrow(
        "SELECT (SELECT count(*) FROM datastream) d, (SELECT count(*) FROM observation) o, "
        "(SELECT count(*) FROM historical_location) h, (SELECT count(*) FROM location) l"
    )
    assert dict(left) == {"d": 0, "o": 0, "h": 0, "l": 1}
    location = (await get(sta, "Locations"))["value"][0]["@iot.id"]
    assert (await sta.delete(f"{BASE}/Locations({location})", headers=AUTH)).status_code == 200
    assert (await sta.delete(f"{BASE}/Locations({location})", headers=AUTH)).status_code == 404


async def test_ref_links_add_and_remove(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", {"name": "t", "description": ""})
    loc = await create(
        sta,
        "Locations",
        {
            "name": "l",
            "description": "",
            "encodingType": "application/geo+json",
            "location": {"type": "Point", "coordinates": [1, 2]},
        },
    )
    response = await sta.post(
        f"{BASE}/Things({thing['@iot.id']})/Locations/$ref", json={"@iot.id": loc["@iot.id"]}, headers=AUTH
    )
    assert response.status_code == 204
    assert len((await get(sta, f"Things({thing['@iot.id']})/Locations"))["value"]) == 1
    assert len((await get(sta, f"Things({thing['@iot.id']})/HistoricalLocations"))["value"]) == 1
    response = await sta.delete(f"{BASE}/Things({thing['@iot.id']})/Locations({loc['@iot.id']})/$ref", headers=AUTH)
    assert response.status_code == 200
    assert (await get(sta, f"Things({thing['@iot.id']})/Locations"))["value"] == []


async def test_create_observations_data_array(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    body = [
        {
            "Datastream": {"@iot.id": ds},
            "components": ["phenomenonTime", "result", "resultTime"],
            "dataArray": [
                ["2026-11-01T00:00:00Z", 1, "2026-11-01T00:00:05Z"],
                ["2026-11-01T00:01:00Z", 2, None],
                ["2026-11-01T00:00:00Z", 3, None],
            ],
        }
    ]
    response = await sta.post(f"{BASE}/CreateObservations", json=body, headers=AUTH)
    assert response.status_code == 201
    links = response.json()
    assert links[0].startswith(f"http://testserver{BASE}/Observations(")
    assert links[2] == "error"
    assert (await get(sta, links[0].removeprefix(f"http://testserver{BASE}/")))["resultTime"] == "2026-11-01T00:00:05Z"
    bad = await sta.post(
        f"{BASE}/CreateObservations",
        json=[{"Datastream": {"@iot.id": ds}, "components": ["x"], "dataArray": [[1]]}],
        headers=AUTH,
    )
    assert bad.status_code == 400


async def test_create_observations_data_array_with_features_of_interest(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    foi = await create(
        sta,
        "FeaturesOfInterest",
        {
            "name": "f",
            "description": "",
            "encodingType": "application/geo+json",
            "feature": {"type": "Point", "coordinates": [1, 2]},
        },
    )
    fid = foi["@iot.id"]
    rows = [[f"2026-11-01T00:0{m}:00Z", m, fid if m % 2 else str(fid)] for m in range(4)]
    body = [{"Datastream": {"@iot.id": ds}, "components": ["phenomenonTime", "result", "FeatureOfInterest/id"]}]
    response = await sta.post(f"{BASE}/CreateObservations", json=[{**body[0], "dataArray": rows}], headers=AUTH)
    assert response.status_code == 201
    assert "error" not in response.json()
    observations = (await get(sta, f"FeaturesOfInterest({fid})/Observations"))["value"]
    assert sorted(o["result"] for o in observations) == [0, 1, 2, 3]
    for bad_foi, status in ((fid + 1000, 404), (True, 400), ({"@iot.id": fid}, 400)):
        rows = [["2026-11-02T00:00:00Z", 1, fid], ["2026-11-02T00:01:00Z", 2, bad_foi]]
        response = await sta.post(f"{BASE}/CreateObservations", json=[{**body[0], "dataArray": rows}], headers=AUTH)
        assert response.status_code == status, bad_foi


async def test_observations_without_feature_of_interest_share_the_one_made_from_the_location(
    sta: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    thing = await create(sta, "Things", thing_body(n_ds=2))
    streams = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"]
    features = set()
    for minute, stream in enumerate([*streams, *streams]):
        observation = await create(
            sta,
            "Observations",
            {
                "Datastream": {"@iot.id": stream["@iot.id"]},
                "phenomenonTime": f"2026-11-01T00:0{minute}:00Z",
                "result": 1,
            },
        )
        feature = await get(sta, f"Observations({observation['@iot.id']})/FeatureOfInterest")
        features.add(feature["@iot.id"])
        assert feature["feature"] == {"type": "Point", "coordinates": [4.832, 45.757]}
    assert len(features) == 1
    assert await db.fetchval("SELECT count(*) FROM feature_of_interest") == 1
