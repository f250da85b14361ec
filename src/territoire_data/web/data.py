"""What the portal shows of a dataset's data: a table preview and the map's GeoJSON read from the typed table,
sensor locations, and the last 24 hours of its datastreams' observations.

Callers pass a row already allowed by the access policy; identifiers come from the Table Schema and are quoted.
"""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from territoire_data.auth.policy import ANONYMOUS, datastream_visible_sql, member_visible_sql
from territoire_data.catalog.datasets import typed_table
from territoire_data.db.bulk import quote_ident

PREVIEW_ROWS = 20
MAP_FEATURES = 5000
CHART_POINTS = 2000
CHART_DATASTREAMS = 12

# The portal is anonymous: a Thing of a restricted dataset stays off the map even when one of its Datastreams
# was filed under this public dataset (the Datastream is hidden too: see `datastream_visible_sql`).
SENSOR_THINGS = f"""
    SELECT t.id FROM thing t
     WHERE (t.dataset_id = :id OR t.id IN (SELECT ds.thing_id FROM datastream ds WHERE ds.dataset_id = :id))
       AND {member_visible_sql(ANONYMOUS, "t.dataset_id")}
"""


def _table(row: dict[str, Any]) -> str | None:
    return typed_table(row.get("table_name"))


def schema_fields(row: dict[str, Any]) -> list[str]:
    schema = row.get("table_schema") or {}
    return [str(f["name"]) for f in schema.get("fields", []) if isinstance(f, dict) and f.get("name")]


async def table_preview(conn: AsyncConnection, row: dict[str, Any]) -> tuple[list[str], list[list[str]]]:
    """The first rows of the typed table as text, in the Table Schema's column order."""
    table = _table(row)
    fields = schema_fields(row)
    if table is None or not fields:
        return fields, []
    exists = (await conn.execute(text("SELECT to_regclass(:t)"), {"t": table})).scalar()
    if exists is None:
        return fields, []
    columns = ", ".join(f"{quote_ident(f)}::text" for f in fields)
    sql = f"SELECT {columns} FROM {table} ORDER BY _fid LIMIT :n"
    result = await conn.execute(text(sql), {"n": PREVIEW_ROWS})
    return fields, [["" if v is None else str(v) for v in r] for r in result]


async def map_geojson(conn: AsyncConnection, row: dict[str, Any]) -> bytes:
    """A FeatureCollection of the dataset's geometries (typed table, or the things' locations for sensors)."""
    if row["kind"] == "sensors":
        sql = f"""
            SELECT coalesce(json_agg(json_build_object(
                'type', 'Feature', 'id', l.id, 'geometry', ST_AsGeoJSON(l.geom, 6)::json,
                'properties', json_build_object('name', l.name, 'thing', t.name))), '[]'::json)
              FROM location l JOIN thing_location tl ON tl.location_id = l.id JOIN thing t ON t.id = tl.thing_id
             WHERE l.geom IS NOT NULL AND t.id IN ({SENSOR_THINGS})
        """
        features = (await conn.execute(text(sql), {"id": row["id"]})).scalar()
    else:
        table = _table(row)
        features = []
        if table is not None and (await conn.execute(text("SELECT to_regclass(:t)"), {"t": table})).scalar():
            sql = f"""
                SELECT coalesce(json_agg(json_build_object(
                    'type', 'Feature', 'id', f._fid, 'geometry', ST_AsGeoJSON(f.geom, 6)::json,
                    'properties', to_jsonb(f) - 'geom' - '_fid')), '[]'::json)
                  FROM (SELECT * FROM {table} WHERE geom IS NOT NULL ORDER BY _fid LIMIT :n) f
            """
            features = (await conn.execute(text(sql), {"n": MAP_FEATURES})).scalar()
    if isinstance(features, str):
        features = orjson.loads(features)
    return orjson.dumps({"type": "FeatureCollection", "features": features or []})


async def recent_series(conn: AsyncConnection, row: dict[str, Any]) -> list[dict[str, Any]]:
    """The last 24 hours of numeric observations of each of the dataset's datastreams (bounded in size)."""
    sql = f"""
        SELECT ds.id, ds.name, th.name AS thing, ds.unit_of_measurement AS unit, obs.times, obs.values
          FROM datastream ds
          JOIN thing th ON th.id = ds.thing_id
          CROSS JOIN LATERAL (
            SELECT array_agg(extract(epoch FROM o.phenomenon_time)::double precision ORDER BY o.phenomenon_time)
                       AS times,
                   array_agg(o.result_number ORDER BY o.phenomenon_time) AS values
              FROM (SELECT phenomenon_time, result_number FROM observation
                     WHERE datastream_id = ds.id AND phenomenon_time > now() - interval '24 hours'
                       AND result_number IS NOT NULL
                     ORDER BY phenomenon_time DESC LIMIT :points) o
          ) obs
         WHERE ds.dataset_id = :id AND {datastream_visible_sql(ANONYMOUS, "ds")}
         ORDER BY ds.id
         LIMIT :streams
    """
    result = await conn.execute(text(sql), {"id": row["id"], "points": CHART_POINTS, "streams": CHART_DATASTREAMS})
    series = []
    for r in result.mappings():
        unit = r["unit"] if isinstance(r["unit"], dict) else orjson.loads(r["unit"] or "{}")
        series.append(
            {
                "id": r["id"],
                "name": r["name"],
                "thing": r["thing"],
                "unit": unit.get("symbol") or unit.get("name") or "",
                "times": list(r["times"] or []),
                "values": list(r["values"] or []),
            }
        )
    return series
