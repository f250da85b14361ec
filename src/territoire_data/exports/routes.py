"""Records (a tabular query of a dataset) and streamed bulk exports under /api/v1."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from typing import Any, Literal
from urllib.parse import urlencode

import asyncpg
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.auth.deps import get_principal
from territoire_data.db.params import Params
from territoire_data.db.readpool import read_pool
from territoire_data.deps import read_connection, standby_pool
from territoire_data.errors import BadRequestError, NotFoundError
from territoire_data.exports import stream
from territoire_data.exports.gis import GIS_FORMATS, file_chunks, new_folder, write_gis
from territoire_data.query import cql2sql
from territoire_data.query.caching import etag_for, not_modified, validators
from territoire_data.query.collections import Collection, get_collection
from territoire_data.query.crs import parse_crs
from territoire_data.query.dbaccess import fetch_checked
from territoire_data.query.items import ItemsQuery, count_sql, records_sql
from territoire_data.query.params import (
    parse_bbox,
    parse_datetime,
    parse_limit,
    parse_offset,
    parse_properties,
    parse_sortby,
)
from territoire_data.settings import Settings
from territoire_data.streaming import StreamedResponse

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/api/v1", tags=["Records and exports"])

RECORDS_MAX = 1_000
RECORDS_COUNT_CAP = 100_000
MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "geojson": "application/geo+json",
    "parquet": "application/vnd.apache.parquet",
    **{name: spec.media_type for name, spec in GIS_FORMATS.items()},
}

WHERE = Query(None, description="Filter in CQL2 text (or CQL2 JSON), e.g. `n > 3 AND code LIKE 'A%'`")
SELECT = Query(None, alias="select", description="Comma-separated fields to return (default: all)")
ORDER_BY = Query(None, description="Comma-separated fields, `-` prefix for descending, e.g. `-date,code`")
BBOX = Query(None, description="minx,miny,maxx,maxy in bbox_crs (default CRS84 lon/lat)")
BBOX_CRS = Query(None, description="CRS of bbox (EPSG:4326, EPSG:2154, EPSG:3857, CRS84)")
DATETIME = Query(None, description="Instant or interval (a/b, ../b, a/..) on the first date/datetime field")
CRS = Query(None, description="Target CRS of geometries (CRS84 default, EPSG:4326, EPSG:2154, EPSG:3857)")


@router.get("/datasets/{slug}/records", summary="Query a dataset's records", response_class=Response)
async def records(
    request: Request,
    slug: str,
    where: str | None = WHERE,
    select: str | None = SELECT,
    order_by: str | None = ORDER_BY,
    bbox: str | None = BBOX,
    bbox_crs: str | None = BBOX_CRS,
    datetime_: str | None = Query(None, alias="datetime", description=DATETIME.description),
    crs: str | None = CRS,
    limit: str | None = Query(None, description=f"Page size, 1..{RECORDS_MAX} (default 10)"),
    offset: str | None = Query(None, description="Records to skip"),
) -> Response:
    principal = await get_principal(request)
    async with read_connection(request) as conn:
        collection = await get_collection(conn, slug, principal, sensors=False)
        etag = etag_for("records", collection.dataset_id, collection.modified_at, request.url.query)
        cached = not_modified(request, etag, collection.modified_at)
        if cached is not None:
            return cached
        query = _query(collection, where, select, order_by, bbox, bbox_crs, datetime_, crs)
        query.limit = parse_limit(limit, maximum=RECORDS_MAX)
        query.offset = parse_offset(offset)
        rows = await fetch_checked(conn, *records_sql(collection, query))
        has_next = len(rows) > query.limit
        results = [r[0] for r in rows[: query.limit]]
        if not query.filtered and collection.row_count is not None:
            total: int | None = collection.row_count
        else:
            counted = (await fetch_checked(conn, *count_sql(collection, query, RECORDS_COUNT_CAP)))[0][0]
            total = counted if counted <= RECORDS_COUNT_CAP else None
    base = f"{str(request.app.state.settings.base_url).rstrip('/')}/api/v1/datasets/{collection.id}/records"
    page = {k: v for k, v in request.query_params.items() if k != "offset"}
    links = [{"rel": "self", "href": f"{base}?{request.url.query}" if request.url.query else base}]
    if has_next:
        links.append({"rel": "next", "href": f"{base}?{urlencode({**page, 'offset': query.offset + query.limit})}"})
    if query.offset > 0:
        previous = max(0, query.offset - query.limit)
        links.append({"rel": "prev", "href": f"{base}?{urlencode({**page, 'offset': previous})}"})
    tail: dict[str, Any] = {"links": links}
    if total is not None:
        tail = {"total_count": total, **tail}
    body = b'{"results":[' + ",".join(results).encode() + b"]," + orjson.dumps(tail)[1:]
    headers = validators(etag, collection.modified_at)
    headers["Content-Crs"] = query.crs.header
    return Response(body, media_type="application/json", headers=headers)


@router.get(
    "/datasets/{slug}/exports/{fmt}",
    summary="Download a whole dataset (streamed)",
    description="CSV, GeoJSON and GeoParquet (with its 1.1 bbox covering) are streamed as PostgreSQL produces "
    "them; GeoPackage (`gpkg`), FlatGeobuf (`fgb`) and zipped Shapefile (`shapefile`: .shp .shx .dbf .prj .cpg) "
    "are written by GDAL to a temporary file first, then sent. `crs=EPSG:2154` gives Lambert-93.",
    response_class=Response,
)
async def export_dataset(
    request: Request,
    slug: str,
    fmt: Literal["csv", "geojson", "parquet", "gpkg", "fgb", "shapefile"],
    where: str | None = WHERE,
    select: str | None = SELECT,
    order_by: str | None = ORDER_BY,
    bbox: str | None = BBOX,
    bbox_crs: str | None = BBOX_CRS,
    datetime_: str | None = Query(None, alias="datetime", description=DATETIME.description),
    crs: str | None = CRS,
    limit: int | None = Query(None, ge=1, description="At most this many rows"),
    delimiter: Literal[";", ","] = Query(";", description="CSV delimiter"),
    bom: bool = Query(False, description="CSV: start with a UTF-8 byte order mark (Excel)"),
    start: str | None = Query(None, description="Sensor datasets: phenomenon time from (inclusive), RFC 3339"),
    end: str | None = Query(None, description="Sensor datasets: phenomenon time to (exclusive), RFC 3339"),
) -> Response:
    principal = await get_principal(request)
    _check_period(start, end)
    async with read_connection(request) as conn:
        sensors = await stream.visible_sensor_dataset(conn, principal, slug)
        if sensors is None:
            collection = await get_collection(conn, slug, principal, sensors=False)
    if sensors is not None:
        if fmt == "geojson":
            raise BadRequestError("a sensor dataset is exported as csv or parquet (one row per observation)")
        selection = stream.ObservationSelection(start, end, dataset_id=sensors, principal=principal)
        return _observations_response(request, f"{slug}-observations", fmt, selection, delimiter, bom)
    if start or end:
        raise BadRequestError("start and end select a sensor dataset's period; filter a table with datetime")
    async with read_connection(request) as conn:
        etag = etag_for("export", fmt, collection.dataset_id, collection.modified_at, request.url.query)
        cached = not_modified(request, etag, collection.modified_at)
        if cached is not None:
            return cached
        query = _query(collection, where, select, order_by, bbox, bbox_crs, datetime_, crs)
        if fmt in GIS_FORMATS and not collection.has_geometry:
            raise BadRequestError(f"dataset {slug!r} has no geometry: download it as csv or parquet")
        export = stream.ExportQuery(collection, query, limit)
        params = Params()
        # Plan the query now (bound values folded in) so that a bad filter is a 400, not a broken download.
        await fetch_checked(conn, "EXPLAIN " + stream.csv_select(export, params), params.values)
    producer: Callable[[asyncpg.Connection], AsyncIterator[bytes]]
    if fmt == "csv":

        def producer(c: asyncpg.Connection) -> AsyncIterator[bytes]:
            return stream.stream_csv(c, export, delimiter=delimiter, bom=bom)
    elif fmt == "geojson":

        def producer(c: asyncpg.Connection) -> AsyncIterator[bytes]:
            return stream.stream_geojson(c, export)
    else:

        def producer(c: asyncpg.Connection) -> AsyncIterator[bytes]:
            return stream.stream_parquet(c, export)

    headers = validators(etag, collection.modified_at)
    extension = GIS_FORMATS[fmt].extension if fmt in GIS_FORMATS else fmt
    headers["Content-Disposition"] = f'attachment; filename="{collection.id}.{extension}"'
    headers["Content-Crs"] = query.crs.header
    if fmt in GIS_FORMATS:
        # GDAL writes the whole file first (a temporary file, bounded memory): a failure is still a status
        folder = new_folder()
        try:
            async with _export_connection(request.app.state.engine, request.app.state.settings) as conn:
                path = await write_gis(conn, export, fmt, folder)
        except BaseException:
            await asyncio.to_thread(shutil.rmtree, folder, True)
            raise
        headers["Content-Length"] = str(path.stat().st_size)
        return StreamedResponse(file_chunks(path, folder), media_type=MEDIA[fmt], headers=headers)
    stream_body = _streamed(request.app.state.engine, request.app.state.settings, producer, standby_pool(request))
    return StreamedResponse(stream_body, media_type=MEDIA[fmt], headers=headers)


@router.get(
    "/datastreams/{datastream_id}/exports/{fmt}",
    summary="Download a Datastream's observations over a time range (streamed)",
    response_class=Response,
)
async def export_observations(
    request: Request,
    datastream_id: int,
    fmt: Literal["csv", "parquet"],
    start: str | None = Query(None, description="Phenomenon time from (inclusive), RFC 3339"),
    end: str | None = Query(None, description="Phenomenon time to (exclusive), RFC 3339"),
    delimiter: Literal[";", ","] = Query(";", description="CSV delimiter"),
    bom: bool = Query(False, description="CSV: start with a UTF-8 byte order mark (Excel)"),
) -> Response:
    _check_period(start, end)
    principal = await get_principal(request)
    async with read_connection(request) as conn:
        found = await stream.visible_datastream(conn, principal, datastream_id)
    if not found:
        raise NotFoundError(f"no datastream {datastream_id}")
    selection = stream.ObservationSelection(start, end, datastream_id=datastream_id)
    return _observations_response(request, f"datastream-{datastream_id}", fmt, selection, delimiter, bom)


# --- helpers ---------------------------------------------------------------------------------------------------------


def _check_period(start: str | None, end: str | None) -> None:
    for name, value in (("start", start), ("end", end)):
        if value:
            try:
                datetime.fromisoformat(value)
            except ValueError:
                raise BadRequestError(f"{name}: {value!r} is not an RFC 3339 date-time") from None


def _observations_response(
    request: Request, name: str, fmt: str, selection: stream.ObservationSelection, delimiter: str, bom: bool
) -> Response:
    """Observations streamed as CSV or Parquet, on a connection of their own (see _streamed)."""

    def producer(c: asyncpg.Connection) -> AsyncIterator[bytes]:
        if fmt == "csv":
            return stream.stream_observations_csv(c, selection, delimiter=delimiter, bom=bom)
        return stream.stream_observations_parquet(c, selection)

    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    headers = {"Content-Disposition": f'attachment; filename="{name}-{stamp}.{fmt}"', "Cache-Control": "no-cache"}
    stream_body = _streamed(request.app.state.engine, request.app.state.settings, producer, standby_pool(request))
    return StreamedResponse(stream_body, media_type=MEDIA[fmt], headers=headers)


def _query(
    collection: Collection,
    where: str | None,
    select: str | None,
    order_by: str | None,
    bbox: str | None,
    bbox_crs: str | None,
    datetime_: str | None,
    crs: str | None,
) -> ItemsQuery:
    """The same filters as OGC API - Features items, under the names of a records API."""
    return ItemsQuery(
        bbox=parse_bbox(bbox),
        bbox_crs=parse_crs(bbox_crs, parameter="bbox_crs"),
        datetime=parse_datetime(datetime_),
        cql=cql2sql.parse(where, parameter="where") if where else None,
        properties=parse_properties(select, collection, parameter="select"),
        sortby=parse_sortby(order_by, collection, parameter="order_by"),
        crs=parse_crs(crs),
    )


@contextlib.asynccontextmanager
async def _export_connection(engine: AsyncEngine, settings: Settings) -> AsyncIterator[asyncpg.Connection]:
    """A read connection for a whole export, in a read-only transaction without the statement timeout."""
    pool = await read_pool(engine, settings)
    conn = await pool.acquire()
    completed = False
    try:
        async with conn.transaction(readonly=True):
            await conn.execute("SET LOCAL statement_timeout = 0")
            yield conn
        completed = True
    finally:
        if not completed:
            conn.terminate()
        await pool.release(conn)


async def _streamed(
    engine: AsyncEngine,
    settings: Settings,
    producer: Callable[[asyncpg.Connection], AsyncIterator[bytes]],
    standby: asyncpg.Pool | None,
) -> AsyncIterator[bytes]:
    """Run a producer on a connection of its own for the life of the response, without the statement timeout
    (a whole export may take longer than any one API query); a cut download terminates the connection. On the
    standby's pool when the request reads from it (db.replicas)."""
    pool = standby or await read_pool(engine, settings)
    conn = await pool.acquire()
    completed = False
    try:
        async with conn.transaction(readonly=True):
            await conn.execute("SET LOCAL statement_timeout = 0")
            async for chunk in producer(conn):
                yield chunk
        completed = True
    finally:
        if not completed:
            conn.terminate()
        await pool.release(conn)
