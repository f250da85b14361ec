"""Big CSV files into an empty table: validation runs in a child process (the machine's other core) and its rows
reach PostgreSQL as COPY text, so Python parsing and the server's ingest run side by side.

Same pipeline, same checks and same report as the in-process path; only where the work runs differs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
from array import array
from collections.abc import AsyncIterator, Callable
from datetime import date, datetime, time
from multiprocessing.connection import Connection
from typing import Any

import asyncpg

from territoire_data.catalog.schema import FieldDef

logger = logging.getLogger(__name__)

_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(value: str) -> str:
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_ESCAPES)
    return value


def _number(value: float) -> str:
    if math.isfinite(value):
        return repr(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def _boolean(value: bool) -> str:
    return "t" if value else "f"


def _iso(value: date | datetime | time) -> str:
    return value.isoformat()


def _hex(value: bytes) -> str:
    return value.hex()


_FORMATTERS: dict[str, Callable[[Any], str]] = {
    "integer": str,
    "year": str,
    "number": _number,
    "boolean": _boolean,
    "date": _iso,
    "datetime": _iso,
    "time": _iso,
}


def row_formatter(fields: tuple[FieldDef, ...]) -> Callable[[list[Any]], str]:
    """A row (field values then EWKB geometry) → one line of PostgreSQL's COPY text format."""
    formatters = [_FORMATTERS.get(f.type, _text) for f in fields] + [_hex]

    def line(row: list[Any]) -> str:
        return "\t".join(["\\N" if v is None else f(v) for f, v in zip(formatters, row, strict=True)]) + "\n"

    return line


def _child(channel: Connection, job: dict[str, Any]) -> None:
    """In the child process: read and validate the file, send COPY text batches, then the run's outcome."""
    from territoire_data.catalog.loader import _pipeline, _Run
    from territoire_data.catalog.sources import CsvSource
    from territoire_data.ingest.csv.geometry import reprojector

    source = None
    try:
        source = CsvSource(job["path"], label=job["label"], delimiter=job["delimiter"], encoding=job["encoding"])
        run = _Run(source, job["options"])
        lines = array("q")
        pipeline = _pipeline(
            run,
            job["dataset"],
            job["spec"],
            reprojector(job["crs"]),
            source.records(),
            job["tz"],
            job["import_id"],
            job["mapping"],
            True,
            lines,
        )
        line = row_formatter(job["dataset"].schema.fields)
        for rows, _ in pipeline:
            if rows:
                channel.send_bytes("".join(map(line, rows)).encode("utf-8"))
        channel.send_bytes(b"")
        channel.send(
            {
                "errors": run.errors,
                "error_count": run.error_count,
                "rows_read": run.rows_read,
                "rows_rejected": run.rows_rejected,
                "stopped_early": run.stopped_early,
                "lines": lines.tobytes(),
            }
        )
    except BaseException as exc:
        try:
            channel.send_bytes(b"")
            channel.send({"exception": exc})
        except Exception:
            channel.send({"exception": RuntimeError(f"{type(exc).__name__}: {exc}")})
    finally:
        if source is not None:
            source.close()
        channel.close()


async def copy_from_child(
    conn: asyncpg.Connection, job: dict[str, Any], *, table: str, schema: str, columns: list[str]
) -> dict[str, Any]:
    """Start the child, stream its batches into `COPY table FROM STDIN`, return the child's run outcome."""
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_child, args=(sender, job), name="td-import-parser", daemon=True)
    process.start()
    sender.close()
    loop = asyncio.get_running_loop()
    staged = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal staged
        while True:
            data = await loop.run_in_executor(None, receiver.recv_bytes)
            if not data:
                return
            staged += data.count(b"\n")
            yield data

    try:
        await conn.copy_to_table(table, schema_name=schema, source=chunks(), columns=columns, format="text")
        outcome: dict[str, Any] = await loop.run_in_executor(None, receiver.recv)
    finally:
        receiver.close()
        await loop.run_in_executor(None, process.join, 30)
        if process.is_alive():
            process.kill()
    if "exception" in outcome:
        raise outcome["exception"]
    outcome["rows_staged"] = staged
    return outcome
