"""Where reads go (db.replicas), on a real PostgreSQL: the routing rules and /metrics, without a standby.

A standby proper (replay, lag, fallback, restricted datasets on it) is tested on a Patroni cluster in
tests/drills/test_read_replicas.py; here the "standby" URL names the primary itself (a node not in recovery
counts as lag 0) or a port nobody listens on.
"""

from __future__ import annotations

import re

import asyncpg
import httpx
import pytest

from territoire_data.api.app import create_app
from territoire_data.db.replicas import ReplicaRouter
from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_AUTH, free_port

pytestmark = pytest.mark.db


def _reads(text: str) -> dict[str, float]:
    pattern = r'^territoire_db_reads_total\{reason="([a-z_]+)",target="([a-z]+)"\} (\S+)$'
    return {f"{target}/{reason}": float(value) for reason, target, value in re.findall(pattern, text, re.M)}


async def test_anonymous_reads_go_to_the_read_url_and_keyed_ones_to_the_primary(
    settings: Settings, db: asyncpg.Connection
) -> None:
    app = create_app(settings.model_copy(update={"database_read_url": settings.database_url}))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        replicas: ReplicaRouter = app.state.replicas
        assert replicas.usable() and replicas.lag == 0.0 and not replicas.standby
        assert (await http.get("/api/v1/datasets")).status_code == 200
        assert (await http.get("/api/v1/datasets", headers=TEST_ADMIN_AUTH)).status_code == 200
        metrics = (await http.get("/metrics")).text
    reads = _reads(metrics)
    assert reads["replica/replica"] >= 1
    assert reads["primary/keyed"] >= 1
    assert re.search(r"^territoire_db_read_replica_in_use 1\.0$", metrics, re.M)
    assert re.search(r"^territoire_db_read_replica_lag_seconds 0\.0$", metrics, re.M)


async def test_an_unreachable_replica_sends_reads_to_the_primary(settings: Settings, db: asyncpg.Connection) -> None:
    down = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    app = create_app(settings.model_copy(update={"database_read_url": down}))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/api/v1/datasets")).status_code == 200  # answered, from the primary
        metrics = (await http.get("/metrics")).text
    assert _reads(metrics).get("primary/unreachable", 0) >= 1
    assert re.search(r"^territoire_db_read_replica_in_use 0\.0$", metrics, re.M)
    assert re.search(r"^territoire_db_read_replica_lag_seconds NaN$", metrics, re.M)


async def test_a_lag_beyond_the_limit_falls_back_to_the_primary(settings: Settings) -> None:
    router = ReplicaRouter(settings.model_copy(update={"database_read_url": settings.database_url}))
    await router.start()
    try:
        assert router.route(keyed=False) == "replica"
        router.lag = router.max_lag + 0.001  # as the monitor would note it
        assert router.route(keyed=False) == "primary"
        assert router.reads[("primary", "lag")] == 1
        await router.check()  # measured again: no lag on a node not in recovery
        assert router.route(keyed=False) == "replica"
    finally:
        await router.close()


async def test_without_a_read_url_nothing_changes(settings: Settings) -> None:
    router = ReplicaRouter(settings)
    assert not router.configured and router.engine is None
    assert router.route(keyed=False) == "primary"
