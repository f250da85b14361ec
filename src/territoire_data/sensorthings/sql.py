"""SQL for SensorThings reads, generated from the OData tree in this one module; every value is bound ($n).

Identifiers come only from the entity model (an allow-list); user values go through `Params`. Paths through
relations become EXISTS sub-queries around the comparison that uses them, so `Datastreams/name eq 'x'`
means "some Datastream is named x", as FROST does.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from territoire_data.auth.policy import Principal, datastream_visible_sql, member_visible_sql
from territoire_data.db.params import Params as Params  # re-exported: the doors build statements with it
from territoire_data.errors import BadRequestError
from territoire_data.sensorthings.jsonsql import JsonShape, interval_json, link_prefix, members_sql, uses_links
from territoire_data.sensorthings.model import BY_NAME, EntityType, Prop, Relation
from territoire_data.sensorthings.odata import (
    ARITHMETIC,
    COMPARISONS,
    Binary,
    Call,
    Expr,
    Lit,
    OrderItem,
    Path,
    Unary,
    parse_datetime,
)


class InvalidQueryError(BadRequestError):
    """A query option that parses but cannot apply (unknown property, type mismatch)."""

    title = "Invalid query option"
    type_slug = "sta-query-invalid"


@dataclass(frozen=True)
class Typed:
    """A compiled SQL expression and its kind (text, number, bool, time, date, clock, geo, json, null, ...)."""

    sql: str
    kind: str
    # For polymorphic sources (Observation.result, JSON paths), how to read them as each kind.
    variants: dict[str, str] | None = None
    end_sql: str | None = None  # intervals: the end of the interval


@dataclass
class JoinContext:
    """Relation hops met while compiling one boolean leaf: (relation, parent alias, child alias)."""

    hops: list[tuple[Relation, str, str]] = field(default_factory=list)
    keys: dict[tuple[str, str], str] = field(default_factory=dict)


# --- visibility (the access policy applied to each entity type) ----------------------------------------


def visible_sql(entity: EntityType, alias: str, principal: Principal, table: str | None = None) -> str:
    """Condition that a row of `entity` (alias) is visible to the principal, from auth.policy.

    `table` names where the row comes from when it is not the entity's own table: the Observations of the table
    `observation` (not the view of both kinds) have no MultiDatastream to look at.
    """
    name = entity.name
    if name == "Thing":
        return member_visible_sql(principal, f"{alias}.dataset_id")
    if name in ("Datastream", "MultiDatastream"):  # both carry their own dataset and their Thing
        return datastream_visible_sql(principal, alias)
    if name == "Observation":
        ds = f"{alias}_vd"
        of_datastream = (
            f"EXISTS (SELECT 1 FROM datastream {ds} WHERE {ds}.id = {alias}.datastream_id "
            f"AND {visible_sql(BY_NAME['Datastream'], ds, principal)})"
        )
        if table == "observation":
            return of_datastream
        # A row of the view has a Datastream or a MultiDatastream, never both, and that parent always exists (the
        # triggers of 0004_mqtt and the foreign key of 0007_multids): "no invisible parent" means "a visible
        # parent". Two anti-joins, not `EXISTS (...) OR EXISTS (...)`: an OR of sub-queries is not turned into
        # a join; it cost 200 ms where this costs 2 (the latest 100 of a million Observations).
        mds = f"{alias}_vm"
        return (
            f"NOT EXISTS (SELECT 1 FROM datastream {ds} WHERE {ds}.id = {alias}.datastream_id "
            f"AND NOT {datastream_visible_sql(principal, ds)}) AND NOT EXISTS (SELECT 1 FROM multi_datastream {mds} "
            f"WHERE {mds}.id = {alias}.multi_datastream_id AND NOT {datastream_visible_sql(principal, mds)})"
        )
    if name == "HistoricalLocation":
        thing = f"{alias}_vt"
        return (
            f"EXISTS (SELECT 1 FROM thing {thing} WHERE {thing}.id = {alias}.thing_id "
            f"AND {member_visible_sql(principal, f'{thing}.dataset_id')})"
        )
    if name == "Location":
        link, thing = f"{alias}_vl", f"{alias}_vt"
        return (
            f"(NOT EXISTS (SELECT 1 FROM thing_location {link} WHERE {link}.location_id = {alias}.id) OR EXISTS "
            f"(SELECT 1 FROM thing_location {link} JOIN thing {thing} ON {thing}.id = {link}.thing_id "
            f"WHERE {link}.location_id = {alias}.id AND {member_visible_sql(principal, f'{thing}.dataset_id')}))"
        )
    if name in ("Sensor", "ObservedProperty"):
        # used by no (Multi)Datastream, or by some visible one
        column = "sensor_id" if name == "Sensor" else "observed_property_id"
        ds, mds = f"{alias}_vd", f"{alias}_vm"
        if name == "Sensor":
            multi = f"FROM multi_datastream {mds} WHERE {mds}.sensor_id = {alias}.id"
        else:
            link = f"{alias}_vl"
            multi = (
                f"FROM multi_datastream_observed_property {link} JOIN multi_datastream {mds} "
                f"ON {mds}.id = {link}.multi_datastream_id WHERE {link}.observed_property_id = {alias}.id"
            )
        return (
            f"((NOT EXISTS (SELECT 1 FROM datastream {ds} WHERE {ds}.{column} = {alias}.id) "
            f"AND NOT EXISTS (SELECT 1 {multi})) OR EXISTS "
            f"(SELECT 1 FROM datastream {ds} WHERE {ds}.{column} = {alias}.id "
            f"AND {visible_sql(BY_NAME['Datastream'], ds, principal)}) OR EXISTS "
            f"(SELECT 1 {multi} AND {datastream_visible_sql(principal, mds)}))"
        )
    if name == "FeatureOfInterest":
        obs = f"{alias}_vo"
        observations = BY_NAME["Observation"].table
        return (
            f"(NOT EXISTS (SELECT 1 FROM {observations} {obs} WHERE {obs}.feature_of_interest_id = {alias}.id) OR "
            f"EXISTS (SELECT 1 FROM {observations} {obs} WHERE {obs}.feature_of_interest_id = {alias}.id "
            f"AND {visible_sql(BY_NAME['Observation'], obs, principal)}))"
        )
    raise AssertionError(name)


# --- the select list -----------------------------------------------------------------------------------


def _foreign_key(alias: str, rel: Relation, table: str | None) -> str:
    """A to-one foreign key of the select list (NULL where the table never has it: `Relation.set_in`)."""
    if rel.set_in(table) is False:
        return f"NULL::bigint AS {rel.column}"
    return f"{alias}.{rel.column}"


def select_list(entity: EntityType, alias: str, table: str | None = None) -> str:
    """Every column the serializer needs, named after the model's columns (JSON as text); `table` as in
    `visible_sql`."""
    columns: list[str] = []
    for prop in entity.props:
        if prop.kind == "json":
            columns.append(f"{alias}.{prop.column}::text AS {prop.column}")
        elif prop.kind == "geojson":
            if prop.column == prop.geom:
                columns.append(f"ST_AsGeoJSON({alias}.{prop.column})::text AS {prop.column}")
            else:
                columns.append(f"{alias}.{prop.column}::text AS {prop.column}")
        elif prop.kind == "result":
            columns.extend(f"{alias}.{c}" for c in ("result_number", "result_string", "result_boolean"))
            columns.append(f"{alias}.result_json::text AS result_json")
        else:
            columns.append(f"{alias}.{prop.column}")
        if prop.end_column:
            columns.append(f"{alias}.{prop.end_column}")
    for rel in entity.relations:
        if rel.kind == "parent_fk":
            columns.append(_foreign_key(alias, rel, table))
    return ", ".join(columns)


def columns_sql(
    entity: EntityType, alias: str, params: Params, shape: JsonShape | None, table: str | None = None
) -> str:
    """The select list: every column (`select_list`), or with a `shape` the id, the to-one foreign keys (for
    `$expand`) and the entity's JSON members built by PostgreSQL as `__json` (see `jsonsql`)."""
    if shape is None:
        return select_list(entity, alias, table)
    link = params.add(link_prefix(shape, entity), "text") if uses_links(entity, shape) else ""
    keys = [_foreign_key(alias, rel, table) for rel in entity.relations if rel.kind == "parent_fk"]
    return ", ".join([f"{alias}.id", *keys, f"{members_sql(entity, alias, shape, link, params.add, table)} AS __json"])


# --- expressions ---------------------------------------------------------------------------------------

_GEO_FUNCS = {
    "geo.intersects": "ST_Intersects",
    "st_equals": "ST_Equals",
    "st_disjoint": "ST_Disjoint",
    "st_touches": "ST_Touches",
    "st_within": "ST_Within",
    "st_overlaps": "ST_Overlaps",
    "st_crosses": "ST_Crosses",
    "st_intersects": "ST_Intersects",
    "st_contains": "ST_Contains",
}
_DATE_PARTS = {"year": "year", "month": "month", "day": "day", "hour": "hour", "minute": "minute"}
_SQL_OPS = {"eq": "=", "ne": "<>", "gt": ">", "ge": ">=", "lt": "<", "le": "<="}
_ARITH = {"add": "+", "sub": "-", "mul": "*", "div": "/", "mod": "%"}
_WKT = re.compile(
    r"\s*(POINT|LINESTRING|POLYGON|MULTIPOINT|MULTILINESTRING|MULTIPOLYGON|GEOMETRYCOLLECTION)\s*(Z\s*)?\(",
    re.IGNORECASE,
)


class ExprCompiler:
    """Compiles `$filter` / `$orderby` trees of one entity type (row alias `alias`) into SQL."""

    def __init__(self, entity: EntityType, alias: str, params: Params, principal: Principal) -> None:
        self.entity = entity
        self.alias = alias
        self.params = params
        self.principal = principal
        self._counter = 0

    def _new_alias(self) -> str:
        self._counter += 1
        return f"{self.alias}_j{self._counter}"

    # boolean structure
    def condition(self, node: Expr) -> str:
        if isinstance(node, Binary) and node.op in ("and", "or"):
            return f"({self.condition(node.left)} {node.op.upper()} {self.condition(node.right)})"
        if isinstance(node, Unary) and node.op == "not":
            return f"(NOT {self.condition(node.operand)})"
        ctx = JoinContext()
        leaf = self.value(node, ctx)
        if leaf.kind not in ("bool", "null") and leaf.variants is None:
            raise InvalidQueryError(f"$filter: expected a condition, found an expression of type {leaf.kind}")
        sql = leaf.variants["bool"] if leaf.variants and "bool" in leaf.variants else leaf.sql
        return self._wrap(ctx, sql)

    def _wrap(self, ctx: JoinContext, sql: str) -> str:
        if not ctx.hops:
            return sql
        froms = ", ".join(f"{rel.target_table} {child}" for rel, _, child in ctx.hops)
        conds = " AND ".join(rel.condition(parent, child) for rel, parent, child in ctx.hops)
        return f"EXISTS (SELECT 1 FROM {froms} WHERE {conds} AND {sql})"

    def order_expr(self, item: OrderItem) -> str:
        ctx = JoinContext()
        typed = self.value(item.expr, ctx)
        if typed.variants and typed.kind in ("result", "json"):
            exprs = [typed.variants["number"], typed.variants["text"]]
        else:
            exprs = [typed.sql]
        if ctx.hops:
            froms = ", ".join(f"{rel.target_table} {child}" for rel, _, child in ctx.hops)
            conds = " AND ".join(rel.condition(parent, child) for rel, parent, child in ctx.hops)
            exprs = [f"(SELECT {e} FROM {froms} WHERE {conds} LIMIT 1)" for e in exprs]
        direction = " DESC" if item.descending else ""
        return ", ".join(e + direction for e in exprs)

    # values
    def value(self, node: Expr, ctx: JoinContext) -> Typed:
        if isinstance(node, Lit):
            return self.literal(node)
        if isinstance(node, Path):
            return self.path(node, ctx)
        if isinstance(node, Call):
            return self.call(node, ctx)
        if isinstance(node, Unary):
            inner = self.value(node.operand, ctx)
            return Typed(f"(NOT {self._as(inner, 'bool')})", "bool")
        if node.op in ("and", "or"):
            left = self._as(self.value(node.left, ctx), "bool")
            right = self._as(self.value(node.right, ctx), "bool")
            return Typed(f"({left} {node.op.upper()} {right})", "bool")
        if node.op in COMPARISONS:
            return self.comparison(node, ctx)
        if node.op in ARITHMETIC:
            return self.arithmetic(node, ctx)
        raise InvalidQueryError(f"$filter: unsupported operator {node.op}")

    def literal(self, lit: Lit) -> Typed:
        if lit.kind == "null":
            return Typed("NULL", "null")
        if lit.kind == "string":
            return Typed(self.params.add(lit.value, "text"), "text", variants={"raw": str(lit.value)})
        if lit.kind == "boolean":
            return Typed(self.params.add(lit.value, "boolean"), "bool")
        if lit.kind == "number":
            if isinstance(lit.value, int):
                return Typed(self.params.add(lit.value, "bigint"), "number")
            return Typed(self.params.add(lit.value, "double precision"), "number")
        if lit.kind == "datetime":
            return Typed(self.params.add(lit.value, "timestamptz"), "time")
        if lit.kind == "duration":
            return Typed(self.params.add(lit.value, "text") + "::interval", "duration")
        if not _WKT.match(str(lit.value)):
            raise InvalidQueryError(f"$filter: not a WKT geometry: {str(lit.value)[:60]!r}")
        return Typed(f"ST_GeomFromText({self.params.add(lit.value, 'text')}, 4326)", "geo")

    def path(self, path: Path, ctx: JoinContext) -> Typed:
        entity, alias = self.entity, self.alias
        # `@iot.id` is the wire name of `id` at any step of a path (`Datastream/@iot.id`), as FROST accepts it
        segments = ["id" if seg == "@iot.id" else seg for seg in path.segments]
        index = 0
        while index < len(segments):
            seg = segments[index]
            rel = entity.rel_by_name.get(seg)
            if rel is not None:
                key = (alias, seg)
                child = ctx.keys.get(key)
                if child is None:
                    child = self._new_alias()
                    ctx.keys[key] = child
                    ctx.hops.append((rel, alias, child))
                entity, alias = BY_NAME[rel.target], child
                index += 1
                continue
            prop = entity.prop_by_wire.get(seg)
            if prop is None:
                raise InvalidQueryError(f"{entity.name} has no property or relation {seg!r}")
            rest = segments[index + 1 :]
            if rest and prop.kind not in ("json", "geojson", "result"):
                raise InvalidQueryError(f"{entity.name}/{seg} has no sub-property {'/'.join(rest)!r}")
            return self._prop(prop, alias, rest)
        raise InvalidQueryError(f"the path {'/'.join(path.segments)!r} ends on an entity, not a property")

    def _prop(self, prop: Prop, alias: str, rest: list[str]) -> Typed:
        column = f"{alias}.{prop.column}"
        if prop.kind == "id":
            return Typed(column, "number")
        if prop.kind == "text":
            return Typed(column, "text")
        if prop.kind == "time":
            return Typed(column, "time")
        if prop.kind == "interval":
            return Typed(column, "time", end_sql=f"COALESCE({alias}.{prop.end_column}, {column})")
        if prop.kind == "geojson":
            if rest:
                return self._json_path(f"{alias}.{prop.column}", rest)
            return Typed(f"{alias}.{prop.geom}", "geo")
        if prop.kind == "result":
            if rest:
                return self._json_path(f"{alias}.result_json", rest)
            return Typed(
                f"{alias}.result_number",
                "result",
                variants={
                    "number": f"{alias}.result_number",
                    "text": f"COALESCE({alias}.result_string, {alias}.result_number::text)",
                    "bool": f"{alias}.result_boolean",
                },
            )
        if prop.kind == "json":
            if not rest:
                return Typed(f"{column}::text", "text")
            return self._json_path(column, rest)
        return Typed(column, prop.kind)

    def _json_path(self, column: str, rest: list[str]) -> Typed:
        path = self.params.add(rest, "text[]")
        typeof = f"jsonb_typeof({column} #> {path})"
        return Typed(
            f"({column} #>> {path})",
            "json",
            variants={
                "text": f"({column} #>> {path})",
                "number": f"(CASE WHEN {typeof} = 'number' THEN ({column} #>> {path})::double precision END)",
                "bool": f"(CASE WHEN {typeof} = 'boolean' THEN ({column} #>> {path})::boolean END)",
                "time": f"(CASE WHEN {typeof} = 'string' AND ({column} #>> {path}) ~ "
                "'^\\d{4}-\\d{2}-\\d{2}' THEN ({column} #>> {path})::timestamptz END)",
            },
        )

    def _as(self, typed: Typed, kind: str) -> str:
        """The SQL of a value read as `kind` (polymorphic values choose their variant)."""
        if typed.variants and kind in typed.variants and typed.kind in ("result", "json"):
            return typed.variants[kind]
        if typed.kind == kind or typed.kind == "null":
            return typed.sql
        if kind == "number" and typed.kind in ("result", "json") and typed.variants:
            return typed.variants["number"]
        if kind == "time" and typed.kind == "text" and typed.variants and "raw" in typed.variants:
            try:
                value = parse_datetime(typed.variants["raw"])
            except ValueError:
                raise InvalidQueryError(f"$filter: not a date-time: {typed.variants['raw']!r}") from None
            # the literal's own slot takes the instant (a second one would leave `$n::text` unused, untyped)
            slot = re.fullmatch(r"\$(\d+)::text", typed.sql)
            if slot is None:
                return self.params.add(value, "timestamptz")
            self.params.values[int(slot.group(1)) - 1] = value
            return f"${slot.group(1)}::timestamptz"
        if kind == "text" and typed.kind in ("number", "time", "bool"):
            return f"({typed.sql})::text"
        raise InvalidQueryError(f"$filter: expected a {kind}, found a {typed.kind}")

    def comparison(self, node: Binary, ctx: JoinContext) -> Typed:
        left = self.value(node.left, ctx)
        right = self.value(node.right, ctx)
        op = _SQL_OPS[node.op]
        if right.kind == "null" or left.kind == "null":
            other = left if right.kind == "null" else right
            if node.op not in ("eq", "ne"):
                raise InvalidQueryError("$filter: null can only be compared with eq or ne")
            sql = other.sql
            if other.variants and other.kind == "result":
                sql = f"COALESCE({other.variants['text']}, {other.sql.replace('result_number', 'result_json')}::text)"
            return Typed(f"({sql} IS {'NOT ' if node.op == 'ne' else ''}NULL)", "bool")
        kind = self._common_kind(left, right)
        if kind == "date":
            lsql, rsql = self._date_side(left), self._date_side(right)
        elif kind == "clock":
            lsql, rsql = self._clock_side(left), self._clock_side(right)
        else:
            lsql, rsql = self._as(left, kind), self._as(right, kind)
        if kind == "time":
            # an interval lies before a point when its end does
            if node.op in ("lt", "le") and left.end_sql:
                lsql = left.end_sql
            if node.op in ("gt", "ge") and right.end_sql:
                rsql = right.end_sql
        if kind == "geo":
            if node.op not in ("eq", "ne"):
                raise InvalidQueryError("$filter: geometries compare only with eq or ne; use st_* functions")
            sql = f"ST_Equals({lsql}, {rsql})"
            return Typed(sql if node.op == "eq" else f"NOT {sql}", "bool")
        return Typed(f"({lsql} {op} {rsql})", "bool")

    @staticmethod
    def _date_side(typed: Typed) -> str:
        if typed.kind == "date":
            return typed.sql
        if typed.kind == "text":
            return f"({typed.sql})::date"
        return f"(({typed.sql}) AT TIME ZONE 'UTC')::date"

    @staticmethod
    def _clock_side(typed: Typed) -> str:
        if typed.kind == "clock":
            return typed.sql
        if typed.kind == "text":
            return f"({typed.sql})::time"
        raise InvalidQueryError(f"$filter: expected a time of day, found a {typed.kind}")

    @staticmethod
    def _common_kind(left: Typed, right: Typed) -> str:
        kinds = {left.kind, right.kind}
        for preferred in ("date", "clock", "geo", "time", "bool", "number", "text"):
            if preferred in kinds:
                concrete = kinds - {"result", "json"}
                if preferred == "text" and "number" in concrete:
                    return "number"
                return preferred
        if kinds <= {"result", "json"}:
            return "number"
        return next(iter(kinds))

    def arithmetic(self, node: Binary, ctx: JoinContext) -> Typed:
        left = self.value(node.left, ctx)
        right = self.value(node.right, ctx)
        if left.kind == "time" and right.kind == "duration" and node.op in ("add", "sub"):
            return Typed(f"({left.sql} {_ARITH[node.op]} {right.sql})", "time")
        if left.kind == "time" and right.kind == "time" and node.op == "sub":
            return Typed(f"(extract(epoch FROM {left.sql} - {right.sql}))", "number")
        lsql, rsql = self._as(left, "number"), self._as(right, "number")
        if node.op == "div":
            return Typed(f"(({lsql})::double precision / NULLIF(({rsql})::double precision, 0))", "number")
        if node.op == "mod":
            return Typed(f"mod(({lsql})::numeric, NULLIF(({rsql})::numeric, 0))::double precision", "number")
        return Typed(f"({lsql} {_ARITH[node.op]} {rsql})", "number")

    def call(self, node: Call, ctx: JoinContext) -> Typed:
        name = node.name
        args = [self.value(a, ctx) for a in node.args]
        if name in ("substringof", "startswith", "endswith", "indexof", "concat"):
            a, b = (self._as(x, "text") for x in args)
            if name == "substringof":  # substringof(needle, haystack)
                return Typed(f"(strpos({b}, {a}) > 0)", "bool")
            if name == "startswith":
                return Typed(f"starts_with({a}, {b})", "bool")
            if name == "endswith":
                return Typed(f"(right({a}, length({b})) = {b})", "bool")
            if name == "indexof":
                return Typed(f"(strpos({a}, {b}) - 1)", "number")
            return Typed(f"({a} || {b})", "text")
        if name == "length":
            return Typed(f"length({self._as(args[0], 'text')})", "number")
        if name == "substring":
            text = self._as(args[0], "text")
            start = self._as(args[1], "number")
            if len(args) == 3:
                return Typed(f"substr({text}, ({start})::int + 1, ({self._as(args[2], 'number')})::int)", "text")
            return Typed(f"substr({text}, ({start})::int + 1)", "text")
        if name in ("tolower", "toupper", "trim"):
            fn = {"tolower": "lower", "toupper": "upper", "trim": "btrim"}[name]
            return Typed(f"{fn}({self._as(args[0], 'text')})", "text")
        if name in _DATE_PARTS:
            return Typed(
                f"extract({_DATE_PARTS[name]} FROM ({self._as(args[0], 'time')}) AT TIME ZONE 'UTC')", "number"
            )
        if name == "second":
            return Typed(f"floor(extract(second FROM ({self._as(args[0], 'time')}) AT TIME ZONE 'UTC'))", "number")
        if name == "fractionalseconds":
            sec = f"extract(second FROM ({self._as(args[0], 'time')}) AT TIME ZONE 'UTC')"
            return Typed(f"({sec} - floor({sec}))", "number")
        if name == "date":
            return Typed(f"(({self._as(args[0], 'time')}) AT TIME ZONE 'UTC')::date", "date")
        if name == "time":
            return Typed(f"(({self._as(args[0], 'time')}) AT TIME ZONE 'UTC')::time", "clock")
        if name == "totaloffsetminutes":
            self._as(args[0], "time")
            return Typed("0", "number")  # times are stored and served in UTC
        if name == "now":
            return Typed("now()", "time")
        if name == "mindatetime":
            return Typed("'-infinity'::timestamptz", "time")
        if name == "maxdatetime":
            return Typed("'infinity'::timestamptz", "time")
        if name in ("round", "floor", "ceiling"):
            fn = {"round": "round", "floor": "floor", "ceiling": "ceil"}[name]
            return Typed(f"{fn}(({self._as(args[0], 'number')})::double precision)", "number")
        if name in _GEO_FUNCS:
            a, b = (self._as(x, "geo") for x in args)
            return Typed(f"{_GEO_FUNCS[name]}({a}, {b})", "bool")
        if name == "geo.distance":
            a, b = (self._as(x, "geo") for x in args)
            return Typed(f"ST_Distance({a}, {b})", "number")
        if name == "geo.length":
            return Typed(f"ST_Length({self._as(args[0], 'geo')})", "number")
        if name == "st_relate":
            a, b = (self._as(x, "geo") for x in args[:2])
            return Typed(f"ST_Relate({a}, {b}, {self._as(args[2], 'text')})", "bool")
        raise InvalidQueryError(f"$filter: unsupported function {name}")


# --- statements ----------------------------------------------------------------------------------------


@dataclass
class Statement:
    sql: str
    params: list[Any]


def order_by_sql(
    compiler: ExprCompiler,
    entity: EntityType,
    alias: str,
    orderby: tuple[OrderItem, ...],
    single_datastream: bool,
    default: str | None = None,
) -> str:
    """ORDER BY with a unique tie-breaker, so that paging is stable; `default` orders when `orderby` is empty
    (the rank of a MultiDatastream's ObservedProperties), before the id.

    Observations of one Datastream are unique on phenomenonTime (the primary key), which lets the
    latest-value query walk the primary key index backwards and stop after one row.
    """
    if not orderby:
        if entity.name == "Observation" and single_datastream:
            return f"{alias}.phenomenon_time"
        return f"{default}, {alias}.id" if default else f"{alias}.id"
    parts = [compiler.order_expr(item) for item in orderby]
    last = orderby[-1].expr
    if (
        entity.name == "Observation"
        and single_datastream
        and isinstance(last, Path)
        and last.segments == ("phenomenonTime",)
    ):
        direction = " DESC" if orderby[-1].descending else ""
        parts[-1] = f"{alias}.phenomenon_time{direction}"
        return ", ".join(parts)
    return ", ".join([*parts, f"{alias}.id"])


@dataclass
class Scope:
    """Rows reached through a navigation: `relation` of the `parent` entity with id `parent_id`."""

    parent: EntityType
    parent_id: int
    relation: Relation
    # False when the resolver left the parent's existence and visibility for the page's statement to check
    # (one round trip instead of two on the hot path); see `read.resolve`.
    checked: bool = True


def scope_condition(scope: Scope, alias: str, params: Params) -> str:
    rel = scope.relation
    pid = params.add(scope.parent_id, "bigint")
    if rel.kind == "child_fk":
        return f"{alias}.{rel.column} = {pid}"
    if rel.kind == "parent_fk":
        return f"{alias}.id = (SELECT {rel.column} FROM {scope.parent.table} WHERE id = {pid})"
    return f"{alias}.id IN (SELECT {rel.link_target} FROM {rel.link_table} WHERE {rel.link_self} = {pid})"


def implied_visible(parent: EntityType, relation: Relation) -> bool:
    """Observations of a visible (Multi)Datastream are visible: skip the per-row check on the hot path."""
    return parent.name in ("Datastream", "MultiDatastream") and relation.name == "Observations"


def datastream_observations(parent: EntityType, relation: Relation) -> bool:
    """The Observations of one Datastream: one partitioned table keyed by (datastream_id, phenomenon_time), where
    time orders come straight from the index and the latest pointer and window apply."""
    return parent.name == "Datastream" and relation.name == "Observations"


def rank_order(relation: Relation, parent_id_sql: str, alias: str) -> str | None:
    """The order of an ordered link (a MultiDatastream's ObservedProperties: result[i] is the i-th)."""
    if not relation.link_rank:
        return None
    return (
        f"(SELECT min(r.{relation.link_rank}) FROM {relation.link_table} r WHERE r.{relation.link_self} = "
        f"{parent_id_sql} AND r.{relation.link_target} = {alias}.id)"
    )


def where_parts(
    entity: EntityType,
    alias: str,
    params: Params,
    principal: Principal,
    filter_expr: Expr | None,
    scope: Scope | None,
) -> tuple[list[str], ExprCompiler]:
    compiler = ExprCompiler(entity, alias, params, principal)
    parts: list[str] = []
    if scope is not None:
        parts.append(scope_condition(scope, alias, params))
    if scope is None or not implied_visible(scope.parent, scope.relation):
        parts.append(visible_sql(entity, alias, principal))
    if filter_expr is not None:
        parts.append(compiler.condition(filter_expr))
    return parts, compiler


def collection_query(
    entity: EntityType,
    principal: Principal,
    *,
    filter_expr: Expr | None,
    orderby: tuple[OrderItem, ...],
    top: int,
    skip: int,
    scope: Scope | None,
    shape: JsonShape | None = None,
    params: Params | None = None,
    latest: bool = False,
) -> Statement:
    """One page of a collection (top + 1 rows, the extra one tells that a next page exists).

    `latest` (see `latest_pointer_applies`): the newest Observation alone, found by its key from the
    Datastream's `latest_phenomenon_time`; whether more exist is `latest_more_sql`'s to say.
    """
    params = params or Params()
    alias = "c"
    parts, compiler = where_parts(entity, alias, params, principal, filter_expr, scope)
    if latest:
        assert scope is not None
        parts.append(f"{alias}.phenomenon_time = ({latest_pointer_sql('latest_phenomenon_time', scope, params)})")
    single = scope is not None and datastream_observations(scope.parent, scope.relation)
    default = None
    if scope is not None and scope.relation.link_rank and not orderby:
        default = rank_order(scope.relation, params.add(scope.parent_id, "bigint"), alias)
    order = order_by_sql(compiler, entity, alias, orderby, single, default)
    limit = params.add(top + 1, "bigint")
    offset = params.add(skip, "bigint")
    table = scope.relation.target_table if scope is not None else entity.table
    sql = (
        f"SELECT {columns_sql(entity, alias, params, shape, table)} FROM {table} {alias} "
        f"WHERE {' AND '.join(parts)} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
    )
    return Statement(sql, params.values)


def latest_pointer_applies(
    scope: Scope | None, filter_expr: Expr | None, orderby: tuple[OrderItem, ...], top: int, skip: int
) -> bool:
    """Is this page "the latest Observation of a Datastream" (`$top=1&$orderby=phenomenonTime desc`)?

    Then the Datastream's `latest_phenomenon_time` and `previous_phenomenon_time` (migration 0006_stadb, kept
    exact by the observation triggers) give its phenomenonTime, and whether an older one exists: one primary-key
    probe in the one partition holding it, instead of walking every partition's index backwards for two rows.
    """
    return (
        scope is not None
        and top == 1
        and latest_window_applies(scope.parent, scope.relation, filter_expr, orderby, skip)
    )


def latest_pointer_sql(column: str, scope: Scope, params: Params) -> str:
    """An expression on the scope Datastream's row (its latest phenomenonTime is NULL without observations)."""
    return f"SELECT {column} FROM datastream WHERE id = {params.add(scope.parent_id, 'bigint')}"


def latest_more_sql(scope: Scope, params: Params) -> str:
    """Whether the scope Datastream has Observations older than its latest (a next page)."""
    return f"COALESCE(({latest_pointer_sql('previous_phenomenon_time IS NOT NULL', scope, params)}), false)"


def count_query(
    entity: EntityType, principal: Principal, *, filter_expr: Expr | None, scope: Scope | None
) -> Statement:
    params = Params()
    parts, _ = where_parts(entity, "c", params, principal, filter_expr, scope)
    table = scope.relation.target_table if scope is not None else entity.table
    return Statement(f"SELECT count(*) FROM {table} c WHERE {' AND '.join(parts)}", params.values)


def entity_query(
    entity: EntityType,
    principal: Principal,
    entity_id: int | None,
    scope: Scope | None = None,
    *,
    shape: JsonShape | None = None,
    columns: str | None = None,
    params: Params | None = None,
) -> Statement:
    """One entity by id, or the entity reached through a navigation `scope` (optionally with an id).

    The select list is every column, or with `shape` the JSON of `columns_sql`, or `columns` as given.
    """
    params = params or Params()
    parts = [visible_sql(entity, "c", principal)]
    if scope is not None:
        parts.append(scope_condition(scope, "c", params))
    if entity_id is not None:
        parts.append(f"c.id = {params.add(entity_id, 'bigint')}")
    select = columns or columns_sql(entity, "c", params, shape)
    return Statement(f"SELECT {select} FROM {entity.table} c WHERE {' AND '.join(parts)} LIMIT 1", params.values)


def expand_many_query(
    parent: EntityType,
    relation: Relation,
    principal: Principal,
    parent_ids: list[int],
    *,
    filter_expr: Expr | None,
    orderby: tuple[OrderItem, ...],
    top: int,
    skip: int,
    recent_window: bool = False,
    shape: JsonShape | None = None,
) -> Statement:
    """The expanded to-many relation of many parents in one statement: a LATERAL page per parent.

    `recent_window` (latest Observations of Datastreams, see `latest_window_applies`) bounds each page to the
    day before the Datastream's last phenomenonTime (its extent, kept by the observation triggers) and to no
    later than that or now, so run-time partition pruning reads one monthly partition per Datastream (two at a
    month's start) instead of all of them, future and default ones included; the caller re-reads without the
    window any Datastream for which it found fewer rows than the page needs, so the answer stays exact.
    A day rather than a month: at 10 M observations the month-wide probe cost six times as much (the planner
    sorts a month of a busy Datastream instead of walking the index backwards).
    With `top` 1 the window is exact instead: the row at the Datastream's `latest_phenomenon_time`
    (one partition, one key probe, one JSON built instead of two), and `__more` whether an older one exists.
    """
    entity = BY_NAME[relation.target]
    params = Params()
    ids = params.add(parent_ids, "bigint[]")
    alias = "c"
    compiler = ExprCompiler(entity, alias, params, principal)
    parts = [relation.condition("p", alias)]
    if parent.name == "Thing" and relation.name == "Datastreams":
        # the parents are visible Things: only the Datastreams' own dataset is left to check
        parts.append(member_visible_sql(principal, f"{alias}.dataset_id"))
    elif not implied_visible(parent, relation):
        parts.append(visible_sql(entity, alias, principal))
    if filter_expr is not None:
        parts.append(compiler.condition(filter_expr))
    single = datastream_observations(parent, relation)
    order = order_by_sql(compiler, entity, alias, orderby, single, rank_order(relation, "p.id", alias))
    limit = params.add(top + 1, "bigint")
    offset = params.add(skip, "bigint")
    source = f"unnest({ids}) AS p(id)"
    table = relation.target_table
    extra = ""
    if recent_window and top == 1:
        # exact: a Datastream without observations has no latest time (NULL); `__more` tells of older ones
        source += " JOIN datastream w ON w.id = p.id"
        parts.append(f"{alias}.phenomenon_time = w.latest_phenomenon_time")
        extra = ", w.previous_phenomenon_time IS NOT NULL AS __more"
    elif recent_window:
        source += " JOIN datastream w ON w.id = p.id"
        parts.append(f"{alias}.phenomenon_time >= w.phenomenon_time_end - interval '1 day'")
        parts.append(f"{alias}.phenomenon_time <= greatest(w.phenomenon_time_end, now())")
    sql = (
        f"SELECT p.id AS __parent{extra}, x.* FROM {source} CROSS JOIN LATERAL "
        f"(SELECT {columns_sql(entity, alias, params, shape, table)} FROM {table} {alias} "
        f"WHERE {' AND '.join(parts)} "
        f"ORDER BY {order} LIMIT {limit} OFFSET {offset}) x"
    )
    return Statement(sql, params.values)


def latest_window_applies(
    parent: EntityType, relation: Relation, filter_expr: Expr | None, orderby: tuple[OrderItem, ...], skip: int
) -> bool:
    """Is this expansion "the latest Observations of each Datastream" (no filter, newest first, first page)?"""
    return (
        datastream_observations(parent, relation)
        and filter_expr is None
        and skip == 0
        and len(orderby) == 1
        and orderby[0].descending
        and orderby[0].expr == Path(("phenomenonTime",))
    )


def expand_count_query(
    parent: EntityType, relation: Relation, principal: Principal, parent_ids: list[int], filter_expr: Expr | None
) -> Statement:
    entity = BY_NAME[relation.target]
    params = Params()
    ids = params.add(parent_ids, "bigint[]")
    compiler = ExprCompiler(entity, "c", params, principal)
    parts = [relation.condition("p", "c")]
    if not implied_visible(parent, relation):
        parts.append(visible_sql(entity, "c", principal))
    if filter_expr is not None:
        parts.append(compiler.condition(filter_expr))
    sql = (
        f"SELECT p.id AS __parent, (SELECT count(*) FROM {relation.target_table} c WHERE {' AND '.join(parts)}) AS n "
        f"FROM unnest({ids}) AS p(id)"
    )
    return Statement(sql, params.values)


def expand_one_query(
    entity: EntityType, principal: Principal, ids: list[int], shape: JsonShape | None = None
) -> Statement:
    """The targets of a to-one relation of many parents, by id."""
    params = Params()
    placeholder = params.add(ids, "bigint[]")
    sql = (
        f"SELECT {columns_sql(entity, 'c', params, shape)} FROM {entity.table} c WHERE c.id = ANY({placeholder}) "
        f"AND {visible_sql(entity, 'c', principal)}"
    )
    return Statement(sql, params.values)


# --- aggregation extension -----------------------------------------------------------------------------

AGGREGATE_INTERVALS = {"15min": "15 minutes", "hour": "1 hour", "day": "1 day", "month": "1 month"}
# the smallest length of each interval (a month holds whole UTC days)
AGGREGATE_MINUTES = {"15min": 15, "hour": 60, "day": 1440, "month": 1440}
AGGREGATE_FUNCTIONS = {
    "min": "min(o.result_number)",
    "max": "max(o.result_number)",
    "avg": "avg(o.result_number)",
    "sum": "sum(o.result_number)",
    "count": "count(o.result_number)",
    "last": "(array_agg(o.result_number ORDER BY o.phenomenon_time DESC))[1]",
}
ROLLUP_FUNCTIONS = {
    "min": "min(r.min_value)",
    "max": "max(r.max_value)",
    "avg": "sum(r.total) / sum(r.n)",
    "sum": "sum(r.total)",
    "count": "sum(r.n)",
    "last": "(array_agg(r.last_value ORDER BY r.last_time DESC))[1]",
}


def rollup_bounds(node: Expr | None, minutes: int = 15) -> list[tuple[str, datetime]] | None:
    """The time bounds of a filter the rollups of `minutes` (15, or 1440 for the daily ones) can answer, or
    None when they cannot.

    Only `phenomenonTime ge|lt <date-time>` terms joined by `and`, on bucket boundaries (UTC), qualify: the
    buckets then hold exactly the filtered observations.
    """
    if node is None:
        return []
    if isinstance(node, Binary) and node.op == "and":
        left, right = rollup_bounds(node.left, minutes), rollup_bounds(node.right, minutes)
        return None if left is None or right is None else left + right
    if (
        isinstance(node, Binary)
        and node.op in ("ge", "lt")
        and node.left == Path(("phenomenonTime",))
        and isinstance(node.right, Lit)
        and isinstance(node.right.value, datetime)
    ):
        value = node.right.value
        if value.utcoffset() is not None:
            since_epoch = value - datetime(2000, 1, 1, tzinfo=UTC)
            if since_epoch % timedelta(minutes=minutes) == timedelta(0):
                return [(node.op, value)]
    return None


# Rollup tables by bucket size in minutes, finest last: an aggregate reads the coarsest one whose buckets
# divide its own and its filter's bounds (the daily one with the 15-minute rows of the days not closed yet).
ROLLUPS = {1440: "observation_rollup_day", 15: "observation_rollup_15min"}


def _bucket(interval: str, column: str) -> tuple[str, str]:
    if interval == "month":
        return f"date_trunc('month', {column} AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'", "interval '1 month'"
    step = f"interval '{AGGREGATE_INTERVALS[interval]}'"
    return f"date_bin({step}, {column}, timestamptz '2000-01-01 00:00:00+00')", step


def aggregate_query(
    datastream_id: int,
    principal: Principal,
    *,
    interval: str,
    functions: list[str],
    filter_expr: Expr | None,
    top: int,
    skip: int,
) -> tuple[Statement, str | None]:
    """Observations of one Datastream bucketed by time (UTC), oldest bucket first, and the rollups read
    (`rollup_day`, `rollup_15min`) or None when the observations are."""
    params = Params()
    ds = params.add(datastream_id, "bigint")
    bounds: list[tuple[str, datetime]] | None = None
    table = ""
    for minutes, candidate in ROLLUPS.items():
        if minutes <= AGGREGATE_MINUTES[interval]:
            bounds, table = rollup_bounds(filter_expr, minutes), candidate
            if bounds is not None:
                break
    if bounds is not None:
        bucket, step = _bucket(interval, "r.bucket")
        parts = [f"r.datastream_id = {ds}"]
        for op, value in bounds:
            parts.append(f"r.bucket {'>=' if op == 'ge' else '<'} {params.add(value, 'timestamptz')}")
        aggregates = ", ".join(f"{ROLLUP_FUNCTIONS[f]} AS {f}" for f in functions)
        source = f"{table} r"
        if table == "observation_rollup_day":
            # the daily rollups hold the days before the Datastream's rollup_day_until, the 15-minute ones the
            # rest (see migration 0006_stadb): both, each bounded by the filter (pushed into both branches)
            until = f"(SELECT rollup_day_until FROM datastream WHERE id = {ds})"
            source = (
                f"(SELECT * FROM observation_rollup_day WHERE datastream_id = {ds} AND bucket < {until} UNION ALL "
                f"SELECT * FROM observation_rollup_15min WHERE datastream_id = {ds} "
                f"AND bucket >= COALESCE({until}, '-infinity')) r"
            )
    else:
        compiler = ExprCompiler(BY_NAME["Observation"], "o", params, principal)
        bucket, step = _bucket(interval, "o.phenomenon_time")
        parts = [f"o.datastream_id = {ds}", "o.result_number IS NOT NULL"]
        if filter_expr is not None:
            parts.append(compiler.condition(filter_expr))
        aggregates = ", ".join(f"{AGGREGATE_FUNCTIONS[f]} AS {f}" for f in functions)
        source = "observation o"
    limit = params.add(top + 1, "bigint")
    offset = params.add(skip, "bigint")
    sql = (
        f"SELECT {bucket} AS bucket_start, {bucket} + {step} AS bucket_end, {aggregates} "
        f"FROM {source} WHERE {' AND '.join(parts)} GROUP BY 1 ORDER BY 1 LIMIT {limit} OFFSET {offset}"
    )
    return Statement(sql, params.values), (table.removeprefix("observation_") if bounds is not None else None)


def aggregate_json(stmt: Statement, functions: list[str]) -> Statement:
    """`aggregate_query`'s rows as one JSON object each (`__json`), in the same order: built by PostgreSQL,
    as `{"phenomenonTime": "start/end", "min": 1.5, ..., "count": 96}` (numbers as float8, counts as bigint)."""
    args = ["'{\"phenomenonTime\":'", interval_json("a.bucket_start", "a.bucket_end")]
    for name in functions:
        cast = "bigint" if name == "count" else "double precision"
        args += [f"',\"{name}\":'", f"COALESCE(to_json(a.{name}::{cast})::text, 'null')"]
    return Statement(f"SELECT concat({', '.join(args)}, '}}') AS __json FROM ({stmt.sql}) a", stmt.params)
