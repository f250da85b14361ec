"""CSV load benchmark: our loader (validation + geometry) vs ogr2ogr (the GIS peer) vs psql \\copy (reference).

Usage: python bench/csv_load.py [--rows 1000000] [--keep] [--only ours|ogr2ogr|reference] [--db-suffix NAME]
Needs PostgreSQL + PostGIS (TERRITOIRE_BENCH_ADMIN_URL, default postgresql://postgres@127.0.0.1:5432/postgres),
ogr2ogr (gdal-bin) and psql. Creates and drops its own td_csvbench_* database. Prints rows/s, peak memory, ratios.
Every route ends in the same state: a typed table with a primary key on id, a WGS84 point geometry with a GiST
index, value as double precision and timestamp as timestamptz.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg

ADMIN_URL = os.environ.get("TERRITOIRE_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
ROOT = Path(__file__).resolve().parents[1]
CATEGORIES = ["voirie", "parking", "borne", "eclairage", "mobilier", "arbre", "capteur", "velo"]
SCHEMA = {
    "fields": [
        {"name": "id", "type": "integer", "constraints": {"required": True}},
        {"name": "name", "type": "string", "constraints": {"required": True, "maxLength": 80}},
        {"name": "category", "type": "string", "constraints": {"enum": CATEGORIES}},
        {"name": "lon", "type": "number", "constraints": {"minimum": -180, "maximum": 180}},
        {"name": "lat", "type": "number", "constraints": {"minimum": -90, "maximum": 90}},
        {"name": "value", "type": "number"},
        {"name": "timestamp", "type": "datetime"},
    ],
    "primaryKey": ["id"],
}


def generate(path: Path, rows: int) -> None:
    """id;name;category;lon;lat;value;timestamp, `;`-separated with decimal commas (a French export)."""
    rng = random.Random(42)
    start = datetime(2024, 1, 1, tzinfo=UTC)
    with path.open("w", encoding="utf-8", newline="") as out:
        out.write("id;name;category;lon;lat;value;timestamp\n")
        chunk: list[str] = []
        for i in range(1, rows + 1):
            lon = f"{rng.uniform(-1.8, 7.5):.6f}".replace(".", ",")
            lat = f"{rng.uniform(43.2, 50.9):.6f}".replace(".", ",")
            value = f"{rng.uniform(0, 1000):.2f}".replace(".", ",")
            stamp = (start + timedelta(seconds=37 * i)).isoformat(timespec="seconds")
            chunk.append(f"{i};objet {i};{CATEGORIES[i % len(CATEGORIES)]};{lon};{lat};{value};{stamp}\n")
            if len(chunk) >= 50_000:
                out.writelines(chunk)
                chunk = []
        out.writelines(chunk)


LAST_STDOUT: list[bytes] = []


def run_measured(command: list[str], env: dict[str, str] | None = None) -> tuple[float, int]:
    """Run a command, return (seconds, peak resident memory in MB of it and the children it waited for)."""
    with tempfile.TemporaryFile() as out:
        started = time.perf_counter()
        process = subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.PIPE)
        _, status, usage = os.wait4(process.pid, 0)
        elapsed = time.perf_counter() - started
        stderr = process.stderr.read().decode() if process.stderr else ""
        if os.waitstatus_to_exitcode(status) != 0:
            raise SystemExit(f"{command[0]} failed: {stderr[-2000:]}")
        out.seek(0)
        LAST_STDOUT[:] = [out.read()]
    print(f"  {command[0].rsplit('/', 1)[-1]}: {elapsed:.2f}s wall, {usage.ru_utime + usage.ru_stime:.2f}s CPU")
    return elapsed, usage.ru_maxrss // 1024


def db_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


async def check(url: str, table: str, rows: int) -> None:
    conn = await asyncpg.connect(url)
    try:
        count = await conn.fetchval(f"SELECT count(*) FROM {table} WHERE geom IS NOT NULL")
        gist = await conn.fetchval(
            "SELECT count(*) FROM pg_indexes WHERE schemaname || '.' || tablename = $1 AND indexdef LIKE '%gist%'",
            table.replace('"', ""),
        )
    finally:
        await conn.close()
    if count != rows or not gist:
        raise SystemExit(f"{table}: {count} geometries (expected {rows}), GiST index: {bool(gist)}")


def psql_args(url: str) -> list[str]:
    parts = urlsplit(url)
    args = ["psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", parts.hostname or "127.0.0.1"]
    args += ["-p", str(parts.port or 5432), "-U", parts.username or "postgres", "-d", parts.path.lstrip("/")]
    return args


REFERENCE_SQL = """
CREATE TABLE ref_bench (
    id bigint, name text, category text, lon_text text, lat_text text, value_text text, "timestamp" timestamptz,
    value double precision GENERATED ALWAYS AS (replace(value_text, ',', '.')::double precision) STORED,
    geom geometry(Point, 4326) GENERATED ALWAYS AS (ST_SetSRID(ST_MakePoint(
        replace(lon_text, ',', '.')::double precision, replace(lat_text, ',', '.')::double precision), 4326)) STORED
);
\\copy ref_bench (id, name, category, lon_text, lat_text, value_text, "timestamp") FROM '{path}' WITH (FORMAT csv, HEADER true, DELIMITER ';')
ALTER TABLE ref_bench ADD PRIMARY KEY (id);
CREATE INDEX ref_bench_geom_idx ON ref_bench USING gist (geom);
"""

PLAIN_SQL = """
CREATE TABLE plain_bench (id text, name text, category text, lon text, lat text, value text, "timestamp" text);
\\copy plain_bench FROM '{path}' WITH (FORMAT csv, HEADER true, DELIMITER ';')
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--keep", action="store_true", help="keep the database and the file")
    parser.add_argument("--only", choices=["ours", "ogr2ogr", "reference"], default=None)
    parser.add_argument(
        "--db-suffix",
        default=os.environ.get("TERRITOIRE_BENCH_DB_SUFFIX", ""),
        help="part of the database name, so that benches run side by side never share one",
    )
    args = parser.parse_args()
    bench_started = time.perf_counter()
    print("load average at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    for tool in ("ogr2ogr", "psql"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not installed (apt-get install gdal-bin postgresql-client)")

    workdir = Path(tempfile.mkdtemp(prefix="td-csvbench-"))
    data = workdir / "bench.csv"
    schema = workdir / "schema.json"
    schema.write_text(json.dumps(SCHEMA))
    started = time.perf_counter()
    generate(data, args.rows)
    print(f"generated {args.rows:,} rows ({data.stat().st_size / 1e6:.0f} MB) in {time.perf_counter() - started:.1f}s")

    suffix = "".join(c for c in args.db_suffix.lower() if c.isalnum())
    name = f"td_csvbench_{suffix + '_' if suffix else ''}{uuid.uuid4().hex[:8]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = db_url(name)
    env = {**os.environ, "TERRITOIRE_DATABASE_URL": url, "TERRITOIRE_LOG_LEVEL": "WARNING"}
    results: dict[str, tuple[float, int]] = {}
    try:
        subprocess.run([sys.executable, "-m", "territoire_data.cli", "migrate"], env=env, check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
        if args.only in (None, "ours"):
            results["territoire-data ingest csv"] = run_measured(
                [sys.executable, "-m", "territoire_data.cli", "ingest", "csv", str(data), "--dataset", "bench",
                 "--schema", str(schema), "--create", "--timezone", "UTC"],
                env,
            )  # fmt: skip
            asyncio.run(check(url, 'datasets."ds_1"', args.rows))
            report = json.loads(LAST_STDOUT[0])
            print(f"  our phases: {report['timings']}")
        if args.only in (None, "ogr2ogr"):
            parts = urlsplit(url)
            pg = f"PG:host={parts.hostname} port={parts.port or 5432} user={parts.username} dbname={name}"
            results["ogr2ogr"] = run_measured(
                ["ogr2ogr", "-f", "PostgreSQL", pg, str(data), "-nln", "ogr_bench", "-a_srs", "EPSG:4326",
                 "-oo", "SEPARATOR=SEMICOLON", "-oo", "X_POSSIBLE_NAMES=lon", "-oo", "Y_POSSIBLE_NAMES=lat",
                 "-oo", "AUTODETECT_TYPE=YES", "-oo", "KEEP_GEOM_COLUMNS=NO", "-lco", "GEOMETRY_NAME=geom",
                 "-lco", "FID=fid", "-lco", "SPATIAL_INDEX=GIST", "-gt", "65536"],
                {**os.environ, "PG_USE_COPY": "YES"},
            )  # fmt: skip
            asyncio.run(check(url, "public.ogr_bench", args.rows))
        if args.only in (None, "reference"):
            script = workdir / "reference.sql"
            script.write_text(REFERENCE_SQL.replace("{path}", str(data)))
            results["psql \\copy + generated columns + PK + GiST (reference)"] = run_measured(
                [*psql_args(url), "-f", str(script)]
            )
            asyncio.run(check(url, "public.ref_bench", args.rows))
            plain = workdir / "plain.sql"
            plain.write_text(PLAIN_SQL.replace("{path}", str(data)))
            results["psql \\copy into a plain text table (floor)"] = run_measured([*psql_args(url), "-f", str(plain)])
    finally:
        if not args.keep:
            asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORMAT)'.replace("FORMAT", "FORCE")))
            shutil.rmtree(workdir, ignore_errors=True)
        else:
            print(f"kept database {name} and {data}")

    print(f"\n{'route':58} {'seconds':>8} {'rows/s':>10} {'peak MB':>8}")
    for label, (seconds, peak) in results.items():
        print(f"{label:58} {seconds:8.2f} {args.rows / seconds:10,.0f} {peak:8d}")
    ours = results.get("territoire-data ingest csv")
    peer = results.get("ogr2ogr")
    reference = results.get("psql \\copy + generated columns + PK + GiST (reference)")
    if ours and peer:
        ratio = peer[0] / ours[0]
        print(f"\nours vs ogr2ogr: {ratio:.2f}x rows/s (target >= 1.5x) {'OK' if ratio >= 1.5 else 'MISSED'}")
    if ours and reference:
        share = reference[0] / ours[0]
        print(f"ours vs reference: {share:.0%} of its rows/s (target >= 70%) {'OK' if share >= 0.7 else 'MISSED'}")
    if ours:
        print(f"our peak memory: {ours[1]} MB (target < 300 MB) {'OK' if ours[1] < 300 else 'MISSED'}")
    print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    print(f"bench run time: {time.perf_counter() - bench_started:.0f}s")


if __name__ == "__main__":
    main()
