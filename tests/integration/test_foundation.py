"""The foundation: schema round trip, health and readiness, metrics, problem+json, docs without CDN."""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.db import migrate as migrations
from territoire_data.db.engine import create_engine
from territoire_data.settings import Settings
from tests.conftest import create_database, drop_database, make_settings

pytestmark = pytest.mark.db

ROOT = Path(__file__).resolve().parents[2]


def _tables(url: str) -> set[str]:
    async def run() -> set[str]:
        conn = await asyncpg.connect(url)
        try:
            rows = await conn.fetch(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') AND c.relname <> 'spatial_ref_sys'"
            )
            return {r["relname"] for r in rows}
        finally:
            await conn.close()

    return asyncio.run(run())


def test_migrations_round_trip_from_base_to_head_and_back() -> None:
    name = f"td_test_roundtrip_{os.getpid()}"
    url = asyncio.run(create_database(name))
    try:
        settings = make_settings(url)
        migrations.upgrade(settings)
        tables = _tables(url)
        for expected in (
            "dataset",
            "thing",
            "location",
            "thing_location",
            "historical_location",
            "sensor",
            "observed_property",
            "datastream",
            "feature_of_interest",
            "observation",
            "observation_default",
            "api_key",
            "audit_event",
            "ingest_rejection",
        ):
            assert expected in tables
        migrations.downgrade(settings, "base")
        assert _tables(url) == {"alembic_version"}
        migrations.upgrade(settings)
        assert "observation" in _tables(url)
    finally:
        asyncio.run(drop_database(name))


async def test_core_tables_match_the_migrated_schema(engine: AsyncEngine) -> None:
    """The Core tables in db/tables.py describe exactly what the migrations built."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from territoire_data.db.tables import metadata

    def diff(sync_conn: object) -> list[object]:
        context = MigrationContext.configure(
            sync_conn,  # type: ignore[arg-type]
            opts={
                "include_object": lambda obj, name, type_, reflected, compare_to: (
                    not (type_ == "table" and (name.startswith("observation_") or name == "spatial_ref_sys"))
                    and type_ not in ("index", "unique_constraint", "foreign_key_constraint")
                ),
                "compare_type": True,
            },
        )
        return list(compare_metadata(context, metadata))

    async with engine.connect() as conn:
        differences = await conn.run_sync(diff)
    assert differences == []


async def test_observation_partitions_are_created_ahead_and_rows_move_out_of_default(
    db: asyncpg.Connection,
) -> None:
    await db.execute(
        "INSERT INTO thing (name) VALUES ('t'); INSERT INTO sensor (name) VALUES ('s');"
        "INSERT INTO observed_property (name) VALUES ('p');"
        "INSERT INTO datastream (name, thing_id, sensor_id, observed_property_id) VALUES ('d', 1, 1, 1)"
    )
    far = "2031-05-17T10:00:00Z"
    await db.execute(
        "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
        "VALUES (1, $1::text::timestamptz, 3.5)",
        far,
    )
    assert await db.fetchval("SELECT count(*) FROM ONLY observation_default") == 1
    created = await db.fetchval(
        "SELECT ensure_observation_partitions('2031-05-01Z'::timestamptz, '2031-07-01Z'::timestamptz)"
    )
    assert created == 2
    assert await db.fetchval("SELECT count(*) FROM ONLY observation_default") == 0
    assert await db.fetchval("SELECT count(*) FROM observation_2031_05") == 1
    assert await db.fetchval("SELECT result_number FROM observation WHERE datastream_id = 1") == 3.5
    # Calling again creates nothing and loses nothing.
    assert (
        await db.fetchval(
            "SELECT ensure_observation_partitions('2031-05-01Z'::timestamptz, '2031-07-01Z'::timestamptz)"
        )
        == 0
    )
    await db.execute("DROP TABLE observation_2031_05, observation_2031_06")


async def test_health_is_ok(client: httpx.AsyncClient) -> None:
    response = await client.get("/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}
    assert response.headers["x-request-id"]


async def test_ready_is_ok_with_database_schema_and_broker(client: httpx.AsyncClient) -> None:
    response = await client.get("/ready")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["checks"]["database"]["status"] == "ok"
    assert body["checks"]["broker"]["status"] == "ok"


async def test_ready_is_503_when_the_schema_is_not_at_head(settings: Settings) -> None:
    name = f"td_test_unmigrated_{os.getpid()}"
    url = await create_database(name)
    engine = create_engine(make_settings(url, mqtt_url=settings.mqtt_url), pool_size=1)
    try:
        app = create_app(make_settings(url, mqtt_url=settings.mqtt_url), engine=engine)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            response = await http.get("/ready")
        assert response.status_code == 503
        assert "migrate" in response.json()["checks"]["database"]["reason"]
    finally:
        await engine.dispose()
        await drop_database(name)


async def test_ready_is_503_when_the_broker_is_unreachable(settings: Settings, engine: AsyncEngine) -> None:
    from tests.conftest import free_port

    broken = make_settings(settings.database_url, mqtt_url=f"mqtt://127.0.0.1:{free_port()}")
    app = create_app(broken, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
        response = await http.get("/ready")
    assert response.status_code == 503
    assert response.json()["checks"]["broker"]["status"] == "fail"
    assert response.json()["checks"]["database"]["status"] == "ok"


async def test_metrics_count_requests_by_route_and_status_and_show_the_pool(
    client: httpx.AsyncClient,
) -> None:
    await client.get("/health")
    await client.get("/no/such/path")
    # SensorThings reads take a shortcut past FastAPI's routing: still counted under their documented route
    assert (await client.get("/sta/v1.1/Things")).status_code == 200
    assert (await client.get("/sta/v1.1/Things(999999)")).status_code == 404
    response = await client.get("/metrics")
    assert response.status_code == 200
    body = response.text
    assert re.search(r'territoire_http_requests_total\{method="GET",route="/health",status="200"\} [1-9]', body)
    for status in (200, 404):
        assert f'{{method="GET",route="/sta/v1.1/{{path:path}}",status="{status}"}} 1.0' in body
    assert 'route="unmatched",status="404"' in body
    assert "territoire_http_request_duration_seconds_bucket" in body
    assert "territoire_db_pool_size" in body


async def test_unknown_path_is_problem_json(client: httpx.AsyncClient) -> None:
    response = await client.get("/nothing-here")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["status"] == 404


async def test_docs_are_served_without_any_cdn(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert "cdn" not in page.text.lower()
    assert not re.search(r'(src|href)="https?://', page.text)
    for asset in re.findall(r'(?:src|href)="(/static/docs/[^"]+)"', page.text):
        assert (await client.get(asset)).status_code == 200
    assert (await client.get("/openapi.json")).status_code == 200


async def test_statement_timeout_and_application_name_apply_to_pool_connections(engine: AsyncEngine) -> None:
    async with engine.connect() as conn:
        name = await conn.scalar(text("SHOW application_name"))
        timeout = await conn.scalar(text("SHOW statement_timeout"))
    assert name == "territoire-data-api"
    assert timeout == "30s"


def test_cli_migrate_reports_where_the_schema_is(settings: Settings) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "territoire_data.cli", "migrate"],
        env={**os.environ, "TERRITOIRE_DATABASE_URL": settings.database_url},
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    assert result.returncode == 0, result.stderr
    assert "schema at" in result.stdout


async def test_ready_turns_503_while_postgresql_is_unreachable_and_200_after(settings: Settings) -> None:
    from urllib.parse import urlsplit

    from tests.conftest import TcpProxy

    parts = urlsplit(settings.database_url)
    proxy = TcpProxy(parts.hostname or "127.0.0.1", parts.port or 5432)
    await proxy.start()
    proxied = settings.database_url.replace(parts.netloc, f"{parts.username}@127.0.0.1:{proxy.port}")
    proxied_settings = make_settings(proxied, mqtt_url=settings.mqtt_url)
    engine = create_engine(proxied_settings, pool_size=2)
    app = create_app(proxied_settings, engine=engine)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as http:
            assert (await http.get("/ready")).status_code == 200
            await proxy.cut()
            down = await http.get("/ready")
            assert down.status_code == 503
            assert "database unreachable" in down.json()["checks"]["database"]["reason"]
            assert (await http.get("/health")).status_code == 200
            await proxy.heal()
            assert (await http.get("/ready")).status_code == 200
    finally:
        await engine.dispose()
        await proxy.cut()


def test_json_logs_carry_the_request_id(settings: Settings, db: asyncpg.Connection) -> None:
    import json

    from tests.conftest import LiveServer

    server = LiveServer(settings, env={"TERRITOIRE_LOG_JSON": "true", "TERRITOIRE_LOG_LEVEL": "INFO"})
    server.start()
    try:
        response = httpx.get(
            f"{server.url}/api/v1/keys", headers={"X-Request-ID": "5a8f2c1e-3b4d-4e6f-8a9b-0c1d2e3f4a5b"}
        )
        assert response.status_code == 401
        assert response.headers["x-request-id"] == "5a8f2c1e-3b4d-4e6f-8a9b-0c1d2e3f4a5b"
    finally:
        server.stop()
    lines = [line for line in server.log.read_text().splitlines() if line.startswith("{")]
    assert lines, "the server wrote no JSON log line"
    records = [json.loads(line) for line in lines]
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    assert all("correlation_id" in r for r in records)
