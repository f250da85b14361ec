"""Conformance class MultiDatastream (OGC 18-088 section 14.3, req/multi-datastream): MultiDatastreams with their
ordered ObservedProperties, Observations whose result is an array, reads, writes, dataArray, batch, MQTT; and
`Prefer: return=minimal` on creates."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.settings import Settings
from tests.catalog_helpers import mark_published
from tests.conftest import make_key
from tests.integration.sensorthings.conftest import (
    ADMIN_TOKEN,
    AUTH,
    BASE,
    COMPLEX,
    MEASUREMENT,
    OBSERVATION,
    Subscriber,
    create,
    get,
    multi_datastream_body,
    thing_body,
)

pytestmark = pytest.mark.db


async def _post(http: httpx.AsyncClient, path: str, body: Any, **headers: str) -> httpx.Response:
    return await http.post(f"{BASE}/{path}", json=body, headers={**AUTH, **headers})


async def _observe(http: httpx.AsyncClient, mds: int, hour: int, result: list[Any]) -> dict[str, Any]:
    return await create(
        http,
        f"MultiDatastreams({mds})/Observations",
        {"phenomenonTime": f"2026-11-01T{hour:02d}:00:00Z", "result": result},
    )


async def test_deep_insert_and_navigation_both_ways(sta: httpx.AsyncClient) -> None:
    mds = await create(sta, "MultiDatastreams", multi_datastream_body())
    mid = mds["@iot.id"]
    assert mds["observationType"] == COMPLEX
    assert mds["multiObservationDataTypes"] == [MEASUREMENT, OBSERVATION]
    assert [u["name"] for u in mds["unitOfMeasurements"]] == ["speed", "direction"]
    assert mds["properties"] == {"height": 10}
    assert mds["phenomenonTime"] is None
    for rel in ("Thing", "Sensor", "ObservedProperties", "Observations"):
        assert mds[f"{rel}@iot.navigationLink"] == f"http://testserver{BASE}/MultiDatastreams({mid})/{rel}"
    thing = await get(sta, f"MultiDatastreams({mid})/Thing")
    assert thing["name"] == "Wind mast"
    assert thing["MultiDatastreams@iot.navigationLink"].endswith(f"Things({thing['@iot.id']})/MultiDatastreams")
    assert [m["@iot.id"] for m in (await get(sta, f"Things({thing['@iot.id']})/MultiDatastreams"))["value"]] == [mid]
    sensor = await get(sta, f"MultiDatastreams({mid})/Sensor")
    assert [m["@iot.id"] for m in (await get(sta, f"Sensors({sensor['@iot.id']})/MultiDatastreams"))["value"]] == [mid]
    props = (await get(sta, f"MultiDatastreams({mid})/ObservedProperties"))["value"]
    assert [p["name"] for p in props] == ["Wind speed", "Wind direction"]
    for prop in props:
        back = await get(sta, f"ObservedProperties({prop['@iot.id']})/MultiDatastreams")
        assert [m["@iot.id"] for m in back["value"]] == [mid]
    assert (await get(sta, f"MultiDatastreams({mid})/name")) == {"name": "Wind"}
    raw = await sta.get(f"{BASE}/MultiDatastreams({mid})/unitOfMeasurements")
    assert raw.json()["unitOfMeasurements"][1]["symbol"] == "d"
    refs = await get(sta, f"MultiDatastreams({mid})/ObservedProperties/$ref")
    assert [r["@iot.selfLink"] for r in refs["value"]] == [p["@iot.selfLink"] for p in props]


async def test_observed_properties_keep_their_order_not_their_ids(sta: httpx.AsyncClient) -> None:
    """result[i] is the value of the i-th ObservedProperty: the order given at creation, whatever the ids."""
    first = await create(sta, "ObservedProperties", {"name": "A", "definition": "a", "description": "a"})
    second = await create(sta, "ObservedProperties", {"name": "B", "definition": "b", "description": "b"})
    body = multi_datastream_body(properties=("b", "a", "c"))
    body["ObservedProperties"] = [
        {"@iot.id": second["@iot.id"]},
        {"@iot.id": first["@iot.id"]},
        body["ObservedProperties"][2],
    ]
    mid = (await create(sta, "MultiDatastreams", body))["@iot.id"]
    listed = await get(sta, f"MultiDatastreams({mid})/ObservedProperties")
    assert [p["name"] for p in listed["value"]] == ["B", "A", "Wind c"]
    expanded = await get(sta, "MultiDatastreams", **{"$expand": "ObservedProperties($select=name)"})
    assert [p["name"] for p in expanded["value"][0]["ObservedProperties"]] == ["B", "A", "Wind c"]
    by_name = await get(sta, f"MultiDatastreams({mid})/ObservedProperties", **{"$orderby": "name"})
    assert [p["name"] for p in by_name["value"]] == ["A", "B", "Wind c"]


async def test_sizes_must_agree_or_400(sta: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    base = multi_datastream_body()
    for change in (
        {"unitOfMeasurements": base["unitOfMeasurements"][:1]},
        {"multiObservationDataTypes": [*base["multiObservationDataTypes"], MEASUREMENT]},
        {"ObservedProperties": base["ObservedProperties"][:1]},
        {"ObservedProperties": []},
        {"observationType": MEASUREMENT},
        {"unitOfMeasurements": {"name": "speed"}},
        {"multiObservationDataTypes": [1, 2]},
    ):
        response = await _post(sta, "MultiDatastreams", {**base, **change})
        assert response.status_code == 400, (change, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    missing = {k: v for k, v in base.items() if k != "ObservedProperties"}
    assert (await _post(sta, "MultiDatastreams", missing)).status_code == 400
    speed = await create(sta, "ObservedProperties", {"name": "speed", "definition": "s", "description": "s"})
    twice = {**base, "ObservedProperties": [{"@iot.id": speed["@iot.id"]}] * 2}
    response = await _post(sta, "MultiDatastreams", twice)
    assert response.status_code == 400 and "twice" in response.text
    unknown = {**base, "ObservedProperties": [{"@iot.id": speed["@iot.id"]}, {"@iot.id": speed["@iot.id"] + 99}]}
    assert (await _post(sta, "MultiDatastreams", unknown)).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM multi_datastream") == 0  # nothing half-created
    assert await db.fetchval("SELECT count(*) FROM thing") == 0
    without_type = {k: v for k, v in base.items() if k != "observationType"}
    assert (await create(sta, "MultiDatastreams", without_type))["observationType"] == COMPLEX


async def test_observations_have_one_result_per_observed_property(
    sta: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    mid = (await create(sta, "MultiDatastreams", multi_datastream_body(thing={"@iot.id": thing["@iot.id"]})))["@iot.id"]
    first = await _observe(sta, mid, 1, [3.5, "NNE"])
    assert first["result"] == [3.5, "NNE"]
    assert first["MultiDatastream@iot.navigationLink"].endswith(f"Observations({first['@iot.id']})/MultiDatastream")
    # on the entity set, naming the MultiDatastream; the FeatureOfInterest comes from the Thing's Location
    second = await create(
        sta,
        "Observations",
        {"phenomenonTime": "2026-11-01T02:00:00Z", "result": [4, None], "MultiDatastream": {"@iot.id": mid}},
    )
    foi = await get(sta, f"Observations({second['@iot.id']})/FeatureOfInterest")
    assert foi["feature"]["type"] == "Point"
    assert (await get(sta, f"Observations({second['@iot.id']})/MultiDatastream"))["@iot.id"] == mid
    assert (await sta.get(f"{BASE}/Observations({second['@iot.id']})/Datastream")).status_code == 404
    for bad in (
        {"result": [1]},  # one value for two properties
        {"result": [1, 2, 3]},
        {"result": 1},
        {"result": [1, 2], "Datastream": {"@iot.id": ds}},  # both parents
    ):
        response = await _post(sta, f"MultiDatastreams({mid})/Observations", bad)
        assert response.status_code == 400, (bad, response.text)
    assert (await _post(sta, "Observations", {"result": [1, 2]})).status_code == 400  # no parent at all
    # the same instant twice is a conflict, as for Datastreams
    again = await _post(
        sta, f"MultiDatastreams({mid})/Observations", {"phenomenonTime": "2026-11-01T01:00:00Z", "result": [0, "S"]}
    )
    assert again.status_code == 409
    # the extent of the MultiDatastream follows its Observations; the Datastream's Observations are apart
    mds = await get(sta, f"MultiDatastreams({mid})")
    assert mds["phenomenonTime"] == "2026-11-01T01:00:00Z/2026-11-01T02:00:00Z"
    assert (await get(sta, f"Datastreams({ds})/Observations"))["value"] == []
    await create(sta, f"Datastreams({ds})/Observations", {"phenomenonTime": "2026-11-01T03:00:00Z", "result": 7})
    every = await get(sta, "Observations", **{"$orderby": "phenomenonTime desc", "$count": "true"})
    assert every["@iot.count"] == 3
    assert [o["result"] for o in every["value"]] == [7, [4, None], [3.5, "NNE"]]
    # a navigationLink leads to an entity: an Observation has the one of its Datastream or MultiDatastream only
    links = [{k for k in o if k.endswith("@iot.navigationLink")} for o in every["value"]]
    assert links == [
        {"Datastream@iot.navigationLink", "FeatureOfInterest@iot.navigationLink"},
        {"MultiDatastream@iot.navigationLink", "FeatureOfInterest@iot.navigationLink"},
        {"MultiDatastream@iot.navigationLink", "FeatureOfInterest@iot.navigationLink"},
    ]
    in_datastream = (await get(sta, f"Datastreams({ds})/Observations"))["value"][0]
    assert "MultiDatastream@iot.navigationLink" not in in_datastream
    assert in_datastream["Datastream@iot.navigationLink"].endswith(
        f"Observations({in_datastream['@iot.id']})/Datastream"
    )
    assert await db.fetchval("SELECT count(*) FROM observation") == 1
    assert await db.fetchval("SELECT count(*) FROM multi_observation") == 2
    # ids are one sequence: no Observation id names two rows
    ids = [o["@iot.id"] for o in every["value"]]
    assert len(set(ids)) == 3


async def test_query_options_over_multi_datastreams(sta: httpx.AsyncClient) -> None:
    wind = (await create(sta, "MultiDatastreams", multi_datastream_body("Wind")))["@iot.id"]
    air = (await create(sta, "MultiDatastreams", multi_datastream_body("Air", properties=("no2", "o3", "pm10"))))[
        "@iot.id"
    ]
    await _observe(sta, wind, 1, [3.5, 20])
    await _observe(sta, wind, 2, [5.5, 40])
    await _observe(sta, air, 1, [10, 20, 30])
    page = await get(sta, "MultiDatastreams", **{"$orderby": "name desc", "$count": "true", "$top": "1"})
    assert page["@iot.count"] == 2
    assert [m["name"] for m in page["value"]] == ["Wind"]
    assert "MultiDatastreams?" in page["@iot.nextLink"]
    selected = await get(sta, f"MultiDatastreams({air})", **{"$select": "name,unitOfMeasurements"})
    assert set(selected) == {"name", "unitOfMeasurements"}
    assert len(selected["unitOfMeasurements"]) == 3
    by_prop = await get(sta, "MultiDatastreams", **{"$filter": "ObservedProperties/name eq 'Air o3'"})
    assert [m["@iot.id"] for m in by_prop["value"]] == [air]
    by_thing = await get(sta, "MultiDatastreams", **{"$filter": "Thing/name eq 'Wind mast'"})
    assert [m["@iot.id"] for m in by_thing["value"]] == [wind]
    by_props = await get(sta, "MultiDatastreams", **{"$filter": "properties/height eq 10", "$orderby": "id"})
    assert [m["@iot.id"] for m in by_props["value"]] == [wind, air]
    things = await get(sta, "Things", **{"$filter": "MultiDatastreams/name eq 'Air'"})
    assert [t["name"] for t in things["value"]] == ["Air mast"]
    observations = await get(
        sta, "Observations", **{"$filter": "MultiDatastream/name eq 'Wind'", "$orderby": "phenomenonTime desc"}
    )
    assert [o["result"] for o in observations["value"]] == [[5.5, 40], [3.5, 20]]
    expanded = await get(
        sta,
        f"MultiDatastreams({wind})",
        **{
            "$expand": "Thing($select=name),Sensor,ObservedProperties,"
            "Observations($orderby=phenomenonTime desc;$top=1;$count=true)"
        },
    )
    assert expanded["Thing"] == {"name": "Wind mast"}
    assert expanded["Sensor"]["name"] == "Wind sensor"
    assert [p["name"] for p in expanded["ObservedProperties"]] == ["Wind speed", "Wind direction"]
    assert expanded["Observations@iot.count"] == 2
    assert [o["result"] for o in expanded["Observations"]] == [[5.5, 40]]
    assert "Observations@iot.nextLink" in expanded
    from_things = await get(sta, "Things", **{"$expand": "MultiDatastreams($select=name)", "$orderby": "id"})
    assert [t["MultiDatastreams"] for t in from_things["value"]] == [[{"name": "Wind"}], [{"name": "Air"}]]
    back = await get(sta, "Observations", **{"$expand": "MultiDatastream($select=name),Datastream", "$orderby": "id"})
    assert [o["MultiDatastream"]["name"] for o in back["value"]] == ["Wind", "Wind", "Air"]
    assert all("Datastream" not in o for o in back["value"])
    by_member = await get(sta, "Observations", **{"$filter": "result/1 ge 30", "$orderby": "id"})
    assert [o["result"] for o in by_member["value"]] == [[5.5, 40]]  # [10, 20, 30]: result/1 is 20
    counted = await get(sta, f"MultiDatastreams({wind})/Observations", **{"$count": "true", "$top": "0"})
    assert counted == {"@iot.count": 2, "value": []}
    ordered = await get(
        sta, "ObservedProperties", **{"$expand": "MultiDatastreams($select=name)", "$filter": "name eq 'Air pm10'"}
    )
    assert ordered["value"][0]["MultiDatastreams"] == [{"name": "Air"}]


async def test_nested_in_a_thing_and_ordered_links_only_at_creation(sta: httpx.AsyncClient) -> None:
    body = {k: v for k, v in thing_body("Mast").items() if k != "Datastreams"}
    nested = {k: v for k, v in multi_datastream_body().items() if k != "Thing"}
    nested["Observations"] = [{"phenomenonTime": "2026-11-01T00:00:00Z", "result": [1, 2]}]
    thing = await create(sta, "Things", {**body, "MultiDatastreams": [nested]})
    listed = await get(sta, f"Things({thing['@iot.id']})/MultiDatastreams", **{"$expand": "Observations"})
    assert [m["Observations"][0]["result"] for m in listed["value"]] == [[1, 2]]
    mid = listed["value"][0]["@iot.id"]
    op = (await get(sta, f"MultiDatastreams({mid})/ObservedProperties"))["value"][0]["@iot.id"]
    other = await create(sta, "ObservedProperties", {"name": "x", "definition": "x", "description": "x"})
    for path, payload in (
        (f"MultiDatastreams({mid})/ObservedProperties/$ref", {"@iot.id": other["@iot.id"]}),
        (f"ObservedProperties({other['@iot.id']})/MultiDatastreams/$ref", {"@iot.id": mid}),
        (f"MultiDatastreams({mid})/ObservedProperties", {"name": "y", "definition": "y", "description": "y"}),
        (f"ObservedProperties({other['@iot.id']})/MultiDatastreams", multi_datastream_body("Other")),
        (
            "ObservedProperties",
            {"name": "z", "definition": "z", "description": "z", "MultiDatastreams": [{"@iot.id": mid}]},
        ),
    ):
        response = await _post(sta, path, payload)
        assert response.status_code == 400, (path, response.text)
    removed = await sta.delete(f"{BASE}/MultiDatastreams({mid})/ObservedProperties({op})/$ref", headers=AUTH)
    assert removed.status_code == 400
    assert len((await get(sta, f"MultiDatastreams({mid})/ObservedProperties"))["value"]) == 2
    assert (await get(sta, "MultiDatastreams", **{"$count": "true"}))["@iot.count"] == 1


async def test_data_array_read_and_create(sta: httpx.AsyncClient) -> None:
    mid = (await create(sta, "MultiDatastreams", multi_datastream_body()))["@iot.id"]
    body = [
        {
            "MultiDatastream": {"@iot.id": mid},
            "components": ["phenomenonTime", "result"],
            "dataArray": [[f"2026-11-02T{h:02d}:00:00Z", [h, h * 10]] for h in range(3)],
        }
    ]
    response = await _post(sta, "CreateObservations", body)
    assert response.status_code == 201, response.text
    links = response.json()
    assert len(links) == 3 and all("/Observations(" in link for link in links)
    again = await _post(sta, "CreateObservations", body)  # the same instants: nothing created twice
    assert again.json() == ["error"] * 3
    page = await get(
        sta,
        f"MultiDatastreams({mid})/Observations",
        **{"$resultFormat": "dataArray", "$select": "result,phenomenonTime"},
    )
    group = page["value"][0]
    assert group["MultiDatastream@iot.navigationLink"] == f"http://testserver{BASE}/MultiDatastreams({mid})"
    assert group["components"] == ["result", "phenomenonTime"]
    assert group["dataArray"] == [[[h, h * 10], f"2026-11-02T{h:02d}:00:00Z"] for h in range(3)]
    for bad in (
        [{**body[0], "dataArray": [["2026-11-03T00:00:00Z", [1]]]}],
        [{**body[0], "dataArray": [["2026-11-03T00:00:00Z", 1]]}],
        [{**body[0], "Datastream": {"@iot.id": 1}}],
    ):
        assert (await _post(sta, "CreateObservations", bad)).status_code == 400, bad


async def test_update_and_delete_cascades(sta: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    mid = (await create(sta, "MultiDatastreams", multi_datastream_body()))["@iot.id"]
    obs = await _observe(sta, mid, 1, [1, 2])
    patched = await sta.patch(
        f"{BASE}/MultiDatastreams({mid})",
        json={"name": "Vent", "unitOfMeasurements": [{"name": "m/s"}, {"name": "deg"}]},
        headers=AUTH,
    )
    assert patched.status_code == 200, patched.text
    assert patched.json()["name"] == "Vent"
    assert patched.json()["unitOfMeasurements"] == [{"name": "m/s"}, {"name": "deg"}]
    for bad in (
        {"unitOfMeasurements": [{"name": "m/s"}]},
        {"multiObservationDataTypes": [MEASUREMENT]},
        {"ObservedProperties": []},
        {"phenomenonTime": "2026-01-01T00:00:00Z"},
    ):
        response = await sta.patch(f"{BASE}/MultiDatastreams({mid})", json=bad, headers=AUTH)
        assert response.status_code == 400, (bad, response.text)
    # an Observation's result keeps its size
    assert (
        await sta.patch(f"{BASE}/Observations({obs['@iot.id']})", json={"result": [9]}, headers=AUTH)
    ).status_code == 400
    changed = await sta.patch(f"{BASE}/Observations({obs['@iot.id']})", json={"result": [9, 8]}, headers=AUTH)
    assert changed.status_code == 200 and changed.json()["result"] == [9, 8]
    # JSON Patch, as FROST's client sends it
    json_patch = await sta.patch(
        f"{BASE}/MultiDatastreams({mid})",
        json=[{"op": "replace", "path": "/description", "value": "patched"}],
        headers={**AUTH, "content-type": "application/json-patch+json"},
    )
    assert json_patch.status_code == 200 and json_patch.json()["description"] == "patched"
    # deleting an Observation, then the MultiDatastream takes its Observations along
    second = await _observe(sta, mid, 2, [1, 2])
    assert (await sta.delete(f"{BASE}/Observations({obs['@iot.id']})", headers=AUTH)).status_code == 200
    assert (await sta.get(f"{BASE}/Observations({obs['@iot.id']})")).status_code == 404
    assert (await sta.delete(f"{BASE}/MultiDatastreams({mid})", headers=AUTH)).status_code == 200
    assert (await sta.get(f"{BASE}/Observations({second['@iot.id']})")).status_code == 404
    assert await db.fetchval("SELECT count(*) FROM multi_observation") == 0
    # deleting one of its ObservedProperties, its Sensor or its Thing deletes a MultiDatastream
    for owner in ("ObservedProperties", "Sensor", "Thing"):
        mds = (await create(sta, "MultiDatastreams", multi_datastream_body(f"Wind {owner}")))["@iot.id"]
        await _observe(sta, mds, 1, [1, 2])
        target = await get(sta, f"MultiDatastreams({mds})/{owner}")
        target = target["value"][-1] if owner == "ObservedProperties" else target
        assert (await sta.delete(target["@iot.selfLink"], headers=AUTH)).status_code == 200
        assert (await sta.get(f"{BASE}/MultiDatastreams({mds})")).status_code == 404, owner
    assert await db.fetchval("SELECT count(*) FROM multi_observation") == 0
    assert await db.fetchval("SELECT count(*) FROM multi_datastream_observed_property") == 0


async def test_json_and_multipart_batch(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body())
    body = multi_datastream_body(thing={"@iot.id": thing["@iot.id"]})
    response = await sta.post(
        f"{BASE}/$batch",
        json={
            "requests": [
                {"id": "m", "atomicityGroup": "g", "method": "post", "url": "MultiDatastreams", "body": body},
                {
                    "id": "o",
                    "atomicityGroup": "g",
                    "method": "post",
                    "url": "$m/Observations",
                    "body": {"phenomenonTime": "2026-11-01T00:00:00Z", "result": [1, 2]},
                },
                {"id": "r", "method": "get", "url": "MultiDatastreams?$expand=Observations"},
            ]
        },
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    answers = {r["id"]: r for r in response.json()["responses"]}
    assert answers["m"]["status"] == 201 and answers["o"]["status"] == 201
    assert answers["r"]["body"]["value"][0]["Observations"][0]["result"] == [1, 2]
    # a failed group rolls back whole: a bad result size undoes the MultiDatastream created before it
    failed = await sta.post(
        f"{BASE}/$batch",
        json={
            "requests": [
                {"id": "m", "atomicityGroup": "g", "method": "post", "url": "MultiDatastreams", "body": body},
                {"id": "o", "atomicityGroup": "g", "method": "post", "url": "$m/Observations", "body": {"result": [1]}},
            ]
        },
        headers=AUTH,
    )
    assert [r["status"] for r in failed.json()["responses"]] == [400, 400]
    assert (await get(sta, "MultiDatastreams", **{"$count": "true"}))["@iot.count"] == 1


async def test_prefer_return_minimal(sta: httpx.AsyncClient) -> None:
    """`Prefer: return=minimal`: 201 with Location and no body on a create (as FROST), 204 on an update, over HTTP
    and in both batch forms."""
    response = await _post(sta, "MultiDatastreams", multi_datastream_body(), prefer="return=minimal")
    assert response.status_code == 201
    assert response.content == b""
    assert response.headers["preference-applied"] == "return=minimal"
    location = response.headers["location"]
    assert (await sta.get(location)).json()["name"] == "Wind"
    observation = await _post(
        sta,
        f"{location.removeprefix('http://testserver' + BASE + '/')}/Observations",
        {"result": [1, 2]},
        prefer='return="minimal", respond-async',
    )
    assert observation.status_code == 201 and observation.content == b""
    assert "/Observations(" in observation.headers["location"]
    # without the preference (or another one), the entity comes back
    full = await _post(
        sta,
        "Sensors",
        {"name": "s", "description": "d", "encodingType": "text/html", "metadata": "m"},
        prefer="return=representation",
    )
    assert full.status_code == 201 and full.json()["name"] == "s" and "preference-applied" not in full.headers
    # an update: 204 No Content (the standard allows it), the change made; JSON Patch too
    sensor = full.json()["@iot.selfLink"]
    patched = await sta.patch(sensor, json={"name": "s2"}, headers={**AUTH, "Prefer": "return=minimal"})
    assert patched.status_code == 204 and patched.content == b""
    assert patched.headers["preference-applied"] == "return=minimal"
    json_patch = await sta.patch(
        sensor,
        content=b'[{"op": "replace", "path": "/description", "value": "d2"}]',
        headers={**AUTH, "Prefer": "return=minimal", "Content-Type": "application/json-patch+json"},
    )
    assert json_patch.status_code == 204 and json_patch.content == b""
    assert {k: (await sta.get(sensor)).json()[k] for k in ("name", "description")} == {
        "name": "s2",
        "description": "d2",
    }
    assert (await sta.patch(sensor, json={"name": "s3"}, headers=AUTH)).json()["name"] == "s3"  # default: the entity
    batch = await sta.post(
        f"{BASE}/$batch",
        json={
            "requests": [
                {
                    "id": "a",
                    "method": "post",
                    "url": "Sensors",
                    "headers": {"Prefer": "return=minimal"},
                    "body": {"name": "a", "description": "d", "encodingType": "text/html", "metadata": "m"},
                },
                {
                    "id": "b",
                    "method": "post",
                    "url": "Sensors",
                    "body": {"name": "b", "description": "d", "encodingType": "text/html", "metadata": "m"},
                },
                {
                    "id": "c",
                    "method": "patch",
                    "url": sensor.removeprefix(f"http://testserver{BASE}/"),
                    "headers": {"Prefer": "return=minimal"},
                    "body": {"name": "s4"},
                },
            ]
        },
        headers=AUTH,
    )
    a, b, c = batch.json()["responses"]
    assert a["status"] == 201 and "body" not in a and a["location"].endswith(")")
    assert b["status"] == 201 and b["body"]["name"] == "b"
    assert c["status"] == 204 and "body" not in c
    assert (await sta.get(sensor)).json()["name"] == "s4"
    boundary = "batch_1"
    sensor = '{"name": "c", "description": "d", "encodingType": "text/html", "metadata": "m"}'
    multipart = (
        f"--{boundary}\r\nContent-Type: application/http\r\nContent-Transfer-Encoding: binary\r\n\r\n"
        f"POST Sensors HTTP/1.1\r\nContent-Type: application/json\r\nPrefer: return=minimal\r\n\r\n{sensor}\r\n"
        f"--{boundary}--\r\n"
    )
    answer = await sta.post(
        f"{BASE}/$batch",
        content=multipart.encode(),
        headers={**AUTH, "content-type": f"multipart/mixed; boundary={boundary}"},
    )
    assert answer.status_code == 200, answer.text
    text = answer.text
    assert "HTTP/1.1 201 Created" in text and "Preference-Applied: return=minimal" in text
    assert "Location: http://testserver" in text and '"name":"c"' not in text


async def _until(sub: Subscriber, wanted: Callable[[str, dict[str, Any]], bool]) -> dict[str, Any]:
    """The first message (from now) for which `wanted(topic, body)` holds; the others are skipped."""
    while True:
        topic, body = await asyncio.to_thread(sub.next, 10)
        if wanted(topic, body):
            return body


@pytest.mark.mqtt
async def test_mqtt_receive_and_create_on_multi_datastream_topics(
    sta: httpx.AsyncClient, bridge: Any, db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    mid = (await create(sta, "MultiDatastreams", multi_datastream_body()))["@iot.id"]
    topic = f"{topic_prefix}/v1.1/MultiDatastreams({mid})/Observations"
    sub = Subscriber(settings.mqtt_url, [topic, f"{topic_prefix}/v1.1/MultiDatastreams"])
    try:
        # receive: an Observation created over HTTP is published on its MultiDatastream's topic
        created = await _observe(sta, mid, 1, [2.5, "N"])
        message = await _until(sub, lambda t, m: t == topic)
        assert message["@iot.id"] == created["@iot.id"] and message["result"] == [2.5, "N"]
        # a new MultiDatastream on the entity set's topic
        other = await create(sta, "MultiDatastreams", multi_datastream_body("Air"))
        message = await _until(sub, lambda t, m: t.endswith("/v1.1/MultiDatastreams") and m["name"] == "Air")
        assert message["@iot.id"] == other["@iot.id"]
        assert message["ObservedProperties@iot.navigationLink"].endswith(f"({other['@iot.id']})/ObservedProperties")
        # a changed MultiDatastream: the entity and its changed property
        sub.client.subscribe(f"{topic_prefix}/v1.1/MultiDatastreams({mid})/name", qos=1)
        await asyncio.sleep(0.3)
        patched = await sta.patch(f"{BASE}/MultiDatastreams({mid})", json={"name": "Vent"}, headers=AUTH)
        assert patched.status_code == 200
        message = await _until(sub, lambda t, m: t.endswith(f"/v1.1/MultiDatastreams({mid})/name"))
        assert message == {"name": "Vent"}
        # create: publishing there stores an Observation (the right size only)
        sub.publish(topic, {"result": [3, "S"], "phenomenonTime": "2026-11-01T05:00:00Z"}, f"Bearer {ADMIN_TOKEN}")
        sub.publish(topic, {"result": [3], "phenomenonTime": "2026-11-01T06:00:00Z"}, f"Bearer {ADMIN_TOKEN}")
        for _ in range(200):
            if await db.fetchval("SELECT count(*) FROM ingest_rejection WHERE source = 'sta-mqtt'") >= 1:
                break
            await asyncio.sleep(0.05)
        received = []
        while not any("@iot.id" in m and m["result"] == [3, "S"] for m in received):
            received.append((await asyncio.to_thread(sub.next, 10))[1])
    finally:
        sub.close()
    assert bridge.created == 1
    stored = await get(sta, f"MultiDatastreams({mid})/Observations", **{"$orderby": "phenomenonTime"})
    assert [o["result"] for o in stored["value"]] == [[2.5, "N"], [3, "S"]]
    reason = await db.fetchval("SELECT reason FROM ingest_rejection WHERE source = 'sta-mqtt'")
    assert "array of 2 values" in reason


async def test_write_grants_follow_the_things_dataset(
    sta: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    """A MultiDatastream joins its Thing's dataset: a publisher writes only those of the datasets it may write."""
    for slug in ("mine", "theirs"):
        response = await sta.post(
            "/api/v1/datasets", json={"slug": slug, "title": slug, "kind": "sensors"}, headers=AUTH
        )
        assert response.status_code == 201, response.text
    await mark_published("mine", "theirs")
    publisher = {"Authorization": f"Bearer {await make_key(engine, 'publisher', [('mine', 'write')])}"}
    things = {}
    for slug in ("mine", "theirs"):
        body = {k: v for k, v in thing_body(f"mast {slug}").items() if k != "Datastreams"}
        things[slug] = (await create(sta, "Things", {**body, "@territoire.dataset": slug}))["@iot.id"]
    theirs = (await create(sta, "MultiDatastreams", multi_datastream_body(thing={"@iot.id": things["theirs"]})))[
        "@iot.id"
    ]
    # create on its own Thing: allowed, and the MultiDatastream is filed under the Thing's dataset
    response = await sta.post(
        f"{BASE}/MultiDatastreams",
        json=multi_datastream_body("Mine", thing={"@iot.id": things["mine"]}),
        headers=publisher,
    )
    assert response.status_code == 201, response.text
    mine = response.json()["@iot.id"]
    assert (
        await db.fetchval(
            "SELECT d.slug FROM multi_datastream m JOIN dataset d ON d.id = m.dataset_id WHERE m.id = $1", mine
        )
        == "mine"
    )
    observed = await sta.post(
        f"{BASE}/MultiDatastreams({mine})/Observations", json={"result": [1, 2]}, headers=publisher
    )
    assert observed.status_code == 201, observed.text
    # on another dataset's Thing, or another dataset's MultiDatastream: 403
    refused = await sta.post(
        f"{BASE}/MultiDatastreams",
        json=multi_datastream_body("X", thing={"@iot.id": things["theirs"]}),
        headers=publisher,
    )
    assert refused.status_code == 403
    for method, path, body in (
        ("POST", f"MultiDatastreams({theirs})/Observations", {"result": [1, 2]}),
        ("PATCH", f"MultiDatastreams({theirs})", {"name": "taken"}),
        ("DELETE", f"MultiDatastreams({theirs})", None),
        ("PATCH", f"MultiDatastreams({mine})", {"Thing": {"@iot.id": things["theirs"]}}),  # moving it there
        (
            "POST",
            "CreateObservations",
            [{"MultiDatastream": {"@iot.id": theirs}, "components": ["result"], "dataArray": [[[1, 2]]]}],
        ),
    ):
        response = await sta.request(method, f"{BASE}/{path}", json=body, headers=publisher)
        assert response.status_code == 403, (method, path, response.text)
    patched = await sta.patch(f"{BASE}/MultiDatastreams({mine})", json={"name": "Mine too"}, headers=publisher)
    assert patched.status_code == 200
    obs_id = observed.json()["@iot.id"]
    assert (
        await sta.patch(f"{BASE}/Observations({obs_id})", json={"result": [3, 4]}, headers=publisher)
    ).status_code == 200
    assert (await sta.delete(f"{BASE}/MultiDatastreams({mine})", headers=publisher)).status_code == 200
    # nobody without a key writes
    assert (
        await sta.post(f"{BASE}/MultiDatastreams({theirs})/Observations", json={"result": [1, 2]})
    ).status_code == 401
    audit = await db.fetch(
        "SELECT action, target_type FROM audit_event WHERE target_type = 'MultiDatastream' ORDER BY id"
    )
    assert [(r["action"], r["target_type"]) for r in audit][-2:] == [
        ("sta.update", "MultiDatastream"),
        ("sta.delete", "MultiDatastream"),
    ]
