"""OGC API - Features, by conformance class: Core, GeoJSON, HTML, CRS (Part 2), Filtering (Part 3), checked
against PostGIS computing the same thing."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import asyncpg
import httpx
import orjson
import pytest

from territoire_data.query.collections import get_collection
from territoire_data.query.cql2sql import parse
from territoire_data.query.crs import parse_crs
from territoire_data.query.items import ItemsQuery, items_sql
from tests.features_data import MESURES_COUNT, load_features_data, load_sensor_network

pytestmark = pytest.mark.db

OGC = "/ogcapi"


@pytest.fixture
async def data(db: asyncpg.Connection) -> dict[str, int]:
    return await load_features_data(db)


async def _ids(client: httpx.AsyncClient, collection: str, **params: Any) -> list[int]:
    response = await client.get(f"{OGC}/collections/{collection}/items", params={"limit": 10000, **params})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["numberReturned"] == len(body["features"])
    return [f["id"] for f in body["features"]]


async def _sql_ids(db: asyncpg.Connection, where: str, *args: Any) -> list[int]:
    table = await db.fetchval("SELECT table_name FROM dataset WHERE slug = 'mesures'")
    rows = await db.fetch(f"SELECT _fid FROM datasets.{table} t WHERE {where} ORDER BY _fid", *args)
    return [r[0] for r in rows]


# --- Core ------------------------------------------------------------------------------------------------------


async def test_core_landing_conformance_and_collections_hide_restricted_datasets(
    client: httpx.AsyncClient, data: dict[str, int]
) -> None:
    landing = (await client.get(OGC)).json()
    assert {"service-desc", "conformance", "data"} <= {link["rel"] for link in landing["links"]}
    conforms = (await client.get(f"{OGC}/conformance")).json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs" in conforms
    assert "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text" in conforms
    listed = (await client.get(f"{OGC}/collections")).json()["collections"]
    assert [c["id"] for c in listed] == ["mesures", "stations", "capteurs"]
    stations = next(c for c in listed if c["id"] == "stations")
    xmin, ymin, xmax, ymax = stations["extent"]["spatial"]["bbox"][0]
    assert -2.1 < xmin < xmax < -1.3
    assert 47.9 < ymin < ymax < 48.3
    for path in ("", "/items", "/items/1", "/queryables"):
        response = await client.get(f"{OGC}/collections/secret{path}")
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
    api = (await client.get(f"{OGC}/api")).json()
    assert api["openapi"].startswith("3.0")
    assert "/collections/mesures/items" in api["paths"]
    assert "/collections/secret/items" not in api["paths"]


async def test_core_paging_follows_next_and_prev_links_over_every_feature(
    client: httpx.AsyncClient, data: dict[str, int]
) -> None:
    url: str | None = f"{OGC}/collections/mesures/items?limit=50"
    seen: list[int] = []
    pages = 0
    while url:
        body = (await client.get(url)).json()
        assert body["numberMatched"] == MESURES_COUNT
        seen.extend(f["id"] for f in body["features"])
        links = {link["rel"]: link["href"] for link in body["links"]}
        if pages > 0:
            assert "offset=" in links["prev"]
        url = links.get("next")
        pages += 1
    assert pages == 3
    assert seen == list(range(1, MESURES_COUNT + 1))


async def test_next_links_page_by_id_after_the_last_feature_and_prev_links_go_back(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    """In id order a next link starts after the page's last id (keyset): a deep page is found through the primary
    key instead of counting past every earlier feature. Walking next then prev links gives the same pages."""
    expected = await _sql_ids(db, "code >= $1", "M002")
    first = f"{OGC}/collections/mesures/items?limit=7&filter=code%20%3E%3D%20%27M002%27"
    url: str | None = first
    pages: list[list[int]] = []
    hrefs: list[str] = []
    while url:
        body = (await client.get(url)).json()
        assert body["numberMatched"] == len(expected)
        pages.append([f["id"] for f in body["features"]])
        links = {link["rel"]: link["href"] for link in body["links"]}
        hrefs.append(url)
        url = links.get("next")
        if url:
            assert f"after-id={pages[-1][-1]}" in url
            assert f"offset={7 * len(pages)}" in url
    assert [i for page in pages for i in page] == expected
    assert len(pages) > 2
    # back from the last page by prev links (offset-based): the same pages, in reverse
    url = hrefs[-1]
    for page in reversed(pages[:-1]):
        body = (await client.get(url)).json()
        url = {link["rel"]: link["href"] for link in body["links"]}["prev"]
        assert [f["id"] for f in (await client.get(url)).json()["features"]] == page
    # sortby pages stay offset-based: an id cursor means nothing in another order
    body = (await client.get(f"{OGC}/collections/mesures/items", params={"limit": 3, "sortby": "-code"})).json()
    nxt = {link["rel"]: link["href"] for link in body["links"]}["next"]
    assert "after-id" not in nxt and "offset=3" in nxt
    bad = await client.get(f"{OGC}/collections/mesures/items", params={"after-id": "2", "sortby": "code"})
    assert bad.status_code == 400 and "after-id" in bad.json()["detail"]
    bad = await client.get(f"{OGC}/collections/mesures/items", params={"after-id": "x"})
    assert bad.status_code == 400 and "after-id" in bad.json()["detail"]


async def test_a_keyset_page_reads_the_primary_key_from_the_cursor(db: asyncpg.Connection) -> None:
    """The statement of an after-id page starts its index scan at the cursor: it reads one page of rows, not the
    150,000 before it (with OFFSET, PostgreSQL reads and drops every one of them)."""
    await db.execute(
        "CREATE TABLE datasets.keyset_probe AS "
        "SELECT g AS _fid, NULL::geometry AS geom FROM generate_series(1, 200000) g"
    )
    await db.execute("ALTER TABLE datasets.keyset_probe ADD PRIMARY KEY (_fid)")
    await db.execute("ANALYZE datasets.keyset_probe")
    probe = SimpleNamespace(source="datasets.keyset_probe", fields=(), temporal_field=None, id="probe")

    def rows_read(sql: str, args: list[Any]) -> Any:
        async def run() -> int:
            plan = orjson.loads(await db.fetchval(f"EXPLAIN (ANALYZE, FORMAT JSON) {sql}", *args))

            def scanned(node: dict[str, Any]) -> int:
                own = node.get("Actual Rows", 0) if "Scan" in node["Node Type"] else 0
                return int(own) + sum(scanned(child) for child in node.get("Plans", []))

            return scanned(plan[0]["Plan"])

        return run()

    keyset = items_sql(probe, ItemsQuery(limit=100, after_id=150_000, skip_geometry=True))  # type: ignore[arg-type]
    assert [r[1] for r in await db.fetch(*keyset[:1], *keyset[1])] == list(range(150_001, 150_102))
    assert await rows_read(*keyset) == 101
    by_offset = items_sql(probe, ItemsQuery(limit=100, offset=150_000, skip_geometry=True))  # type: ignore[arg-type]
    assert [r[1] for r in await db.fetch(*by_offset[:1], *by_offset[1])] == list(range(150_001, 150_102))
    assert await rows_read(*by_offset) > 150_000  # what the keyset avoids: the test measures something


async def test_core_item_by_id_and_unknown_ids(client: httpx.AsyncClient, data: dict[str, int]) -> None:
    one = await client.get(f"{OGC}/collections/mesures/items/3")
    assert one.headers["content-type"] == "application/geo+json"
    feature = one.json()
    assert feature["type"] == "Feature"
    assert feature["id"] == 3
    assert feature["properties"]["code"] == "M002"
    assert feature["geometry"] == {"type": "Point", "coordinates": [4.82, 45.7]}
    no_geometry = (await client.get(f"{OGC}/collections/mesures/items/8")).json()
    assert no_geometry["geometry"] is None
    assert (await client.get(f"{OGC}/collections/mesures/items/9999")).status_code == 404
    assert (await client.get(f"{OGC}/collections/mesures/items/abc")).status_code == 404
    assert (await client.get(f"{OGC}/collections/nope/items")).status_code == 404


async def test_core_properties_sortby_equality_and_parameter_errors(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    body = (
        await client.get(
            f"{OGC}/collections/mesures/items", params={"properties": "code,valeur", "sortby": "-valeur", "limit": 3}
        )
    ).json()
    assert [f["properties"] for f in body["features"]] == [
        {"code": "M119", "valeur": 178.5},
        {"code": "M118", "valeur": 177.0},
        {"code": "M117", "valeur": 175.5},
    ]
    assert await _ids(client, "mesures", actif="true", n="4") == [5]
    assert await _ids(client, "mesures", note="@cmd") == await _sql_ids(db, "note = '@cmd'")
    assert await _ids(client, "mesures", sortby="+actif,-n", limit=2) == [120, 118]
    for bad in (
        {"limit": "0"},
        {"sortby": "nope"},
        {"properties": "nope"},
        {"colour": "red"},
        {"n": "abc"},
        {"bbox": "1,2,3"},
        {"datetime": "yesterday"},
        {"crs": "EPSG:9999"},
    ):
        response = await client.get(f"{OGC}/collections/mesures/items", params=bad)
        assert response.status_code == 400, (bad, response.text)
        assert response.headers["content-type"] == "application/problem+json"


async def test_core_bbox_and_datetime_match_postgis(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    box = "4.795,45.695,4.845,45.725"
    assert await _ids(client, "mesures", bbox=box) == await _sql_ids(
        db, "ST_Intersects(geom, ST_MakeEnvelope(4.795, 45.695, 4.845, 45.725, 4326))"
    )
    assert len(await _ids(client, "mesures", bbox=box)) == 15  # points on the edges intersect too
    # The first date/datetime field (jour) carries the datetime filter: instants, intervals, open ends.
    assert await _ids(client, "mesures", datetime="2024-01-05") == await _sql_ids(db, "jour = '2024-01-05'")
    assert await _ids(client, "mesures", datetime="2024-01-05/2024-01-09") == await _sql_ids(
        db, "jour BETWEEN '2024-01-05' AND '2024-01-09'"
    )
    assert await _ids(client, "mesures", datetime="../2024-01-03") == await _sql_ids(db, "jour <= '2024-01-03'")
    assert await _ids(client, "mesures", datetime="2024-04-20/..") == await _sql_ids(db, "jour >= '2024-04-20'")
    assert await _ids(client, "mesures", datetime="2024-04-20T00:00:00Z/") == await _sql_ids(db, "jour >= '2024-04-20'")


# --- GeoJSON and HTML ---------------------------------------------------------------------------------------------


async def test_html_by_accept_header_and_f_parameter(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    for path in (
        "",
        "/conformance",
        "/collections",
        "/collections/mesures",
        "/collections/mesures/items",
        "/collections/mesures/items/1",
        "/collections/mesures/queryables",
    ):
        page = await client.get(f"{OGC}{path}", headers={"Accept": "text/html"})
        assert page.status_code == 200, path
        assert page.headers["content-type"].startswith("text/html")
        assert '<html lang="fr">' in page.text
    await db.execute("UPDATE datasets.ds_2 SET note = '<script>alert(1)</script>' WHERE _fid = 5")
    page = await client.get(f"{OGC}/collections/mesures/items", params={"f": "html", "limit": 5})
    assert "M004" in page.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page.text
    assert "<script>" not in page.text, "no inline script: only our own files (the map)"
    assert (await client.get(f"{OGC}/collections", params={"f": "json"})).headers["content-type"] == (
        "application/json"
    )


async def test_html_pages_are_french_readable_and_name_the_licence_by_its_url(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    await db.execute("UPDATE dataset SET licence = 'odbl-1.0' WHERE slug = 'mesures'")
    items = (await client.get(f"{OGC}/collections/mesures/items", params={"f": "html", "limit": 20})).text
    assert "/static/portal/portal.css" in items, "the portal's styles"
    assert ">oui<" in items and ">non<" in items
    assert ">True<" not in items and ">False<" not in items
    assert "this document" not in items and "objets affichés" in items
    assert 'id="map"' in items and "f=json" in items, "a map of the page's items, drawn from their GeoJSON"
    valeurs = await db.fetch("SELECT valeur FROM datasets.ds_2 WHERE valeur <> trunc(valeur) LIMIT 1")
    if valeurs:
        assert str(valeurs[0]["valeur"]).replace(".", ",") in items, "decimal comma"
    english = await client.get(f"{OGC}/collections/mesures/items", params={"f": "html", "lang": "en"})
    assert english.status_code == 200
    assert '<html lang="en">' in english.text and ">yes<" in english.text and "features shown" in english.text
    collection = await client.get(f"{OGC}/collections/mesures", params={"f": "html"})
    assert 'href="https://opendatacommons.org/licenses/odbl/1-0/"' in collection.text
    as_json = (await client.get(f"{OGC}/collections/mesures")).json()
    licence = next(link for link in as_json["links"] if link["rel"] == "license")
    assert licence["href"] == "https://opendatacommons.org/licenses/odbl/1-0/", "a URL, not our id for it"
    capteurs = (await client.get(f"{OGC}/collections/capteurs")).json()
    assert capteurs["description"].startswith("Les capteurs du territoire")


# --- Part 2: CRS ---------------------------------------------------------------------------------------------------


async def test_crs_output_matches_postgis_transform(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    table = await db.fetchval("SELECT table_name FROM dataset WHERE slug = 'mesures'")
    for crs, srid in (("http://www.opengis.net/def/crs/EPSG/0/2154", 2154), ("EPSG:3857", 3857)):
        response = await client.get(f"{OGC}/collections/mesures/items/3", params={"crs": crs})
        assert response.headers["content-crs"] == f"<http://www.opengis.net/def/crs/EPSG/0/{srid}>"
        x, y = response.json()["geometry"]["coordinates"]
        ex, ey = await db.fetchrow(
            f"SELECT ST_X(ST_Transform(geom, {srid})), ST_Y(ST_Transform(geom, {srid})) FROM datasets.{table} "
            "WHERE _fid = 3"
        )
        assert abs(x - ex) < 0.001
        assert abs(y - ey) < 0.001
    # EPSG:4326 is latitude first; CRS84 longitude first.
    lat_first = (await client.get(f"{OGC}/collections/mesures/items/3", params={"crs": "EPSG:4326"})).json()
    assert lat_first["geometry"]["coordinates"] == [45.7, 4.82]
    page = await client.get(f"{OGC}/collections/mesures/items", params={"crs": "EPSG:2154", "limit": 1})
    assert page.headers["content-crs"] == "<http://www.opengis.net/def/crs/EPSG/0/2154>"
    assert page.json()["features"][0]["geometry"]["coordinates"][0] > 800_000
    collection = (await client.get(f"{OGC}/collections/mesures")).json()
    assert "http://www.opengis.net/def/crs/EPSG/0/2154" in collection["crs"]
    assert collection["storageCrs"] == "http://www.opengis.net/def/crs/OGC/1.3/CRS84"


async def test_bbox_crs_lambert93_and_lat_lon_match_postgis(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    lambert = (842000, 6518000, 846000, 6521000)
    expected = await _sql_ids(
        db, "ST_Intersects(geom, ST_Transform(ST_MakeEnvelope($1, $2, $3, $4, 2154), 4326))", *lambert
    )
    assert expected
    got = await _ids(client, "mesures", bbox=",".join(map(str, lambert)), **{"bbox-crs": "EPSG:2154"})
    assert got == expected
    lat_lon = await _ids(client, "mesures", bbox="45.695,4.795,45.725,4.845", **{"bbox-crs": "EPSG:4326"})
    assert lat_lon == await _ids(client, "mesures", bbox="4.795,45.695,4.845,45.725")


async def test_query_geometry_is_transformed_so_the_gist_index_is_usable(
    data: dict[str, int], db: asyncpg.Connection
) -> None:
    collection = await get_collection(db, "mesures")
    query = ItemsQuery(
        bbox=(842000, 6518000, 846000, 6521000),
        bbox_crs=parse_crs("EPSG:2154"),
        cql=parse("S_INTERSECTS(geometry, POINT(845000 6520000))"),
        filter_crs=parse_crs("EPSG:2154"),
    )
    sql, values = items_sql(collection, query)
    async with db.transaction():
        await db.execute("SET LOCAL enable_seqscan = off")
        plan = "\n".join(r[0] for r in await db.fetch(f"EXPLAIN {sql}", *values))
    assert f"{collection.source.split('.')[1].strip(chr(34))}_geom_idx" in plan


# --- Part 3: CQL2 ---------------------------------------------------------------------------------------------------

CQL2_CASES = [
    ("n > 100", "n > 100"),
    ("n = 3 OR valeur >= 150.5", "n = 3 OR valeur >= 150.5"),
    ("code LIKE 'M01%'", "code LIKE 'M01%'"),
    ("NOT code LIKE 'M0%'", "NOT code LIKE 'M0%'"),
    ("n IN (1, 5, 9)", "n IN (1, 5, 9)"),
    ("n NOT IN (1, 5, 9) AND n < 12", "n NOT IN (1, 5, 9) AND n < 12"),
    ("n BETWEEN 10 AND 20", "n BETWEEN 10 AND 20"),
    ("note IS NULL", "note IS NULL"),
    ("note IS NOT NULL AND actif = false", "note IS NOT NULL AND NOT actif"),
    ("CASEI(code) = casei('m007')", "lower(code) = 'm007'"),
    ("n * 2 + 1 > valeur", "n * 2 + 1 > valeur"),
    ("n % 7 = 0", "n % 7 = 0"),
    ("jour > DATE('2024-04-01')", "jour > '2024-04-01'"),
    ("\"mesure à\" < TIMESTAMP('2024-01-01T05:00:00Z')", "\"mesure à\" < '2024-01-01T05:00:00Z'"),
    ("T_BEFORE(\"mesure à\", TIMESTAMP('2024-01-01T05:00:00Z'))", "\"mesure à\" < '2024-01-01T05:00:00Z'"),
    ("T_AFTER(jour, DATE('2024-04-20'))", "jour > '2024-04-20'"),
    ("T_INTERSECTS(jour, INTERVAL('2024-01-10', '2024-01-12'))", "jour BETWEEN '2024-01-10' AND '2024-01-12'"),
    ("T_INTERSECTS(jour, INTERVAL('..', '2024-01-02'))", "jour <= '2024-01-02'"),
    (
        "S_INTERSECTS(geometry, POLYGON((4.79 45.69, 4.835 45.69, 4.835 45.715, 4.79 45.715, 4.79 45.69)))",
        "ST_Intersects(geom, 'SRID=4326;POLYGON((4.79 45.69, 4.835 45.69, 4.835 45.715, 4.79 45.715, 4.79 45.69))')",
    ),
    (
        "S_WITHIN(geometry, BBOX(4.79, 45.69, 4.835, 45.715))",
        "ST_Within(geom, ST_MakeEnvelope(4.79, 45.69, 4.835, 45.715, 4326))",
    ),
    (
        "S_CONTAINS(POLYGON((4.79 45.69, 4.835 45.69, 4.835 45.715, 4.79 45.715, 4.79 45.69)), geometry)",
        "ST_Contains('SRID=4326;POLYGON((4.79 45.69, 4.835 45.69, 4.835 45.715, 4.79 45.715, 4.79 45.69))', geom)",
    ),
    (
        "S_DWITHIN(geometry, POINT(4.85 45.75), 2500, meters)",
        "ST_DWithin(geom::geography, 'SRID=4326;POINT(4.85 45.75)'::geography, 2500)",
    ),
    (
        "S_DWITHIN(geometry, POINT(4.85 45.75), 2.5, kilometers) AND n > 50",
        "ST_DWithin(geom::geography, 'SRID=4326;POINT(4.85 45.75)'::geography, 2500) AND n > 50",
    ),
]


@pytest.mark.parametrize(("cql", "sql"), CQL2_CASES)
async def test_cql2_text_matches_postgis(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection, cql: str, sql: str
) -> None:
    expected = await _sql_ids(db, sql)
    assert await _ids(client, "mesures", filter=cql) == expected


async def test_cql2_json_and_filter_crs(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    as_json = (
        '{"op": "and", "args": [{"op": ">", "args": [{"property": "n"}, 10]}, {"op": "s_intersects", '
        '"args": [{"property": "geometry"}, {"bbox": [4.79, 45.69, 4.835, 45.715]}]}]}'
    )
    expected = await _sql_ids(db, "n > 10 AND ST_Intersects(geom, ST_MakeEnvelope(4.79, 45.69, 4.835, 45.715, 4326))")
    assert expected
    assert await _ids(client, "mesures", filter=as_json, **{"filter-lang": "cql2-json"}) == expected
    in_lambert = await _ids(
        client,
        "mesures",
        filter="S_INTERSECTS(geometry, BBOX(842000, 6518000, 846000, 6521000))",
        **{"filter-crs": "EPSG:2154"},
    )
    assert in_lambert == await _sql_ids(
        db, "ST_Intersects(geom, ST_Transform(ST_MakeEnvelope(842000, 6518000, 846000, 6521000, 2154), 4326))"
    )


@pytest.mark.parametrize(
    "bad",
    [
        "n >",  # syntax
        "nope = 1",  # not a queryable
        "code = 1; DROP TABLE dataset",
        "n = 'abc'",  # a value PostgreSQL cannot read as the column's type
        "S_INTERSECTS(n, POINT(0 0))",
        "ACCENTI(code) = 'x'",
    ],
)
async def test_cql2_errors_are_400_and_nothing_is_executed(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection, bad: str
) -> None:
    response = await client.get(f"{OGC}/collections/mesures/items", params={"filter": bad})
    assert response.status_code == 400, response.text
    assert await db.fetchval("SELECT count(*) FROM dataset") == 3


async def test_queryables_are_the_table_schema(client: httpx.AsyncClient, data: dict[str, int]) -> None:
    response = await client.get(f"{OGC}/collections/mesures/queryables")
    assert response.headers["content-type"] == "application/schema+json"
    properties = response.json()["properties"]
    assert properties["mesure à"] == {"type": "string", "format": "date-time"}
    assert properties["n"] == {"type": "integer"}
    assert properties["geometry"]["format"] == "geometry-any"


# --- caching and compression ---------------------------------------------------------------------------------------


async def test_etag_last_modified_and_304_follow_the_dataset_modification(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    url = f"{OGC}/collections/mesures/items?limit=5"
    first = await client.get(url)
    etag, modified = first.headers["etag"], first.headers["last-modified"]
    assert "max-age" in first.headers["cache-control"]
    again = await client.get(url, headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert (await client.get(url, headers={"If-Modified-Since": modified})).status_code == 304
    other_query = await client.get(f"{OGC}/collections/mesures/items?limit=6", headers={"If-None-Match": etag})
    assert other_query.status_code == 200
    await db.execute("UPDATE dataset SET modified_at = now() + interval '1 minute' WHERE slug = 'mesures'")
    changed = await client.get(url, headers={"If-None-Match": etag})
    assert changed.status_code == 200
    assert changed.headers["etag"] != etag
    item = await client.get(f"{OGC}/collections/mesures/items/1")
    assert (
        await client.get(f"{OGC}/collections/mesures/items/1", headers={"If-None-Match": item.headers["etag"]})
    ).status_code == 304
    listed = await client.get(f"{OGC}/collections")
    assert (
        await client.get(f"{OGC}/collections", headers={"If-None-Match": listed.headers["etag"]})
    ).status_code == 304
    meta = await client.get(f"{OGC}/collections/mesures")
    assert (
        await client.get(f"{OGC}/collections/mesures", headers={"If-None-Match": meta.headers["etag"]})
    ).status_code == 304


async def test_responses_are_compressed_as_negotiated(client: httpx.AsyncClient, data: dict[str, int]) -> None:
    url = f"{OGC}/collections/mesures/items?limit=100"
    for encoding, expected in (("gzip", "gzip"), ("br, gzip", "br"), ("identity", None)):
        response = await client.get(url, headers={"Accept-Encoding": encoding})
        assert response.headers.get("content-encoding") == expected
        assert response.json()["numberReturned"] == 100


# --- the sensor network ---------------------------------------------------------------------------------------------


async def test_sensor_collection_shows_things_at_their_location_with_latest_observations(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    await load_sensor_network(db, data["secret"])
    body = (await client.get(f"{OGC}/collections/capteurs/items")).json()
    assert body["numberMatched"] == 1
    feature = body["features"][0]
    assert feature["geometry"] == {"type": "Point", "coordinates": [4.832, 45.757]}
    assert feature["properties"]["name"] == "Station Bellecour"
    assert feature["properties"]["observations"]["no2"]["result"] == 23.0
    assert feature["properties"]["observations"]["no2"]["unit"] == "µg/m³"
    assert (await client.get(f"{OGC}/collections/capteurs/items/2")).status_code == 404
    near = await _ids(client, "capteurs", filter="S_DWITHIN(geometry, POINT(4.83 45.757), 500, meters)")
    assert near == [1]
    meta = (await client.get(f"{OGC}/collections/capteurs")).json()
    assert meta["extent"]["spatial"]["bbox"][0] == [4.832, 45.757, 4.832, 45.757]


async def test_a_dataset_made_restricted_disappears_at_once_even_from_warm_requests(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    for _ in range(2):  # the second pair of requests is answered from the collection cache, re-checked by SQL
        assert (await client.get(f"{OGC}/collections/mesures/items/3")).status_code == 200
        assert (await client.get(f"{OGC}/collections/mesures/items?limit=2")).status_code == 200
    await db.execute("UPDATE dataset SET access = 'restricted' WHERE slug = 'mesures'")  # modified_at untouched
    assert (await client.get(f"{OGC}/collections/mesures/items/3")).status_code == 404
    assert (await client.get(f"{OGC}/collections/mesures/items?limit=2")).status_code == 404
    await db.execute("UPDATE dataset SET access = 'public' WHERE slug = 'mesures'")
    assert (await client.get(f"{OGC}/collections/mesures/items/3")).json()["properties"]["code"] == "M002"
    # New rows with a new modification time are seen by the next request, not after some expiry.
    await db.execute(
        "UPDATE datasets.ds_2 SET code = 'CHANGED' WHERE _fid = 3;"
        "UPDATE dataset SET modified_at = modified_at + interval '1 second' WHERE slug = 'mesures'"
    )
    assert (await client.get(f"{OGC}/collections/mesures/items/3")).json()["properties"]["code"] == "CHANGED"
