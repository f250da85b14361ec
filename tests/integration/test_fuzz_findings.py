"""What the schemathesis run (tests/e2e/test_schemathesis.py) found, one regression test each: every one was a 500."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from tests.catalog_helpers import AUTH, add_point_table, add_sensor, create_dataset

pytestmark = pytest.mark.db

POINTS = [(f"point {i}", 2.3 + i / 1000, 48.85 + i / 1000, "2024-05-01") for i in range(3)]


async def test_the_dcat_catalog_survives_contacts_and_urls_no_uri_may_hold(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    # Refused at the door now...
    for field, value in (("contact_email", 'a"b@c.fr'), ("conforms_to", "https://x.fr/<schema>")):
        response = await client.post(
            "/api/v1/datasets", json={"slug": "bad", "title": "Bad", field: value}, headers=AUTH
        )
        assert response.status_code == 422, response.text
    # ... and a value stored before (or by another path) is escaped, not a 500.
    await create_dataset(client, "quirky", "Quirky")
    await db.execute(
        "UPDATE dataset SET contact_email = $1, extra = extra || jsonb_build_object('conforms_to', $2::text) "
        "WHERE slug = 'quirky'",
        '1"󖒄@æ.¡4^Ê',
        "https://schema.example/a b|c",
    )
    for extension in ("ttl", "rdf", "jsonld"):
        response = await client.get(f"/dcat/catalog.{extension}")
        assert response.status_code == 200, (extension, response.text[:300])
    assert "mailto:1%22" in (await client.get("/dcat/catalog.ttl")).text


async def test_sensorthings_expressions_postgresql_cannot_type_are_400s(client: httpx.AsyncClient) -> None:
    await create_dataset(client, "air", "Air", kind="sensors")
    for params in ({"$filter": "not ('a')"}, {"$filter": "'a' and true"}, {"$orderby": "null"}, {"$orderby": "1"}):
        response = await client.get("/sta/v1.1/ObservedProperties", params=params)
        assert response.status_code == 400, (params, response.text)
        assert response.headers["content-type"] == "application/problem+json"
    batch = {"requests": [{"id": "1", "method": "get", "url": "Things?$filter=not ('a')"}]}
    response = await client.post("/sta/v1.1/$batch", json=batch)
    assert response.status_code == 200, response.text
    assert response.json()["responses"][0]["status"] == 400


async def test_a_deleted_collection_is_a_404_even_after_it_was_cached(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await create_dataset(client, "gone", "Gone")
    await add_point_table(db, "gone", POINTS)
    assert (await client.get("/ogcapi/collections/gone/items")).status_code == 200  # now cached
    assert (await client.delete("/api/v1/datasets/gone", headers=AUTH)).status_code == 204
    for path in ("/ogcapi/collections/gone/items", "/ogcapi/collections/gone/items/1"):
        response = await client.get(path)
        assert response.status_code == 404, (path, response.text)


async def test_a_geojson_upload_that_is_not_utf8_is_refused(client: httpx.AsyncClient) -> None:
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01"
    response = await client.post(
        "/api/v1/datasets/pic/imports",
        files={"file": ("file.png", png, "application/json")},
        data={"create": "true"},
        headers=AUTH,
    )
    assert response.status_code == 422, response.text
    assert "UTF-8" in response.json()["detail"]
    assert (await client.get("/api/v1/datasets/pic")).status_code == 404


async def test_a_property_value_is_documented_as_plain_text(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await create_dataset(client, "air", "Air", kind="sensors")
    await add_sensor(db, "air", lon=2.35, lat=48.85, values=[1.5])
    response = await client.get("/sta/v1.1/Datastreams")
    datastream = response.json()["value"][0]["@iot.id"]
    response = await client.get(f"/sta/v1.1/Datastreams({datastream})/name/$value")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    contract = (await client.get("/openapi.json")).json()
    documented = contract["paths"]["/sta/v1.1/{path}"]["get"]["responses"]["200"]["content"]
    assert "text/plain" in documented


async def test_cql2_expressions_postgresql_cannot_type_are_400s(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await create_dataset(client, "points", "Points")
    await add_point_table(db, "points", POINTS)
    for flt in (
        "NOT ((BBOX(2,48,3,49) IN (geometry, '', BBOX(2,48,3,49))) IS NULL)",  # geometry = text: ambiguous
        "NOT (T_BEFORE(1, NULL))",  # a parameter of no type
    ):
        for path in ("/ogcapi/collections/points/items", "/ogcapi/collections/points/tiles/WebMercatorQuad/5/16/11"):
            response = await client.get(path, params={"filter": flt})
            assert response.status_code == 400, (path, flt, response.text)
        response = await client.get("/api/v1/datasets/points/records", params={"where": flt})
        assert response.status_code == 400, (flt, response.text)
