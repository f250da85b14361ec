"""The JSON PostgreSQL builds for SensorThings reads (jsonsql) means what the Python serializer says, and the
read pool's plan modes follow the statements (generic plans only where asked)."""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import orjson
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.auth.policy import ANONYMOUS
from territoire_data.db.readpool import close_read_pool, pooled, use_generic_plans, use_plans
from territoire_data.sensorthings import read, sql
from territoire_data.sensorthings.model import BY_NAME, ENTITY_TYPES
from territoire_data.settings import Settings
from tests.integration.sensorthings.conftest import (
    AUTH,
    BASE,
    OBSERVATION,
    app_client,
    create,
    get,
    multi_datastream_body,
    thing_body,
)

_INSTANT = re.compile(r"^\d{4}-\d{2}-\d{2}T[^/]*Z(/\d{4}-\d{2}-\d{2}T[^/]*Z)?$")


def _same_meaning(value: Any) -> Any:
    """Instants compared as instants (`...:00.25Z` and `...:00.250000Z` are one time), numbers as numbers."""
    if isinstance(value, dict):
        return {k: _same_meaning(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_same_meaning(v) for v in value]
    if isinstance(value, str) and _INSTANT.match(value):
        return tuple(datetime.fromisoformat(part) for part in value.split("/"))
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    return value


async def _varied_observations(sta: httpx.AsyncClient, ds: int) -> None:
    """Results of every kind, intervals, the members left out when null, and sub-second times."""
    for body in (
        {"phenomenonTime": "2026-11-01T00:00:00Z", "result": 21.5},
        {"phenomenonTime": "2026-11-01T01:00:00.250Z", "result": 22, "resultTime": "2026-11-01T01:00:01Z"},
        {"phenomenonTime": "2026-11-01T02:00:00Z/2026-11-01T03:00:00Z", "result": 'élevé "quoted" \\ /'},
        {"phenomenonTime": "2026-11-01T04:00:00Z", "result": True, "parameters": {"battery": 3.1, "n": None}},
        {
            "phenomenonTime": "2026-11-01T05:00:00Z",
            "result": {"pm10": 12, "pm2_5": [1, 2]},
            "resultQuality": {"flag": "ok"},
            "validTime": "2026-11-01T05:00:00Z/2026-11-02T05:00:00Z",
        },
        {"phenomenonTime": "2026-11-01T06:00:00Z", "result": None},
    ):
        response = await sta.post(f"{BASE}/Datastreams({ds})/Observations", json=body, headers=AUTH)
        assert response.status_code == 201, response.text


async def test_sql_json_means_what_the_python_serializer_says(sta: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    thing = await create(
        sta, "Things", thing_body('Station "Croix-Rousse" d\'en haut', n_ds=2, observation_type=OBSERVATION)
    )
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    await _varied_observations(sta, ds)
    multi = await create(sta, "MultiDatastreams", multi_datastream_body(thing={"@iot.id": thing["@iot.id"]}))
    for body in (
        {"phenomenonTime": "2026-11-01T00:00:00Z", "result": [3.5, "NNE"]},
        {"phenomenonTime": "2026-11-01T01:00:00Z/2026-11-01T02:00:00Z", "result": [None, {"deg": 12}]},
    ):
        await create(sta, f"MultiDatastreams({multi['@iot.id']})/Observations", body)
    ctx = read.Context(base="http://testserver" + BASE, principal=ANONYMOUS)
    selects: list[tuple[str, ...]] = [
        (),
        ("id", "name", "@iot.selfLink"),
        ("result", "Datastream", "MultiDatastream"),
        ("description",),
    ]
    for entity in ENTITY_TYPES:
        rows = await db.fetch(f"SELECT {sql.select_list(entity, 'c')} FROM {entity.table} c ORDER BY c.id")
        assert rows or entity.name == "HistoricalLocation", entity.name
        for select in selects:
            chosen = tuple(s for s in select if s in ("id", "@iot.selfLink") or s in entity.prop_by_wire)
            chosen += tuple(s for s in select if s in entity.rel_by_name)
            if select and not chosen:
                continue
            expected = [orjson.loads(read.dumps(read.serialize(ctx, entity, row, chosen))) for row in rows]
            params = {"$top": "1000", "$orderby": "id"} | ({"$select": ",".join(chosen)} if chosen else {})
            page = await get(sta, entity.plural, **params)
            assert _same_meaning(page["value"]) == _same_meaning(expected), (entity.name, chosen)
            for row, value in zip(rows, expected, strict=True):  # one entity by id: the same JSON
                one = await get(
                    sta, f"{entity.plural}({row['id']})", **({"$select": ",".join(chosen)} if chosen else {})
                )
                assert _same_meaning(one) == _same_meaning(value)


async def test_python_serializer_writes_observations_in_the_same_text_as_postgresql(
    sta: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """The MQTT bridge (`read.serialize`) and HTTP (jsonsql) agree to the byte on Observations: instants with
    fractional seconds trimmed as PostgreSQL's to_json trims them, integral doubles without `.0`, exponents."""
    thing = await create(sta, "Things", thing_body(observation_type=OBSERVATION))
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    results: list[Any] = [6.0, 21.5, -0.0, 0.1, 1e-4, 2.5e-7, 1e15, 1e20, 123456789.125, -7, 98858174109921408.0]
    for n, result in enumerate(results):
        body = {
            "phenomenonTime": f"2026-11-28T20:17:{n:02d}.{477 if n % 2 else 5}Z",
            "result": result,
            "resultTime": f"2026-11-28T20:18:{n:02d}.100Z",
        }
        if n % 3 == 0:  # an interval with fractional ends, and one validTime
            body["phenomenonTime"] = f"2026-11-28T20:17:{n:02d}.250Z/2026-11-28T20:19:{n:02d}Z"
            body["validTime"] = f"2026-11-28T20:00:00.000010Z/2026-11-29T20:00:{n:02d}.5Z"
        response = await sta.post(f"{BASE}/Datastreams({ds})/Observations", json=body, headers=AUTH)
        assert response.status_code == 201, response.text
    entity = BY_NAME["Observation"]
    ctx = read.Context(base="http://testserver" + BASE, principal=ANONYMOUS)
    rows = await db.fetch(f"SELECT {sql.select_list(entity, 'c', 'observation')} FROM observation c ORDER BY c.id")
    assert len(rows) == len(results)
    python = [read.dumps(read.serialize(ctx, entity, row, ())) for row in rows]
    response = await sta.get(f"{BASE}/Observations", params={"$orderby": "id"})
    assert response.status_code == 200
    assert b'"value":[' + b",".join(python) + b"]" in response.content
    assert b'"phenomenonTime":"2026-11-28T20:17:01.477Z"' in python[1]
    assert b'"result":6,' in python[0] and b'"result":-0,' in python[2] and b'"result":1e+20,' in python[7]
    for row, text in zip(rows, python, strict=True):
        one = await sta.get(f"{BASE}/Observations({row['id']})")
        assert one.content == text
        for select in (("phenomenonTime", "result"), ("validTime", "resultTime")):
            chosen = await sta.get(f"{BASE}/Observations({row['id']})", params={"$select": ",".join(select)})
            assert chosen.content == read.dumps(read.serialize(ctx, entity, row, select))


async def test_expanded_json_nests_pages_counts_and_next_links(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body(n_ds=2, observation_type=OBSERVATION))
    ds = [d["@iot.id"] for d in (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"]]
    await _varied_observations(sta, ds[0])
    expand = (
        "Datastreams($orderby=id;$count=true;"
        "$expand=Observations($top=2;$orderby=phenomenonTime desc;$select=result),Sensor($select=name))"
    )
    body = await get(sta, "Things", **{"$expand": expand, "$select": "name"})
    (value,) = body["value"]
    assert list(value) == ["name", "Datastreams@iot.count", "Datastreams"]
    first, second = value["Datastreams"]
    assert value["Datastreams@iot.count"] == 2
    assert first["Observations"] == [{"result": None}, {"result": {"pm10": 12, "pm2_5": [1, 2]}}]
    assert first["Observations@iot.nextLink"].startswith(f"http://testserver{BASE}/Datastreams({ds[0]})/Observations?")
    assert "$skip=2" in first["Observations@iot.nextLink"]
    assert second["Observations"] == [] and "Observations@iot.nextLink" not in second
    assert first["Sensor"] == {"name": "DHT22 Station Bellecour 0"}
    # an entity with no property selected but an expansion stays valid JSON
    only = await get(sta, f"Datastreams({ds[0]})", **{"$select": "Thing", "$expand": "Thing($select=name)"})
    assert only["Thing"] == {"name": "Station Bellecour"}
    assert set(only) <= {"Thing", "Thing@iot.navigationLink"}


async def test_latest_value_path_checks_its_datastream_in_the_same_statement(sta: httpx.AsyncClient) -> None:
    thing = await create(sta, "Things", thing_body(observation_type=OBSERVATION))
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    latest = {"$top": "1", "$orderby": "phenomenonTime desc"}
    assert (await get(sta, f"Datastreams({ds})/Observations", **latest)) == {"value": []}
    await _varied_observations(sta, ds)
    page = await get(sta, f"Datastreams({ds})/Observations", **latest)
    assert [o["phenomenonTime"] for o in page["value"]] == ["2026-11-01T06:00:00Z"]
    assert "$skip=1" in page["@iot.nextLink"]
    missing = await sta.get(f"{BASE}/Datastreams({ds + 1000})/Observations", params=latest)
    assert missing.status_code == 404
    assert "Datastream" in missing.json()["detail"]


async def test_plan_modes_only_where_asked(settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> None:
    async def mode(conn: asyncpg.Connection) -> str:
        return str(await conn.fetchval("SHOW plan_cache_mode"))

    try:
        async with pooled(engine, settings, generic_plans=True) as conn:
            assert await mode(conn) == "force_generic_plan"
            async with conn.transaction():  # a statement needing values, inside a transaction: only for it
                await use_generic_plans(conn, False)
                assert await mode(conn) == "auto"
            assert await mode(conn) == "force_generic_plan"
            await use_generic_plans(conn, False)
            assert await mode(conn) == "auto"
            await use_plans(conn, "custom")
            assert await mode(conn) == "force_custom_plan"
            await use_generic_plans(conn, True)
        # another door takes the same connections back as PostgreSQL plans them
        for _ in range(settings.db_pool_size + 1):
            async with pooled(engine, settings) as conn:
                assert await mode(conn) == "auto"
    finally:
        await close_read_pool(engine)


async def test_instants_and_links_whatever_the_database_date_style(
    sta_settings: Settings, engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    """PostgreSQL writes instants from their text form (`jsonsql`), which DateStyle changes: the API's sessions
    set it, so a city's database defaulting to another style changes nothing."""
    name = await db.fetchval("SELECT current_database()")
    await db.execute(f"ALTER DATABASE \"{name}\" SET DateStyle = 'SQL, DMY'")
    try:
        async with app_client(sta_settings, engine) as sta:  # a new read pool: sessions opened after the change
            thing = await create(sta, "Things", thing_body(observation_type=OBSERVATION))
            ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
            await _varied_observations(sta, ds)
            responses = [
                await sta.get(f"{BASE}/Datastreams({ds})/Observations", params={"$orderby": "id"}),
                await sta.get(f"{BASE}/Observations", params={"$orderby": "id", "$expand": "Datastream($select=id)"}),
                await sta.get(f"{BASE}/Things", params={"$expand": "Datastreams($expand=Observations($top=1))"}),
                await sta.get(f"{BASE}/Datastreams({ds})"),
            ]
    finally:
        await db.execute(f'ALTER DATABASE "{name}" RESET DateStyle')
    for response in responses:
        assert response.status_code == 200
    page = responses[0].json()["value"]
    assert [o["phenomenonTime"] for o in page[:3]] == [
        "2026-11-01T00:00:00Z",
        "2026-11-01T01:00:00.25Z",
        "2026-11-01T02:00:00Z/2026-11-01T03:00:00Z",
    ]
    assert page[1]["resultTime"] == "2026-11-01T01:00:01Z"
    assert page[4]["validTime"] == "2026-11-01T05:00:00Z/2026-11-02T05:00:00Z"
    assert page[0]["@iot.selfLink"] == f"http://testserver{BASE}/Observations({page[0]['@iot.id']})"
    expanded = responses[1].json()["value"][0]
    assert expanded["Datastream"] == {"@iot.id": ds}
    assert expanded["FeatureOfInterest@iot.navigationLink"].startswith(f"http://testserver{BASE}/Observations(")
    nested = responses[2].json()["value"][0]["Datastreams"][0]
    assert nested["Observations"][0]["Datastream@iot.navigationLink"].startswith(f"http://testserver{BASE}/")
    assert responses[3].json()["phenomenonTime"] == "2026-11-01T00:00:00Z/2026-11-01T06:00:00Z"
