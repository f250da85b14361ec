"""Accountability: every write is recorded with who, what, when and from where."""

from __future__ import annotations

import ipaddress
from typing import Any

import asyncpg
import orjson
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


async def record_pg(
    conn: asyncpg.Connection,
    principal: Principal | str,
    action: str,
    target_type: str,
    target_id: str | int | None = None,
    *,
    remote_addr: str | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """`record` for the doors that speak asyncpg (SensorThings over HTTP, $batch and MQTT), same transaction rule."""
    if remote_addr is not None:
        try:
            ipaddress.ip_address(remote_addr)
        except ValueError:  # e.g. a Unix socket peer: keep it, but not in the inet column
            details = {**(details or {}), "remote": remote_addr}
            remote_addr = None
    await conn.execute(
        "INSERT INTO audit_event (actor, action, target_type, target_id, remote_addr, details) "
        "VALUES ($1, $2, $3, $4, $5::text::inet, $6::text::jsonb)",
        principal if isinstance(principal, str) else principal.name,
        action,
        target_type,
        None if target_id is None else str(target_id),
        remote_addr,
        orjson.dumps(details or {}).decode(),
    )
