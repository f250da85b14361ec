"""HTTP imports: multipart upload with a publisher key (checked before the upload is read), reports kept for later."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.settings import Settings
from tests.catalog_helpers import mark_published
from tests.conftest import TEST_ADMIN_AUTH, make_key

pytestmark = pytest.mark.db

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures"
AUTH = TEST_ADMIN_AUTH


@pytest.fixture
async def admin_client(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection
) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield http


async def test_imports_need_a_publisher_key(
    admin_client: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    reader = await make_key(engine, "reader")
    for headers, status in (
        ({}, 401),
        ({"Authorization": "Bearer nope"}, 401),
        ({"Authorization": "td_0000test_x"}, 401),
        ({"X-API-Key": reader}, 403),
    ):
        response = await admin_client.post(
            "/api/v1/datasets/x/imports",
            files={"file": ("a.csv", b"a;b\n1;2\n", "text/csv")},
            data={"create": "true"},
            headers=headers,
        )
        assert response.status_code == status, headers
        assert response.headers["content-type"] == "application/problem+json"
    assert await db.fetchval("SELECT count(*) FROM dataset") == 0


async def test_a_publisher_imports_into_what_it_created_and_nothing_else(
    admin_client: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    publisher = {"X-API-Key": await make_key(engine, "publisher")}
    created = await admin_client.post(
        "/api/v1/datasets/mine/imports",
        files={"file": ("a.csv", b"a;b\n1;2\n", "text/csv")},
        data={"create": "true"},
        headers=publisher,
    )
    assert created.status_code == 201, created.text
    again = await admin_client.post(
        "/api/v1/datasets/mine/imports", files={"file": ("a.csv", b"a;b\n3;4\n", "text/csv")}, headers=publisher
    )
    assert again.status_code == 201, again.text
    other = {"X-API-Key": await make_key(engine, "publisher")}
    hidden = await admin_client.post(
        "/api/v1/datasets/mine/imports", files={"file": ("a.csv", b"a;b\n5;6\n", "text/csv")}, headers=other
    )
    assert hidden.status_code == 404, "a draft is invisible to another publisher"
    await mark_published("mine")
    refused = await admin_client.post(
        "/api/v1/datasets/mine/imports", files={"file": ("a.csv", b"a;b\n5;6\n", "text/csv")}, headers=other
    )
    assert refused.status_code == 403
    assert await db.fetchval("SELECT row_count FROM dataset WHERE slug = 'mine'") == 2
    actions = await db.fetch("SELECT actor, action, target_id FROM audit_event WHERE action = 'dataset.import'")
    assert len(actions) == 2
    assert all(a["actor"].startswith("key:") and a["target_id"] == "mine" for a in actions)


async def test_upload_with_schema_then_read_the_report(admin_client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    schemas = FIXTURES / "schemas" / "stationnement"
    response = await admin_client.post(
        "/api/v1/datasets/parkings/imports",
        files={
            "file": ("exemple-valide.csv", (schemas / "exemple-valide.csv").read_bytes(), "text/csv"),
            "schema": ("schema.json", (schemas / "schema.json").read_bytes(), "application/json"),
        },
        data={"create": "true", "title": "Parkings"},
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    report = response.json()
    assert report["status"] == "succeeded"
    assert report["rows_inserted"] == 2
    assert response.headers["location"] == f"/api/v1/datasets/parkings/imports/{report['import_id']}"
    await mark_published("parkings")
    later = await admin_client.get(response.headers["location"])
    assert later.status_code == 200
    body = later.json()
    assert (body["status"], body["rows_loaded"], body["report"]["rows_inserted"]) == ("succeeded", 2, 2)
    assert await db.fetchval("SELECT title FROM dataset WHERE slug = 'parkings'") == "Parkings"

    bad = (schemas / "exemple-valide.csv").read_text(encoding="utf-8").replace(",tous,", ",personne,", 1)
    refused = await admin_client.post(
        "/api/v1/datasets/parkings/imports",
        files={"file": ("bad.csv", bad.encode(), "text/csv")},
        data={"mode": "upsert"},
        headers=AUTH,
    )
    assert refused.status_code == 422
    problem = refused.json()
    assert refused.headers["content-type"] == "application/problem+json"
    assert problem["report"]["errors"][0]["line"] == 2
    assert problem["report"]["errors"][0]["column"] == "type_usagers"
    failed = await admin_client.get(f"/api/v1/datasets/parkings/imports/{problem['report']['import_id']}")
    assert failed.json()["status"] == "failed"
    assert await db.fetchval("SELECT row_count FROM dataset") == 2


async def test_geojson_upload_and_restricted_reports(admin_client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    path = FIXTURES / "geojson" / "rennes_metropole_stations_comptages_auto.geojson"
    response = await admin_client.post(
        "/api/v1/datasets/comptages/imports",
        files={"file": (path.name, path.read_bytes(), "application/geo+json")},
        data={"create": "true"},
        headers=AUTH,
    )
    assert response.status_code == 201, response.text
    assert response.json()["rows_inserted"] == 74
    location = response.headers["location"]
    assert (await admin_client.get(location)).status_code == 404, "a draft's report is its writers'"
    await mark_published("comptages")
    assert (await admin_client.get(location)).status_code == 200
    await db.execute("UPDATE dataset SET access = 'restricted'")
    hidden = await admin_client.get(location)
    assert hidden.status_code == 404
    assert (await admin_client.get(location, headers=AUTH)).status_code == 200


async def test_missing_dataset_and_bad_mode(admin_client: httpx.AsyncClient) -> None:
    files = {"file": ("a.csv", b"a;b\n1;2\n", "text/csv")}
    response = await admin_client.post("/api/v1/datasets/nothing/imports", files=files, headers=AUTH)
    assert response.status_code == 404
    response = await admin_client.post(
        "/api/v1/datasets/nothing/imports", files=files, data={"mode": "merge"}, headers=AUTH
    )
    assert response.status_code == 400
