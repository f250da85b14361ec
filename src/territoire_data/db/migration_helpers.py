"""Helpers for Alembic migrations that need more than one SQL statement at a time."""

from __future__ import annotations

from alembic import op
from sqlalchemy.util import await_only


def run_script(sql: str) -> None:
    """Run a multi-statement SQL script on the migration's connection (asyncpg's simple query protocol)."""
    raw = op.get_bind().connection.driver_connection
    if raw is None:
        raise RuntimeError("migration connection has no driver connection")
    await_only(raw.execute(sql))
