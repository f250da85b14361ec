"""Reads with a hot standby against the primary alone: OGC API items and SensorThings reads, on a Patroni cluster.

Run:  .venv/bin/python bench/read_replicas.py [--seconds 20] [--clients 8] [--workers 1]

Starts the failover drills' cluster (tests/drills/cluster.py: two PostgreSQL nodes, etcd, on loopback ports,
synchronous replication), loads the demo territory, then measures the same read mix twice with the same API
server settings: (A) TERRITOIRE_DATABASE_READ_URL unset, every read on the primary; (B) set to the cluster, so
anonymous reads go to the standby. For each: requests per second, the CPU seconds each PostgreSQL node and the API
spent (read from /proc), the transactions each node ran (pg_stat_database), and the API's own count of reads by
target. On one 2-core machine both nodes and the API share the same cores, so the gain in req/s is bounded:
the split of database work between the nodes is the figure that carries over to separate machines.
Unattended; about 2 minutes. Needs patroni and etcd (apt: patroni etcd-server) and root or the postgres user.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import asyncpg
import httpx

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "src"), str(ROOT)]

from tests.conftest import LiveServer, make_settings  # noqa: E402
from tests.drills.cluster import Node, PatroniCluster, port_source  # noqa: E402

from territoire_data.db import migrate as migrations  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
QUERIES = [
    "/ogcapi/collections/sanisettes-paris/items?limit=50",
    "/ogcapi/collections/bornes-recharge-irve/items?limit=20&bbox=-5,41,10,51",
    "/sta/v1.1/Datastreams?$top=20",
    "/sta/v1.1/Observations?$top=50&$orderby=phenomenonTime%20desc",
    "/sta/v1.1/Things?$expand=Datastreams&$top=10",
]


def tree_cpu(root: int) -> float:
    """CPU seconds of a process and its children (a postmaster and its backends)."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(entry.name) == root or int(fields[1]) == root:
            total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def xacts(cluster: PatroniCluster, node: Node) -> int:
    async def get() -> int:
        conn = await asyncpg.connect(cluster.superuser_url(node))
        try:
            sql = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'territoire'"
            return int(await conn.fetchval(sql))
        finally:
            await conn.close()

    return asyncio.run(get())


def load(base: str, clients: int, seconds: float) -> tuple[int, int]:
    """`clients` threads sending the mix for `seconds`; (answered 200, other answers)."""
    stop = time.monotonic() + seconds
    counts = [0, 0]
    lock = threading.Lock()

    def client(offset: int) -> None:
        ok = bad = 0
        with httpx.Client(base_url=base, timeout=60) as http:
            turn = offset
            while time.monotonic() < stop:
                status = http.get(QUERIES[turn % len(QUERIES)]).status_code
                ok, bad = (ok + 1, bad) if status == 200 else (ok, bad + 1)
                turn += 1
        with lock:
            counts[0] += ok
            counts[1] += bad

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return counts[0], counts[1]


def routed(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    return {
        f"{target}/{reason}": float(value)
        for reason, target, value in re.findall(
            r'^territoire_db_reads_total\{reason="([a-z_]+)",target="([a-z]+)"\} (\S+)$', text, re.M
        )
    }


def phase(cluster: PatroniCluster, label: str, env: dict[str, str], args: argparse.Namespace) -> dict[str, float]:
    settings = make_settings(cluster.url())
    server = LiveServer(settings, env={"TERRITOIRE_RATE_LIMIT_PER_MINUTE": "0", **env}, workers=args.workers)
    server.port = next(port_source())
    server.url = f"http://127.0.0.1:{server.port}"
    server.env["TERRITOIRE_BASE_URL"] = server.url
    server.start()
    try:
        load(server.url, args.clients, 3)  # warm-up: plans, caches, the pools' connections
        time.sleep(11)  # backends flush their statistics when idle for 10 s (PostgreSQL 15)
        primary = cluster.primary()
        assert primary is not None
        nodes = {node.name: node for node in cluster.nodes}
        pids = {name: node.postmaster_pid() for name, node in nodes.items()}
        assert server.process is not None
        cpu0 = {name: tree_cpu(pid) for name, pid in pids.items()} | {"api": tree_cpu(server.process.pid)}
        x0 = {name: xacts(cluster, node) for name, node in nodes.items()}
        r0 = routed(server.url)
        began = time.monotonic()
        ok, bad = load(server.url, args.clients, args.seconds)
        wall = time.monotonic() - began
        cpu1 = {name: tree_cpu(pid) for name, pid in pids.items()} | {"api": tree_cpu(server.process.pid)}
        r1 = routed(server.url)
        time.sleep(11)
        x1 = {name: xacts(cluster, node) for name, node in nodes.items()}
    finally:
        server.stop()
    cpu = {name: cpu1[name] - cpu0[name] for name in cpu1}
    moved = {name: x1[name] - x0[name] for name in x1}
    reads = {key: r1.get(key, 0) - r0.get(key, 0) for key in r1}
    role = {name: ("primary" if node is primary else "standby") for name, node in nodes.items()}
    db_cpu = sum(cpu[name] for name in nodes)
    print(f"{label}: {ok / wall:,.0f} req/s ({ok:,} answered 200, {bad} other) with {args.clients} clients")
    for name in nodes:
        print(
            f"    {role[name]:<8} {name}: {cpu[name]:5.1f} s CPU ({cpu[name] / db_cpu:4.0%} of the database's), "
            f"{moved[name]:,} transactions"
        )
    print(f"    API server: {cpu['api']:5.1f} s CPU ({cpu['api'] / ok * 1e3:.2f} ms per request)")
    print(f"    database:   {db_cpu / ok * 1e3:.2f} ms CPU per request; reads routed: {reads or 'no counter'}")
    standby = next(name for name in nodes if role[name] == "standby")
    return {"rps": ok / wall, "standby_share": cpu[standby] / db_cpu, "db_ms": db_cpu / ok * 1e3}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--workers", type=int, default=1, help="API worker processes")
    args = parser.parse_args()
    cluster = PatroniCluster(synchronous=True)
    try:
        cluster.start()
        migrations.upgrade(make_settings(cluster.url()))
        env = {**os.environ, "TERRITOIRE_DATABASE_URL": cluster.url()}
        subprocess.run([sys.executable, "-m", "territoire_data.cli", "demo"], env=env, check=True, capture_output=True)
        print(f"read replicas bench: 2 PostgreSQL nodes + API on {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}")
        alone = phase(cluster, "(A) primary alone", {}, args)
        replica = phase(
            cluster,
            "(B) primary + standby for reads",
            {"TERRITOIRE_DATABASE_READ_URL": cluster.url(), "TERRITOIRE_READ_MAX_LAG_MS": "5000"},
            args,
        )
        print(
            f"ratios: req/s B/A = {replica['rps'] / alone['rps']:.2f}; standby's share of database CPU "
            f"A {alone['standby_share']:.0%} -> B {replica['standby_share']:.0%}; load now {os.getloadavg()[0]:.2f}"
        )
    finally:
        cluster.stop()


if __name__ == "__main__":
    main()
