"""What one batch merge into `observation` costs the database, part by part (CPU time of the server backend).

Run:  .venv/bin/python bench/observation_merge.py [--batches 40] [--rows 5000] [--database td_bench_merge_NAME]

Writes batches like the MQTT worker's (COPY into staging, one INSERT ... SELECT ... ON CONFLICT DO NOTHING) into a
fresh migrated database, and reports the server backend's CPU microseconds per row (read from /proc, so much less
noisy than wall-clock on a shared machine) for variants that switch off one part at a time: the phenomenon_time
index (0005; the variants after it run without it), the SensorThings statement triggers, the foreign key to
datastream. Needs the database on this machine (it reads /proc/<pid>).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from territoire_data.db import migrate as migrations  # noqa: E402
from territoire_data.ingest.store import ObservationStore, merge_observations  # noqa: E402
from territoire_data.settings import Settings  # noqa: E402

DATASTREAMS = 400
TICKS = os.sysconf("SC_CLK_TCK")


def backend_cpu(pid: int) -> float:
    """User + system CPU seconds of a server process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def setup(conn: asyncpg.Connection) -> list[int]:
    await conn.execute(
        "INSERT INTO thing (name, external_key) SELECT 't' || i, 'bench:t' || i FROM generate_series(1, $1) i",
        DATASTREAMS,
    )
    await conn.execute("INSERT INTO sensor (name, external_key) VALUES ('s', 'bench:s')")
    await conn.execute("INSERT INTO observed_property (name, external_key) VALUES ('p', 'bench:p')")
    await conn.execute(
        "INSERT INTO datastream (name, thing_id, sensor_id, observed_property_id, external_key) "
        "SELECT 'd' || t.id, t.id, (SELECT id FROM sensor), (SELECT id FROM observed_property), 'bench:d' || t.id "
        "FROM thing t"
    )
    return [r["id"] for r in await conn.fetch("SELECT id FROM datastream ORDER BY id")]


def batch(ids: list[int], start: int, rows: int, t0: datetime) -> list[tuple[object, ...]]:
    out = []
    for n in range(start, start + rows):
        out.append(
            (
                ids[n % len(ids)],
                t0 + timedelta(seconds=n // len(ids)),
                20.0 + n % 70 / 10,
                None,
                None,
                None,
                f'{{"fCnt": {n}, "deduplicationId": "d1e2c3b4-0000-0000-0000-{n:012d}"}}',
                None,  # feature_of_interest_id
            )
        )
    return out


async def run_variant(dsn: str, ids: list[int], label: str, prepare: str, batches: int, rows: int) -> None:
    admin = await asyncpg.connect(dsn)
    await admin.execute("TRUNCATE observation, observation_rollup_15min")
    await admin.execute("UPDATE datastream SET phenomenon_time_start = NULL, phenomenon_time_end = NULL")
    for statement in filter(None, prepare.split(";")):
        await admin.execute(statement)  # one at a time: VACUUM may not run in a multi-statement block
    await admin.execute("VACUUM ANALYZE observation")
    store = ObservationStore(dsn, source="bench")
    conn = await store.connect()
    pid = await conn.fetchval("SELECT pg_backend_pid()")
    t0 = datetime(2026, 11, 1, tzinfo=UTC)
    # one warm-up batch (plans, caches), not counted
    await write(store, batch(ids, 0, rows, t0))
    cpu, wall = backend_cpu(pid), time.perf_counter()
    for b in range(1, batches + 1):
        await write(store, batch(ids, b * rows, rows, t0))
    cpu, wall = backend_cpu(pid) - cpu, time.perf_counter() - wall
    # redelivery: the same rows again (all duplicates)
    dup_cpu = backend_cpu(pid)
    for b in range(1, min(batches, 10) + 1):
        await write(store, batch(ids, b * rows, rows, t0))
    dup_cpu = backend_cpu(pid) - dup_cpu
    count = await conn.fetchval("SELECT count(*) FROM observation")
    await store.close()
    total = batches * rows
    print(
        f"  {label:<44} {cpu / total * 1e6:6.1f} µs CPU/row  {wall / total * 1e6:6.1f} µs wall/row"
        f"  duplicates {dup_cpu / (min(batches, 10) * rows) * 1e6:5.1f} µs/row  ({count:,} rows)"
    )
    await admin.close()


async def write(store: ObservationStore, records: list[tuple[object, ...]]) -> None:
    conn = await store.connect()
    async with conn.transaction():
        await merge_observations(conn, records)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--rows", type=int, default=5000)
    parser.add_argument("--database", default=f"td_bench_merge_{os.getpid()}")
    parser.add_argument("--admin-url", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--keep", action="store_true", help="keep the database")
    parser.add_argument("--only", nargs="*", help="run only variants whose label contains one of these")
    args = parser.parse_args()
    admin = await asyncpg.connect(args.admin_url)
    await admin.execute(f'DROP DATABASE IF EXISTS "{args.database}"')
    await admin.execute(f'CREATE DATABASE "{args.database}"')
    dsn = args.admin_url.rsplit("/", 1)[0] + f"/{args.database}"
    try:
        await asyncio.to_thread(migrations.upgrade, Settings(_env_file=None, database_url=dsn))  # type: ignore[call-arg]
        conn = await asyncpg.connect(dsn)
        ids = await setup(conn)
        await conn.execute("SELECT ensure_observation_partitions('2026-11-01', '2026-12-31')")
        await conn.close()
        check = "observation_datastream_inserted"
        fk = (
            "ALTER TABLE observation ADD CONSTRAINT observation_datastream_fk FOREIGN KEY (datastream_id) "
            "REFERENCES datastream(id) ON DELETE CASCADE"
        )
        before = (
            f"ALTER TABLE observation ENABLE TRIGGER USER; {fk}; ALTER TABLE observation DISABLE TRIGGER {check};"
            "ALTER TABLE datastream RESET (fillfactor); ALTER TABLE observation_rollup_15min RESET (fillfactor);"
            "VACUUM FULL datastream; VACUUM FULL observation_rollup_15min"
        )
        variants = [
            ("as migrated (0005: phenomenon_time index)", ""),
            ("before 0005 (no phenomenon_time index)", "DROP INDEX observation_phenomenon_time_idx"),
            ("statement check, no STA triggers", "ALTER TABLE observation DISABLE TRIGGER observation_sta_inserted"),
            ("no check, no STA triggers", f"ALTER TABLE observation DISABLE TRIGGER {check}"),
            ("before 0003 (foreign key, fillfactor 100)", before),
            ("before 0003, no STA triggers", "ALTER TABLE observation DISABLE TRIGGER observation_sta_inserted"),
        ]
        print(f"observation merge, {args.batches} batches of {args.rows:,} rows, {DATASTREAMS} datastreams")
        print(f"  load average {os.getloadavg()[0]:.2f}")
        for label, prepare in variants:
            if args.only and not any(word in label for word in args.only):
                continue
            await run_variant(dsn, ids, label, prepare, args.batches, args.rows)
    finally:
        if not args.keep:
            await admin.execute(f'DROP DATABASE IF EXISTS "{args.database}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
