"""The native CSV path on both cores: a big clean file into a private load table on two helper connections, then
published as the dataset's table in the import's own transaction.

COPY and each index build use one core. To use two, other sessions must see the table being loaded, so it is a
new table created and committed under a private name (`datasets._td_load_<import id>`, never a dataset's table):
the file is split at a line boundary and its halves COPied at the same time on two connections (each half's row
ids from its own sequence, so `_fid` follows the file's order and line = header lines + `_fid`), then the GiST
index is built on one connection while the other checks the rows, computes the statistics and builds the unique
indexes, and a thread checks the file's cells against the native pattern (after the COPY rather than on its way,
on the core the GiST build leaves; the same bytes, by checksum). The import's transaction (which holds the
dataset's row lock from the start) then swaps the tables: drops the dataset's table (the empty one just created,
or the one a replace replaces) and renames the load table and its indexes in its place. Until that transaction
commits, readers see the dataset as it was; if it rolls back, the rename is undone and the load table dropped.
A load table is guarded by a transaction-level advisory lock of the import's connection: one left by a killed
import (its lock gone with its connection) is dropped by the next parallel load (clean_orphans).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg

from territoire_data.catalog.datasets import SCHEMA, Dataset, index_names, load_table_ddl
from territoire_data.db.bulk import qualified, quote_ident
from territoire_data.ingest.files import setload

logger = logging.getLogger(__name__)

PREFIX = "_td_load_"
LOCK_SPACE = 0x7464_6C64  # 'tdld': the first key of the advisory locks guarding load tables
FID_SETTING = "territoire.load_fid_seq"
_CHUNK = 1 << 20


def table_name(import_id: int) -> str:
    return f"{PREFIX}{int(import_id)}"


async def guard(conn: asyncpg.Connection, import_id: int) -> None:
    """Mark the load table of `import_id` as in use until the caller's transaction ends."""
    await conn.execute("SELECT pg_advisory_xact_lock($1, $2)", LOCK_SPACE, import_id)


async def clean_orphans(conn: asyncpg.Connection) -> list[str]:
    """Drop the load tables no live import guards (left by a killed process); returns their names."""
    rows = await conn.fetch(
        """SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname ~ $2""",
        SCHEMA,
        f"^{PREFIX}[0-9]+$",
    )
    dropped = []
    for row in rows:
        name = row["relname"]
        try:
            async with conn.transaction():
                if await conn.fetchval(
                    "SELECT pg_try_advisory_xact_lock($1, $2)", LOCK_SPACE, int(name[len(PREFIX) :])
                ):
                    # A killed import's helper may still be at work on it until its server process notices:
                    # not waiting for it, the next import will drop it.
                    await conn.execute("SET LOCAL lock_timeout = '200ms'")
                    await conn.execute(f"DROP TABLE IF EXISTS {qualified(SCHEMA, name)}")
                    dropped.append(name)
        except asyncpg.LockNotAvailableError:
            logger.info("load table %s still in use by a helper of an interrupted import", name)
    if dropped:
        logger.warning("dropped %d load table(s) left by interrupted imports: %s", len(dropped), ", ".join(dropped))
    return dropped


async def replaceable(conn: asyncpg.Connection, table: str) -> bool:
    """May the dataset's table be dropped and replaced by a load table? Not when something of the city's own hangs
    on it: a view, a rule, a foreign key from another table, a trigger, a row security policy, privileges granted
    on it, or a comment. Those would be lost with it (or stop the DROP): such a table is loaded in place."""
    return bool(
        await conn.fetchval(
            """SELECT NOT EXISTS (SELECT 1 FROM pg_depend d JOIN pg_rewrite r ON r.oid = d.objid
                                  WHERE d.classid = 'pg_rewrite'::regclass AND d.refobjid = $1::regclass
                                    AND r.ev_class <> $1::regclass)
                  AND NOT EXISTS (SELECT 1 FROM pg_constraint WHERE confrelid = $1::regclass)
                  AND NOT EXISTS (SELECT 1 FROM pg_trigger WHERE tgrelid = $1::regclass AND NOT tgisinternal)
                  AND NOT EXISTS (SELECT 1 FROM pg_policy WHERE polrelid = $1::regclass)
                  AND (SELECT relacl IS NULL FROM pg_class WHERE oid = $1::regclass)
                  AND obj_description($1::regclass, 'pg_class') IS NULL""",
            table,
        )
    )


@dataclass(frozen=True)
class Split:
    """The file's data as two byte ranges ending at line ends; `first_rows` lines in the first."""

    path: Path
    start: int
    middle: int
    end: int
    first_rows: int


def split(path: Path, header_lines: int, min_bytes: int) -> Split | None:
    """Cut the data lines (after `header_lines`) in two halves at a line end; None when the file is smaller than
    `min_bytes` or its header is not ended by a newline."""
    end = path.stat().st_size
    if end < min_bytes:
        return None
    with path.open("rb") as handle:
        for _ in range(header_lines):
            if not handle.readline(_CHUNK).endswith(b"\n"):
                return None
        start = handle.tell()
        handle.seek(start + (end - start) // 2)
        handle.readline()
        middle = min(handle.tell(), end) if end > start else start
        handle.seek(start)
        rows, left, last = 0, middle - start, b"\n"
        while left > 0:
            data = handle.read(min(_CHUNK, left))
            if not data:
                break
            rows += data.count(b"\n")
            left -= len(data)
            last = data[-1:]
    if last != b"\n":  # the first part is the whole file, its last line without a newline
        rows += 1
    return Split(path, start, middle, end, rows)


class NativePart:
    """The lines of bytes [start, end) as COPY input, decimal commas made points (`chunks`), and the check that every
    chunk matches the native pattern (`validate`: every cell in PostgreSQL's own input form, no carriage return
    alone), run apart: while the server builds the indexes, rather than on the way to COPY. The load table is
    published only once both parts are validated."""

    def __init__(self, path: Path, start: int, end: int, native: Any, quote: bytes) -> None:
        self.path, self.start, self.end, self.native, self.quote = path, start, end, native, quote
        self.blank_matches = native.fullmatch(b"\n") is not None
        self.rows = 0
        self.crc = 0  # of the bytes sent: validate() checks the same bytes

    def _lines(self) -> Iterator[bytes]:
        """The range in chunks of whole lines."""
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            yield from setload.line_chunks(handle, self.end - self.start)

    def chunks(self) -> Iterator[bytes]:
        for chunk in self._lines():
            # What would make COPY's rows differ from the file's lines is looked for now: the quote character, and
            # blank lines when a line of one empty cell would match the pattern. No cell shape of the pattern takes
            # a double quote or a carriage return (setload._NATIVE_SHAPES, a unit test checks).
            if self.quote in chunk:
                raise setload.NotVouched("quotes")
            if self.blank_matches and (chunk.startswith((b"\n", b"\r\n")) or b"\n\n" in chunk or b"\n\r\n" in chunk):
                raise setload.NotVouched("blank lines")
            self.rows += chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
            self.crc = zlib.crc32(chunk, self.crc)
            yield chunk.replace(b",", b".")

    def validate(self, stop: threading.Event) -> None:
        """Raise NotVouched unless every chunk matches the native pattern (CPU only: for a thread)."""
        crc = 0
        for chunk in self._lines():
            if stop.is_set():
                return
            if self.native.fullmatch(chunk) is None:
                raise setload.NotVouched("a cell not in PostgreSQL's own input form")
            crc = zlib.crc32(chunk, crc)
        if crc != self.crc:
            raise setload.NotVouched("the file changed while it was read")


@dataclass
class Loaded:
    """What the helpers leave: rows COPied, whether every row passed the check, the statistics, which unique
    indexes were built (None: a duplicate stopped them)."""

    rows: int
    stats: Any
    unique_built: bool
    timings: dict[str, float]


async def _prepare(helper: asyncpg.Connection) -> None:
    # The load table is worthless until the import's transaction commits, and that commit flushes the WAL of
    # everything before it: the helpers need not wait for their own flushes. One core each: no parallel workers
    # (the check's scan would take the GiST build's core).
    await helper.execute(
        "SET synchronous_commit = off; SET maintenance_work_mem = '256MB'; SET max_parallel_maintenance_workers = 0; "
        "SET max_parallel_workers_per_gather = 0"
    )


async def _copy_part(
    helper: asyncpg.Connection,
    table: str,
    columns: list[str],
    part: NativePart,
    first_fid: int,
    dialect: setload.CopyDialect,
    stream: Callable[[Iterator[bytes]], AsyncIterator[bytes]],
) -> None:
    """COPY one part, its rows numbered from `first_fid` by a sequence of this session."""
    await helper.execute("CREATE TEMP SEQUENCE IF NOT EXISTS td_load_fid")
    await helper.execute("SELECT setval('td_load_fid', $1, false)", first_fid)
    await helper.execute(f"SELECT set_config('{FID_SETTING}', 'td_load_fid'::regclass::oid::text, false)")
    await helper.copy_to_table(
        table,
        schema_name=SCHEMA,
        source=stream(part.chunks()),
        columns=columns,
        format="csv",
        delimiter=dialect.delimiter,
        encoding=dialect.copy_encoding,
    )


async def load(
    helpers: tuple[asyncpg.Connection, asyncpg.Connection],
    dataset: Dataset,
    plan: setload.FastPlan,
    native: Any,
    point: str | None,
    check: tuple[str, list[Any]],
    cut: Split,
    dialect: setload.CopyDialect,
    stream: Callable[[Iterator[bytes]], AsyncIterator[bytes]],
    first_fid: int,
) -> Loaded:
    """Create the load table `dataset.table_name` (committed), COPY the two halves at once (row ids from
    `first_fid` in file order), then build the GiST index on one helper while the other checks every row (`check`:
    setload.native_check_sql over the load table, the statistics in the same pass) and builds the unique indexes
    and the row id's. Raises setload.NotVouched (or a PostgresError) when the native path cannot vouch for the
    file; the caller then drops the table and takes the careful path."""
    timings: dict[str, float] = {}
    clock = time.monotonic()
    one, two = helpers
    await asyncio.gather(_prepare(one), _prepare(two))
    schema = dataset.schema
    table = dataset.table
    fid = f"nextval(current_setting('{FID_SETTING}')::oid::regclass)"
    await one.execute(load_table_ddl(dataset.table_name, schema, fid, point))
    columns = setload.native_columns(schema, plan)
    first = NativePart(cut.path, cut.start, cut.middle, native, dialect.quote)
    second = NativePart(cut.path, cut.middle, cut.end, native, dialect.quote)
    await _gather(
        _copy_part(one, dataset.table_name, columns, first, first_fid, dialect, stream),
        _copy_part(two, dataset.table_name, columns, second, first_fid + cut.first_rows, dialect, stream),
    )
    if first.rows != cut.first_rows:  # the file changed under us
        raise setload.NotVouched("the file changed while it was read")
    rows = first.rows + second.rows
    timings["copy_parallel_s"] = round(time.monotonic() - clock, 3)
    unique, gist, pkey = index_names(dataset.table_name, schema)

    async def gist_index() -> None:
        await one.execute(f"CREATE INDEX {quote_ident(gist)} ON {table} USING gist (geom)")
        timings["gist_s"] = round(time.monotonic() - clock, 3)

    async def check_and_keys() -> tuple[Any, bool]:
        query, params = check
        stats = await two.fetchrow(query, *params)
        timings["check_stats_s"] = round(time.monotonic() - clock, 3)
        if stats["bad"]:
            raise setload.NotVouched("a row breaks a constraint")
        built = True
        for name, key in zip(unique, schema.unique_keys(), strict=True):
            try:
                await two.execute(
                    f"CREATE UNIQUE INDEX {quote_ident(name)} ON {table} ({', '.join(quote_ident(k) for k in key)})"
                )
            except asyncpg.UniqueViolationError:
                built = False
                break
        await two.execute(f"CREATE UNIQUE INDEX {quote_ident(pkey)} ON {table} (_fid)")
        timings["keys_s"] = round(time.monotonic() - clock, 3)
        return stats, built

    stop = threading.Event()

    async def check_keys_and_validate() -> tuple[Any, bool]:
        # The pattern's check of the file's cells, in a thread of this process, on the core the GiST build leaves.
        checked = await check_and_keys()
        await asyncio.to_thread(_validate, (first, second), stop)
        timings["validated_s"] = round(time.monotonic() - clock, 3)
        return checked

    _, (stats, built) = await _gather(gist_index(), check_keys_and_validate(), on_error=stop.set)
    return Loaded(rows, stats, built, timings)


def _validate(parts: tuple[NativePart, ...], stop: threading.Event) -> None:
    for part in parts:
        part.validate(stop)


async def _gather(*work: Any, on_error: Callable[[], None] | None = None) -> list[Any]:
    """Run concurrently; the first failure cancels the others (their server statements too) and is raised."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        if on_error is not None:
            on_error()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


async def publish(
    conn: asyncpg.Connection, dataset: Dataset, load_table: str, next_fid: int, point: bool, unique_built: bool
) -> None:
    """In the import's transaction: the load table, its checks done, becomes the dataset's table (its row ids
    going on from `next_fid`)."""
    schema = dataset.schema
    private = qualified(SCHEMA, load_table)
    target = dataset.table
    unique, gist, pkey = index_names(load_table, schema)
    statements = []
    if unique_built:  # else the careful check built them as constraints already
        statements += [
            f"ALTER TABLE {private} ADD CONSTRAINT {quote_ident(name)} UNIQUE USING INDEX {quote_ident(name)}"
            for name in unique
        ]
    statements += [
        f"ALTER TABLE {private} ADD CONSTRAINT {quote_ident(pkey)} PRIMARY KEY USING INDEX {quote_ident(pkey)}",
        f"DROP TABLE {target}",
        f"ALTER TABLE {private} RENAME TO {quote_ident(dataset.table_name)}",
        f"ALTER TABLE {target} ALTER COLUMN _fid DROP DEFAULT",
        f"ALTER TABLE {target} ALTER COLUMN _fid ADD GENERATED ALWAYS AS IDENTITY (START WITH {int(next_fid)})",
    ]
    if point:
        statements.append(f"ALTER TABLE {target} ALTER COLUMN geom DROP EXPRESSION")
    final_unique, final_gist, final_pkey = index_names(dataset.table_name, schema)
    statements += [
        f"ALTER INDEX {qualified(SCHEMA, old)} RENAME TO {quote_ident(new)}"
        for old, new in [*zip(unique, final_unique, strict=True), (gist, final_gist), (pkey, final_pkey)]
    ]
    # One round trip (a script without parameters: every value above is our own or an int), in the import's
    # transaction like each statement was.
    await conn.execute(";\n".join(statements))
