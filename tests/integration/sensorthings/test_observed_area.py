"""observedArea of Datastreams and MultiDatastreams: the bounding box (a GeoJSON Polygon) of the features of
interest of their Observations, kept by the database (migration 0008_obsarea) whatever writes the Observations."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from tests.integration.sensorthings.conftest import AUTH, BASE, create, get, multi_datastream_body, thing_body

STATION = [4.832, 45.757]  # the Thing's Location in thing_body()


def _box(x0: float, y0: float, x1: float, y1: float) -> dict[str, Any]:
    """The Polygon PostGIS's ST_MakeEnvelope writes (degenerate when the box is a point or a segment)."""
    ring = [[x0, y0], [x0, y1], [x1, y1], [x1, y0], [x0, y0]]
    return {"type": "Polygon", "coordinates": [ring]}


def _feature(name: str, lon: float, lat: float) -> dict[str, Any]:
    return {
        "name": name,
        "description": "where the sample was taken",
        "encodingType": "application/geo+json",
        "feature": {"type": "Point", "coordinates": [lon, lat]},
    }


async def _area(sta: httpx.AsyncClient, path: str) -> Any:
    return (await get(sta, path)).get("observedArea")


async def test_observed_area_follows_the_features_of_the_observations(
    sta: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    assert await _area(sta, f"Datastreams({ds})") is None  # no observation yet: left out, as when null
    # the FeatureOfInterest made from the Thing's Location
    await create(sta, f"Datastreams({ds})/Observations", {"phenomenonTime": "2026-11-01T00:00:00Z", "result": 1})
    assert await _area(sta, f"Datastreams({ds})") == _box(*STATION, *STATION)
    await create(sta, f"Datastreams({ds})/Observations", {"phenomenonTime": "2026-11-01T01:00:00Z", "result": 2})
    assert await db.fetchval("SELECT count(*) FROM datastream_feature WHERE datastream_id = $1", ds) == 1
    # a second feature: the box is the segment between both; a third off the line: a true box
    east = await create(sta, "FeaturesOfInterest", _feature("east", 4.9, 45.757))
    north = await create(sta, "FeaturesOfInterest", _feature("north", 4.85, 45.8))
    await create(
        sta,
        f"Datastreams({ds})/Observations",
        {"phenomenonTime": "2026-11-01T02:00:00Z", "result": 3, "FeatureOfInterest": {"@iot.id": east["@iot.id"]}},
    )
    assert await _area(sta, f"Datastreams({ds})") == _box(4.832, 45.757, 4.9, 45.757)
    created = await create(
        sta,
        f"Datastreams({ds})/Observations",
        {"phenomenonTime": "2026-11-01T03:00:00Z", "result": 4, "FeatureOfInterest": {"@iot.id": north["@iot.id"]}},
    )
    box = _box(4.832, 45.757, 4.9, 45.8)
    assert await _area(sta, f"Datastreams({ds})") == box
    # in the Datastream's JSON built by PostgreSQL, in $select and as the datastream's property
    selected = await get(sta, f"Datastreams({ds})", **{"$select": "observedArea"})
    assert selected == {"observedArea": box}
    assert (await get(sta, f"Datastreams({ds})/observedArea")) == {"observedArea": box}
    # the feature moves: the area follows
    moved = await sta.patch(
        f"{BASE}/FeaturesOfInterest({north['@iot.id']})",
        json={"feature": {"type": "Point", "coordinates": [4.9, 45.757]}},
        headers=AUTH,
    )
    assert moved.status_code == 200, moved.text
    assert await _area(sta, f"Datastreams({ds})") == _box(4.832, 45.757, 4.9, 45.757)
    # its only Observation goes: so does the feature (the other one, at the same place, keeps the line)
    assert (await sta.delete(f"{BASE}/Observations({created['@iot.id']})", headers=AUTH)).status_code == 200
    assert await db.fetchval("SELECT count(*) FROM datastream_feature WHERE datastream_id = $1", ds) == 2
    # SQL writes too: an UPDATE moving observations to another feature, a DELETE, a COPY
    await db.execute(
        "UPDATE observation SET feature_of_interest_id = $1 WHERE datastream_id = $2",
        east["@iot.id"],
        ds,
    )
    assert await _area(sta, f"Datastreams({ds})") == _box(4.9, 45.757, 4.9, 45.757)
    await db.copy_records_to_table(
        "observation",
        records=[(ds, datetime(2026, 11, 2, tzinfo=UTC), 5.0, north["@iot.id"])],
        columns=["datastream_id", "phenomenon_time", "result_number", "feature_of_interest_id"],
    )
    assert await _area(sta, f"Datastreams({ds})") == _box(4.9, 45.757, 4.9, 45.757)  # same place
    await db.execute(
        "DELETE FROM observation WHERE datastream_id = $1 AND feature_of_interest_id = $2", ds, east["@iot.id"]
    )
    assert await db.fetch("SELECT feature_of_interest_id FROM datastream_feature WHERE datastream_id = $1", ds) == [
        (north["@iot.id"],)
    ]
    # a feature deleted in SQL sets its observations' feature to NULL: the area has none left
    await db.execute("DELETE FROM feature_of_interest WHERE id = $1", north["@iot.id"])
    assert await _area(sta, f"Datastreams({ds})") is None
    assert await db.fetchval("SELECT count(*) FROM datastream_feature") == 0


async def test_observed_area_of_a_multi_datastream_and_after_truncate(
    sta: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    mds = await create(sta, "MultiDatastreams", multi_datastream_body())
    await create(sta, f"MultiDatastreams({mds['@iot.id']})/Observations", {"result": [1, 2]})
    assert await _area(sta, f"MultiDatastreams({mds['@iot.id']})") == _box(*STATION, *STATION)
    far = await create(sta, "FeaturesOfInterest", _feature("far", 5.0, 45.757))
    await create(
        sta,
        f"MultiDatastreams({mds['@iot.id']})/Observations",
        {"phenomenonTime": "2026-11-01T05:00:00Z", "result": [3, 4], "FeatureOfInterest": {"@iot.id": far["@iot.id"]}},
    )
    assert await _area(sta, f"MultiDatastreams({mds['@iot.id']})") == _box(4.832, 45.757, 5.0, 45.757)
    thing = await create(sta, "Things", thing_body("Other"))
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    await create(sta, f"Datastreams({ds})/Observations", {"result": 1})
    assert await _area(sta, f"Datastreams({ds})") is not None
    await db.execute("TRUNCATE observation")
    await db.execute("TRUNCATE multi_observation")
    assert await _area(sta, f"Datastreams({ds})") is None
    assert await _area(sta, f"MultiDatastreams({mds['@iot.id']})") is None
    assert await db.fetchval("SELECT count(*) FROM datastream_feature") == 0
    assert await db.fetchval("SELECT count(*) FROM multi_datastream_feature") == 0
