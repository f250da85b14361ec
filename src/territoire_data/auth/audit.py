"""Accountability: every write is recorded with who, what, when and from where."""

from __future__ import annotations

from typing import Any

from sqlalchemy import insert
from sqlalchemy.ext.asyncio import AsyncConnection

from territoire_data.auth.policy import Principal
from territoire_data.db.tables import audit_event


async def record(
    conn: AsyncConnection,
    principal: Principal | str,
    action: str,
    target_type: str,
    target_id: str | int | None = None,
    *,
    remote_addr: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """Add an audit event in the caller's transaction, so it commits (or not) with the write itself."""
    await conn.execute(
        insert(audit_event).values(
            actor=principal if isinstance(principal, str) else principal.name,
            action=action,
            target_type=target_type,
            target_id=None if target_id is None else str(target_id),
            remote_addr=remote_addr,
            details=details or {},
        )
    )
