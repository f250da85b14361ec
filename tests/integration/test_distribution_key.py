"""The observation tables can be distributed by Datastream (Citus, `datastream_id` as the distribution column),
checked on the live schema rather than promised: docs/scale-out.md names that engine for the day one primary no
longer takes the write load.

Citus can distribute a table by a column when every primary key and unique index includes that column (a node
checks uniqueness only among its own rows), every foreign key either includes it (co-located tables) or points at
a reference table (copied to every node), and what triggers do stays on the node of the rows they see: every
per-Datastream table they touch is reached through the rows' Datastream. Each test below asserts one of these
on the migrated schema, partitions included, so a migration that breaks one fails here.
"""

from __future__ import annotations

import re

import asyncpg
import pytest

pytestmark = pytest.mark.db

# Distributed tables and their distribution column; the Datastream tables themselves are distributed by `id`
# (co-located: observation.datastream_id = datastream.id lands on the same node).
DISTRIBUTED = {
    "observation": "datastream_id",
    "observation_rollup_15min": "datastream_id",
    "observation_rollup_day": "datastream_id",
    "datastream_feature": "datastream_id",
    "multi_observation": "multi_datastream_id",
    "multi_datastream_feature": "multi_datastream_id",
    "multi_datastream_observed_property": "multi_datastream_id",
    "datastream": "id",
    "multi_datastream": "id",
}
# Small shared entities, copied to every node (Citus reference tables).
REFERENCE = {
    "feature_of_interest",
    "thing",
    "location",
    "thing_location",
    "historical_location",
    "location_historical_location",
    "sensor",
    "observed_property",
    "dataset",
    # Steering indicators' bookkeeping: a few rows per indicator and period, read and written by every node.
    "indicator_sensor_source",
    "indicator_dirty",
}


async def _relations(db: asyncpg.Connection, table: str) -> list[str]:
    """The table and its partitions."""
    rows = await db.fetch(
        "SELECT c.relname FROM pg_class c WHERE c.oid = $1::regclass "
        "UNION ALL SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = $1::regclass",
        table,
    )
    return [row["relname"] for row in rows]


async def test_every_unique_key_includes_the_distribution_column(db: asyncpg.Connection) -> None:
    checked = 0
    # The Datastream tables anchor the co-location by their own `id` (their primary key); their other unique keys
    # (external_key) are about Datastreams, not observations: docs/scale-out.md says what they would need.
    for table, column in DISTRIBUTED.items():
        if column == "id":
            continue
        relations = await _relations(db, table)
        assert relations, table
        rows = await db.fetch(
            "SELECT c.relname AS tbl, ic.relname AS idx, "
            "ARRAY(SELECT a.attname FROM unnest(x.indkey) k JOIN pg_attribute a "
            "      ON a.attrelid = x.indrelid AND a.attnum = k)::text[] AS cols "
            "FROM pg_index x JOIN pg_class c ON c.oid = x.indrelid JOIN pg_class ic ON ic.oid = x.indexrelid "
            "WHERE x.indisunique AND c.relname = ANY($1::text[])",
            relations,
        )
        for row in rows:
            assert column in row["cols"], f"{row['idx']} on {row['tbl']} {row['cols']} lacks {column}"
            checked += 1
    assert checked >= len(DISTRIBUTED) - 2  # the primary keys at least, partitions' own included


async def test_every_foreign_key_is_co_located_or_points_at_a_reference_table(db: asyncpg.Connection) -> None:
    rows = await db.fetch(
        "SELECT con.conname, c.relname AS tbl, r.relname AS target, "
        "ARRAY(SELECT a.attname FROM unnest(con.conkey) k JOIN pg_attribute a "
        "      ON a.attrelid = con.conrelid AND a.attnum = k)::text[] AS cols "
        "FROM pg_constraint con JOIN pg_class c ON c.oid = con.conrelid JOIN pg_class r ON r.oid = con.confrelid "
        "WHERE con.contype = 'f' AND c.relname = ANY($1::text[]) AND NOT c.relispartition",
        [table for table in DISTRIBUTED if not table.endswith("datastream")],
    )
    for row in rows:
        column = DISTRIBUTED[row["tbl"]]
        co_located = row["target"] in DISTRIBUTED and column in row["cols"]
        assert co_located or row["target"] in REFERENCE, (
            f"{row['conname']}: {row['tbl']}{row['cols']} -> {row['target']} is neither co-located nor a reference"
        )


async def test_observation_triggers_reach_other_tables_through_the_datastream(db: asyncpg.Connection) -> None:
    rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    tables = {row["tablename"] for row in rows}
    # Row triggers and statement triggers with transition tables: those that see rows. A TRUNCATE trigger (type
    # bit 32) empties what derives from every Datastream, on every node, as the TRUNCATE itself does.
    functions = await db.fetch(
        "SELECT DISTINCT p.proname, pg_get_functiondef(p.oid) AS body FROM pg_trigger t "
        "JOIN pg_proc p ON p.oid = t.tgfoid WHERE t.tgrelid = ANY(ARRAY['observation'::regclass, "
        "'multi_observation'::regclass]) AND NOT t.tgisinternal AND t.tgtype & 32 = 0"
    )
    assert len(functions) >= 5
    for function in functions:
        body = re.sub(r"--[^\n]*", "", function["body"])
        touched = {table for table in tables if re.search(rf"\b{table}\b", body)}
        strangers = touched - set(DISTRIBUTED) - REFERENCE
        assert not strangers, f"{function['proname']} touches {strangers}, neither distributed nor reference"
        keyed = touched & (set(DISTRIBUTED) - {"observation", "multi_observation"})
        if keyed:
            assert re.search(r"\b(multi_)?datastream_id\b", body), (
                f"{function['proname']} touches {keyed} without going through the rows' Datastream"
            )
