"""Conformance class Request Data, `$select` (section 9.3.2.4 of the standard): entities, navigation, `$expand`."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.sensorthings.conftest import BASE, create, get, thing_body

pytestmark = pytest.mark.db


async def _station(sta: httpx.AsyncClient) -> tuple[int, int]:
    thing = await create(sta, "Things", thing_body(n_ds=2))
    tid = thing["@iot.id"]
    ds = (await get(sta, f"Things({tid})/Datastreams", **{"$orderby": "id"}))["value"][0]["@iot.id"]
    await create(sta, f"Datastreams({ds})/Observations", {"result": 7, "phenomenonTime": "2026-01-01T00:00:00Z"})
    return tid, ds


async def test_select_properties_id_and_links(sta: httpx.AsyncClient) -> None:
    tid, _ds = await _station(sta)
    assert (await get(sta, f"Things({tid})", **{"$select": "name"})) == {"name": "Station Bellecour"}
    by_id = await get(sta, "Things", **{"$select": "id,name"})
    assert by_id["value"] == [{"@iot.id": tid, "name": "Station Bellecour"}]
    wire = await get(sta, f"Things({tid})", **{"$select": "@iot.id,@iot.selfLink"})
    assert wire == {"@iot.id": tid, "@iot.selfLink": f"http://testserver{BASE}/Things({tid})"}
    # a navigation property selected: its link, not the entities
    links = await get(sta, f"Things({tid})", **{"$select": "Datastreams,Locations"})
    assert set(links) == {"Datastreams@iot.navigationLink", "Locations@iot.navigationLink"}


async def test_select_on_navigation_paths(sta: httpx.AsyncClient) -> None:
    tid, ds = await _station(sta)
    datastreams = await get(sta, f"Things({tid})/Datastreams", **{"$select": "name", "$orderby": "id"})
    assert datastreams["value"] == [
        {"name": "Station Bellecour temperature 0"},
        {"name": "Station Bellecour temperature 1"},
    ]
    parent = await get(sta, f"Datastreams({ds})/Thing", **{"$select": "id"})
    assert parent == {"@iot.id": tid}
    observations = await get(sta, f"Datastreams({ds})/Observations", **{"$select": "result,phenomenonTime"})
    assert observations["value"] == [{"result": 7.0, "phenomenonTime": "2026-01-01T00:00:00Z"}]


async def test_select_inside_expand(sta: httpx.AsyncClient) -> None:
    tid, ds = await _station(sta)
    body = await get(
        sta,
        f"Things({tid})",
        **{
            "$select": "name",
            "$expand": "Datastreams($select=name,id;$orderby=id;$expand=Observations($select=result)),"
            "Locations($select=location)",
        },
    )
    assert body["name"] == "Station Bellecour"
    assert set(body) == {"name", "Datastreams", "Locations"}  # an expanded relation is in, whatever $select says
    assert body["Datastreams"][0] == {
        "@iot.id": ds,
        "name": "Station Bellecour temperature 0",
        "Observations": [{"result": 7.0}],
    }
    assert body["Datastreams"][1]["Observations"] == []
    assert body["Locations"] == [{"location": {"type": "Point", "coordinates": [4.832, 45.757]}}]
    # to-one expansion, in a collection, with a selection on both levels
    observations = await get(
        sta, "Observations", **{"$select": "result", "$expand": "Datastream($select=id;$expand=Thing($select=name))"}
    )
    assert observations["value"] == [
        {"result": 7.0, "Datastream": {"@iot.id": ds, "Thing": {"name": "Station Bellecour"}}}
    ]


async def test_select_into_json_properties(sta: httpx.AsyncClient) -> None:
    tid, _ds = await _station(sta)
    body = await get(sta, f"Things({tid})", **{"$select": "name,properties/owner"})
    assert body == {"name": "Station Bellecour", "properties": {"owner": "Métropole de Lyon"}}


async def test_select_of_an_unknown_property_says_where(sta: httpx.AsyncClient) -> None:
    tid, _ds = await _station(sta)
    response = await sta.get(f"{BASE}/Things({tid})", params={"$select": "name,nope"})
    assert response.status_code == 400
    assert "nope" in response.json()["detail"] and "$select" in response.json()["detail"]
    nested = await sta.get(f"{BASE}/Things", params={"$expand": "Datastreams($select=name,Thingz)"})
    assert nested.status_code == 400
    assert "Thingz" in nested.json()["detail"] and "Datastream" in nested.json()["detail"]


async def test_select_with_value_and_data_array(sta: httpx.AsyncClient) -> None:
    tid, ds = await _station(sta)
    # a property and its raw value are one value already: $select leaves them as they are
    raw = await sta.get(f"{BASE}/Things({tid})/name/$value", params={"$select": "name"})
    assert (raw.status_code, raw.text) == (200, "Station Bellecour")
    prop = await get(sta, f"Things({tid})/name", **{"$select": "name"})
    assert prop == {"name": "Station Bellecour"}
    # with dataArray, $select chooses the components
    array = await get(
        sta, f"Datastreams({ds})/Observations", **{"$resultFormat": "dataArray", "$select": "result,phenomenonTime"}
    )
    assert array["value"][0]["components"] == ["result", "phenomenonTime"]
    assert array["value"][0]["dataArray"] == [[7.0, "2026-01-01T00:00:00Z"]]
