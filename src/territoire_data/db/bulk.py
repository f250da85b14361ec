"""Bulk writes: COPY into a temporary staging table, then one set-based merge; never a round trip per row.

Used by every ingest path (CSV, GeoJSON, MQTT). The caller owns the transaction, so a batch is all or nothing.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any, Literal

import asyncpg

Conflict = Literal["error", "ignore", "update"]


def quote_ident(name: str) -> str:
    """Quote an identifier for PostgreSQL (names come from our schema or validated Table Schemas)."""
    if "\x00" in name:
        raise ValueError("identifier contains a NUL byte")
    return '"' + name.replace('"', '""') + '"'


def qualified(schema: str, table: str) -> str:
    return f"{quote_ident(schema)}.{quote_ident(table)}"


async def copy_and_merge(
    conn: asyncpg.Connection,
    *,
    schema: str,
    table: str,
    columns: Sequence[str],
    records: Iterable[Sequence[Any]],
    conflict_columns: Sequence[str] = (),
    on_conflict: Conflict = "error",
    stage_types: dict[str, str] | None = None,
    target_expressions: dict[str, str] | None = None,
    returning: str | None = None,
) -> list[asyncpg.Record] | int:
    """COPY `records` into a staging copy of `schema.table`, then merge into the table in one statement.

    - `on_conflict="ignore"` makes the write idempotent on `conflict_columns` (redelivered messages).
    - `on_conflict="update"` upserts: the last record of a key in the batch wins.
    - `stage_types` gives the staging columns' SQL types when they are not the target's (e.g. raw lon/lat);
      by default the staging table copies the target's `columns`.
    - `target_expressions` maps each target column to an SQL expression over the staging columns (e.g. a
      geometry from lon/lat), computed set-wise in the merge; by default each of `columns` is copied as is.
    Expressions and types are SQL written by our code, never user input.
    Returns the RETURNING rows when asked, else the number of rows written.
    """
    target = qualified(schema, table)
    stage = quote_ident(f"_stage_{table}")
    cols = ", ".join(quote_ident(c) for c in columns)
    # Arrival order is only needed to keep the last record of a key when upserting; a bigserial would create a
    # sequence per batch on the ingest hot path for nothing otherwise.
    ordered = on_conflict == "update" and bool(conflict_columns)
    if stage_types:
        definition = ", ".join(f"{quote_ident(c)} {stage_types[c]}" for c in columns)
        create = f"CREATE TEMP TABLE {stage} ({definition}{', _ord bigserial' if ordered else ''}) ON COMMIT DROP"
    else:
        create = f"CREATE TEMP TABLE {stage} ON COMMIT DROP AS SELECT {cols} FROM {target} WITH NO DATA"
        if ordered:
            create += f"; ALTER TABLE {stage} ADD COLUMN _ord bigserial"
    await conn.execute(f"DROP TABLE IF EXISTS {stage}; {create}")
    await conn.copy_records_to_table(f"_stage_{table}", records=records, columns=list(columns))

    expressions = target_expressions or {c: quote_ident(c) for c in columns}
    target_cols = ", ".join(quote_ident(c) for c in expressions)
    select_cols = ", ".join(expressions.values())
    source = f"SELECT {select_cols} FROM {stage}"
    conflict = ""
    if conflict_columns and on_conflict != "error":
        keys = ", ".join(quote_ident(c) for c in conflict_columns)
        if on_conflict == "ignore":
            conflict = f" ON CONFLICT ({keys}) DO NOTHING"
        else:
            # Keep the last occurrence of each key: one statement may not update a row twice.
            source = f"SELECT DISTINCT ON ({keys}) {select_cols} FROM {stage} ORDER BY {keys}, _ord DESC"
            updates = ", ".join(
                f"{quote_ident(c)} = EXCLUDED.{quote_ident(c)}" for c in expressions if c not in conflict_columns
            )
            conflict = (
                f" ON CONFLICT ({keys}) DO UPDATE SET {updates}" if updates else f" ON CONFLICT ({keys}) DO NOTHING"
            )
    sql = f"INSERT INTO {target} ({target_cols}) {source}{conflict}"
    if returning:
        return list(await conn.fetch(f"{sql} RETURNING {returning}"))
    status = await conn.execute(sql)
    return int(status.rsplit(" ", 1)[-1])
