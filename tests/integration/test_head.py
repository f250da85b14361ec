"""HEAD answers like GET without the body, on every door (link checkers such as data.gouv.fr's use HEAD)."""

from __future__ import annotations

from typing import Any

import asyncpg
import httpx
import pytest

from territoire_data.api.app import create_app
from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_AUTH
from tests.features_data import load_features_data

pytestmark = pytest.mark.db

# Headers that legitimately differ between two answers to the same resource.
VOLATILE = {"date", "x-request-id", "content-length", "content-encoding", "vary"}

DOORS = [
    "/",
    "/datasets/mesures",
    "/api/v1/datasets",
    "/api/v1/datasets/mesures",
    "/api/v1/datasets/mesures/records?limit=5",
    "/api/v1/datasets/mesures/exports/csv",
    "/api/v1/datasets/mesures/exports/geojson",
    "/api/v1/datasets/mesures/exports/parquet",
    "/dcat/catalog.jsonld",
    "/ogcapi/collections",
    "/ogcapi/collections/mesures/items?limit=3",
    "/sta/v1.1",
    "/sta/v1.1/Things",
    "/health",
]


@pytest.fixture
async def data(db: asyncpg.Connection) -> dict[str, int]:
    return await load_features_data(db)


def _stable(headers: httpx.Headers) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k not in VOLATILE}


@pytest.mark.parametrize("path", DOORS)
async def test_head_answers_as_get_without_a_body(client: httpx.AsyncClient, data: dict[str, int], path: str) -> None:
    got = await client.get(path, headers={"Accept-Encoding": "identity"})
    head = await client.head(path, headers={"Accept-Encoding": "identity"})
    assert got.status_code == 200, got.text
    assert head.status_code == 200
    assert head.content == b""
    assert _stable(head.headers) == _stable(got.headers)


async def test_head_keeps_the_access_rules(client: httpx.AsyncClient, data: dict[str, int]) -> None:
    for path in ("/api/v1/datasets/secret/exports/csv", "/ogcapi/collections/secret", "/api/v1/datasets/nope"):
        anonymous = await client.head(path)
        assert anonymous.status_code == 404 and anonymous.content == b""
    assert (await client.head("/api/v1/datasets/secret/exports/csv", headers=TEST_ADMIN_AUTH)).status_code == 200
    assert (await client.head("/ogcapi/collections/mesures/items", params={"bbox": "x"})).status_code == 400


async def test_head_stops_a_streamed_export_at_its_first_chunk(
    settings: Settings, engine: Any, db: asyncpg.Connection, data: dict[str, int]
) -> None:
    """The export's query is not even run: the server sees one (empty) body message, and no cursor opens."""
    app = create_app(settings, engine=engine)
    bodies: list[int] = []

    async def recording(scope: Any, receive: Any, send: Any) -> None:
        async def counted(message: Any) -> None:
            if message["type"] == "http.response.body":
                bodies.append(len(message.get("body", b"")))
            await send(message)

        await app(scope, receive, counted)

    transport = httpx.ASGITransport(app=recording)
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
        full = await http.get("/api/v1/datasets/mesures/exports/geojson", headers={"Accept-Encoding": "identity"})
        assert full.status_code == 200 and len(bodies) > 1  # streamed in several chunks
        bodies.clear()
        head = await http.head("/api/v1/datasets/mesures/exports/geojson", headers={"Accept-Encoding": "identity"})
    assert head.status_code == 200
    assert bodies == [0]
