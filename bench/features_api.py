"""OGC API - Features: our /ogcapi against tipg on the same database, then full exports of 1,000,000 rows.

    .venv/bin/pip install -e '.[bench]'   # tipg from PyPI; wrk from Debian (apt-get install -y wrk)
    .venv/bin/python bench/features_api.py [--rows 100000] [--export-rows 1000000] [--duration 10]

Only localhost: a throw-away database `td_bench_*` on TERRITOIRE_BENCH_ADMIN_URL (default the local postgres),
our server and tipg as one uvicorn process each, driven in turn by the same wrk load. Prints requests/s,
p50/p99 latency and the ratios against the targets of issue 6; then times the streamed GeoJSON and GeoParquet
exports and reads the server's peak memory (VmHWM, reset before each export).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
ADMIN_URL = os.environ.get("TERRITOIRE_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def url_for(database: str) -> str:
    return ADMIN_URL.rpartition("/")[0] + "/" + database


async def admin(sql: str) -> None:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(sql)
    finally:
        await conn.close()


TABLE_SCHEMA = (
    '{"fields": [{"name": "name", "type": "string"}, {"name": "value", "type": "number"}, '
    '{"name": "category", "type": "string"}, {"name": "observed", "type": "datetime"}]}'
)


async def load_points(url: str, slug: str, rows: int) -> int:
    """A typed table per the contract (TYPED_TABLES.md) with `rows` random points over metropolitan France."""
    conn = await asyncpg.connect(url)
    try:
        dataset_id = await conn.fetchval(
            "INSERT INTO dataset (slug, title, table_schema) VALUES ($1, $1, $2::jsonb) RETURNING id",
            slug,
            TABLE_SCHEMA,
        )
        table = f"ds_{dataset_id}"
        await conn.execute(
            f"""
            CREATE TABLE datasets.{table} (_fid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text,
                value double precision, category text, observed timestamptz, geom geometry(Geometry, 4326));
            SELECT setseed(0.42);
            INSERT INTO datasets.{table} (name, value, category, observed, geom)
            SELECT 'point ' || i, random() * 1000, (ARRAY['a', 'b', 'c', 'd'])[1 + i % 4],
                   '2024-01-01'::timestamptz + i * interval '1 minute',
                   ST_SetSRID(ST_MakePoint(-4.5 + random() * 12, 42.5 + random() * 8.5), 4326)
            FROM generate_series(1, {rows}) i;
            CREATE INDEX {table}_geom_idx ON datasets.{table} USING gist (geom);
            ANALYZE datasets.{table};
            UPDATE dataset SET table_name = '{table}', row_count = {rows}, geometry_type = 'Point',
                spatial_extent = (SELECT ST_SetSRID(ST_Extent(geom)::geometry, 4326) FROM datasets.{table}),
                temporal_start = '2024-01-01', modified_at = now() WHERE id = {dataset_id};
            """
        )
        return int(dataset_id)
    finally:
        await conn.close()


class Server:
    def __init__(self, name: str, command: list[str], env: dict[str, str], port: int) -> None:
        self.name, self.port = name, port
        self.url = f"http://127.0.0.1:{port}"
        self.log = open(f"/tmp/td-bench-{name}-{port}.log", "wb")  # noqa: SIM115 - closed in stop()
        self.process = subprocess.Popen(
            command, env={**os.environ, **env}, stdout=self.log, stderr=subprocess.STDOUT, cwd="/tmp"
        )

    def wait(self, path: str) -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + path, timeout=5).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{self.name} did not start; see {self.log.name}")

    def peak_rss_mb(self) -> float:
        status = Path(f"/proc/{self.process.pid}/status").read_text()
        return int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024  # type: ignore[union-attr]

    def reset_peak(self) -> None:
        Path(f"/proc/{self.process.pid}/clear_refs").write_text("5")

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(10)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


@dataclass
class Result:
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int


def _ms(text: str) -> float:
    match = re.match(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        return float("nan")
    value, unit = match.groups()
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}[unit]


def median_result(results: list[Result]) -> Result:
    return Result(
        statistics.median(r.rps for r in results),
        statistics.median(r.p50_ms for r in results),
        statistics.median(r.p99_ms for r in results),
        sum(r.errors for r in results),
    )


def wrk(url: str, threads: int, connections: int, duration: int) -> Result:
    out = subprocess.run(
        ["wrk", f"-t{threads}", f"-c{connections}", f"-d{duration}s", "--latency", "--timeout", "10s", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50_match = re.search(r"^\s+50%\s+(\S+)", out, re.MULTILINE)
    p99_match = re.search(r"^\s+99%\s+(\S+)", out, re.MULTILINE)
    p50 = _ms(p50_match.group(1)) if p50_match else float("nan")
    p99 = _ms(p99_match.group(1)) if p99_match else float("nan")
    errors = 0
    if m := re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out):
        errors += int(m.group(1))
    if m := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out):
        errors += sum(int(g) for g in m.groups())
    return Result(rps, p50, p99, errors)


def check_same_answer(ours: str, theirs: str) -> None:
    a, b = httpx.get(ours, timeout=30).json(), httpx.get(theirs, timeout=30).json()
    fa = a.get("features", [a])
    fb = b.get("features", [b])
    assert len(fa) == len(fb), (len(fa), len(fb))
    assert [str(f["id"]) for f in fa] == [str(f["id"]) for f in fb], "the two servers disagree"


def export(server: Server, path: str, expected_rows: int) -> tuple[float, int, float]:
    server.reset_peak()
    start = time.perf_counter()
    size = 0
    # identity: the figure is the export's own speed, not gzip's (clients that ask for gzip get it).
    with httpx.stream("GET", server.url + path, timeout=600, headers={"Accept-Encoding": "identity"}) as response:
        response.raise_for_status()
        for chunk in response.iter_raw():
            size += len(chunk)
    elapsed = time.perf_counter() - start
    return elapsed, size, server.peak_rss_mb()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--export-rows", type=int, default=1_000_000)
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per server and scenario")
    parser.add_argument("--skip-exports", action="store_true")
    parser.add_argument("--skip-api", action="store_true", help="only the exports")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        sys.exit("wrk is missing: apt-get install -y wrk")

    name = f"td_bench_{os.getpid()}_{uuid.uuid4().hex[:6]}"
    asyncio.run(admin(f'CREATE DATABASE "{name}"'))
    url = url_for(name)
    servers: list[Server] = []
    try:
        env = {"TERRITOIRE_DATABASE_URL": url, "TERRITOIRE_LOG_LEVEL": "WARNING"}
        subprocess.run(
            [sys.executable, "-m", "territoire_data.cli", "migrate"],
            env={**os.environ, **env},
            check=True,
            capture_output=True,
        )
        started = time.perf_counter()
        asyncio.run(load_points(url, "points", args.rows))
        print(f"loaded {args.rows:,} points in {time.perf_counter() - started:.1f}s")

        ours = Server(
            "ours",
            [sys.executable, "-m", "territoire_data.cli", "serve", "--port", str(free_port())],
            {**env, "TERRITOIRE_BASE_URL": "http://127.0.0.1"},
            0,
        )
        ours.port = int(ours.process.args[-1])  # type: ignore[index]
        ours.url = f"http://127.0.0.1:{ours.port}"
        servers.append(ours)
        tipg_port = free_port()
        tipg = Server(
            "tipg",
            [
                sys.executable,
                "-m",
                "uvicorn",
                "tipg.main:app",
                "--port",
                str(tipg_port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            {"DATABASE_URL": url, "TIPG_DB_SCHEMAS": '["datasets"]', "TIPG_DB_EXCLUDE_FUNCTION_SCHEMAS": '["public"]'},
            tipg_port,
        )
        servers.append(tipg)
        ours.wait("/health")
        tipg.wait("/collections")

        bbox = "2.30,48.80,2.40,48.90"
        scenarios = [
            (
                "items limit=100",
                "/ogcapi/collections/points/items?limit=100",
                "/collections/datasets.ds_1/items?limit=100",
                1.5,
            ),
            (
                f"items bbox={bbox}",
                f"/ogcapi/collections/points/items?bbox={bbox}&limit=100",
                f"/collections/datasets.ds_1/items?bbox={bbox}&limit=100",
                1.5,
            ),
            ("item by id", "/ogcapi/collections/points/items/4242", "/collections/datasets.ds_1/items/4242", 1.2),
        ]
        print(f"\nwrk -t{args.threads} -c{args.connections} -d{args.duration}s, one process each, same database\n")
        print(f"{'scenario':32} {'server':6} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
        summary: list[tuple[str, float, float, Result, Result]] = []
        for label, our_path, tipg_path, target in [] if args.skip_api else scenarios:
            check_same_answer(ours.url + our_path, tipg.url + tipg_path)
            runs: dict[str, list[Result]] = {"ours": [], "tipg": []}
            for server, path in ((ours, our_path), (tipg, tipg_path)):
                wrk(server.url + path, 1, 4, 2)  # warm-up: pools, caches, plans
            # Alternate the two servers round by round, so that load from elsewhere on the machine hits both alike.
            for _ in range(args.rounds):
                for server, path in ((ours, our_path), (tipg, tipg_path)):
                    r = wrk(server.url + path, args.threads, args.connections, args.duration)
                    runs[server.name].append(r)
                    print(f"{label:32} {server.name:6} {r.rps:9.1f} {r.p50_ms:8.1f} {r.p99_ms:8.1f} {r.errors:6d}")
            mine, theirs = (median_result(runs["ours"]), median_result(runs["tipg"]))
            summary.append((label, mine.rps / theirs.rps, target, mine, theirs))
        if summary:
            print(f"\nmedians over {args.rounds} alternating round(s)")
        for label, ratio, target, mine, theirs in summary:
            lower_p99 = mine.p99_ms < theirs.p99_ms
            verdict = "OK" if ratio >= target and lower_p99 else "BELOW TARGET"
            print(
                f"{label:32} {mine.rps:7.1f} vs {theirs.rps:7.1f} req/s = {ratio:5.2f}x (target >= {target}x); "
                f"p99 {mine.p99_ms:6.1f} vs {theirs.p99_ms:6.1f} ms  {verdict}"
            )

        if not args.skip_exports:
            tipg.stop()
            servers.remove(tipg)
            started = time.perf_counter()
            asyncio.run(load_points(url, "million", args.export_rows))
            print(f"\nloaded {args.export_rows:,} points in {time.perf_counter() - started:.1f}s")
            targets = {"geojson": 100_000, "parquet": 300_000, "csv": 0}
            print(f"server RSS before exports: {ours.peak_rss_mb():.1f} MB")
            for fmt in ("geojson", "parquet", "csv"):
                elapsed, size, peak = export(ours, f"/api/v1/datasets/million/exports/{fmt}", args.export_rows)
                rate = args.export_rows / elapsed
                verdict = "OK" if rate >= targets[fmt] and peak < 300 else "BELOW TARGET"
                if not targets[fmt]:
                    verdict = ""
                print(
                    f"export {fmt:8} {args.export_rows:,} rows in {elapsed:5.2f}s = {rate:10,.0f} rows/s, "
                    f"{size / 1e6:7.1f} MB, server peak RSS {peak:6.1f} MB "
                    f"(target >= {targets[fmt]:,}/s, < 300 MB) {verdict}"
                )
    finally:
        for server in servers:
            server.stop()
        asyncio.run(admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


if __name__ == "__main__":
    main()
