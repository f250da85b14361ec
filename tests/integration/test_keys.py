"""API keys: shown once, stored only as a hash, roles enforced, revocable, every change audited."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.auth.keys import create_key
from territoire_data.settings import Settings
from tests.conftest import LiveServer, make_key

pytestmark = pytest.mark.db


async def test_admin_creates_lists_and_revokes_keys(client: httpx.AsyncClient, admin_key: str) -> None:
    auth = {"Authorization": f"Bearer {admin_key}"}
    created = await client.post("/api/v1/keys", json={"name": "QGIS du SIG", "role": "reader"}, headers=auth)
    assert created.status_code == 201, created.text
    new_key = created.json()["key"]
    assert new_key.startswith("td_") and created.json()["prefix"] in new_key

    listed = await client.get("/api/v1/keys", headers={"X-API-Key": admin_key})
    assert listed.status_code == 200
    assert new_key not in listed.text
    assert {k["name"] for k in listed.json()} == {"test admin (fixture)", "test admin", "QGIS du SIG"}

    reader = {"Authorization": f"Bearer {new_key}"}
    assert (await client.get("/api/v1/keys", headers=reader)).status_code == 403
    revoked = await client.delete(f"/api/v1/keys/{created.json()['id']}", headers=auth)
    assert revoked.status_code == 204
    after = await client.get("/api/v1/keys", headers=reader)
    assert after.status_code == 401
    assert after.headers["www-authenticate"].startswith("Bearer")

    audit = await client.get("/api/v1/audit", headers=auth)
    assert [e["action"] for e in audit.json()] == ["key.revoke", "key.create"]
    assert audit.json()[1]["actor"].startswith("key:")
    assert audit.json()[1]["remote_addr"] is not None


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer td_00000000_notarealkey"},
        {"Authorization": "Basic dXNlcjpwYXNz"},
        {"X-API-Key": "garbage"},
    ],
)
async def test_key_management_needs_a_valid_admin_key(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    response = await client.get("/api/v1/keys", headers=headers)
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/problem+json"


async def test_expired_key_is_refused(client: httpx.AsyncClient, engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        new = await create_key(conn, name="old", role="admin", expires_at=datetime.now(UTC) - timedelta(seconds=1))
    assert (await client.get("/api/v1/keys", headers={"X-API-Key": new.key})).status_code == 401


async def test_keys_are_stored_only_as_hashes(engine: AsyncEngine, db: asyncpg.Connection) -> None:
    key = await make_key(engine, "publisher")
    secret = key.rsplit("_", 1)[1]
    dump = "\n".join(str(tuple(r)) for r in await db.fetch("SELECT * FROM api_key"))
    assert secret not in dump and key not in dump


def test_cli_creates_a_key_shown_once_and_never_logs_it(settings: Settings, db: asyncpg.Connection) -> None:
    env = {**os.environ, "TERRITOIRE_DATABASE_URL": settings.database_url, "TERRITOIRE_LOG_LEVEL": "DEBUG"}
    created = subprocess.run(
        [sys.executable, "-m", "territoire_data.cli", "keys", "create", "--role", "admin", "--name", "ops"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    key = created.stdout.strip()
    assert key.startswith("td_")
    assert key not in created.stderr
    listed = subprocess.run(
        [sys.executable, "-m", "territoire_data.cli", "keys", "list"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd="/",
    )
    assert "ops" in listed.stdout and key not in listed.stdout

    server = LiveServer(settings, env={"TERRITOIRE_LOG_LEVEL": "DEBUG"})
    server.start()
    try:
        assert httpx.get(f"{server.url}/api/v1/keys", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        assert httpx.get(f"{server.url}/api/v1/keys", headers={"X-API-Key": key + "x"}).status_code == 401
    finally:
        server.stop()
    log = server.log.read_text()
    assert key.rsplit("_", 1)[1] not in log

    revoked = subprocess.run(
        [sys.executable, "-m", "territoire_data.cli", "keys", "revoke", key.split("_")[1]],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
    )
    assert revoked.returncode == 0, revoked.stderr


async def test_revoke_by_an_all_digit_prefix_revokes_that_key_not_the_id(
    engine: AsyncEngine, db: asyncpg.Connection
) -> None:
    from territoire_data.auth.keys import revoke_key

    key = await make_key(engine, "reader")
    prefix = key.split("_")[1]
    await db.execute("UPDATE api_key SET prefix = '00000001' WHERE prefix = $1", prefix)
    async with engine.begin() as conn:
        revoked = await revoke_key(conn, "00000001")
    assert await db.fetchval("SELECT prefix FROM api_key WHERE id = $1", revoked) == "00000001"
    assert await db.fetchval("SELECT revoked_at IS NULL FROM api_key WHERE id = 1")
