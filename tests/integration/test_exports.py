"""Records and streamed exports: CSV (delimiters, BOM, formula neutralised), GeoJSON (RFC 7946), GeoParquet."""

from __future__ import annotations

import csv
import io
import json
import shutil
import subprocess
import tempfile
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import pyarrow.parquet as pq
import pytest
import shapely

from territoire_data.exports import stream
from territoire_data.query.collections import get_collection
from territoire_data.query.items import ItemsQuery
from tests.catalog_helpers import AUTH
from tests.features_data import MESURES_COUNT, MESURES_SCHEMA, load_features_data, mesures_rows
from tests.fixtures.typed_tables import create_dataset

pytestmark = pytest.mark.db

EXPORTS = "/api/v1/datasets/mesures/exports"


@pytest.fixture
async def data(db: asyncpg.Connection) -> dict[str, int]:
    return await load_features_data(db)


async def _rows(db: asyncpg.Connection, where: str = "TRUE") -> list[asyncpg.Record]:
    return await db.fetch(
        f'SELECT _fid, code, n, valeur, actif, jour, "mesure à", note, ST_AsText(geom, 9) AS wkt FROM datasets.ds_2 '
        f"WHERE {where} ORDER BY _fid"
    )


async def test_records_filter_select_sort_and_paginate(client: httpx.AsyncClient, data: dict[str, int]) -> None:
    body = (
        await client.get(
            "/api/v1/datasets/mesures/records",
            params={"where": "n >= 10 AND actif", "select": "code,n", "order_by": "-n", "limit": 3},
        )
    ).json()
    assert body["total_count"] == 55
    assert [r["code"] for r in body["results"]] == ["M118", "M116", "M114"]
    assert set(body["results"][0]) == {"_id", "code", "n", "geometry"}
    following = (await client.get(next(link["href"] for link in body["links"] if link["rel"] == "next"))).json()
    assert [r["code"] for r in following["results"]] == ["M112", "M110", "M108"]
    everything = (await client.get("/api/v1/datasets/mesures/records", params={"limit": 1000})).json()
    assert everything["total_count"] == MESURES_COUNT
    assert len(everything["results"]) == MESURES_COUNT
    assert (await client.get("/api/v1/datasets/secret/records")).status_code == 404
    assert (await client.get("/api/v1/datasets/capteurs/records")).status_code == 404
    assert (await client.get("/api/v1/datasets/mesures/records", params={"where": "nope > 1"})).status_code == 400
    assert (await client.get("/api/v1/datasets/mesures/records", params={"where": "n = 'x'"})).status_code == 400


async def test_csv_export_round_trips_with_formulas_neutralised(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    response = await client.get(f"{EXPORTS}/csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    assert 'filename="mesures.csv"' in response.headers["content-disposition"]
    lines = list(csv.DictReader(io.StringIO(response.text), delimiter=";"))
    expected = await _rows(db)
    assert len(lines) == len(expected) == MESURES_COUNT
    for line, row in zip(lines, expected, strict=True):
        assert int(line["_id"]) == row["_fid"]
        assert line["code"] == row["code"]
        assert int(line["n"]) == row["n"]
        assert float(line["valeur"]) == row["valeur"]
        assert line["actif"] == ("true" if row["actif"] else "false")
        assert line["jour"] == row["jour"].isoformat()
        assert datetime.fromisoformat(line["mesure à"]) == row["mesure à"]
        assert line["geometry"] == (row["wkt"] or "")
        note = row["note"]
        if note is None:
            assert line["note"] == ""
        elif note[0] in "=+-@":
            assert line["note"] == "'" + note  # a spreadsheet shows it as text, never runs it
        else:
            assert line["note"] == note  # quotes, delimiters and newlines survive RFC 4180 quoting


async def test_csv_comma_bom_filters_and_target_crs(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    response = await client.get(
        f"{EXPORTS}/csv",
        params={"delimiter": ",", "bom": "true", "where": "n < 3", "crs": "EPSG:2154", "select": "code"},
    )
    assert response.content.startswith(b"\xef\xbb\xbfcode".replace(b"code", b"_id,code"))
    lines = list(csv.DictReader(io.StringIO(response.content.decode("utf-8-sig"))))
    assert [line["code"] for line in lines] == ["M000", "M001", "M002"]
    x, y = await db.fetchrow(
        "SELECT ST_X(ST_Transform(geom, 2154)), ST_Y(ST_Transform(geom, 2154)) FROM datasets.ds_2 WHERE _fid = 1"
    )
    point = shapely.from_wkt(lines[0]["geometry"])
    assert abs(point.x - x) < 0.001
    assert abs(point.y - y) < 0.001
    assert (await client.get(f"{EXPORTS}/csv", params={"delimiter": "|"})).status_code == 400
    assert (await client.get(f"{EXPORTS}/csv", params={"where": "n = 'x'"})).status_code == 400
    assert (await client.get("/api/v1/datasets/secret/exports/csv")).status_code == 404


async def test_geojson_export_is_rfc7946_and_reimports_to_the_same_rows(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    response = await client.get(f"{EXPORTS}/geojson")
    assert response.headers["content-type"] == "application/geo+json"
    collection = response.json()
    assert collection["type"] == "FeatureCollection"
    assert "crs" not in collection
    features = collection["features"]
    assert len(features) == MESURES_COUNT
    # Re-import into a fresh typed table and compare row by row with the source.
    rows = [tuple(f["properties"][k["name"]] for k in MESURES_SCHEMA["fields"]) for f in features]
    rows = [
        (r[0], r[1], float(r[2]), r[3], datetime.fromisoformat(r[4]).date(), datetime.fromisoformat(r[5]), r[6])
        for r in rows
    ]
    geoms = [shapely.to_wkt(shapely.geometry.shape(f["geometry"])) if f["geometry"] else None for f in features]
    await create_dataset(db, "reimport", MESURES_SCHEMA, rows, geometries=geoms)
    difference = await db.fetchval(
        'SELECT count(*) FROM ((SELECT code, n, valeur, actif, jour, "mesure à", note, ST_AsText(geom, 9) '
        'FROM datasets.ds_2 EXCEPT SELECT code, n, valeur, actif, jour, "mesure à", note, ST_AsText(geom, 9) '
        'FROM datasets.ds_4) UNION ALL (SELECT code, n, valeur, actif, jour, "mesure à", note, ST_AsText(geom, 9) '
        'FROM datasets.ds_4 EXCEPT SELECT code, n, valeur, actif, jour, "mesure à", note, ST_AsText(geom, 9) '
        "FROM datasets.ds_2)) d"
    )
    assert difference == 0
    empty = (await client.get(f"{EXPORTS}/geojson", params={"where": "n < 0"})).json()
    assert empty["features"] == []
    one = (await client.get(f"{EXPORTS}/geojson", params={"where": "n = 5"})).json()
    assert [f["properties"]["code"] for f in one["features"]] == ["M005"]


async def test_geoparquet_export_reads_back_with_pyarrow_and_gdal(
    client: httpx.AsyncClient, data: dict[str, int], db: asyncpg.Connection
) -> None:
    response = await client.get(f"{EXPORTS}/parquet")
    assert response.headers["content-type"] == "application/vnd.apache.parquet"
    table = pq.read_table(io.BytesIO(response.content))
    geo = json.loads(table.schema.metadata[b"geo"])
    assert geo["version"].startswith("1.")
    assert geo["primary_column"] == "geometry"
    assert geo["columns"]["geometry"]["encoding"] == "WKB"
    assert geo["columns"]["geometry"]["geometry_types"] == ["Point"]
    expected = await _rows(db)
    assert table.num_rows == len(expected)
    columns = table.to_pydict()
    for i, row in enumerate(expected):
        assert columns["_id"][i] == row["_fid"]
        assert columns["code"][i] == row["code"]
        assert columns["n"][i] == row["n"]
        assert columns["valeur"][i] == row["valeur"]
        assert columns["actif"][i] == row["actif"]
        assert columns["jour"][i] == row["jour"]
        assert columns["mesure à"][i] == row["mesure à"]
        assert columns["note"][i] == row["note"]  # Parquet is typed: no formula neutralisation needed
        wkb = columns["geometry"][i]
        if row["wkt"] is None:
            assert wkb is None
        else:
            assert shapely.equals_exact(shapely.from_wkb(wkb), shapely.from_wkt(row["wkt"]), tolerance=1e-9)
    lambert = pq.read_table(io.BytesIO((await client.get(f"{EXPORTS}/parquet", params={"crs": "EPSG:2154"})).content))
    crs = json.loads(lambert.schema.metadata[b"geo"])["columns"]["geometry"]["crs"]
    assert crs["id"] == {"authority": "EPSG", "code": 2154}
    # GeoParquet keeps x = longitude even for EPSG:4326, whose axis order is latitude first.
    wgs84 = pq.read_table(io.BytesIO((await client.get(f"{EXPORTS}/parquet", params={"crs": "EPSG:4326"})).content))
    first = shapely.from_wkb(wgs84.column("geometry")[0].as_py())
    assert (round(first.x, 6), round(first.y, 6)) == (4.8, 45.7)
    assert json.loads(wgs84.schema.metadata[b"geo"])["columns"]["geometry"]["crs"]["id"]["code"] == 4326
    if _gdal_has_parquet():
        assert f"Feature Count: {MESURES_COUNT}" in _gdal_summary(response.content)


def _gdal_has_parquet() -> bool:
    if shutil.which("ogrinfo") is None:
        return False
    formats = subprocess.run(["ogrinfo", "--formats"], capture_output=True, text=True, check=False).stdout
    return "Parquet" in formats


def _gdal_summary(content: bytes) -> str:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mesures.parquet"
        path.write_bytes(content)
        return subprocess.run(
            ["ogrinfo", "-so", str(path), "mesures"], capture_output=True, text=True, check=True
        ).stdout


async def test_exports_carry_validators_and_revalidate(client: httpx.AsyncClient, data: dict[str, int]) -> None:
    first = await client.get(f"{EXPORTS}/geojson")
    again = await client.get(f"{EXPORTS}/geojson", headers={"If-None-Match": first.headers["etag"]})
    assert again.status_code == 304
    assert "last-modified" in first.headers
    gz = await client.get(f"{EXPORTS}/csv", headers={"Accept-Encoding": "gzip"})
    assert gz.headers["content-encoding"] == "gzip"
    assert len(gz.text.splitlines()) > MESURES_COUNT


async def test_export_of_many_rows_streams_in_several_chunks(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    rows, geoms = mesures_rows()
    schema = {"fields": [{"name": "n", "type": "integer"}]}
    await create_dataset(db, "grand", schema, [], geometries=[])
    await db.execute(
        "INSERT INTO datasets.ds_1 (n, geom) SELECT i, ST_MakePoint(2 + i / 1e6, 48) FROM generate_series(1, 60000) i"
    )
    await db.execute("UPDATE dataset SET row_count = 60000, geometry_type = 'Point' WHERE id = 1")
    # The writer hands on bounded chunks as PostgreSQL produces them (the in-process client buffers whole bodies).
    collection = await get_collection(db, "grand")
    sizes = [len(c) async for c in stream.stream_geojson(db, stream.ExportQuery(collection, ItemsQuery()))]
    assert len(sizes) > 10
    assert max(sizes) < 1024 * 1024
    parquet_sizes = [
        len(c)
        async for c in stream.stream_parquet(db, stream.ExportQuery(collection, ItemsQuery()), block_bytes=100_000)
    ]
    assert len(parquet_sizes) >= 6
    body = (await client.get("/api/v1/datasets/grand/exports/geojson")).json()
    assert len(body["features"]) == 60000
    assert body["features"][-1]["properties"] == {"n": 60000}
    table = pq.read_table(io.BytesIO((await client.get("/api/v1/datasets/grand/exports/parquet")).content))
    assert table.num_rows == 60000
    assert len(rows) == len(geoms)


async def test_datastream_observations_export_over_a_time_range(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await db.execute(
        "INSERT INTO dataset (slug, title, kind, access, status) "
        "VALUES ('prive', 'privé', 'sensors', 'restricted', 'published');"
        "INSERT INTO thing (id, name) VALUES (1, 't'); INSERT INTO sensor (id, name) VALUES (1, 's');"
        "INSERT INTO observed_property (id, name) VALUES (1, 'p');"
        "INSERT INTO datastream (id, name, thing_id, sensor_id, observed_property_id) VALUES (1, 'd', 1, 1, 1);"
        "INSERT INTO datastream (id, name, thing_id, sensor_id, observed_property_id, dataset_id) "
        "VALUES (2, 'hidden', 1, 1, 1, 1)"
    )
    t0 = datetime.now(UTC).replace(microsecond=0) - timedelta(days=2)
    await db.executemany(
        "INSERT INTO observation (datastream_id, phenomenon_time, result_number) VALUES (1, $1, $2)",
        [(t0 + timedelta(minutes=10 * i), float(i)) for i in range(200)],
    )
    start, end = (t0 + timedelta(minutes=100)).isoformat(), (t0 + timedelta(minutes=300)).isoformat()
    response = await client.get("/api/v1/datastreams/1/exports/csv", params={"start": start, "end": end})
    lines = list(csv.DictReader(io.StringIO(response.text), delimiter=";"))
    assert [float(line["result_number"]) for line in lines] == [float(i) for i in range(10, 30)]
    assert datetime.fromisoformat(lines[0]["phenomenon_time"]) == t0 + timedelta(minutes=100)
    table = pq.read_table(io.BytesIO((await client.get("/api/v1/datastreams/1/exports/parquet")).content))
    assert table.column("result_number").to_pylist() == [float(i) for i in range(200)]
    assert (await client.get("/api/v1/datastreams/2/exports/csv")).status_code == 404
    assert (await client.get("/api/v1/datastreams/9/exports/csv")).status_code == 404
    assert (await client.get("/api/v1/datastreams/1/exports/csv", params={"start": "hier"})).status_code == 400


async def test_a_table_without_geometry_exports_and_serves_too(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    schema = {"fields": [{"name": "commune", "type": "string"}, {"name": "population", "type": "integer"}]}
    await create_dataset(db, "populations", schema, [("Lyon", 522_250), ("Rennes", 225_081)])
    csv_text = (await client.get("/api/v1/datasets/populations/exports/csv")).text
    assert csv_text.splitlines() == ["_id;commune;population", "1;Lyon;522250", "2;Rennes;225081"]
    table = pq.read_table(io.BytesIO((await client.get("/api/v1/datasets/populations/exports/parquet")).content))
    assert table.column_names == ["_id", "commune", "population"]
    assert table.schema.metadata is None or b"geo" not in table.schema.metadata
    features = (await client.get("/api/v1/datasets/populations/exports/geojson")).json()["features"]
    assert [f["geometry"] for f in features] == [None, None]
    items = (await client.get("/ogcapi/collections/populations/items")).json()
    assert items["numberMatched"] == 2
    assert items["features"][1]["properties"] == {"commune": "Rennes", "population": 225081}


async def test_sensor_dataset_exports_every_series_over_a_period(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """A sensor dataset's download: every observation of its Datastreams, named, streamed (was 404 "no collection")."""
    from tests.catalog_helpers import add_sensor
    from tests.catalog_helpers import create_dataset as create_catalog_dataset

    await create_catalog_dataset(client, "air", "Qualité de l'air", kind="sensors")
    first = await add_sensor(db, "air", lon=-1.55, lat=47.21, values=[10.0, 11.0, 12.0], name="NO2 Commerce")
    second = await add_sensor(db, "air", lon=-1.56, lat=47.22, values=[20.0, 21.0], name="NO2 Gare")
    whole = await client.get("/api/v1/datasets/air/exports/csv")
    assert whole.status_code == 200, whole.text
    lines = list(csv.DictReader(io.StringIO(whole.text), delimiter=";"))
    assert [(int(r["datastream_id"]), float(r["result_number"])) for r in lines] == [
        (first, 10.0), (first, 11.0), (first, 12.0), (second, 20.0), (second, 21.0)
    ]  # fmt: skip
    assert lines[0]["thing"] == "Station NO2 Commerce" and lines[0]["observed_property"] == "NO2"
    assert lines[0]["unit"] == "µg/m³"
    # Over a period: the last 90 minutes hold the latest value of each series.
    start = (datetime.now(UTC) - timedelta(minutes=90)).isoformat()
    recent = await client.get("/api/v1/datasets/air/exports/parquet", params={"start": start})
    assert recent.status_code == 200
    table = pq.read_table(io.BytesIO(recent.content))
    assert sorted(table.column("result_number").to_pylist()) == [12.0, 21.0]
    assert table.column("thing").to_pylist()[0].startswith("Station NO2")
    assert (await client.get("/api/v1/datasets/air/exports/geojson")).status_code == 400
    assert (await client.get("/api/v1/datasets/air/exports/csv", params={"end": "demain"})).status_code == 400
    # A draft sensor dataset is not exported to the public (404 like a missing one), but to its writer.
    assert (await client.post("/api/v1/datasets/air/unpublish", headers=AUTH)).status_code == 200
    assert (await client.get("/api/v1/datasets/air/exports/csv")).status_code == 404
    assert (await client.get("/api/v1/datasets/air/exports/csv", headers=AUTH)).status_code == 200
