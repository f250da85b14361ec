"""SQL for items: one WHERE from every filter, features built as GeoJSON text by PostgreSQL (no per-row Python)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from territoire_data.auth.policy import ANONYMOUS, Principal
from territoire_data.db.params import Params
from territoire_data.errors import BadRequestError
from territoire_data.query.collections import Collection, Field, guard_sql
from territoire_data.query.cql2sql import to_sql
from territoire_data.query.crs import DEFAULT, Crs, input_geometry_sql, output_geometry_sql
from territoire_data.query.params import DatetimeFilter

# json_build_object takes at most 100 arguments: wider tables are built in chunks and merged.
_PAIRS_PER_OBJECT = 50


@dataclass
class ItemsQuery:
    """Every filter of an items (or export) request, already parsed and checked against the collection."""

    bbox: tuple[float, float, float, float] | None = None
    bbox_crs: Crs = DEFAULT
    datetime: DatetimeFilter | None = None
    equals: dict[str, str] = field(default_factory=dict)
    cql: dict[str, Any] | None = None
    filter_crs: Crs = DEFAULT
    properties: tuple[str, ...] | None = None
    sortby: tuple[tuple[str, bool], ...] = ()
    crs: Crs = DEFAULT
    skip_geometry: bool = False
    limit: int = 10
    offset: int = 0
    # Keyset paging: features with a greater id than this (the last of the previous page). Only in id order, i.e.
    # without sortby; `offset` then only numbers the page (for its prev link), it skips nothing.
    after_id: int | None = None

    @property
    def filtered(self) -> bool:
        return bool(self.bbox or self.datetime or self.equals or self.cql)


def _moment(value: datetime | date, pg_type: str, params: Params) -> str:
    return params.text_as(value.isoformat(), pg_type)


def _datetime_sql(column: Field, value: DatetimeFilter, params: Params) -> list[str]:
    """Instants match exactly (a whole day for a date on a date-time field); intervals are closed, ends open."""
    pg_type = column.pg_type
    clauses: list[str] = []
    day_on_timestamp = pg_type == "timestamptz"
    if value.instant and value.start is not None:
        if day_on_timestamp and not isinstance(value.start, datetime):
            clauses.append(f"{column.sql} >= {_moment(value.start, pg_type, params)}")
            clauses.append(f"{column.sql} < {_moment(value.start + timedelta(days=1), pg_type, params)}")
        else:
            clauses.append(f"{column.sql} = {_moment(value.start, pg_type, params)}")
        return clauses
    if value.start is not None:
        clauses.append(f"{column.sql} >= {_moment(value.start, pg_type, params)}")
    if value.end is not None:
        if day_on_timestamp and not isinstance(value.end, datetime):
            clauses.append(f"{column.sql} < {_moment(value.end + timedelta(days=1), pg_type, params)}")
        else:
            clauses.append(f"{column.sql} <= {_moment(value.end, pg_type, params)}")
    return clauses


def where_sql(collection: Collection, query: ItemsQuery, params: Params) -> str:
    """The WHERE condition of a request (TRUE when unfiltered); geometries go to the column's CRS."""
    clauses: list[str] = []
    if query.bbox is not None:
        # In the axis order of bbox-crs; input_geometry_sql flips (lat, lon) CRSs to the column's (lon, lat).
        envelope = "ST_MakeEnvelope(" + ", ".join(params.add(v, "float8") for v in query.bbox) + ")"
        clauses.append(f"ST_Intersects(t.geom, {input_geometry_sql(envelope, query.bbox_crs)})")
    if query.datetime is not None:
        column = collection.temporal_field
        if column is None:
            raise BadRequestError(f"datetime: collection {collection.id!r} has no temporal property")
        clauses.extend(_datetime_sql(column, query.datetime, params))
    for name, value in query.equals.items():
        column = collection.field(name)
        assert column is not None  # checked by the parameter parser
        clauses.append(f"{column.sql} = {params.text_as(value, column.pg_type)}")
    if query.cql is not None:
        clauses.append(to_sql(query.cql, collection, params, query.filter_crs))
    return " AND ".join(clauses) if clauses else "TRUE"


def object_sql(pairs: list[tuple[str, str]]) -> str:
    """A json object from (key, SQL expression) pairs, built by PostgreSQL, keys in order up to 50 pairs."""
    if not pairs:
        return "'{}'::json"
    chunks = [pairs[i : i + _PAIRS_PER_OBJECT] for i in range(0, len(pairs), _PAIRS_PER_OBJECT)]
    builder = "json_build_object" if len(chunks) == 1 else "jsonb_build_object"
    objects = [f"{builder}(" + ", ".join(f"{_literal(k)}, {v}" for k, v in chunk) + ")" for chunk in chunks]
    return objects[0] if len(objects) == 1 else "(" + " || ".join(objects) + ")::json"


def selected_fields(collection: Collection, names: tuple[str, ...] | None) -> tuple[Field, ...]:
    return collection.fields if names is None else tuple(f for f in collection.fields if f.name in names)


def properties_sql(collection: Collection, names: tuple[str, ...] | None) -> str:
    """A json object of the selected properties, built by PostgreSQL."""
    return object_sql([(f.name, f.sql) for f in selected_fields(collection, names)])


def _literal(name: str) -> str:
    """A field name as an SQL string literal (names come from the Table Schema, quotes doubled)."""
    return "'" + name.replace("'", "''") + "'"


def geometry_json_sql(crs: Crs) -> str:
    return f"ST_AsGeoJSON({output_geometry_sql('t.geom', crs)}, {crs.decimals}, 0)::json"


def feature_sql(collection: Collection, query: ItemsQuery) -> str:
    """One GeoJSON Feature per row, as text."""
    geometry = "NULL::json" if query.skip_geometry else geometry_json_sql(query.crs)
    return (
        f"json_build_object('type', 'Feature', 'id', t._fid, 'geometry', {geometry}, "
        f"'properties', {properties_sql(collection, query.properties)})::text"
    )


def order_sql(query: ItemsQuery) -> str:
    keys = [f"{sql} {'ASC' if asc else 'DESC'} NULLS LAST" for sql, asc in query.sortby]
    keys.append("t._fid")
    return ", ".join(keys)


def items_sql(
    collection: Collection, query: ItemsQuery, *, guarded: bool = False, principal: Principal = ANONYMOUS
) -> tuple[str, list[Any]]:
    """The page of features (GeoJSON text, id), one more than `limit` so that we know whether a next page exists.

    `guarded`: the collection came from the cache, so the statement also checks that it is current and visible
    to `principal` (guard_sql).
    """
    params = Params()
    where = where_sql(collection, query, params)
    if guarded:
        where = f"{guard_sql(collection, params, principal)} AND {where}"
    if query.after_id is not None:
        if query.sortby:
            raise BadRequestError("after-id: only in id order (without sortby); use offset with sortby")
        where = f"{where} AND t._fid > {params.add(query.after_id, 'bigint')}"
        skip = ""
    else:
        skip = f" OFFSET {params.add(query.offset, 'bigint')}"
    limit = params.add(query.limit + 1, "bigint")
    sql = (
        f"SELECT {feature_sql(collection, query)}, t._fid FROM {collection.source} t WHERE {where} "
        f"ORDER BY {order_sql(query)} LIMIT {limit}{skip}"
    )
    return sql, params.values


def records_sql(collection: Collection, query: ItemsQuery) -> tuple[str, list[Any]]:
    """A page of records (JSON text: `_id`, the selected fields, the geometry), one more than `limit`."""
    params = Params()
    condition = where_sql(collection, query, params)
    pairs = [("_id", "t._fid")] + [(f.name, f.sql) for f in selected_fields(collection, query.properties)]
    if collection.has_geometry:
        pairs.append(("geometry", geometry_json_sql(query.crs)))
    sql = (
        f"SELECT {object_sql(pairs)}::text FROM {collection.source} t WHERE {condition} "
        f"ORDER BY {order_sql(query)} LIMIT {params.add(query.limit + 1, 'bigint')} "
        f"OFFSET {params.add(query.offset, 'bigint')}"
    )
    return sql, params.values


def count_sql(collection: Collection, query: ItemsQuery, cap: int) -> tuple[str, list[Any]]:
    """How many features match, counting at most `cap + 1` (beyond the cap numberMatched is left out)."""
    params = Params()
    where = where_sql(collection, query, params)
    limit = params.add(cap + 1, "bigint")
    return f"SELECT count(*) FROM (SELECT 1 FROM {collection.source} t WHERE {where} LIMIT {limit}) c", params.values


def item_sql(
    collection: Collection,
    query: ItemsQuery,
    fid: int,
    *,
    guarded: bool = False,
    principal: Principal = ANONYMOUS,
) -> tuple[str, list[Any]]:
    params = Params()
    where = f"t._fid = {params.add(fid, 'bigint')}"
    if guarded:
        where = f"{guard_sql(collection, params, principal)} AND {where}"
    return f"SELECT {feature_sql(collection, query)} FROM {collection.source} t WHERE {where}", params.values
