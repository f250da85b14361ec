"""NGSI-LD read latency against our own SensorThings door on the same data, as ratios measured in the same run.

No NGSI-LD peer runs here (Stellio needs Kafka and TimescaleDB, Orion-LD MongoDB; neither is packaged for this
machine), so the comparison is with the same measurements read through `/sta/v1.1`, the door they are
projected from, and with the issue's targets (retrieve an entity with its latest attributes p99 <= 20 ms, a
temporal query of one attribute over one day, 1,440 instances, p99 <= 60 ms, with 16 clients) and the published
peer figure (Stellio: temporal aggregation on 100 k instances, p95 321 ms on 8 vCPU).

It reuses `bench/sta_queries.py`'s databases and loader (200 Things of 5 Datastreams, a year of Observations, the
first Datastream per-minute), its server start, its low-overhead HTTP client and its CPU meter. Run:

    .venv/bin/python bench/ngsi_ld.py [--stages 1000000,10000000] [--concurrency 1,16] [--requests 500] [--reuse]

Thing 1 is `urn:ngsi-ld:Thing:1`; its per-minute Datastream is its attribute `property_1` (the bench's
ObservedProperties have no connector key: their name makes the attribute).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta
from pathlib import Path

import asyncpg

sys.path.insert(0, str(Path(__file__).resolve().parent))

import sta_queries as sta

PAIRS = {  # name: (NGSI-LD request maker, SensorThings request maker, target percentile, limit ms)
    "entity with its latest attributes": "p99 20",
    "one attribute over one day (1,440 instances)": "p99 60",
    "daily aggregates of a year (525,600 instances)": "p95 321",
}


def makers(start: datetime, rng: random.Random) -> dict[str, tuple[object, object]]:
    def day() -> datetime:
        return (start + timedelta(days=rng.randrange(2, 360))).replace(hour=0, minute=0, second=0, microsecond=0)

    def iso(t: datetime) -> str:
        return t.strftime("%Y-%m-%dT%H:%M:%SZ")

    def entity() -> tuple[str, dict[str, str]]:
        return f"/ngsi-ld/v1/entities/urn:ngsi-ld:Thing:{rng.randint(1, 200)}", {}

    def entity_sta() -> tuple[str, dict[str, str]]:
        return f"/sta/v1.1/Things({rng.randint(1, 200)})", {
            "$expand": "Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))"
        }

    def temporal_day() -> tuple[str, dict[str, str]]:
        d = day()
        return "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Thing:1", {
            "attrs": "property_1",
            "timerel": "between",
            "timeAt": iso(d),
            "endTimeAt": iso(d + timedelta(days=1)),
        }

    def sta_day() -> tuple[str, dict[str, str]]:
        d = day()
        return "/sta/v1.1/Datastreams(1)/Observations", {
            "$filter": f"phenomenonTime ge {iso(d)} and phenomenonTime lt {iso(d + timedelta(days=1))}",
            "$top": "1440",
        }

    def aggregate() -> tuple[str, dict[str, str]]:
        first = (start + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
        return "/ngsi-ld/v1/temporal/entities/urn:ngsi-ld:Thing:1", {
            "attrs": "property_1",
            "options": "aggregatedValues",
            "aggrMethods": "min,max,avg,totalCount",
            "aggrPeriodDuration": "P1D",
            "timerel": "between",
            "timeAt": iso(first),
            "endTimeAt": iso(first + timedelta(days=363)),
        }

    def aggregate_sta() -> tuple[str, dict[str, str]]:
        return "/sta/v1.1/Datastreams(1)/Aggregates", {
            "interval": "day",
            "aggregate": "min,max,avg,count",
            "$top": "400",
        }

    return dict(zip(PAIRS, ((entity, entity_sta), (temporal_day, sta_day), (aggregate, aggregate_sta)), strict=True))


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stages", default="1000000", help="observation counts (10000000 adds a long load)")
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--workers", type=int, default=0)
    parser.add_argument("--db", default=sta.DEFAULT_DB, help="prefix of the stage databases (shared with sta_queries)")
    parser.add_argument("--reuse", action="store_true")
    parser.add_argument("--port", type=int, default=0)
    args = parser.parse_args()
    began = time.perf_counter()
    stages = [int(s) for s in args.stages.split(",")]
    names = [f"{args.db}_{target}" for target in stages]
    port = args.port or 18000 + os.getpid() % 1000
    rows: list[str] = []
    for index, (target, name) in enumerate(zip(stages, names, strict=True)):
        start, _ = await sta.prepare_stage(name, index, target, names[index - 1] if index else None, args.reuse)
        conn = await asyncpg.connect(sta.db_url(name))
        count = int(await conn.fetchval("SELECT count(*) FROM observation"))
        await conn.close()
        server = sta.start_server(name, port, args.workers)
        try:
            for clients in (int(c) for c in args.concurrency.split(",")):
                load = os.getloadavg()
                print(
                    f"{count:,} observations, {clients} client(s); load average {load[0]:.1f} on {os.cpu_count()} cores"
                )
                meter = sta.CpuMeter(server.pid, name)
                for qname, (ngsi, sensorthings) in makers(start, random.Random(42)).items():
                    measured = []
                    for make in (ngsi, sensorthings):
                        lat, server_ms, db_ms, _, _ = await sta.measure(
                            f"http://127.0.0.1:{port}", make, args.requests, clients, meter, "raw", args.warmup
                        )
                        measured.append((statistics.median(lat), sta.pct(lat, 95), sta.pct(lat, 99), server_ms, db_ms))
                    which, limit = PAIRS[qname].split()
                    index_p = {"p95": 1, "p99": 2}[which]
                    ours, theirs = measured
                    ratio = ours[index_p] / theirs[index_p] if theirs[index_p] else float("nan")
                    cpu_ratio = (ours[3] + ours[4]) / max(theirs[3] + theirs[4], 1e-9)
                    verdict = "" if clients != 16 else ("ok" if ours[index_p] <= float(limit) else "MISSED")
                    line = (
                        f"  {qname:<48} NGSI-LD p50 {ours[0]:6.1f} p95 {ours[1]:6.1f} p99 {ours[2]:6.1f} ms "
                        f"(CPU {ours[3]:.1f}+{ours[4]:.1f} ms) | SensorThings p50 {theirs[0]:6.1f} p95 {theirs[1]:6.1f} "
                        f"p99 {theirs[2]:6.1f} ms (CPU {theirs[3]:.1f}+{theirs[4]:.1f} ms) | {which} ratio {ratio:4.2f}, "
                        f"CPU ratio {cpu_ratio:4.2f}; target {which} <= {limit} ms {verdict}"
                    )
                    print(line, flush=True)
                    rows.append(f"{count:,} obs, {clients} clients: {line.strip()}")
        finally:
            server.terminate()
            server.wait(30)
    print(
        f"\nrun time {time.perf_counter() - began:.0f} s; server workers {args.workers or 'default'}; CPU = server + database per request"
    )


if __name__ == "__main__":
    asyncio.run(main())
