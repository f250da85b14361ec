"""The fast path of CSV imports: the file goes into a text staging table by COPY at PostgreSQL's own CSV speed, then
one INSERT … SELECT casts, checks and geolocates every row set-wise.

It is optimistic and conservative: SQL only vouches for cells written in the plain forms it converts exactly as the
Python parsers would (same value, same verdict). When any row is not vouched for, or PostgreSQL's parser disagrees
with the file (ragged rows, bad bytes), the attempt is rolled back to its savepoint and the careful per-row path
(loader._pipeline) reads the file again and reports each problem with its line, column and reason. A clean file
thus costs no Python per row; a doubtful one costs what it always did.
"""

from __future__ import annotations

import codecs
import csv
import io
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, BinaryIO

import asyncpg

from territoire_data.catalog.datasets import stats_sql
from territoire_data.catalog.schema import FieldDef, TableSchema
from territoire_data.db.bulk import quote_ident
from territoire_data.db.params import Params
from territoire_data.ingest.files.geometry import GeometrySpec, Reprojector
from territoire_data.ingest.files.sources import CsvSource, Record
from territoire_data.ingest.files.values import FALSE_WORDS, TRUE_WORDS

RAW = "_td_import_raw"
SEQ = "__td_n"
_CHUNK = 1 << 20
_RECORDS_PER_CHUNK = 20_000
# Every character Python's str.isspace() accepts: a cell of only these is empty for the careful path too. All are
# below U+3001 (a unit test checks the whole of Unicode): scanning that far only keeps the CLI's start quick.
WHITESPACE_END = 0x3001
WHITESPACE = "".join(chr(c) for c in range(WHITESPACE_END) if chr(c).isspace())
_COPY_ENCODINGS = {"utf-8": "UTF8", "utf-8-sig": "UTF8", "cp1252": "WIN1252", "latin-1": "LATIN1"}
_PLAIN_STRING = frozenset({"required", "unique", "enum", "minLength", "maxLength"})
_KEYS_ONLY = frozenset({"required", "unique"})
_NUMERIC = frozenset({"required", "unique", "minimum", "maximum"})
# The shapes (digits written 9) of the dates and datetimes PostgreSQL reads exactly as date.fromisoformat, our
# French date parser and datetime.fromisoformat do. translate() is exact and several times cheaper than a regex.
_DATE_SHAPES = ["9999-99-99", "99/99/9999", "99.99.9999", "99-99-9999"]
_DATETIME_SHAPES = [
    f"9999-99-99{sep}99:99{seconds}{zone}"
    for sep in ("T", " ")
    for seconds in ("", ":99", ":99.999", ":99.999999")
    for zone in ("", "Z", "+99:99", "-99:99")
]
_AS_NINES = "translate({}, '0123456789', '9999999999')"
# The same forms as byte patterns, hours below 24 and seconds below 60 included: checked by the reading thread on
# each chunk the file sends as it is (beside the server's COPY), they spare the server its translate() per cell.
_SHAPED = frozenset({"year", "date", "datetime", "number", "integer"})
_BYTE_SHAPES = {
    "integer": rb"[0-9+\- ]*",  # what the PostgreSQL 16 guard lets through
    "year": rb"[0-9]{4}",
    "date": rb"[0-9]{4}-[0-9]{2}-[0-9]{2}|[0-9]{2}[/.-][0-9]{2}[/.-][0-9]{4}",
    "datetime": rb"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]"
    rb"(?::[0-5][0-9](?:\.[0-9]{3}|\.[0-9]{6})?)?(?:Z|[+-][0-9]{2}:[0-9]{2})?",
}
_POINT_KINDS = frozenset({"lonlat", "latlon", "lonlat_array"})
# Projected CRSs on RGF93, whose datum is WGS84 for PROJ: PostGIS and pyproj agree on them without grids.
_SQL_CRS = {"EPSG:4326": 4326, "EPSG:2154": 2154, **{f"EPSG:{code}": code for code in range(3942, 3951)}}


@dataclass(frozen=True)
class CopyDialect:
    """A CSV file's dialect as the set-based paths send it: COPY's delimiter and encoding name, the quote
    character's bytes and the Python codec of the text (a BOM already skipped with the header)."""

    delimiter: str
    quote: bytes
    copy_encoding: str
    encoding: str


def copy_dialect(source: CsvSource) -> CopyDialect:
    dialect = source.file.dialect
    encoding = "utf-8" if dialect.encoding == "utf-8-sig" else dialect.encoding
    quote = dialect.quotechar.encode(encoding)
    return CopyDialect(dialect.delimiter, quote, _COPY_ENCODINGS[dialect.encoding], encoding)


class NotVouched(Exception):
    """The set-based attempt cannot vouch for every row: roll it back and take the careful path."""


class _Sql(Params):
    """Parameters bound once for the whole statement, referenced as $n from the generated expressions."""

    def __init__(self) -> None:
        super().__init__()
        self.missing = ""


@dataclass(frozen=True)
class FastPlan:
    """What the set-based path needs: the file's columns and, per schema field, its file column (-1 absent)."""

    ncols: int
    extra_column: bool
    mapping: list[int]
    geometry: tuple[str, tuple[int, ...]] | None  # (GeometrySpec kind, header indexes of its columns)
    srid: int
    reuse: tuple[int, int] | None = None  # lon and lat are these number fields: their values are the point's
    shaped: dict[int, str] = field(default_factory=dict)  # file column → its field's type, when its shape is checked


def plan(
    source: object,
    schema: TableSchema,
    mapping: list[int],
    spec: GeometrySpec | None,
    projection: Reprojector,
    sample: list[Record],
) -> FastPlan | None:
    """A plan when every field, constraint and the geometry are of the kinds SQL converts exactly; else None."""
    if not isinstance(source, CsvSource) or source.file.dialect.encoding not in _COPY_ENCODINGS or not sample:
        return None
    if not all(_supported(f) for f in schema.fields):
        return None
    if any(
        column < 0 and (f.required or f.name in schema.primary_key)
        for f, column in zip(schema.fields, mapping, strict=True)
    ):
        return None
    geometry: tuple[str, tuple[int, ...]] | None = None
    srid = 4326
    if spec is not None:
        west, _, east, _ = projection.bounds
        if spec.kind not in _POINT_KINDS or projection.crs.upper() not in _SQL_CRS or west > east:
            return None
        srid = _SQL_CRS[projection.crs.upper()]
        geometry = (spec.kind, tuple(source.header.index(c) for c in spec.columns))
    ncols = len(source.header)
    first = sample[0][1]
    # Files whose every line ends with the delimiter: one more, empty, column (PostgreSQL's parser wants it).
    extra = len(first) == ncols + 1 and first[-1] == ""
    if len(first) != ncols and not extra:
        return None
    reuse = None
    if spec is not None and spec.kind == "lonlat":
        names = schema.names
        fields = [names.index(c) if c in names else -1 for c in spec.columns]
        if all(i >= 0 and schema.fields[i].type == "number" for i in fields) and [mapping[i] for i in fields] == list(
            geometry[1] if geometry else ()
        ):
            reuse = (fields[0], fields[1])
    shaped = {
        column: f.type for f, column in zip(schema.fields, mapping, strict=True) if column >= 0 and f.type in _SHAPED
    }
    return FastPlan(ncols, extra, mapping, geometry, srid, reuse, shaped)


def _supported(f: FieldDef) -> bool:
    names = set(f.constraints)
    if f.type == "string":
        enum = f.constraints.get("enum")
        return (
            f.format in (None, "default")
            and names <= _PLAIN_STRING
            and (enum is None or all(isinstance(item, str) for item in enum))
            and all(isinstance(f.constraints.get(k, 0), int) for k in ("minLength", "maxLength"))
        )
    if f.type in ("integer", "number"):
        return names <= _NUMERIC and all(
            isinstance(f.constraints.get(k, 0), int | float) and not isinstance(f.constraints.get(k), bool)
            for k in ("minimum", "maximum")
        )
    if f.type == "boolean":
        words = (f.true_values or ()) + (f.false_values or ())
        return names <= _KEYS_ONLY and all(w.isascii() for w in words)
    if f.type in ("date", "datetime", "year", "any"):
        return names <= _KEYS_ONLY and f.format in (None, "default", "any")
    return False


# --- the file into the raw table -------------------------------------------------------------------------


def line_chunks(handle: BinaryIO, size: int | None = None) -> Iterator[bytes]:
    """The next `size` bytes of `handle` (None: up to the end) in chunks of whole lines, the last one perhaps
    without its newline."""
    carry = b""
    while True:
        want = _CHUNK if size is None else min(_CHUNK, size)
        data = handle.read(want) if want > 0 else b""
        if size is not None:
            size -= len(data)
        block = carry + data
        if data:
            cut = block.rfind(b"\n") + 1
            if cut == 0:
                carry = block
                continue
        else:
            cut = len(block)
        chunk, carry = block[:cut], block[cut:]
        if not chunk:
            return
        yield chunk


class RawStream:
    """The file's data lines as COPY CSV input, with the file line of each row kept in a LineMap.

    Chunks without a quote or a blank line go to PostgreSQL as they are (one row per line: their lines are
    known by counting). From the first chunk that has one, the rest is parsed by Python's csv module (the careful
    path's own parser) and written back as plain CSV, so both paths always read the same cells.
    """

    def __init__(self, source: CsvSource, lines: Any, plan: FastPlan) -> None:
        self.source = source
        self.lines = lines
        dialect = copy_dialect(source)
        self.encoding, self.copy_encoding = dialect.encoding, dialect.copy_encoding
        self.delimiter, self.quote = dialect.delimiter, dialect.quote
        self.header_lines = source.file._line
        self.rows = 0
        # Whether every chunk's typed cells had the shapes SQL would otherwise check (empty allowed), and whether
        # every datetime had its offset: checked on the bytes, so the server need not.
        self.shapes_checked = self.zoned = bool(plan.shaped)
        delimiter = re.escape(self.delimiter.encode())
        self._loose, self._zoned = (self._regex(plan, delimiter, zoned) for zoned in (False, True))
        # Set for the native path: every chunk must match it, and goes out with its decimal commas as points.
        self.native: re.Pattern[bytes] | None = None

    @staticmethod
    def _regex(plan: FastPlan, delimiter: bytes, zoned: bool) -> re.Pattern[bytes]:
        shapes = {**_BYTE_SHAPES, "number": b"[^xX" + delimiter + b"\\r\\n]*"}
        if zoned:
            shapes["datetime"] = shapes["datetime"].removesuffix(b"?")
        other = b"[^" + delimiter + b"\\r\\n]*"
        cells = [
            b"(?:" + shapes[plan.shaped[i]] + b")?" if i in plan.shaped else other
            for i in range(plan.ncols + (1 if plan.extra_column else 0))
        ]
        line = delimiter.join(cells)
        return re.compile(b"(?:" + line + b"\\r?\\n)*(?:" + line + b")?")

    def chunks(self) -> Iterator[bytes]:
        with self.source.file.path.open("rb") as handle:
            for _ in range(self.header_lines):
                line = handle.readline(_CHUNK)
                if not line.endswith(b"\n"):
                    raise NotVouched("header not ended by a newline")
            line_no = self.header_lines
            at = handle.tell()  # where the chunk starts
            for chunk in line_chunks(handle):
                if self.quote in chunk or chunk.startswith((b"\n", b"\r\n")) or b"\n\n" in chunk or b"\n\r\n" in chunk:
                    if self.native is not None:
                        raise NotVouched("quotes or blank lines")
                    handle.seek(at)
                    yield from self._parsed(handle, line_no)
                    return
                at += len(chunk)
                count = chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
                if b"\r" in chunk.replace(b"\r\n", b""):
                    raise NotVouched("a carriage return alone")
                self.lines.extend(line_no + 1, count)
                line_no += count
                self.rows += count
                if self.native is not None:
                    if self.native.fullmatch(chunk) is None:
                        raise NotVouched("a cell not in PostgreSQL's own input form")
                    yield chunk.replace(b",", b".")
                    continue
                if self.zoned and self._zoned.fullmatch(chunk) is None:
                    self.zoned = False
                if self.shapes_checked and not self.zoned and self._loose.fullmatch(chunk) is None:
                    self.shapes_checked = False
                yield chunk

    def _parsed(self, handle: Any, line_no: int) -> Iterator[bytes]:
        """From here on, Python's csv reader splits the records (quoted cells, blank lines) and counts lines."""
        self.shapes_checked = self.zoned = False
        text = io.TextIOWrapper(handle, encoding=self.encoding, newline="")
        dialect = self.source.file.dialect
        reader = csv.reader(text, delimiter=dialect.delimiter, quotechar=dialect.quotechar, strict=True)
        encode = codecs.getencoder(self.encoding)
        try:
            while True:
                before = reader.line_num
                records = list(itertools.islice(reader, _RECORDS_PER_CHUNK))
                if not records:
                    return
                spanned = reader.line_num - before
                if spanned == len(records) and all(records):
                    self.lines.extend(line_no + 1, len(records))
                    rows = records
                else:
                    rows = []
                    at = line_no + 1
                    for record in records:
                        if record:
                            self.lines.append(at)
                            rows.append(record)
                        at += 1 + sum(c.count("\n") + c.count("\r") - c.count("\r\n") for c in record)
                line_no += spanned
                self.rows += len(rows)
                out = io.StringIO()
                csv.writer(out, delimiter=self.delimiter, lineterminator="\n").writerows(rows)
                yield encode(out.getvalue())[0]
        except (csv.Error, UnicodeError) as exc:
            raise NotVouched(str(exc)) from None
        finally:
            text.detach()


async def copy_raw(conn: asyncpg.Connection, stream: RawStream, plan: FastPlan, chunks: Any, numbered: bool) -> None:
    """CREATE the raw text table and COPY the file's rows into it (`numbered`: an identity column numbers them in
    order, for their lines; rows going straight into an empty dataset table keep their order without it)."""
    columns = [f"c{i}" for i in range(plan.ncols + (1 if plan.extra_column else 0))]
    number = f", {SEQ} bigint GENERATED ALWAYS AS IDENTITY" if numbered else ""
    await conn.execute(f"DROP TABLE IF EXISTS {RAW}")
    await conn.execute(f"CREATE TEMP TABLE {RAW} ({', '.join(f'{c} text' for c in columns)}{number}) ON COMMIT DROP")
    await conn.copy_to_table(
        RAW, source=chunks, columns=columns, format="csv", delimiter=stream.delimiter, encoding=stream.copy_encoding
    )


# --- typed values and checks, in SQL -----------------------------------------------------------------------


def _field_sql(
    f: FieldDef, c: str, required: bool, sql: _Sql, tz: str, pg16: bool, shaped: bool = False, zoned: bool = False
) -> tuple[str, str, list[str]]:
    """(value expression, acceptance condition, checks of the typed value `{v}`) of one field from its cell `c`.

    The checks are the cheapest that keep SQL within what Python accepts: a cell PostgreSQL refuses fails the
    statement, which is fine (the careful path then runs); a cell it would read differently must not pass.
    """
    empty = f"{c} IS NULL OR {c} = {sql.missing}"
    checks: list[str] = []
    typed: list[str] = []
    if f.type in ("string", "any"):
        value = c
        enum = f.constraints.get("enum")
        if enum is not None:
            checks.append(f"{c} = ANY({sql.add([str(e) for e in enum], 'text[]')})")
        else:
            # A cell of spaces only is empty for the careful path (str.isspace): only kept text has to be told.
            # ascii() of the first character is cheap; only a cell starting with a space is looked at further.
            codes = sql.add(sorted({ord(ch) for ch in WHITESPACE}), "int[]")
            empty += f" OR (ascii({c}) = ANY({codes}) AND ltrim({c}, {sql.add(WHITESPACE, 'text')}) = '')"
        if "minLength" in f.constraints:
            checks.append(f"length({c}) >= {sql.add(int(f.constraints['minLength']), 'int')}")
        if "maxLength" in f.constraints:
            checks.append(f"length({c}) <= {sql.add(int(f.constraints['maxLength']), 'int')}")
    elif f.type in ("integer", "number"):
        if f.type == "integer":
            value = f"{c}::bigint"
            if pg16 and not shaped:  # PostgreSQL 16 reads 0x1F, 0o17, 0b1 and 1_000 as integers, Python does not
                checks.append(f"ltrim({c}, '0123456789+- ') = ''")
        else:
            # strtod reads hexadecimal (0x1p3), Python's float() does not; inf and nan they read alike.
            value = f"replace({c}, ',', '.')::double precision"
            if not shaped:
                checks.append(f"strpos({c}, 'x') = 0 AND strpos({c}, 'X') = 0")
        for key, op in (("minimum", ">="), ("maximum", "<=")):
            if key in f.constraints:
                typed.append(f"{{v}} {op} {sql.add(float(f.constraints[key]), 'double precision')}")
    elif f.type == "boolean":
        if f.true_values or f.false_values:
            trues, falses = tuple(f.true_values or ()), tuple(f.false_values or ())
        else:
            trues, falses = tuple(TRUE_WORDS), tuple(FALSE_WORDS)
        word = f"lower(btrim({c}))"
        value = f"{word} = ANY({sql.add([w.lower() for w in trues], 'text[]')})"
        # ASCII only: PostgreSQL's lower() of other letters need not be Python's.
        checks.append(f"octet_length({c}) = length({c})")
        checks.append(f"{word} = ANY({sql.add([w.lower() for w in [*trues, *falses]], 'text[]')})")
    elif f.type == "year":
        if not shaped:
            checks.append(f"{_AS_NINES.format(c)} = '9999'")
        value = f"{c}::integer"
    elif f.type == "date":
        if not shaped:
            checks.append(f"{_AS_NINES.format(c)} = ANY({sql.add(_DATE_SHAPES, 'text[]')})")
        value = (
            f"CASE WHEN substr({c}, 5, 1) = '-' THEN {c}::date "
            f"ELSE make_date(substr({c}, 7, 4)::int, substr({c}, 4, 2)::int, substr({c}, 1, 2)::int) END"
        )
    else:  # datetime: PostgreSQL's reader is lenient (hour 24, second 60, letters, spaces): only strict ISO passes
        if not shaped:  # else the reading thread checked the same on the bytes
            checks.append(f"{_AS_NINES.format(c)} = ANY({sql.add(_DATETIME_SHAPES, 'text[]')})")
            checks.append(f"substr({c}, 12, 2) < '24' AND substr({c}, 18, 2) < '60'")
        if shaped and zoned:  # every cell has its offset: PostgreSQL reads the instant as Python does
            value = f"{c}::timestamptz"
        else:
            zone = sql.add(tz, "text")
            naive = f"right({c}, 1) <> 'Z' AND substr({c}, length({c}) - 5, 1) NOT IN ('+', '-')"
            local = f"{c}::timestamp"
            value = f"CASE WHEN {naive} THEN {local} AT TIME ZONE {zone} ELSE {c}::timestamptz END"
            # Near a change of offset, PostgreSQL and zoneinfo (fold=0) resolve an ambiguous local time differently:
            # a local time within three hours of one goes to the careful path.
            checks.append(
                f"CASE WHEN {naive} THEN (({local} AT TIME ZONE {zone}) - interval '3 hours') AT TIME ZONE {zone} "
                f"= {local} - interval '3 hours' AND (({local} AT TIME ZONE {zone}) + interval '3 hours') "
                f"AT TIME ZONE {zone} = {local} + interval '3 hours' ELSE true END"
            )
    accept = " AND ".join(checks) if checks else "true"
    ok = f"CASE WHEN {empty} THEN {'false' if required else 'true'} ELSE {accept} END"
    return f"CASE WHEN {empty} THEN NULL ELSE {value} END", ok, typed


def _point_cells(kind: str, columns: tuple[int, ...]) -> tuple[str, str, str, str]:
    """(no point, cells fit to cast, x, y) for a point's column(s), as geometry.read_point reads them."""
    if kind == "lonlat":
        xs, ys = (f"r.c{i}" for i in columns)
        empty = f"(coalesce({xs}, '') = '' AND coalesce({ys}, '') = '')"
        x, y = (f"replace({c}, ',', '.')" for c in (xs, ys))
        guard = f"{xs} <> '' AND {ys} <> ''"
    else:
        cell = f"r.c{columns[0]}"
        empty = f"coalesce({cell}, '') = ''"
        text = cell
        guard = f"length({cell}) - length(replace({cell}, ',', '')) = 1"
        if kind == "lonlat_array":
            text = f"substr(btrim({cell}), 2, length(btrim({cell})) - 2)"
            guard += f" AND left(btrim({cell}), 1) = '[' AND right(btrim({cell}), 1) = ']'"
        first, second = f"split_part({text}, ',', 1)", f"split_part({text}, ',', 2)"
        x, y = (second, first) if kind == "latlon" else (first, second)
    guard += " AND " + " AND ".join(f"strpos({v}, 'x') = 0 AND strpos({v}, 'X') = 0" for v in (x, y))
    return empty, guard, f"({x})::double precision", f"({y})::double precision"


def select_sql(
    schema: TableSchema,
    plan: FastPlan,
    projection: Reprojector,
    tz: str,
    lines: tuple[list[int], list[int]] | None,
    direct: bool,
    pg16: bool,
    shapes_checked: bool = False,
    zoned: bool = False,
) -> tuple[str, list[Any]]:
    """The SELECT of the rows SQL vouches for, typed, over the raw table; and its parameters.

    Its columns are the schema's fields, then the file line (when `lines`, a LineMap's breakpoints), then the
    geometry: one point column when `direct` (straight into the dataset table), else lon and lat in WGS84.
    An inner query reads each cell once (cast, and whether its text is in a form we vouch for); the outer one
    checks bounds on the typed values and builds the point.
    """
    sql = _Sql()
    sql.missing = (
        "''" if list(schema.missing_values) == [""] else f"ANY({sql.add(list(schema.missing_values), 'text[]')})"
    )
    inner: list[str] = []
    outer: list[str] = []
    accept: list[str] = []
    where: list[str] = ["s.__ok"]
    for index, (f, column) in enumerate(zip(schema.fields, plan.mapping, strict=True)):
        if column < 0:
            outer.append("NULL")
            continue
        required = f.required or f.name in schema.primary_key
        value, ok, typed = _field_sql(f, f"r.c{column}", required, sql, tz, pg16, shapes_checked, zoned)
        inner.append(f"{value} AS v{index}")
        outer.append(f"s.v{index}")
        accept.append(ok)
        where += [f"(s.v{index} IS NULL OR {check.format(v=f's.v{index}')})" for check in typed]
    if plan.extra_column:
        accept.append(f"(r.c{plan.ncols} IS NULL OR r.c{plan.ncols} = '')")
    if lines is not None:
        # Row n (from 1) is on line (n - 1) + offset of the run it falls in, as LineMap.__getitem__ computes.
        starts, offsets = sql.add(lines[0], "bigint[]"), sql.add(lines[1], "bigint[]")
        inner.append(f"r.{SEQ} - 1 + ({offsets})[width_bucket(r.{SEQ} - 1, {starts})] AS __l")
        outer.append("s.__l")
    source = "s"
    if plan.geometry is not None:
        if plan.reuse is not None:
            x, y = (f"s.v{i}" for i in plan.reuse)
            where.append(f"({x} IS NULL) = ({y} IS NULL)")
        else:
            both_empty, guards, x_cell, y_cell = _point_cells(*plan.geometry)
            inner += [
                f"CASE WHEN {both_empty} THEN NULL ELSE {v} END AS {n}" for v, n in ((x_cell, "__x"), (y_cell, "__y"))
            ]
            accept.append(f"CASE WHEN {both_empty} THEN true ELSE coalesce({guards}, false) END")
            x, y = "s.__x", "s.__y"
        west, south, east, north = (sql.add(float(b), "double precision") for b in projection.bounds)
        # The area of use is checked on the WGS84 result, as Reprojector.points does.
        if plan.srid == 4326:
            lon, lat = x, y
            point = f"ST_SetSRID(ST_MakePoint({x}, {y}), 4326)"
        else:
            lon, lat, point = "ST_X(q.pt)", "ST_Y(q.pt)", "q.pt"
            source += (
                f" CROSS JOIN LATERAL (SELECT ST_Transform(ST_SetSRID(ST_MakePoint({x}, {y}), {plan.srid}), "
                "4326) AS pt OFFSET 0) q"
            )
        where.append(f"({x} IS NULL OR ({lon} BETWEEN {west} AND {east} AND {lat} BETWEEN {south} AND {north}))")
        if direct:
            outer.append(f"CASE WHEN {x} IS NULL THEN NULL ELSE {point} END")
        else:
            outer += [f"CASE WHEN {x} IS NULL THEN NULL ELSE {v} END" for v in (lon, lat)]
    elif direct:
        outer.append("NULL")
    inner.append(f"{' AND '.join(accept) or 'true'} AS __ok")
    # Only our own expressions over quoted column names; every value from the schema is a bound parameter.
    text = (
        f"SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM {RAW} r OFFSET 0) "  # noqa: S608
        f"{source} WHERE {' AND '.join(where)}"
    )
    return text, sql.values


def quoted(names: list[str]) -> str:
    return ", ".join(quote_ident(n) for n in names)


# --- native path: the file's cells already in PostgreSQL's input forms, COPied straight into the typed table ---

# Cell shapes whose COPY input value is the careful path's value once decimal commas become points. Strings may not
# hold a comma (the chunk's commas are all replaced) nor a quote (already excluded); every cell may be empty (NULL).
_NATIVE_SHAPES = {
    "string": rb"[^;,\"\r\n]*",
    # What the text-staging path casts too (the same cast, after the same comma replacement): a cell PostgreSQL
    # refuses fails the COPY, which only sends the file to that path.
    "integer": _BYTE_SHAPES["integer"],
    "number": rb"[0-9+\-.,eE]*",
    "year": rb"(?:[0-9]{4})?",
    "date": rb"(?:[0-9]{4}-[0-9]{2}-[0-9]{2})?",
    "datetime": b"(?:" + _BYTE_SHAPES["datetime"].removesuffix(b"?") + b")?",
}


def native_regex(schema: TableSchema, plan: FastPlan, delimiter: str) -> re.Pattern[bytes] | None:
    """The pattern every chunk must match for the native path, or None when this file cannot take it: a file
    column per field in order (COPY writes columns by name, but every file column must be a field), ';'-free
    strings, plain numbers and ISO dates, and a point only from x/y number fields."""
    if plan.extra_column or list(schema.missing_values) != [""] or delimiter in ',"' or len(delimiter) != 1:
        return None
    if plan.geometry is not None and plan.reuse is None:
        return None
    if sorted(c for c in plan.mapping if c >= 0) != list(range(plan.ncols)):
        return None
    by_column: dict[int, bytes] = {}
    for f, column in zip(schema.fields, plan.mapping, strict=True):
        if column < 0:
            continue
        if f.type not in _NATIVE_SHAPES or (f.type == "string" and f.format not in (None, "default")):
            return None
        by_column[column] = _NATIVE_SHAPES[f.type]
    sep = re.escape(delimiter.encode())
    if b"," in sep:
        return None
    line = sep.join(by_column[i].replace(b";", sep) for i in range(plan.ncols))
    return re.compile(b"(?:" + line + b"\\r?\\n)*(?:" + line + b")?")


def native_lonlat(schema: TableSchema, plan: FastPlan) -> tuple[str, str] | None:
    """The (quoted) lon and lat columns every point of a native load is made of, when in WGS84 (else None): the
    dataset's extent is theirs. The check (native_bad_row) refuses a row with one of the two only."""
    if plan.geometry is None or plan.reuse is None or plan.srid != 4326:
        return None
    x, y = (quote_ident(schema.fields[i].name) for i in plan.reuse)
    return x, y


def native_geometry(schema: TableSchema, plan: FastPlan) -> str | None:
    """The generation expression of the point from its lon/lat columns (None: no geometry)."""
    if plan.geometry is None or plan.reuse is None:
        return None
    x, y = (quote_ident(schema.fields[i].name) for i in plan.reuse)
    point = f"ST_SetSRID(ST_MakePoint({x}, {y}), {int(plan.srid)})"
    if plan.srid != 4326:  # the CRSs of _SQL_CRS, which PostGIS and pyproj transform alike
        point = f"ST_Transform({point}, 4326)"
    return f"CASE WHEN {x} IS NULL OR {y} IS NULL THEN NULL ELSE {point} END"


def native_columns(schema: TableSchema, plan: FastPlan) -> list[str]:
    """The fields in the file's column order: COPY's column list (native_regex vouches for one field a column)."""
    by_column = {c: f.name for f, c in zip(schema.fields, plan.mapping, strict=True) if c >= 0}
    return [by_column[i] for i in range(plan.ncols)]


def native_check_sql(schema: TableSchema, plan: FastPlan, projection: Reprojector, table: str) -> tuple[str, list[Any]]:
    """The one pass over a native load's `table`: the dataset's statistics (datasets.stats_sql) and `bad`, true when
    some row breaks what COPY's type input does not check (see native_bad_row); and its parameters."""
    condition, params = native_bad_row(schema, plan, projection)
    lonlat = native_lonlat(schema, plan)
    return stats_sql(schema, table, only_points=True, extra=("bad", f"bool_or({condition})"), lonlat=lonlat), params


def native_bad_row(schema: TableSchema, plan: FastPlan, projection: Reprojector) -> tuple[str, list[Any]]:
    """A condition true of a loaded row that breaks what COPY's type input does not check: required, enum,
    lengths, bounds, spaces-only strings, a half point or one outside the area of use; and its parameters."""
    sql = _Sql()
    bad: list[str] = []
    for f, column in zip(schema.fields, plan.mapping, strict=True):
        if column < 0:
            continue
        c = quote_ident(f.name)
        if f.required or f.name in schema.primary_key:
            bad.append(f"{c} IS NULL")
        if f.type == "string":
            codes = sql.add(sorted({ord(ch) for ch in WHITESPACE}), "int[]")
            bad.append(f"(ascii({c}) = ANY({codes}) AND ltrim({c}, {sql.add(WHITESPACE, 'text')}) = '')")
            enum = f.constraints.get("enum")
            if enum is not None:
                bad.append(f"{c} <> ALL({sql.add([str(e) for e in enum], 'text[]')})")
            if "minLength" in f.constraints:
                bad.append(f"length({c}) < {sql.add(int(f.constraints['minLength']), 'int')}")
            if "maxLength" in f.constraints:
                bad.append(f"length({c}) > {sql.add(int(f.constraints['maxLength']), 'int')}")
        for key, op in (("minimum", "<"), ("maximum", ">")):
            if key in f.constraints:
                bad.append(f"{c} {op} {sql.add(float(f.constraints[key]), 'double precision')}")
    if plan.reuse is not None:
        x, y = (quote_ident(schema.fields[i].name) for i in plan.reuse)
        west, south, east, north = (sql.add(float(b), "double precision") for b in projection.bounds)
        bad.append(f"(({x} IS NULL) <> ({y} IS NULL))")
        # The area of use is checked on the WGS84 point, as Reprojector.points does.
        lon, lat = (x, y) if plan.srid == 4326 else ("ST_X(geom)", "ST_Y(geom)")
        bad.append(f"NOT ({lon} BETWEEN {west} AND {east} AND {lat} BETWEEN {south} AND {north})")
    return " OR ".join(f"coalesce({b}, false)" for b in bad) or "false", sql.values
