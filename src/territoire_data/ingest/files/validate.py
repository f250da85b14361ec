"""Row validation against a Table Schema: cell → typed value, then required/enum/pattern/min/max/length.

Converters are built once per field (closures), so the per-cell cost is one call; uniqueness is checked
set-wise in SQL by the loader, once the whole file is staged.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import date, datetime, time, tzinfo
from typing import Any

import orjson

from territoire_data.catalog.schema import FieldDef
from territoire_data.ingest.files import values as v

Converter = Callable[[str], Any]

_EMAIL = re.compile(r"[^@\s]+@[^@\s]+\.[^@\s]+")
_URI = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:\S+")
_UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")


class CellError(ValueError):
    """Why one cell is refused, with a frictionless-like error code (type-error, constraint-error)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _typed_parser(f: FieldDef, default_tz: tzinfo) -> Converter:
    """The type parser of a field (ValueError on a cell of the wrong type)."""
    kind, fmt = f.type, f.format
    if kind == "string":
        return _string_parser(fmt)
    if kind == "integer":
        return v.parse_integer
    if kind == "number":
        return v.parse_number
    if kind == "boolean":
        if f.true_values or f.false_values:
            trues = frozenset(x.lower() for x in (f.true_values or ()))
            falses = frozenset(x.lower() for x in (f.false_values or ()))
            return lambda cell: v.parse_boolean(cell, trues, falses)
        return v.parse_boolean
    if kind == "date":
        if fmt and fmt not in ("default", "any", "%Y-%m-%d") and "%" in fmt:
            pattern = fmt
            return lambda cell: _strptime(cell, pattern).date()
        return v.parse_date
    if kind == "datetime":
        if fmt and fmt not in ("default", "any") and "%" in fmt:
            pattern = fmt

            def parse_formatted(cell: str) -> datetime:
                value = _strptime(cell, pattern)
                return value if value.tzinfo else value.replace(tzinfo=default_tz)

            return parse_formatted
        return lambda cell: v.parse_datetime(cell, default_tz)
    if kind == "time":
        if fmt and fmt not in ("default", "any") and "%" in fmt:
            pattern = fmt
            return lambda cell: _strptime(cell, pattern).time()
        return v.parse_time
    if kind == "year":
        return v.parse_year
    if kind == "yearmonth":
        return v.parse_yearmonth
    if kind == "duration":
        return v.parse_duration
    if kind == "geopoint":
        return _geopoint_parser(fmt)
    if kind in ("geojson", "object", "array"):
        return _json_parser(kind)
    return lambda cell: cell  # any


def _strptime(cell: str, pattern: str) -> datetime:
    try:
        return datetime.strptime(cell.strip(), pattern)
    except ValueError:
        raise ValueError(f"'{_short(cell)}' does not match the format {pattern}") from None


def _string_parser(fmt: str | None) -> Converter:
    checks = {"email": (_EMAIL, "an email address"), "uri": (_URI, "a URI"), "uuid": (_UUID, "a UUID")}
    if fmt not in checks:
        return lambda cell: cell
    regex, what = checks[fmt]

    def parse(cell: str) -> str:
        if not regex.fullmatch(cell.strip()):
            raise ValueError(f"'{_short(cell)}' is not {what}")
        return cell

    return parse


def _geopoint_parser(fmt: str | None) -> Converter:
    def parse(cell: str) -> str:
        text = cell.strip()
        try:
            if fmt == "array":
                items = orjson.loads(text)
                if not isinstance(items, list) or len(items) != 2:
                    raise ValueError
                lon, lat = float(items[0]), float(items[1])
            elif fmt == "object":
                item = orjson.loads(text)
                lon, lat = float(item["lon"]), float(item["lat"])
            else:
                first, second = text.split(",")
                lon, lat = float(first), float(second)
        except (ValueError, TypeError, KeyError, orjson.JSONDecodeError):
            form = {"array": "[lon, lat]", "object": '{"lon": …, "lat": …}'}.get(fmt or "", "lon, lat")
            raise ValueError(f"'{_short(cell)}' is not a geopoint ({form})") from None
        if not (-180 <= lon <= 180 and -90 <= lat <= 90):
            raise ValueError(f"'{_short(cell)}' is out of range for a geopoint (lon -180..180, lat -90..90)")
        return cell

    return parse


def _json_parser(kind: str) -> Converter:
    def parse(cell: str) -> str:
        try:
            value = orjson.loads(cell)
        except orjson.JSONDecodeError:
            raise ValueError(f"'{_short(cell)}' is not valid JSON") from None
        if kind == "array" and not isinstance(value, list):
            raise ValueError("is not a JSON array")
        if kind in ("object", "geojson") and not isinstance(value, dict):
            raise ValueError("is not a JSON object")
        if kind == "geojson" and "type" not in value:
            raise ValueError("is not a GeoJSON object (no 'type')")
        return cell

    return parse


def build_converter(f: FieldDef, default_tz: tzinfo = v.PARIS) -> Converter:
    """Cell (non-empty) → staged value for the field, raising CellError with code and reason."""
    parse = _typed_parser(f, default_tz)
    checks: list[Callable[[str, Any], None]] = []
    constraints = f.constraints
    if "enum" in constraints:
        allowed = set()
        for item in constraints["enum"]:
            try:
                allowed.add(parse(str(item)) if not isinstance(item, bool | int | float) else item)
            except ValueError:
                allowed.add(item)
        listing = ", ".join(str(x) for x in constraints["enum"][:12]) + (" …" if len(constraints["enum"]) > 12 else "")

        def check_enum(cell: str, value: Any) -> None:
            if value not in allowed:
                raise CellError("constraint-error", f"'{_short(cell)}' is not one of: {listing}")

        checks.append(check_enum)
    if "pattern" in constraints and f.type in ("string", "any", "yearmonth"):
        regex = re.compile(constraints["pattern"])
        shown = constraints["pattern"]

        def check_pattern(cell: str, value: Any) -> None:
            if not regex.fullmatch(cell):
                raise CellError("constraint-error", f"'{_short(cell)}' does not match the pattern {_short(shown, 80)}")

        checks.append(check_pattern)
    for key, test, words in (
        ("minimum", lambda x, b: x >= b, "less than the minimum"),
        ("maximum", lambda x, b: x <= b, "greater than the maximum"),
        ("exclusiveMinimum", lambda x, b: x > b, "not greater than the exclusive minimum"),
        ("exclusiveMaximum", lambda x, b: x < b, "not less than the exclusive maximum"),
    ):
        if key in constraints:
            bound = _bound(constraints[key], parse)
            checks.append(_bound_check(bound, constraints[key], test, words))
    for key, fits, words in (
        ("minLength", lambda n, b: n >= b, "shorter than"),
        ("maxLength", lambda n, b: n <= b, "longer than"),
    ):
        if key in constraints:
            checks.append(_length_check(int(constraints[key]), fits, words, f.type))

    numeric_only = set(constraints) - {"required", "unique"} <= {"minimum", "maximum"}
    if f.type in ("number", "integer") and numeric_only:
        return _numeric_converter(parse, constraints.get("minimum"), constraints.get("maximum"))

    if not checks:

        def convert_plain(cell: str) -> Any:
            try:
                return parse(cell)
            except CellError:
                raise
            except ValueError as exc:
                raise CellError("type-error", str(exc)) from None

        return convert_plain

    def convert(cell: str) -> Any:
        try:
            value = parse(cell)
        except ValueError as exc:
            raise CellError("type-error", str(exc)) from None
        for check in checks:
            check(cell, value)
        return value

    return convert


def _bound(raw: Any, parse: Converter) -> Any:
    if isinstance(raw, str):
        try:
            return parse(raw)
        except ValueError:
            return raw
    return raw


def _bound_check(bound: Any, shown: Any, test: Callable[[Any, Any], bool], words: str) -> Callable[[str, Any], None]:
    def check(cell: str, value: Any) -> None:
        if not isinstance(value, int | float | date | datetime | time):
            return
        try:
            ok = test(value, bound)
        except TypeError:
            return
        if not ok:
            raise CellError("constraint-error", f"'{_short(cell)}' is {words} {shown}")

    return check


def _length_check(limit: int, fits: Callable[[int, int], bool], words: str, kind: str) -> Callable[[str, Any], None]:
    def check(cell: str, value: Any) -> None:
        size = len(orjson.loads(cell)) if kind in ("array", "object") else len(cell)
        if not fits(size, limit):
            raise CellError("constraint-error", f"'{_short(cell)}' is {words} {limit} characters")

    return check


def _numeric_converter(parse: Converter, low: Any, high: Any) -> Converter:
    """The hot path of numeric columns: parse and bounds in one call."""
    lo = float("-inf") if low is None else float(low)
    hi = float("inf") if high is None else float(high)

    def convert(cell: str) -> Any:
        try:
            value = parse(cell)
        except ValueError as exc:
            raise CellError("type-error", str(exc)) from None
        if value < lo:
            raise CellError("constraint-error", f"'{_short(cell)}' is less than the minimum {low}")
        if value > hi:
            raise CellError("constraint-error", f"'{_short(cell)}' is greater than the maximum {high}")
        return value

    return convert


class _Slow(Exception):
    """Raised by a compiled row function: this row needs the careful per-cell path (to report why)."""


def compile_row(
    fields: list[Any], mapping: list[int], default_tz: tzinfo, missing: frozenset[str], primary_key: tuple[str, ...]
) -> Callable[[list[str]], list[Any]]:
    """One straight-line function converting a whole valid row, for the hot path of big files.

    It only handles rows that are valid: on anything unusual it raises and the caller takes the per-cell path,
    which reports each problem precisely. The generated code holds no name or value from the file: only
    column indexes and references to our own converters and bounds, passed in its namespace.
    """
    namespace: dict[str, Any] = {
        "_Slow": _Slow,
        "_MISSING": missing,
        "_iso": datetime.fromisoformat,
        "_tz": default_tz,
    }
    lines = ["def convert_row(cells):"]
    outputs: list[str] = []
    for index, (f, column) in enumerate(zip(fields, mapping, strict=True)):
        value = f"v{index}"
        outputs.append(value)
        required = f.required or f.name in primary_key
        if column < 0:
            if required:
                lines.append("    raise _Slow")
            lines.append(f"    {value} = None")
            continue
        lines.append(f"    x = cells[{column}]")
        lines.append("    if x in _MISSING or x.isspace():")
        lines.append("        raise _Slow" if required else f"        {value} = None")
        lines.append("    else:")
        constraints = set(f.constraints) - {"required", "unique"}
        if (
            f.type == "string"
            and constraints <= {"enum", "pattern", "minLength", "maxLength"}
            and f.format
            in (
                None,
                "default",
            )
        ):
            # Checks inlined; a failing one sends the row to the careful path, which says why.
            if "enum" in constraints:
                namespace[f"_e{index}"] = frozenset(str(item) for item in f.constraints["enum"])
                lines.append(f"        if x not in _e{index}:")
                lines.append("            raise _Slow")
            if "pattern" in constraints:
                namespace[f"_p{index}"] = re.compile(f.constraints["pattern"]).fullmatch
                lines.append(f"        if _p{index}(x) is None:")
                lines.append("            raise _Slow")
            for key, op in (("minLength", "<"), ("maxLength", ">")):
                if key in constraints:
                    lines.append(f"        if len(x) {op} {int(f.constraints[key])}:")
                    lines.append("            raise _Slow")
            lines.append(f"        {value} = x")
        elif f.type in ("number", "integer") and constraints <= {"minimum", "maximum"}:
            cast = "float(x.replace(',', '.'))" if f.type == "number" else "int(x)"
            lines.append("        if '_' in x or not x.isascii():")
            lines.append("            raise _Slow")
            lines.append(f"        {value} = {cast}")
            for key, op in (("minimum", "<"), ("maximum", ">")):
                if key in f.constraints:
                    namespace[f"_b{index}{key[:3]}"] = float(f.constraints[key])
                    lines.append(f"        if {value} {op} _b{index}{key[:3]}:")
                    lines.append("            raise _Slow")
        elif f.type == "datetime" and not constraints and f.format in (None, "default", "any"):
            lines.append(f"        {value} = _iso(x)")
            lines.append(f"        if {value}.tzinfo is None:")
            lines.append(f"            {value} = {value}.replace(tzinfo=_tz)")
        else:
            namespace[f"_c{index}"] = build_converter(f, default_tz)
            lines.append(f"        {value} = _c{index}(x)")
    lines.append(f"    return [{', '.join(outputs)}]")
    exec("\n".join(lines), namespace)  # noqa: S102 - our own code, built from indexes only
    function: Callable[[list[str]], list[Any]] = namespace["convert_row"]
    return function
