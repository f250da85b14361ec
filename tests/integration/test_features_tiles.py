"""Vector tiles: ST_AsMVT tiles in WebMercatorQuad, decoded and compared with PostGIS."""

from __future__ import annotations

import math

import asyncpg
import httpx
import mapbox_vector_tile
import pytest

from tests.features_data import load_features_data

pytestmark = pytest.mark.db


def _tile_of(lon: float, lat: float, z: int) -> tuple[int, int]:
    n = 2**z
    x = int((lon + 180) / 360 * n)
    y = int((1 - math.asinh(math.tan(math.radians(lat))) / math.pi) / 2 * n)
    return x, y


async def test_tile_holds_the_features_postgis_finds_in_it(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await load_features_data(db)
    z = 13
    x, y = _tile_of(4.83, 45.73, z)
    response = await client.get(f"/ogcapi/collections/mesures/tiles/WebMercatorQuad/{z}/{x}/{y}")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/vnd.mapbox-vector-tile"
    decoded = mapbox_vector_tile.decode(response.content)
    features = decoded["mesures"]["features"]
    expected = await db.fetch(
        "SELECT _fid FROM datasets.ds_2 WHERE ST_Intersects(geom, "
        "ST_Transform(ST_TileEnvelope($1, $2, $3, margin => 64.0 / 4096), 4326)) ORDER BY _fid",
        z,
        x,
        y,
    )
    assert sorted(f["id"] for f in features) == [r[0] for r in expected]
    assert expected
    one = features[0]
    row = await db.fetchrow("SELECT code, actif, valeur FROM datasets.ds_2 WHERE _fid = $1", one["id"])
    assert one["properties"]["code"] == row["code"]
    assert one["properties"]["actif"] is row["actif"]
    assert one["properties"]["valeur"] == row["valeur"]
    filtered = await client.get(
        f"/ogcapi/collections/mesures/tiles/WebMercatorQuad/{z}/{x}/{y}",
        params={"filter": f"n IN ({', '.join(str(r[0] - 1) for r in expected[:3])})"},
    )
    assert sorted(f["id"] for f in mapbox_vector_tile.decode(filtered.content)["mesures"]["features"]) == [
        r[0] for r in expected[:3]
    ]
    empty = await client.get(f"/ogcapi/collections/mesures/tiles/WebMercatorQuad/{z}/0/0")
    assert empty.status_code == 204
    assert (await client.get("/ogcapi/collections/mesures/tiles/WebMercatorQuad/2/4/0")).status_code == 404
    assert (await client.get("/ogcapi/collections/secret/tiles/WebMercatorQuad/0/0/0")).status_code == 404
    metadata = (await client.get("/ogcapi/collections/mesures/tiles/WebMercatorQuad")).json()
    assert metadata["tiles"][0].endswith("/collections/mesures/tiles/WebMercatorQuad/{z}/{x}/{y}")
    listed = (await client.get("/ogcapi/collections/mesures/tiles")).json()
    assert listed["tilesets"][0]["dataType"] == "vector"


async def test_tiling_scheme_is_published_and_matches_postgis(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """OGC API – Tiles: /tileMatrixSets and the WebMercatorQuad definition (TMS 2.0), linked from the tilesets;
    each tile's extent computed from the definition equals PostGIS's own ST_TileEnvelope (an independent one)."""
    await load_features_data(db)
    conformance = (await client.get("/ogcapi/conformance")).json()["conformsTo"]
    assert "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset" in conformance
    assert "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset" in conformance
    landing = (await client.get("/ogcapi")).json()["links"]
    schemes = next(link for link in landing if link["rel"].endswith("/tiling-schemes"))["href"]
    listed = (await client.get(httpx.URL(schemes).path)).json()["tileMatrixSets"]
    assert [t["id"] for t in listed] == ["WebMercatorQuad"]
    tileset = (await client.get("/ogcapi/collections/mesures/tiles/WebMercatorQuad")).json()
    scheme = next(link for link in tileset["links"] if link["rel"].endswith("/tiling-scheme"))["href"]
    assert scheme == listed[0]["links"][0]["href"]
    tms = (await client.get(httpx.URL(scheme).path)).json()
    assert tms["uri"] == tileset["tileMatrixSetURI"]
    assert tms["crs"].endswith("/EPSG/0/3857")
    matrices = {m["id"]: m for m in tms["tileMatrices"]}
    assert len(matrices) == 23
    for z, x, y in [(0, 0, 0), (5, 16, 11), (13, 4206, 2922), (22, 2_154_000, 1_496_000)]:
        m = matrices[str(z)]
        assert (m["matrixWidth"], m["matrixHeight"]) == (2**z, 2**z)
        assert m["scaleDenominator"] == pytest.approx(m["cellSize"] / 0.00028)
        span = m["cellSize"] * m["tileWidth"]
        ox, oy = m["pointOfOrigin"]
        ours = (ox + x * span, oy - (y + 1) * span, ox + (x + 1) * span, oy - y * span)
        envelope = await db.fetchrow(
            "SELECT ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e) FROM ST_TileEnvelope($1, $2, $3) AS e", z, x, y
        )
        assert ours == pytest.approx(tuple(envelope), abs=1e-6)
    assert (await client.get("/ogcapi/tileMatrixSets/WorldCRS84Quad")).status_code == 404
