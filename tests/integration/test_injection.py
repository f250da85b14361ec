"""SQL injection attempts on every door: each is refused (400, or 404 for an unknown id) or treated as plain data,
nothing stored changes (table list, row counts, checksums of the catalog and the observations), and the server
still answers afterwards."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

import asyncpg
import httpx
import pytest

from tests.catalog_helpers import AUTH, add_point_table, add_sensor, create_dataset, mark_published

pytestmark = pytest.mark.db

POINTS = [(f"point {i}", 2.3 + i / 1000, 48.85 + i / 1000, "2024-05-01") for i in range(5)]

# Real SQL-ish payloads: quotes, statement separators, comments, placeholders, casts, dollar quoting, unicode
# (look-alike quotes, right-to-left override), a backslash escape and a very long string. NUL bytes get their own
# test (refused at the door, before any parser).
PAYLOADS = [
    "'; DROP TABLE dataset; --",
    '"; DROP TABLE dataset; --',
    "1; DELETE FROM observation",
    "1) OR (1=1",
    "' OR '1'='1",
    "x' OR 1=1 --",
    "$1",
    "$1; DROP TABLE thing",
    "1 /* comment */ OR 1=1",
    "name); DELETE FROM thing; --",
    "id::text",
    "$$; DROP TABLE dataset; $$",
    "E'\\x27; DROP TABLE dataset; --'",
    "\\'; DROP TABLE dataset; --",
    "pg_sleep(10)",
    "(SELECT count(*) FROM api_key)",
    "ʼ OR 1=1 -- \u202e",
    "é𝕏'; DROP TABLE observation; --",
    "x" * 3000 + "'; DROP TABLE dataset; --",
]


def odata_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def cql2_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


@pytest.fixture
async def territory(client: httpx.AsyncClient, db: asyncpg.Connection) -> dict[str, Any]:
    await create_dataset(client, "points", "Points")
    await add_point_table(db, "points", POINTS)
    await create_dataset(client, "air", "Air", kind="sensors")
    datastream = await add_sensor(db, "air", lon=2.35, lat=48.85, values=[1.0, 2.0, 3.0])
    return {"datastream": datastream}


async def fingerprint(db: asyncpg.Connection) -> dict[str, Any]:
    """What is stored: every table of ours with its row count, and checksums of the catalog and observations."""
    tables = [
        r[0]
        for r in await db.fetch(
            "SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p') "
            "AND n.nspname IN ('public', 'datasets') AND NOT c.relispartition "
            "ORDER BY 1"
        )
    ]
    counts = {table: await db.fetchval(f"SELECT count(*) FROM {table}") for table in tables}
    return {
        "tables": tables,
        "counts": counts,
        "dataset": await db.fetchval("SELECT md5(string_agg(d::text, '|' ORDER BY d.id)) FROM dataset d"),
        "observation": await db.fetchval(
            "SELECT md5(string_agg(o::text, '|' ORDER BY o.datastream_id, o.phenomenon_time)) FROM observation o"
        ),
        "thing": await db.fetchval("SELECT md5(string_agg(t::text, '|' ORDER BY t.id)) FROM thing t"),
        "api_key": await db.fetchval("SELECT md5(string_agg(k::text, '|' ORDER BY k.id)) FROM api_key k"),
    }


async def still_serving(client: httpx.AsyncClient) -> None:
    assert (await client.get("/health")).status_code == 200
    assert (await client.get("/sta/v1.1/Observations")).json()["value"]
    assert (await client.get("/ogcapi/collections/points/items")).json()["numberReturned"] == len(POINTS)
    assert (await client.get("/api/v1/datasets/points")).status_code == 200


def refused(response: httpx.Response, *allowed: int) -> None:
    """A refusal: the status is one of `allowed` and the body a problem, never a 5xx or a stack trace."""
    assert response.status_code in allowed, (response.request.url, response.status_code, response.text[:300])
    assert response.headers["content-type"] == "application/problem+json", response.text[:300]
    assert "Traceback" not in response.text
    assert "syntax error at or near" not in response.text  # no SQL assembled from the payload reached PostgreSQL


@pytest.mark.usefixtures("territory")
async def test_sensorthings_query_options_and_ids(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    before = await fingerprint(db)
    sta = "/sta/v1.1"
    for payload in PAYLOADS:
        for option in ("$filter", "$orderby", "$select", "$expand", "$top", "$skip", "$count"):
            refused(await client.get(f"{sta}/Things", params={option: payload}), 400)
        # Inside a string literal the payload is a value, bound: it matches nothing.
        for flt in (f"name eq {odata_string(payload)}", f"substringof({odata_string(payload)}, description)"):
            response = await client.get(f"{sta}/Things", params={"$filter": flt})
            assert response.status_code == 200, response.text[:300]
            assert response.json()["value"] == []
        response = await client.get(f"{sta}/Observations", params={"$filter": f"result eq {odata_string(payload)}"})
        assert response.status_code in (200, 400), response.text[:300]
        # Property paths, nested options and entity ids.
        # A JSON key of `properties` is bound as a text[] path: matches nothing, or refused when not a name.
        response = await client.get(f"{sta}/Things", params={"$filter": f"properties/{payload} eq 1"})
        assert response.status_code in (200, 400), response.text[:300]
        if response.status_code == 200:
            assert response.json()["value"] == []
        refused(await client.get(f"{sta}/Things", params={"$expand": f"Datastreams($filter={payload})"}), 400)
        refused(await client.get(f"{sta}/Things({quote(payload, safe='')})"), 400, 404)
        refused(await client.get(f"{sta}/{quote(payload, safe='')}"), 400, 404)
    assert await fingerprint(db) == before
    await still_serving(client)


@pytest.mark.usefixtures("territory")
async def test_features_filters_sortby_properties_and_collection_ids(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    before = await fingerprint(db)
    items = "/ogcapi/collections/points/items"
    for payload in PAYLOADS:
        refused(await client.get(items, params={"filter": payload}), 400)
        refused(await client.get(items, params={"filter": payload, "filter-lang": "cql2-json"}), 400)
        refused(await client.get(items, params={"filter": f"{payload} = 1"}), 400)
        refused(await client.get(items, params={"filter": f'"{payload}" = 1'}), 400)
        as_json = {"op": "=", "args": [{"property": payload}, 1]}
        refused(await client.get(items, params={"filter": json.dumps(as_json), "filter-lang": "cql2-json"}), 400)
        as_json = {"op": payload, "args": [{"property": "nom"}, 1]}
        refused(await client.get(items, params={"filter": json.dumps(as_json), "filter-lang": "cql2-json"}), 400)
        refused(await client.get(items, params={"sortby": payload}), 400)
        refused(await client.get(items, params={"properties": payload}), 400)
        refused(await client.get(items, params={payload: "1"}), 400)  # a property name as a parameter
        refused(await client.get(items, params={"bbox": payload}), 400)
        refused(await client.get(items, params={"datetime": payload}), 400)
        refused(await client.get(items, params={"crs": payload}), 400)
        # As a value, bound: it matches nothing.
        response = await client.get(items, params={"filter": f"nom = {cql2_string(payload)}"})
        assert response.status_code == 200, response.text[:300]
        assert response.json()["numberReturned"] == 0
        response = await client.get(items, params={"nom": payload})
        assert response.status_code == 200, response.text[:300]
        assert response.json()["numberReturned"] == 0
        # Ids in the path.
        refused(await client.get(f"/ogcapi/collections/{quote(payload, safe='')}/items"), 404)
        refused(await client.get(f"/ogcapi/collections/{quote(payload, safe='')}"), 404)
        refused(await client.get(f"{items}/{quote(payload, safe='')}"), 400, 404)
    refused(await client.get("/ogcapi/collections/x;drop table dataset/items"), 404)
    refused(await client.get("/ogcapi/collections/points;DROP TABLE dataset;--/items"), 404)
    assert await fingerprint(db) == before
    await still_serving(client)


@pytest.mark.usefixtures("territory")
async def test_records_exports_and_catalog(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    before = await fingerprint(db)
    records = "/api/v1/datasets/points/records"
    for payload in PAYLOADS:
        for name in ("where", "select", "order_by", "bbox", "datetime"):
            refused(await client.get(records, params={name: payload}), 400)
            refused(await client.get("/api/v1/datasets/points/exports/csv", params={name: payload}), 400)
        slug = quote(payload, safe="")
        refused(await client.get(f"/api/v1/datasets/{slug}"), 400, 404)
        refused(await client.get(f"/api/v1/datasets/{slug}/records"), 400, 404)
        refused(await client.get(f"/api/v1/datasets/{slug}/exports/geojson"), 400, 404)
        refused(await client.get(f"/api/v1/datastreams/{slug}/exports/csv"), 400, 404)
        # Search terms and facets are values: bound, they match nothing.
        for name in ("q", "theme", "licence", "publisher", "format"):
            response = await client.get("/api/v1/datasets", params={name: payload})
            assert response.status_code in (200, 400, 422), response.text[:300]  # 422: an unknown format
            if response.status_code == 200:
                assert response.json()["total"] == 0
    assert await fingerprint(db) == before
    await still_serving(client)


@pytest.mark.usefixtures("territory")
async def test_nul_bytes_are_refused_at_the_door(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    before = await fingerprint(db)
    for path, params in (
        ("/sta/v1.1/Things", {"$filter": "name eq 'a\x00b'"}),
        ("/ogcapi/collections/points/items", {"filter": "nom = 'a\x00'"}),
        ("/ogcapi/collections/points/items", {"nom": "\x00"}),
        ("/api/v1/datasets", {"q": "a\x00; DROP TABLE dataset"}),
        ("/api/v1/datasets/points/records", {"where": "nom = '\x00'"}),
    ):
        refused(await client.get(path, params=params), 400)
    refused(await client.get("/api/v1/datasets/po%00ints"), 400)
    # In a JSON body (a write): refused, nothing half-written.
    response = await client.post("/api/v1/datasets", json={"slug": "nul", "title": "a\x00b"}, headers=AUTH)
    refused(response, 400, 422)
    response = await client.post("/sta/v1.1/Things", json={"name": "a\x00", "description": "d"}, headers=AUTH)
    refused(response, 400)
    assert await fingerprint(db) == before
    await still_serving(client)


@pytest.mark.usefixtures("territory")
async def test_hostile_csv_headers_become_quoted_columns_and_nothing_else(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A column named like an injection is a column: created through quoted identifiers, queryable by its exact
    name through every door, and nothing else in the store changes."""
    before = await fingerprint(db)
    evil = 'a"; DROP TABLE dataset; --'
    quoted = "b'); DELETE FROM observation; --"
    csv = f'"{evil.replace(chr(34), chr(34) * 2)}";"{quoted}";"new\nline";"$1";longitude;latitude\n'
    csv += "1;x;y;z;2.35;48.85\n2;y;z;w;2.36;48.86\n"
    response = await client.post(
        "/api/v1/datasets/hostile/imports",
        files={"file": ("hostile.csv", csv.encode(), "text/csv")},
        data={"create": "true"},
        headers=AUTH,
    )
    assert response.status_code == 201, response.text[:500]
    names = [f["name"] for f in response.json()["table_schema"]["fields"]]
    assert evil in names
    assert quoted in names
    after = await fingerprint(db)
    # Only the new dataset (its catalog row, import report, audit event and typed table) was added.
    assert set(before["tables"]) < set(after["tables"])
    assert [t for t in after["tables"] if t not in before["tables"]] == [
        t for t in after["tables"] if t.startswith("datasets.")
    ][-1:]
    for table in ("public.observation", "public.thing", "public.datastream", "public.api_key"):
        assert after["counts"][table] == before["counts"][table]
    assert after["observation"] == before["observation"]
    assert after["counts"]["public.dataset"] == before["counts"]["public.dataset"] + 1

    # The hostile column through every door, by its exact name.
    await mark_published("hostile")
    items = "/ogcapi/collections/hostile/items"
    response = await client.get(items, params={"properties": evil, "sortby": f"-{evil}"})
    assert response.status_code == 200, response.text[:300]
    features = response.json()["features"]
    assert [f["properties"][evil] for f in features] == [2, 1]
    as_json = {"op": "=", "args": [{"property": quoted}, "y"]}
    response = await client.get(items, params={"filter": json.dumps(as_json), "filter-lang": "cql2-json"})
    assert response.status_code == 200, response.text[:300]
    assert response.json()["numberReturned"] == 1
    response = await client.get("/api/v1/datasets/hostile/exports/csv")
    assert response.status_code == 200
    assert '"a""; DROP TABLE dataset; --"' in response.text.splitlines()[0]
    assert await db.fetchval("SELECT count(*) FROM dataset") == after["counts"]["public.dataset"]
    await still_serving(client)
