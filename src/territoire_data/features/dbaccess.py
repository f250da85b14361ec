"""Query execution for the Features and export read paths (the pool itself is db.readpool, shared)."""

from __future__ import annotations

from typing import Any

import asyncpg

from territoire_data.errors import BadRequestError


async def fetch_checked(conn: asyncpg.Connection, sql: str, values: list[Any]) -> list[asyncpg.Record]:
    """Run a query built from user filters; a value PostgreSQL cannot read as its column's type is a 400."""
    try:
        return list(await conn.fetch(sql, *values))
    except (asyncpg.DataError, asyncpg.UndefinedFunctionError, asyncpg.DatatypeMismatchError) as exc:
        raise BadRequestError(f"invalid filter value: {exc}") from None
    except asyncpg.InternalServerError as exc:  # PostGIS reports invalid geometries this way
        raise BadRequestError(f"invalid filter: {exc}") from None
