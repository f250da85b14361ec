"""Definitions -> checked references -> parameterized SQL.

`resolve` checks a parsed definition against the database (the dataset and its fields, the ObservedProperty, the
division and its attributes, the denominator indicator) and tries its filters once, so a definition that cannot run
is refused with the reason before it is stored. `values_sql` writes the statement computing the raw values of
some periods (or all): identifiers come only from Table Schemas and division declarations (quoted), every value of
the definition is a bound parameter.

Every source is first turned into the same rows — (unit_code, t, v, n, lo, hi[, c]): a unit, a time, a value, how
many records it stands for, its least and greatest, and the share condition — so each aggregation is written once:
an observation is one record (n = 1, lo = hi = v), a 15-minute rollup is n records (v their sum).
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from territoire_data.auth.policy import Principal, dataset_visible_sql
from territoire_data.db.bulk import quote_ident
from territoire_data.db.params import Params
from territoire_data.errors import BadRequestError, NotFoundError, ValidationFailedError
from territoire_data.indicators import divisions
from territoire_data.indicators.model import PREVIOUS_YEAR, DatasetSource, IndicatorDefinition, SensorSource
from territoire_data.query import cql2sql
from territoire_data.query.collections import Collection, Field, get_collection
from territoire_data.query.dbaccess import fetch_checked

NUMERIC_TYPES = ("integer", "number", "year")
TIME_TYPES = ("date", "datetime")
STEPS = {"day": "1 day", "week": "1 week", "month": "1 month", "quarter": "3 months", "year": "1 year"}


class DefinitionError(ValidationFailedError):
    """A definition that parses but does not fit the data it names."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(
            f"invalid indicator definition: {field_name}: {message}", errors=[{"field": field_name, "message": message}]
        )


@dataclass(frozen=True)
class Resolved:
    """A definition with every reference it makes checked and turned into ids, tables and columns."""

    definition: IndicatorDefinition
    collection: Collection | None = None
    source_access: str = "public"
    division: divisions.Division | None = None
    observed_property_ids: tuple[int, ...] = ()
    sensor_dataset_ids: tuple[int, ...] | None = None
    denominator_indicator_id: int | None = None
    sources: tuple[str, ...] = ()
    restricted: bool = False
    filter_tree: dict[str, Any] | None = None
    condition_tree: dict[str, Any] | None = None
    streams: tuple[tuple[int, ...], tuple[str, ...]] = ((), ())  # a sensor source's Datastreams and their units

    @property
    def source_dataset_id(self) -> int | None:
        return self.collection.dataset_id if self.collection else None


def _field(collection: Collection, name: str, where: str, types: tuple[str, ...], wanted: str) -> Field:
    found = collection.field(name)
    if found is None:
        known = ", ".join(f.name for f in collection.fields)
        raise DefinitionError(where, f"unknown field {name!r} in dataset {collection.id!r}; fields: {known}")
    if found.type not in types:
        raise DefinitionError(where, f"type mismatch: field {name!r} is {found.type}, {wanted} is needed")
    return found


def _tree(text: str, collection: Collection, where: str) -> dict[str, Any]:
    try:
        tree = cql2sql.parse(text, parameter=where)
        cql2sql.to_sql(tree, collection, Params())  # unknown properties and operators are refused here
    except BadRequestError as exc:
        raise DefinitionError(where, exc.detail) from None
    return tree


async def _dataset_source(
    conn: asyncpg.Connection, principal: Principal, d: IndicatorDefinition, source: DatasetSource
) -> dict[str, Any]:
    try:
        collection = await get_collection(conn, source.dataset, principal, sensors=False)
    except NotFoundError:
        raise DefinitionError("source.dataset", f"no table dataset {source.dataset!r}") from None
    if source.value is not None:
        _field(collection, source.value, "source.value", NUMERIC_TYPES, "a number")
    elif d.aggregation.function not in ("count", "share"):
        raise DefinitionError("source.value", f"aggregation {d.aggregation.function} needs a numeric field")
    if source.time is not None:
        _field(collection, source.time, "source.time", TIME_TYPES, "a date or datetime")
    access = await conn.fetchval("SELECT access FROM dataset WHERE id = $1", collection.dataset_id)
    resolved: dict[str, Any] = {"collection": collection, "source_access": access, "sources": (source.dataset,)}
    if source.filter:
        resolved["filter_tree"] = _tree(source.filter, collection, "source.filter")
    if d.aggregation.condition:
        resolved["condition_tree"] = _tree(d.aggregation.condition, collection, "aggregation.condition")
    return resolved


async def _sensor_source(conn: asyncpg.Connection, principal: Principal, source: SensorSource) -> dict[str, Any]:
    ids = await conn.fetch(
        "SELECT id FROM observed_property WHERE external_key = $1 OR name = $1 ORDER BY id", source.observed_property
    )
    if not ids:
        raise DefinitionError("source.observed_property", f"no ObservedProperty named {source.observed_property!r}")
    resolved: dict[str, Any] = {"observed_property_ids": tuple(r["id"] for r in ids), "sources": ()}
    if source.datasets:
        rows = await conn.fetch(
            f"SELECT d.id, d.slug, d.kind, d.access FROM dataset d WHERE d.slug = ANY($1::text[]) "
            f"AND {dataset_visible_sql(principal, 'd')}",
            source.datasets,
        )
        found = {r["slug"]: r for r in rows}
        for slug in source.datasets:
            if slug not in found:
                raise DefinitionError("source.datasets", f"no dataset {slug!r}")
            if found[slug]["kind"] != "sensors":
                raise DefinitionError("source.datasets", f"dataset {slug!r} holds no sensors")
        resolved["sensor_dataset_ids"] = tuple(found[s]["id"] for s in source.datasets)
        resolved["sources"] = tuple(source.datasets)
        resolved["source_access"] = "restricted" if any(r["access"] != "public" for r in rows) else "public"
    else:
        slugs = await conn.fetch(
            "SELECT DISTINCT x.slug FROM datastream d JOIN dataset x ON x.id = d.dataset_id "
            "WHERE d.observed_property_id = ANY($1::bigint[]) AND x.access = 'public' ORDER BY 1",
            list(resolved["observed_property_ids"]),
        )
        resolved["sources"] = tuple(r["slug"] for r in slugs)
    return resolved


async def resolve(
    conn: asyncpg.Connection,
    principal: Principal,
    d: IndicatorDefinition,
    *,
    self_id: int | None = None,
    check: bool = True,
) -> Resolved:
    """Check every reference of `d` as `principal` sees the catalog, then (`check`) try its statement once."""
    if isinstance(d.source, DatasetSource):
        found = await _dataset_source(conn, principal, d, d.source)
    else:
        found = await _sensor_source(conn, principal, d.source)
    division = None
    if d.breakdown is not None:
        try:
            division = await divisions.get(conn, principal, d.breakdown.division)
        except NotFoundError as exc:
            raise DefinitionError("breakdown.division", exc.detail) from None
    denominator_id = None
    if d.denominator is not None:
        if d.denominator.attribute is not None:
            assert division is not None  # the model requires a breakdown with an attribute
            if d.denominator.attribute not in division.attributes:
                known = ", ".join(division.attributes) or "none"
                raise DefinitionError(
                    "denominator.attribute",
                    f"division {division.slug!r} has no attribute {d.denominator.attribute!r} (attributes: {known})",
                )
        if d.denominator.indicator is not None:
            other = await conn.fetchrow(
                "SELECT id, definition::text AS definition FROM indicator WHERE slug = $1", d.denominator.indicator
            )
            if other is None or other["id"] == self_id:
                raise DefinitionError("denominator.indicator", f"no indicator {d.denominator.indicator!r}")
            other_def = orjson.loads(other["definition"])
            if other_def.get("period") != d.period:
                raise DefinitionError("denominator.indicator", "the denominator indicator has another period")
            other_division = other_def.get("breakdown") or {}
            if other_division.get("division") != (d.breakdown.division if d.breakdown else None):
                raise DefinitionError("denominator.indicator", "the denominator indicator has another breakdown")
            denominator_id = int(other["id"])
    restricted = found.get("source_access", "public") != "public" or (
        division is not None and division.access != "public"
    )
    sources = tuple(found.get("sources", ())) + ((division.slug,) if division else ())
    resolved = Resolved(
        definition=d,
        collection=found.get("collection"),
        source_access=found.get("source_access", "public"),
        division=division,
        observed_property_ids=found.get("observed_property_ids", ()),
        sensor_dataset_ids=found.get("sensor_dataset_ids"),
        denominator_indicator_id=denominator_id,
        sources=sources,
        restricted=restricted,
        filter_tree=found.get("filter_tree"),
        condition_tree=found.get("condition_tree"),
    )
    if isinstance(d.source, SensorSource):
        resolved = replace(resolved, streams=await streams_of(conn, resolved))
    if check:
        await _try(conn, resolved)
    return resolved


async def _try(conn: asyncpg.Connection, r: Resolved) -> None:
    """Run a dataset source's rows (its filter and condition) on a handful of records: what PostgreSQL refuses is
    caught now. Sensor sources have no user expression to try."""
    if not isinstance(r.definition.source, DatasetSource):
        return
    params = Params()
    sql = f"SELECT * FROM ({rows_sql(r, params, None)}) x LIMIT 5"
    try:
        async with conn.transaction():
            await conn.execute("SET LOCAL statement_timeout = 10000")
            await fetch_checked(conn, sql, params.values)
    except BadRequestError as exc:
        where = "aggregation.condition" if r.condition_tree and not r.filter_tree else "source.filter"
        raise DefinitionError(where, f"cannot run: {exc.detail}") from None
    except asyncpg.QueryCanceledError:
        pass  # slow, not wrong: the first computation will tell


# --- SQL -------------------------------------------------------------------------------------------------------


def _period_bounds(r: Resolved, params: Params, periods: list[datetime]) -> str:
    d = r.definition
    tz = params.add(d.timezone, "text")
    return (
        f"(SELECT s AS lo, ((s AT TIME ZONE {tz}) + {params.text_as(STEPS[d.period], 'interval')}) AT TIME ZONE {tz} "
        f"AS hi FROM unnest({params.add(periods, 'timestamptz[]')}) s)"
    )


def _dataset_rows(r: Resolved, params: Params, periods: list[datetime] | None) -> str:
    d = r.definition
    source = d.source
    assert isinstance(source, DatasetSource) and r.collection is not None
    collection = r.collection
    if source.time is None:
        time_sql = "now()"
    else:
        time_field = collection.field(source.time)
        assert time_field is not None
        time_sql = time_field.sql
        if time_field.type != "datetime":  # a date is the local day it names
            time_sql = f"({time_field.sql}::timestamp AT TIME ZONE {params.add(d.timezone, 'text')})"
    value_sql = f"t.{quote_ident(source.value)}::float8" if source.value else "1::float8"
    condition_sql = "NULL::boolean"
    if r.condition_tree is not None:
        condition_sql = cql2sql.to_sql(r.condition_tree, collection, params)
    where = [cql2sql.to_sql(r.filter_tree, collection, params)] if r.filter_tree is not None else []
    if source.value:
        where.append(f"{value_sql} IS NOT NULL")
    join = ""
    unit_sql = "''::text"
    if r.division is not None:
        join = f" JOIN {r.division.table} u ON ST_Intersects(u.geom, ST_PointOnSurface(t.geom))"
        unit_sql = r.division.code_sql
        where.append("t.geom IS NOT NULL")
    if source.time is not None:
        where.append(f"{time_sql} IS NOT NULL")
    if periods is not None and source.time is not None:
        where.append(f"{time_sql} >= p.lo AND {time_sql} < p.hi")
        join += f" JOIN {_period_bounds(r, params, periods)} p ON true"
    return (
        f"SELECT {unit_sql} AS unit_code, {time_sql} AS t, {value_sql} AS v, 1::bigint AS n, {value_sql} AS lo, "
        f"{value_sql} AS hi, ({condition_sql}) AS c FROM {collection.source} t{join}"
        + (f" WHERE {' AND '.join(where)}" if where else "")
    )


def _streams_sql(r: Resolved, params: Params) -> str:
    """The Datastreams a sensor source reads, with the unit each one is in."""
    if r.sensor_dataset_ids is not None:
        datasets = f"d.dataset_id = ANY({params.add(list(r.sensor_dataset_ids), 'bigint[]')})"
    else:  # no dataset named: the public sensors, and those of no dataset
        datasets = (
            "(d.dataset_id IS NULL OR EXISTS (SELECT 1 FROM dataset x WHERE x.id = d.dataset_id "
            "AND x.access = 'public'))"
        )
    unit_sql = "''::text"
    join = ""
    if r.division is not None:
        # A Datastream is in the unit where its Thing is (its newest Location), as the sensor map shows it.
        join = (
            " JOIN LATERAL (SELECT l.geom FROM thing_location tl JOIN location l ON l.id = tl.location_id "
            "WHERE tl.thing_id = d.thing_id ORDER BY l.id DESC LIMIT 1) loc ON true "
            f"JOIN {r.division.table} u ON ST_Intersects(u.geom, loc.geom)"
        )
        unit_sql = r.division.code_sql
    return (
        f"SELECT DISTINCT ON (d.id) d.id, {unit_sql} AS unit_code FROM datastream d{join} "
        f"WHERE d.observed_property_id = ANY({params.add(list(r.observed_property_ids), 'bigint[]')}) AND {datasets} "
        "ORDER BY d.id"
    )


async def streams_of(conn: asyncpg.Connection, r: Resolved) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """Where each Datastream of a sensor source is, resolved once per computation (a few hundred rows): the
    statement over the observations then joins two arrays, so the planner sees how many there are."""
    params = Params()
    rows = await conn.fetch(_streams_sql(r, params), *params.values)
    return tuple(row["id"] for row in rows), tuple(row["unit_code"] for row in rows)


def _sensor_rows(r: Resolved, params: Params, periods: list[datetime] | None) -> str:
    d = r.definition
    source = d.source
    assert isinstance(source, SensorSource)
    ids, units = r.streams
    streams = (
        f"(SELECT * FROM unnest({params.add(list(ids), 'bigint[]')}, {params.add(list(units), 'text[]')}) "
        "AS s(id, unit_code))"
    )
    if source.read == "rollups":
        bounds = ""
        if periods is not None:
            bounds = f" JOIN {_period_bounds(r, params, periods)} p ON o.bucket >= p.lo AND o.bucket < p.hi"
        return (
            "SELECT s.unit_code, o.bucket AS t, o.total AS v, o.n AS n, o.min_value AS lo, o.max_value AS hi, "
            f"NULL::boolean AS c FROM {streams} s JOIN observation_rollup_15min o ON o.datastream_id = s.id{bounds}"
        )
    bounds = ""
    if periods is not None:
        bounds = (
            f" JOIN {_period_bounds(r, params, periods)} p ON o.phenomenon_time >= p.lo AND o.phenomenon_time < p.hi"
        )
    function = d.aggregation.function
    if function in ("percentile", "share"):  # they need every value
        threshold = d.aggregation.threshold
        condition = f"(o.result_number > {params.add(threshold, 'float8')})" if threshold is not None else "NULL"
        return (
            "SELECT s.unit_code, o.phenomenon_time AS t, o.result_number AS v, 1::bigint AS n, "
            f"o.result_number AS lo, o.result_number AS hi, {condition} AS c "
            f"FROM {streams} s JOIN observation o ON o.datastream_id = s.id{bounds} WHERE o.result_number IS NOT NULL"
        )
    # Decomposable aggregates: first per Datastream and bucket (the local period, or the local day for days_above),
    # joined to nothing but the Datastreams' ids, then per unit on those partial sums. Measured on 10 M observations
    # (bench/indicators.py, 2026-12-05): a first pass per UTC hour (date_bin, no zone arithmetic) made 1.7 M groups
    # that spilled to disk, and the full computation took twice as long as this.
    bucket = "day" if function == "days_above" else d.period
    tz = params.add(d.timezone, "text")
    return (
        "SELECT s.unit_code, a.t, a.v, a.n, a.lo, a.hi, NULL::boolean AS c FROM ("
        f"SELECT o.datastream_id, date_trunc({params.add(bucket, 'text')}, o.phenomenon_time, {tz}) AS t, "
        "sum(o.result_number) AS v, count(*) AS n, min(o.result_number) AS lo, max(o.result_number) AS hi "
        f"FROM {streams} k JOIN observation o ON o.datastream_id = k.id{bounds} "
        "WHERE o.result_number IS NOT NULL GROUP BY 1, 2) a "
        f"JOIN {streams} s ON s.id = a.datastream_id"
    )


def rows_sql(r: Resolved, params: Params, periods: list[datetime] | None) -> str:
    """The source as rows (unit_code, t, v, n, lo, hi, c), restricted to `periods` (their starts) unless None."""
    if isinstance(r.definition.source, DatasetSource):
        return _dataset_rows(r, params, periods)
    return _sensor_rows(r, params, periods)


def values_sql(r: Resolved, params: Params, periods: list[datetime] | None) -> str:
    """(unit_code, period_start, raw_value, record_count) of the given periods (all when None)."""
    d = r.definition
    agg = d.aggregation
    period = params.add(d.period, "text")
    tz = params.add(d.timezone, "text")
    rows = rows_sql(r, params, periods)
    if agg.function == "days_above":
        threshold = params.add(agg.threshold, "float8")
        return (
            f"SELECT unit_code, date_trunc({period}, day, {tz}) AS period_start, "
            f"(count(*) FILTER (WHERE m > {threshold}))::float8 AS raw_value, sum(n)::bigint AS record_count "
            f"FROM (SELECT unit_code, date_trunc('day', t, {tz}) AS day, sum(v) / NULLIF(sum(n), 0) AS m, "
            f"sum(n) AS n FROM ({rows}) src GROUP BY 1, 2) daily GROUP BY 1, 2"
        )
    expression = {
        "count": "sum(n)::float8",
        "sum": "sum(v)",
        "mean": "sum(v) / NULLIF(sum(n), 0)",
        "min": "min(lo)",
        "max": "max(hi)",
        "share": "100.0 * count(*) FILTER (WHERE c) / NULLIF(count(*), 0)",
    }.get(agg.function)
    if agg.function == "percentile":
        expression = f"percentile_cont({params.add((agg.percentile or 50) / 100, 'float8')}) WITHIN GROUP (ORDER BY v)"
    assert expression is not None
    grouped = (
        f"SELECT unit_code, date_trunc({period}, t, {tz}) AS period_start, ({expression})::float8 AS raw_value, "
        f"sum(n)::bigint AS record_count FROM ({rows}) src GROUP BY 1, 2"
    )
    fill = isinstance(d.source, DatasetSource) and agg.function in ("count", "sum") and r.division is not None
    if not fill:
        return grouped
    assert r.division is not None
    # Counts and sums of records: a unit without any record counts 0 (a commune without a charge point has none),
    # in every period computed; a snapshot always has the current period.
    current = f"UNION SELECT date_trunc({period}, now(), {tz})" if d.source.time is None else ""  # type: ignore[union-attr]
    return (
        f"WITH g AS ({grouped}) "
        f"SELECT u.code AS unit_code, p.period_start, COALESCE(g.raw_value, 0) AS raw_value, "
        f"COALESCE(g.record_count, 0) AS record_count "
        f"FROM (SELECT DISTINCT {r.division.code_sql} AS code FROM {r.division.table} u) u "
        f"CROSS JOIN (SELECT period_start FROM g {current}) p "
        f"LEFT JOIN g ON g.unit_code = u.code AND g.period_start = p.period_start "
        f"GROUP BY 1, 2, 3, 4"
    )


def value_sql(r: Resolved, params: Params) -> tuple[str, str]:
    """(value, denominator) expressions of a stored row `v` (its raw_value), by the definition's denominator."""
    d = r.definition
    den = d.denominator
    if den is None:
        return "v.raw_value", "NULL::float8"
    if den.attribute is not None:
        per = params.add(den.per, "float8")
        assert r.division is not None
        divisor = (
            f"(SELECT {r.division.attribute_sql(den.attribute)} FROM {r.division.table} u "
            f"WHERE {r.division.code_sql} = v.unit_code LIMIT 1)"
        )
        return f"v.raw_value / NULLIF({divisor}, 0) * {per}", divisor
    if den.indicator is not None:
        per = params.add(den.per, "float8")
        divisor = (
            "(SELECT w.value FROM indicator_value w WHERE w.indicator_id = "
            f"{params.add(r.denominator_indicator_id, 'bigint')} AND w.unit_code = v.unit_code "
            "AND w.period_start = v.period_start)"
        )
        return f"v.raw_value / NULLIF({divisor}, 0) * {per}", divisor
    tz = params.add(d.timezone, "text")
    previous = (
        "(SELECT w.raw_value FROM indicator_value w WHERE w.indicator_id = v.indicator_id "
        f"AND w.unit_code = v.unit_code AND w.period_start = ((v.period_start AT TIME ZONE {tz}) - "
        f"{params.text_as(PREVIOUS_YEAR[d.period], 'interval')}) AT TIME ZONE {tz})"
    )
    return f"100.0 * (v.raw_value - {previous}) / NULLIF({previous}, 0)", previous
