"""Collections: the visible table datasets (their Table Schema is the column allow-list) and the sensor network."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from territoire_data.auth.policy import (
    ANONYMOUS,
    Principal,
    dataset_visible_sql,
    datastream_visible_sql,
    member_visible_sql,
)
from territoire_data.db.bulk import quote_ident
from territoire_data.errors import NotFoundError

SENSORS_ID = "capteurs"

# Table Schema type -> (PostgreSQL type of the column, JSON Schema of the queryable).
FIELD_TYPES: dict[str, tuple[str, dict[str, Any]]] = {
    "string": ("text", {"type": "string"}),
    "integer": ("bigint", {"type": "integer"}),
    "number": ("double precision", {"type": "number"}),
    "boolean": ("boolean", {"type": "boolean"}),
    "date": ("date", {"type": "string", "format": "date"}),
    "datetime": ("timestamptz", {"type": "string", "format": "date-time"}),
    "time": ("time", {"type": "string", "format": "time"}),
    "year": ("integer", {"type": "integer"}),
    "yearmonth": ("text", {"type": "string"}),
    "duration": ("interval", {"type": "string", "format": "duration"}),
    "geopoint": ("text", {"type": "string"}),
    "geojson": ("jsonb", {"type": "object"}),
    "object": ("jsonb", {"type": "object"}),
    "array": ("jsonb", {"type": "array"}),
    "any": ("text", {"type": "string"}),
}


@dataclass(frozen=True)
class Field:
    """One column of a collection, named exactly like its Table Schema field."""

    name: str
    type: str
    title: str | None = None
    description: str | None = None

    @property
    def sql(self) -> str:
        return f"t.{quote_ident(self.name)}"

    @property
    def pg_type(self) -> str:
        return FIELD_TYPES.get(self.type, FIELD_TYPES["any"])[0]

    @property
    def is_temporal(self) -> bool:
        return self.type in ("date", "datetime")


@dataclass(frozen=True)
class Collection:
    """What the query builders need to know about one collection; `source` is SQL of our own (alias `t`)."""

    id: str
    title: str
    description: str
    keywords: tuple[str, ...]
    fields: tuple[Field, ...]
    source: str
    geometry_type: str | None
    bbox: tuple[float, float, float, float] | None
    temporal: tuple[datetime | None, datetime | None]
    modified_at: datetime | None
    row_count: int | None
    dataset_id: int | None = None
    licence: str | None = None

    def field(self, name: str) -> Field | None:
        for f in self.fields:
            if f.name == name:
                return f
        return None

    @property
    def temporal_field(self) -> Field | None:
        """The field that `datetime` filters: the first datetime/date field, as for the temporal extent."""
        for f in self.fields:
            if f.is_temporal:
                return f
        return None

    @property
    def has_geometry(self) -> bool:
        return self.geometry_type is not None


_DATASET_COLUMNS = (
    "d.id, d.slug, d.title, d.description, d.keywords, d.licence, d.table_name, d.table_schema::text AS table_schema, "
    "d.geometry_type, ST_XMin(d.spatial_extent) AS xmin, ST_YMin(d.spatial_extent) AS ymin, "
    "ST_XMax(d.spatial_extent) AS xmax, ST_YMax(d.spatial_extent) AS ymax, d.temporal_start, d.temporal_end, "
    "d.modified_at, d.row_count"
)


def _dataset_collection(row: asyncpg.Record) -> Collection:
    schema = orjson.loads(row["table_schema"]) if row["table_schema"] else {}
    fields = tuple(
        Field(f["name"], f.get("type", "string"), f.get("title"), f.get("description"))
        for f in schema.get("fields", [])
        if f.get("name") not in ("_fid", "geom")
    )
    bbox = None
    if row["xmin"] is not None:
        bbox = (row["xmin"], row["ymin"], row["xmax"], row["ymax"])
    return Collection(
        id=row["slug"],
        title=row["title"],
        description=row["description"],
        keywords=tuple(row["keywords"] or ()),
        fields=fields,
        source=f"datasets.{quote_ident(row['table_name'])}",
        geometry_type=row["geometry_type"],
        bbox=bbox,
        temporal=(row["temporal_start"], row["temporal_end"]),
        modified_at=row["modified_at"],
        row_count=row["row_count"],
        dataset_id=row["id"],
        licence=row["licence"],
    )


def _dataset_query(principal: Principal, where: str) -> str:
    return (
        f"SELECT {_DATASET_COLUMNS} FROM dataset d WHERE d.kind = 'table' AND d.table_name IS NOT NULL "
        f"AND {dataset_visible_sql(principal, 'd')} AND {where} ORDER BY d.slug"
    )


def sensors_source(principal: Principal) -> str:
    """The sensor network as a relation: one row per visible Thing, its latest Location, its latest observations."""
    thing_visible = member_visible_sql(principal, "th.dataset_id")
    stream_visible = member_visible_sql(principal, "ds.dataset_id")
    return f"""(SELECT th.id AS _fid, th.name AS name, th.description AS description, th.properties AS properties,
  (SELECT jsonb_object_agg(ds.name, jsonb_build_object(
      'datastream', ds.id, 'result', COALESCE(to_jsonb(o.result_number), to_jsonb(o.result_string),
      to_jsonb(o.result_boolean), o.result_json), 'phenomenonTime', o.phenomenon_time,
      'unit', ds.unit_of_measurement->>'symbol'))
   FROM datastream ds LEFT JOIN LATERAL (SELECT * FROM observation o WHERE o.datastream_id = ds.id
      ORDER BY o.phenomenon_time DESC LIMIT 1) o ON true
   WHERE ds.thing_id = th.id AND {stream_visible}) AS observations,
  (SELECT l.geom FROM thing_location tl JOIN location l ON l.id = tl.location_id
   WHERE tl.thing_id = th.id ORDER BY l.id DESC LIMIT 1) AS geom
FROM thing th WHERE {thing_visible})"""


_SENSOR_FIELDS = (
    Field("name", "string", "Nom"),
    Field("description", "string", "Description"),
    Field("properties", "object", "Propriétés"),
    Field("observations", "object", "Dernières observations", "latest observation of each Datastream"),
)


async def _sensors_collection(conn: asyncpg.Connection, principal: Principal) -> Collection:
    source = sensors_source(principal)
    row = await conn.fetchrow(
        "SELECT ST_XMin(e) AS xmin, ST_YMin(e) AS ymin, ST_XMax(e) AS xmax, ST_YMax(e) AS ymax "
        f"FROM (SELECT ST_Extent(t.geom)::geometry AS e FROM {source} t) x"
    )
    # The temporal extent counts only Datastreams visible both by their own dataset and by their Thing's.
    times = await conn.fetchrow(
        "SELECT min(ds.phenomenon_time_start) AS s, max(ds.phenomenon_time_end) AS e FROM datastream ds "
        f"WHERE {datastream_visible_sql(principal, 'ds')}"
    )
    bbox = None
    if row is not None and row["xmin"] is not None:
        bbox = (row["xmin"], row["ymin"], row["xmax"], row["ymax"])
    return Collection(
        id=SENSORS_ID,
        title="Réseau de capteurs",
        description="Les capteurs du territoire (Things) à leur emplacement actuel, avec leurs dernières mesures.",
        keywords=("capteurs", "SensorThings"),
        fields=_SENSOR_FIELDS,
        source=source,
        geometry_type="Geometry",
        bbox=bbox,
        temporal=(times["s"], times["e"]) if times else (None, None),
        modified_at=None,
        row_count=None,
    )


async def list_collections(conn: asyncpg.Connection, principal: Principal = ANONYMOUS) -> list[Collection]:
    """Every collection this principal may see: table datasets by slug, then the sensor network."""
    rows = await conn.fetch(_dataset_query(principal, "TRUE"))
    found = [_dataset_collection(r) for r in rows]
    if all(c.id != SENSORS_ID for c in found):
        found.append(await _sensors_collection(conn, principal))
    return found


async def get_collection(
    conn: asyncpg.Connection, collection_id: str, principal: Principal = ANONYMOUS, *, sensors: bool = True
) -> Collection:
    """One visible collection (table datasets, and the sensor network unless `sensors` is false), else 404."""
    row = await conn.fetchrow(_dataset_query(principal, "d.slug = $1"), collection_id)
    if row is not None:
        found = _dataset_collection(row)
        remember(found)  # its shape only: whoever reads it later is checked again (guard_sql)
        return found
    if sensors and collection_id == SENSORS_ID:
        return await _sensors_collection(conn, principal)
    raise NotFoundError(f"no collection {collection_id!r}")


# --- a cache of table collections, always checked by the query that uses it -----------------------------------
#
# Small requests pay mostly for round trips. A request may build its SQL from the collection it saw last time,
# provided the statement itself checks (guard_sql) that the dataset is unchanged and visible to the principal of
# *this* request: rows come back only if so; when none do, the caller asks again the long way (which answers 404
# for a dataset hidden from it). So the cache is never trusted alone. It holds a table dataset's shape (columns,
# extent, modification time), which is the same whoever asks: what differs is only whether one may see it, and
# that is decided in the statement, never by the cache, so a shape remembered from an admin's request cannot
# serve an anonymous one. A dataset hidden from one caller stays cached for the others (no eviction by a 404).

_CACHE: dict[str, Collection] = {}
_CACHE_MAX = 1024


def remember(collection: Collection) -> None:
    if collection.dataset_id is None or collection.modified_at is None:
        return
    if len(_CACHE) >= _CACHE_MAX:
        _CACHE.clear()
    _CACHE[collection.id] = collection


def recall(collection_id: str) -> Collection | None:
    return _CACHE.get(collection_id)


def guard_sql(collection: Collection, params: Any, principal: Principal = ANONYMOUS) -> str:
    """SQL true only while the dataset is as the collection describes it and visible to the principal."""
    return (
        f"EXISTS (SELECT 1 FROM dataset d WHERE d.id = {params.add(collection.dataset_id, 'bigint')} "
        f"AND d.modified_at = {params.add(collection.modified_at, 'timestamptz')} AND d.kind = 'table' "
        f"AND {dataset_visible_sql(principal, 'd')})"
    )
