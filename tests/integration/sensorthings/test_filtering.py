"""Conformance class Filtering Extension: $filter (section 9.3.3.5) and $orderby against real PostGIS."""

from __future__ import annotations

import httpx
import pytest

from tests.integration.sensorthings.conftest import AUTH, BASE, OBSERVATION, create, get, thing_body

pytestmark = pytest.mark.db


@pytest.fixture
async def data(sta: httpx.AsyncClient) -> dict[str, int]:
    # Lyon's Datastream takes any result (a number, a word, a boolean): an OM_Observation
    lyon = await create(sta, "Things", thing_body("Lyon Bellecour", 4.832, 45.757, observation_type=OBSERVATION))
    paris = await create(sta, "Things", thing_body("Paris Louvre", 2.336, 48.861))
    ids: dict[str, int] = {}
    for name, thing in (("lyon", lyon), ("paris", paris)):
        ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
        ids[name] = ds
        offset = 0 if name == "lyon" else 100
        body = [
            {
                "Datastream": {"@iot.id": ds},
                "components": ["phenomenonTime", "result"],
                "dataArray": [[f"2026-11-0{d}T12:30:15.250Z", offset + d] for d in range(1, 6)],
            }
        ]
        assert (await sta.post(f"{BASE}/CreateObservations", json=body, headers=AUTH)).status_code == 201
    await create(
        sta,
        f"Datastreams({ids['lyon']})/Observations",
        {"phenomenonTime": "2026-11-08T00:00:00Z", "result": "calibrating"},
    )
    await create(
        sta, f"Datastreams({ids['lyon']})/Observations", {"phenomenonTime": "2026-11-09T00:00:00Z", "result": True}
    )
    return ids


async def _results(http: httpx.AsyncClient, flt: str, entity: str = "Observations") -> list[object]:
    body = await get(http, entity, **{"$filter": flt, "$orderby": "phenomenonTime,id"})
    return [o.get("result", o.get("name")) for o in body["value"]]


CASES = [
    ("result gt 103", [104, 105]),
    ("result ge 2 and result le 3", [2, 3]),
    ("result lt 2 or result eq 105", [1, 105]),
    ("not (result lt 104)", [104, 105]),
    ("result ne 1 and result lt 4", [2, 3]),
    ("result add 1 eq 3", [2]),
    ("result sub 1 eq 3", [4]),
    ("result mul 2 eq 8", [4]),
    ("result div 2 eq 2.5", [5]),
    ("result mod 100 eq 5", [5, 105]),
    ("result eq 'calibrating'", ["calibrating"]),
    ("result eq true", [True]),
    ("phenomenonTime ge 2026-11-04T00:00:00Z and phenomenonTime lt 2026-11-05T00:00:00Z", [4, 104]),
    ("phenomenonTime gt 2026-11-04T00:00:00Z sub duration'P1D' and result lt 100 and result gt 0", [3, 4, 5]),
    ("year(phenomenonTime) eq 2026 and day(phenomenonTime) eq 2", [2, 102]),
    (
        "month(phenomenonTime) eq 11 and hour(phenomenonTime) eq 12 and minute(phenomenonTime) eq 30 "
        "and second(phenomenonTime) eq 15 and fractionalseconds(phenomenonTime) eq 0.25 and result lt 2",
        [1],
    ),
    ("date(phenomenonTime) eq 2026-11-03", [3, 103]),
    ("time(phenomenonTime) eq '12:30:15.25' and result gt 104", [105]),
    ("totaloffsetminutes(phenomenonTime) eq 0 and result eq 1", [1]),
    (
        "phenomenonTime lt now() and phenomenonTime gt mindatetime() and phenomenonTime lt maxdatetime() "
        "and result eq 5",
        [5],
    ),
    ("round(result div 4) eq 1 and result lt 100", [3, 4, 5]),
    ("floor(result div 4) eq 1 and result lt 100", [4, 5]),
    ("ceiling(result div 4) eq 1 and result lt 100", [1, 2, 3, 4]),
    ("Datastream/Thing/name eq 'Paris Louvre' and result lt 103", [101, 102]),
    ("startswith(Datastream/Thing/name, 'Lyon') and result eq 5", [5]),
    ("Datastream/Thing/properties/floors eq 3 and result eq 105", [105]),
    ("Datastream/Thing/properties/owner eq 'Métropole de Lyon' and result eq 101", [101]),
]


@pytest.mark.parametrize(("flt", "expected"), CASES)
async def test_filter_on_observations(
    sta: httpx.AsyncClient, data: dict[str, int], flt: str, expected: list[object]
) -> None:
    assert await _results(sta, flt) == expected


THING_CASES = [
    ("substringof('Louvre', name)", ["Paris Louvre"]),
    ("startswith(name, 'Lyon')", ["Lyon Bellecour"]),
    ("endswith(name, 'vre')", ["Paris Louvre"]),
    ("length(name) eq 12", ["Paris Louvre"]),
    ("indexof(name, 'Bell') eq 5", ["Lyon Bellecour"]),
    ("substring(name, 6) eq 'Louvre'", ["Paris Louvre"]),
    ("substring(name, 0, 4) eq 'Lyon'", ["Lyon Bellecour"]),
    ("tolower(name) eq 'paris louvre'", ["Paris Louvre"]),
    ("toupper(name) eq 'PARIS LOUVRE'", ["Paris Louvre"]),
    ("trim(concat(' ', name)) eq 'Paris Louvre'", ["Paris Louvre"]),
    ("concat(name, '!') eq 'Lyon Bellecour!'", ["Lyon Bellecour"]),
    ("Datastreams/Observations/result gt 104", ["Paris Louvre"]),
    ("Locations/name eq 'Lyon Bellecour site'", ["Lyon Bellecour"]),
    ("geo.intersects(Locations/location, geography'POLYGON((4 45, 5 45, 5 46, 4 46, 4 45))')", ["Lyon Bellecour"]),
    ("st_within(Locations/location, geometry'POLYGON((2 48, 3 48, 3 49, 2 49, 2 48))')", ["Paris Louvre"]),
    ("geo.distance(Locations/location, geography'POINT(4.83 45.75)') lt 0.1", ["Lyon Bellecour"]),
    ("st_disjoint(Locations/location, geography'POINT(4.832 45.757)')", ["Paris Louvre"]),
    ("st_equals(Locations/location, geography'POINT(4.832 45.757)')", ["Lyon Bellecour"]),
    ("st_intersects(Locations/location, geography'LINESTRING(2 48, 3 49)')", []),
    ("st_contains(geography'POLYGON((2 48, 3 48, 3 49, 2 49, 2 48))', Locations/location)", ["Paris Louvre"]),
    (
        "st_touches(Locations/location, geography'POLYGON((4.832 45.757, 5 45.757, 5 46, 4.832 46, 4.832 45.757))')",
        ["Lyon Bellecour"],
    ),
    ("st_overlaps(Locations/location, geography'POINT(0 0)')", []),
    ("st_crosses(geography'LINESTRING(2 48, 3 49)', Locations/location)", []),
    ("st_relate(Locations/location, geography'POINT(4.832 45.757)', 'T*F**FFF*')", ["Lyon Bellecour"]),
    ("geo.length(geography'LINESTRING(0 0, 3 4)') eq 5 and startswith(name, 'P')", ["Paris Louvre"]),
]


@pytest.mark.parametrize(("flt", "expected"), THING_CASES)
async def test_filter_on_things(sta: httpx.AsyncClient, data: dict[str, int], flt: str, expected: list[str]) -> None:
    body = await get(sta, "Things", **{"$filter": flt, "$orderby": "name"})
    assert [t["name"] for t in body["value"]] == expected


async def test_orderby_several_keys_and_through_relations(sta: httpx.AsyncClient, data: dict[str, int]) -> None:
    body = await get(
        sta, "Observations", **{"$filter": "result lt 1000", "$orderby": "Datastream/Thing/name desc,result"}
    )
    names = [o["result"] for o in body["value"]]
    assert names == [101, 102, 103, 104, 105, 1, 2, 3, 4, 5]
    things = await get(sta, "Things", **{"$orderby": "name desc"})
    assert [t["name"] for t in things["value"]] == ["Paris Louvre", "Lyon Bellecour"]


@pytest.mark.parametrize(
    ("flt", "where"),
    [
        ("name eq", 7),
        ("name eq 'x' and", 15),
        ("startswith(name 'x')", 16),
        ("name eq 'open", 8),
        ("foo(name) eq 1", 0),
        ("name eq 1 eq 2", 10),
    ],
)
async def test_syntax_errors_are_400_saying_where(sta: httpx.AsyncClient, flt: str, where: int) -> None:
    response = await sta.get(f"{BASE}/Things", params={"$filter": flt})
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["position"] == where
    assert f"position {where}" in problem["detail"]


@pytest.mark.parametrize(
    "flt",
    [
        "nope eq 1",
        "name gt geography'POINT(1 2)'",
        "geo.intersects(name, name)",
        "st_within(Locations/location, geography'POINT(1')",
    ],
)
async def test_invalid_filters_are_400(sta: httpx.AsyncClient, data: dict[str, int], flt: str) -> None:
    response = await sta.get(f"{BASE}/Things", params={"$filter": flt})
    assert response.status_code == 400, response.text
