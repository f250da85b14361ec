"""What the portal shows of a dataset's data: a table preview and the map's GeoJSON read from the typed table,
sensor locations, and the last 24 hours of its datastreams' observations.

Callers pass a row already allowed by the access policy; identifiers come from the Table Schema and are quoted.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from territoire_data.auth.policy import ANONYMOUS, datastream_visible_sql, member_visible_sql
from territoire_data.catalog.datasets import typed_table
from territoire_data.db.bulk import quote_ident

PREVIEW_ROWS = 20
MAP_FEATURES = 5000
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


# --- sensor pages: what each sensor measures, where, its latest value; charts over a period from the rollups ----

SENSOR_STREAMS = 500
# The period picker: (label, look-back, bucket). Charts read the rollups kept by the database (15-minute ones, and
# daily ones for the days before datastream.rollup_day_until): never the raw observations of a whole year.
PERIODS: dict[str, tuple[str, str, timedelta, str]] = {
    "24h": ("24 heures", "24 hours", timedelta(hours=24), "15min"),
    "7j": ("7 jours", "7 days", timedelta(days=7), "hour"),
    "30j": ("30 jours", "30 days", timedelta(days=30), "hour"),
    "1an": ("un an", "a year", timedelta(days=365), "day"),
}


async def sensor_streams(conn: AsyncConnection, row: dict[str, Any]) -> list[dict[str, Any]]:
    """Every visible Datastream of a sensor dataset with what people need to read it: the quantity's name, the
    Thing, its place, the unit, the latest value and when it was measured (ordered by place, sensor, quantity)."""
    sql = f"""
        SELECT ds.id, ds.name, op.name AS quantity, th.id AS thing_id, th.name AS thing, ds.unit_of_measurement AS unit,
               coalesce(place.name, th.name) AS place, ds.latest_phenomenon_time AS latest_time,
               latest.result_number, latest.result_boolean, latest.result_string
          FROM datastream ds
          JOIN observed_property op ON op.id = ds.observed_property_id
          JOIN thing th ON th.id = ds.thing_id
          LEFT JOIN LATERAL (SELECT l.name FROM thing_location tl JOIN location l ON l.id = tl.location_id
                              WHERE tl.thing_id = th.id ORDER BY l.id LIMIT 1) place ON true
          LEFT JOIN LATERAL (SELECT o.result_number, o.result_boolean, o.result_string FROM observation o
                              WHERE o.datastream_id = ds.id AND o.phenomenon_time = ds.latest_phenomenon_time
                              LIMIT 1) latest ON true
         WHERE ds.dataset_id = :id AND {datastream_visible_sql(ANONYMOUS, "ds")}
         ORDER BY place, th.name, op.name, ds.id
         LIMIT :n
    """
    result = await conn.execute(text(sql), {"id": row["id"], "n": SENSOR_STREAMS})
    streams = []
    for r in result.mappings():
        unit = r["unit"] if isinstance(r["unit"], dict) else orjson.loads(r["unit"] or "{}")
        value = next((r[k] for k in ("result_number", "result_boolean", "result_string") if r[k] is not None), None)
        streams.append({**dict(r), "unit": unit, "latest_value": value})
    return streams


def _bucket_sql(resolution: str) -> str:
    """The (time, mean) rows of one Datastream (`ds`) since :since, at this resolution, from the rollups."""
    if resolution == "15min":
        return (
            "SELECT r.bucket AS t, r.total / r.n AS v FROM observation_rollup_15min r "
            "WHERE r.datastream_id = ds.id AND r.bucket >= :since"
        )
    if resolution == "hour":
        return (
            "SELECT date_trunc('hour', r.bucket) AS t, sum(r.total) / sum(r.n) AS v FROM observation_rollup_15min r "
            "WHERE r.datastream_id = ds.id AND r.bucket >= :since GROUP BY 1"
        )
    # Whole days: the daily rollups before rollup_day_until, the 15-minute ones from then on (UTC days).
    return (
        "SELECT d.bucket AS t, d.total / d.n AS v FROM observation_rollup_day d WHERE d.datastream_id = ds.id "
        "AND d.bucket >= :since AND d.bucket < coalesce(ds.rollup_day_until, 'infinity') "
        "UNION ALL SELECT date_bin('1 day', r.bucket, timestamptz '2000-01-01 00:00:00+00') AS t, "
        "sum(r.total) / sum(r.n) AS v FROM observation_rollup_15min r WHERE r.datastream_id = ds.id "
        "AND r.bucket >= greatest(:since, coalesce(ds.rollup_day_until, '-infinity')) GROUP BY 1"
    )


async def period_series(conn: AsyncConnection, row: dict[str, Any], period: str) -> list[dict[str, Any]]:
    """Mean values of each numeric Datastream of the dataset over the period (24h: per quarter hour, 7 or 30 days:
    per hour, a year: per day), for the charts; times in epoch seconds (the browser shows them in Europe/Paris)."""
    _, _, look_back, resolution = PERIODS[period]
    sql = f"""
        SELECT ds.id, ds.name, op.name AS quantity, th.name AS thing, ds.unit_of_measurement AS unit, pts.times,
               pts.values
          FROM datastream ds
          JOIN observed_property op ON op.id = ds.observed_property_id
          JOIN thing th ON th.id = ds.thing_id
          CROSS JOIN LATERAL (
            SELECT array_agg(extract(epoch FROM b.t)::double precision ORDER BY b.t) AS times,
                   array_agg(b.v ORDER BY b.t) AS values
              FROM ({_bucket_sql(resolution)}) b
          ) pts
         WHERE ds.dataset_id = :id AND {datastream_visible_sql(ANONYMOUS, "ds")} AND pts.times IS NOT NULL
         ORDER BY op.name, th.name, ds.id
         LIMIT :streams
    """
    since = datetime.now(UTC) - look_back
    result = await conn.execute(text(sql), {"id": row["id"], "since": since, "streams": CHART_DATASTREAMS})
    series = []
    for r in result.mappings():
        unit = r["unit"] if isinstance(r["unit"], dict) else orjson.loads(r["unit"] or "{}")
        series.append(
            {
                "id": r["id"],
                "name": r["name"],
                "quantity": r["quantity"],
                "thing": r["thing"],
                "unit": unit,
                "times": list(r["times"] or []),
                "values": [float(v) for v in r["values"] or []],
            }
        )
    return series
