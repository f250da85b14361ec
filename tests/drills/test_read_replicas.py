"""Read replicas on a real Patroni cluster: anonymous reads go to the hot standby, keyed reads to the primary
(read-your-writes), a standby lagging past TERRITOIRE_READ_MAX_LAG_MS is left aside and /metrics says so, and
restricted datasets stay hidden on the standby.

The lag is made real: the standby's startup process (which applies WAL) is stopped (SIGSTOP) while it keeps
receiving WAL and the primary takes writes.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from territoire_data.db import migrate as migrations
from tests.conftest import TEST_ADMIN_AUTH, LiveServer, make_settings
from tests.drills.cluster import Node, PatroniCluster, add_admin_key, missing_tools, port_source, report

pytestmark = [
    pytest.mark.drill,
    pytest.mark.timeout(600),
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} (apt: patroni etcd-server)"),
]

MAX_LAG_MS = 1000
PUBLIC, SECRET = "capteurs-publics", "registre-confidentiel"
READS = [
    "/sta/v1.1/Things?$expand=Datastreams",
    "/sta/v1.1/Datastreams",
    "/api/v1/datasets",
    f"/api/v1/datasets/{PUBLIC}",
    "/ogcapi/collections",
    "/",
]


@dataclass
class Replicated:
    cluster: PatroniCluster
    server: LiveServer

    @property
    def url(self) -> str:
        return self.server.url

    def standby(self) -> Node:
        primary = self.cluster.primary()
        return next(node for node in self.cluster.nodes if node is not primary)


def _metrics(base: str) -> dict[str, float]:
    text = httpx.get(f"{base}/metrics", timeout=10).text
    found: dict[str, float] = {}
    for name, labels, value in re.findall(r"^(territoire_db_read[a-z_]*)(\{[^}]*\})? (\S+)$", text, re.M):
        found[name + (labels or "")] = float(value)
    return found


def _reads(metrics: dict[str, float], target: str, reason: str) -> float:
    return metrics.get(f'territoire_db_reads_total{{reason="{reason}",target="{target}"}}', 0.0)


async def _on(node_url: str, sql: str) -> Any:
    conn = await asyncpg.connect(node_url, timeout=10)
    try:
        return await conn.fetchval(sql)
    finally:
        await conn.close()


def _xacts(cluster: PatroniCluster, node: Node) -> int:
    sql = "SELECT xact_commit + xact_rollback FROM pg_stat_database WHERE datname = 'territoire'"
    return int(asyncio.run(_on(cluster.superuser_url(node), sql)))


def _wait(check: Any, seconds: float, what: str) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def replicated() -> Iterator[Replicated]:
    cluster = PatroniCluster(synchronous=True)
    server: LiveServer | None = None
    try:
        cluster.start()
        migrations.upgrade(make_settings(cluster.url()))
        asyncio.run(add_admin_key(cluster.url()))
        env = {
            "TERRITOIRE_DATABASE_READ_URL": cluster.url(),
            "TERRITOIRE_READ_MAX_LAG_MS": str(MAX_LAG_MS),
            "TERRITOIRE_RATE_LIMIT_PER_MINUTE": "0",
        }
        server = LiveServer(make_settings(cluster.url()), env=env)
        server.port = next(port_source())
        server.url = f"http://127.0.0.1:{server.port}"
        server.env["TERRITOIRE_BASE_URL"] = server.url
        server.start()
        with httpx.Client(base_url=server.url, headers=TEST_ADMIN_AUTH, timeout=30) as http:
            for slug, access in ((PUBLIC, "public"), (SECRET, "restricted")):
                answer = http.post(
                    "/api/v1/datasets", json={"slug": slug, "title": slug, "kind": "sensors", "access": access}
                )
                assert answer.status_code == 201, answer.text
            # New datasets are drafts (hidden from the public): these two are published, as a publisher would.
            primary = cluster.primary()
            assert primary is not None
            asyncio.run(
                _on(
                    cluster.superuser_url(primary, "territoire"),
                    f"UPDATE dataset SET status = 'published', published_at = now() "
                    f"WHERE slug IN ('{PUBLIC}', '{SECRET}') RETURNING 1",
                )
            )
            answer = http.post(
                "/sta/v1.1/Things",
                json={"name": "Station Commerce", "description": "d", "@territoire.dataset": PUBLIC},
            )
            assert answer.status_code == 201, answer.text
        replicated = Replicated(cluster, server)
        _wait(lambda: _metrics(server.url).get("territoire_db_read_replica_in_use") == 1.0, 30, "replica in use")
        yield replicated
    finally:
        if server is not None:
            server.stop()
        cluster.stop()


def test_anonymous_reads_go_to_the_standby(replicated: Replicated) -> None:
    cluster, standby = replicated.cluster, replicated.standby()
    primary = cluster.primary()
    assert primary is not None and standby is not primary
    before, xacts = _metrics(replicated.url), {node.name: _xacts(cluster, node) for node in cluster.nodes}
    with httpx.Client(base_url=replicated.url, timeout=30) as http:
        for turn in range(300):
            path = READS[turn % len(READS)]
            assert http.get(path).status_code == 200, path
    after = _metrics(replicated.url)
    time.sleep(11)  # backends flush their statistics when idle for 10 s (PostgreSQL 15)
    on_replica = _reads(after, "replica", "replica") - _reads(before, "replica", "replica")
    total = sum(value for key, value in after.items() if key.startswith("territoire_db_reads_total")) - sum(
        value for key, value in before.items() if key.startswith("territoire_db_reads_total")
    )
    moved = {node.name: _xacts(cluster, node) - xacts[node.name] for node in cluster.nodes}
    share = on_replica / total
    report(
        "read replica (anonymous reads)",
        {
            "requests": 300,
            "reads_routed": total,
            "replica_share": round(share, 3),
            "transactions_on_standby": moved[standby.name],
            "transactions_on_primary": moved[primary.name],
        },
    )
    assert share >= 0.95, (on_replica, total)
    # the standby did the work: the primary's transactions are those of our own counting and of Patroni
    assert moved[standby.name] > moved[primary.name], moved


def test_a_publisher_reads_back_what_it_just_wrote(replicated: Replicated) -> None:
    # The standby receives WAL but applies none of it meanwhile.
    frozen = replicated.cluster.replay_frozen(replicated.standby())
    with frozen, httpx.Client(base_url=replicated.url, timeout=30) as http:
        before = _metrics(replicated.url)
        created = http.post(
            "/sta/v1.1/Things",
            json={"name": "écrit puis relu", "description": "d", "@territoire.dataset": PUBLIC},
            headers=TEST_ADMIN_AUTH,
        )
        assert created.status_code == 201, created.text
        # at once, with the same key: from the primary, so it is there although the standby has not applied it
        read = http.get(created.headers["location"], headers=TEST_ADMIN_AUTH)
        assert read.status_code == 200, read.text
        assert read.json()["name"] == "écrit puis relu"
        after = _metrics(replicated.url)
        assert _reads(after, "primary", "keyed") > _reads(before, "primary", "keyed")


def test_a_lagging_standby_is_left_aside_and_metrics_say_so(replicated: Replicated) -> None:
    frozen = replicated.cluster.replay_frozen(replicated.standby())
    with frozen, httpx.Client(base_url=replicated.url, timeout=30) as http:
        created = http.post(
            "/sta/v1.1/Things",
            json={"name": "pendant le retard", "description": "d", "@territoire.dataset": PUBLIC},
            headers=TEST_ADMIN_AUTH,
        )
        assert created.status_code == 201
        _wait(
            lambda: _metrics(replicated.url).get("territoire_db_read_replica_in_use") == 0.0,
            MAX_LAG_MS / 1000 + 10,
            "the standby left aside",
        )
        metrics = _metrics(replicated.url)
        assert metrics["territoire_db_read_replica_lag_seconds"] > MAX_LAG_MS / 1000
        before = _reads(metrics, "primary", "lag")
        # anonymous reads now come from the primary: the new Thing is there although not applied on the standby
        read = http.get(created.headers["location"])
        assert read.status_code == 200, read.text
        assert _reads(_metrics(replicated.url), "primary", "lag") > before
    _wait(
        lambda: _metrics(replicated.url).get("territoire_db_read_replica_in_use") == 1.0, 20, "the standby back in use"
    )


def test_restricted_datasets_stay_hidden_on_the_standby(replicated: Replicated) -> None:
    with httpx.Client(base_url=replicated.url, timeout=30) as http:
        before = _reads(_metrics(replicated.url), "replica", "replica")
        assert http.get(f"/api/v1/datasets/{SECRET}").status_code == 404
        assert SECRET not in http.get("/api/v1/datasets").text
        assert _reads(_metrics(replicated.url), "replica", "replica") >= before + 2  # served by the standby
        assert http.get(f"/api/v1/datasets/{SECRET}", headers=TEST_ADMIN_AUTH).status_code == 200
