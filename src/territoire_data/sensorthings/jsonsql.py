"""SensorThings entities serialized by PostgreSQL: one text column per row holding the entity's JSON members.

Building a page of 1,440 Observations as Python dicts (then JSON) cost more CPU than everything else in the
request; PostgreSQL concatenates the same members in C. The expression gives the JSON object *without its
closing brace*, so that the reader can append expanded relations (`,"Datastreams":[...]`) before closing it.
The output means the same as `read.serialize` (which the MQTT bridge still uses on single rows): the same
members in the same order, selfLinks and navigationLinks from the bound base URL, instants in UTC with `Z`,
the same members left out when null, the same `$select` rules.

(Measured and left: writing a mark in the place of the base URL and replacing it in Python once the page is
whole sends a fifth fewer bytes, but the database spent as much and the replace cost the server more.)
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import orjson

from territoire_data.sensorthings.model import EntityType, Prop, Relation

# Left out of a full entity when null (as `read.serialize` does); with `$select` they are always written.
OMITTED_WHEN_NULL = frozenset({"properties", "resultQuality", "parameters", "observedArea", "validTime"})


@dataclass(frozen=True)
class JsonShape:
    """What the JSON of an entity depends on besides the row: the public base URL and `$select`."""

    base: str  # .../sta/v1.1
    select: tuple[str, ...] = ()


def _literal(text: str) -> str:
    """A SQL string literal of our own text (JSON keys from the model, never user input)."""
    return "'" + text.replace("'", "''") + "'"


@lru_cache(maxsize=1024)
def key(name: str) -> str:
    """`"name":`, JSON-escaped (names come from the model)."""
    return orjson.dumps(name).decode() + ":"


def _bare_instant(column: str) -> str:
    """ISO 8601 text of a timestamptz in UTC (`2026-01-01T00:00:00Z`, fractions of a second when there are), NULL
    when the column is. The text form of a timestamp under DateStyle ISO with its space made a `T`: about 40 % less
    database CPU time than the JSON form (`to_json`, then cutting its quotes, whose functions count characters),
    on every instant of every Observation. The API's sessions set DateStyle (`db.engine.session_settings`)."""
    return f"(replace(({column} AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z')"


def _instant(column: str) -> str:
    """JSON string of a timestamptz in UTC (`"2026-01-01T00:00:00Z"`), NULL when the column is."""
    return f"('\"' || replace(({column} AT TIME ZONE 'UTC')::text, ' ', 'T') || 'Z\"')"


def interval_json(start: str, end: str) -> str:
    """JSON string of the interval `start/end` (two timestamptz SQL expressions), in UTC."""
    return f"('\"' || {_bare_instant(start)} || '/' || {_bare_instant(end)} || '\"')"


def _value(prop: Prop, alias: str) -> str:
    """SQL text of the JSON value of one property; NULL (not 'null') when the property is null."""
    column = f"{alias}.{prop.column}"
    kind = prop.kind
    if kind == "id":
        return f"{column}::text"
    if kind == "result":
        return (
            f"COALESCE(to_json({alias}.result_number)::text, to_json({alias}.result_string)::text, "
            f"to_json({alias}.result_boolean)::text, {alias}.result_json::text)"
        )
    if kind == "json":
        return f"{column}::text"
    if kind == "geojson":
        return f"ST_AsGeoJSON({column})" if prop.column == prop.geom else f"{column}::text"
    if kind == "time":
        if prop.end_column is None:
            return _instant(column)
        end = f"{alias}.{prop.end_column}"
        return (
            f"(CASE WHEN {end} IS NULL THEN {_instant(column)} "
            f"ELSE '\"' || {_bare_instant(column)} || '/' || {_bare_instant(end)} || '\"' END)"
        )
    if kind == "interval":
        end = f"COALESCE({alias}.{prop.end_column}, {column})" if prop.end_column else column
        return interval_json(column, end)
    return f"to_json({column})::text"


Bind = Callable[[Any, str], str]  # binds a value with a cast, returns its placeholder (`sql.Params.add`)
PathTree = dict[str, "PathTree"]


def _json_paths(select: tuple[str, ...]) -> dict[str, PathTree]:
    """`$select=properties/owner,properties/a/b`: the member trees wanted inside each JSON property (whose name
    is not itself selected whole)."""
    trees: dict[str, PathTree] = {}
    for name in select:
        head, *rest = name.split("/")
        if not rest or head in select:
            continue
        node = trees.setdefault(head, {})
        for part in rest:
            node = node.setdefault(part, {})
    return trees


def _subset(column: str, tree: PathTree, bind: Bind, prefix: tuple[str, ...] = ()) -> str:
    """SQL text of the JSON object holding only the members of `tree` found in the jsonb `column`: a leaf is
    left out when missing or null, as `read.select_json_paths` does; every key is a bound value."""
    rows = []
    for name, sub in tree.items():
        path = (*prefix, name)
        value = f"{_subset(column, sub, bind, path)}::jsonb" if sub else f"({column} #> {bind(list(path), 'text[]')})"
        rows.append(f"({bind(name, 'text')}, {value})")
    return (
        f"COALESCE((SELECT jsonb_object_agg(k, v) FROM (VALUES {', '.join(rows)}) AS t(k, v) "  # noqa: S608 (placeholders)
        "WHERE v IS NOT NULL AND v <> 'null'::jsonb), '{}'::jsonb)::text"
    )


class _Concat:
    """The arguments of one concat(): SQL expressions, and text of our own that is merged with the text next to
    it into one literal (`')","phenomenonTime":'` is one argument, not two: each argument costs a call per row)."""

    def __init__(self) -> None:
        self.args: list[str] = []
        self._text: list[str] = []

    def text(self, value: str) -> None:
        self._text.append(value)

    def sql(self, *expressions: str) -> None:
        self._flush()
        self.args.extend(expressions)

    def _flush(self) -> None:
        if self._text:
            self.args.append(_literal("".join(self._text)))
            self._text = []

    def build(self) -> str:
        self._flush()
        return f"concat({', '.join(self.args)})"


def link_written(rel: Relation, alias: str, table: str | None) -> str | None:
    """When a to-one relation's navigationLink is written: always (None), never (''), or the SQL condition.

    A link leads to an entity; an Observation of a Datastream has no MultiDatastream (and one of a
    MultiDatastream no Datastream), so that link is left out instead of leading to nothing.
    (`table`: as in `sql.visible_sql`; see `Relation.set_in`.)"""
    always = rel.set_in(table)
    if always is None:
        return f"{alias}.{rel.column} IS NOT NULL"
    return None if always else ""


def members_sql(
    entity: EntityType,
    alias: str,
    shape: JsonShape,
    link_param: str,
    bind: Bind | None = None,
    table: str | None = None,
) -> str:
    """SQL text giving `{"@iot.id":1,...` (no closing brace) for a row of `entity` under `alias`.

    `link_param` is the placeholder of the bound JSON-escaped prefix of the entity's links, `"<base>/<plural>(`
    with its opening quote (see `link_prefix`): the id, `)` and the relation's name complete each link.
    `bind` binds the member names of `$select=properties/owner` (user input, so never written into the SQL).
    `table` is what `alias` reads (as in `sql.visible_sql`).
    """
    # One concat() of many arguments instead of a chain of `||`: one result string built per row instead of one
    # per operator (1,440 Observations: 3.0 ms of database CPU instead of 3.6). concat() writes a NULL argument
    # as nothing, which is what the members left out when null need; the others are COALESCEd to 'null'.
    out = _Concat()
    select = shape.select
    if not select:
        out.text('{"@iot.id":')
        out.sql(f"{alias}.id")
        out.text(',"@iot.selfLink":')
        out.sql(link_param, f"{alias}.id")
        out.text(')"')
        for prop in entity.props[1:]:
            value = _value(prop, alias)
            if prop.wire in OMITTED_WHEN_NULL:
                out.sql(f"({_literal(',' + key(prop.wire))} || {value})")
            else:
                out.text("," + key(prop.wire))
                out.sql(f"COALESCE({value}, 'null')")
        for rel in entity.relations:
            _nav_link(out, rel, alias, link_param, table)
        return out.build()
    chosen = set(select)
    out.text("{")
    written = 0  # members so far: a comma before each one after the first

    def member(name: str) -> None:
        nonlocal written
        out.text(("," if written else "") + key(name))
        written += 1

    if chosen & {"id", "@iot.id"}:
        member("@iot.id")
        out.sql(f"{alias}.id")
    if "@iot.selfLink" in chosen:
        member("@iot.selfLink")
        out.sql(link_param, f"{alias}.id")
        out.text(')"')
    trees = _json_paths(select) if bind is not None else {}
    for prop in entity.props:
        if prop.wire != "id" and prop.wire in chosen:
            member(prop.wire)
            out.sql(f"COALESCE({_value(prop, alias)}, 'null')")
        elif prop.kind == "json" and prop.wire in trees and bind is not None:
            member(prop.wire)
            out.sql(_subset(f"{alias}.{prop.column}::jsonb", trees[prop.wire], bind))
    for rel in entity.relations:
        if rel.name in chosen:
            member(rel.name + "@iot.navigationLink")
            out.sql(link_param, f"{alias}.id")
            out.text(f')/{rel.name}"')
    return out.build()


def _nav_link(out: _Concat, rel: Relation, alias: str, link_param: str, table: str | None) -> None:
    when = link_written(rel, alias, table)
    if when == "":
        return
    name = key(rel.name + "@iot.navigationLink")
    if when is None:
        out.text("," + name)
        out.sql(link_param, f"{alias}.id")
        out.text(f')/{rel.name}"')
        return
    head, tail = _literal("," + name), _literal(f')/{rel.name}"')
    out.sql(f"CASE WHEN {when} THEN {head} || {link_param} || {alias}.id || {tail} END")


def uses_links(entity: EntityType, shape: JsonShape) -> bool:
    """Whether `members_sql` writes a link (else its `link_param` must not be bound: nothing would use it)."""
    if not shape.select:
        return True
    chosen = set(shape.select)
    return "@iot.selfLink" in chosen or any(rel.name in chosen for rel in entity.relations)


def link_prefix(shape: JsonShape, entity: EntityType) -> str:
    """The value bound for `members_sql`'s `link_param`: `"<base>/<plural>(` JSON-escaped, quote opened."""
    return orjson.dumps(f"{shape.base}/{entity.plural}(").decode()[:-1]


def close(members: str) -> str:
    """The JSON object from `members_sql`'s text (and whatever members were appended to it)."""
    return members + "}"


def append(members: str, name: str, value_json: str) -> str:
    """`members` with one more member (`name` unescaped, `value_json` already JSON)."""
    return members + ("," if len(members) > 1 else "") + key(name) + value_json


def array(objects: list[str]) -> str:
    """A JSON array of objects given as member texts (each without its closing brace)."""
    if not objects:
        return "[]"
    return "[" + "},".join(objects) + "}]"
