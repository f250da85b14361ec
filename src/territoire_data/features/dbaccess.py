"""Connections and query execution for the read paths: the asyncpg driver straight from the pool."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.db.engine import raw_connection
from territoire_data.errors import BadRequestError


@asynccontextmanager
async def pooled(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    """A pooled asyncpg connection: the hot paths speak to the driver directly."""
    async with engine.connect() as conn, raw_connection(conn) as raw:
        yield raw


async def fetch_checked(conn: asyncpg.Connection, sql: str, values: list[Any]) -> list[asyncpg.Record]:
    """Run a query built from user filters; a value PostgreSQL cannot read as its column's type is a 400."""
    try:
        return list(await conn.fetch(sql, *values))
    except (asyncpg.DataError, asyncpg.UndefinedFunctionError, asyncpg.DatatypeMismatchError) as exc:
        raise BadRequestError(f"invalid filter value: {exc}") from None
    except asyncpg.InternalServerError as exc:  # PostGIS reports invalid geometries this way
        raise BadRequestError(f"invalid filter: {exc}") from None
