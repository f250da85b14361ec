"""Failover drills on a real Patroni cluster (two PostgreSQL nodes, one etcd, on loopback ports).

1. The primary's PostgreSQL is SIGKILLed while 30,000 QoS 1 messages arrive at a steady pace and HTTP clients read
   and write: Patroni promotes the synchronous standby, the API and the ingest worker follow the multi-host URL to
   it, and exactly 30,000 observations are stored; the HTTP clients see no error (requests wait for the new
   primary), and SensorThings reads and writes work on it.
2. A planned switchover (`patronictl switchover`) under the same traffic: zero errors seen by any client.

Figures (promotion time, longest time without an answer) are printed, and appended as JSON lines to
$TERRITOIRE_DRILL_REPORT when set. Run with `./scripts/drills` (or `pytest -m drill tests/drills -s`).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml

from territoire_data.db import migrate as migrations
from tests.conftest import TEST_ADMIN_AUTH, LiveServer, MosquittoProcess, make_settings
from tests.drills.cluster import PatroniCluster, add_admin_key, missing_tools, port_source, report
from tests.drills.traffic import HttpProbe, SteadyPublisher
from tests.integration.mqtt_helpers import connector_for

pytestmark = [
    pytest.mark.drill,
    pytest.mark.timeout(900),
    pytest.mark.skipif(bool(missing_tools()), reason=f"needs {', '.join(missing_tools())} (apt: patroni etcd-server)"),
]

MESSAGES = int(os.environ.get("TERRITOIRE_DRILL_MESSAGES", "30000"))
RATE = float(os.environ.get("TERRITOIRE_DRILL_RATE", "500"))  # messages per second, steady


@dataclass
class Platform:
    cluster: PatroniCluster
    broker: MosquittoProcess
    server: LiveServer
    worker: subprocess.Popen[bytes]
    worker_log: Path
    prefix: str
    datastream: int  # a Datastream the HTTP writers post to

    @property
    def url(self) -> str:
        return self.cluster.url()


async def _fetchval(url: str, sql: str, *args: Any) -> Any:
    conn = await asyncpg.connect(url + "?target_session_attrs=read-write", timeout=10)
    try:
        return await conn.fetchval(sql, *args)
    finally:
        await conn.close()


def _stored(url: str, start: datetime, count: int) -> tuple[int, int]:
    """(rows, distinct (datastream, time)) of the MQTT observations in the drill's time window."""
    end = start + timedelta(milliseconds=10 * count)
    rows = asyncio.run(
        _fetchval(
            url,
            "SELECT count(*) || ',' || count(DISTINCT (datastream_id, phenomenon_time)) FROM observation o "
            "JOIN datastream d ON d.id = o.datastream_id JOIN thing t ON t.id = d.thing_id "
            "WHERE o.phenomenon_time >= $1 AND o.phenomenon_time < $2 "
            "AND t.properties->>'source' IS DISTINCT FROM 'http'",
            start,
            end,
        )
    )
    total, distinct = str(rows).split(",")
    return int(total), int(distinct)


def _wait_stored(url: str, start: datetime, count: int, seconds: float = 240) -> tuple[int, int]:
    deadline = time.monotonic() + seconds
    stored = (0, 0)
    while time.monotonic() < deadline:
        try:
            stored = _stored(url, start, count)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError):
            time.sleep(1)
            continue
        if stored[0] >= count:
            return stored
        time.sleep(1)
    return stored


def _start_worker(url: str, mqtt_url: str, connector: Path, log: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "TERRITOIRE_DATABASE_URL": url, "TERRITOIRE_MQTT_URL": mqtt_url}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "territoire_data.cli", "ingest", "mqtt", str(connector)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
        )


@pytest.fixture(scope="module")
def platform(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Platform]:
    cluster = PatroniCluster(synchronous=True)
    ports = port_source()
    broker: MosquittoProcess | None = None
    server: LiveServer | None = None
    worker: subprocess.Popen[bytes] | None = None
    try:
        cluster.start()
        settings = make_settings(cluster.url())
        migrations.upgrade(settings)
        asyncio.run(add_admin_key(cluster.url()))
        broker = MosquittoProcess(next(ports))
        broker.start()
        settings = make_settings(cluster.url(), mqtt_url=broker.url)
        server = LiveServer(settings, env={"TERRITOIRE_RATE_LIMIT_PER_MINUTE": "0"})
        server.port = next(ports)
        server.url = f"http://127.0.0.1:{server.port}"
        server.env["TERRITOIRE_BASE_URL"] = server.url
        server.start()
        prefix = f"drill-{os.getpid()}"
        folder = tmp_path_factory.mktemp("drill")
        connector = folder / "connector.yaml"
        config = connector_for(prefix).model_dump(mode="json", by_alias=True, exclude_none=True)
        config.pop("batch_ms")  # the product's default (200 ms)
        connector.write_text(yaml.safe_dump(config))
        log = folder / "worker.log"
        worker = _start_worker(cluster.url(), broker.url, connector, log)
        deadline = time.monotonic() + 60
        while "subscribed" not in log.read_text():
            assert time.monotonic() < deadline, log.read_text()[-2000:]
            time.sleep(0.2)
        thing = httpx.post(
            f"{server.url}/sta/v1.1/Things",
            headers=TEST_ADMIN_AUTH,
            json={
                "name": "drill HTTP writer",
                "description": "written through the API during the drills",
                "properties": {"source": "http"},
                "Locations": [
                    {
                        "name": "Nantes",
                        "description": "l",
                        "encodingType": "application/geo+json",
                        "location": {"type": "Point", "coordinates": [-1.5536, 47.2184]},
                    }
                ],
                "Datastreams": [
                    {
                        "name": "drill",
                        "description": "d",
                        "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                        "unitOfMeasurement": {"name": "degree Celsius", "symbol": "°C", "definition": "ucum:Cel"},
                        "Sensor": {"name": "s", "description": "s", "encodingType": "text/html", "metadata": "x"},
                        "ObservedProperty": {"name": "t", "definition": "http://example.org/t", "description": "t"},
                    }
                ],
            },
            timeout=30,
        )
        assert thing.status_code == 201, thing.text
        datastreams = httpx.get(f"{thing.headers['location']}/Datastreams", timeout=30).json()["value"]
        yield Platform(cluster, broker, server, worker, log, prefix, int(datastreams[0]["@iot.id"]))
    finally:
        if worker is not None:
            worker.terminate()
            try:
                worker.wait(30)
            except subprocess.TimeoutExpired:
                worker.kill()
        if server is not None:
            server.stop()
        if broker is not None:
            broker.stop()
        cluster.stop()


def _traffic(platform: Platform) -> tuple[HttpProbe, HttpProbe]:
    readers = HttpProbe(
        platform.server.url,
        [
            ("GET", "/sta/v1.1/Observations?$top=5&$orderby=phenomenonTime%20desc", None),
            ("GET", "/sta/v1.1/Things?$expand=Datastreams&$top=5", None),
            ("GET", "/ogcapi/collections", None),
            ("GET", "/api/v1/datasets", None),
        ],
        pause=0.05,
    ).begin()
    counter = iter(range(10**9))
    base = datetime.now(UTC) - timedelta(days=1)

    def observation() -> dict[str, Any]:
        n = next(counter)
        return {
            "result": n,
            "phenomenonTime": (base + timedelta(milliseconds=n)).isoformat(),
            "Datastream": {"@iot.id": platform.datastream},
        }

    writers = HttpProbe(
        platform.server.url, [("POST", "/sta/v1.1/Observations", observation)], headers=TEST_ADMIN_AUTH, pause=0.2
    ).begin()
    return readers, writers


def _worker_retries(platform: Platform) -> int:
    return platform.worker_log.read_text().count("not stored")


def test_killing_the_primary_mid_stream_loses_no_acknowledged_message(platform: Platform) -> None:
    cluster = platform.cluster
    cluster.wait_healthy()
    old = cluster.primary()
    assert old is not None
    retries_before = _worker_retries(platform)
    readers, writers = _traffic(platform)
    publisher = SteadyPublisher(
        platform.broker.url, platform.prefix, MESSAGES, RATE, start=datetime.now(UTC) - timedelta(hours=2)
    ).begin()
    try:
        while publisher.sent < MESSAGES // 3:
            time.sleep(0.05)
        killed_at = time.monotonic()
        cluster.kill_primary_postgres()
        promoted = None
        while time.monotonic() - killed_at < 120:
            new = cluster.primary()
            if new is not None and new is not old:
                promoted = time.monotonic() - killed_at
                break
            time.sleep(0.05)
        assert promoted is not None, cluster.logs()
        sent_at_kill = publisher.sent
        publisher.join(MESSAGES / RATE + 120)
    finally:
        readers.finish()
        writers.finish()
    stored, distinct = _wait_stored(platform.url, publisher.start, MESSAGES)
    figures = {
        "messages": MESSAGES,
        "rate_per_s": RATE,
        "killed_after_messages": sent_at_kill,
        "promotion_s": round(promoted, 2),
        "stored": stored,
        "distinct": distinct,
        "lost": MESSAGES - distinct,
        "publisher_errors": len(publisher.errors),
        "worker_batch_retries": _worker_retries(platform) - retries_before,
        "reads": len(readers.answers),
        "read_errors": len(readers.errors()),
        "read_longest_gap_s": round(readers.longest_gap(), 2),
        "read_slowest_s": round(readers.slowest(), 2),
        "writes": len(writers.answers),
        "write_errors": len(writers.errors()),
        "write_longest_gap_s": round(writers.longest_gap(), 2),
    }
    report("failover (SIGKILL of the primary's postmaster)", figures)
    assert publisher.errors == []
    assert (stored, distinct) == (MESSAGES, MESSAGES), figures  # none lost, none twice
    assert _rejections(platform) == 0
    assert readers.errors() == [], readers.errors()[:3]
    assert writers.errors() == [], writers.errors()[:3]
    # SensorThings reads and writes on the new primary
    _sensorthings_round_trip(platform)
    cluster.wait_healthy(180)  # the old primary rejoins as a standby (pg_rewind), synchronous again


def test_a_planned_switchover_shows_no_error_to_any_client(platform: Platform) -> None:
    cluster = platform.cluster
    cluster.wait_healthy(180)
    old = cluster.primary()
    assert old is not None
    candidate = next(node for node in cluster.nodes if node is not old)
    count = max(MESSAGES // 3, 1000)
    readers, writers = _traffic(platform)
    publisher = SteadyPublisher(
        platform.broker.url, platform.prefix, count, RATE, start=datetime.now(UTC) - timedelta(hours=4)
    ).begin()
    try:
        while publisher.sent < count // 3:
            time.sleep(0.05)
        began = time.monotonic()
        result = cluster.switchover(candidate)
        assert result.returncode == 0, result.stdout + result.stderr
        switched = None
        while time.monotonic() - began < 120:
            if candidate.role() == "primary":
                switched = time.monotonic() - began
                break
            time.sleep(0.05)
        assert switched is not None, cluster.logs()
        publisher.join(count / RATE + 120)
    finally:
        readers.finish()
        writers.finish()
    stored, distinct = _wait_stored(platform.url, publisher.start, count)
    figures = {
        "messages": count,
        "switchover_s": round(switched, 2),
        "stored": stored,
        "distinct": distinct,
        "lost": count - distinct,
        "publisher_errors": len(publisher.errors),
        "reads": len(readers.answers),
        "read_errors": len(readers.errors()),
        "read_longest_gap_s": round(readers.longest_gap(), 2),
        "writes": len(writers.answers),
        "write_errors": len(writers.errors()),
        "write_longest_gap_s": round(writers.longest_gap(), 2),
    }
    report("switchover (patronictl switchover)", figures)
    assert publisher.errors == []
    assert (stored, distinct) == (count, count), figures
    assert readers.errors() == [], readers.errors()[:3]
    assert writers.errors() == [], writers.errors()[:3]
    _sensorthings_round_trip(platform)


def _rejections(platform: Platform) -> int:
    return int(asyncio.run(_fetchval(platform.url, "SELECT count(*) FROM ingest_rejection")))


def _sensorthings_round_trip(platform: Platform) -> None:
    """A write and its read back through SensorThings, on whichever node is primary now."""
    created = httpx.post(
        f"{platform.server.url}/sta/v1.1/Observations",
        headers=TEST_ADMIN_AUTH,
        json={"result": 42.5, "phenomenonTime": "2020-01-01T00:00:00Z", "Datastream": {"@iot.id": platform.datastream}},
        timeout=30,
    )
    assert created.status_code == 201, created.text
    read = httpx.get(created.headers["location"], timeout=30)
    assert read.status_code == 200
    assert read.json()["result"] == 42.5
    httpx.delete(created.headers["location"], headers=TEST_ADMIN_AUTH, timeout=30)
