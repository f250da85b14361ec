"""The read pool: plain asyncpg connections beside the SQLAlchemy engine, shared by every read door.

The read paths (SensorThings, OGC API - Features, records, exports, tiles) check out a connection per request;
through SQLAlchemy's pool (with pre-ping and reset-on-return) a checkout costs about 2 ms on the reference
machine, through asyncpg's own pool about 0.3 ms, which is most of the gap on small requests (measured in
bench/features_api.py). One pool per engine, created on first use, closed with the app (its lifespan).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Literal

import asyncpg
from prometheus_client import Histogram
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.db.engine import session_settings
from territoire_data.settings import Settings

_POOLS: weakref.WeakKeyDictionary[AsyncEngine, asyncpg.Pool] = weakref.WeakKeyDictionary()
_LOCK = asyncio.Lock()
PlanMode = Literal["auto", "generic", "custom"]
_PLAN_CACHE_MODE: dict[str, str] = {"auto": "auto", "generic": "force_generic_plan", "custom": "force_custom_plan"}
# Server process ids of pooled connections whose session plans otherwise than `auto` (see `use_plans`).
_SESSION_MODES: dict[int, PlanMode] = {}
# How long requests wait for a read connection: near zero while the pool has room, the queue when it has none.
# Registered by the API in its registry (in multiprocess mode the samples go to the shared files regardless).
READ_POOL_WAIT = Histogram(
    "territoire_read_pool_wait_seconds",
    "Time requests waited for a read pool connection",
    buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
    registry=None,
)


def pool_of(engine: AsyncEngine) -> asyncpg.Pool | None:
    """The engine's read pool if it was opened (metrics read its state), else None."""
    return _POOLS.get(engine)


async def read_pool(engine: AsyncEngine, settings: Settings) -> asyncpg.Pool:
    """The asyncpg pool of this engine's database, sized like the engine's pool."""
    pool = _POOLS.get(engine)
    if pool is not None:
        return pool
    async with _LOCK:
        pool = _POOLS.get(engine)
        if pool is None:
            pool = await open_pool(settings.asyncpg_dsn, settings)
            _POOLS[engine] = pool
    return pool


async def open_pool(dsn: str, settings: Settings) -> asyncpg.Pool:
    """An asyncpg pool for the read doors on `dsn` (the primary, or a standby: db.replicas), sized like the
    engine's pool, its connections opened and warmed up front."""
    return await asyncpg.create_pool(
        dsn,
        min_size=settings.db_pool_size,  # opened up front: no connect under load
        max_size=settings.db_pool_size,
        server_settings=session_settings(settings, "read"),
        init=_init_connection,
        reset=_keep_session,
        # Kept open however long they idle (asyncpg closes them after 5 min by default): on a city's portal with
        # sporadic traffic, each burst then paid a new connection (authentication), its backend's catalog lookups
        # and every statement's preparation again.
        max_inactive_connection_lifetime=0,
    )


async def _init_connection(connection: asyncpg.Connection) -> None:
    _SESSION_MODES.pop(connection.get_server_pid(), None)  # a new session plans as PostgreSQL chooses
    await connection.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    # Planning this opens every observation partition and its indexes once, while the pool opens (at startup):
    # the backend's catalog cache is then warm for the first requests instead of costing them milliseconds each.
    with contextlib.suppress(asyncpg.PostgresError):  # a database not migrated yet: nothing to warm
        await connection.execute(
            "EXPLAIN SELECT 1 FROM observation WHERE datastream_id = 0 ORDER BY phenomenon_time DESC LIMIT 1"
        )


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


async def use_plans(connection: asyncpg.Connection, mode: PlanMode) -> None:
    """How the connection's prepared statements are planned (`plan_cache_mode`): generically, with their
    values each time (custom), or as PostgreSQL chooses (auto).

    A statement on the partitioned `observation` table costs 1-2 ms to plan for 18 partitions, which is most
    of a latest-value read; PostgreSQL keeps re-planning it per value (its generic plan looks dearer on paper).
    A generic plan with run-time pruning skips that, but it is a bad bet where the values matter (a LIMIT
    estimated at 10 % of all observations picks a full scan and a sort), and `auto` itself turns generic after
    five executions when the generic plan looks no dearer, which can be wrong too: so the caller says what
    suits each statement, and a round trip is spent only when a connection's mode has to change. Inside a
    transaction only a switch away from generic plans is made, with `SET LOCAL` (a rollback then cannot leave
    a mode behind that this module does not know of).
    """
    pid = connection.get_server_pid()
    if _SESSION_MODES.get(pid, "auto") == mode:
        return
    if connection.is_in_transaction():
        if mode != "generic":
            await connection.execute(f"SET LOCAL plan_cache_mode = {_PLAN_CACHE_MODE[mode]}")
        return
    await connection.execute(f"SET plan_cache_mode = {_PLAN_CACHE_MODE[mode]}")
    if mode == "auto":
        _SESSION_MODES.pop(pid, None)
    else:
        _SESSION_MODES[pid] = mode


async def use_generic_plans(connection: asyncpg.Connection, generic: bool) -> None:
    """`use_plans` with generic plans, or as PostgreSQL chooses."""
    await use_plans(connection, "generic" if generic else "auto")


@asynccontextmanager
async def pooled(
    engine: AsyncEngine, settings: Settings, *, generic_plans: bool = False, pool: asyncpg.Pool | None = None
) -> AsyncIterator[asyncpg.Connection]:
    """A pooled asyncpg connection for one request (from `pool`, a standby's, when given); `generic_plans` as
    `use_plans` says (a door that asks for them switches back any statement that needs its values to plan well)."""
    pool = pool or await read_pool(engine, settings)
    started = time.perf_counter()
    async with pool.acquire() as connection:
        READ_POOL_WAIT.observe(time.perf_counter() - started)
        await use_generic_plans(connection, generic_plans)
        yield connection
