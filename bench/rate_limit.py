"""Cost of a rate-limit check per request: in one process, shared by the workers (shared memory), or in PostgreSQL.

Usage: python bench/rate_limit.py [--hits 200000] [--identities 1000] [--pg-hits 5000]
The PostgreSQL variant (one UPSERT per hit on an UNLOGGED table, what a database-backed limiter needs at least)
needs TERRITOIRE_BENCH_ADMIN_URL (default postgresql://postgres@127.0.0.1:5432/postgres) and uses a temporary table.
Prints µs per check and the ratio to the in-process counter. Two processes hitting the shared table at once are
timed too (the lock is contended as with two busy workers).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import os
import tempfile
import time
from pathlib import Path

import asyncpg

from territoire_data.api.security import SlidingWindowCounter
from territoire_data.api.sharedlimits import SharedWindowCounter, create_file

ADMIN_URL = os.environ.get("TERRITOIRE_BENCH_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres")


def timed(counter: SlidingWindowCounter | SharedWindowCounter, hits: int, identities: int) -> float:
    names = [f"ip:10.0.{n // 256}.{n % 256}" for n in range(identities)]
    started = time.perf_counter()
    for n in range(hits):
        counter.hit(names[n % identities], 1_000_000)
    return (time.perf_counter() - started) / hits * 1e6


def _contended(path: str, hits: int, identities: int, out: multiprocessing.Queue) -> None:  # type: ignore[type-arg]
    counter = SharedWindowCounter(path)
    out.put(timed(counter, hits, identities))
    counter.close()


async def postgres(hits: int, identities: int) -> float:
    conn = await asyncpg.connect(ADMIN_URL)
    try:
        await conn.execute(
            "CREATE TEMP TABLE rate_hit (identity text, window_index bigint, n int, PRIMARY KEY (identity, window_index))"
        )
        statement = await conn.prepare(
            "INSERT INTO rate_hit VALUES ($1, $2, 1) ON CONFLICT (identity, window_index) "
            "DO UPDATE SET n = rate_hit.n + 1 RETURNING n"
        )
        names = [f"ip:10.0.{n // 256}.{n % 256}" for n in range(identities)]
        started = time.perf_counter()
        for n in range(hits):
            await statement.fetchval(names[n % identities], int(time.time() // 60))
        return (time.perf_counter() - started) / hits * 1e6
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hits", type=int, default=200_000)
    parser.add_argument("--identities", type=int, default=1000)
    parser.add_argument("--pg-hits", type=int, default=5000)
    args = parser.parse_args()
    local = timed(SlidingWindowCounter(), args.hits, args.identities)
    with tempfile.TemporaryDirectory() as tmp:
        path = str(Path(tmp) / "limits")
        create_file(path)
        shared = SharedWindowCounter(path)
        alone = timed(shared, args.hits, args.identities)
        shared.close()
        queue: multiprocessing.Queue[float] = multiprocessing.Queue()
        workers = [
            multiprocessing.Process(target=_contended, args=(path, args.hits // 2, args.identities, queue))
            for _ in range(2)
        ]
        for worker in workers:
            worker.start()
        two = [queue.get() for _ in workers]
        for worker in workers:
            worker.join()
    try:
        database = asyncio.run(postgres(args.pg_hits, args.identities))
    except (OSError, asyncpg.PostgresError) as exc:
        database = float("nan")
        print(f"PostgreSQL variant skipped: {exc}")
    print(f"{'limiter':<44} {'µs/check':>9} {'× in-process':>13}")
    for name, value in (
        ("in process (SlidingWindowCounter)", local),
        ("shared memory, one process", alone),
        ("shared memory, two processes at once (mean)", sum(two) / 2),
        ("PostgreSQL UPSERT, one connection", database),
    ):
        print(f"{name:<44} {value:>9.2f} {value / local:>13.1f}")


if __name__ == "__main__":
    main()
