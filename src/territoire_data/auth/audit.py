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


def _event(
    principal: Principal | str,
    action: str,
    target_type: str,
    target_id: str | int | None,
    remote_addr: str | None,
    details: dict[str, Any] | None,
) -> dict[str, Any]:
    """The audit_event row, the same whichever connection writes it: a peer that is no IP address (a Unix
    socket) is kept in the details rather than in the inet column."""
    if remote_addr is not None:
        try:
            ipaddress.ip_address(remote_addr)
        except ValueError:
            details = {**(details or {}), "remote": remote_addr}
            remote_addr = None
    return {
        "actor": principal if isinstance(principal, str) else principal.name,
        "action": action,
        "target_type": target_type,
        "target_id": None if target_id is None else str(target_id),
        "remote_addr": remote_addr,
        "details": details or {},
    }


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
        insert(audit_event).values(_event(principal, action, target_type, target_id, remote_addr, details))
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
    event = _event(principal, action, target_type, target_id, remote_addr, details)
    await conn.execute(
        "INSERT INTO audit_event (actor, action, target_type, target_id, remote_addr, details) "
        "VALUES ($1, $2, $3, $4, $5::text::inet, $6::text::jsonb)",
        event["actor"],
        event["action"],
        event["target_type"],
        event["target_id"],
        event["remote_addr"],
        orjson.dumps(event["details"]).decode(),
    )
