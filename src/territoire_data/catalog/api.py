"""Catalog JSON API: /api/v1/datasets (search, facets, paging) and create/update/delete with a publisher key.

Writes need a publisher or admin API key (a publisher owns what it creates, and writes what it was granted);
a key with a read grant sees that restricted dataset; the dataset's writers see its quality warnings.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Annotated, Any
from urllib.parse import urlencode

from fastapi import APIRouter, Depends, Header, Query, Request, Response, status
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from territoire_data.auth.deps import PrincipalDep, PublisherDep, check_dataset_write
from territoire_data.auth.keys import grant_to_key
from territoire_data.auth.policy import ANONYMOUS, Principal
from territoire_data.catalog import dcat, publishing, scdl, store
from territoire_data.catalog.admin import publishing_defaults
from territoire_data.catalog.metadata import (
    DatasetCreate,
    DatasetList,
    DatasetPublic,
    DatasetPublisherView,
    DatasetUpdate,
    FacetValue,
    Link,
    dataset_public,
)
from territoire_data.deps import ConnDep, EngineDep, SettingsDep
from territoire_data.errors import TerritoireError
from territoire_data.settings import Settings

router = APIRouter(prefix="/api/v1/datasets", tags=["catalog"])


async def _check_write(conn: AsyncConnection, principal: Principal, slug: str) -> None:
    """404 when the dataset is not visible to this principal, 403 when it may see but not write it."""
    row = await store.get_dataset(conn, principal, slug)
    check_dataset_write(principal, int(row["id"]))


def search_query(
    q: Annotated[
        str | None, Query(max_length=500, description="full text (French) over title, keywords, description")
    ] = None,
    theme: Annotated[list[str], Query(description="EU data-theme code, e.g. TRAN; repeat for OR")] = [],  # noqa: B006
    licence: Annotated[list[str], Query(description="licence id, e.g. etalab-2.0")] = [],  # noqa: B006
    publisher: Annotated[list[str], Query()] = [],  # noqa: B006
    format: Annotated[list[str], Query(description="csv, geojson, parquet, sensorthings")] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=1_000_000)] = 0,
) -> store.SearchQuery:
    return store.SearchQuery(
        q=q, themes=theme, licences=licence, publishers=publisher, formats=format, limit=limit, offset=offset
    )


SearchDep = Annotated[store.SearchQuery, Depends(search_query)]


def page_url(base: str, query: store.SearchQuery, offset: int) -> str:
    """The URL of another page of the same search (the `next` link)."""
    params: list[tuple[str, str | int]] = []
    if query.q:
        params.append(("q", query.q))
    params += [("theme", v) for v in query.themes] + [("licence", v) for v in query.licences]
    params += [("publisher", v) for v in query.publishers] + [("format", v) for v in query.formats]
    params += [("limit", query.limit), ("offset", offset)]
    return f"{base}?{urlencode(params)}"


@router.get("", response_model=DatasetList, summary="Search the catalog")
async def list_datasets(conn: ConnDep, settings: SettingsDep, principal: PrincipalDep, query: SearchDep) -> DatasetList:
    """Datasets you may see, best match first when searching (else by title), with facets and a `next` link."""
    result = await store.search_datasets(conn, principal, query)
    base = f"{settings.base_url}/api/v1/datasets"
    next_url = page_url(base, query, query.offset + query.limit) if query.offset + query.limit < result.total else None
    links = [Link(rel="self", href=page_url(base, query, query.offset), type="application/json")]
    if next_url:
        links.append(Link(rel="next", href=next_url, type="application/json"))
    if query.offset > 0:
        links.append(
            Link(rel="prev", href=page_url(base, query, max(0, query.offset - query.limit)), type="application/json")
        )
    return DatasetList(
        items=[dataset_public(row, settings.base_url) for row in result.rows],
        total=result.total,
        limit=query.limit,
        offset=query.offset,
        next=next_url,
        facets={
            name: [FacetValue(value=v, label=store.facet_label(name, v), count=n) for v, n in values]
            for name, values in result.facets.items()
        },
        links=links,
    )


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=DatasetPublisherView,
    summary="Create a dataset (publisher)",
    responses={403: {"description": "the key may not write this dataset"}, 409: {"description": "slug taken"}},
)
async def create_dataset(
    body: DatasetCreate, engine: EngineDep, settings: SettingsDep, principal: PublisherDep, response: Response
) -> DatasetPublic:
    async with engine.begin() as conn:
        await store.create_dataset(conn, body, actor=principal.name)
        dataset_id = await conn.scalar(text("SELECT id FROM dataset WHERE slug = :slug"), {"slug": body.slug})
        if principal.role == "publisher" and principal.key_id is not None:
            # A publisher owns what it creates: its key gets the write grant on the new dataset.
            await grant_to_key(conn, principal.key_id, int(dataset_id), "write")
        owner = replace(
            principal,
            readable=principal.readable | {int(dataset_id)},
            writable=principal.writable | {int(dataset_id)},
        )
        row = await store.get_dataset(conn, owner, body.slug)
    response.headers["Location"] = f"{settings.base_url}/api/v1/datasets/{body.slug}"
    return dataset_public(row, settings.base_url, publisher_view=True)


@router.get(
    "/{slug}",
    response_model=DatasetPublisherView | DatasetPublic,
    summary="A dataset's metadata (with quality warnings for its publisher)",
    responses={404: {"description": "no such dataset, or restricted"}},
)
async def get_dataset(slug: str, conn: ConnDep, settings: SettingsDep, principal: PrincipalDep) -> DatasetPublic:
    row = await store.get_dataset(conn, principal, slug)
    return dataset_public(
        row, settings.base_url, publisher_view=principal.is_admin or int(row["id"]) in principal.writable
    )


@router.patch(
    "/{slug}",
    response_model=DatasetPublisherView,
    summary="Update a dataset's metadata (publisher)",
    responses={403: {"description": "the key may not write this dataset"}, 404: {"description": "no such dataset"}},
)
async def update_dataset(
    slug: str, body: DatasetUpdate, engine: EngineDep, settings: SettingsDep, principal: PublisherDep
) -> DatasetPublic:
    async with engine.begin() as conn:
        await _check_write(conn, principal, slug)
        await store.update_dataset(conn, slug, body, actor=principal.name)
        row = await store.get_dataset(conn, principal, slug)
    return dataset_public(row, settings.base_url, publisher_view=True)


@router.post(
    "/{slug}/publish",
    response_model=DatasetPublisherView,
    summary="Publish a draft dataset (publisher): it appears in the portal, the APIs and DCAT",
    responses={
        403: {"description": "the key may not write this dataset"},
        404: {"description": "no such dataset"},
        422: {"description": "metadata missing; the problem's `missing` lists each field to fill"},
    },
)
async def publish_dataset(
    slug: str, engine: EngineDep, settings: SettingsDep, principal: PublisherDep
) -> DatasetPublic:
    async with engine.begin() as conn:
        await _check_write(conn, principal, slug)
        await publishing.publish(conn, slug, actor=principal.name, defaults=publishing_defaults(settings))
        row = await store.get_dataset(conn, principal, slug)
    return dataset_public(row, settings.base_url, publisher_view=True)


@router.post(
    "/{slug}/unpublish",
    response_model=DatasetPublisherView,
    summary="Make a dataset a draft again (publisher): 404 to the public on every door",
    responses={403: {"description": "the key may not write this dataset"}, 404: {"description": "no such dataset"}},
)
async def unpublish_dataset(
    slug: str, engine: EngineDep, settings: SettingsDep, principal: PublisherDep
) -> DatasetPublic:
    async with engine.begin() as conn:
        await _check_write(conn, principal, slug)
        await publishing.unpublish(conn, slug, actor=principal.name)
        row = await store.get_dataset(conn, principal, slug)
    return dataset_public(row, settings.base_url, publisher_view=True)


@router.delete(
    "/{slug}",
    status_code=status.HTTP_204_NO_CONTENT,
    summary="Delete a dataset and its data (publisher)",
    responses={403: {"description": "the key may not write this dataset"}, 404: {"description": "no such dataset"}},
)
async def delete_dataset(slug: str, engine: EngineDep, principal: PublisherDep, request: Request) -> Response:
    async with engine.begin() as conn:
        await _check_write(conn, principal, slug)
        await store.delete_dataset(conn, slug, actor=principal.name)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


# --- DCAT-AP -----------------------------------------------------------------------------------------------

dcat_router = APIRouter(prefix="/dcat", tags=["dcat"])
DCAT_DEFAULT_PAGE_SIZE = 100


class NotAcceptableError(TerritoireError):
    status = 406
    title = "Not acceptable"
    type_slug = "not-acceptable"


async def _dcat_response(
    conn: AsyncConnection, settings: Settings, extension: str, page: int, page_size: int
) -> Response:
    result = await store.list_public_datasets(conn, ANONYMOUS, limit=page_size, offset=(page - 1) * page_size)
    datasets = [dataset_public(row, settings.base_url) for row in result.rows]
    info = dcat.CatalogInfo(
        base_url=settings.base_url, title=settings.catalog_title, publisher=settings.catalog_publisher
    )
    paging = dcat.Page(
        number=page, size=page_size, total=result.total, extension=extension, default_size=DCAT_DEFAULT_PAGE_SIZE
    )
    body, media_type = dcat.serialise(dcat.catalog_graph(datasets, info, paging), extension)
    return Response(body, media_type=media_type, headers={"Vary": "Accept"})


PageDep = Annotated[int, Query(ge=1, le=100_000, description="page number, from 1")]
PageSizeDep = Annotated[int, Query(ge=1, le=1000, description="datasets per page")]
DCAT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": {media: {} for _, media in dcat.SERIALISATIONS.values()}, "description": "DCAT-AP catalog"}
}


def _dcat_route(extension: str) -> None:
    media_type = dcat.SERIALISATIONS[extension][1]

    @dcat_router.get(
        f"/catalog.{extension}",
        summary=f"DCAT-AP catalog ({media_type})",
        response_class=Response,
        responses={200: {"content": {media_type: {}}, "description": "DCAT-AP catalog, public datasets only"}},
        name=f"dcat_catalog_{extension}",
    )
    async def catalog(
        conn: ConnDep, settings: SettingsDep, page: PageDep = 1, page_size: PageSizeDep = DCAT_DEFAULT_PAGE_SIZE
    ) -> Response:
        return await _dcat_response(conn, settings, extension, page, page_size)


for _extension in dcat.SERIALISATIONS:
    _dcat_route(_extension)


@dcat_router.get(
    "/catalog",
    summary="DCAT-AP catalog, format chosen by the Accept header (JSON-LD, Turtle, RDF/XML)",
    response_class=Response,
    responses={**DCAT_RESPONSES, 406: {"description": "no serialisation fits the Accept header"}},
)
async def dcat_catalog(
    conn: ConnDep,
    settings: SettingsDep,
    accept: Annotated[str | None, Header()] = None,
    page: PageDep = 1,
    page_size: PageSizeDep = DCAT_DEFAULT_PAGE_SIZE,
) -> Response:
    extension = dcat.negotiate(accept)
    if extension is None:
        raise NotAcceptableError(
            "the catalog is served as application/ld+json, text/turtle or application/rdf+xml",
            available=sorted({media for _, media in dcat.SERIALISATIONS.values()}),
        )
    return await _dcat_response(conn, settings, extension, page, page_size)


def _dataset_record_route(extension: str) -> None:
    media_type = dcat.SERIALISATIONS[extension][1]

    @dcat_router.get(
        f"/datasets/{{slug}}.{extension}",
        summary=f"One dataset's DCAT-AP record ({media_type})",
        response_class=Response,
        responses={
            200: {"content": {media_type: {}}, "description": "the dataset, its distributions and data services"},
            404: {"description": "no such public dataset"},
        },
        name=f"dcat_dataset_{extension}",
    )
    async def dataset_record(slug: str, conn: ConnDep, settings: SettingsDep) -> Response:
        row = await store.get_dataset(conn, ANONYMOUS, slug)  # restricted or draft: 404, as everywhere
        info = dcat.CatalogInfo(
            base_url=settings.base_url, title=settings.catalog_title, publisher=settings.catalog_publisher
        )
        graph = dcat.dataset_graph(dataset_public(row, settings.base_url), info)
        body, media = dcat.serialise(graph, extension)
        return Response(body, media_type=media)


for _extension in dcat.SERIALISATIONS:
    _dataset_record_route(_extension)


@dcat_router.get(
    "/catalog.scdl.csv",
    summary="The catalog in the SCDL 'catalogue simplifié' CSV schema (OpenDataFrance)",
    response_class=Response,
    responses={200: {"content": {"text/csv": {}}, "description": "one row per public dataset"}},
)
async def scdl_catalog(conn: ConnDep, settings: SettingsDep) -> Response:
    datasets: list[DatasetPublic] = []
    offset = 0
    while True:
        result = await store.list_public_datasets(conn, ANONYMOUS, limit=500, offset=offset)
        datasets += [dataset_public(row, settings.base_url) for row in result.rows]
        offset += 500
        if offset >= result.total:
            break
    body = scdl.scdl_csv(
        datasets,
        base_url=settings.base_url,
        organisation=settings.catalog_publisher or settings.catalog_title,
        siret=settings.catalog_publisher_siret,
    )
    return Response(
        body.encode("utf-8"),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="catalogue-scdl.csv"'},
    )
