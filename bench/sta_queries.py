"""SensorThings read latency under concurrency, at 1 M and 10 M observations (flat = pruning and indexes work).

Loads 200 Things, 1,000 Datastreams and a year of Observations into a bench database of its own (never
`territoire`), starts the real server (`territoire-data serve`), then measures with concurrent clients the
p50/p95/p99 of the five queries of issue 5 against their targets (and of the unscoped latest page), and the CPU time per request of the server
processes and of the database backends (read from /proc: on a busy shared machine the latencies mostly measure
the other tenants, the CPU time much less so; 16 clients on N cores cannot do better than about
16 x CPU per request / N). Run:

    .venv/bin/python bench/sta_queries.py [--stages 1000000,10000000] [--concurrency 1,16] [--requests 1000] [--warmup 200]
        [--db td_bench_sta] [--reuse]

Each stage loads into a database of its own, `<db>_<observations>` (stage 2 starts as a copy of stage 1, made
with CREATE DATABASE ... TEMPLATE), and the databases are kept: `--reuse` measures again without loading when
a stage's database is complete (about a minute instead of the load), `--drop` removes them at the end. Name
the databases after yourself (`--db` or TERRITOIRE_BENCH_DB) when several people bench on one server.

Layout: Datastreams 1-10 are per-minute (525,600 rows a year each, the "one day = 1,440 rows" and the
"aggregate a year" cases); the other 990 are sparse and fill the volume. Stage 1 loads Datastream 1 and the
sparse ones up to 1 M rows; stage 2 adds Datastreams 2-10 and denser sparse data up to 10 M. The queries aim at
the same Datastreams in both stages, so the two sets of figures compare.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import random
import statistics
import subprocess
import sys
import time
import zlib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote, urlencode, urlsplit

import asyncpg
import brotli
import httpx
import orjson
import zstandard

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from territoire_data.api.serving import default_workers  # noqa: E402
from territoire_data.db import migrate  # noqa: E402
from territoire_data.settings import Settings  # noqa: E402

ADMIN_URL = os.environ.get("TERRITOIRE_TEST_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
DEFAULT_DB = os.environ.get("TERRITOIRE_BENCH_DB", "td_bench_sta")
THINGS, PER_THING, HOT = 200, 5, 10
TARGETS = {  # name: (percentile, limit ms)
    "latest observation of one Datastream": ("p99", 20.0),
    "one day of one Datastream (1,440 rows)": ("p99", 60.0),
    "$filter on time and result (one week)": ("p99", None),
    "$expand 100 Things + Datastreams + last Observation": ("p99", 150.0),
    "daily aggregation of a year (525,600 rows)": ("p95", 150.0),
    "latest 100 Observations anywhere (unscoped)": ("p99", None),
}


def db_url(name: str) -> str:
    return ADMIN_URL.rsplit("/", 1)[0] + "/" + name


async def stage_ready(name: str) -> tuple[datetime, datetime] | None:
    """The (start, end) a complete stage database was loaded with, or None when it must be (re)loaded."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        if not await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return None
    finally:
        await admin.close()
    conn = await asyncpg.connect(db_url(name))
    try:
        if not await conn.fetchval("SELECT to_regclass('bench_meta') IS NOT NULL"):
            return None
        row = await conn.fetchrow("SELECT start_time, end_time FROM bench_meta WHERE complete")
        return (row["start_time"], row["end_time"]) if row else None
    finally:
        await conn.close()


async def create_database(name: str, template: str | None) -> None:
    """A fresh stage database, empty or copied from the previous stage's (a file copy, much faster than a load)."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if template is None:
            await admin.execute(f'CREATE DATABASE "{name}"')
        else:
            await admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    finally:
        await admin.close()


async def drop_database(name: str) -> None:
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
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


async def load_stage(name: str, stage: int, target: int, start: datetime, end: datetime) -> int:
    conn = await asyncpg.connect(db_url(name))
    try:
        began = time.perf_counter()
        await conn.execute("DROP TABLE IF EXISTS bench_meta")
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
        await conn.execute(
            "CREATE TABLE bench_meta AS SELECT $1::timestamptz AS start_time, $2::timestamptz AS end_time, "
            "$3::bigint AS observations, true AS complete",
            start,
            end,
            count,
        )
        print(f"  loaded to {count:,} observations in {time.perf_counter() - began:.0f} s", flush=True)
        return count
    finally:
        await conn.close()


def start_server(name: str, port: int, workers: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TERRITOIRE_DATABASE_URL": db_url(name),
        "TERRITOIRE_BASE_URL": f"http://127.0.0.1:{port}",
        "TERRITOIRE_LOG_LEVEL": "WARNING",
        "TERRITOIRE_DB_POOL_SIZE": "10",
        # one client address sends thousands of requests a minute: limit it (the middleware still runs) but high
        "TERRITOIRE_RATE_LIMIT_PER_MINUTE": "100000000",
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

    def latest_anywhere() -> tuple[str, dict[str, str]]:
        return "/Observations", {"$orderby": "phenomenonTime desc", "$top": "100"}

    return dict(zip(TARGETS, (latest, one_day, filtered, expand, aggregate, latest_anywhere), strict=True))


def process_tree(root: int) -> list[int]:
    """The pid and its descendants (the server's master and workers), from /proc."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            parents[int(entry.name)] = int(fields[1])
    tree, frontier = [root], [root]
    while frontier:
        frontier = [pid for pid, parent in parents.items() if parent in frontier]
        tree.extend(frontier)
    return tree


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time of these processes (Linux /proc; on a shared machine this, unlike latency,
    hardly depends on what else runs)."""
    ticks = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


class CpuMeter:
    """CPU seconds spent by the server's processes and by the database backends serving the bench database."""

    def __init__(self, server_pid: int, database: str) -> None:
        self.server_pid = server_pid
        self.database = database

    async def sample(self) -> tuple[float, float]:
        admin = await asyncpg.connect(ADMIN_URL)
        try:
            rows = await admin.fetch("SELECT pid FROM pg_stat_activity WHERE datname = $1", self.database)
        finally:
            await admin.close()
        return cpu_seconds(process_tree(self.server_pid)), cpu_seconds([r["pid"] for r in rows])


class RawClient:
    """A minimal HTTP/1.1 keep-alive GET client (one connection), accepting the codings browsers and
    urllib3/requests/httpx (with `zstandard` installed) accept: `gzip, deflate, br, zstd`.

    httpx spends 1.3-1.5 ms of CPU per request, more than the server spends on a latest-value read (measured
    on the reference 2-core machine): with 16 clients on the server's own cores, the bench then mostly measured
    itself. This client costs a fraction of that; `--client httpx` measures with httpx still.
    """

    def __init__(self, host: str, port: int, accept: str = "gzip, deflate, br, zstd") -> None:
        self.host, self.port, self.accept = host, port, accept
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def get(self, path: str, params: dict[str, str]) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        assert self.reader is not None
        target = f"{path}?{urlencode(params, quote_via=quote)}" if params else path
        self.writer.write(
            f"GET {target} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nAccept-Encoding: {self.accept}\r\n\r\n".encode()
        )
        head = (await self.reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
        status = int(head[0].split(" ", 2)[1])
        headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in head[1:] if line)}
        if "content-length" in headers:
            body = await self.reader.readexactly(int(headers["content-length"]))
        else:  # chunked
            chunks = []
            while True:
                size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
                chunk = await self.reader.readexactly(size + 2)
                if size == 0:
                    break
                chunks.append(chunk[:-2])
            body = b"".join(chunks)
        coding = headers.get("content-encoding")
        if coding == "br":
            body = brotli.decompress(body)
        elif coding == "zstd":
            body = zstandard.ZstdDecompressor().decompress(body)
        elif coding == "gzip":
            body = zlib.decompress(body, 31)
        return status, body

    async def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def measure(
    base: str,
    make: callable,  # type: ignore[valid-type]
    requests: int,
    concurrency: int,
    meter: CpuMeter,
    client: str = "raw",
    warmup: int = 0,
    accept: str = "gzip, deflate, br, zstd",
) -> tuple[list[float], float, float, float, list[float]]:
    """Latencies (ms) of the requests, the server's, the database's and this client's CPU ms per request (the
    client runs on the same cores: on a 2-core machine its share shows in the latencies too), and the latencies of
    the `warmup` requests sent first, in the same stream, and not counted: a server just started has cold
    caches (each pooled connection prepares each statement, and its PostgreSQL backend loads the partitions'
    catalog entries, on first use), which a few hundred requests of a 320-request run would otherwise weigh in."""
    latencies: list[float] = []
    cold: list[float] = []
    jobs = [make() for _ in range(requests)]
    warm_jobs = [make() for _ in range(warmup)]
    parts = urlsplit(base)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    raws = [RawClient(parts.hostname or "127.0.0.1", parts.port or 80, accept) for _ in range(concurrency)]
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as http:

        async def fetch(index: int, path: str, params: dict[str, str]) -> bytes:
            if client == "httpx":
                response = await http.get(path, params=params)
                response.raise_for_status()
                return response.content
            status, body = await raws[index].get(parts.path + path, params)
            if status != 200:
                raise SystemExit(f"{status} on {path} {params}: {body[:300]!r}")
            return body

        for index, job in enumerate(jobs[:concurrency]):  # open the connections
            await fetch(index, *job)

        # One stream: the warm-up requests, then the measured ones, with no pause between them. Measuring after
        # a pause (all clients idle, then sending at once) timed a burst that steady traffic never makes: its
        # first 16 requests were among the slowest of the run and, on 1,000 requests, made most of the p99.
        queue: asyncio.Queue[tuple[bool, tuple[str, dict[str, str]]]] = asyncio.Queue()
        for job in warm_jobs:
            queue.put_nowait((True, job))
        for job in jobs:
            queue.put_nowait((False, job))
        marks: dict[str, float] = {}

        async def worker(index: int) -> None:
            while not queue.empty():
                warm, (path, params) = queue.get_nowait()
                if not warm and "client" not in marks:  # the first measured request: CPU counters from here
                    marks["client"] = time.process_time()
                    marks["server"], marks["db"] = await meter.sample()
                began = time.perf_counter()
                orjson.loads(await fetch(index, path, params))
                (cold if warm else latencies).append((time.perf_counter() - began) * 1000)

        # The parsed pages are freed by reference counting; a cyclic collection of this process (its third
        # generation walks every object alive) would stall all the clients at once and add to their latencies
        # what is not the server's.
        gc.collect()
        gc.disable()
        try:
            await asyncio.gather(*(worker(i) for i in range(concurrency)))
        finally:
            gc.enable()
        client_after = time.process_time()
        server_after, db_after = await meter.sample()
        server_before, db_before, client_before = marks["server"], marks["db"], marks["client"]
    for raw in raws:
        await raw.close()
    per_request = 1000 / len(latencies)
    return (
        latencies,
        (server_after - server_before) * per_request,
        (db_after - db_before) * per_request,
        (client_after - client_before) * per_request,
        cold,
    )


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def prepare_stage(
    name: str, index: int, target: int, previous: str | None, reuse: bool
) -> tuple[datetime, datetime]:
    """Load a stage's database (or reuse it when complete); returns the year its observations span."""
    if reuse:
        span = await stage_ready(name)
        if span is not None:
            print(f"stage {index + 1}: reusing {name}", flush=True)
            return span
    if previous is None:
        end = datetime.now(UTC).replace(second=0, microsecond=0)
        start = end - timedelta(days=365)
        await create_database(name, None)
        settings = Settings(_env_file=None, database_url=db_url(name))  # type: ignore[call-arg]
        await asyncio.to_thread(migrate.upgrade, settings)  # Alembic runs its own event loop
    else:
        span = await stage_ready(previous)
        assert span is not None, previous
        start, end = span
        await create_database(name, previous)
    print(f"stage {index + 1}: loading {name} up to {target:,} observations", flush=True)
    await load_stage(name, index, target, start, end)
    return start, end


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="1000000,10000000", help="observation counts to measure at")
    parser.add_argument("--concurrency", default="1,16", help="concurrent clients (a list measures each)")
    parser.add_argument("--requests", type=int, default=1000, help="measured requests per query kind")
    parser.add_argument(
        "--warmup", type=int, default=200, help="requests per query kind sent first and not counted (see measure)"
    )
    parser.add_argument(
        "--workers", type=int, default=0, help="server processes (0: the server's default, half the cores)"
    )
    parser.add_argument("--db", default=DEFAULT_DB, help="prefix of the stage databases (env TERRITOIRE_BENCH_DB)")
    parser.add_argument("--reuse", action="store_true", help="measure on complete stage databases without loading")
    parser.add_argument("--drop", action="store_true", help="drop the stage databases at the end")
    parser.add_argument("--keep", action="store_true", help="kept by default now (without --drop); accepted still")
    parser.add_argument(
        "--client", choices=("raw", "httpx"), default="raw", help="HTTP client of the bench (see RawClient)"
    )
    parser.add_argument("--port", type=int, default=0, help="server port (default: 18000 + pid % 1000)")
    parser.add_argument(
        "--accept-encoding",
        default="gzip, deflate, br, zstd",
        help="what the raw client accepts (default as browsers and urllib3/httpx with zstandard; 'br' as before)",
    )
    parser.add_argument("--only", default="", help="measure only the queries whose name contains this text")
    args = parser.parse_args()
    began = time.perf_counter()
    stages = [int(s) for s in args.stages.split(",")]
    concurrencies = [int(c) for c in args.concurrency.split(",")]
    names = [f"{args.db}_{target}" for target in stages]
    results: dict[tuple[int, int], dict[str, tuple[float, float, float]]] = {}
    counts: list[int] = []
    port = args.port or 18000 + os.getpid() % 1000
    try:
        for index, (target, name) in enumerate(zip(stages, names, strict=True)):
            start, _ = await prepare_stage(name, index, target, names[index - 1] if index else None, args.reuse)
            conn = await asyncpg.connect(db_url(name))
            has_count = await conn.fetchval(
                "SELECT 1 FROM information_schema.columns WHERE table_name = 'bench_meta' AND column_name = 'observations'"
            )
            if has_count:
                count = int(await conn.fetchval("SELECT observations FROM bench_meta"))
            else:  # kept by an earlier version of this script
                count = int(await conn.fetchval("SELECT count(*) FROM observation"))
            await conn.close()
            counts.append(count)
            server = start_server(name, port, args.workers)
            try:
                for clients in concurrencies:
                    load = os.getloadavg()
                    print(
                        f"  {count:,} observations, {clients} client(s); load average {load[0]:.1f} {load[1]:.1f} "
                        f"{load[2]:.1f} on {os.cpu_count()} cores",
                        flush=True,
                    )
                    rng = random.Random(42)
                    results[(count, clients)] = {}
                    meter = CpuMeter(server.pid, name)
                    for qname, make in queries(start, rng).items():
                        if args.only and args.only not in qname:
                            continue
                        base = f"http://127.0.0.1:{port}/sta/v1.1"
                        lat, server_ms, db_ms, client_ms, cold = await measure(
                            base, make, args.requests, clients, meter, args.client, args.warmup, args.accept_encoding
                        )
                        results[(count, clients)][qname] = (statistics.median(lat), pct(lat, 95), pct(lat, 99))
                        p50, p95, p99 = results[(count, clients)][qname]
                        print(
                            f"    {qname:<53} p50 {p50:7.1f} ms  p95 {p95:7.1f} ms  p99 {p99:7.1f} ms   CPU per "
                            f"request: server {server_ms:5.1f} ms, database {db_ms:5.1f} ms, bench client "
                            f"{client_ms:4.1f} ms" + (f"; warm-up p99 {pct(cold, 99):7.1f} ms" if cold else ""),
                            flush=True,
                        )
            finally:
                server.terminate()
                server.wait(30)
    finally:
        if args.drop:
            for name in names:
                await drop_database(name)
    print(
        f"\n{args.requests} requests per query after {args.warmup} not counted, "
        f"{args.workers or default_workers()} server worker(s), {os.cpu_count()} CPU cores "
        f"(bench client `{args.client}` on the same machine); run time {time.perf_counter() - began:.0f} s"
    )
    for clients in concurrencies:
        print(f"\n{clients} concurrent client(s)")
        header = "".join(f"{c:>14,}" for c in counts)
        print(f"{'query (target)':<72}{header}   ratio   verdict")
        for qname, (which, limit) in TARGETS.items():
            if any(qname not in results[(c, clients)] for c in counts):
                continue
            index = {"p50": 0, "p95": 1, "p99": 2}[which]
            values = [results[(c, clients)][qname][index] for c in counts]
            ratio = values[-1] / values[0] if values[0] else float("nan")
            label = f"{qname} {which}" + (f" <= {limit:.0f} ms" if limit else "")
            verdict = "" if limit is None or clients != 16 else ("ok" if max(values) <= limit else "MISSED")
            print(f"{label:<72}" + "".join(f"{v:11.1f} ms" for v in values) + f"   {ratio:5.2f}   {verdict}")


if __name__ == "__main__":
    asyncio.run(main())
