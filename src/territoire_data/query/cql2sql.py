"""CQL2 (text or JSON) -> one expression tree (CQL2-JSON, parsed by the `cql2` package) -> SQL of our own.

The `cql2` package parses and validates both encodings into the same CQL2-JSON tree; this module walks that
tree and writes SQL: values are bound parameters, identifiers come only from the collection's fields, and
query geometries are transformed into the column's CRS (never the column) so the GiST index is used.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import cql2
import orjson

from territoire_data.db.params import Params
from territoire_data.errors import BadRequestError
from territoire_data.query.collections import Collection, Field
from territoire_data.query.crs import DEFAULT, Crs, input_geometry_sql
from territoire_data.querylimits import QueryLimits, check_json_tree, current_limits

GEOMETRY_NAMES = ("geometry", "geom")
ID_NAMES = ("id", "_fid")

_COMPARISONS = {"=": "=", "<>": "<>", "<": "<", ">": ">", "<=": "<=", ">=": ">="}
_ARITHMETIC = {"+": "+", "-": "-", "*": "*", "/": "/", "%": "%", "div": "div", "^": "^"}
_SPATIAL = {
    "s_intersects": "ST_Intersects",
    "s_within": "ST_Within",
    "s_contains": "ST_Contains",
    "s_disjoint": "ST_Disjoint",
    "s_equals": "ST_Equals",
    "s_touches": "ST_Touches",
    "s_overlaps": "ST_Overlaps",
    "s_crosses": "ST_Crosses",
}
_TEMPORAL = ("t_intersects", "t_before", "t_after", "t_equals", "t_during", "t_disjoint")
_METRES = {"meters": 1.0, "metres": 1.0, "m": 1.0, "meter": 1.0, "kilometers": 1000.0, "km": 1000.0}

# What our SQL understands, for the conformance declaration.
CONFORMANCE = (
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-text",
    "http://www.opengis.net/spec/cql2/1.0/conf/cql2-json",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-cql2",
    "http://www.opengis.net/spec/cql2/1.0/conf/advanced-comparison-operators",
    "http://www.opengis.net/spec/cql2/1.0/conf/case-insensitive-comparison",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/basic-spatial-functions-plus",
    "http://www.opengis.net/spec/cql2/1.0/conf/spatial-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/temporal-functions",
    "http://www.opengis.net/spec/cql2/1.0/conf/arithmetic",
)


# `cql-text` is the draft's name that GDAL 3.6 and older QGIS send; its comparisons are CQL2 text.
FILTER_LANGS = ("cql2-text", "cql2-json", "cql-text")


# Tokens of CQL2 text that nest: the `cql2` parser recurses on them (and crashes the process, past about 1,500
# levels), so their depth is measured here first. Strings and quoted identifiers are skipped.
_NESTING = re.compile(
    r"'(?:[^']|'')*'|\"[^\"]*\"|(?P<open>\()|(?P<close>\))|(?P<prefix>[-+]|\bnot\b)|[^\s()'\"+-]+", re.I
)


def text_nesting(text: str) -> int:
    """The deepest nesting of CQL2 text: open parentheses plus a run of prefix operators (`-`, `+`, NOT)."""
    deepest = depth = run = 0
    for match in _NESTING.finditer(text):
        if match.group("open"):
            depth += 1
        elif match.group("close"):
            depth -= 1
            run = 0
        elif match.group("prefix"):
            run += 1
        else:
            run = 0
        deepest = max(deepest, depth + run)
    return deepest


def parse(
    text: str, lang: str | None = None, *, parameter: str = "filter", limits: QueryLimits | None = None
) -> dict[str, Any]:
    """CQL2 text or JSON (by `filter-lang`, or guessed from the first character) -> CQL2-JSON tree, refused
    with a 400 when it is over one of `limits` (measured before the `cql2` parser sees it)."""
    limits = limits or current_limits()
    lang = (lang or ("cql2-json" if text.lstrip().startswith("{") else "cql2-text")).lower()
    try:
        if lang in ("cql2-text", "cql-text"):
            limits.check(parameter, "filter_max_depth", "the nesting depth", text_nesting(text))
            expr = cql2.parse_text(text)
        elif lang == "cql2-json":
            check_json_tree(orjson.loads(text), limits, parameter)
            expr = cql2.parse_json(text)
        else:
            raise BadRequestError(f"filter-lang: {lang!r} is not supported (cql2-text, cql2-json)")
        tree = expr.to_json()
    except (ValueError, cql2.ParseError, cql2.ValidationError) as exc:
        raise BadRequestError(f"{parameter}: invalid {lang}: {str(exc).splitlines()[0][:300]}") from None
    except RecursionError:  # a long chain of arithmetic operators nests deeply on the left
        raise BadRequestError(f"{parameter}: the expression nests too deeply") from None
    if not isinstance(tree, dict):
        raise BadRequestError(f"{parameter}: a CQL2 expression must be a predicate")
    check_json_tree(tree, limits, parameter)
    return tree


class Compiler:
    """Writes SQL for one collection; `filter_crs` is the CRS of geometry literals (default CRS84)."""

    def __init__(self, collection: Collection, params: Params, filter_crs: Crs = DEFAULT) -> None:
        self.collection = collection
        self.params = params
        self.filter_crs = filter_crs

    # --- predicates ------------------------------------------------------------------------------------
    def predicate(self, node: Any) -> str:
        if isinstance(node, bool):
            return "TRUE" if node else "FALSE"
        if isinstance(node, dict) and "property" in node:
            field = self._field_of(node)
            if field is None or field.type != "boolean":
                raise BadRequestError(f"filter: {node['property']!r} is not a boolean property")
            return field.sql
        if not isinstance(node, dict) or "op" not in node:
            raise BadRequestError("filter: expected a predicate")
        op = str(node["op"]).lower()
        args: list[Any] = list(node.get("args", []))
        if op in ("and", "or"):
            if len(args) < 2:
                raise BadRequestError(f"filter: {op} needs at least two arguments")
            return "(" + f" {op.upper()} ".join(self.predicate(a) for a in args) + ")"
        if op == "not":
            self._arity(op, args, 1)
            return f"(NOT {self.predicate(args[0])})"
        if op in _COMPARISONS:
            self._arity(op, args, 2)
            left, right = self._pair(args[0], args[1])
            return f"({left} {_COMPARISONS[op]} {right})"
        if op == "like":
            self._arity(op, args, 2)
            return f"({self.scalar(args[0])}::text LIKE {self.scalar(args[1])}::text)"
        if op == "between":
            self._arity(op, args, 3)
            value = self.scalar(args[0])
            hint = self._field_of(args[0])
            return f"({value} BETWEEN {self.scalar(args[1], hint)} AND {self.scalar(args[2], hint)})"
        if op == "in":
            self._arity(op, args, 2)
            if not isinstance(args[1], list) or not args[1]:
                raise BadRequestError("filter: IN needs a non-empty list")
            hint = self._field_of(args[0])
            items = ", ".join(self.scalar(a, hint) for a in args[1])
            return f"({self.scalar(args[0])} IN ({items}))"
        if op == "isnull":
            self._arity(op, args, 1)
            return f"({self.scalar(args[0])} IS NULL)"
        if op in _SPATIAL:
            self._arity(op, args, 2)
            return self._spatial(_SPATIAL[op], args[0], args[1])
        if op == "s_dwithin":
            return self._dwithin(args)
        if op in _TEMPORAL:
            self._arity(op, args, 2)
            return self._temporal(op, args[0], args[1])
        raise BadRequestError(f"filter: operator {node['op']!r} is not supported")

    @staticmethod
    def _arity(op: str, args: Sequence[Any], n: int) -> None:
        if len(args) != n:
            raise BadRequestError(f"filter: {op} takes {n} arguments, got {len(args)}")

    # --- scalar expressions ----------------------------------------------------------------------------
    def _field_of(self, node: Any) -> Field | None:
        if isinstance(node, dict) and "property" in node:
            name = node["property"]
            return self.collection.field(name) if isinstance(name, str) else None
        return None

    def _pair(self, a: Any, b: Any) -> tuple[str, str]:
        """Both sides of a comparison; a string literal takes the type of the property it is compared with."""
        return self.scalar(a, self._field_of(b)), self.scalar(b, self._field_of(a))

    def property_sql(self, name: Any) -> str:
        if not isinstance(name, str):
            raise BadRequestError("filter: a property name must be a string")
        found = self.collection.field(name)
        if found is not None:
            return found.sql
        if name in ID_NAMES:
            return "t._fid"
        if name in GEOMETRY_NAMES:
            return "t.geom"
        raise BadRequestError(f"filter: unknown property {name!r}; see the collection's queryables")

    def scalar(self, node: Any, hint: Field | None = None) -> str:
        if isinstance(node, bool):
            return self.params.add(node, "boolean")
        if isinstance(node, int | float) and hint is not None and hint.type == "boolean":
            return self.params.add(node != 0, "boolean")  # GDAL writes booleans as 0 and 1
        if isinstance(node, int | float):
            if hint is not None and hint.pg_type in ("bigint", "integer") and float(node).is_integer():
                return self.params.add(int(node), "bigint")  # same type as the column: its index stays usable
            return self.params.add(float(node), "float8")
        if isinstance(node, str):
            return self.params.text_as(node, hint.pg_type if hint and hint.pg_type not in ("jsonb",) else "text")
        if isinstance(node, dict):
            if "property" in node:
                return self.property_sql(node["property"])
            if "date" in node:
                return self.params.text_as(str(node["date"]), "date")
            if "timestamp" in node:
                return self.params.text_as(str(node["timestamp"]), "timestamptz")
            if "op" in node:
                op = str(node["op"]).lower()
                args = list(node.get("args", []))
                if op in _ARITHMETIC:
                    self._arity(op, args, 2)
                    left, right = self.scalar(args[0]), self.scalar(args[1])
                    if op == "/":
                        return f"({left}::float8 / NULLIF({right}, 0)::float8)"
                    if op == "div":
                        return f"div({left}::numeric, NULLIF({right}, 0)::numeric)"
                    if op == "%":
                        return f"mod({left}::numeric, NULLIF({right}, 0)::numeric)"
                    return f"({left} {_ARITHMETIC[op]} {right})"
                if op == "casei":
                    self._arity(op, args, 1)
                    return f"lower({self.scalar(args[0])}::text)"
                return self.predicate(node)
            if "type" in node or "bbox" in node:
                return self.geometry(node)
        raise BadRequestError(f"filter: unsupported operand {orjson.dumps(node).decode()[:100]}")

    # --- spatial -----------------------------------------------------------------------------------------
    def geometry(self, node: Any) -> str:
        """A geometry operand: the geometry column, or a literal moved from `filter-crs` into EPSG:4326."""
        if isinstance(node, dict) and "property" in node:
            sql = self.property_sql(node["property"])
            if sql != "t.geom":
                raise BadRequestError(f"filter: {node['property']!r} is not a geometry")
            return sql
        if isinstance(node, dict) and "bbox" in node:
            box = [float(v) for v in node["bbox"]]
            if len(box) == 6:
                box = [box[0], box[1], box[3], box[4]]
            if len(box) != 4:
                raise BadRequestError("filter: BBOX needs 4 or 6 numbers")
            envelope = "ST_MakeEnvelope(" + ", ".join(self.params.add(v, "float8") for v in box) + ")"
            return input_geometry_sql(envelope, self.filter_crs)
        if isinstance(node, dict) and "type" in node:
            literal = f"ST_GeomFromGeoJSON({self.params.add(orjson.dumps(node).decode(), 'text')})"
            return input_geometry_sql(literal, self.filter_crs)
        raise BadRequestError("filter: a spatial function needs geometries")

    def _spatial(self, function: str, a: Any, b: Any) -> str:
        return f"{function}({self.geometry(a)}, {self.geometry(b)})"

    def _dwithin(self, args: list[Any]) -> str:
        if len(args) not in (3, 4):
            raise BadRequestError("filter: S_DWITHIN takes two geometries, a distance and optional units")
        a, b = self.geometry(args[0]), self.geometry(args[1])
        if not isinstance(args[2], int | float) or isinstance(args[2], bool) or args[2] < 0:
            raise BadRequestError("filter: S_DWITHIN distance must be a non-negative number")
        unit = args[3] if len(args) == 4 else "meters"
        if isinstance(unit, dict):
            unit = unit.get("property")
        factor = _METRES.get(str(unit).lower())
        if factor is None:
            raise BadRequestError(f"filter: S_DWITHIN units {unit!r} not supported (meters, kilometers)")
        metres = self.params.add(float(args[2]) * factor, "float8")
        column, literal = (a, b) if a == "t.geom" else (b, a)
        # Distances in metres on the spheroid; the bounding-box test in degrees lets the GiST index answer first.
        dlat = f"({metres} / 110574.0 + 1e-9)"
        dlon = (
            f"({metres} / (111320.0 * greatest(cos(radians(least(89.9, greatest(abs(ST_YMin({literal})), "
            f"abs(ST_YMax({literal}))) + {dlat}))), 0.001)) + 1e-9)"
        )
        return (
            f"({column} && ST_Expand({literal}, {dlon}, {dlat}) "
            f"AND ST_DWithin({column}::geography, {literal}::geography, {metres}))"
        )

    # --- temporal ----------------------------------------------------------------------------------------
    def _temporal(self, op: str, a: Any, b: Any) -> str:
        if isinstance(a, dict) and ("interval" in a or "timestamp" in a or "date" in a):
            a, b = b, a
        value = self.scalar(a)
        field = self._field_of(a)
        pg_type = field.pg_type if field and field.is_temporal else "timestamptz"
        if isinstance(b, dict) and "interval" in b:
            bounds = b["interval"]
            if not isinstance(bounds, list) or len(bounds) != 2:
                raise BadRequestError("filter: INTERVAL needs two bounds")
            start, end = (self._instant(x, pg_type) for x in bounds)
        else:
            start = end = self._instant(b, pg_type)
        parts: list[str]
        if op in ("t_intersects", "t_equals", "t_disjoint"):
            if op == "t_equals" and start != end:
                parts = ["FALSE"] if start is None or end is None else [f"{value} = {start}", f"{value} = {end}"]
            else:
                parts = [p for p in (start and f"{value} >= {start}", end and f"{value} <= {end}") if p]
            condition = " AND ".join(parts) or f"{value} IS NOT NULL"
            return f"(NOT ({condition}))" if op == "t_disjoint" else f"({condition})"
        if op == "t_before":
            if start is None:
                return "FALSE"
            return f"({value} < {start})"
        if op == "t_after":
            if end is None:
                return "FALSE"
            return f"({value} > {end})"
        # t_during: strictly inside the interval
        parts = [p for p in (start and f"{value} > {start}", end and f"{value} < {end}") if p]
        return "(" + (" AND ".join(parts) or f"{value} IS NOT NULL") + ")"

    def _instant(self, node: Any, pg_type: str) -> str | None:
        if node in ("..", None, ""):
            return None
        if isinstance(node, dict) and ("timestamp" in node or "date" in node):
            return self.params.text_as(str(node.get("timestamp", node.get("date"))), pg_type)
        if isinstance(node, str):
            return self.params.text_as(node, pg_type)
        if isinstance(node, dict) and "property" in node:
            return self.property_sql(node["property"])
        raise BadRequestError("filter: a temporal function needs instants or intervals")


def to_sql(tree: dict[str, Any], collection: Collection, params: Params, filter_crs: Crs = DEFAULT) -> str:
    """SQL for a CQL2-JSON predicate on `collection` (rows aliased `t`)."""
    return Compiler(collection, params, filter_crs).predicate(tree)
