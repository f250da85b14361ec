"""Big CSV files into an empty table: validation runs in a child process (the machine's other core) and its rows
reach PostgreSQL as COPY text, so Python parsing and the server's ingest run side by side.

Same pipeline, same checks and same report as the in-process path; only where the work runs differs.
"""

from __future__ import annotations

import asyncio
import logging
import math
import multiprocessing
import re
from collections.abc import AsyncIterator, Callable
from datetime import datetime, tzinfo
from multiprocessing.connection import Connection
from typing import Any

import asyncpg

from territoire_data.catalog.schema import FieldDef

logger = logging.getLogger(__name__)

_NULL = "\\N"
_ESCAPES = str.maketrans({"\\": "\\\\", "\t": "\\t", "\n": "\\n", "\r": "\\r"})


def _text(value: str) -> str:
    if "\\" in value or "\t" in value or "\n" in value or "\r" in value:
        return value.translate(_ESCAPES)
    return value


def _number(value: float) -> str:
    if math.isfinite(value):
        return repr(value)
    return "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")


def row_formatter(fields: tuple[FieldDef, ...]) -> Callable[[list[Any]], str]:
    """A row (field values then EWKB geometry) → one line of PostgreSQL's COPY text format.

    Generated as one f-string per schema (only column indexes and our own helpers in it): a row costs one call.
    """
    namespace: dict[str, Any] = {"_t": _text, "_n": _number, "_NULL": "\\N"}
    parts: list[str] = []
    kinds = [f.type for f in fields] + ["geometry"]
    for index, kind in enumerate(kinds):
        value = f"r[{index}]"
        if kind in ("integer", "year"):
            text = f"str({value})"
        elif kind == "number":
            text = f"_n({value})"
        elif kind == "boolean":
            text = f"('t' if {value} else 'f')"
        elif kind in ("date", "datetime", "time"):
            text = f"{value}.isoformat()"
        elif kind == "geometry":
            text = f"{value}.hex()"
        else:
            text = f"_t({value})"
        parts.append(f"{{_NULL if {value} is None else {text}}}")
    source = 'def line(r):\n    return f"' + "\\t".join(parts) + '\\n"\n'
    exec(source, namespace)  # noqa: S102 - our own code, built from column indexes only
    function: Callable[[list[Any]], str] = namespace["line"]
    return function


def compile_text_row(
    fields: tuple[FieldDef, ...],
    mapping: list[int],
    default_tz: tzinfo,
    missing: frozenset[str],
    primary_key: tuple[str, ...],
    keep: tuple[int, ...],
) -> Callable[[list[str]], list[Any]]:
    """The hot path of the child: a valid row's cells → its COPY text (without geometry), in one call.

    Returns a list shaped like the pipeline's rows: the values of the fields in `keep` (lon/lat reused for the
    geometry) at their index, None elsewhere, and the text line last. Anything unusual raises: the caller
    then takes the careful path, which reports each problem precisely.
    """
    from territoire_data.catalog.validate import _Slow, build_converter

    namespace: dict[str, Any] = {
        "_Slow": _Slow,
        "_MISSING": missing,
        "_iso": datetime.fromisoformat,
        "_tz": default_tz,
        "_t": _text,
        "_NULL": "\\N",
    }
    body = ["def text_row(cells):"]
    texts: list[str] = []
    for index, (f, column) in enumerate(zip(fields, mapping, strict=True)):
        text = f"t{index}"
        texts.append(text)
        required = f.required or f.name in primary_key
        if column < 0:
            body.append("    raise _Slow" if required else f"    {text} = _NULL")
            continue
        body.append(f"    x = cells[{column}]")
        body.append("    if x in _MISSING or x.isspace():")
        body.append("        raise _Slow" if required else f"        {text} = _NULL")
        if index in keep:
            body.append(f"        v{index} = None")
        body.append("    else:")
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
            if "enum" in constraints:
                namespace[f"_e{index}"] = frozenset(str(item) for item in f.constraints["enum"])
                body += [f"        if x not in _e{index}:", "            raise _Slow"]
            if "pattern" in constraints:
                namespace[f"_p{index}"] = re.compile(f.constraints["pattern"]).fullmatch
                body += [f"        if _p{index}(x) is None:", "            raise _Slow"]
            for key, op in (("minLength", "<"), ("maxLength", ">")):
                if key in constraints:
                    body += [f"        if len(x) {op} {int(f.constraints[key])}:", "            raise _Slow"]
            body.append(f"        {text} = _t(x)")
        elif f.type in ("number", "integer") and constraints <= {"minimum", "maximum"}:
            body += ["        if '_' in x or not x.isascii():", "            raise _Slow"]
            if f.type == "number":
                body += [f"        {text} = x.replace(',', '.')", f"        v{index} = float({text})"]
            else:
                body += [f"        {text} = x", f"        v{index} = int(x)"]
            for key, op in (("minimum", "<"), ("maximum", ">")):
                if key in f.constraints:
                    namespace[f"_b{index}{key[:3]}"] = float(f.constraints[key])
                    body += [f"        if v{index} {op} _b{index}{key[:3]}:", "            raise _Slow"]
        elif f.type == "datetime" and not constraints and f.format in (None, "default", "any"):
            # A canonical `YYYY-MM-DDTHH:MM:SS+HH:MM` cell goes through as written (PostgreSQL reads it the same).
            body += [
                "        v = _iso(x)",
                "        if v.tzinfo is None:",
                f"            {text} = v.replace(tzinfo=_tz).isoformat()",
                "        elif len(x) == 25 and x[10] == 'T' and x[22] == ':':",
                f"            {text} = x",
                "        else:",
                f"            {text} = v.isoformat()",
            ]
        else:
            namespace[f"_c{index}"] = build_converter(f, default_tz)
            namespace[f"_f{index}"] = _FORMAT.get(f.type, _text)
            body.append(f"        {text} = _f{index}(_c{index}(x))")
    values = ["None"] * len(fields)
    for index in keep:
        values[index] = f"v{index}"
    line = "\\t".join("{" + t + "}" for t in texts)
    body.append(f'    return [{", ".join(values)}, f"{line}"]')
    exec("\n".join(body), namespace)  # noqa: S102 - our own code, built from column indexes only
    function: Callable[[list[str]], list[Any]] = namespace["text_row"]
    return function


def _iso_text(value: Any) -> str:
    return str(value.isoformat())


_FORMAT: dict[str, Callable[[Any], str]] = {
    "integer": str,
    "year": str,
    "number": _number,
    "boolean": lambda value: "t" if value else "f",
    "date": _iso_text,
    "datetime": _iso_text,
    "time": _iso_text,
}


def _child(channel: Connection, job: dict[str, Any]) -> None:
    """In the child process: read and validate the file, send COPY text batches, then the run's outcome."""
    from territoire_data.catalog.loader import LineMap, _pipeline, _Run
    from territoire_data.catalog.sources import CsvSource
    from territoire_data.ingest.csv.geometry import reprojector

    source = None
    try:
        source = CsvSource(job["path"], label=job["label"], delimiter=job["delimiter"], encoding=job["encoding"])
        run = _Run(source, job["options"])
        lines = LineMap()
        dataset = job["dataset"]
        fields = dataset.schema.fields
        names = [f.name for f in fields]
        spec = job["spec"]
        keep: tuple[int, ...] = ()
        if (
            spec is not None
            and spec.kind == "lonlat"
            and all(c in names and fields[names.index(c)].type == "number" for c in spec.columns)
        ):
            keep = tuple(names.index(c) for c in spec.columns)
        missing = frozenset(dataset.schema.missing_values) | {""}
        fast = compile_text_row(fields, job["mapping"], job["tz"], missing, dataset.schema.primary_key, keep)
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
            fast,
        )
        line = row_formatter(fields)
        prefab = len(fields) + 2
        for rows, _ in pipeline:
            if rows:
                text = "".join(
                    f"{row[-2]}\t{_NULL if row[-1] is None else row[-1].hex()}\n" if len(row) == prefab else line(row)
                    for row in rows
                )
                channel.send_bytes(text.encode("utf-8"))
        channel.send_bytes(b"")
        channel.send(
            {
                "errors": run.errors,
                "error_count": run.error_count,
                "rows_read": run.rows_read,
                "rows_rejected": run.rows_rejected,
                "stopped_early": run.stopped_early,
                "lines": lines,
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
