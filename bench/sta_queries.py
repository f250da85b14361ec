"""SensorThings read latency under concurrency, at 1 M and 10 M observations (flat = pruning and indexes work).

Loads 200 Things, 1,000 Datastreams and a year of Observations into a bench database of its own (never
`territoire`), starts the real server (`territoire-data serve`), then measures with concurrent clients the
p50/p95/p99 of the five queries of issue 5 against their targets. Run:

    .venv/bin/python bench/sta_queries.py [--stages 1000000,10000000] [--concurrency 16] [--requests 300]

Layout: Datastreams 1-10 are per-minute (525,600 rows a year each, the "one day = 1,440 rows" and the
"aggregate a year" cases); the other 990 are sparse and fill the volume. Stage 1 loads Datastream 1 and the
sparse ones up to 1 M rows; stage 2 adds Datastreams 2-10 and denser sparse data up to 10 M. The queries aim at
the same Datastreams in both stages, so the two sets of figures compare.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
import orjson

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from territoire_data.db import migrate  # noqa: E402
from territoire_data.settings import Settings  # noqa: E402

ADMIN_URL = os.environ.get("TERRITOIRE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DB_NAME = "td_bench_sta"
THINGS, PER_THING, HOT = 200, 5, 10
TARGETS = {  # name: (percentile, limit ms)
    "latest observation of one Datastream": ("p99", 20.0),
    "one day of one Datastream (1,440 rows)": ("p99", 60.0),
    "$filter on time and result (one week)": ("p99", None),
    "$expand 100 Things + Datastreams + last Observation": ("p99", 150.0),
    "daily aggregation of a year (525,600 rows)": ("p95", 150.0),
}


def db_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def reset_database() -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{DB_NAME}"')
    finally:
        await admin.close()


def months(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    """[start, end) cut at month boundaries: one INSERT ... SELECT generate_series per partition."""
    out = []
    cursor = start
    while cursor < end:
        nxt = (cursor.replace(day=1, hour=0, minute=0, second=0, microsecond=0) + timedelta(days=32)).replace(day=1)
        out.append((cursor, min(nxt, end)))
        cursor = nxt
    return out


async def load_entities(conn: asyncpg.Connection) -> None:
    await conn.execute("""
        INSERT INTO sensor (name, metadata) SELECT 'sensor ' || i, 'https://example.org/s' FROM generate_series(1, 5) i;
        INSERT INTO observed_property (name, definition) SELECT 'property ' || i, 'https://example.org/p'
            FROM generate_series(1, 5) i;
        INSERT INTO thing (name, description, properties)
            SELECT 'station ' || i, 'bench station', jsonb_build_object('n', i) FROM generate_series(1, 200) i;
        INSERT INTO location (name, location, geom)
            SELECT 'site ' || i, jsonb_build_object('type', 'Point', 'coordinates',
                   jsonb_build_array(4.8 + i / 1000.0, 45.7 + i / 1000.0)),
                   ST_SetSRID(ST_MakePoint(4.8 + i / 1000.0, 45.7 + i / 1000.0), 4326)
            FROM generate_series(1, 200) i;
        INSERT INTO thing_location SELECT i, i FROM generate_series(1, 200) i;
        INSERT INTO datastream (name, unit_of_measurement, thing_id, sensor_id, observed_property_id)
            SELECT 'stream ' || d, '{"symbol": "°C"}', (d - 1) / 5 + 1, (d - 1) % 5 + 1, (d - 1) % 5 + 1
            FROM generate_series(1, 1000) d;
    """)


async def load_hot(conn: asyncpg.Connection, ds: int, start: datetime, end: datetime) -> None:
    for lo, hi in months(start, end):
        await conn.execute(
            "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
            "SELECT $1, t, round((15 + 10 * sin(extract(epoch FROM t) / 86400 * 2 * pi()) + random())::numeric, 2) "
            "FROM generate_series($2::timestamptz, $3::timestamptz - interval '1 minute', interval '1 minute') t",
            ds,
            lo,
            hi,
        )


async def load_sparse(conn: asyncpg.Connection, rows: int, start: datetime, end: datetime, phase_min: int) -> None:
    per_ds = max(1, rows // (1000 - HOT))
    step = timedelta(minutes=max(1, int((end - start).total_seconds() / 60 / per_ds)))
    for lo, hi in months(start, end):
        await conn.execute(
            "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
            "SELECT d, t, round((random() * 100)::numeric, 1) FROM generate_series($1::int, 1000) d, "
            "generate_series($2::timestamptz, $3::timestamptz - interval '1 second', $4::interval) t "
            "ON CONFLICT (datastream_id, phenomenon_time) DO NOTHING",
            HOT + 1,
            lo + timedelta(minutes=phase_min),
            hi,
            step,
        )


async def load_stage(stage: int, target: int, start: datetime, end: datetime) -> int:
    conn = await asyncpg.connect(db_url(DB_NAME))
    try:
        began = time.perf_counter()
        # a bulk load is not a live update: no notification; extents and rollups computed once at the end
        await conn.execute("ALTER TABLE observation DISABLE TRIGGER observation_sta_inserted")
        await conn.execute("SELECT ensure_observation_partitions($1, $2)", start - timedelta(days=31), end)
        if stage == 0:
            await load_entities(conn)
            await load_hot(conn, 1, start, end)
        else:
            for ds in range(2, HOT + 1):
                await load_hot(conn, ds, start, end)
        have = await conn.fetchval("SELECT count(*) FROM observation")
        if target > have:
            await load_sparse(conn, target - have, start, end, phase_min=stage * 7)
        await conn.execute("ALTER TABLE observation ENABLE TRIGGER observation_sta_inserted")
        await conn.execute(
            "UPDATE datastream d SET phenomenon_time_start = x.lo, phenomenon_time_end = x.hi FROM "
            "(SELECT datastream_id, min(phenomenon_time) lo, max(phenomenon_time) hi FROM observation GROUP BY 1) x "
            "WHERE d.id = x.datastream_id"
        )
        await conn.fetchval("SELECT sta_rebuild_rollups()")
        await conn.execute("VACUUM ANALYZE")
        count = int(await conn.fetchval("SELECT count(*) FROM observation"))
        print(f"  loaded to {count:,} observations in {time.perf_counter() - began:.0f} s", flush=True)
        return count
    finally:
        await conn.close()


def start_server(port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TERRITOIRE_DATABASE_URL": db_url(DB_NAME),
        "TERRITOIRE_BASE_URL": f"http://127.0.0.1:{port}",
        "TERRITOIRE_LOG_LEVEL": "WARNING",
        "TERRITOIRE_DB_POOL_SIZE": "10",
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "territoire_data.cli", "serve", "--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return process
        except httpx.HTTPError:
            time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not start")


def queries(start: datetime, rng: random.Random) -> dict[str, callable]:  # type: ignore[valid-type]
    def day() -> datetime:
        return (start + timedelta(days=rng.randrange(2, 360))).replace(hour=0, minute=0, second=0, microsecond=0)

    def iso(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    def latest() -> tuple[str, dict[str, str]]:
        return f"/Datastreams({rng.randint(1, 1000)})/Observations", {"$top": "1", "$orderby": "phenomenonTime desc"}

    def one_day() -> tuple[str, dict[str, str]]:
        d = day()
        return "/Datastreams(1)/Observations", {
            "$filter": f"phenomenonTime ge {iso(d)} and phenomenonTime lt {iso(d + timedelta(days=1))}",
            "$top": "1440",
        }

    def filtered() -> tuple[str, dict[str, str]]:
        d = day()
        return "/Datastreams(1)/Observations", {
            "$filter": f"phenomenonTime ge {iso(d)} and phenomenonTime lt {iso(d + timedelta(days=7))} "
            "and result gt 24",
            "$top": "1000",
            "$select": "phenomenonTime,result",
        }

    def expand() -> tuple[str, dict[str, str]]:
        return "/Things", {
            "$top": "100",
            "$skip": str(rng.choice([0, 100])),
            "$expand": "Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))",
        }

    def aggregate() -> tuple[str, dict[str, str]]:
        return "/Datastreams(1)/Aggregates", {"interval": "day", "aggregate": "min,max,avg,count", "$top": "400"}

    return dict(zip(TARGETS, (latest, one_day, filtered, expand, aggregate), strict=True))


async def measure(base: str, make: callable, requests: int, concurrency: int) -> list[float]:  # type: ignore[valid-type]
    latencies: list[float] = []
    jobs = [make() for _ in range(requests)]
    queue: asyncio.Queue[tuple[str, dict[str, str]]] = asyncio.Queue()
    for job in jobs:
        queue.put_nowait(job)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:
        for job in jobs[:concurrency]:  # warm the pools and caches
            (await http.get(job[0], params=job[1])).raise_for_status()

        async def worker() -> None:
            while not queue.empty():
                path, params = queue.get_nowait()
                began = time.perf_counter()
                response = await http.get(path, params=params)
                response.raise_for_status()
                orjson.loads(response.content)
                latencies.append((time.perf_counter() - began) * 1000)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="1000000,10000000", help="observation counts to measure at")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--requests", type=int, default=320, help="requests per query kind")
    parser.add_argument("--workers", type=int, default=2, help="server processes")
    parser.add_argument("--keep", action="store_true", help="keep the bench database afterwards")
    args = parser.parse_args()
    stages = [int(s) for s in args.stages.split(",")]
    end = datetime.now(UTC).replace(second=0, microsecond=0)
    start = end - timedelta(days=365)
    await reset_database()
    settings = Settings(_env_file=None, database_url=db_url(DB_NAME))  # type: ignore[call-arg]
    await asyncio.to_thread(migrate.upgrade, settings)  # Alembic runs its own event loop
    results: dict[int, dict[str, tuple[float, float, float]]] = {}
    port = 18000 + os.getpid() % 1000
    try:
        for index, target in enumerate(stages):
            print(f"stage {index + 1}: loading up to {target:,} observations", flush=True)
            count = await load_stage(index, target, start, end)
            print(
                f"  machine load average before measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores",
                flush=True,
            )
            server = start_server(port, args.workers)
            try:
                rng = random.Random(42)
                results[count] = {}
                for name, make in queries(start, rng).items():
                    lat = await measure(f"http://127.0.0.1:{port}/sta/v1.1", make, args.requests, args.concurrency)
                    results[count][name] = (statistics.median(lat), pct(lat, 95), pct(lat, 99))
                    p50, p95, p99 = results[count][name]
                    print(f"  {name:<55} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  p99 {p99:7.1f} ms", flush=True)
            finally:
                server.terminate()
                server.wait(30)
    finally:
        if not args.keep:
            admin = await asyncpg.connect(ADMIN_URL)
            await admin.execute(f'DROP DATABASE IF EXISTS "{DB_NAME}" WITH (FORCE)')
            await admin.close()
    print(
        f"\n{args.concurrency} concurrent clients, {args.requests} requests per query, {args.workers} server workers,"
        f" {os.cpu_count()} CPU cores (bench client on the same machine)"
    )
    counts = sorted(results)
    header = "".join(f"{c:>14,}" for c in counts)
    print(f"{'query (target)':<72}{header}   ratio   verdict")
    for name, (which, limit) in TARGETS.items():
        index = {"p50": 0, "p95": 1, "p99": 2}[which]
        values = [results[c][name][index] for c in counts]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        label = f"{name} {which}" + (f" <= {limit:.0f} ms" if limit else "")
        verdict = "" if limit is None else ("ok" if values[-1] <= limit else "MISSED")
        print(f"{label:<72}" + "".join(f"{v:11.1f} ms" for v in values) + f"   {ratio:5.2f}   {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
