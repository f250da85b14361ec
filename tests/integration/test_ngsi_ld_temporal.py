"""NGSI-LD temporal API: sensor history from Observations and rollups, entities' own history."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest

from tests.conftest import TEST_ADMIN_AUTH

pytestmark = [pytest.mark.db]

BASE = "/ngsi-ld/v1"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
LD = {**TEST_ADMIN_AUTH, "Content-Type": "application/ld+json"}
DAY = datetime(2026, 11, 30, tzinfo=UTC)


async def _sensor_day(db: asyncpg.Connection) -> int:
    """A Thing with one pm10 Datastream and a day of per-minute Observations (value = minute of the day)."""
    thing = await db.fetchval("INSERT INTO thing (name, description) VALUES ('station', 'air') RETURNING id")
    sensor = await db.fetchval(
        "INSERT INTO sensor (name, description, encoding_type, metadata) VALUES ('s','','text/plain','') RETURNING id"
    )
    prop = await db.fetchval(
        "INSERT INTO observed_property (name, definition, description, external_key) "
        "VALUES ('PM10', '', '', 'pm10') RETURNING id"
    )
    stream = await db.fetchval(
        "INSERT INTO datastream (name, description, observation_type, unit_of_measurement, thing_id, sensor_id, "
        "observed_property_id) VALUES ('pm10', '', 'OM_Measurement', '{\"symbol\": \"ug/m3\"}', $1, $2, $3) "
        "RETURNING id",
        thing,
        sensor,
        prop,
    )
    await db.execute(
        "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
        "SELECT $1, $2::timestamptz + g * interval '1 minute', g FROM generate_series(0, 1439) g",
        stream,
        DAY,
    )
    return int(thing)


async def test_sensor_history_timerel_and_last_n(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    thing = await _sensor_day(db)
    url = f"{BASE}/temporal/entities/urn:ngsi-ld:Thing:{thing}"
    day = await client.get(
        url,
        params={
            "timerel": "between",
            "timeAt": "2026-11-30T00:00:00Z",
            "endTimeAt": "2026-12-01T00:00:00Z",
            "attrs": "pm10",
        },
    )
    assert day.status_code == 200, day.text
    instances = day.json()["pm10"]
    assert len(instances) == 1440
    assert instances[0]["value"] == 0 and instances[0]["observedAt"] == "2026-11-30T00:00:00Z"
    assert instances[0]["unitCode"] == "GQ"
    before = await client.get(url, params={"timerel": "before", "timeAt": "2026-11-30T00:10:00Z"})
    assert [i["value"] for i in before.json()["pm10"]] == list(range(10))
    last = await client.get(url, params={"lastN": 3, "options": "temporalValues"})
    assert last.json()["pm10"] == {
        "type": "Property",
        "values": [
            [1437, "2026-11-30T23:57:00Z"],
            [1438, "2026-11-30T23:58:00Z"],
            [1439, "2026-11-30T23:59:00Z"],
        ],
    }
    bad = await client.get(url, params={"timerel": "between", "timeAt": "2026-11-30T00:00:00Z"})
    assert bad.status_code == 400


async def test_sensor_aggregates_from_rollups_and_from_observations_agree(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    thing = await _sensor_day(db)
    url = f"{BASE}/temporal/entities/urn:ngsi-ld:Thing:{thing}"
    window = {"timerel": "between", "timeAt": "2026-11-30T00:00:00Z", "endTimeAt": "2026-12-01T00:00:00Z"}
    hourly = await client.get(
        url,
        params={
            **window,
            "options": "aggregatedValues",
            "aggrMethods": "totalCount,avg,min,max,sum",
            "aggrPeriodDuration": "PT1H",
        },
    )
    assert hourly.status_code == 200, hourly.text
    pm10 = hourly.json()["pm10"]
    assert len(pm10["avg"]) == 24
    assert pm10["totalCount"][0] == [60, "2026-11-30T00:00:00.000Z", "2026-11-30T01:00:00.000Z"]
    assert pm10["avg"][1][0] == pytest.approx(89.5)
    assert pm10["min"][23][0] == 1380 and pm10["max"][23][0] == 1439
    # a period of 7 minutes cannot come from the 15-minute rollups: computed from the observations, same numbers
    odd = await client.get(
        url, params={**window, "options": "aggregatedValues", "aggrMethods": "sum,stddev", "aggrPeriodDuration": "PT7M"}
    )
    sums = odd.json()["pm10"]["sum"]
    assert sum(s[0] for s in sums) == sum(range(1440))
    assert odd.json()["pm10"]["stddev"][0][0] == pytest.approx(2.0)
    months = await client.get(
        url, params={**window, "options": "aggregatedValues", "aggrMethods": "avg", "aggrPeriodDuration": "P1M"}
    )
    assert months.status_code == 400


async def test_entity_history_through_the_temporal_api(client: httpx.AsyncClient) -> None:
    start = DAY
    temporal = {
        "id": "urn:ngsi-ld:Vehicle:T1",
        "type": "Vehicle",
        "speed": [
            {
                "type": "Property",
                "value": 10 * n,
                "observedAt": (start + timedelta(minutes=n)).isoformat().replace("+00:00", "Z"),
            }
            for n in range(5)
        ],
        "@context": [CORE],
    }
    created = await client.post(f"{BASE}/temporal/entities", json=temporal, headers=LD)
    assert created.status_code == 201, created.text
    current = (await client.get(f"{BASE}/entities/urn:ngsi-ld:Vehicle:T1")).json()
    assert current["speed"]["value"] == 40
    more = await client.post(
        f"{BASE}/temporal/entities/urn:ngsi-ld:Vehicle:T1/attrs",
        json={"speed": [{"type": "Property", "value": 99, "observedAt": "2026-11-30T00:10:00Z"}], "@context": [CORE]},
        headers=LD,
    )
    assert more.status_code == 204
    # a plain update also goes to the history
    assert (
        await client.patch(
            f"{BASE}/entities/urn:ngsi-ld:Vehicle:T1/attrs",
            json={"speed": {"value": 7, "observedAt": "2026-11-30T00:20:00Z"}, "@context": [CORE]},
            headers=LD,
        )
    ).status_code == 204
    history = await client.get(f"{BASE}/temporal/entities/urn:ngsi-ld:Vehicle:T1", params={"options": "temporalValues"})
    assert [v[0] for v in history.json()["speed"]["values"]] == [0, 10, 20, 30, 40, 99, 7]
    after = await client.get(
        f"{BASE}/temporal/entities/urn:ngsi-ld:Vehicle:T1",
        params={"timerel": "after", "timeAt": "2026-11-30T00:03:00Z", "options": "temporalValues"},
    )
    assert [v[0] for v in after.json()["speed"]["values"]] == [30, 40, 99, 7]
    query = await client.get(f"{BASE}/temporal/entities", params={"type": "Vehicle", "lastN": 1})
    assert query.json()[0]["speed"][0]["value"] == 7
    aggregated = await client.get(
        f"{BASE}/temporal/entities/urn:ngsi-ld:Vehicle:T1",
        params={"options": "aggregatedValues", "aggrMethods": "max,totalCount", "aggrPeriodDuration": "P1D"},
    )
    assert aggregated.json()["speed"]["max"][0][0] == 99
    assert aggregated.json()["speed"]["totalCount"][0][0] == 7
    instance = history_instance = (await client.get(f"{BASE}/temporal/entities/urn:ngsi-ld:Vehicle:T1")).json()[
        "speed"
    ][0]
    assert instance["instanceId"].startswith("urn:ngsi-ld:")
    deleted = await client.delete(
        f"{BASE}/temporal/entities/urn:ngsi-ld:Vehicle:T1/attrs/speed/{history_instance['instanceId']}",
        headers=TEST_ADMIN_AUTH,
    )
    assert deleted.status_code == 204
    assert (
        await client.delete(f"{BASE}/temporal/entities/urn:ngsi-ld:Vehicle:T1", headers=TEST_ADMIN_AUTH)
    ).status_code == 204
    assert (await client.get(f"{BASE}/temporal/entities/urn:ngsi-ld:Vehicle:T1")).status_code == 404


async def test_daily_aggregates_from_daily_and_quarter_hour_rollups_match_the_observations(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    thing = await _sensor_day(db)
    stream = await db.fetchval("SELECT id FROM datastream")
    await db.execute(  # a second and a third day: the first days move to the daily rollups
        "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
        "SELECT $1, $2::timestamptz + g * interval '1 minute', g % 97 FROM generate_series(1440, 3 * 1440 - 1) g",
        stream,
        DAY,
    )
    assert await db.fetchval("SELECT count(*) FROM observation_rollup_day") >= 1
    url = f"{BASE}/temporal/entities/urn:ngsi-ld:Thing:{thing}"
    window = {"timerel": "between", "timeAt": "2026-11-30T00:00:00Z", "endTimeAt": "2026-12-03T00:00:00Z"}
    rolled = await client.get(
        url,
        params={
            **window,
            "options": "aggregatedValues",
            "aggrMethods": "sum,max,totalCount",
            "aggrPeriodDuration": "P1D",
        },
    )
    raw = await client.get(
        url,
        params={
            **window,
            "options": "aggregatedValues",
            "aggrMethods": "sum,max,totalCount,stddev",
            "aggrPeriodDuration": "P1D",
        },
    )
    for method in ("sum", "max", "totalCount"):
        assert rolled.json()["pm10"][method] == raw.json()["pm10"][method], method
    assert [c[0] for c in rolled.json()["pm10"]["totalCount"]] == [1440, 1440, 1440]
