"""SensorThings reads: resource paths resolved, statements from `sql` run, rows serialized with wire names.

Free of FastAPI: the routes hand in an asyncpg connection, the parsed options and a `Context`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import orjson

from territoire_data.auth.policy import Principal
from territoire_data.errors import BadRequestError, NotFoundError
from territoire_data.sensorthings import sql
from territoire_data.sensorthings.model import BY_NAME, BY_PLURAL, EntityType, Prop, Relation
from territoire_data.sensorthings.odata import ExpandItem, QueryOptions


@dataclass(frozen=True)
class Context:
    """What a read needs besides the connection: public base URL, principal and paging limits."""

    base: str  # .../sta/v1.1
    principal: Principal
    default_top: int = 100
    max_top: int = 10_000
    count_exact_limit: int = 1_000_000

    def page_size(self, top: int | None) -> int:
        return min(top if top is not None else self.default_top, self.max_top)


# --- resource paths ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Segment:
    name: str
    id: int | None = None


_SEGMENT = re.compile(r"^([A-Za-z$]+)(?:\((?:(\d+)|'(\d+)')\))?$")


def parse_resource_path(path: str) -> list[Segment]:
    """`Things(1)/Datastreams` -> [Segment('Things', 1), Segment('Datastreams')]; ids are integers."""
    segments: list[Segment] = []
    for part in path.strip("/").split("/"):
        if not part:
            continue
        match = _SEGMENT.match(part)
        if not match:
            raise NotFoundError(f"no SensorThings resource {part!r}")
        raw_id = match.group(2) or match.group(3)
        segments.append(Segment(match.group(1), int(raw_id) if raw_id else None))
    return segments


@dataclass
class Target:
    """What a resource path designates: a collection (with its scope), one entity, or a property of one."""

    entity: EntityType
    entity_id: int | None = None  # one entity when set
    scope: sql.Scope | None = None  # a collection reached by navigation
    prop: Prop | None = None
    value: bool = False  # /$value
    ref: bool = False  # /$ref
    extension: str | None = None  # e.g. "Aggregates"


async def fetch_id(conn: asyncpg.Connection, ctx: Context, entity: EntityType, entity_id: int) -> int:
    stmt = sql.entity_query(entity, ctx.principal, entity_id)
    row = await conn.fetchrow(f"SELECT id FROM ({stmt.sql}) e", *stmt.params)
    if row is None:
        raise NotFoundError(f"no {entity.name} with id {entity_id}")
    return int(row["id"])


async def resolve(conn: asyncpg.Connection, ctx: Context, segments: list[Segment]) -> Target:
    """Walk a resource path, checking at each step that the entity exists and is visible (else 404)."""
    if not segments:
        raise NotFoundError("empty path")
    first = segments[0]
    entity = BY_PLURAL.get(first.name)
    if entity is None:
        raise NotFoundError(f"no entity set {first.name!r}")
    target = Target(entity)
    if first.id is not None:
        target.entity_id = await fetch_id(conn, ctx, entity, first.id)
    for index, seg in enumerate(segments[1:], start=1):
        last = index == len(segments) - 1
        if seg.name == "$ref" and last and target.prop is None:
            target.ref = True
            continue
        if seg.name == "$value" and last and target.prop is not None:
            target.value = True
            continue
        if target.entity_id is None or target.prop is not None:
            raise NotFoundError(f"cannot address {seg.name!r} here")
        rel = target.entity.rel_by_name.get(seg.name)
        if rel is not None:
            child = BY_NAME[rel.target]
            scope = sql.Scope(target.entity, target.entity_id, rel)
            if rel.many and seg.id is None:
                target = Target(child, scope=scope)
                continue
            stmt = sql.entity_query(child, ctx.principal, seg.id, scope)
            row = await conn.fetchrow(f"SELECT id FROM ({stmt.sql}) e", *stmt.params)
            if row is None:
                raise NotFoundError(f"no {child.name} at {seg.name}")
            target = Target(child, entity_id=int(row["id"]))
            continue
        if seg.name == "Aggregates" and target.entity.name == "Datastream" and last:
            target.extension = "Aggregates"
            continue
        prop = target.entity.prop_by_wire.get(seg.name)
        if prop is None:
            raise NotFoundError(f"{target.entity.name} has no property or relation {seg.name!r}")
        target.prop = prop
    return target


# --- serialization -------------------------------------------------------------------------------------


def iso(value: datetime | None) -> str | None:
    if value is None:
        return None
    text = value.astimezone(UTC).isoformat()
    return text.replace("+00:00", "Z")


def self_link(ctx: Context, entity: EntityType, entity_id: int) -> str:
    return f"{ctx.base}/{entity.plural}({entity_id})"


def prop_value(prop: Prop, row: asyncpg.Record) -> Any:
    """The wire value of one property from a row of `sql.select_list`.

    Instants stay `datetime` objects: the JSON encoder writes them as RFC 3339 in UTC (`JSON_OPTIONS`),
    much faster than formatting them here; intervals become `start/end` strings.
    """
    kind = prop.kind
    if kind == "result":
        value = row["result_number"]
        if value is not None:
            return value
        value = row["result_string"]
        if value is not None:
            return value
        value = row["result_boolean"]
        if value is not None:
            return value
        return orjson.loads(row["result_json"]) if row["result_json"] is not None else None
    value = row[prop.column]
    if kind in ("json", "geojson"):
        return orjson.loads(value) if value is not None else None
    if kind == "time":
        end = row[prop.end_column] if prop.end_column else None
        return f"{iso(value)}/{iso(end)}" if end is not None else value
    if kind == "interval":
        if value is None:
            return None
        return f"{iso(value)}/{iso(row[prop.end_column] if prop.end_column else None) or iso(value)}"
    return value


JSON_OPTIONS = orjson.OPT_UTC_Z
_OMITTED_WHEN_NULL = frozenset({"properties", "resultQuality", "parameters", "observedArea", "validTime"})


def dumps(value: Any) -> bytes:
    """JSON bytes of a SensorThings body (datetimes as RFC 3339 UTC with Z)."""
    return orjson.dumps(value, option=JSON_OPTIONS)


def serialize(ctx: Context, entity: EntityType, row: asyncpg.Record, select: tuple[str, ...]) -> dict[str, Any]:
    """One entity in its JSON form, with selfLink and navigation links, restricted to `$select` if given."""
    entity_id = row["id"]
    link = f"{ctx.base}/{entity.plural}({entity_id})"
    out: dict[str, Any]
    if not select:
        out = {"@iot.id": entity_id, "@iot.selfLink": link}
        for prop in entity.props[1:]:
            value = prop_value(prop, row)
            if value is None and prop.wire in _OMITTED_WHEN_NULL:
                continue
            out[prop.wire] = value
        for rel in entity.relations:
            out[rel.name + "@iot.navigationLink"] = f"{link}/{rel.name}"
        return out
    chosen = set(select)
    out = {}
    if chosen & {"id", "@iot.id"}:
        out["@iot.id"] = entity_id
    if "@iot.selfLink" in chosen:
        out["@iot.selfLink"] = link
    for prop in entity.props:
        if prop.wire != "id" and prop.wire in chosen:
            out[prop.wire] = prop_value(prop, row)
    for rel in entity.relations:
        if rel.name in chosen:
            out[rel.name + "@iot.navigationLink"] = f"{link}/{rel.name}"
    if any("/" in name for name in select):
        select_json_paths(entity, row, select, out)
    return out


def select_json_paths(entity: EntityType, row: asyncpg.Record, select: tuple[str, ...], out: dict[str, Any]) -> None:
    """`$select=properties/owner`: the selected members of a JSON property, nested as in the entity."""
    for name in select:
        head, *rest = name.split("/")
        prop = entity.prop_by_wire.get(head)
        if prop is None or prop.kind != "json" or not rest or head in select:
            continue
        value = prop_value(prop, row)
        for key in rest:
            value = value.get(key) if isinstance(value, dict) else None
        if value is None:
            continue
        node = out.setdefault(head, {})
        for key in rest[:-1]:
            node = node.setdefault(key, {})
        node[rest[-1]] = value


def check_select(entity: EntityType, opts: QueryOptions, where: str = "$select") -> None:
    """Every name in `$select`, and in the `$select` of each `$expand`, is one of its entity type: else a 400."""
    known = {"id", "@iot.id", "@iot.selfLink", *entity.prop_by_wire, *entity.rel_by_name}
    for name in opts.select:
        head = name.split("/")[0]
        prop = entity.prop_by_wire.get(head)
        if head not in known or ("/" in name and (prop is None or prop.kind != "json")):
            raise BadRequestError(f"{where}: {entity.name} has no property {name!r}")
    for item in opts.expand:
        target: EntityType | None = entity
        for segment in item.path:
            rel = target.rel_by_name.get(segment) if target else None
            target = BY_NAME[rel.target] if rel else None
        if target is not None:  # an unknown relation is reported by the expansion itself
            check_select(target, item.options, f"$expand={'/'.join(item.path)}($select)")


# --- collections and entities ---------------------------------------------------------------------------


async def estimated_or_exact_count(conn: asyncpg.Connection, ctx: Context, stmt: sql.Statement) -> tuple[int, bool]:
    """An exact count, unless the planner expects more rows than the limit: then its estimate, flagged."""
    plan = await conn.fetchval(f"EXPLAIN (FORMAT JSON) {stmt.sql}", *stmt.params)
    document = orjson.loads(plan) if isinstance(plan, str | bytes) else plan
    # the rows the scans expect (before the access semi-joins, whose selectivity the planner only guesses)
    estimate = _largest_estimate(document[0]["Plan"])
    if estimate > ctx.count_exact_limit:
        return estimate, True
    return int(await conn.fetchval(stmt.sql, *stmt.params)), False


def _largest_estimate(node: dict[str, Any]) -> int:
    here = 0 if node.get("Node Type") == "Aggregate" else int(node.get("Plan Rows", 0))
    return max([here, *(_largest_estimate(child) for child in node.get("Plans", []))])


def _next_query(params: dict[str, str], top: int, skip: int) -> str:
    query = {k: v for k, v in params.items() if k not in ("$top", "$skip")}
    query["$top"] = str(top)
    query["$skip"] = str(skip + top)
    return urlencode(query, quote_via=quote, safe="$(),;=/:")


def _next_link(url: str, params: dict[str, str], top: int, skip: int) -> str:
    return f"{url}?{_next_query(params, top, skip)}"


async def read_collection(
    conn: asyncpg.Connection,
    ctx: Context,
    entity: EntityType,
    opts: QueryOptions,
    *,
    scope: sql.Scope | None,
    url: str,
    params: dict[str, str],
    ref: bool = False,
) -> dict[str, Any]:
    """A page of a collection (optionally only `$ref` links), counted and expanded as asked."""
    top = ctx.page_size(opts.top)
    stmt = sql.collection_query(
        entity, ctx.principal, filter_expr=opts.filter, orderby=opts.orderby, top=top, skip=opts.skip, scope=scope
    )
    rows = await conn.fetch(stmt.sql, *stmt.params)
    more = len(rows) > top > 0  # $top=0 asks for the count alone: no next page to follow
    rows = rows[:top]
    body: dict[str, Any] = {}
    if opts.count:
        count_stmt = sql.count_query(entity, ctx.principal, filter_expr=opts.filter, scope=scope)
        count, estimated = await estimated_or_exact_count(conn, ctx, count_stmt)
        body["@iot.count"] = count
        if estimated:
            body["@territoire.countEstimated"] = True
    if more:
        body["@iot.nextLink"] = _next_link(url, params, top, opts.skip)
    if ref:
        body["value"] = [{"@iot.selfLink": self_link(ctx, entity, r["id"])} for r in rows]
        return body
    if opts.result_format == "dataArray":
        if entity.name != "Observation":
            raise BadRequestError("$resultFormat=dataArray applies to Observations only")
        body["value"] = data_array(ctx, rows, opts.select)
        return body
    values = [serialize(ctx, entity, r, opts.select) for r in rows]
    await attach_expansions(conn, ctx, entity, rows, values, opts.expand)
    body["value"] = values
    return body


async def read_entity(
    conn: asyncpg.Connection, ctx: Context, entity: EntityType, entity_id: int, opts: QueryOptions
) -> dict[str, Any]:
    stmt = sql.entity_query(entity, ctx.principal, entity_id)
    row = await conn.fetchrow(stmt.sql, *stmt.params)
    if row is None:
        raise NotFoundError(f"no {entity.name} with id {entity_id}")
    value = serialize(ctx, entity, row, opts.select)
    await attach_expansions(conn, ctx, entity, [row], [value], opts.expand)
    return value


async def read_property(conn: asyncpg.Connection, ctx: Context, entity: EntityType, entity_id: int, prop: Prop) -> Any:
    stmt = sql.entity_query(entity, ctx.principal, entity_id)
    row = await conn.fetchrow(stmt.sql, *stmt.params)
    if row is None:
        raise NotFoundError(f"no {entity.name} with id {entity_id}")
    if prop.wire == "id":
        return row["id"]
    return prop_value(prop, row)


# --- $expand --------------------------------------------------------------------------------------------


def normalize_expand(items: tuple[ExpandItem, ...]) -> list[ExpandItem]:
    """`A/B` becomes `A($expand=B)`; items on the same relation merge."""
    merged: dict[str, ExpandItem] = {}
    for item in items:
        head, rest = item.path[0], item.path[1:]
        if rest:
            node = ExpandItem((head,), QueryOptions(expand=(ExpandItem(rest, item.options),)))
        else:
            node = ExpandItem((head,), item.options)
        existing = merged.get(head)
        if existing is None:
            merged[head] = node
            continue
        if not rest:
            node.options.expand = node.options.expand + existing.options.expand
            merged[head] = node
        else:
            existing.options.expand = existing.options.expand + node.options.expand
    return list(merged.values())


@dataclass
class _Children:
    rows: list[asyncpg.Record] = field(default_factory=list)
    more: bool = False


async def attach_expansions(
    conn: asyncpg.Connection,
    ctx: Context,
    entity: EntityType,
    rows: list[asyncpg.Record],
    values: list[dict[str, Any]],
    items: tuple[ExpandItem, ...],
) -> None:
    """Fill expanded relations in place: one statement per relation and level, never one per parent."""
    if not rows or not items:
        return
    for item in normalize_expand(items):
        rel = entity.rel_by_name.get(item.path[0])
        if rel is None:
            raise BadRequestError(f"$expand: {entity.name} has no relation {item.path[0]!r}")
        if rel.many:
            await _expand_many(conn, ctx, entity, rel, rows, values, item.options)
        else:
            await _expand_one(conn, ctx, rel, rows, values, item.options)


async def _expand_many(
    conn: asyncpg.Connection,
    ctx: Context,
    entity: EntityType,
    rel: Relation,
    rows: list[asyncpg.Record],
    values: list[dict[str, Any]],
    opts: QueryOptions,
) -> None:
    child = BY_NAME[rel.target]
    top = ctx.page_size(opts.top)
    ids = [int(r["id"]) for r in rows]
    found: dict[int, _Children] = {i: _Children() for i in ids}
    window = sql.latest_window_applies(entity, rel, opts.filter, opts.orderby, opts.skip)
    stmt = sql.expand_many_query(
        entity,
        rel,
        ctx.principal,
        ids,
        filter_expr=opts.filter,
        orderby=opts.orderby,
        top=top,
        skip=opts.skip,
        recent_window=window,
    )
    records = list(await conn.fetch(stmt.sql, *stmt.params))
    if window:
        per_parent: dict[int, int] = {}
        for record in records:
            per_parent[record["__parent"]] = per_parent.get(record["__parent"], 0) + 1
        short = [i for i in ids if per_parent.get(i, 0) <= top]
        if short:  # fewer rows in the recent window than the page needs: read those Datastreams in full
            again_ids = set(short)
            records = [r for r in records if r["__parent"] not in again_ids]
            again = sql.expand_many_query(
                entity, rel, ctx.principal, short, filter_expr=None, orderby=opts.orderby, top=top, skip=0
            )
            records.extend(await conn.fetch(again.sql, *again.params))
    for record in records:
        bucket = found[record["__parent"]]
        if len(bucket.rows) < top:
            bucket.rows.append(record)
        else:
            bucket.more = True
    counts: dict[int, int] = {}
    if opts.count:
        count_stmt = sql.expand_count_query(entity, rel, ctx.principal, ids, opts.filter)
        counts = {r["__parent"]: r["n"] for r in await conn.fetch(count_stmt.sql, *count_stmt.params)}
    all_children: list[asyncpg.Record] = []
    all_values: list[dict[str, Any]] = []
    next_query = _next_query(opts.raw, top, opts.skip)  # the same for every parent: encode it once
    for row, value in zip(rows, values, strict=True):
        bucket = found[int(row["id"])]
        if opts.count:
            value[f"{rel.name}@iot.count"] = counts.get(int(row["id"]), 0)
        serialized = [serialize(ctx, child, r, opts.select) for r in bucket.rows]
        value[rel.name] = serialized
        if bucket.more:
            value[f"{rel.name}@iot.nextLink"] = f"{self_link(ctx, entity, row['id'])}/{rel.name}?{next_query}"
        all_children.extend(bucket.rows)
        all_values.extend(serialized)
    await attach_expansions(conn, ctx, child, all_children, all_values, opts.expand)


async def _expand_one(
    conn: asyncpg.Connection,
    ctx: Context,
    rel: Relation,
    rows: list[asyncpg.Record],
    values: list[dict[str, Any]],
    opts: QueryOptions,
) -> None:
    child = BY_NAME[rel.target]
    ids = sorted({int(r[rel.column]) for r in rows if r[rel.column] is not None})
    by_id: dict[int, asyncpg.Record] = {}
    if ids:
        stmt = sql.expand_one_query(child, ctx.principal, ids)
        by_id = {int(r["id"]): r for r in await conn.fetch(stmt.sql, *stmt.params)}
    children: list[asyncpg.Record] = []
    child_values: list[dict[str, Any]] = []
    for row, value in zip(rows, values, strict=True):
        target = by_id.get(row[rel.column]) if row[rel.column] is not None else None
        if target is None:
            continue
        serialized = serialize(ctx, child, target, opts.select)
        value[rel.name] = serialized
        children.append(target)
        child_values.append(serialized)
    await attach_expansions(conn, ctx, child, children, child_values, opts.expand)


# --- dataArray ------------------------------------------------------------------------------------------

DATA_ARRAY_DEFAULT = ("id", "phenomenonTime", "result", "resultTime", "resultQuality", "validTime", "parameters")


def data_array(ctx: Context, rows: list[asyncpg.Record], select: tuple[str, ...]) -> list[dict[str, Any]]:
    """Observations grouped by Datastream as `components` + `dataArray` (the dataArray extension)."""
    observation = BY_NAME["Observation"]
    components = [c for c in (select or DATA_ARRAY_DEFAULT) if c == "id" or c in observation.prop_by_wire]
    groups: dict[int, list[list[Any]]] = {}
    for row in rows:
        line = [row["id"] if c == "id" else prop_value(observation.prop_by_wire[c], row) for c in components]
        groups.setdefault(int(row["datastream_id"]), []).append(line)
    return [
        {
            "Datastream@iot.navigationLink": f"{ctx.base}/Datastreams({ds})",
            "components": components,
            "dataArray@iot.count": len(lines),
            "dataArray": lines,
        }
        for ds, lines in groups.items()
    ]


def _int(value: Any) -> int | None:
    return int(value) if value is not None else None


# --- aggregation extension -------------------------------------------------------------------------------


async def read_aggregates(
    conn: asyncpg.Connection,
    ctx: Context,
    datastream_id: int,
    *,
    interval: str,
    functions: list[str],
    opts: QueryOptions,
    url: str,
    params: dict[str, str],
) -> dict[str, Any]:
    """Time-bucketed aggregates of one Datastream's numeric results (our extension; see the service root)."""
    if interval not in sql.AGGREGATE_INTERVALS:
        raise BadRequestError(f"interval must be one of {', '.join(sql.AGGREGATE_INTERVALS)}, not {interval!r}")
    unknown = [f for f in functions if f not in sql.AGGREGATE_FUNCTIONS]
    if unknown or not functions:
        raise BadRequestError(
            f"aggregate must list some of {', '.join(sql.AGGREGATE_FUNCTIONS)}"
            + (f"; unknown {unknown}" if unknown else "")
        )
    top = ctx.page_size(opts.top)
    stmt, from_rollups = sql.aggregate_query(
        datastream_id,
        ctx.principal,
        interval=interval,
        functions=functions,
        filter_expr=opts.filter,
        top=top,
        skip=opts.skip,
    )
    rows = await conn.fetch(stmt.sql, *stmt.params)
    body: dict[str, Any] = {
        "interval": interval,
        "aggregates": functions,
        "source": "rollup-15min" if from_rollups else "observations",
    }
    if len(rows) > top:
        body["@iot.nextLink"] = _next_link(url, params, top, opts.skip)
        rows = rows[:top]
    body["value"] = [
        {
            "phenomenonTime": f"{iso(r['bucket_start'])}/{iso(r['bucket_end'])}",
            **{f: (float(r[f]) if r[f] is not None and f != "count" else _int(r[f])) for f in functions},
        }
        for r in rows
    ]
    return body
