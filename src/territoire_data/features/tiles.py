"""Mapbox Vector Tiles of a collection in WebMercatorQuad, made by PostGIS (ST_AsMVT) in one statement."""

from __future__ import annotations

from typing import Any

from territoire_data.db.params import Params
from territoire_data.errors import NotFoundError
from territoire_data.features.collections import Collection
from territoire_data.features.query import ItemsQuery, where_sql

TMS_ID = "WebMercatorQuad"
TMS_URI = "http://www.opengis.net/def/tilematrixset/OGC/1.0/WebMercatorQuad"
MVT = "application/vnd.mapbox-vector-tile"
MAX_ZOOM = 22
EXTENT = 4096
BUFFER = 64
# A tile never carries more than this many features (low zooms over huge tables stay bounded).
MAX_FEATURES = 100_000

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
