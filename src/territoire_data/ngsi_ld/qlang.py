"""The NGSI-LD query language (clause 4.9: `q`), `scopeQ` (4.19) and `geoQ` (4.10): parsed, then compiled to SQL.

`q` is parsed by a lark grammar into a tree, then compiled against an `attrs` jsonb column holding normalized
attributes by expanded name (`model`): both the entities of `ngsild_entity` and the sensor entities built from
Things and Datastreams (`sensors`) have that shape, so one compiler serves both. Values are always bound
parameters; attribute names are expanded with the request's @context first.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from functools import cache
from typing import Any

from lark import Lark, Token, Tree
from lark.exceptions import LarkError

from territoire_data.db.params import Params
from territoire_data.ngsi_ld.contexts import ActiveContext
from territoire_data.ngsi_ld.errors import BadRequestData
from territoire_data.ngsi_ld.model import check_geometry

GRAMMAR = r"""
?start: disjunction
?disjunction: conjunction ("|" conjunction)*
?conjunction: atom (";" atom)*
?atom: "(" disjunction ")" -> group
     | term
term: path (OP value)?
path: attrpath ("[" keypath "]")?
attrpath: NAME ("." NAME)*
keypath: NAME ("." NAME)*
?value: range | list | single
range: single ".." single
list: single ("," single)+
?single: STRING -> string
       | NUMBER -> number
       | BARE -> bare
OP: "==" | "!=" | ">=" | "<=" | ">" | "<" | "~=" | "!~="
NAME: /[A-Za-z0-9_@:\/#\-]+(?<!\.)/
STRING: /"(\\.|[^"\\])*"/ | /'(\\.|[^'\\])*'/
NUMBER.2: /-?\d+(\.\d+)?([eE][+-]?\d+)?(?![\w:\-])/
BARE: /[^\s"';|()\[\],.=!<>~][^\s"';|()\[\],=!<>~]*?(?=\.\.|[;|),]|$)/
%ignore /\s+/
"""

_TIME_MEMBERS = ("observedAt", "createdAt", "modifiedAt", "deletedAt")
_MEMBERS = frozenset({*_TIME_MEMBERS, "unitCode", "datasetId", "objectType", "lang"})
MAX_Q_LENGTH = 4096


@cache
def _parser() -> Lark:
    return Lark(GRAMMAR, parser="lalr", maybe_placeholders=False)


@dataclass
class Compiler:
    ctx: ActiveContext
    params: Params
    attrs_sql: str = "e.attrs"

    def compile_q(self, text: str) -> str:
        if len(text) > MAX_Q_LENGTH:
            raise BadRequestData(f"q is longer than {MAX_Q_LENGTH} characters")
        try:
            tree = _parser().parse(text)
        except LarkError as exc:
            raise BadRequestData(f"invalid q: {str(exc).splitlines()[0][:200]}") from None
        return self._node(tree)

    def _node(self, node: Tree[Any] | Token) -> str:
        assert isinstance(node, Tree)
        if node.data == "disjunction":
            return "(" + " OR ".join(self._node(c) for c in node.children) + ")"
        if node.data == "conjunction":
            return "(" + " AND ".join(self._node(c) for c in node.children) + ")"
        if node.data == "group":
            return self._node(node.children[0])
        if node.data == "term":
            return self._term(node)
        raise BadRequestData(f"invalid q near {node.data}")

    def _term(self, node: Tree[Any]) -> str:
        path = node.children[0]
        assert isinstance(path, Tree)
        attr_path, keys = _split_path(path)
        attr = self.ctx.expand(attr_path[0])
        node_sql = "i"
        member: str | None = None
        for sub in attr_path[1:]:
            if sub in _MEMBERS:
                member = sub
                break
            node_sql = f"({node_sql} -> {self.params.add(self.ctx.expand(sub), 'text')})"
        if member is not None:
            target = f"({node_sql} -> {self.params.add(member, 'text')})"
        else:
            target = (
                f"COALESCE({node_sql} -> 'value', {node_sql} -> 'object', {node_sql} -> 'valueList', "
                f"{node_sql} -> 'vocab', {node_sql} -> 'json', {node_sql} -> 'languageMap' -> '@none', "
                f"(SELECT l.value FROM jsonb_each({node_sql} -> 'languageMap') l LIMIT 1))"
            )
        if keys:
            target = f"({target} #> {self.params.add(keys, 'text[]')})"
        instances = f"jsonb_array_elements(COALESCE({self.attrs_sql} -> {self.params.add(attr, 'text')}, '[]'))"
        if len(node.children) == 1:
            condition = "q.v IS NOT NULL"
        else:
            op = str(node.children[1])
            condition = self._comparison("q.v", op, node.children[2], member)
        return (
            f"EXISTS (SELECT 1 FROM {instances} AS n(i), LATERAL (SELECT {target} AS t) r, "
            f"LATERAL (SELECT COALESCE(r.t -> '@value', r.t) AS v) q WHERE {condition})"
        )

    def _comparison(self, target: str, op: str, value: Tree[Any] | Token, member: str | None) -> str:
        if op in ("~=", "!~="):
            pattern = _scalar(value)
            if not isinstance(pattern, str):
                raise BadRequestData("a pattern (~=) needs a string")
            _check_regex(pattern)
            test = f"({target} #>> '{{}}') ~ {self.params.add(pattern, 'text')}"
            return test if op == "~=" else f"NOT ({test})"
        assert isinstance(value, Tree)
        if value.data == "range":
            if op not in ("==", "!="):
                raise BadRequestData("a range (a..b) goes with == or !=")
            low, high = (self._literal(v) for v in value.children)
            test = f"({target} >= {low} AND {target} <= {high})"
            return test if op == "==" else f"NOT {test}"
        if value.data == "list":
            if op not in ("==", "!="):
                raise BadRequestData("a list (a,b) goes with == or !=")
            tests = [self._equal(target, self._literal(v)) for v in value.children]
            test = "(" + " OR ".join(tests) + ")"
            return test if op == "==" else f"NOT {test}"
        literal = self._literal(value)
        if op == "==":
            return self._equal(target, literal)
        if op == "!=":
            return f"NOT {self._equal(target, literal)}"
        # jsonb orders numbers as numbers and strings (ISO instants among them) as text; types never mix
        return f"(jsonb_typeof({target}) = jsonb_typeof({literal}) AND {target} {op} {literal})"

    @staticmethod
    def _equal(target: str, literal: str) -> str:
        return (
            f"({target} = {literal} OR (jsonb_typeof({target}) = 'array' AND {target} @> jsonb_build_array({literal})))"
        )

    def _literal(self, value: Tree[Any] | Token) -> str:
        return self.params.add(_scalar(value), "jsonb")


def _split_path(path: Tree[Any]) -> tuple[list[str], list[str]]:
    """`a.b[c.d]` -> (["a", "b"], ["c", "d"])."""
    parts = [[str(t) for t in child.children] for child in path.children if isinstance(child, Tree)]
    return parts[0], parts[1] if len(parts) > 1 else []


def _scalar(value: Tree[Any] | Token) -> Any:
    assert isinstance(value, Tree)
    token = str(value.children[0])
    if value.data == "number":
        number = float(token)
        return int(number) if number.is_integer() and "." not in token and "e" not in token.lower() else number
    if value.data == "string":
        return json.loads(token) if token.startswith('"') else token[1:-1]
    return {"true": True, "false": False}.get(token, token)


def _check_regex(pattern: str) -> None:
    if len(pattern) > 1000:
        raise BadRequestData("pattern too long")
    try:
        re.compile(pattern)
    except re.error:
        raise BadRequestData(f"invalid pattern {pattern[:80]!r}") from None


# --- scopeQ ------------------------------------------------------------------------------------------------------


def compile_scope_q(text: str, params: Params, scopes_sql: str = "e.scopes") -> str:
    """`/Madrid/+,/Nantes/#;/Public` -> SQL over a text[] of scopes (`,` or, `;` and)."""
    ors = []
    for alternative in text.split(","):
        ands = []
        for term in alternative.split(";"):
            term = term.strip()
            if not re.fullmatch(r"(/([^/#+\s]+|\+))*(/#)?|/#", term) or not term:
                raise BadRequestData(f"invalid scopeQ term {term[:80]!r}")
            if term == "/#":
                ands.append(f"{scopes_sql} IS NOT NULL")
                continue
            regex = "^" + re.escape(term).replace(r"/\+", "/[^/]+").replace(r"/\#", "(/.+)?") + "$"
            ands.append(f"EXISTS (SELECT 1 FROM unnest({scopes_sql}) s WHERE s ~ {params.add(regex, 'text')})")
        ors.append("(" + " AND ".join(ands) + ")")
    return "(" + " OR ".join(ors) + ")"


# --- geoQ --------------------------------------------------------------------------------------------------------

GEOMETRIES = ("Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon")


@dataclass(frozen=True)
class GeoQuery:
    georel: str
    geometry: dict[str, Any]
    geoproperty: str  # compact name
    distance: tuple[str, float] | None = None  # ("max" | "min", metres)


def parse_geo_query(georel: str | None, geometry: str | None, coordinates: Any, geoproperty: str | None) -> GeoQuery:
    if not georel or not geometry or coordinates is None:
        raise BadRequestData("geoQ needs georel, geometry and coordinates")
    if geometry not in GEOMETRIES:
        raise BadRequestData(f"unsupported geometry {geometry[:40]!r}")
    if isinstance(coordinates, str):
        try:
            coordinates = json.loads(coordinates)
        except ValueError:
            raise BadRequestData("coordinates must be a JSON array") from None
    if not isinstance(coordinates, list):
        raise BadRequestData("coordinates must be a JSON array")
    parts = georel.split(";")
    relation = parts[0]
    distance: tuple[str, float] | None = None
    if relation == "near":
        match = re.fullmatch(r"(max|min)Distance==(\d+(\.\d+)?)", parts[1] if len(parts) == 2 else "")
        if not match:
            raise BadRequestData("near needs ;maxDistance==<metres> or ;minDistance==<metres>")
        distance = (match.group(1), float(match.group(2)))
    elif relation not in ("within", "contains", "intersects", "equals", "disjoint", "overlaps") or len(parts) != 1:
        raise BadRequestData(f"invalid georel {georel[:60]!r}")
    shape = {"type": geometry, "coordinates": coordinates}
    check_geometry(shape, "geoQ")
    return GeoQuery(relation, shape, geoproperty or "location", distance)


def compile_geo_query(geo: GeoQuery, params: Params, geom_sql: str) -> str:
    query = f"ST_SetSRID(ST_GeomFromGeoJSON({params.add(json.dumps(geo.geometry), 'text')}), 4326)"
    if geo.distance is not None:
        kind, metres = geo.distance
        near = f"ST_DWithin({geom_sql}::geography, {query}::geography, {params.add(metres, 'float8')})"
        return near if kind == "max" else f"NOT {near}"
    function = {
        "within": "ST_Within",
        "contains": "ST_Contains",
        "intersects": "ST_Intersects",
        "equals": "ST_Equals",
        "disjoint": "ST_Disjoint",
        "overlaps": "ST_Overlaps",
    }[geo.georel]
    return f"{function}({geom_sql}, {query})"
