"""Streaming writers: PostgreSQL produces the rows (COPY or a server-side cursor), we pass batches along.

Memory stays constant whatever the size: CSV and GeoJSON come out of `COPY ... TO STDOUT` chunk by chunk;
GeoParquet is written one row group per cursor batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import asyncpg
import numpy as np
import orjson
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
from pyproj import CRS as ProjCRS

from territoire_data.auth.policy import Principal, dataset_visible_sql, datastream_visible_sql
from territoire_data.db.params import Params
from territoire_data.query.collections import Collection, Field
from territoire_data.query.crs import DEFAULT, Crs, output_geometry_sql
from territoire_data.query.items import ItemsQuery, feature_sql, order_sql, where_sql

BOM = "\ufeff".encode()
# About 40,000 rows of a few columns per row group; parsing takes about 12 times this in memory.
PARQUET_BLOCK_BYTES = 4 * 1024 * 1024
_DONE = object()
# Text cells that a spreadsheet would run as a formula (OWASP "CSV injection"): prefixed with a quote.
_FORMULA_START = "('=', '+', '-', '@', E'\\t', E'\\r')"
_TEXT_TYPES = ("text",)


@dataclass(frozen=True)
class ExportQuery:
    """A filtered, ordered selection of a collection's rows, in a target CRS."""

    collection: Collection
    query: ItemsQuery
    limit: int | None = None

    def where(self, params: Params) -> str:
        return where_sql(self.collection, self.query, params)

    def tail(self, params: Params) -> str:
        sql = f" ORDER BY {order_sql(self.query)}"
        if self.limit is not None:
            sql += f" LIMIT {params.add(self.limit, 'bigint')}"
        return sql

    @property
    def fields(self) -> tuple[Field, ...]:
        names = self.query.properties
        return self.collection.fields if names is None else tuple(f for f in self.collection.fields if f.name in names)


def _csv_cell(field: Field) -> str:
    """A field as CSV text: ISO 8601 times, true/false, JSON as text; formulas neutralised in text cells."""
    column = field.sql
    if field.pg_type == "boolean":
        return f"CASE WHEN {column} THEN 'true' WHEN NOT {column} THEN 'false' END"
    if field.pg_type in ("timestamptz", "date", "time"):
        return f"to_json({column}) #>> '{{}}'"
    if field.pg_type == "jsonb":
        column = f"{column}::text"
    elif field.pg_type not in _TEXT_TYPES:
        return f"{column}::text"
    return f"CASE WHEN left({column}, 1) IN {_FORMULA_START} THEN '''' || {column} ELSE {column} END"


def csv_select(export: ExportQuery, params: Params) -> str:
    """The SELECT whose rows are the CSV lines (header names are the Table Schema field names)."""
    columns = [f"t._fid AS {_ident('_id')}"]
    columns += [f"{_csv_cell(f)} AS {_ident(f.name)}" for f in export.fields]
    if export.collection.has_geometry and not export.query.skip_geometry:
        geometry = output_geometry_sql("t.geom", export.query.crs)
        columns.append(f"ST_AsText({geometry}, {export.query.crs.decimals}) AS geometry")
    where = export.where(params)
    return f"SELECT {', '.join(columns)} FROM {export.collection.source} t WHERE {where}{export.tail(params)}"


def geojson_select(export: ExportQuery, params: Params) -> str:
    where = export.where(params)
    return (
        f"SELECT {feature_sql(export.collection, export.query)} FROM {export.collection.source} t "
        f"WHERE {where}{export.tail(params)}"
    )


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def _copy(conn: asyncpg.Connection, sql: str, args: Sequence[Any], **options: Any) -> AsyncIterator[bytes]:
    """`COPY (sql) TO STDOUT` as an async iterator of chunks, with back-pressure through a small queue."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=16)

    async def sink(chunk: bytes) -> None:
        await queue.put(bytes(chunk))

    async def run() -> None:
        try:
            await conn.copy_from_query(sql, *args, output=sink, **options)
        finally:
            await queue.put(_DONE)

    task = asyncio.create_task(run())
    try:
        while (chunk := await queue.get()) is not _DONE:
            yield chunk
        await task
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError):
                await task


async def _coalesce(chunks: AsyncIterator[bytes], size: int = 256 * 1024) -> AsyncIterator[bytes]:
    """Fewer, larger writes to the socket."""
    buffer: list[bytes] = []
    held = 0
    async for chunk in chunks:
        buffer.append(chunk)
        held += len(chunk)
        if held >= size:
            yield b"".join(buffer)
            buffer, held = [], 0
    if buffer:
        yield b"".join(buffer)


async def stream_csv(
    conn: asyncpg.Connection, export: ExportQuery, *, delimiter: str = ";", bom: bool = False
) -> AsyncIterator[bytes]:
    """CSV (RFC 4180 quoting, header line) straight from COPY."""
    params = Params()
    sql = csv_select(export, params)
    if bom:
        yield BOM
    async for chunk in _coalesce(_copy(conn, sql, params.values, format="csv", header=True, delimiter=delimiter)):
        yield chunk


async def stream_geojson(conn: asyncpg.Connection, export: ExportQuery) -> AsyncIterator[bytes]:
    """An RFC 7946 FeatureCollection: one Feature per COPY line, commas put in by one bytes.replace per chunk.

    CSV format with control characters as quote and delimiter copies each JSON text verbatim (JSON text never
    holds a raw control character), so PostgreSQL writes the features and we only join them.
    """
    params = Params()
    sql = geojson_select(export, params)
    head: dict[str, Any] = {"type": "FeatureCollection", "name": export.collection.id}
    if export.query.crs != DEFAULT:
        head["crs"] = {"type": "name", "properties": {"name": export.query.crs.uri}}
    yield orjson.dumps(head)[:-1] + b',"features":[\n'
    held = b""  # the last two bytes, ",\n" after the last feature, which must not stay
    chunks = _copy(conn, sql, params.values, format="csv", delimiter="\x02", quote="\x01", null="")
    async for chunk in _coalesce(chunks):
        out = held + chunk.replace(b"\n", b",\n")
        held = out[-2:]
        yield out[:-2]
    yield b"\n]}\n"


_ARROW_TYPES: dict[str, pa.DataType] = {
    "bigint": pa.int64(),
    "double precision": pa.float64(),
    "boolean": pa.bool_(),
    "date": pa.date32(),
    "timestamptz": pa.timestamp("us", tz="UTC"),
    "time": pa.time64("us"),
    "integer": pa.int32(),
}


def _arrow_type(field: Field) -> pa.DataType:
    return _ARROW_TYPES.get(field.pg_type, pa.string())


def _parquet_cell(field: Field) -> tuple[str, pa.DataType]:
    """The SQL of a column and the Arrow type it travels as: times as integers, so that no Python datetime is
    ever made (decoding them dominated the cost of a GeoParquet export)."""
    if field.pg_type == "timestamptz":
        return f"(extract(epoch FROM {field.sql}) * 1000000)::bigint", pa.int64()
    if field.pg_type == "date":
        return f"({field.sql} - DATE '1970-01-01')", pa.int32()
    if field.pg_type == "time":
        return f"(extract(epoch FROM {field.sql}) * 1000000)::bigint", pa.int64()
    if field.pg_type in _ARROW_TYPES:
        return field.sql, _ARROW_TYPES[field.pg_type]
    return f"{field.sql}::text", pa.string()


_HEX_VALUES = np.zeros(256, dtype=np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX_VALUES[_c] = _i
    _HEX_VALUES[bytes([_c]).upper()[0]] = _i


def unhex(array: pa.Array) -> pa.Array:
    """Hex text -> binary, vectorised over the whole column (WKB travels as hex in COPY's CSV)."""
    if array.offset != 0:
        return pa.array([None if v is None else bytes.fromhex(v) for v in array.to_pylist()], type=pa.binary())
    validity, offsets, data = array.buffers()
    ends = np.frombuffer(offsets, dtype=np.int32, count=len(array) + 1)
    chars = np.frombuffer(data, dtype=np.uint8, count=int(ends[-1])) if data is not None else np.zeros(0, np.uint8)
    decoded = (_HEX_VALUES[chars[0::2]] << 4) | _HEX_VALUES[chars[1::2]]
    return pa.Array.from_buffers(
        pa.binary(),
        len(array),
        [validity, pa.py_buffer((ends // 2).astype(np.int32)), pa.py_buffer(decoded.astype(np.uint8))],
        null_count=array.null_count,
    )


BBOX_FIELDS = ("xmin", "ymin", "xmax", "ymax")
BBOX_TYPE = pa.struct([pa.field(name, pa.float64()) for name in BBOX_FIELDS])


def _csv_block_to_table(block: bytes, transfer: list[pa.DataType], schema: pa.Schema) -> pa.Table:
    """One block of COPY CSV (whole rows) parsed by Arrow's C++ reader, then given the schema's types (a last
    `bbox` struct field is read from four float columns: the GeoParquet 1.1 covering)."""
    if schema.names[-1:] == ["bbox"] and schema.field("bbox").type == BBOX_TYPE:
        flat = pa.schema([*list(schema)[:-1], *(pa.field(f"bbox_{n}", pa.float64()) for n in BBOX_FIELDS)])
        table = _csv_block_to_table(block, transfer, flat)
        parts = table.columns[-4:]
        chunks = [
            pa.StructArray.from_arrays(
                [part.chunk(i) for part in parts], fields=list(BBOX_TYPE), mask=parts[0].chunk(i).is_null()
            )
            for i in range(parts[0].num_chunks)
        ]
        return pa.Table.from_arrays([*table.columns[:-4], pa.chunked_array(chunks, type=BBOX_TYPE)], schema=schema)
    names = [f"c{i}" for i in range(len(transfer))]
    wire = {n: (pa.string() if t == pa.binary() else t) for n, t in zip(names, transfer, strict=True)}
    table = pacsv.read_csv(
        pa.py_buffer(block),
        read_options=pacsv.ReadOptions(column_names=names, block_size=1 << 22, use_threads=False),
        parse_options=pacsv.ParseOptions(newlines_in_values=True),
        convert_options=pacsv.ConvertOptions(
            column_types=wire,
            null_values=[""],
            strings_can_be_null=True,
            quoted_strings_can_be_null=False,
            true_values=["t"],
            false_values=["f"],
        ),
    )
    arrays = []
    for column, wire_type, final in zip(table.columns, transfer, schema, strict=True):
        chunks = column.chunks
        if wire_type == pa.binary():
            chunks = [unhex(c) for c in chunks]
        elif wire_type != final.type:
            chunks = [c.cast(final.type) for c in chunks]
        arrays.append(pa.chunked_array(chunks, type=final.type))
    return pa.Table.from_arrays(arrays, schema=schema)


async def _parquet_from_copy(
    conn: asyncpg.Connection,
    sql: str,
    values: list[Any],
    schema: pa.Schema,
    transfer: list[pa.DataType],
    block_bytes: int,
) -> AsyncIterator[bytes]:
    """COPY's CSV in blocks of whole rows -> Arrow (C++ parser) -> one Parquet row group per block.

    Parsing and writing a block run in a worker thread (Arrow releases the GIL) while the next block is read,
    so PostgreSQL and the conversion overlap; at most two blocks are held at once.
    """
    sink = _Sink()
    writer = pq.ParquetWriter(pa.PythonFile(sink, mode="w"), schema, compression="snappy")

    def convert(block: bytes) -> None:
        writer.write_table(_csv_block_to_table(block, transfer, schema))

    buffer: list[bytes] = []
    held = 0
    pending: asyncio.Future[None] | None = None
    try:
        # Each COPY chunk holds whole rows (one CopyData message per row), so a block never splits a row.
        async for chunk in _copy(conn, sql, values, format="csv"):
            buffer.append(chunk)
            held += len(chunk)
            if held >= block_bytes:
                if pending is not None:
                    await pending
                    yield sink.take()
                pending = asyncio.ensure_future(asyncio.to_thread(convert, b"".join(buffer)))
                buffer, held = [], 0
        if pending is not None:
            await pending
            pending = None
        if buffer:
            await asyncio.to_thread(convert, b"".join(buffer))
        writer.close()
        yield sink.take()
    finally:
        if pending is not None:
            with contextlib.suppress(Exception):
                await pending


def geo_metadata(collection: Collection, crs: Crs, *, covering: bool = True) -> dict[str, Any]:
    """GeoParquet 1.1 `geo` metadata: WKB geometry, its types, its CRS (PROJJSON; omitted for OGC:CRS84) and
    the `bbox` covering column, whose row-group statistics let readers skip row groups by extent."""
    column: dict[str, Any] = {"encoding": "WKB", "geometry_types": []}
    if covering:
        column["covering"] = {"bbox": {name: ["bbox", name] for name in BBOX_FIELDS}}
    if collection.geometry_type and collection.geometry_type != "Geometry":
        column["geometry_types"] = [collection.geometry_type]
    if crs.uri != DEFAULT.uri:
        column["crs"] = ProjCRS.from_epsg(crs.srid).to_json_dict()
    return {"version": "1.1.0", "primary_column": "geometry", "columns": {"geometry": column}}


class _Sink:
    """A write-only file for ParquetWriter whose bytes we hand on after each row group."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []
        self.position = 0
        self.closed = False

    def write(self, data: bytes) -> int:
        self.parts.append(bytes(data))
        self.position += len(data)
        return len(data)

    def tell(self) -> int:
        return self.position

    def flush(self) -> None:
        return None

    def close(self) -> None:
        self.closed = True

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts = []
        return data


def parquet_schema(export: ExportQuery, *, covering: bool = True) -> tuple[pa.Schema, str, list[pa.DataType]]:
    """The Arrow schema (with `geo` metadata), the SELECT list and the types the columns travel as; with
    `covering`, a `bbox` struct column after the geometry (GeoParquet 1.1)."""
    fields = [pa.field("_id", pa.int64(), nullable=False)]
    fields += [pa.field(f.name, _arrow_type(f)) for f in export.fields]
    cells = [_parquet_cell(f) for f in export.fields]
    columns = ["t._fid"] + [sql for sql, _ in cells]
    transfer = [pa.int64()] + [wire for _, wire in cells]
    with_geometry = export.collection.has_geometry and not export.query.skip_geometry
    # GeoParquet stores x, y (longitude, latitude) whatever the CRS's axis order: never flipped.
    crs = dataclasses.replace(export.query.crs, lat_first=False)
    if with_geometry:
        fields.append(pa.field("geometry", pa.binary()))
        # WKB travels as hex text in COPY's CSV and is decoded column-wise (see unhex).
        geometry = output_geometry_sql("t.geom", crs)
        columns.append(f"encode(ST_AsBinary({geometry}), 'hex')")
        transfer.append(pa.binary())
        if covering:
            fields.append(pa.field("bbox", BBOX_TYPE))
            box = f"Box2D({geometry})"
            columns += [f"ST_XMin({box})", f"ST_YMin({box})", f"ST_XMax({box})", f"ST_YMax({box})"]
            transfer += [pa.float64()] * 4
    schema = pa.schema(fields)
    if with_geometry:
        metadata = geo_metadata(export.collection, export.query.crs, covering=covering)
        schema = schema.with_metadata({b"geo": orjson.dumps(metadata)})
    return schema, ", ".join(columns), transfer


async def stream_parquet(
    conn: asyncpg.Connection, export: ExportQuery, *, block_bytes: int = PARQUET_BLOCK_BYTES
) -> AsyncIterator[bytes]:
    """GeoParquet: rows from COPY, a row group per block, bytes handed on as written (constant memory)."""
    schema, columns, transfer = parquet_schema(export)
    params = Params()
    where = export.where(params)
    sql = f"SELECT {columns} FROM {export.collection.source} t WHERE {where}{export.tail(params)}"
    async for chunk in _parquet_from_copy(conn, sql, params.values, schema, transfer, block_bytes):
        yield chunk


# --- sensor observations ------------------------------------------------------------------------------------------

OBSERVATION_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("phenomenon_time", "o.phenomenon_time", pa.timestamp("us", tz="UTC")),
    ("phenomenon_time_end", "o.phenomenon_time_end", pa.timestamp("us", tz="UTC")),
    ("result_time", "o.result_time", pa.timestamp("us", tz="UTC")),
    ("result_number", "o.result_number", pa.float64()),
    ("result_string", "o.result_string", pa.string()),
    ("result_boolean", "o.result_boolean", pa.bool_()),
    ("result_json", "o.result_json::text", pa.string()),
    ("result_quality", "o.result_quality::text", pa.string()),
)


# Columns that say which series a row of a whole sensor dataset's export belongs to (read without the API).
SERIES_COLUMNS: tuple[tuple[str, str, pa.DataType], ...] = (
    ("datastream_id", "ds.id", pa.int64()),
    ("thing", "th.name", pa.string()),
    ("observed_property", "op.name", pa.string()),
    ("unit", "(ds.unit_of_measurement->>'symbol')", pa.string()),
)
_NAMED = ("result_string", "result_json", "thing", "observed_property", "unit")


@dataclass(frozen=True)
class ObservationSelection:
    """Which observations an export holds: one Datastream, or every visible Datastream of a sensor dataset."""

    start: str | None = None
    end: str | None = None
    datastream_id: int | None = None
    dataset_id: int | None = None
    principal: Principal | None = None  # for a dataset: its Datastreams this principal may read

    @property
    def columns(self) -> tuple[tuple[str, str, pa.DataType], ...]:
        return OBSERVATION_COLUMNS if self.dataset_id is None else SERIES_COLUMNS + OBSERVATION_COLUMNS


def observations_sql(params: Params, selection: ObservationSelection, *, csv: bool) -> str:
    """Observations in [start, end), ordered by series then time; partitions outside the range are pruned.

    For CSV: ISO 8601 times and neutralised formulas; for Parquet: times as epoch microseconds (see _parquet_cell).
    """
    if selection.dataset_id is not None and selection.principal is not None:
        conditions = [
            f"ds.dataset_id = {params.add(selection.dataset_id, 'bigint')}",
            datastream_visible_sql(selection.principal, "ds"),
        ]
        source = (
            "observation o JOIN datastream ds ON ds.id = o.datastream_id JOIN thing th ON th.id = ds.thing_id "
            "JOIN observed_property op ON op.id = ds.observed_property_id"
        )
        order = "o.datastream_id, o.phenomenon_time"
    else:
        conditions = [f"o.datastream_id = {params.add(selection.datastream_id, 'bigint')}"]
        source, order = "observation o", "o.phenomenon_time"
    if selection.start:
        conditions.append(f"o.phenomenon_time >= {params.text_as(selection.start, 'timestamptz')}")
    if selection.end:
        conditions.append(f"o.phenomenon_time < {params.text_as(selection.end, 'timestamptz')}")
    columns = []
    for name, sql, _ in selection.columns:
        if "time" in name:
            sql = f"to_json({sql}) #>> '{{}}'" if csv else f"(extract(epoch FROM {sql}) * 1000000)::bigint"
        elif csv and name in _NAMED:
            sql = f"CASE WHEN left({sql}, 1) IN {_FORMULA_START} THEN '''' || {sql} ELSE {sql} END"
        columns.append(f"{sql} AS {name}")
    return f"SELECT {', '.join(columns)} FROM {source} WHERE {' AND '.join(conditions)} ORDER BY {order}"


async def visible_sensor_dataset(conn: asyncpg.Connection, principal: Principal, slug: str) -> int | None:
    """The id of sensor dataset `slug` when `principal` may read it (None: missing, hidden or not sensors)."""
    visible = dataset_visible_sql(principal, "d")
    found = await conn.fetchval(
        f"SELECT d.id FROM dataset d WHERE d.slug = $1 AND d.kind = 'sensors' AND {visible}", slug
    )
    return None if found is None else int(found)


async def visible_datastream(conn: asyncpg.Connection, principal: Principal, datastream_id: int) -> bool:
    """Whether `principal` may read Datastream `datastream_id` (a hidden one is as absent as a missing one)."""
    visible = datastream_visible_sql(principal, "ds")
    sql = f"SELECT EXISTS (SELECT 1 FROM datastream ds WHERE ds.id = $1 AND {visible})"
    return bool(await conn.fetchval(sql, datastream_id))


async def stream_observations_csv(
    conn: asyncpg.Connection, selection: ObservationSelection, *, delimiter: str, bom: bool
) -> AsyncIterator[bytes]:
    params = Params()
    sql = observations_sql(params, selection, csv=True)
    if bom:
        yield BOM
    async for chunk in _coalesce(_copy(conn, sql, params.values, format="csv", header=True, delimiter=delimiter)):
        yield chunk


async def stream_observations_parquet(
    conn: asyncpg.Connection, selection: ObservationSelection, *, block_bytes: int = PARQUET_BLOCK_BYTES
) -> AsyncIterator[bytes]:
    params = Params()
    sql = observations_sql(params, selection, csv=False)
    schema = pa.schema([pa.field(name, kind) for name, _, kind in selection.columns])
    transfer = [pa.int64() if "time" in name else kind for name, _, kind in selection.columns]
    async for chunk in _parquet_from_copy(conn, sql, params.values, schema, transfer, block_bytes):
        yield chunk
