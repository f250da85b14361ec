"""Key management and the audit trail, for admins: /api/v1/keys and /api/v1/audit."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from fastapi import APIRouter, Query, Request
from pydantic import BaseModel, Field
from sqlalchemy import text

from territoire_data.auth import keys
from territoire_data.auth.audit import record
from territoire_data.auth.deps import AdminDep, client_address
from territoire_data.deps import EngineDep

router = APIRouter(prefix="/api/v1", tags=["access"])


class GrantIn(BaseModel):
    dataset: str = Field(description="dataset slug")
    permission: Literal["read", "write"]


class KeyCreate(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="who or what uses the key")
    role: Literal["admin", "publisher", "reader"]
    expires_at: datetime | None = None
    grants: list[GrantIn] = Field(default_factory=list, max_length=1000)


class KeyCreated(BaseModel):
    id: int
    prefix: str
    key: str = Field(description="the API key, shown this once only")
    role: str
    name: str


class KeyPublic(BaseModel):
    id: int
    prefix: str
    name: str
    role: str
    created_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    last_used_at: datetime | None
    grants: list[str]


@router.post("/keys", status_code=201, summary="Create an API key (shown once)", response_model=KeyCreated)
async def create_key(body: KeyCreate, principal: AdminDep, engine: EngineDep, request: Request) -> KeyCreated:
    async with engine.begin() as conn:
        new = await keys.create_key(
            conn,
            name=body.name,
            role=body.role,
            expires_at=body.expires_at,
            grants=[(g.dataset, g.permission) for g in body.grants],
        )
        await record(
            conn,
            principal,
            "key.create",
            "api_key",
            new.id,
            remote_addr=client_address(request),
            details={"prefix": new.prefix, "role": body.role, "grants": [g.model_dump() for g in body.grants]},
        )
    return KeyCreated(id=new.id, prefix=new.prefix, key=new.key, role=body.role, name=body.name)


@router.get("/keys", summary="List API keys (never their secret)", response_model=list[KeyPublic])
async def list_keys(principal: AdminDep, engine: EngineDep) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        return await keys.list_keys(conn)


@router.delete("/keys/{key_id}", status_code=204, summary="Revoke an API key")
async def revoke_key(key_id: int, principal: AdminDep, engine: EngineDep, request: Request) -> None:
    async with engine.begin() as conn:
        await keys.revoke_key(conn, str(key_id))
        await record(conn, principal, "key.revoke", "api_key", key_id, remote_addr=client_address(request))


class AuditEventPublic(BaseModel):
    id: int
    at: datetime
    actor: str
    action: str
    target_type: str
    target_id: str | None
    remote_addr: str | None
    details: dict[str, Any]


@router.get("/audit", summary="The audit trail of writes, newest first", response_model=list[AuditEventPublic])
async def audit(
    principal: AdminDep,
    engine: EngineDep,
    limit: int = Query(100, ge=1, le=1000),
    before_id: int | None = Query(None, description="page: events older than this id"),
) -> list[dict[str, Any]]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text(
                "SELECT id, at, actor, action, target_type, target_id, host(remote_addr) AS remote_addr, details "
                "FROM audit_event WHERE (CAST(:before AS bigint) IS NULL OR id < :before) ORDER BY id DESC LIMIT :limit"
            ),
            {"before": before_id, "limit": limit},
        )
        return [dict(row) for row in rows.mappings()]
