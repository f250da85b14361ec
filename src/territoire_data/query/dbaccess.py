"""Query execution for the Features and export read paths (the pool itself is db.readpool, shared)."""

from __future__ import annotations

from typing import Any

import asyncpg

from territoire_data.errors import BadRequestError

# Type errors of an expression a filter wrote (`geometry = ''`, `NULL + 1` compared with a date...): the
# compiler leaves some to PostgreSQL, and they are the user's to fix.
_TYPE_ERRORS = (
    asyncpg.UndefinedFunctionError,
    asyncpg.DatatypeMismatchError,
    asyncpg.AmbiguousFunctionError,
    asyncpg.IndeterminateDatatypeError,
    asyncpg.CannotCoerceError,
)


async def fetch_checked(conn: asyncpg.Connection, sql: str, values: list[Any]) -> list[asyncpg.Record]:
    """Run a query built from user filters; a value PostgreSQL cannot read as its column's type is a 400."""
    try:
        return list(await conn.fetch(sql, *values))
    except (asyncpg.DataError, *_TYPE_ERRORS) as exc:
        raise BadRequestError(f"invalid filter value: {exc}") from None
    except asyncpg.InternalServerError as exc:  # PostGIS reports invalid geometries this way
        raise BadRequestError(f"invalid filter: {exc}") from None
