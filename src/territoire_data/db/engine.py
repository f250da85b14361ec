"""Engine and pool: one SQLAlchemy AsyncEngine over asyncpg, built from settings by the entry point."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from territoire_data.db.raw import connect_raw, json_dumps
from territoire_data.settings import Settings

__all__ = ["connect_raw", "create_engine", "raw_connection", "session_settings"]


def session_settings(settings: Settings, application_name: str) -> dict[str, str]:
    """The server settings of the API's sessions (the engine's and the read pool's): their name in
    pg_stat_activity, JIT as configured, the statement timeout, and DateStyle ISO, whatever the server's or the
    database's default: the SensorThings JSON built by PostgreSQL writes instants from their text form
    (`sensorthings.jsonsql`)."""
    server_settings = {
        "application_name": f"territoire-data-{application_name}",
        "jit": "on" if settings.db_jit else "off",
        "DateStyle": "ISO",  # the output format only: the order of day, month and year in input is kept
    }
    if settings.db_statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
    return server_settings


def create_engine(
    settings: Settings, *, pool_size: int | None = None, application_name: str = "api", url: str | None = None
) -> AsyncEngine:
    """An async engine with a bounded pool, a statement timeout and orjson for JSON columns; on the primary
    unless another `url` (a standby's, db.replicas) is given."""
    return create_async_engine(
        url or settings.sqlalchemy_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        json_serializer=json_dumps,
        json_deserializer=orjson.loads,
        connect_args={"server_settings": session_settings(settings, application_name), "timeout": 10},
    )


@asynccontextmanager
async def raw_connection(conn: AsyncConnection) -> AsyncIterator[asyncpg.Connection]:
    """The asyncpg connection under a SQLAlchemy connection, for COPY and other driver-level work."""
    fairy = await conn.get_raw_connection()
    yield fairy.driver_connection
