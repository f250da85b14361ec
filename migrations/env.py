"""Alembic environment: the URL comes from the settings (or the caller's connection), never from alembic.ini."""

from __future__ import annotations

import asyncio
from logging.config import fileConfig

from alembic import context
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import create_async_engine

from territoire_data.db.tables import metadata

config = context.config
if config.config_file_name is not None and config.attributes.get("configure_logging", True):
    fileConfig(config.config_file_name, disable_existing_loggers=False)

target_metadata = metadata


def _include_object(obj: object, name: str | None, type_: str, reflected: bool, compare_to: object) -> bool:
    # Typed dataset tables (schema "datasets"), observation partitions and PostGIS' own tables are not ours here.
    schema = getattr(obj, "schema", None)
    ours = schema != "datasets" and not (name or "").startswith(("observation_", "spatial_ref_sys"))
    return type_ != "table" or ours


def _run(connection: Connection) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        include_object=_include_object,
        transaction_per_migration=True,
    )
    with context.begin_transaction():
        context.run_migrations()


async def _run_async(url: str) -> None:
    engine = create_async_engine(url)
    async with engine.connect() as connection:
        await connection.run_sync(_run)
        await connection.commit()
    await engine.dispose()


def run_migrations_online() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        _run(connection)
        return
    url = config.attributes.get("sqlalchemy_url")
    if url is None:
        from territoire_data.settings import load_settings

        url = load_settings().sqlalchemy_url
    asyncio.run(_run_async(url))


if context.is_offline_mode():
    raise SystemExit("offline migrations are not supported: run `territoire-data migrate`")
run_migrations_online()
