"""Schema migrations: upgrade, downgrade and the schema's state, over Alembic."""

from __future__ import annotations

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from territoire_data.paths import shipped
from territoire_data.settings import Settings


def alembic_config(settings: Settings) -> Config:
    """An Alembic configuration bound to our migrations folder and the settings' database."""
    config = Config()
    config.set_main_option("script_location", str(shipped("migrations")))
    config.attributes["sqlalchemy_url"] = settings.sqlalchemy_url
    config.attributes["configure_logging"] = False
    return config


def head_revision(settings: Settings) -> str | None:
    """The revision the code expects the database to be at."""
    return ScriptDirectory.from_config(alembic_config(settings)).get_current_head()


def upgrade(settings: Settings, revision: str = "head") -> None:
    command.upgrade(alembic_config(settings), revision)


def downgrade(settings: Settings, revision: str = "base") -> None:
    command.downgrade(alembic_config(settings), revision)


async def current_revision(conn: AsyncConnection) -> str | None:
    """The revision the database is at, or None when it was never migrated."""
    exists = await conn.scalar(text("SELECT to_regclass('public.alembic_version') IS NOT NULL"))
    if not exists:
        return None
    revision = await conn.scalar(text("SELECT version_num FROM alembic_version LIMIT 1"))
    return str(revision) if revision is not None else None


async def ensure_partitions(conn: AsyncConnection, months_back: int = 1, months_ahead: int = 3) -> int:
    """Create the observation partitions around now; returns how many were created."""
    created = await conn.scalar(
        text(
            "SELECT ensure_observation_partitions(now() - make_interval(months => :back), "
            "now() + make_interval(months => :ahead))"
        ),
        {"back": months_back, "ahead": months_ahead},
    )
    return int(created or 0)
