"""`/api/v1/rejections`: what ingest refused, by connector, reason and time (admins only)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from territoire_data.auth.deps import AdminDep
from territoire_data.db.readpool import pooled
from territoire_data.deps import EngineDep, SettingsDep
from territoire_data.errors import NotFoundError
from territoire_data.ops import rejections
from territoire_data.ops.rejections import RejectionFilter

router = APIRouter(prefix="/api/v1", tags=["operations"])


class RejectionPublic(BaseModel):
    id: int
    at: datetime
    connector: str = Field(description="the MQTT or file connector, or `sta-mqtt`")
    reason: str = Field(description="the reason code, e.g. unknown_device, invalid_json")
    detail: str = Field(description="the reason as stored, with its detail")
    topic: str | None
    file: str | None
    line: int | None
    dataset_id: int | None
    import_id: int | None = Field(description="the file import whose row this was")
    payload_bytes: int | None
    replayed_at: datetime | None = Field(description="when a replay stored it")
    replay_outcome: str | None


class RejectionDetail(RejectionPublic):
    payload: str | None = Field(description="the message or row as kept (text, at most 64 KiB)")


class RejectionPage(BaseModel):
    items: list[RejectionPublic]
    next: str | None = Field(description="the next (older) page, if any")


class RejectionCount(BaseModel):
    connector: str
    reason: str
    count: int
    not_replayed: int
    first: datetime
    last: datetime


def rejection_filter(
    connector: Annotated[str | None, Query(max_length=200, description="connector (source) name")] = None,
    reason: Annotated[str | None, Query(max_length=100, description="reason code")] = None,
    since: Annotated[datetime | None, Query(description="at or after (ISO 8601)")] = None,
    until: Annotated[datetime | None, Query(description="before (ISO 8601)")] = None,
    import_id: Annotated[int | None, Query(alias="import", ge=1, description="rows of this file import")] = None,
    replayed: Annotated[bool | None, Query(description="true: stored by a replay; false: not yet")] = None,
) -> RejectionFilter:
    return RejectionFilter(connector, reason, since, until, import_id, replayed)


FilterDep = Annotated[RejectionFilter, Depends(rejection_filter)]


@router.get("/rejections", summary="Rejected messages and rows, newest first", response_model=RejectionPage)
async def list_rejections(
    request: Request,
    principal: AdminDep,
    engine: EngineDep,
    settings: SettingsDep,
    which: FilterDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    before_id: Annotated[int | None, Query(ge=1, description="page: rejections older than this id")] = None,
) -> dict[str, Any]:
    async with pooled(engine, settings) as conn:
        items = await rejections.list_rejections(conn, which, limit=limit, before_id=before_id)
    next_link = None
    if len(items) == limit:
        next_link = str(request.url.include_query_params(before_id=items[-1]["id"]))
    return {"items": items, "next": next_link}


@router.get(
    "/rejections/summary",
    summary="Rejections counted by connector and reason",
    response_model=list[RejectionCount],
)
async def summary(
    principal: AdminDep,
    engine: EngineDep,
    settings: SettingsDep,
    which: FilterDep,
) -> list[dict[str, Any]]:
    async with pooled(engine, settings) as conn:
        return await rejections.summarize(conn, which)


@router.get("/rejections/{rejection_id}", summary="One rejection, with its payload", response_model=RejectionDetail)
async def show(rejection_id: int, principal: AdminDep, engine: EngineDep, settings: SettingsDep) -> dict[str, Any]:
    async with pooled(engine, settings) as conn:
        found = await rejections.get_rejection(conn, rejection_id)
    if found is None:
        raise NotFoundError(f"no rejection {rejection_id}")
    return found
