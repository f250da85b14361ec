"""OGC API - Features items per kind of caller: does the collection cache's fast path serve keyed callers too, and
does the anonymous one stay as it was? In process: how many requests took the long way (a collection lookup
before the items query, one more round trip) and the latency, with the fast path on and off in the same run.

    .venv/bin/python bench/features_principals.py [--rows 10000] [--requests 300] [--suffix NAME]

A throw-away database `td_bench_<suffix>_*` on TERRITOIRE_BENCH_ADMIN_URL (default the local postgres). The
share of long-way requests does not depend on the machine's load; the latencies do (compare within a run).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from features_api import admin, load_points, url_for

from territoire_data.api.app import create_app
from territoire_data.auth.keys import create_key
from territoire_data.db import migrate
from territoire_data.db.engine import create_engine
from territoire_data.features import routes
from territoire_data.sensorthings.routes import close_pool
from territoire_data.settings import Settings

LOOKUPS = [0]
_get_collection = routes.get_collection


async def counted_get_collection(*args: Any, **kwargs: Any) -> Any:
    LOOKUPS[0] += 1
    return await _get_collection(*args, **kwargs)


routes.get_collection = counted_get_collection  # type: ignore[assignment]
_recall = routes.recall


def no_recall(collection_id: str) -> Any:
    return None


async def run(rows: int, requests: int, suffix: str) -> None:
    database = f"td_bench_{suffix}_{uuid.uuid4().hex[:6]}"
    await admin(f"CREATE DATABASE {database}")
    url = url_for(database)
    try:
        settings = Settings(database_url=url, rate_limit_per_minute=0)  # type: ignore[call-arg]
        await asyncio.to_thread(migrate.upgrade, settings)
        await load_points(url, "ouvert", rows)
        await load_points(url, "ferme", rows)
        conn = await asyncpg.connect(url)
        await conn.execute("UPDATE dataset SET access = 'restricted' WHERE slug = 'ferme'")
        await conn.close()
        engine = create_engine(settings, pool_size=5)
        async with engine.begin() as sa:
            reader = (await create_key(sa, name="bench reader", role="reader", grants=[("ferme", "read")])).key
            admin_key = (await create_key(sa, name="bench admin", role="admin")).key
        callers = {
            "anonymous, public dataset": ("ouvert", {}),
            "granted reader, public dataset": ("ouvert", {"X-API-Key": reader}),
            "granted reader, restricted dataset": ("ferme", {"X-API-Key": reader}),
            "admin, restricted dataset": ("ferme", {"Authorization": f"Bearer {admin_key}"}),
            "anonymous, restricted dataset (404)": ("ferme", {}),
        }
        app = create_app(settings, engine=engine)
        print(f"{rows} rows per dataset, {requests} sequential GET .../items?limit=10 per caller, in process")
        print(f"{'caller':38} {'fast path':>10} {'long way':>9} {'p50 ms':>8} {'p50 ms, no cache':>17} {'ratio':>6}")
        try:
            async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://bench") as http:
                for name, (slug, headers) in callers.items():
                    path = f"/ogcapi/collections/{slug}/items?limit=10"
                    medians = []
                    for recall in (_recall, no_recall):  # interleaved in one run: the same load for both
                        routes.recall = recall  # type: ignore[assignment]
                        for _ in range(20):  # warm: pools, the collection cache, plans
                            await http.get(path, headers=headers)
                        LOOKUPS[0] = 0
                        times = []
                        for _ in range(requests):
                            start = time.perf_counter()
                            response = await http.get(path, headers=headers)
                            times.append((time.perf_counter() - start) * 1000)
                            assert response.status_code in (200, 404)
                        medians.append(statistics.median(times))
                        if recall is _recall:
                            long_way = LOOKUPS[0] / requests
                    print(
                        f"{name:38} {1 - long_way:10.0%} {long_way:9.0%} {medians[0]:8.2f} {medians[1]:17.2f} "
                        f"{medians[1] / medians[0]:6.2f}"
                    )
                    routes.recall = _recall  # type: ignore[assignment]
        finally:
            await close_pool(app)
            await engine.dispose()
    finally:
        await admin(f"DROP DATABASE IF EXISTS {database} WITH (FORCE)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=10_000)
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--suffix", default="acl", help="database name suffix, so two benches never share one")
    args = parser.parse_args()
    asyncio.run(run(args.rows, args.requests, args.suffix))


if __name__ == "__main__":
    main()
