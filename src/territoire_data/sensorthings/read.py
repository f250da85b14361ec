"""SensorThings reads: resource paths resolved, statements from `sql` run, rows serialized with wire names.

Free of FastAPI: the routes hand in an asyncpg connection, the parsed options and a `Context`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal, localcontext
from typing import Any
from urllib.parse import quote, urlencode

import asyncpg
import orjson

from territoire_data.auth.policy import Principal
from territoire_data.db.readpool import use_generic_plans, use_plans
from territoire_data.errors import BadRequestError, NotFoundError
from territoire_data.sensorthings import jsonsql, sql
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
    stmt = sql.entity_query(entity, ctx.principal, entity_id, columns="c.id")
    row = await conn.fetchrow(stmt.sql, *stmt.params)
    if row is None:
        raise NotFoundError(f"no {entity.name} with id {entity_id}")
    return int(row["id"])


async def resolve(
    conn: asyncpg.Connection, ctx: Context, segments: list[Segment], *, defer_check: bool = False
) -> Target:
    """Walk a resource path, checking at each step that the entity exists and is visible (else 404).

    With `defer_check`, a path `Entities(id)/Relation` to a collection is not checked here: its scope says
    `checked=False` and `read_collection` checks the parent in the same statement as the page.
    """
    if not segments:
        raise NotFoundError("empty path")
    first = segments[0]
    entity = BY_PLURAL.get(first.name)
    if entity is None:
        raise NotFoundError(f"no entity set {first.name!r}")
    target = Target(entity)
    if first.id is not None:
        rel = entity.rel_by_name.get(segments[1].name) if len(segments) == 2 else None
        if defer_check and rel is not None and rel.many and segments[1].id is None:
            scope = sql.Scope(entity, first.id, rel, checked=False)
            return Target(BY_NAME[rel.target], scope=scope)
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
            stmt = sql.entity_query(child, ctx.principal, seg.id, scope, columns="c.id")
            row = await conn.fetchrow(stmt.sql, *stmt.params)
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
    """An instant as PostgreSQL's `to_json` writes it in UTC (jsonsql), plus `Z`: fractional seconds without
    trailing zeros, none when zero (`2026-11-28T20:17:21.477Z`, `2026-11-28T20:17:21Z`)."""
    if value is None:
        return None
    if value.utcoffset():
        value = value.astimezone(UTC)
    text = value.replace(tzinfo=None).isoformat()
    return (text.rstrip("0") if value.microsecond else text) + "Z"


def pg_number(value: float) -> int | float | str | orjson.Fragment:
    """A double as PostgreSQL's `to_json` writes it (jsonsql): the shortest text that reads back the same,
    integers without `.0`, exponents as `1e+15` from 1e15 and below 1e-4, NaN and infinities as strings.

    orjson's own shortest form agrees in between for non-integers; the rest are written here."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    magnitude = abs(value)
    if value.is_integer():
        if magnitude < 1e15 and (value or math.copysign(1.0, value) > 0):
            return int(value)
    elif 1e-4 <= magnitude < 1e15:
        return value
    return orjson.Fragment(_pg_float_text(value))


def _pg_float_text(value: float) -> str:
    """float8out's text for the values orjson writes otherwise. Its shortest digits lie strictly inside the
    interval that reads back as `value` (Python's `repr` may take a bound, as it does for some integers
    above 2**53), so the digits are searched here, with the bounds computed exactly."""
    with localcontext() as ctx:
        ctx.prec = 800
        magnitude = abs(value)
        exact = Decimal(magnitude)
        low = (exact + Decimal(math.nextafter(magnitude, 0.0))) / 2
        above = math.nextafter(magnitude, math.inf)
        # the largest double has no neighbour above: its interval is as wide above as below
        high = (exact + Decimal(above)) / 2 if math.isfinite(above) else 2 * exact - low
        for count in range(1, 18):
            candidate = Decimal(f"{magnitude:.{count - 1}e}")
            if low < candidate < high or not magnitude:
                break
    _, digits, exponent = candidate.normalize().as_tuple()
    sign = math.copysign(1.0, value) < 0
    assert isinstance(exponent, int)
    power = len(digits) + exponent - 1  # of the first digit
    if -4 <= power < 15:  # -0
        return ("-" if sign else "") + format(candidate.normalize(), "f")
    mantissa = str(digits[0]) + ("." + "".join(map(str, digits[1:])) if len(digits) > 1 else "")
    return f"{'-' if sign else ''}{mantissa}e{'+' if power >= 0 else '-'}{abs(power):02d}"


def self_link(ctx: Context, entity: EntityType, entity_id: int) -> str:
    return f"{ctx.base}/{entity.plural}({entity_id})"


def prop_value(prop: Prop, row: asyncpg.Record) -> Any:
    """The wire value of one property from a row of `sql.select_list`.

    Instants, intervals and numbers are written in the very text PostgreSQL gives them in `jsonsql` (so that
    MQTT messages and HTTP bodies agree to the character): see `iso` and `pg_number`.
    """
    kind = prop.kind
    if kind == "result":
        value = row["result_number"]
        if value is not None:
            return pg_number(value)
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
        return f"{iso(value)}/{iso(end)}" if end is not None else iso(value)
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
            if not rel.optional or row[rel.column] is not None:  # as `jsonsql.link_written`
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
        node = out.setdefault(head, {})  # the selected property is always written (as PostgreSQL's JSON does)
        for key in rest[:-1]:
            node = node.setdefault(key, {})
        if value is not None:
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
    """A page of a collection (optionally only `$ref` links), counted and expanded as asked.

    `value` is an `orjson.Fragment`: the entities' JSON as PostgreSQL built it (see `jsonsql`).
    """
    top = ctx.page_size(opts.top)
    data_array_format = opts.result_format == "dataArray"
    if data_array_format and entity.name != "Observation":
        raise BadRequestError("$resultFormat=dataArray applies to Observations only")
    shape = None if ref or data_array_format else jsonsql.JsonShape(ctx.base, opts.select)
    if not _generic_plans_fit(entity, opts, scope):
        await use_generic_plans(conn, False)
    if scope is not None and not scope.checked:
        if shape is not None and not opts.count and not opts.expand:
            return await _checked_page(conn, ctx, entity, opts, scope, shape, top, url, params)
        await fetch_id(conn, ctx, scope.parent, scope.parent_id)
        scope.checked = True
    stmt = _page_query(ctx, entity, opts, top, scope, shape)
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
    if data_array_format:
        body["value"] = data_array(ctx, rows, opts.select)
        return body
    values = [r["__json"] for r in rows]
    await attach_expansions(conn, ctx, entity, rows, values, opts.expand)
    body["value"] = orjson.Fragment(jsonsql.array(values))
    return body


def _page_query(
    ctx: Context,
    entity: EntityType,
    opts: QueryOptions,
    top: int,
    scope: sql.Scope | None,
    shape: jsonsql.JsonShape | None,
    params: sql.Params | None = None,
    latest: bool = False,
) -> sql.Statement:
    return sql.collection_query(
        entity,
        ctx.principal,
        filter_expr=opts.filter,
        orderby=opts.orderby,
        top=top,
        skip=opts.skip,
        scope=scope,
        shape=shape,
        params=params,
        latest=latest,
    )


def _generic_plans_fit(entity: EntityType, opts: QueryOptions, scope: sql.Scope | None) -> bool:
    """Whether a collection's statements plan well without their values (see `readpool.use_generic_plans`):
    the Observations of one Datastream (the key's first column is bound: every plan walks that index), and
    unfiltered pages of the small entity sets. Not the Observations or FeaturesOfInterest at large, nor a
    `$filter` (a path can reach the Observations), nor `$count` (its estimate is read from the plan)."""
    if opts.count:
        return False
    if scope is not None and sql.implied_visible(scope.parent, scope.relation):
        return True
    return opts.filter is None and entity.name not in ("Observation", "FeatureOfInterest")


async def _checked_page(
    conn: asyncpg.Connection,
    ctx: Context,
    entity: EntityType,
    opts: QueryOptions,
    scope: sql.Scope,
    shape: jsonsql.JsonShape,
    top: int,
    url: str,
    params: dict[str, str],
) -> dict[str, Any]:
    """The page of a navigation collection and its parent's visibility in one statement (404 if not visible).

    This is the latest-observation path (`Datastreams(1)/Observations?$top=1&$orderby=...`): one round trip.
    """
    bound = sql.Params()
    check = sql.entity_query(scope.parent, ctx.principal, scope.parent_id, columns="1", params=bound)
    latest = sql.latest_pointer_applies(scope, opts.filter, opts.orderby, top, opts.skip)
    page = _page_query(ctx, entity, opts, top, scope, shape, bound, latest)
    more = sql.latest_more_sql(scope, bound) if latest else "false"
    # The page comes as one text, the members of its entities joined by `},`: a day of one Datastream is 1,440
    # entities, and one string instead of an array of them saves the server decoding 1,440 strings, then joining
    # them again (0.1 of its 1.3 ms on that request, measured). The subquery's ORDER BY ... LIMIT orders the
    # aggregate (a plain scan over it keeps that order); it reads one row more than the page to tell whether a
    # next page exists, which the aggregate leaves out.
    top_param = bound.add(top, "bigint")
    row = await conn.fetchrow(
        f"SELECT EXISTS ({check.sql}) AS visible, a.page, a.n, {more} AS more "
        f"FROM (SELECT string_agg(p.__json, '}},') FILTER (WHERE p.__n <= {top_param}) AS page, count(*) AS n "
        f"FROM (SELECT q.__json, row_number() OVER () AS __n FROM ({page.sql}) q) p) a",
        *bound.values,
    )
    if row is None or not row["visible"]:
        raise NotFoundError(f"no {scope.parent.name} with id {scope.parent_id}")
    body: dict[str, Any] = {}
    if row["n"] > top > 0 or row["more"]:
        body["@iot.nextLink"] = _next_link(url, params, top, opts.skip)
    page_text: str | None = row["page"]
    body["value"] = orjson.Fragment(f"[{page_text}}}]" if page_text else "[]")
    return body


async def read_entity_json(
    conn: asyncpg.Connection, ctx: Context, entity: EntityType, entity_id: int, opts: QueryOptions
) -> orjson.Fragment:
    """One entity (with its expansions) as JSON built by PostgreSQL (see `jsonsql`)."""
    stmt = sql.entity_query(entity, ctx.principal, entity_id, shape=jsonsql.JsonShape(ctx.base, opts.select))
    row = await conn.fetchrow(stmt.sql, *stmt.params)
    if row is None:
        raise NotFoundError(f"no {entity.name} with id {entity_id}")
    values = [row["__json"]]
    await attach_expansions(conn, ctx, entity, [row], values, opts.expand)
    return orjson.Fragment(jsonsql.close(values[0]))


async def read_entity(
    conn: asyncpg.Connection, ctx: Context, entity: EntityType, entity_id: int, opts: QueryOptions
) -> dict[str, Any]:
    """One entity as a dict (the write paths answer with it); reads send `read_entity_json` as it is."""
    document: dict[str, Any] = orjson.loads(dumps(await read_entity_json(conn, ctx, entity, entity_id, opts)))
    return document


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
    values: list[str],
    items: tuple[ExpandItem, ...],
) -> None:
    """Append expanded relations to the entities' JSON members (`values`, from `jsonsql`) in place: one
    statement per relation and level, never one per parent."""
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
    values: list[str],
    opts: QueryOptions,
) -> None:
    child = BY_NAME[rel.target]
    top = ctx.page_size(opts.top)
    shape = jsonsql.JsonShape(ctx.base, opts.select)
    ids = [int(r["id"]) for r in rows]
    found: dict[int, _Children] = {i: _Children() for i in ids}
    window = sql.latest_window_applies(entity, rel, opts.filter, opts.orderby, opts.skip)
    if opts.filter is not None and not sql.implied_visible(entity, rel):
        await use_generic_plans(conn, False)  # as in `_generic_plans_fit`
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
        shape=shape,
    )
    records = list(await conn.fetch(stmt.sql, *stmt.params))
    if window and top == 1:  # exact (see `sql.expand_many_query`): `__more` says whether older ones exist
        for record in records:
            found[record[0]].more = record["__more"]
    elif window:
        per_parent: dict[int, int] = {}
        for record in records:
            per_parent[record["__parent"]] = per_parent.get(record["__parent"], 0) + 1
        short = [i for i in ids if per_parent.get(i, 0) <= top]
        if short:  # fewer rows in the recent window than the page needs: read those Datastreams in full
            again_ids = set(short)
            records = [r for r in records if r["__parent"] not in again_ids]
            again = sql.expand_many_query(
                entity, rel, ctx.principal, short, filter_expr=None, orderby=opts.orderby, top=top, skip=0, shape=shape
            )
            records.extend(await conn.fetch(again.sql, *again.params))
    for record in records:
        bucket = found[record[0]]  # __parent
        if len(bucket.rows) < top:
            bucket.rows.append(record)
        else:
            bucket.more = True
    counts: dict[int, int] = {}
    if opts.count:
        await use_generic_plans(conn, False)
        count_stmt = sql.expand_count_query(entity, rel, ctx.principal, ids, opts.filter)
        counts = {r["__parent"]: r["n"] for r in await conn.fetch(count_stmt.sql, *count_stmt.params)}
    # the children's own expansions first (in place), then each parent's array of them
    all_children = [r for row in rows for r in found[int(row["id"])].rows]
    all_values = [r["__json"] for r in all_children]
    await attach_expansions(conn, ctx, child, all_children, all_values, opts.expand)
    # Hundreds of parents here: the keys and the nextLink's two ends are JSON-encoded once, not per parent.
    next_query = _next_query(opts.raw, top, opts.skip)
    count_key = jsonsql.key(f"{rel.name}@iot.count")
    array_key = jsonsql.key(rel.name)
    next_key = jsonsql.key(f"{rel.name}@iot.nextLink")
    link_head = dumps(f"{ctx.base}/{entity.plural}(").decode()[:-1]
    link_tail = dumps(f")/{rel.name}?{next_query}").decode()[1:]
    start = 0
    for index, row in enumerate(rows):
        parent_id = int(row["id"])
        bucket = found[parent_id]
        text = values[index]
        parts = [text, "," if len(text) > 1 else ""]
        if opts.count:
            parts += [count_key, str(counts.get(parent_id, 0)), ","]
        end = start + len(bucket.rows)
        parts += [array_key, jsonsql.array(all_values[start:end])]
        start = end
        if bucket.more:
            parts += [",", next_key, link_head, str(parent_id), link_tail]
        values[index] = "".join(parts)


async def _expand_one(
    conn: asyncpg.Connection,
    ctx: Context,
    rel: Relation,
    rows: list[asyncpg.Record],
    values: list[str],
    opts: QueryOptions,
) -> None:
    child = BY_NAME[rel.target]
    ids = sorted({int(r[rel.column]) for r in rows if r[rel.column] is not None})
    by_id: dict[int, asyncpg.Record] = {}
    if ids:
        stmt = sql.expand_one_query(child, ctx.principal, ids, jsonsql.JsonShape(ctx.base, opts.select))
        by_id = {int(r["id"]): r for r in await conn.fetch(stmt.sql, *stmt.params)}
    parents: list[int] = []  # index in `rows` of each child below
    children: list[asyncpg.Record] = []
    for index, row in enumerate(rows):
        target = by_id.get(row[rel.column]) if row[rel.column] is not None else None
        if target is not None:
            parents.append(index)
            children.append(target)
    child_values = [r["__json"] for r in children]
    await attach_expansions(conn, ctx, child, children, child_values, opts.expand)
    for index, text in zip(parents, child_values, strict=True):
        values[index] = jsonsql.append(values[index], rel.name, jsonsql.close(text))


# --- dataArray ------------------------------------------------------------------------------------------

DATA_ARRAY_DEFAULT = ("id", "phenomenonTime", "result", "resultTime", "resultQuality", "validTime", "parameters")


def data_array(ctx: Context, rows: list[asyncpg.Record], select: tuple[str, ...]) -> list[dict[str, Any]]:
    """Observations grouped by (Multi)Datastream as `components` + `dataArray` (the dataArray extension)."""
    observation = BY_NAME["Observation"]
    components = [c for c in (select or DATA_ARRAY_DEFAULT) if c == "id" or c in observation.prop_by_wire]
    groups: dict[tuple[str, int], list[list[Any]]] = {}
    for row in rows:
        line = [row["id"] if c == "id" else prop_value(observation.prop_by_wire[c], row) for c in components]
        if row["datastream_id"] is not None:
            key = ("Datastream", int(row["datastream_id"]))
        else:
            key = ("MultiDatastream", int(row["multi_datastream_id"]))
        groups.setdefault(key, []).append(line)
    return [
        {
            f"{kind}@iot.navigationLink": f"{ctx.base}/{kind}s({ds})",
            "components": components,
            "dataArray@iot.count": len(lines),
            "dataArray": lines,
        }
        for (kind, ds), lines in groups.items()
    ]


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
    stmt, rollup = sql.aggregate_query(
        datastream_id,
        ctx.principal,
        interval=interval,
        functions=functions,
        filter_expr=opts.filter,
        top=top,
        skip=opts.skip,
    )
    if rollup != "rollup_day":
        # Planned with their values every time: a generic plan (which `auto` turns to after five executions)
        # sorted a busy Datastream's 35,040 15-minute rollup rows where the custom one hashes them (14 ms against
        # 8 ms at 1 M observations); the rollup table is not partitioned and plans in no time. A year of daily
        # rollups (365 rows) plans well generically: no mode switch (two round trips) nor planning then.
        await use_plans(conn, "custom")
    as_json = sql.aggregate_json(stmt, functions)
    rows = await conn.fetch(as_json.sql, *as_json.params)
    body: dict[str, Any] = {
        "interval": interval,
        "aggregates": functions,
        "source": rollup.replace("_", "-") if rollup else "observations",
    }
    if len(rows) > top:
        body["@iot.nextLink"] = _next_link(url, params, top, opts.skip)
        rows = rows[:top]
    body["value"] = orjson.Fragment("[" + ",".join(r["__json"] for r in rows) + "]")
    return body
