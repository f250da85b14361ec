"""Mapbox Vector Tiles of a collection in WebMercatorQuad, made by PostGIS (ST_AsMVT) in one statement."""

from __future__ import annotations

from typing import Any

from territoire_data.db.params import Params
from territoire_data.errors import NotFoundError
from territoire_data.query.collections import Collection
from territoire_data.query.items import ItemsQuery, where_sql

TMS_ID = "WebMercatorQuad"
TMS_URI = "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
MVT = "application/vnd.mapbox-vector-tile"
MAX_ZOOM = 22
EXTENT = 4096
BUFFER = 64
# A tile never carries more than this many features (low zooms over huge tables stay bounded).
MAX_FEATURES = 100_000

# OGC API – Tiles 1.0 and the Tile Matrix Set 2.0 standard's classes this door implements.
CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tileset",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/tilesets-list",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/geodata-tilesets",
    "http://www.opengis.net/spec/ogcapi-tiles-1/1.0/conf/mvt",
    "http://www.opengis.net/spec/tms/2.0/conf/tilematrixset",
    "http://www.opengis.net/spec/tms/2.0/conf/json-tilematrixset",
)
# Web Mercator's half-width in metres (the tile matrix set's origin is its top-left corner); OGC's scale
# denominators assume 0.28 mm pixels.
_HALF_WIDTH = 20037508.3427892
_TILE_SIZE = 256


def tile_matrix_set() -> dict[str, Any]:
    """The WebMercatorQuad definition (OGC 17-083r4, annex D) in the TMS 2.0 JSON encoding: computed, not copied."""
    matrices = []
    for z in range(MAX_ZOOM + 1):
        cell = 2 * _HALF_WIDTH / _TILE_SIZE / 2**z
        matrices.append(
            {
                "id": str(z),
                "scaleDenominator": cell / 0.00028,
                "cellSize": cell,
                "cornerOfOrigin": "topLeft",
                "pointOfOrigin": [-_HALF_WIDTH, _HALF_WIDTH],
                "tileWidth": _TILE_SIZE,
                "tileHeight": _TILE_SIZE,
                "matrixWidth": 2**z,
                "matrixHeight": 2**z,
            }
        )
    return {
        "id": TMS_ID,
        "title": "Google Maps Compatible for the World",
        "uri": TMS_URI,
        "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "orderedAxes": ["X", "Y"],
        "wellKnownScaleSet": "http://www.opengis.net/def/wkss/OGC/1.0/GoogleMapsCompatible",
        "tileMatrices": matrices,
    }


# MVT attribute values are strings, numbers and booleans: other types go as text.
_MVT_NATIVE = ("text", "bigint", "double precision", "boolean", "integer")


def check_tile(z: int, x: int, y: int) -> None:
    """Tile indices must lie inside the matrix of their zoom level (404 outside, as for any missing tile)."""
    if not 0 <= z <= MAX_ZOOM or not 0 <= x < 2**z or not 0 <= y < 2**z:
        raise NotFoundError(f"no tile {z}/{x}/{y} in {TMS_ID}")


def tile_sql(collection: Collection, query: ItemsQuery, z: int, x: int, y: int) -> tuple[str, list[Any]]:
    """One MVT layer named after the collection; the tile envelope goes to 4326 so the GiST index is used."""
    params = Params()
    zp, xp, yp = params.add(z, "integer"), params.add(x, "integer"), params.add(y, "integer")
    where = where_sql(collection, query, params)
    attributes = ", ".join(
        f"{f.sql}{'' if f.pg_type in _MVT_NATIVE else '::text'} AS {_quote(f.name)}"
        for f in collection.fields
        if query.properties is None or f.name in query.properties
    )
    limit = params.add(MAX_FEATURES, "bigint")
    layer = "'" + collection.id.replace("'", "''") + "'"
    sql = f"""
WITH bounds AS (
  SELECT ST_TileEnvelope({zp}, {xp}, {yp}) AS tile,
         ST_Transform(ST_TileEnvelope({zp}, {xp}, {yp}, margin => {BUFFER / EXTENT}), 4326) AS area
)
SELECT ST_AsMVT(q, {layer}, {EXTENT}, 'geom', 'id') FROM (
  SELECT t._fid AS id,
         ST_AsMVTGeom(ST_Transform(t.geom, 3857), bounds.tile, {EXTENT}, {BUFFER}, true) AS geom
         {", " + attributes if attributes else ""}
  FROM {collection.source} t, bounds
  WHERE t.geom && bounds.area AND {where}
  LIMIT {limit}
) q WHERE q.geom IS NOT NULL"""
    return sql, params.values


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
