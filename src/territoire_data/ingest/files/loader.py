"""The file loader: stream rows, validate them against the dataset's Table Schema, COPY them into one staging
table, check uniqueness set-wise, then merge in one statement — all in one transaction.

A bad file leaves the dataset exactly as it was (the failed attempt is recorded in `dataset_import` with its
report); with `skip_invalid`, good rows load and rejected ones go to `ingest_rejection` with line and reason.
Memory stays bounded: one batch of rows, the inference sample and at most `max_errors` reported errors.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import struct
import threading
import time
from bisect import bisect_right
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import asyncpg
import orjson

from territoire_data.catalog.datasets import (
    SCHEMA,
    Dataset,
    DatasetMeta,
    attach_table,
    create_dataset,
    described_dataset,
    get_dataset,
    index_ddl,
    index_names,
    refresh_dataset_stats,
    write_dataset_stats,
)
from territoire_data.catalog.publishing import humanised_title, missing_metadata
from territoire_data.catalog.schema import TableSchema, parse_table_schema
from territoire_data.db.bulk import copy_and_merge, qualified, quote_ident
from territoire_data.db.raw import connect_raw
from territoire_data.errors import BadRequestError, ConflictError, NotFoundError, ValidationFailedError
from territoire_data.ingest.files import parload, setload
from territoire_data.ingest.files.geojson import SAMPLE_FEATURES, GeoJsonSource
from territoire_data.ingest.files.geometry import (
    GeometryError,
    GeometrySpec,
    Reprojector,
    detect_geometry,
    geojson_geometry,
    read_point,
    read_shape,
    reprojector,
)
from territoire_data.ingest.files.infer import infer_table_schema
from territoire_data.ingest.files.sources import CsvSource, Record, RowSource
from territoire_data.ingest.files.validate import CellError, build_converter, compile_row
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

Mode = Literal["append", "upsert", "replace"]
InvalidGeometry = Literal["repair", "reject"]
MODES: tuple[str, ...] = ("append", "upsert", "replace")
STAGE = "_td_import_stage"
LINE, X, Y, WKB = "__td_line", "__td_x", "__td_y", "__td_wkb"
MAX_PAYLOAD_BYTES = 65536

_STAGE_TYPES = {"duration": "text", "geojson": "text", "object": "text", "array": "text"}
_CASTS = {"duration": "::interval", "geojson": "::jsonb", "object": "::jsonb", "array": "::jsonb"}


@dataclass
class ImportOptions:
    """How to load one file; everything has a sensible default."""

    mode: Mode = "append"
    create: bool = False
    schema: TableSchema | None = None
    meta: DatasetMeta = field(default_factory=DatasetMeta)
    crs: str | None = None  # None: the source's own (legacy GeoJSON `crs`), else WGS84
    geometry: GeometrySpec | None = None
    detect_geometry: bool = True
    invalid_geometry: InvalidGeometry = "reject"
    skip_invalid: bool = False
    timezone: str = "Europe/Paris"
    batch_size: int = 10_000
    sample_rows: int = 10_000
    max_errors: int = 1_000
    set_based: bool = True  # clean CSV files: checked and converted in SQL (False: always the per-row path)
    extra_report: dict[str, Any] = field(default_factory=dict)  # e.g. the file's checksum, the connector
    # Table Schema foreignKeys name resources of a data package: the dataset each one is (default: its name).
    resources: dict[str, str] = field(default_factory=dict)
    # Opens another connection to the same database: clean files of at least `parallel_min_bytes` into an empty
    # table (new dataset, replace) then load on two connections at once (see ingest.files.parload).
    connect: Callable[[], Awaitable[asyncpg.Connection]] | None = None
    parallel_min_bytes: int = 16 << 20


class LineMap:
    """File line of each row loaded, in load order, in memory proportional to the irregularities only.

    Rows usually follow each other one line apart; only where the gap changes (a rejected row, a blank line, a
    cell spanning lines) is a breakpoint kept, so a clean file of any size costs a few bytes.
    """

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.starts: list[int] = []
        self.offsets: list[int] = []
        self.count = 0

    def append(self, line: int) -> None:
        self.extend(line, 1)

    def extend(self, first_line: int, count: int) -> None:
        """`count` rows on consecutive lines from `first_line`."""
        offset = first_line - self.count
        if not self.offsets or self.offsets[-1] != offset:
            self.starts.append(self.count)
            self.offsets.append(offset)
        self.count += count

    def __getitem__(self, index: int) -> int:
        return index + self.offsets[bisect_right(self.starts, index) - 1]

    def __len__(self) -> int:
        return self.count


class ImportFailedError(ValidationFailedError):
    """The file was refused; `report` says which rows and why. Nothing was written to the dataset."""

    type_slug = "import-failed"

    def __init__(self, detail: str, report: dict[str, Any]) -> None:
        super().__init__(detail, report=report)
        self.report = report


class _Refused(Exception):
    """Raised inside the transaction to roll it back once the report is complete."""


@dataclass
class _Run:
    """Mutable state of one import: counters, bounded error list, pending rejections."""

    source: RowSource
    options: ImportOptions
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    rejected_lines: set[int] = field(default_factory=set)
    rows_read: int = 0
    rows_rejected: int = 0
    rows_staged: int = 0
    error_count: int = 0
    stopped_early: bool = False
    fatal: bool = False
    direct: bool = False
    rows_deleted: int = 0
    set_based: bool = False  # the rows went in by one set-based statement (or COPY), checked in SQL
    native_refused: bool = False  # the native path could not vouch for the file: not to be tried again
    stats: Any = None  # the dataset's statistics, when computed with the rows' check (see datasets.stats_sql)
    cleanup: list[str] = field(default_factory=list)  # load tables to drop once the transaction is over
    timings: dict[str, float] = field(default_factory=dict)
    clock: float = field(default_factory=time.monotonic)

    def went_in_set_based(self, rows: int, *paths: str) -> None:
        """The `rows` went in by a set-based path (`paths`: "native", "parallel" as well), said in the timings
        report as 1s."""
        self.rows_read = self.rows_staged = rows
        self.set_based = True
        self.timings.update(set_based=1, **dict.fromkeys(paths, 1))

    def lap(self, phase: str) -> None:
        now = time.monotonic()
        self.timings[phase] = round(now - self.clock, 3)
        self.clock = now

    def error(self, line: int | None, column: str | None, code: str, reason: str) -> None:
        self.error_count += 1
        if len(self.errors) < self.options.max_errors:
            self.errors.append({"line": line, "column": column, "code": code, "reason": reason})

    @property
    def refused(self) -> bool:
        return self.fatal or (self.error_count > 0 and not self.options.skip_invalid)


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise BadRequestError(f"unknown time zone {name!r} (e.g. Europe/Paris, UTC)") from None


def _take_sample(records: Iterator[Record], size: int) -> tuple[list[Record], Iterator[Record]]:
    sample = list(itertools.islice(records, size))
    return sample, itertools.chain(sample, records)


def _column_map(schema: TableSchema, header: Sequence[str], run: _Run) -> list[int]:
    """For each schema field, its column index in the file (-1 when absent); file-level problems → errors."""
    positions: dict[str, int] = {}
    for index, name in enumerate(header):
        positions.setdefault(name, index)
    titles = {str(f.name): str(schema.descriptor["fields"][i].get("title", "")) for i, f in enumerate(schema.fields)}
    mapping: list[int] = []
    for f in schema.fields:
        index = positions.get(f.name, positions.get(titles.get(f.name, ""), -1) if titles.get(f.name) else -1)
        if index < 0:
            if f.required or f.name in schema.primary_key:
                run.error(1, f.name, "missing-label", f"required column {f.name!r} is not in the file")
            else:
                run.warnings.append(f"column {f.name!r} of the schema is not in the file: left empty")
        mapping.append(index)
    used = set(mapping)
    extra = [name for index, name in enumerate(header) if index not in used]
    if extra:
        shown = ", ".join(repr(n) for n in extra[:10]) + (" …" if len(extra) > 10 else "")
        run.warnings.append(f"{len(extra)} column(s) of the file are not in the schema and are ignored: {shown}")
    return mapping


def _geometry_spec(
    source: RowSource, schema: TableSchema, sample: list[Record], options: ImportOptions
) -> GeometrySpec | None:
    crs = options.crs or "EPSG:4326"
    if source.format == "geojson":
        return GeometrySpec("geojson", (), crs)
    if options.geometry is not None:
        spec = options.geometry
        missing = [c for c in spec.columns if c not in source.header]
        if missing:
            raise BadRequestError(f"geometry column(s) not in the file: {', '.join(missing)}")
        return spec
    if not options.detect_geometry:
        return None
    geopoints = {f.name: f.format or "default" for f in schema.fields if f.type == "geopoint"}
    sample_values: dict[str, list[str]] = {}
    for index, name in enumerate(source.header):
        sample_values[name] = [cells[index] for _, cells, _ in sample[:20] if index < len(cells)]
    return detect_geometry(
        source.header,
        crs=crs,
        geopoint_fields=geopoints,
        sample_values=sample_values,
        crs_given=options.crs is not None or getattr(source, "legacy_crs", None) is not None,
    )


def _geometry_report(spec: GeometrySpec | None, crs: str, options: ImportOptions) -> dict[str, Any] | None:
    """Which columns became the geometry, in which CRS, and why (named by the importer, found by name or by
    content); None with no geometry."""
    if spec is None:
        return None
    reason = spec.reason or ("the GeoJSON features" if not spec.columns else "given by the importer")
    if options.geometry is not None:
        reason = "given by the importer"
    out: dict[str, Any] = {"kind": spec.kind, "columns": list(spec.columns), "crs": crs, "reason": reason}
    if spec.notes:
        out["notes"] = list(spec.notes)
    return out


async def _record_failure(conn: asyncpg.Connection, dataset_id: int, report: dict[str, Any]) -> int:
    return int(
        await conn.fetchval(
            """INSERT INTO dataset_import (dataset_id, status, source, mode, rows_read, rows_loaded, rows_rejected,
                   report, finished_at)
               VALUES ($1, 'failed', $2, $3, $4, 0, $5, $6::text::jsonb, now()) RETURNING id""",
            dataset_id,
            report["source"],
            report["mode"],
            report["rows_read"],
            report["rows_rejected"],
            orjson.dumps(report).decode(),
        )
    )


async def run_import(conn: asyncpg.Connection, source: RowSource, slug: str, options: ImportOptions) -> dict[str, Any]:
    """Load `source` into dataset `slug`; returns the import report or raises ImportFailedError (with it)."""
    if options.mode not in MODES:
        raise BadRequestError(f"mode must be one of {', '.join(MODES)}")
    started = time.monotonic()
    tz = _zone(options.timezone)
    projection = reprojector(options.crs or getattr(source, "legacy_crs", None) or "EPSG:4326")
    run = _Run(source, options)
    if isinstance(source, GeoJsonSource):
        # Properties are known from the first features only: add those of the schema, and when the schema may be
        # inferred, every property of the file.
        existing = options.schema or getattr(await get_dataset(conn, slug), "schema", None)
        if existing is not None:
            source.include(existing.names)
        elif options.create:
            source.widen()
    records = source.records()
    sample, records = _take_sample(records, options.sample_rows)
    report: dict[str, Any] = {
        "dataset": slug,
        "source": source.label,
        "mode": options.mode,
        "dialect": source.describe(),
        **options.extra_report,
    }
    existed = False
    dataset_id: int | None = None
    try:
        async with conn.transaction():
            dataset = await get_dataset(conn, slug, lock=True)
            described = None if dataset is not None else await described_dataset(conn, slug)
            existed = dataset is not None or described is not None
            if dataset is None:
                if described is None and not options.create:
                    raise NotFoundError(f"dataset {slug!r} does not exist (use --create to create it)")
                rows = [cells for _, cells, _ in sample] + getattr(source, "late_rows", [])
                schema = options.schema or infer_table_schema(source.header, rows)
                report["schema_inferred"] = options.schema is None
                report["table_schema"] = schema.descriptor
                if described is not None:  # described first (metadata only): its first file makes its table
                    dataset = await attach_table(conn, described, slug, schema)
                else:
                    meta = options.meta
                    if not meta.title:
                        meta = dataclasses.replace(meta, title=humanised_title(source.label))
                    dataset = await create_dataset(conn, slug, schema, meta)
            elif options.schema is not None and _shape(options.schema) != _shape(dataset.schema):
                raise ConflictError(
                    f"dataset {slug!r} already has a different Table Schema; import without --schema to use it"
                )
            dataset_id = dataset.id
            if options.mode == "upsert" and not dataset.schema.primary_key:
                raise BadRequestError(
                    f"upsert needs a primaryKey in the Table Schema of {slug!r}; use append or replace"
                )
            spec = _geometry_spec(source, dataset.schema, sample, options)
            report["geometry"] = _geometry_report(spec, projection.crs, options)
            if spec is not None:
                run.warnings.extend(spec.notes)
            import_id = await conn.fetchval(
                "INSERT INTO dataset_import (dataset_id, source, mode) VALUES ($1, $2, $3) RETURNING id",
                dataset.id,
                source.label,
                options.mode,
            )
            report["import_id"] = import_id
            counts = await _load(conn, run, dataset, spec, projection, records, tz, import_id, sample)
            _warn_unseen(run, getattr(source, "unseen", {}))
            report.update(_summary(run))
            if run.refused:
                raise _Refused
            if run.stats is not None and run.rows_rejected == 0:
                await write_dataset_stats(conn, dataset, run.stats)
            else:
                only_points = run.direct and run.set_based and spec is not None and spec.is_point
                await refresh_dataset_stats(conn, dataset, only_points=only_points)
            run.lap("extents_s")
            report.update(counts, status="succeeded", duration_s=round(time.monotonic() - started, 3))
            report.update(await _publication(conn, dataset.id))
            report["timings"] = run.timings
            await conn.execute(
                """UPDATE dataset_import SET status = 'succeeded', rows_read = $2, rows_loaded = $3,
                       rows_rejected = $4, report = $5::text::jsonb, finished_at = now() WHERE id = $1""",
                import_id,
                run.rows_read,
                counts["rows_inserted"] + counts["rows_updated"],
                run.rows_rejected,
                orjson.dumps(report).decode(),
            )
        logger.info(
            "imported %s into %s: %d rows read, %d loaded, %d rejected",
            source.label,
            slug,
            run.rows_read,
            counts["rows_inserted"] + counts["rows_updated"],
            run.rows_rejected,
        )
        return report
    except _Refused:
        pass
    finally:
        source.close()
        await _drop_load_tables(conn, run)
    # Refused: the transaction rolled back; record the attempt where a dataset remains to attach it to.
    report.update(_summary(run), status="failed", duration_s=round(time.monotonic() - started, 3))
    report["timings"] = run.timings
    report.pop("import_id", None)
    if existed and dataset_id is not None:
        report["import_id"] = await _record_failure(conn, dataset_id, report)
    first = run.errors[0] if run.errors else None
    where = f" (first: line {first['line']}, {first['column'] or 'row'}: {first['reason']})" if first else ""
    raise ImportFailedError(f"{run.error_count} error(s) in {source.label}; nothing was loaded{where}", report)


async def _publication(conn: asyncpg.Connection, dataset_id: int) -> dict[str, Any]:
    """The dataset's status and, for a draft, what it lacks to be published: the report shows them at once."""
    row = await conn.fetchrow(
        "SELECT slug, title, description, licence, publisher, update_frequency, themes, status FROM dataset "
        "WHERE id = $1",
        dataset_id,
    )
    missing = [m.as_dict() for m in missing_metadata(dict(row))] if row is not None else []
    return {"dataset_status": row["status"] if row else None, "metadata_missing": missing}


async def _drop_load_tables(conn: asyncpg.Connection, run: _Run) -> None:
    """After the import's transaction: a load table not published (refused, failed) is dropped; a published one
    was renamed, so nothing is left under its name."""
    for name in run.cleanup:
        try:
            await conn.execute(f"DROP TABLE IF EXISTS {qualified(SCHEMA, name)}")
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError) as exc:  # the next parallel load drops it
            logger.warning("could not drop the load table %s: %s", name, exc)


def _warn_unseen(run: _Run, unseen: dict[str, int]) -> None:
    """GeoJSON properties first seen after the features the header was read from: ignored, and said so."""
    if unseen:
        shown = ", ".join(f"{name!r} (first on line {line})" for name, line in sorted(unseen.items())[:10])
        more = " …" if len(unseen) > 10 else ""
        one = len(unseen) == 1
        run.warnings.append(
            f"{len(unseen)} propert{'y' if one else 'ies'} first seen after the first {SAMPLE_FEATURES:,} features "
            f"{'is' if one else 'are'} not in the dataset's schema and {'was' if one else 'were'} ignored: "
            f"{shown}{more}"
        )


def _shape(schema: TableSchema) -> list[tuple[str, str]]:
    return [(f.name, f.type) for f in schema.fields]


def _summary(run: _Run) -> dict[str, Any]:
    summary: dict[str, Any] = {
        "rows_read": run.rows_read,
        "rows_rejected": run.rows_rejected,
        "error_count": run.error_count,
        "errors": sorted(run.errors, key=lambda e: e["line"] or 0),
        "errors_truncated": run.error_count > len(run.errors),
        "warnings": run.warnings,
    }
    if run.stopped_early:
        summary["stopped_early"] = True
    return summary


async def _load(
    conn: asyncpg.Connection,
    run: _Run,
    dataset: Dataset,
    spec: GeometrySpec | None,
    projection: Reprojector,
    records: Iterator[Record],
    tz: ZoneInfo,
    import_id: int,
    sample: list[Record],
) -> dict[str, int]:
    """Stream, validate and stage every record; then uniqueness checks and the merge. Returns the counts."""
    schema = dataset.schema
    header = run.source.header
    mapping = _column_map(schema, header, run)
    fields = schema.fields
    point = spec is not None and spec.is_point
    shape_mode = spec is not None and not spec.is_point

    # Into an empty table (a new dataset, or replace), rows are COPied straight into it, its unique and GiST
    # indexes dropped and built once at the end; uniqueness is then checked on the table itself.
    direct = (
        all(f.type not in _STAGE_TYPES for f in fields)
        and not (shape_mode and run.options.invalid_geometry == "repair")
        and (run.options.mode == "replace" or not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {dataset.table})"))
    )
    lines_loaded = LineMap()
    fast = (
        setload.plan(run.source, schema, mapping, spec, projection, sample)
        if run.options.set_based and run.error_count == 0
        else None
    )
    if direct and fast is not None:
        counts = await _load_parallel(conn, run, dataset, fast, projection, lines_loaded, import_id)
        if counts is not None:
            return counts
    if direct:
        run.direct = True
        if run.options.mode == "replace":
            deleted = await conn.execute(f"DELETE FROM {dataset.table}")
            run.rows_deleted = int(deleted.rsplit(" ", 1)[-1])
        for statement in index_ddl(dataset.table_name, schema)[0]:
            await conn.execute(statement)
        await conn.execute("SET LOCAL maintenance_work_mem = '256MB'")
        await conn.set_type_codec("geometry", schema="public", encoder=bytes, decoder=bytes, format="binary")
        copy_target, copy_schema = dataset.table_name, SCHEMA
        stage_cols = [f.name for f in fields] + ["geom"]
    else:
        copy_target, copy_schema = STAGE, None
        stage_cols = [f.name for f in fields] + [LINE] + ([X, Y] if point else [WKB] if shape_mode else [])
        definition = [f"{quote_ident(f.name)} {_STAGE_TYPES.get(f.type, f.sql_type)}" for f in fields]
        definition.append(f"{quote_ident(LINE)} bigint")
        if point:
            definition += [f"{quote_ident(X)} double precision", f"{quote_ident(Y)} double precision"]
        elif shape_mode:
            definition.append(f"{quote_ident(WKB)} bytea")
        await conn.execute(f"DROP TABLE IF EXISTS {STAGE}")
        await conn.execute(f"CREATE TEMP TABLE {STAGE} ({', '.join(definition)}) ON COMMIT DROP")

    done = False
    try:
        if fast is not None:
            done = await _load_set_based(conn, run, dataset, fast, projection, direct, lines_loaded, stage_cols)
        if not done:
            lines_loaded = LineMap()
            await _load_in_process(
                conn, run, dataset, spec, projection, records, tz, import_id, mapping, direct, lines_loaded,
                copy_target, copy_schema, stage_cols,
            )  # fmt: skip
    finally:
        if direct:
            await conn.reset_type_codec("geometry", schema="public")
    run.lap("read_validate_copy_s")
    if run.stopped_early:
        return {}
    # Even a refused file gets its uniqueness checked, so that one report lists every problem.
    if direct:
        await _check_unique_direct(conn, run, dataset, import_id, lines_loaded)
    else:
        await _check_unique(conn, run, dataset, import_id)
    run.lap("unique_checks_s")
    if schema.foreign_keys and not run.fatal:
        await _check_foreign_keys(conn, run, dataset, import_id, direct, lines_loaded)
        run.lap("foreign_key_checks_s")
    if run.refused:
        return {}
    counts = await (_finish_direct(conn, run, dataset) if direct else _merge(conn, run, dataset, point, shape_mode))
    run.lap("merge_and_indexes_s")
    return counts


async def _load_in_process(
    conn: asyncpg.Connection,
    run: _Run,
    dataset: Dataset,
    spec: GeometrySpec | None,
    projection: Reprojector,
    records: Iterator[Record],
    tz: ZoneInfo,
    import_id: int,
    mapping: list[int],
    direct: bool,
    lines_loaded: LineMap,
    copy_target: str,
    copy_schema: str | None,
    stage_cols: list[str],
) -> None:
    """Validate row by row in a thread of this process while the batches are COPied: every file SQL cannot
    vouch for, and so the one that reports each problem with its line, column and reason."""
    pipeline = _pipeline(run, dataset, spec, projection, records, tz, import_id, mapping, direct, lines_loaded)
    async for batch, rejections in _in_thread(pipeline):
        if batch:
            await conn.copy_records_to_table(copy_target, schema_name=copy_schema, records=batch, columns=stage_cols)
            run.rows_staged += len(batch)
        if rejections:
            await _write_rejections(conn, rejections)


async def _load_set_based(
    conn: asyncpg.Connection,
    run: _Run,
    dataset: Dataset,
    fast: setload.FastPlan,
    projection: Reprojector,
    direct: bool,
    lines_loaded: LineMap,
    stage_cols: list[str],
) -> bool:
    """The file COPied as text, then checked and converted by one INSERT … SELECT (see setload); False when SQL
    cannot vouch for every row, after rolling the attempt back (the caller then takes the per-row path)."""
    assert isinstance(run.source, CsvSource)
    if direct and not run.native_refused and await _load_native(conn, run, dataset, fast, projection, lines_loaded):
        return True
    lines_loaded.clear()  # the native attempt's lines, rolled back with it
    stream = setload.RawStream(run.source, lines_loaded, fast)
    try:
        async with conn.transaction():
            await setload.copy_raw(conn, stream, fast, _in_thread(stream.chunks()), numbered=not direct)
            run.lap("copy_raw_s")
            line = None if direct else (lines_loaded.starts, lines_loaded.offsets)
            pg16 = conn.get_server_version() >= (16, 0)
            select, params = setload.select_sql(
                dataset.schema,
                fast,
                projection,
                run.options.timezone,
                line,
                direct,
                pg16,
                stream.shapes_checked,
                stream.zoned,
            )
            target = dataset.table if direct else STAGE
            status = await conn.execute(f"INSERT INTO {target} ({setload.quoted(stage_cols)}) {select}", *params)
            inserted = int(status.rsplit(" ", 1)[-1])
            if inserted != stream.rows:
                raise setload.NotVouched(f"{stream.rows - inserted} row(s) need the careful path")
    except (setload.NotVouched, asyncpg.PostgresError) as exc:
        logger.info("%s: per-row path (%s)", run.source.label, str(exc)[:200])
        run.timings["set_based"] = 0
        return False
    run.went_in_set_based(inserted)
    return True


async def _load_native(
    conn: asyncpg.Connection,
    run: _Run,
    dataset: Dataset,
    fast: setload.FastPlan,
    projection: Reprojector,
    lines_loaded: LineMap,
) -> bool:
    """Cells already in PostgreSQL's input forms (decimal commas aside) are COPied straight into the empty typed
    table, the point made by a generated column, then one query checks what COPY's type input does not. False
    (rolled back) when any chunk or row is not vouched for: the text-staging path then tries."""
    assert isinstance(run.source, CsvSource)
    stream = setload.RawStream(run.source, lines_loaded, fast)
    stream.native = setload.native_regex(dataset.schema, fast, stream.delimiter)
    if stream.native is None:
        return False
    table = dataset.table
    # One dropped column at most per table: a table that already has one (an earlier native load) is not altered
    # again, so repeated replace imports never pile dropped columns up.
    dropped = await conn.fetchval(
        "SELECT count(*) FROM pg_attribute WHERE attrelid = $1::regclass AND attisdropped", table
    )
    point = setload.native_geometry(dataset.schema, fast)
    if point is not None and dropped:
        return False
    try:
        async with conn.transaction():
            if point is not None:
                await conn.execute(
                    f"ALTER TABLE {table} DROP COLUMN geom, ADD COLUMN geom geometry(Geometry, 4326) "
                    f"GENERATED ALWAYS AS ({point}) STORED"
                )
            await conn.copy_to_table(
                dataset.table_name,
                schema_name=SCHEMA,
                source=_in_thread(stream.chunks()),
                columns=setload.native_columns(dataset.schema, fast),
                format="csv",
                delimiter=stream.delimiter,
                encoding=stream.copy_encoding,
            )
            if point is not None:
                await conn.execute(f"ALTER TABLE {table} ALTER COLUMN geom DROP EXPRESSION")
            run.lap("copy_native_s")
            # The check of every row and the dataset's statistics in one pass.
            check, params = setload.native_check_sql(dataset.schema, fast, projection, table)
            stats = await conn.fetchrow(check, *params)
            if stats["bad"]:
                raise setload.NotVouched("a row breaks a constraint")
            run.lap("check_stats_s")
    except (setload.NotVouched, asyncpg.PostgresError) as exc:
        logger.info("%s: not the native path (%s)", run.source.label, str(exc)[:200])
        return False
    run.went_in_set_based(stream.rows, "native")
    run.stats = stats
    return True


async def _load_parallel(
    conn: asyncpg.Connection,
    run: _Run,
    dataset: Dataset,
    fast: setload.FastPlan,
    projection: Reprojector,
    lines_loaded: LineMap,
    import_id: int,
) -> dict[str, int] | None:
    """A big clean file into an empty table on two connections (see ingest.files.parload): the counts, {} when
    refused (duplicates, foreign keys: reported with their lines), None when the native path cannot vouch for the
    file (nothing changed: the other paths then run)."""
    connect = run.options.connect
    source = run.source
    if connect is None or not isinstance(source, CsvSource):
        return None
    dialect = setload.copy_dialect(source)
    native = setload.native_regex(dataset.schema, fast, dialect.delimiter)
    if native is None:
        return None
    cut = parload.split(source.file.path, source.file._line, run.options.parallel_min_bytes)
    if cut is None:
        return None
    if not await parload.replaceable(conn, dataset.table):
        logger.info("%s: loaded in place (objects of their own depend on %s)", source.label, dataset.table)
        return None
    point = setload.native_geometry(dataset.schema, fast)
    load_table = parload.table_name(import_id)
    await parload.guard(conn, import_id)
    # Row ids go on from the table's (as a replace by DELETE would): never one reused.
    sequence = await conn.fetchval("SELECT pg_get_serial_sequence($1, '_fid')", dataset.table)
    last_fid = int(await conn.fetchval(f"SELECT last_value - (NOT is_called)::int FROM {sequence}"))  # quoted by PG
    helpers: list[asyncpg.Connection] = []
    try:
        helpers = list(await asyncio.gather(connect(), connect()))
        await parload.clean_orphans(helpers[0])
        run.cleanup.append(load_table)  # until it is published
        loading = dataclasses.replace(dataset, table_name=load_table)
        try:
            loaded = await parload.load(
                (helpers[0], helpers[1]),
                loading,
                fast,
                native,
                point,
                setload.native_check_sql(dataset.schema, fast, projection, loading.table),
                cut,
                dialect,
                _in_thread,
                last_fid + 1,
            )
        except (setload.NotVouched, asyncpg.PostgresError) as exc:
            logger.info("%s: not the parallel native path (%s)", source.label, str(exc)[:200])
            run.native_refused = True  # the same COPY and check in one transaction would fail alike
            try:  # now rather than after the transaction (run.cleanup)
                await helpers[1].execute(f"DROP TABLE IF EXISTS {loading.table}")
            except (asyncpg.PostgresError, asyncpg.InterfaceError) as drop_error:
                logger.info("load table %s dropped later (%s)", load_table, drop_error)
            return None
    finally:
        await asyncio.gather(*(helper.close() for helper in helpers), return_exceptions=True)
    run.timings.update(loaded.timings)
    run.lap("parallel_load_s")
    run.direct = True
    run.went_in_set_based(loaded.rows, "native", "parallel")
    run.stats = loaded.stats
    lines_loaded.extend(source.file._line + 1, loaded.rows)  # _fid last_fid + n is on line (header lines) + n
    if not loaded.unique_built:
        # A duplicate: the careful check finds each one with its lines (and, skipping, moves them out).
        for name in index_names(load_table, dataset.schema)[0]:
            await conn.execute(f"DROP INDEX IF EXISTS {qualified(SCHEMA, name)}")
        await _check_unique_direct(conn, run, loading, import_id, lines_loaded)
    run.lap("unique_checks_s")
    if dataset.schema.foreign_keys and not run.fatal:
        await _check_foreign_keys(conn, run, loading, import_id, True, lines_loaded)
        run.lap("foreign_key_checks_s")
    if run.refused:
        return {}
    if run.options.mode == "replace":
        run.rows_deleted = int(await conn.fetchval(f"SELECT count(*) FROM {dataset.table}"))
    next_fid = last_fid + loaded.rows + 1
    await parload.publish(conn, dataset, load_table, next_fid, point is not None, loaded.unique_built)
    run.lap("publish_s")
    return {"rows_inserted": run.rows_staged, "rows_updated": 0, "rows_unchanged": 0, "rows_deleted": run.rows_deleted}


def _pipeline(
    run: _Run,
    dataset: Dataset,
    spec: GeometrySpec | None,
    projection: Reprojector,
    records: Iterator[Record],
    tz: ZoneInfo,
    import_id: int,
    mapping: list[int],
    direct: bool,
    lines_loaded: LineMap,
    fast_row: Callable[[list[str]], list[Any]] | None = None,
) -> Iterator[tuple[list[list[Any]], list[tuple[Any, ...]]]]:
    """Records → validated batches ready to COPY, with their rejections (CPU only: runs beside the COPYs)."""
    schema = dataset.schema
    header = run.source.header
    fields = schema.fields
    plan = [
        (index, mapping[index], build_converter(f, tz), f.required or f.name in schema.primary_key, f.name)
        for index, f in enumerate(fields)
    ]
    missing = frozenset(schema.missing_values) | {""}
    ncols = len(header)
    nfields = len(fields)
    point = spec is not None and spec.is_point
    shape_mode = spec is not None and not spec.is_point
    geo_index = [header.index(c) for c in spec.columns] if spec is not None and spec.columns else []
    geo_label = ",".join(spec.columns) if spec is not None and spec.columns else "geometry"
    fast = fast_row or compile_row(list(fields), mapping, tz, missing, schema.primary_key)

    def slow(cells: list[str]) -> tuple[list[Any], list[tuple[str, str, str]] | None]:
        """Cell by cell, collecting every problem of the row with its column and reason."""
        out: list[Any] = [None] * nfields
        problems: list[tuple[str, str, str]] | None = None
        for index, column, convert, required, name in plan:
            cell = cells[column] if column >= 0 else ""
            if cell in missing or cell.isspace():
                if required:
                    problems = problems or []
                    problems.append((name, "constraint-error", "a value is required"))
                continue
            try:
                out[index] = convert(cell)
            except CellError as exc:
                problems = problems or []
                problems.append((name, exc.code, exc.message))
        return out, problems

    # Lon/lat columns that are number fields of the schema are converted once and reused for the geometry.
    reuse_xy: tuple[int, int] | None = None
    if spec is not None and spec.kind == "lonlat":
        names = [f.name for f in fields]
        numbers = all(c in names and fields[names.index(c)].type == "number" for c in spec.columns)
        if numbers and all(mapping[names.index(c)] == header.index(c) for c in spec.columns):
            reuse_xy = (names.index(spec.columns[0]), names.index(spec.columns[1]))

    def produce() -> Iterator[tuple[list[list[Any]], list[tuple[Any, ...]]]]:
        """Validate records into batches ready to COPY (CPU only: runs in a thread, beside the COPYs)."""
        batch: list[list[Any]] = []
        rejections: list[tuple[Any, ...]] = []
        limit = run.options.max_errors
        skip = run.options.skip_invalid

        def reject(line: int, cells: list[str], reason: str) -> None:
            run.rows_rejected += 1
            if skip:
                rejections.append(_rejection(run, dataset.id, import_id, line, cells, reason))

        for line, cells, geometry in records:
            run.rows_read += 1
            if len(cells) != ncols:
                if len(cells) > ncols and not any(c.strip() for c in cells[ncols:]):
                    cells = cells[:ncols]
                else:
                    code = "extra-cell" if len(cells) > ncols else "missing-cell"
                    reason = f"the row has {len(cells)} values, the header has {ncols}"
                    run.error(line, None, code, reason)
                    reject(line, cells, reason)
                    if run.refused and run.error_count >= limit:
                        run.stopped_early = True
                        break
                    continue
            try:
                out, problems = fast(cells), None
            except Exception:  # anything unusual: the careful path says exactly what is wrong
                out, problems = slow(cells)
            if problems:
                pass  # refused already; its geometry is not looked at
            elif point:
                try:
                    if reuse_xy:
                        x, y = out[reuse_xy[0]], out[reuse_xy[1]]
                        if (x is None) != (y is None):
                            raise GeometryError("one coordinate is empty and the other is not")
                        xy = None if x is None else (x, y)
                    else:
                        xy = read_point(spec.kind, [cells[i] for i in geo_index])  # type: ignore[union-attr]
                    out += [line, xy[0], xy[1]] if xy else [line, None, None]
                except GeometryError as exc:
                    problems = [(geo_label, "geometry-error", str(exc))]
            elif shape_mode:
                try:
                    if run.source.format == "geojson":
                        shape = geojson_geometry(geometry)
                    else:
                        shape = read_shape(spec.kind, cells[geo_index[0]])  # type: ignore[union-attr]
                    out += [line, shape]
                except GeometryError as exc:
                    problems = [(geo_label, "geometry-error", str(exc))]
            else:
                out.append(line)
            if problems:
                for name, code, reason in problems:
                    run.error(line, name, code, reason)
                reject(line, cells, "; ".join(f"{name}: {reason}" for name, _, reason in problems))
                if run.refused and run.error_count >= limit:
                    run.stopped_early = True
                    break
                continue
            batch.append(out)
            if len(batch) >= run.options.batch_size:
                yield finish(batch, reject), rejections
                batch, rejections = [], []
        if batch or rejections:
            yield finish(batch, reject), rejections

    def finish(batch: list[list[Any]], reject: Callable[[int, list[str], str], None]) -> list[list[Any]]:
        kept = _geometries(run, batch, point, shape_mode, projection, geo_label, reject)
        return _direct_rows(kept, point, shape_mode, lines_loaded) if direct else kept

    return produce()


def _geometries(
    run: _Run,
    batch: list[list[Any]],
    point: bool,
    shape_mode: bool,
    projection: Reprojector,
    geo_label: str,
    reject: Callable[[int, list[str], str], None],
) -> list[list[Any]]:
    """Reproject a batch's geometries, refusing those outside the CRS's area of use; returns the rows kept."""
    keep = batch
    if point:
        located = [row for row in batch if row[-2] is not None]
        if located:
            lons, lats, reasons = projection.points([r[-2] for r in located], [r[-1] for r in located])
            refused: set[int] = set()
            for row, lon, lat, reason in zip(located, lons, lats, reasons, strict=True):
                if reason:
                    run.error(row[-3], geo_label, "geometry-error", reason)
                    reject(row[-3], [_text(v) for v in row[:-3]], reason)
                    refused.add(id(row))
                else:
                    row[-2], row[-1] = lon, lat
            if refused:
                keep = [row for row in batch if id(row) not in refused]
    elif shape_mode:
        import shapely  # here only: a point file's import need not load it

        keep = []
        for row in batch:
            shape = row[-1]
            if shape is None:
                keep.append(row)
                continue
            reprojected, reason = projection.shape(shape)
            if reason is None and run.options.invalid_geometry == "reject" and not shapely.is_valid(reprojected):
                reason = f"invalid geometry: {shapely.is_valid_reason(reprojected)}"
            if reason:
                run.error(row[-2], geo_label, "geometry-error", reason)
                reject(row[-2], [_text(v) for v in row[:-2]], reason)
                continue
            row[-1] = shapely.to_wkb(reprojected, output_dimension=2, byte_order=1)
            keep.append(row)
    return keep


_DONE = object()


async def _in_thread(items: Iterator[Any], depth: int = 2) -> AsyncIterator[Any]:
    """Run a CPU-bound generator in a thread, `depth` items ahead, so parsing overlaps the server's COPY work.

    The queue is bounded (memory stays at a few batches); if the consumer stops early, the thread is told to
    stop and the queue drained so it never blocks forever.
    """
    slots: queue.Queue[Any] = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            slots.put(exc)

    def take() -> Any:
        # Never a wait without end: a cancelled import (SIGTERM) sets `stop`, and asyncio.run then waits for the
        # executor's threads, this one included.
        while not stop.is_set():
            try:
                return slots.get(timeout=0.1)
            except queue.Empty:
                continue
        return _DONE

    thread = threading.Thread(target=work, name="import-parser", daemon=True)
    thread.start()
    loop = asyncio.get_running_loop()
    try:
        while True:
            item = await loop.run_in_executor(None, take)
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():
            try:
                slots.get_nowait()
            except queue.Empty:
                await asyncio.sleep(0.01)
        thread.join()


def _direct_rows(batch: list[list[Any]], point: bool, shape_mode: bool, lines: LineMap) -> list[list[Any]]:
    """Rows for a COPY straight into the dataset table: the line number set aside, the geometry as EWKB."""
    pack = _POINT_EWKB.pack
    if point:
        for row in batch:
            lat = row.pop()
            lon = row.pop()
            lines.append(row.pop())
            row.append(None if lon is None else pack(1, 0x20000001, 4326, lon, lat))
    elif shape_mode:
        for row in batch:
            wkb = row.pop()
            lines.append(row.pop())
            row.append(None if wkb is None else _ewkb(wkb))
    else:
        for row in batch:
            lines.append(row.pop())
            row.append(None)
    return batch


_POINT_EWKB = struct.Struct("<BIIdd")


def _ewkb(wkb: bytes) -> bytes:
    """WKB (little-endian, from shapely) → EWKB with SRID 4326, what PostGIS's binary input reads."""
    (kind,) = struct.unpack_from("<I", wkb, 1)
    return wkb[:1] + struct.pack("<II", kind | 0x20000000, 4326) + wkb[5:]


async def _check_unique_direct(
    conn: asyncpg.Connection, run: _Run, dataset: Dataset, import_id: int, lines: LineMap
) -> None:
    """Uniqueness over rows COPied straight into an empty table: _fid order is file order, so lines follow."""
    schema = dataset.schema
    target = dataset.table
    keys = schema.unique_keys()
    if not keys:
        return
    if not lines:
        for statement in index_ddl(dataset.table_name, schema)[1][: len(keys)]:
            await conn.execute(statement)
        return
    first_fid = int(await conn.fetchval(f"SELECT min(_fid) FROM {target}"))
    bad: dict[int, tuple[int, str]] = {}
    constraints = index_ddl(dataset.table_name, schema)[1][: len(keys)]
    failed: list[str] = []
    for key, constraint in zip(keys, constraints, strict=True):
        cols = ", ".join(quote_ident(k) for k in key)
        label = ", ".join(key)
        not_null = " AND ".join(f"{quote_ident(k)} IS NOT NULL" for k in key)
        # Building the constraint is the check: only when it fails are the duplicates looked for, with lines.
        try:
            async with conn.transaction():
                await conn.execute(constraint)
            continue
        except asyncpg.UniqueViolationError:
            failed.append(constraint)
        rows = await conn.fetch(
            f"""SELECT _fid, first FROM (SELECT _fid, min(_fid) OVER (PARTITION BY {cols}) AS first
                FROM {target} WHERE {not_null}) AS s WHERE _fid <> first ORDER BY _fid"""
        )
        for row in rows:
            line = lines[row["_fid"] - first_fid]
            reason = f"duplicate value of ({label}): already on line {lines[row['first'] - first_fid]}"
            run.error(line, label, "unique-error" if key != schema.primary_key else "primary-key", reason)
            bad.setdefault(line, (row["_fid"], reason))
    await _reject_rows(conn, run, dataset, import_id, True, bad)
    if bad and run.options.skip_invalid:
        for constraint in failed:
            await conn.execute(constraint)


async def _finish_direct(conn: asyncpg.Connection, run: _Run, dataset: Dataset) -> dict[str, int]:
    """Build the GiST index once, now that the rows are in (unique constraints were built by the check)."""
    keys = dataset.schema.unique_keys()
    try:
        for statement in index_ddl(dataset.table_name, dataset.schema)[1][len(keys) :]:
            await conn.execute(statement)
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        run.fatal = True
        run.error(None, None, "database-error", f"the database refused the rows: {exc}")
        return {}
    return {"rows_inserted": run.rows_staged, "rows_updated": 0, "rows_unchanged": 0, "rows_deleted": run.rows_deleted}


def _text(value: Any) -> str:
    return "" if value is None else str(value)


def _rejection(run: _Run, dataset_id: int, import_id: int, line: int, cells: list[str], reason: str) -> tuple[Any, ...]:
    payload = run.source.raw_line(cells)
    size = len(payload.encode("utf-8"))
    if size > MAX_PAYLOAD_BYTES:
        payload = payload.encode("utf-8")[: MAX_PAYLOAD_BYTES - 4].decode("utf-8", errors="ignore")
    return (run.source.format, run.source.label, line, dataset_id, import_id, reason[:2000], payload, size)


async def _write_rejections(conn: asyncpg.Connection, rejections: list[tuple[Any, ...]]) -> None:
    await copy_and_merge(
        conn,
        schema="public",
        table="ingest_rejection",
        columns=("source", "file", "line", "dataset_id", "import_id", "reason", "payload", "payload_bytes"),
        records=rejections,
    )


async def _check_unique(conn: asyncpg.Connection, run: _Run, dataset: Dataset, import_id: int) -> None:
    """Primary key and unique constraints, checked over the whole staged file (and the table, when appending)."""
    schema = dataset.schema
    target = dataset.table
    bad: dict[int, str] = {}
    mode = run.options.mode
    for key in schema.unique_keys():
        cols = ", ".join(quote_ident(k) for k in key)
        label = ", ".join(key)
        not_null = " AND ".join(f"{quote_ident(k)} IS NOT NULL" for k in key)
        has_duplicates = await conn.fetchval(
            f"SELECT EXISTS (SELECT 1 FROM {STAGE} WHERE {not_null} GROUP BY {cols} HAVING count(*) > 1)"
        )
        rows = (
            []
            if not has_duplicates
            else await conn.fetch(
                f"""SELECT {LINE} AS line, first FROM (
                    SELECT {LINE}, min({LINE}) OVER (PARTITION BY {cols}) AS first FROM {STAGE} WHERE {not_null}
                ) AS s WHERE {LINE} <> first ORDER BY {LINE}"""
            )
        )
        for row in rows:
            reason = f"duplicate value of ({label}): already on line {row['first']}"
            run.error(row["line"], label, "unique-error" if key != schema.primary_key else "primary-key", reason)
            bad.setdefault(row["line"], reason)
        join = " AND ".join(f"t.{quote_ident(k)} = s.{quote_ident(k)}" for k in key)
        clash: str | None = None
        if mode == "append":
            clash = f"SELECT s.{LINE} AS line FROM {STAGE} s JOIN {target} t ON {join} ORDER BY 1"
        elif mode == "upsert" and key != schema.primary_key:
            pk_s = ", ".join(f"s.{quote_ident(k)}" for k in schema.primary_key)
            pk_t = ", ".join(f"t.{quote_ident(k)}" for k in schema.primary_key)
            clash = (
                f"SELECT s.{LINE} AS line FROM {STAGE} s JOIN {target} t ON {join} "
                f"WHERE ({pk_s}) IS DISTINCT FROM ({pk_t}) ORDER BY 1"
            )
        if clash:
            for row in await conn.fetch(clash):
                reason = f"value of ({label}) already in the dataset"
                run.error(row["line"], label, "unique-error", reason)
                bad.setdefault(row["line"], reason)
    await _reject_rows(conn, run, dataset, import_id, False, {line: (line, reason) for line, reason in bad.items()})


async def _check_foreign_keys(
    conn: asyncpg.Connection, run: _Run, dataset: Dataset, import_id: int, direct: bool, lines: LineMap
) -> None:
    """Table Schema foreignKeys, set-wise: each loaded row's key must exist in the referenced dataset's table."""
    schema = dataset.schema
    if direct:
        candidates, row_id = dataset.table, "c._fid"
        first_fid = int(await conn.fetchval(f"SELECT coalesce(min(_fid), 0) FROM {dataset.table}"))
    else:
        candidates, row_id = STAGE, f"c.{LINE}"
    bad: dict[int, tuple[int, str]] = {}  # line → (row id, reason)
    for key in schema.foreign_keys:
        label = ", ".join(key.fields)
        if key.resource == "":
            referenced, ref_schema = dataset, schema
            name = "this dataset"
        else:
            slug = run.options.resources.get(key.resource, key.resource)
            found = await get_dataset(conn, slug)
            if found is None:
                run.fatal = True
                reason = f"the dataset {slug!r} of resource {key.resource!r} does not exist: load it first"
                run.error(None, label, "foreign-key", reason)
                continue
            referenced, ref_schema, name = found, found.schema, f"dataset {slug!r}"
        missing = [f for f in key.reference_fields if f not in ref_schema.names]
        if missing:
            run.fatal = True
            run.error(None, label, "foreign-key", f"{name} has no field {missing[0]!r}")
            continue
        table = referenced.table
        if key.resource == "" and not direct:
            cols = ", ".join(quote_ident(f) for f in key.reference_fields)
            table = f"(SELECT {cols} FROM {dataset.table} UNION ALL SELECT {cols} FROM {STAGE})"
        pairs = []
        for mine, theirs in zip(key.fields, key.reference_fields, strict=True):
            same = schema.field(mine).type == ref_schema.field(theirs).type
            left, right = f"r.{quote_ident(theirs)}", f"c.{quote_ident(mine)}"
            pairs.append(f"{left} = {right}" if same else f"{left}::text = {right}::text")
        not_null = " AND ".join(f"c.{quote_ident(f)} IS NOT NULL" for f in key.fields)
        shown = " || ', ' || ".join(f"c.{quote_ident(f)}::text" for f in key.fields)
        rows = await conn.fetch(
            f"""SELECT {row_id} AS id, {shown} AS shown FROM {candidates} c
                WHERE {not_null} AND NOT EXISTS (SELECT 1 FROM {table} r WHERE {" AND ".join(pairs)})
                ORDER BY 1"""
        )
        target = f"({', '.join(key.reference_fields)}) of {name}"
        for row in rows:
            line = lines[row["id"] - first_fid] if direct else row["id"]
            reason = f"value ({_short(row['shown'])}) not found in {target}"
            run.error(line, label, "foreign-key", reason)
            bad.setdefault(line, (row["id"], reason))
    await _reject_rows(conn, run, dataset, import_id, direct, bad)


def _short(text: str, limit: int = 60) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


async def _reject_rows(
    conn: asyncpg.Connection, run: _Run, dataset: Dataset, import_id: int, direct: bool, bad: dict[int, tuple[int, str]]
) -> None:
    """Count the refused rows (line → row id, reason); with skip_invalid, move them to ingest_rejection (row id:
    _fid in the dataset table, the line in the staging table)."""
    if not bad:
        return
    run.rows_rejected += len(bad)
    if not run.options.skip_invalid:
        return
    run.rows_staged -= len(bad)
    table, key = (dataset.table, "_fid") if direct else (STAGE, LINE)
    ordered = sorted(bad.items())
    await conn.execute(
        f"""INSERT INTO ingest_rejection (source, file, line, dataset_id, import_id, reason, payload, payload_bytes)
            SELECT $1, $2, __td_r.line, $3, $4, __td_r.reason, left(row_to_json(__td_t)::text, 16000),
                   octet_length(row_to_json(__td_t)::text)
            FROM {table} __td_t
            JOIN unnest($5::bigint[], $6::bigint[], $7::text[]) AS __td_r(id, line, reason)
              ON __td_t.{quote_ident(key)} = __td_r.id""",
        run.source.format,
        run.source.label,
        dataset.id,
        import_id,
        [row_id for _, (row_id, _) in ordered],
        [line for line, _ in ordered],
        [reason for _, (_, reason) in ordered],
    )
    await conn.execute(
        f"DELETE FROM {table} WHERE {quote_ident(key)} = ANY($1::bigint[])", [row_id for _, (row_id, _) in ordered]
    )


async def _merge(
    conn: asyncpg.Connection, run: _Run, dataset: Dataset, point: bool, shape_mode: bool
) -> dict[str, int]:
    """One set-based statement from the staging table into the dataset table."""
    schema = dataset.schema
    target = dataset.table
    columns = [quote_ident(f.name) for f in schema.fields] + ['"geom"']
    expressions = [f"{quote_ident(f.name)}{_CASTS.get(f.type, '')}" for f in schema.fields]
    if point:
        expressions.append(f"ST_SetSRID(ST_MakePoint({X}, {Y}), 4326)")
    elif shape_mode:
        geom = f"ST_GeomFromWKB({WKB}, 4326)"
        if run.options.invalid_geometry == "repair":
            geom = f"ST_MakeValid({geom})"
        expressions.append(geom)
    else:
        expressions.append("NULL::geometry")
    conflict = ""
    if run.options.mode == "replace":
        deleted = await conn.execute(f"DELETE FROM {target}")
        deleted_count = int(deleted.rsplit(" ", 1)[-1])
    else:
        deleted_count = 0
    empty = (
        deleted_count > 0
        or run.options.mode == "replace"
        or not await conn.fetchval(f"SELECT EXISTS (SELECT 1 FROM {target})")
    )
    if empty:
        # Into an empty table, build the unique indexes and the GiST index once, after the rows (much faster
        # than row by row); uniqueness was checked on the staging table already.
        drop, create = index_ddl(dataset.table_name, schema)
        for statement in drop:
            await conn.execute(statement)
        try:
            status = await conn.execute(
                f"INSERT INTO {target} ({', '.join(columns)}) SELECT {', '.join(expressions)} FROM {STAGE}"
            )
            for statement in create:
                await conn.execute(statement)
        except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
            run.fatal = True
            run.error(None, None, "database-error", f"the database refused the rows: {exc}")
            return {}
        inserted = int(status.rsplit(" ", 1)[-1])
        return {"rows_inserted": inserted, "rows_updated": 0, "rows_unchanged": 0, "rows_deleted": deleted_count}
    if run.options.mode == "upsert":
        keys = ", ".join(quote_ident(k) for k in schema.primary_key)
        pk = set(schema.primary_key)
        others = [c for c, f in zip(columns, [*schema.fields, None], strict=True) if f is None or f.name not in pk]
        sets = ", ".join(f"{c} = EXCLUDED.{c}" for c in others)
        old = ", ".join(f"t.{c}" for c in others)
        new = ", ".join(f"EXCLUDED.{c}" for c in others)
        conflict = f" ON CONFLICT ({keys}) DO UPDATE SET {sets} WHERE ({old}) IS DISTINCT FROM ({new})"
    sql = (
        f"WITH written AS (INSERT INTO {target} AS t ({', '.join(columns)}) "
        f"SELECT {', '.join(expressions)} FROM {STAGE}{conflict} RETURNING (xmax = 0) AS inserted) "
        "SELECT count(*) FILTER (WHERE inserted) AS inserted, count(*) FILTER (WHERE NOT inserted) AS updated "
        "FROM written"
    )
    try:
        row = await conn.fetchrow(sql)
    except (asyncpg.DataError, asyncpg.IntegrityConstraintViolationError) as exc:
        run.fatal = True
        run.error(None, None, "database-error", f"the database refused the rows: {exc}")
        return {}
    inserted, updated = int(row["inserted"]), int(row["updated"])
    return {
        "rows_inserted": inserted,
        "rows_updated": updated,
        "rows_unchanged": run.rows_staged - inserted - updated if run.options.mode == "upsert" else 0,
        "rows_deleted": deleted_count,
    }


def load_schema_file(path: str | Path) -> TableSchema:
    """A Table Schema from a JSON file (schema.data.gouv.fr format)."""
    try:
        descriptor = orjson.loads(Path(path).read_bytes())
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"{Path(path).name} is not valid JSON: {exc}") from None
    return parse_table_schema(descriptor)


async def import_csv(
    conn: asyncpg.Connection,
    path: str | Path,
    slug: str,
    options: ImportOptions,
    *,
    label: str | None = None,
    delimiter: str | None = None,
    encoding: str | None = None,
) -> dict[str, Any]:
    """Load one CSV file into dataset `slug` (see run_import)."""
    source = CsvSource(path, label=label, delimiter=delimiter, encoding=encoding)
    return await run_import(conn, source, slug, options)


async def import_geojson(
    conn: asyncpg.Connection, path: str | Path, slug: str, options: ImportOptions, *, label: str | None = None
) -> dict[str, Any]:
    """Load one GeoJSON file (FeatureCollection or newline-delimited) into dataset `slug` (see run_import)."""
    return await run_import(conn, GeoJsonSource(path, label=label), slug, options)


async def import_with_settings(settings: Settings, source_factory: Callable[[], RowSource], slug: str,
                               options: ImportOptions) -> dict[str, Any]:  # fmt: skip
    """Open a dedicated connection (no pool statement timeout: big files take time) and run one import (big clean
    files on two more connections, see ingest.files.parload)."""
    conn = await connect_raw(settings, application_name="import")
    if options.connect is None:
        options = dataclasses.replace(options, connect=lambda: connect_raw(settings, application_name="import-helper"))
    try:
        return await run_import(conn, source_factory(), slug, options)
    finally:
        await conn.close()
