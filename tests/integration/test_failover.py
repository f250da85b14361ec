"""A lost database connection (what a Patroni failover looks like to a client) is retried, never shown.

The real failover, with Patroni promoting a standby, is the drill (tests/drills/test_failover_drill.py); here the
server itself cuts every session of the API (pg_terminate_backend: SQLSTATE 57P01 on the next statement, or a
closed socket), and a multi-host URL whose first host is down still reaches the database.
"""

from __future__ import annotations

import asyncio

import asyncpg
import httpx
import pytest
from sqlalchemy import text

from territoire_data.api.app import create_app
from territoire_data.db.failover import CommitWatch, NotDurable, is_connect_error, is_failover_error
from territoire_data.dsn import parse_database_url
from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_AUTH, TcpProxy, free_port
from tests.observation_helpers import create_datastreams

pytestmark = pytest.mark.db


async def _cut_api_sessions(db: asyncpg.Connection) -> int:
    return int(
        await db.fetchval(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name LIKE 'territoire-data-%' AND pid <> pg_backend_pid() "
            "AND datname = current_database()"
        )
    )


async def test_reads_and_writes_survive_their_connections_being_cut(settings: Settings, db: asyncpg.Connection) -> None:
    await create_datastreams(db)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as http:
            assert (await http.get("/sta/v1.1/Datastreams")).status_code == 200
            assert (await http.get("/api/v1/datasets", headers=TEST_ADMIN_AUTH)).status_code == 200
            assert await _cut_api_sessions(db) >= 2  # the read pool's and the engine's
            for path in ("/sta/v1.1/Datastreams", "/sta/v1.1/Things", "/ogcapi/collections", "/api/v1/datasets"):
                response = await http.get(path, headers=TEST_ADMIN_AUTH)
                assert response.status_code == 200, response.text
            assert await _cut_api_sessions(db) >= 1
            created = await http.post(
                "/sta/v1.1/Things", json={"name": "after a cut", "description": "d"}, headers=TEST_ADMIN_AUTH
            )
            assert created.status_code == 201, created.text
    assert await db.fetchval("SELECT count(*) FROM thing WHERE name = 'after a cut'") == 1


@pytest.mark.parametrize("wait", [5.0, 0.0])
async def test_a_request_during_an_outage_waits_for_the_database(
    settings: Settings, db: asyncpg.Connection, wait: float
) -> None:
    url = parse_database_url(settings.database_url)
    (host, port), *_ = url.hosts
    relay = TcpProxy(host, port or 5432)
    await relay.start()
    through = settings.database_url.replace(f"{host}:{port}", f"127.0.0.1:{relay.port}", 1)
    app = create_app(settings.model_copy(update={"database_url": through, "db_failover_wait_seconds": wait}))
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        assert (await http.get("/sta/v1.1/Things")).status_code == 200
        await relay.cut()  # every pooled connection dropped, new ones refused
        request = asyncio.create_task(http.get("/sta/v1.1/Things"))
        await asyncio.sleep(1.5)
        await relay.heal()  # "the standby is promoted"
        response = await request
        writes = await http.post("/sta/v1.1/Things", json={"name": "n", "description": "d"}, headers=TEST_ADMIN_AUTH)
    await relay.cut()
    if wait:
        assert response.status_code == 200, response.text  # answered late, not wrong
        assert writes.status_code == 201
    else:  # no waiting configured: the outage shows, as a 503 a client may retry
        assert response.status_code == 503
        assert response.headers["retry-after"] == "2"


async def test_a_database_that_stays_away_answers_503_with_retry_after(settings: Settings) -> None:
    down = settings.model_copy(
        update={"database_url": f"postgresql://postgres@127.0.0.1:{free_port()}/nowhere", "db_failover_wait_seconds": 1}
    )
    app = create_app(down)
    transport = httpx.ASGITransport(app=app)
    async with app.router.lifespan_context(app), httpx.AsyncClient(transport=transport, base_url="http://t") as http:
        response = await http.get("/sta/v1.1/Things")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "2"
    assert response.json()["type"].endswith("/database-unavailable")


async def test_a_multi_host_url_skips_a_dead_host(settings: Settings, db: asyncpg.Connection) -> None:
    url = parse_database_url(settings.database_url)
    (host, port), *_ = url.hosts
    dead = free_port()
    cluster = settings.database_url.replace(f"{host}:{port}", f"127.0.0.1:{dead},{host}:{port}", 1)
    assert parse_database_url(cluster).multi_host
    both = settings.model_copy(update={"database_url": cluster})
    assert "target_session_attrs=read-write" in both.asyncpg_dsn
    conn = await asyncpg.connect(both.asyncpg_dsn)
    try:
        assert await conn.fetchval("SELECT NOT pg_is_in_recovery()")
    finally:
        await conn.close()
    app = create_app(both)
    async with app.router.lifespan_context(app):
        async with app.state.engine.connect() as sa:  # SQLAlchemy with host= parameters
            assert await sa.scalar(text("SELECT current_database()")) == url.database
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            assert (await http.get("/sta/v1.1/Things")).status_code == 200


async def test_failover_errors_are_told_apart_from_real_ones(settings: Settings) -> None:
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        with pytest.raises(asyncpg.PostgresError) as syntax:
            await conn.execute("SELEC 1")
        assert not is_failover_error(syntax.value)
        await conn.execute("SET default_transaction_read_only = on")
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError) as read_only:  # a standby refuses writes so
            await conn.execute("CREATE TEMP TABLE t (x int)")
        assert is_failover_error(read_only.value)
    finally:
        await conn.close()
    with pytest.raises(OSError, match="onnect") as refused:
        await asyncpg.connect(f"postgresql://postgres@127.0.0.1:{free_port()}/x")
    assert is_failover_error(refused.value) and is_connect_error(refused.value)


async def test_a_commit_that_warns_is_not_taken_as_durable(settings: Settings) -> None:
    """PostgreSQL reports a commit whose wait for the synchronous standby was cancelled with a WARNING; any
    WARNING during a commit makes CommitWatch refuse it (here a deferred trigger warns at commit time)."""
    conn = await asyncpg.connect(settings.asyncpg_dsn)
    try:
        await conn.execute(
            "CREATE TEMP TABLE batch (x int);"
            "CREATE FUNCTION pg_temp.warn_at_commit() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN RAISE WARNING 'canceling wait for synchronous replication'; RETURN NULL; END $$;"
            "CREATE CONSTRAINT TRIGGER warn AFTER INSERT ON batch DEFERRABLE INITIALLY DEFERRED "
            "FOR EACH ROW EXECUTE FUNCTION pg_temp.warn_at_commit()"
        )
        watch = CommitWatch(conn)
        watch.arm()
        async with conn.transaction():
            await conn.execute("INSERT INTO batch VALUES (1)")
        with pytest.raises(NotDurable, match="synchronous"):
            await watch.check()
        assert is_failover_error(NotDurable("x"))  # so the ingest store writes the batch again
        watch.arm()
        async with conn.transaction():
            await conn.execute("SELECT 1")  # a commit without a warning passes
        await watch.check()
    finally:
        await conn.close()
