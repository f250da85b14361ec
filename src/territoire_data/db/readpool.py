"""The read pool: plain asyncpg connections beside the SQLAlchemy engine, shared by every read door.

The read paths (SensorThings, OGC API - Features, records, exports, tiles) check out a connection per request;
through SQLAlchemy's pool (with pre-ping and reset-on-return) a checkout costs about 2 ms on the reference
machine, through asyncpg's own pool about 0.3 ms, which is most of the gap on small requests (measured in
bench/features_api.py). One pool per engine, created on first use, closed with the app (its lifespan).
"""

from __future__ import annotations

import asyncio
import json
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.settings import Settings

_POOLS: weakref.WeakKeyDictionary[AsyncEngine, asyncpg.Pool] = weakref.WeakKeyDictionary()
_LOCK = asyncio.Lock()


async def read_pool(engine: AsyncEngine, settings: Settings) -> asyncpg.Pool:
    """The asyncpg pool of this engine's database, sized like the engine's pool."""
    pool = _POOLS.get(engine)
    if pool is not None:
        return pool
    async with _LOCK:
        pool = _POOLS.get(engine)
        if pool is None:
            server_settings = {"application_name": "territoire-data-read"}
            if settings.db_statement_timeout_ms:
                server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
            pool = await asyncpg.create_pool(
                settings.asyncpg_dsn,
                min_size=settings.db_pool_size,  # opened up front: no connect under load
                max_size=settings.db_pool_size,
                server_settings=server_settings,
                init=_init_connection,
                reset=_keep_session,
            )
            _POOLS[engine] = pool
    return pool


async def _init_connection(connection: asyncpg.Connection) -> None:
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")


async def _keep_session(connection: asyncpg.Connection) -> None:
    """No reset round trip on release: the read paths change no session state (only SET LOCAL in their own
    transactions), so asyncpg's default `RESET ALL; UNLISTEN *; ...` would cost a round trip per request."""
    if connection.is_in_transaction():  # a request that failed mid-transaction: give back a clean connection
        await connection.execute("ROLLBACK")


async def close_read_pool(engine: AsyncEngine) -> None:
    """Close the engine's read pool, if one was made (the app's lifespan calls this on shutdown)."""
    pool = _POOLS.pop(engine, None)
    if pool is not None:
        await pool.close()


@asynccontextmanager
async def pooled(engine: AsyncEngine, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A pooled asyncpg connection for one request."""
    pool = await read_pool(engine, settings)
    async with pool.acquire() as connection:
        yield connection
