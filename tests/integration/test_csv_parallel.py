"""The native CSV path on two connections (ingest.files.parload): same end state as the careful path, exact lines in
reports whichever half a bad row is in, all-or-nothing, and load tables never left behind."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from territoire_data.ingest.files import parload
from territoire_data.ingest.files.loader import ImportFailedError, ImportOptions, import_csv, load_schema_file

pytestmark = pytest.mark.db

SCHEMA = {
    "fields": [
        {"name": "id", "type": "integer", "constraints": {"required": True}},
        {"name": "name", "type": "string", "constraints": {"required": True, "maxLength": 20}},
        {"name": "category", "type": "string", "constraints": {"enum": ["voirie", "parking", "borne"]}},
        {"name": "lon", "type": "number", "constraints": {"minimum": -180, "maximum": 180}},
        {"name": "lat", "type": "number", "constraints": {"minimum": -90, "maximum": 90}},
        {"name": "value", "type": "number"},
        {"name": "timestamp", "type": "datetime"},
    ],
    "primaryKey": ["id"],
}
HEADER = "id;name;category;lon;lat;value;timestamp\n"
ROWS = 2000


def row(i: int, *, ident: int | None = None, category: str | None = None) -> str:
    kind = category or ["voirie", "parking", "borne"][i % 3]
    lon, lat = f"{-1.5 + i / 1000:.6f}".replace(".", ","), f"{47 + i / 2000:.6f}".replace(".", ",")
    return f"{ident or i};objet {i};{kind};{lon};{lat};{i % 97},5;2024-01-01T00:{i % 60:02d}:00Z\n"


def write(path: Path, rows: list[str]) -> Path:
    path.write_text(HEADER + "".join(rows), encoding="utf-8")
    return path


@pytest.fixture
def schema_file(tmp_path: Path) -> Path:
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA))
    return path


async def load(
    db: asyncpg.Connection, database_url: str, path: Path, slug: str, parallel: bool = True, **options: Any
) -> dict[str, Any]:
    schema = options.pop("schema", None)
    if parallel:
        options.setdefault("parallel_min_bytes", 0)
        options["connect"] = lambda: asyncpg.connect(database_url)
    return await import_csv(
        db, path, slug, ImportOptions(schema=load_schema_file(schema) if schema else None, **options)
    )


async def table_of(db: asyncpg.Connection, slug: str) -> str:
    return f'datasets."{await db.fetchval("SELECT table_name FROM dataset WHERE slug = $1", slug)}"'


async def rows_of(db: asyncpg.Connection, slug: str) -> list[tuple[Any, ...]]:
    table = await table_of(db, slug)
    return [tuple(r) for r in await db.fetch(f"SELECT *, ST_AsText(geom) AS wkt FROM {table} ORDER BY _fid")]


async def structure(db: asyncpg.Connection, slug: str) -> list[Any]:
    table = await table_of(db, slug)
    columns = await db.fetch(
        """SELECT attname, format_type(atttypid, atttypmod), attnotnull, attidentity, attgenerated, atthasdef
           FROM pg_attribute WHERE attrelid = $1::regclass AND attnum > 0 ORDER BY attnum""",
        table,
    )
    indexes = await db.fetch(
        """SELECT replace(indexdef, $2, 'T') AS d FROM pg_indexes WHERE schemaname = 'datasets' AND tablename = $1
           ORDER BY 1""",
        table.split(".")[1].strip('"'),
        table.split(".")[1].strip('"'),
    )
    constraints = await db.fetch(
        "SELECT replace(conname, $2, 'T'), contype FROM pg_constraint WHERE conrelid = $1::regclass ORDER BY 1",
        table,
        table.split(".")[1].strip('"'),
    )
    return [[tuple(c) for c in columns], [r["d"] for r in indexes], [tuple(c) for c in constraints]]


async def load_tables(db: asyncpg.Connection) -> list[str]:
    rows = await db.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'datasets' AND tablename LIKE '\\_td%'")
    return [r["tablename"] for r in rows]


async def test_parallel_path_gives_the_careful_paths_table(
    db: asyncpg.Connection, database_url: str, tmp_path: Path, schema_file: Path
) -> None:
    path = write(tmp_path / "clean.csv", [row(i) for i in range(1, ROWS + 1)])
    fast = await load(db, database_url, path, "fast", create=True, schema=schema_file)
    slow = await load(db, database_url, path, "slow", create=True, schema=schema_file, parallel=False, set_based=False)
    assert fast["timings"].get("parallel") == 1
    assert fast["rows_inserted"] == slow["rows_inserted"] == ROWS
    assert await rows_of(db, "fast") == await rows_of(db, "slow")
    assert await structure(db, "fast") == await structure(db, "slow")
    stats = "SELECT row_count, geometry_type, ST_AsText(spatial_extent), temporal_start, temporal_end FROM dataset"
    assert len({tuple(r) for r in await db.fetch(f"{stats} WHERE slug IN ('fast', 'slow')")}) == 1
    assert await load_tables(db) == []
    # The row id goes on after the file's rows; rows appended later follow.
    more = write(tmp_path / "more.csv", [row(ROWS + 1)])
    await load(db, database_url, more, "fast")
    table = await table_of(db, "fast")
    assert await db.fetchval(f"SELECT _fid FROM {table} WHERE id = $1", ROWS + 1) == ROWS + 1

    # A replace swaps the whole table in; row ids go on (none reused), in file order.
    report = await load(db, database_url, path, "fast", mode="replace")
    assert report["timings"].get("parallel") == 1
    assert (report["rows_deleted"], report["rows_inserted"]) == (ROWS + 1, ROWS)
    assert [r[1:] for r in await rows_of(db, "fast")] == [r[1:] for r in await rows_of(db, "slow")]
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE _fid <> id + {ROWS + 1}") == 0
    assert await structure(db, "fast") == await structure(db, "slow")
    await load(db, database_url, more, "fast", mode="upsert")
    assert await db.fetchval(f"SELECT _fid FROM {table} WHERE id = $1", ROWS + 1) == 2 * ROWS + 2
    assert await db.fetchval("SELECT row_count FROM dataset WHERE slug = 'fast'") == ROWS + 1


@pytest.mark.parametrize("where", [10, ROWS - 10])
async def test_a_duplicate_in_either_half_is_reported_on_its_line_and_changes_nothing(
    db: asyncpg.Connection, database_url: str, tmp_path: Path, schema_file: Path, where: int
) -> None:
    await load(db, database_url, write(tmp_path / "first.csv", [row(i) for i in range(1, 11)]), "ds",
               create=True, schema=schema_file)  # fmt: skip
    before = await rows_of(db, "ds")
    meta = await db.fetchrow("SELECT row_count, modified_at, spatial_extent::text FROM dataset")
    rows = [row(i) for i in range(1, ROWS + 1)]
    rows[where - 1] = row(where, ident=3)  # data row `where` is on line where + 1
    path = write(tmp_path / "dup.csv", rows)
    with pytest.raises(ImportFailedError) as info:
        await load(db, database_url, path, "ds", mode="replace")
    report = info.value.report
    assert report["timings"].get("parallel") == 1
    first, dup = sorted((3, where))
    assert report["errors"] == [
        {"line": dup + 1, "column": "id", "code": "primary-key",
         "reason": f"duplicate value of (id): already on line {first + 1}"}
    ]  # fmt: skip
    assert await rows_of(db, "ds") == before
    assert tuple(await db.fetchrow("SELECT row_count, modified_at, spatial_extent::text FROM dataset")) == tuple(meta)
    assert await load_tables(db) == []
    # The same file, skipping the duplicate: the other rows load, the duplicate is set aside with its line.
    report = await load(db, database_url, path, "ds", mode="replace", skip_invalid=True)
    assert (report["rows_inserted"], report["rows_rejected"]) == (ROWS - 1, 1)
    assert [r["line"] for r in await db.fetch("SELECT line FROM ingest_rejection")] == [dup + 1]
    assert await db.fetchval("SELECT row_count FROM dataset") == ROWS - 1
    table = await table_of(db, "ds")
    assert await db.fetchval(f"SELECT count(*) FROM {table} WHERE _fid <> id + 10 AND id <> 3") == 0
    assert await load_tables(db) == []


async def test_a_bad_cell_in_the_second_half_gets_the_careful_report(
    db: asyncpg.Connection, database_url: str, tmp_path: Path, schema_file: Path
) -> None:
    rows = [row(i) for i in range(1, ROWS + 1)]
    rows[ROWS - 5] = row(ROWS - 4, category="nowhere")  # line ROWS - 3: not in the enum
    path = write(tmp_path / "bad.csv", rows)
    reports = []
    for parallel in (True, False):
        with pytest.raises(ImportFailedError) as info:
            await load(
                db, database_url, path, f"bad-{int(parallel)}", create=True, schema=schema_file, parallel=parallel
            )
        assert "parallel" not in info.value.report["timings"]
        reports.append(info.value.report["errors"])
    assert reports[0] == reports[1]
    assert [(e["line"], e["column"]) for e in reports[0]] == [(ROWS - 3, "category")]
    assert await db.fetchval("SELECT count(*) FROM dataset") == 0
    assert await db.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'datasets'") == 0


async def test_load_tables_of_killed_imports_are_dropped_and_live_ones_kept(
    db: asyncpg.Connection, database_url: str, tmp_path: Path, schema_file: Path
) -> None:
    # A killed import: its load table stays, its advisory lock went with its connection.
    killed = await asyncpg.connect(database_url)
    await killed.execute("SELECT pg_advisory_lock($1, 999001)", parload.LOCK_SPACE)
    await killed.execute(f"CREATE TABLE datasets.{parload.table_name(999001)} (x int)")
    await killed.close()
    # An import still running: its transaction holds the lock.
    live = await asyncpg.connect(database_url)
    try:
        transaction = live.transaction()
        await transaction.start()
        await parload.guard(live, 999002)
        await db.execute(f"CREATE TABLE datasets.{parload.table_name(999002)} (x int)")
        await db.execute("CREATE TABLE datasets._td_load_notes (x int)")  # not a load table's name
        path = write(tmp_path / "clean.csv", [row(i) for i in range(1, 101)])
        report = await load(db, database_url, path, "ds", create=True, schema=schema_file)
        assert report["timings"].get("parallel") == 1
        assert sorted(await load_tables(db)) == ["_td_load_999002", "_td_load_notes"]
        await transaction.rollback()
    finally:
        await live.close()
    assert await parload.clean_orphans(db) == ["_td_load_999002"]


async def test_small_files_and_other_modes_keep_one_connection(
    db: asyncpg.Connection, database_url: str, tmp_path: Path, schema_file: Path
) -> None:
    path = write(tmp_path / "clean.csv", [row(i) for i in range(1, 101)])
    small = await load(db, database_url, path, "ds", create=True, schema=schema_file,
                       parallel_min_bytes=path.stat().st_size + 1)  # fmt: skip
    assert "parallel" not in small["timings"] and small["timings"]["native"] == 1
    more = write(tmp_path / "more.csv", [row(i) for i in range(101, 201)])
    appended = await load(db, database_url, more, "ds")  # into a table with rows: staging and one merge
    assert "parallel" not in appended["timings"]
    assert await db.fetchval("SELECT row_count FROM dataset") == 200


@pytest.mark.parametrize(
    "own",
    [
        "CREATE VIEW public.city_view AS SELECT id, name FROM {table}",
        "GRANT SELECT ON {table} TO PUBLIC",
        "COMMENT ON TABLE {table} IS 'used by the GIS team'",
    ],
)
async def test_a_replace_keeps_what_the_city_built_on_the_table(
    db: asyncpg.Connection, database_url: str, tmp_path: Path, schema_file: Path, own: str
) -> None:
    """A view, grants or a comment of the city's own on a dataset's table survive a replace: such a table is not
    swapped for a load table (a DROP would lose them, or fail for a view), it is loaded in place."""
    first = write(tmp_path / "first.csv", [row(i) for i in range(1, 301)])
    await load(db, database_url, first, "ds", create=True, schema=schema_file)
    table = await table_of(db, "ds")
    await db.execute(own.format(table=table))
    second = write(tmp_path / "second.csv", [row(i) for i in range(1, 401)])
    report = await load(db, database_url, second, "ds", mode="replace")
    assert report["status"] == "succeeded" and "parallel" not in report["timings"]
    assert await db.fetchval(f"SELECT count(*) FROM {table}") == 400
    assert await db.fetchval(
        """SELECT (SELECT count(*) FROM pg_views WHERE viewname = 'city_view') = 1
               OR (SELECT relacl IS NOT NULL FROM pg_class WHERE oid = $1::regclass)
               OR obj_description($1::regclass, 'pg_class') = 'used by the GIS team'""",
        table,
    )
    if "VIEW" in own:
        assert await db.fetchval("SELECT count(*) FROM public.city_view") == 400
    plain = write(tmp_path / "plain.csv", [row(i) for i in range(1, 201)])
    await load(db, database_url, plain, "other", create=True, schema=schema_file)
    swapped = await load(db, database_url, plain, "other", mode="replace")
    assert swapped["timings"].get("parallel") == 1  # without such objects the two-core path still applies


@pytest.mark.parametrize(
    "odd",
    [
        "\n",
        '7777;"objet, cité";voirie;1;47;1;\n',
        "7777;objet\r7;voirie;1;47;1;\n",
        # COPY takes these (its input after the commas became points), the pattern does not: checked after the COPY.
        "7777;objet, cité;voirie;1;47;1;\n",
        "7777;objet;voirie;1;47;0x10;\n",
        "7777;objet;voirie;1;47;1;2024-01-01 00:00:00+01\n",
    ],
)
async def test_blank_lines_quotes_and_carriage_returns_take_the_other_paths(
    db: asyncpg.Connection, database_url: str, tmp_path: Path, schema_file: Path, odd: str
) -> None:
    rows = [row(i) for i in range(1, 201)]
    rows.insert(150, odd)
    path = tmp_path / "odd.csv"
    path.write_bytes((HEADER + "".join(rows)).encode())
    outcomes = []
    for parallel in (True, False):
        try:
            report = await load(db, database_url, path, f"odd-{int(parallel)}", create=True, schema=schema_file,
                                parallel=parallel, set_based=parallel)  # fmt: skip
        except ImportFailedError as exc:
            report = exc.report
        assert "parallel" not in report["timings"]
        outcomes.append((report["errors"], report.get("rows_inserted")))
    assert outcomes[0] == outcomes[1]
    if outcomes[0][1] is not None:  # loaded: the same rows (row ids aside: a rolled-back attempt used some)
        assert outcomes[0][1] == 201 - (odd == "\n")  # a blank line is no row
        loaded = [[r[1:] for r in await rows_of(db, f"odd-{n}")] for n in (1, 0)]
        assert loaded[0] == loaded[1]


async def test_a_load_table_still_in_use_is_left_for_the_next_import(db: asyncpg.Connection, database_url: str) -> None:
    """A killed import's helper can still be building an index until its server process notices: no waiting."""
    await db.execute(f"CREATE TABLE datasets.{parload.table_name(999003)} (x int)")
    helper = await asyncpg.connect(database_url)
    try:
        transaction = helper.transaction()
        await transaction.start()
        await helper.execute(f"LOCK TABLE datasets.{parload.table_name(999003)} IN SHARE MODE")
        assert await parload.clean_orphans(db) == []
        await transaction.rollback()
    finally:
        await helper.close()
    assert await parload.clean_orphans(db) == ["_td_load_999003"]
    assert await load_tables(db) == []
