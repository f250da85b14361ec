"""Engine and pool: one SQLAlchemy AsyncEngine over asyncpg, built from settings by the entry point."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import orjson
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine, create_async_engine

from territoire_data.settings import Settings


def _json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


def create_engine(settings: Settings, *, pool_size: int | None = None, application_name: str = "api") -> AsyncEngine:
    """An async engine with a bounded pool, a statement timeout and orjson for JSON columns."""
    server_settings = {"application_name": f"territoire-data-{application_name}"}
    if settings.db_statement_timeout_ms:
        server_settings["statement_timeout"] = str(settings.db_statement_timeout_ms)
    return create_async_engine(
        settings.sqlalchemy_url,
        pool_size=pool_size or settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        pool_pre_ping=True,
        pool_recycle=1800,
        json_serializer=_json_dumps,
        json_deserializer=orjson.loads,
        connect_args={"server_settings": server_settings, "timeout": 10},
    )


@asynccontextmanager
async def raw_connection(conn: AsyncConnection) -> AsyncIterator[asyncpg.Connection]:
    """The asyncpg connection under a SQLAlchemy connection, for COPY and other driver-level work."""
    fairy = await conn.get_raw_connection()
    yield fairy.driver_connection


async def connect_raw(settings: Settings, *, application_name: str = "cli") -> asyncpg.Connection:
    """A plain asyncpg connection with JSON codecs, for tools and bulk paths that do not need the pool."""
    connection = await asyncpg.connect(
        settings.asyncpg_dsn, server_settings={"application_name": f"territoire-data-{application_name}"}
    )
    await connection.set_type_codec("jsonb", encoder=_json_dumps, decoder=json.loads, schema="pg_catalog")
    await connection.set_type_codec("json", encoder=_json_dumps, decoder=json.loads, schema="pg_catalog")
    return connection
