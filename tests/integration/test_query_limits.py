"""Query cost limits on every read door (400 naming the limit and its value), and a statement timeout that
answers a clean 503 problem+json on each door instead of a 500."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest

from territoire_data.api.app import create_app
from territoire_data.sensorthings.routes import close_pool
from territoire_data.settings import Settings
from tests.catalog_helpers import add_point_table, add_sensor, create_dataset
from tests.conftest import make_settings

pytestmark = pytest.mark.db

POINTS = [(f"point {i}", 2.3 + i / 1000, 48.85 + i / 1000, "2024-05-01") for i in range(5)]


@asynccontextmanager
async def app_with(settings: Settings) -> AsyncIterator[httpx.AsyncClient]:
    """An app with its own engine and read pool, so the settings given (timeouts, limits) are the ones in force."""
    app = create_app(settings)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            yield http
    finally:
        await close_pool(app)
        await app.state.engine.dispose()


@pytest.fixture
async def territory(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await create_dataset(client, "points", "Points")
    await add_point_table(db, "points", POINTS)
    await create_dataset(client, "air", "Air", kind="sensors")
    await add_sensor(db, "air", lon=2.35, lat=48.85, values=[1.0, 2.0, 3.0])


def assert_limit(response: httpx.Response, setting: str, maximum: int, status: int = 400) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    assert body["limit"] == setting
    assert body["maximum"] == maximum
    assert setting in body["detail"]
    assert str(maximum) in body["detail"]
    return body


def nested_or(depth: int, leaf: str) -> str:
    return "(" * depth + leaf + ")" * depth


@pytest.mark.usefixtures("territory")
async def test_sensorthings_options_over_their_limits_are_refused_with_the_limit_named(
    client: httpx.AsyncClient,
) -> None:
    sta = "/sta/v1.1"
    cases: list[tuple[str, dict[str, str], str, int]] = [
        ("Things", {"$filter": nested_or(40, "name eq 'x'")}, "TERRITOIRE_FILTER_MAX_DEPTH", 32),
        ("Things", {"$filter": "not " * 2000 + "true"}, "TERRITOIRE_FILTER_MAX_DEPTH", 32),
        ("Things", {"$filter": " or ".join(f"id eq {i}" for i in range(130))}, "TERRITOIRE_FILTER_MAX_NODES", 500),
        ("Things", {"$filter": "name eq '" + "x" * 5000 + "'"}, "TERRITOIRE_FILTER_MAX_LITERAL_LENGTH", 4096),
        ("Things", {"$orderby": ",".join(["id"] * 9)}, "TERRITOIRE_SORT_MAX_KEYS", 8),
        (
            "Things",
            {"$expand": "Datastreams/Observations/FeatureOfInterest/Observations/Datastream"},
            "TERRITOIRE_STA_MAX_EXPAND_DEPTH",
            4,
        ),
        (
            "Things",
            {
                "$expand": "Datastreams($expand=Observations($expand=FeatureOfInterest("
                "$expand=Observations($expand=Datastream))))"
            },
            "TERRITOIRE_STA_MAX_EXPAND_DEPTH",
            4,
        ),
        ("Things", {"$expand": ",".join(["Datastreams/Sensor"] * 11)}, "TERRITOIRE_STA_MAX_EXPAND_ITEMS", 20),
        (
            "Things",
            {
                "$expand": "Datastreams($filter=" + " or ".join(f"id eq {i}" for i in range(70)) + ")",
                "$filter": " or ".join(f"id eq {i}" for i in range(70)),
            },
            "TERRITOIRE_FILTER_MAX_NODES",
            500,
        ),
    ]
    for entity, params, setting, maximum in cases:
        assert_limit(await client.get(f"{sta}/{entity}", params=params), setting, maximum)
    # Just under the limits: answered.
    ok = {
        "$filter": nested_or(30, "name eq 'x'"),
        "$expand": "Datastreams($expand=Observations($expand=FeatureOfInterest($top=1);$top=1))",
        "$orderby": ",".join(["id"] * 8),
    }
    assert (await client.get(f"{sta}/Things", params=ok)).status_code == 200
    many = " or ".join(f"id eq {i}" for i in range(124))  # 495 nodes
    assert (await client.get(f"{sta}/Observations", params={"$filter": many})).status_code == 200
    # Inside a $batch too, where no URL length bounds a request (a geometry literal of 2,600 points).
    line = "geography'LINESTRING(" + ", ".join(["1 2"] * 2600) + ")'"
    batch = {
        "requests": [
            {"id": "1", "method": "get", "url": "Things?$filter=" + nested_or(40, "id eq 1")},
            {"id": "2", "method": "get", "url": f"Locations?$filter=st_within(location, {line})"},
        ]
    }
    reply = await client.post(f"{sta}/$batch", json=batch)
    assert reply.status_code == 200
    statuses = [(r["status"], r["body"]["detail"]) for r in reply.json()["responses"]]
    assert statuses[0][0] == 400 and "TERRITOIRE_FILTER_MAX_DEPTH" in statuses[0][1], statuses
    assert statuses[1][0] == 400 and "TERRITOIRE_FILTER_MAX_COORDINATES" in statuses[1][1], statuses


@pytest.mark.usefixtures("territory")
async def test_cql2_filters_sortby_bbox_over_their_limits_are_refused_on_features_and_records(
    client: httpx.AsyncClient,
) -> None:
    items = "/ogcapi/collections/points/items"
    records = "/api/v1/datasets/points/records"
    csv = "/api/v1/datasets/points/exports/csv"
    deep_json = {"op": "=", "args": [{"property": "nom"}, "x"]}
    for _ in range(40):
        deep_json = {"op": "not", "args": [deep_json]}
    wide = " OR ".join(f"nom = 'n{i}'" for i in range(200))
    cases: list[tuple[str, dict[str, str], str, int]] = [
        (items, {"filter": nested_or(40, "nom = 'x'")}, "TERRITOIRE_FILTER_MAX_DEPTH", 32),
        # Would crash the process inside the `cql2` parser: refused before it.
        (items, {"filter": "nom = " + "-" * 3000 + "1"}, "TERRITOIRE_FILTER_MAX_DEPTH", 32),
        (items, {"filter": "NOT " * 1500 + "nom = 'x'"}, "TERRITOIRE_FILTER_MAX_DEPTH", 32),
        (items, {"filter": json.dumps(deep_json), "filter-lang": "cql2-json"}, "TERRITOIRE_FILTER_MAX_DEPTH", 32),
        (items, {"filter": "nom = " + "+".join(["1"] * 600)}, "TERRITOIRE_FILTER_MAX_DEPTH", 32),
        (items, {"filter": wide}, "TERRITOIRE_FILTER_MAX_NODES", 500),
        (items, {"filter": "nom = '" + "x" * 5000 + "'"}, "TERRITOIRE_FILTER_MAX_LITERAL_LENGTH", 4096),
        (items, {"sortby": ",".join(["nom"] * 9)}, "TERRITOIRE_SORT_MAX_KEYS", 8),
        (records, {"where": wide}, "TERRITOIRE_FILTER_MAX_NODES", 500),
        (records, {"order_by": ",".join(["nom"] * 9)}, "TERRITOIRE_SORT_MAX_KEYS", 8),
        (csv, {"where": nested_or(40, "nom = 'x'")}, "TERRITOIRE_FILTER_MAX_DEPTH", 32),
    ]
    for path, params, setting, maximum in cases:
        assert_limit(await client.get(path, params=params), setting, maximum)
    for bbox in ("1e300,0,2e300,1", "nan,0,1,1", "0,10,1,5", "1,2,3"):
        response = await client.get(items, params={"bbox": bbox})
        assert response.status_code == 400, (bbox, response.text)
        assert response.json()["detail"].startswith("bbox:")
    # Just under the limits: answered.
    fine = {"filter": nested_or(30, "nom = 'point 1'"), "sortby": ",".join(["nom"] * 8)}
    response = await client.get(items, params=fine)
    assert response.status_code == 200, response.text
    assert response.json()["numberReturned"] == 1


async def test_url_over_the_length_limit_is_refused_before_any_work(client: httpx.AsyncClient) -> None:
    response = await client.get("/sta/v1.1/Things", params={"$filter": "name eq '" + "x" * 9000 + "'"})
    body = assert_limit(response, "TERRITOIRE_MAX_URL_LENGTH", 8192, status=414)
    assert body["type"].endswith("/query-limit")


@pytest.mark.usefixtures("territory")
async def test_limits_follow_the_settings(settings: Settings, db: asyncpg.Connection) -> None:
    tight = make_settings(
        settings.database_url,
        sta_max_expand_depth=1,
        filter_max_depth=5,
        filter_max_coordinates=8,
        max_url_length=512,
        sort_max_keys=1,
    )
    async with app_with(tight) as http:
        assert_limit(
            await http.get("/sta/v1.1/Things", params={"$expand": "Datastreams/Thing"}),
            "TERRITOIRE_STA_MAX_EXPAND_DEPTH",
            1,
        )
        assert (await http.get("/sta/v1.1/Things", params={"$expand": "Datastreams"})).status_code == 200
        assert_limit(
            await http.get("/sta/v1.1/Things", params={"$filter": nested_or(6, "id eq 1")}),
            "TERRITOIRE_FILTER_MAX_DEPTH",
            5,
        )
        assert_limit(await http.get("/sta/v1.1/Things", params={"$orderby": "id,name"}), "TERRITOIRE_SORT_MAX_KEYS", 1)
        polygon = "POLYGON((2 48, 2.1 48, 2.1 48.1, 2 48.1, 2 48))"
        assert_limit(
            await http.get("/ogcapi/collections/points/items", params={"filter": f"S_INTERSECTS(geometry, {polygon})"}),
            "TERRITOIRE_FILTER_MAX_COORDINATES",
            8,
        )
        assert_limit(
            await http.get("/sta/v1.1/Things", params={"$filter": "name eq '" + "x" * 600 + "'"}),
            "TERRITOIRE_MAX_URL_LENGTH",
            512,
            status=414,
        )


# --- statement timeout ----------------------------------------------------------------------------------------


@asynccontextmanager
async def locked(database_url: str, tables: str) -> AsyncIterator[None]:
    """Hold an exclusive lock on tables from another session: every read of them waits, so the statement
    timeout fires deterministically (no pg_sleep, no timing guesses)."""
    holder = await asyncpg.connect(database_url)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(f"LOCK TABLE {tables} IN ACCESS EXCLUSIVE MODE")
        try:
            yield
        finally:
            await transaction.rollback()
    finally:
        await holder.close()


def assert_timeout(response: httpx.Response) -> None:
    assert response.status_code == 503, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["type"].endswith("/statement-timeout")
    assert body["limit"] == "TERRITOIRE_DB_STATEMENT_TIMEOUT_MS"
    assert body["maximum"] == 300
    assert "Traceback" not in response.text
    assert response.headers["retry-after"]


@pytest.mark.usefixtures("territory")
async def test_a_statement_timeout_is_a_clean_503_on_every_door(settings: Settings, db: asyncpg.Connection) -> None:
    table = await db.fetchval("SELECT table_name FROM dataset WHERE slug = 'points'")
    slow = make_settings(settings.database_url, db_statement_timeout_ms=300)
    async with app_with(slow) as http:
        assert (await http.get("/ogcapi/collections/points/items")).status_code == 200  # warm: pools opened
        assert (await http.get("/sta/v1.1/Observations")).status_code == 200
        async with locked(settings.database_url, "observation"):
            assert_timeout(await http.get("/sta/v1.1/Observations", params={"$count": "true"}))
            assert_timeout(await http.get("/sta/v1.1/Datastreams", params={"$expand": "Observations"}))
        async with locked(settings.database_url, f'datasets."{table}"'):
            assert_timeout(await http.get("/ogcapi/collections/points/items"))
            assert_timeout(await http.get("/api/v1/datasets/points/records"))
        async with locked(settings.database_url, "dataset"):
            assert_timeout(await http.get("/api/v1/datasets"))  # the catalog, through SQLAlchemy
        # Once the lock is gone, every door answers again.
        answers = await asyncio.gather(
            http.get("/sta/v1.1/Observations"),
            http.get("/ogcapi/collections/points/items"),
            http.get("/api/v1/datasets"),
        )
        assert [a.status_code for a in answers] == [200, 200, 200]
