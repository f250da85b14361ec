"""Rejections you can see and replay: the API and CLI list them by connector, reason and time; a replay after a
fix stores what now passes, exactly once; `maintain` purges the old ones; `status` shows the last ones."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import httpx
import orjson
import pytest
import yaml
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.db.readpool import close_read_pool
from territoire_data.ingest.replay import replay
from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_AUTH, make_key
from tests.integration.mqtt_helpers import Publisher, RunningWorker, chirpstack_up, connector_for, count, until

pytestmark = [pytest.mark.db, pytest.mark.mqtt]


@pytest.fixture(autouse=True)
async def _read_pool_closed(engine: AsyncEngine) -> AsyncIterator[None]:
    """The in-process app opens the read pool on the first listing (no lifespan runs here): close it after."""
    yield
    await close_read_pool(engine)


def cli(settings: Settings, *args: str, mqtt_url: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "TERRITOIRE_DATABASE_URL": settings.database_url,
        "TERRITOIRE_MQTT_URL": mqtt_url or settings.mqtt_url,
    }
    return subprocess.run(
        [sys.executable, "-m", "territoire_data.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.gettempdir(),
    )


async def _rejected_traffic(settings: Settings, mqtt_url: str, prefix: str, db: asyncpg.Connection) -> None:
    """20 uplinks of unregistered devices (auto-registration off) and one payload that is not JSON."""
    config = connector_for(prefix, auto_register=False)
    worker = await RunningWorker(settings, config).start()
    try:
        publisher = Publisher(mqtt_url)
        items: list[tuple[str, object]] = [chirpstack_up(prefix, f"70b3d5{n % 4:010x}", n) for n in range(20)]
        items.append((f"{prefix}/application/app-1/device/70b3d50000000009/event/up", b"{not json"))
        publisher.publish_all(items)  # type: ignore[arg-type]
        publisher.close()
        await until(lambda: count(db, "SELECT count(*) >= 21 FROM ingest_rejection"), what="all rejected")
    finally:
        await worker.stop()


async def test_rejections_are_listed_by_connector_and_reason_then_replayed_exactly_once(
    client: httpx.AsyncClient,
    engine: AsyncEngine,
    db: asyncpg.Connection,
    settings: Settings,
    mqtt_url: str,
    topic_prefix: str,
    tmp_path: Path,
) -> None:
    await _rejected_traffic(settings, mqtt_url, topic_prefix, db)
    assert await count(db, "SELECT count(*) FROM observation") == 0

    # the API: admins only, filtered, paged, newest first
    reader = await make_key(engine, "reader")
    assert (await client.get("/api/v1/rejections")).status_code == 401
    assert (await client.get("/api/v1/rejections", headers={"X-API-Key": reader})).status_code == 403
    listed = await client.get(
        "/api/v1/rejections", params={"connector": "test-chirpstack-v4", "reason": "unknown_device", "limit": 15},
        headers=TEST_ADMIN_AUTH,
    )  # fmt: skip
    assert listed.status_code == 200, listed.text
    page = listed.json()
    assert len(page["items"]) == 15
    assert {item["reason"] for item in page["items"]} == {"unknown_device"}
    assert page["items"][0]["id"] > page["items"][-1]["id"]
    rest = (await client.get(page["next"], headers=TEST_ADMIN_AUTH)).json()
    assert len(rest["items"]) == 5
    assert rest["next"] is None
    summary = (await client.get("/api/v1/rejections/summary", headers=TEST_ADMIN_AUTH)).json()
    counts = {(row["connector"], row["reason"]): row["count"] for row in summary}
    assert counts == {("test-chirpstack-v4", "unknown_device"): 20, ("test-chirpstack-v4", "invalid_json"): 1}
    one = (await client.get(f"/api/v1/rejections/{page['items'][0]['id']}", headers=TEST_ADMIN_AUTH)).json()
    assert orjson.loads(one["payload"])["deviceInfo"]["devEui"].startswith("70b3d5")
    assert (await client.get("/api/v1/rejections/999999", headers=TEST_ADMIN_AUTH)).status_code == 404
    future = await client.get("/api/v1/rejections", params={"since": "2100-01-01T00:00:00Z"}, headers=TEST_ADMIN_AUTH)
    assert future.json()["items"] == []

    # the CLI: the same list, in a terminal
    shown = cli(settings, "rejections", "list", "--connector", "test-chirpstack-v4", "--reason", "invalid_json")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.count("invalid_json") == 1
    assert "1 rejection(s)" in shown.stderr

    # the devices are registered now (auto-registration on): a dry run stores nothing, a replay stores them once
    fixed = connector_for(topic_prefix, auto_register=True)
    dry = await replay(settings, fixed, dry_run=True)
    assert dry.stored == 20
    assert await count(db, "SELECT count(*) FROM observation") == 0
    definition = tmp_path / "fixed.yaml"
    definition.write_text(yaml.safe_dump(fixed.model_dump(mode="json", by_alias=True, exclude_none=True)))
    done = cli(settings, "rejections", "replay", "--connector", "test-chirpstack-v4", "--definition", str(definition))
    assert done.returncode == 0, done.stderr
    report = orjson.loads(done.stdout)
    assert report["stored"] == 20
    assert report["observations"] == 40
    assert report["still_rejected"] == {"invalid_json": 1}
    assert await count(db, "SELECT count(*) FROM observation") == 40
    again = await replay(settings, fixed)
    assert (again.stored, again.observations, again.examined) == (0, 0, 1)  # only the invalid one is looked at again
    assert await count(db, "SELECT count(*) FROM observation") == 40
    assert await count(db, "SELECT count(*) FROM ingest_rejection") == 21  # no second rejection written
    outcome = await db.fetchval("SELECT replay_outcome FROM ingest_rejection WHERE reason_code = 'invalid_json'")
    assert outcome.startswith("still rejected: invalid_json")
    replayed = await client.get("/api/v1/rejections", params={"replayed": "true"}, headers=TEST_ADMIN_AUTH)
    assert len(replayed.json()["items"]) == 20


async def test_maintain_purges_rejections_past_their_retention_and_keeps_the_rest(
    db: asyncpg.Connection, settings: Settings
) -> None:
    await db.execute(
        "INSERT INTO ingest_rejection (at, source, reason) VALUES "
        "(now() - interval '40 days', 'old', 'invalid_json: x'), "
        "(now() - interval '2 days', 'recent', 'invalid_json: y')"
    )
    listed = cli(settings, "maintain", "--list")
    assert "rejections" in listed.stdout
    assert "partitions" in listed.stdout
    dry = cli(settings, "maintain", "--step", "rejections", "--dry-run")
    assert "1 rejection(s) older than 30 days would be deleted" in dry.stdout, dry.stderr
    assert await count(db, "SELECT count(*) FROM ingest_rejection") == 2
    done = cli(settings, "maintain")
    assert done.returncode == 0, done.stderr
    assert "rejections: 1 rejection(s) older than 30 days deleted" in done.stdout
    assert [r["source"] for r in await db.fetch("SELECT source FROM ingest_rejection")] == ["recent"]
    wrong = cli(settings, "maintain", "--step", "nothing")
    assert wrong.returncode == 2
    assert "no maintenance step nothing" in wrong.stderr


async def test_import_rows_are_reachable_by_their_import(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    body = "id;valeur\n1;3\n2;pas un nombre\n3;5\n"
    schema = {"fields": [{"name": "id", "type": "integer"}, {"name": "valeur", "type": "integer"}]}
    imported = await client.post(
        "/api/v1/datasets/mesures/imports",
        files={
            "file": ("mesures.csv", body.encode(), "text/csv"),
            "schema": ("schema.json", orjson.dumps(schema), "application/json"),
        },
        data={"create": "true", "title": "Mesures", "skip_invalid": "true"},
        headers=TEST_ADMIN_AUTH,
    )
    assert imported.status_code == 201, imported.text
    import_id = await db.fetchval("SELECT max(id) FROM dataset_import")
    await until(lambda: count(db, "SELECT count(*) FROM ingest_rejection WHERE import_id IS NOT NULL"), what="row")
    rows = (await client.get("/api/v1/rejections", params={"import": import_id}, headers=TEST_ADMIN_AUTH)).json()
    assert [(item["line"], item["import_id"]) for item in rows["items"]] == [(3, import_id)]


async def test_status_shows_database_broker_and_the_last_rejection(db: asyncpg.Connection, settings: Settings) -> None:
    await db.execute("INSERT INTO ingest_rejection (source, reason) VALUES ('chirpstack-v4', 'unknown_device: x')")
    shown = cli(settings, "status")
    assert shown.returncode == 0, shown.stdout + shown.stderr
    assert "database   ok" in shown.stdout
    assert "broker     ok" in shown.stdout
    assert "chirpstack-v4" in shown.stdout
    assert "unknown_device" in shown.stdout
    report = orjson.loads(cli(settings, "status", "--json").stdout)
    assert report["database"]["schema"] == report["database"]["schema_expected"]
    assert report["disk"][0]["used_percent"] > 0
    broken = cli(settings, "status", mqtt_url="mqtt://127.0.0.1:1")
    assert broken.returncode == 1  # a broker that does not answer: said on the screen, and in the exit code
    assert "broker     fail" in broken.stdout
    assert "database   ok" in broken.stdout
