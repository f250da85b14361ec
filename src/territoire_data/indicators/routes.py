"""`/api/v1/indicators` and `/api/v1/divisions`: declare, read, compute. Handlers parse, call and render."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any, Literal

import asyncpg
from fastapi import APIRouter, Query, Request, Response, status
from pydantic import BaseModel, Field
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from territoire_data.auth.audit import record_pg
from territoire_data.auth.deps import PrincipalDep, PublisherDep, check_dataset_write, client_address
from territoire_data.auth.keys import grant_to_key
from territoire_data.auth.policy import Principal
from territoire_data.db.engine import raw_connection
from territoire_data.deps import EngineDep, SettingsDep
from territoire_data.errors import ConflictError
from territoire_data.indicators import compute, divisions, read, store
from territoire_data.indicators.model import IndicatorDefinition
from territoire_data.settings import Settings

router = APIRouter(prefix="/api/v1", tags=["indicators"])


class IndicatorLink(BaseModel):
    rel: str
    href: str
    type: str


class IndicatorSummary(BaseModel):
    slug: str
    title: str
    unit: str
    period: str
    breakdown: str | None = Field(description="slug of the division it is broken down by")
    access: str
    origin: Literal["file", "api"]
    dataset: str | None = Field(description="the dataset it is published as (OGC API collection, exports, DCAT)")
    computed_at: datetime | None
    compute_error: str | None
    links: list[IndicatorLink]


class IndicatorDetail(IndicatorSummary):
    definition: dict[str, Any]
    latest: dict[str, Any] = Field(description="latest period: value, previous, change and target status per unit")


class IndicatorList(BaseModel):
    items: list[IndicatorSummary]
    total: int


class ValuesPage(BaseModel):
    indicator: str
    items: list[dict[str, Any]]
    total: int
    limit: int
    offset: int
    next: str | None


class ComputeResult(BaseModel):
    computed: list[dict[str, Any]]
    seconds: float


@asynccontextmanager
async def _tx(engine: AsyncEngine) -> AsyncIterator[tuple[AsyncConnection, asyncpg.Connection]]:
    async with engine.begin() as sa, raw_connection(sa) as conn:
        yield sa, conn


@asynccontextmanager
async def _read(engine: AsyncEngine) -> AsyncIterator[asyncpg.Connection]:
    async with engine.connect() as sa, raw_connection(sa) as conn:
        yield conn


def _links(settings: Settings, row: store.IndicatorRow) -> list[IndicatorLink]:
    base = settings.base_url
    links = [
        IndicatorLink(rel="self", href=f"{base}/api/v1/indicators/{row.slug}", type="application/json"),
        IndicatorLink(rel="alternate", href=f"{base}/indicateurs/{row.slug}", type="text/html"),
        IndicatorLink(rel="data", href=f"{base}/api/v1/indicators/{row.slug}/values", type="application/json"),
        IndicatorLink(rel="data", href=f"{base}/api/v1/indicators/{row.slug}/values?format=csv", type="text/csv"),
    ]
    if row.dataset_slug:
        links.append(
            IndicatorLink(rel="describedby", href=f"{base}/api/v1/datasets/{row.dataset_slug}", type="application/json")
        )
        if row.definition.breakdown is not None:
            links.append(
                IndicatorLink(
                    rel="items",
                    href=f"{base}/ogcapi/collections/{row.dataset_slug}/items",
                    type="application/geo+json",
                )
            )
    return links


def _summary(settings: Settings, row: store.IndicatorRow) -> dict[str, Any]:
    d = row.definition
    return {
        "slug": row.slug,
        "title": d.title,
        "unit": d.unit,
        "period": d.period,
        "breakdown": d.breakdown.division if d.breakdown else None,
        "access": row.access,
        "origin": row.origin,
        "dataset": row.dataset_slug,
        "computed_at": row.computed_at,
        "compute_error": row.compute_error,
        "links": _links(settings, row),
    }


async def _writable(conn: asyncpg.Connection, principal: Principal, slug: str) -> store.IndicatorRow:
    row = await store.get(conn, principal, slug)
    check_dataset_write(principal, row.dataset_id)
    if row.origin == "file" and not principal.is_admin:
        raise ConflictError(f"indicator {slug!r} is declared in indicators/{slug}.yaml: change the file")
    return row


@router.get("/indicators", response_model=IndicatorList, summary="Declared indicators")
async def list_indicators(engine: EngineDep, settings: SettingsDep, principal: PrincipalDep) -> IndicatorList:
    async with _read(engine) as conn:
        rows = await store.list_visible(conn, principal)
    return IndicatorList(items=[IndicatorSummary(**_summary(settings, r)) for r in rows], total=len(rows))


@router.post(
    "/indicators",
    status_code=status.HTTP_201_CREATED,
    response_model=IndicatorDetail,
    summary="Declare an indicator (publisher)",
    responses={409: {"description": "slug taken"}, 422: {"description": "the definition does not fit the data"}},
)
async def create_indicator(
    body: IndicatorDefinition,
    engine: EngineDep,
    settings: SettingsDep,
    principal: PublisherDep,
    request: Request,
    response: Response,
) -> IndicatorDetail:
    async with _tx(engine) as (sa, conn):
        row, _ = await store.save(conn, principal, body, origin="api")
        if principal.role == "publisher" and principal.key_id is not None and row.dataset_id is not None:
            await grant_to_key(sa, principal.key_id, row.dataset_id, "write")  # a publisher owns what it creates
        await record_pg(conn, principal, "indicator.create", "indicator", row.slug, remote_addr=client_address(request))
        await compute.process_dirty(conn, rounds=1)
        row = await store.by_id(conn, row.id) or row
        latest = await read.latest(conn, row)
    response.headers["Location"] = f"{settings.base_url}/api/v1/indicators/{row.slug}"
    return IndicatorDetail(**_summary(settings, row), definition=_definition(row), latest=latest)


def _definition(row: store.IndicatorRow) -> dict[str, Any]:
    return row.definition.model_dump(mode="json", exclude_none=True)


@router.get(
    "/indicators/{slug}",
    response_model=IndicatorDetail,
    summary="An indicator: definition, latest values per unit, target status",
    responses={404: {"description": "no such indicator, or restricted"}},
)
async def get_indicator(
    slug: str, engine: EngineDep, settings: SettingsDep, principal: PrincipalDep
) -> IndicatorDetail:
    async with _read(engine) as conn:
        row = await store.get(conn, principal, slug)
        latest = await read.latest(conn, row)
    return IndicatorDetail(**_summary(settings, row), definition=_definition(row), latest=latest)


@router.put(
    "/indicators/{slug}",
    response_model=IndicatorDetail,
    summary="Replace an indicator's definition (its writers)",
    responses={403: {"description": "may not write it"}, 404: {"description": "no such indicator"}},
)
async def replace_indicator(
    slug: str,
    body: IndicatorDefinition,
    engine: EngineDep,
    settings: SettingsDep,
    principal: PublisherDep,
    request: Request,
) -> IndicatorDetail:
    async with _tx(engine) as (_, conn):
        existing = await _writable(conn, principal, slug)
        row, _ = await store.save(conn, principal, body, origin=existing.origin, existing=existing)
        await record_pg(conn, principal, "indicator.update", "indicator", slug, remote_addr=client_address(request))
        await compute.process_dirty(conn, rounds=1)
        row = await store.by_id(conn, row.id) or row
        latest = await read.latest(conn, row)
    return IndicatorDetail(**_summary(settings, row), definition=_definition(row), latest=latest)


@router.delete(
    "/indicators/{slug}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete an indicator, its values and its dataset (its writers)",
    responses={403: {"description": "may not write it"}, 404: {"description": "no such indicator"}},
)
async def delete_indicator(slug: str, engine: EngineDep, principal: PublisherDep, request: Request) -> Response:
    async with _tx(engine) as (_, conn):
        row = await _writable(conn, principal, slug)
        await store.delete(conn, row)
        await record_pg(conn, principal, "indicator.delete", "indicator", slug, remote_addr=client_address(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.post(
    "/indicators/{slug}/compute",
    response_model=ComputeResult,
    summary="Compute an indicator now: its dirty periods, or all of them (its writers)",
    responses={403: {"description": "may not write it"}, 404: {"description": "no such indicator"}},
)
async def compute_indicator(
    slug: str,
    engine: EngineDep,
    principal: PublisherDep,
    full: Annotated[bool, Query(description="recompute every period, not only the dirty ones")] = False,
) -> ComputeResult:
    async with _read(engine) as conn:
        row = await store.get(conn, principal, slug)
        check_dataset_write(principal, row.dataset_id)
        if full:
            await store.mark_all(conn, row.id)
        report = await compute.process_dirty(conn)
    return ComputeResult(computed=[r.as_dict() for r in report.computed], seconds=report.seconds)


MEDIA = {"json": "application/json", "csv": "text/csv; charset=utf-8", "parquet": "application/vnd.apache.parquet"}


@router.get(
    "/indicators/{slug}/values",
    summary="An indicator's values by unit and period (JSON, CSV or Parquet)",
    response_model=ValuesPage,
    responses={
        200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}},
        404: {"description": "no such indicator, or restricted"},
    },
)
async def indicator_values(
    slug: str,
    request: Request,
    engine: EngineDep,
    principal: PrincipalDep,
    unit: Annotated[list[str], Query(max_length=100, description="unit codes (repeat for several)")] = [],  # noqa: B006
    start: Annotated[datetime | None, Query(description="periods starting at or after this instant")] = None,
    end: Annotated[datetime | None, Query(description="periods starting before this instant")] = None,
    format: Annotated[Literal["json", "csv", "parquet"], Query()] = "json",
    limit: Annotated[int, Query(ge=1, le=100_000)] = 1000,
    offset: Annotated[int, Query(ge=0, le=10_000_000)] = 0,
) -> Any:
    async with _read(engine) as conn:
        row = await store.get(conn, principal, slug)
        items, total = await read.series(conn, row, units=unit, start=start, end=end, limit=limit, offset=offset)
    if format == "csv":
        return Response(
            read.to_csv(items),
            media_type=MEDIA["csv"],
            headers={"Content-Disposition": f'attachment; filename="indicateur-{slug}.csv"'},
        )
    if format == "parquet":
        return Response(
            read.to_parquet(items),
            media_type=MEDIA["parquet"],
            headers={"Content-Disposition": f'attachment; filename="indicateur-{slug}.parquet"'},
        )
    following = None
    if offset + limit < total:
        following = str(request.url.include_query_params(offset=offset + limit))
    return ValuesPage(indicator=slug, items=items, total=total, limit=limit, offset=offset, next=following)


# --- divisions -------------------------------------------------------------------------------------------------


class DivisionList(BaseModel):
    items: list[divisions.DivisionPublic]


@router.get("/divisions", response_model=DivisionList, summary="Territorial divisions (polygon datasets declared)")
async def list_divisions(engine: EngineDep, principal: PrincipalDep) -> DivisionList:
    async with _read(engine) as conn:
        found = await divisions.all_visible(conn, principal)
        return DivisionList(items=[await divisions.public(conn, d) for d in found])


@router.put(
    "/divisions/{slug}",
    response_model=divisions.DivisionPublic,
    summary="Declare a polygon dataset a territorial division (its writers)",
    responses={403: {"description": "may not write the dataset"}, 404: {"description": "no such dataset"}},
)
async def declare_division(
    slug: str, body: divisions.DivisionDeclaration, engine: EngineDep, principal: PublisherDep, request: Request
) -> divisions.DivisionPublic:
    async with _tx(engine) as (_, conn):
        dataset_id = await conn.fetchval("SELECT id FROM dataset WHERE slug = $1", slug)
        declared = await divisions.declare(conn, principal, slug, body)  # 404 first for what it may not see
        check_dataset_write(principal, dataset_id)
        await record_pg(conn, principal, "division.declare", "dataset", slug, remote_addr=client_address(request))
    return declared


@router.delete(
    "/divisions/{slug}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Undeclare a division (the dataset stays)",
    responses={403: {"description": "may not write the dataset"}, 404: {"description": "no such division"}},
)
async def remove_division(slug: str, engine: EngineDep, principal: PublisherDep, request: Request) -> Response:
    async with _tx(engine) as (_, conn):
        division = await divisions.get(conn, principal, slug)
        check_dataset_write(principal, division.dataset_id)
        await divisions.remove(conn, principal, slug)
        await record_pg(conn, principal, "division.remove", "dataset", slug, remote_addr=client_address(request))
    return Response(status_code=status.HTTP_204_NO_CONTENT)
