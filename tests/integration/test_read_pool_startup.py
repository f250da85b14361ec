"""The read pool opens with the app, its connections warmed, and stays open however long it idles; a database
that cannot be reached at startup does not stop the app from starting (/ready tells, the first request retries)."""

from __future__ import annotations

import time

import asyncpg
import pytest

from territoire_data.api.app import create_app
from territoire_data.db import readpool
from territoire_data.settings import Settings
from tests.conftest import free_port

pytestmark = pytest.mark.db


async def test_the_read_pool_opens_at_startup_and_keeps_its_connections(settings: Settings) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        pool = readpool._POOLS.get(app.state.engine)
        assert pool is not None  # opened by the startup, before any request
        assert pool.get_size() == settings.db_pool_size
        assert pool._max_inactive_connection_lifetime == 0  # asyncpg's default would close them after 5 min idle
        pids = {holder._con.get_server_pid() for holder in pool._holders if holder._con is not None}
        assert len(pids) == settings.db_pool_size  # every connection open already
        admin = await asyncpg.connect(settings.asyncpg_dsn)
        try:
            live = await admin.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[]) "
                "AND application_name = 'territoire-data-read'",
                list(pids),
            )
        finally:
            await admin.close()
        assert live == settings.db_pool_size
        async with readpool.pooled(app.state.engine, settings) as conn:  # and it serves as before
            assert await conn.fetchval("SELECT 1") == 1
    assert readpool._POOLS.get(app.state.engine) is None


async def test_an_unreachable_database_does_not_stop_the_startup(settings: Settings) -> None:
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere"
    down = settings.model_copy(update={"database_url": url})
    app = create_app(down)
    began = time.monotonic()
    async with app.router.lifespan_context(app):
        assert readpool._POOLS.get(app.state.engine) is None
    assert time.monotonic() - began < 12
