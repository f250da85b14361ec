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
