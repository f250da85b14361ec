"""Plain asyncpg connections (no SQLAlchemy): what the CLI's bulk commands need, quick to import."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import orjson

from territoire_data.settings import Settings


def json_dumps(value: Any) -> str:
    return orjson.dumps(value).decode()


async def connect_raw(settings: Settings, *, application_name: str = "cli") -> asyncpg.Connection:
    """A plain asyncpg connection with JSON codecs, for tools and bulk paths that do not need the pool."""
    connection = await asyncpg.connect(
        settings.asyncpg_dsn, server_settings={"application_name": f"territoire-data-{application_name}"}
    )
    await connection.set_type_codec("jsonb", encoder=json_dumps, decoder=json.loads, schema="pg_catalog")
    await connection.set_type_codec("json", encoder=json_dumps, decoder=json.loads, schema="pg_catalog")
    return connection
