"""OGC API - Features (Parts 1, 2, 3) under /ogcapi: landing, conformance, api, collections, items, queryables."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import urlencode

import asyncpg
import orjson
from fastapi import APIRouter, Query, Request
from fastapi.responses import Response

from territoire_data.auth.deps import get_principal
from territoire_data.auth.policy import Principal
from territoire_data.catalog.dcat import SERIALISATIONS
from territoire_data.catalog.metadata import LICENCES
from territoire_data.deps import read_connection
from territoire_data.errors import BadRequestError, NotFoundError, TerritoireError
from territoire_data.features import html, tiles
from territoire_data.query import cql2sql
from territoire_data.query.caching import etag_for, not_modified, validators
from territoire_data.query.collections import FIELD_TYPES, Collection, get_collection, list_collections, recall
from territoire_data.query.crs import CRS84, parse_crs, supported_uris
from territoire_data.query.dbaccess import fetch_checked
from territoire_data.query.items import ItemsQuery, count_sql, item_sql, items_sql
from territoire_data.query.params import (
    RESERVED,
    parse_after_id,
    parse_bbox,
    parse_bool,
    parse_datetime,
    parse_limit,
    parse_offset,
    parse_properties,
    parse_sortby,
    property_filters,
)

logger = logging.getLogger(__name__)

router = APIRouter(prefix="/ogcapi", tags=["OGC API - Features"])

GEOJSON = "application/geo+json"
JSON = "application/json"
HTML = "text/html"
SCHEMA_JSON = "application/schema+json"
OPENAPI_JSON = "application/vnd.oai.openapi+json;version=3.0"
# Beyond this many matches, numberMatched (optional in Part 1) is left out rather than counted.
COUNT_CAP = 100_000

CONFORMANCE = (
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/geojson",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/html",
    "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/oas30",
    "http://www.opengis.net/spec/ogcapi-features-2/1.0/conf/crs",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/features-filter",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables",
    "http://www.opengis.net/spec/ogcapi-features-3/1.0/conf/queryables-query-parameters",
    *cql2sql.CONFORMANCE,
    *tiles.CONFORMANCE,
)

FORMAT_PARAM = Query(None, description="Output format: json (default) or html", pattern="^(json|geojson|html)$")


def _base(request: Request) -> str:
    return str(request.app.state.settings.base_url).rstrip("/") + "/ogcapi"


def _wants_html(request: Request) -> bool:
    f = request.query_params.get("f")
    if f:
        return f == "html"
    accept = request.headers.get("accept", "")
    return HTML in accept and "json" not in accept.split(HTML)[0]


def _json(body: Any, media_type: str = JSON, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), media_type=media_type, headers=headers)


def _link(href: str, rel: str, media_type: str, title: str) -> dict[str, str]:
    return {"href": href, "rel": rel, "type": media_type, "title": title}


def _url(base: str, params: dict[str, str]) -> str:
    return f"{base}?{urlencode(params)}" if params else base


def _self_links(url: str, params: dict[str, str], json_type: str, html_page: bool) -> list[dict[str, str]]:
    as_json = _url(url, {**params, "f": "json"})
    as_html = _url(url, {**params, "f": "html"})
    return [
        _link(as_html if html_page else as_json, "self", HTML if html_page else json_type, "this document"),
        _link(as_json if html_page else as_html, "alternate", json_type if html_page else HTML, "this document"),
    ]


def _query_dict(request: Request) -> dict[str, str]:
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key == "lang":  # the HTML pages' language, not a query of the data
            continue
        if key in params:
            raise BadRequestError(f"{key}: given more than once")
        params[key] = value
    return params


# --- landing, conformance, api -------------------------------------------------------------------------------


@router.get("", summary="Landing page", response_class=Response)
async def landing(request: Request, f: str | None = FORMAT_PARAM) -> Response:
    base = _base(request)
    links = [
        *_self_links(base, {}, JSON, _wants_html(request)),
        _link(f"{base}/api", "service-desc", OPENAPI_JSON, "the API definition"),
        _link(f"{base}/api?f=html", "service-doc", HTML, "the API documentation"),
        _link(f"{base}/conformance", "conformance", JSON, "conformance classes"),
        _link(f"{base}/collections", "data", JSON, "collections"),
        _link(
            f"{base}/tileMatrixSets", "http://www.opengis.net/def/rel/ogc/1.0/tiling-schemes", JSON, "tiling schemes"
        ),
    ]
    body = {
        "title": "territoire-data — OGC API – Features",
        "description": "Datasets and the sensor network of the territory, as OGC API – Features collections.",
        "links": links,
    }
    if _wants_html(request):
        return html.render("landing.html", request, body=body)
    return _json(body)


@router.get("/conformance", summary="Conformance classes", response_class=Response)
async def conformance(request: Request, f: str | None = FORMAT_PARAM) -> Response:
    body = {"conformsTo": list(CONFORMANCE)}
    if _wants_html(request):
        return html.render("conformance.html", request, body=body)
    return _json(body)


@router.get("/api", summary="API definition (OpenAPI 3.0)", response_class=Response)
async def api_definition(request: Request, f: str | None = FORMAT_PARAM) -> Response:
    if _wants_html(request):
        root = request.scope.get("root_path", "").rstrip("/")
        return Response(status_code=303, headers={"Location": f"{root}/docs"})
    principal = await get_principal(request)
    async with read_connection(request) as conn:
        found = await list_collections(conn, principal)
    document = openapi_30(request.app.openapi(), prefix="/ogcapi", server=_base(request), collections=found)
    return _json(document, OPENAPI_JSON)


def _convert_30(node: Any) -> Any:
    """OpenAPI 3.1 schema -> 3.0: `anyOf [X, {type: null}]` becomes X with `nullable: true`."""
    if isinstance(node, dict):
        out = {k: _convert_30(v) for k, v in node.items() if k != "examples" or not isinstance(v, list)}
        for key in ("anyOf", "oneOf"):
            options = out.get(key)
            if isinstance(options, list) and {"type": "null"} in options:
                rest = [o for o in options if o != {"type": "null"}]
                del out[key]
                if len(rest) == 1:
                    out.update(rest[0])
                else:
                    out[key] = rest
                out["nullable"] = True
        return out
    if isinstance(node, list):
        return [_convert_30(v) for v in node]
    return node


def _items_parameters() -> list[dict[str, Any]]:
    """The query parameters of items, as clients (GDAL, QGIS) look for them in the API definition."""
    text = {"type": "string"}
    return [
        {"name": "limit", "in": "query", "schema": {"type": "integer", "minimum": 1, "maximum": 10000, "default": 10}},
        {"name": "offset", "in": "query", "schema": {"type": "integer", "minimum": 0, "default": 0}},
        {
            "name": "after-id",
            "in": "query",
            "description": "Keyset paging, as in our next links: the features whose id is greater than this one "
            "(id order only, not with sortby); offset then only numbers the page.",
            "schema": {"type": "integer"},
        },
        {
            "name": "bbox",
            "in": "query",
            "style": "form",
            "explode": False,
            "schema": {"type": "array", "minItems": 4, "maxItems": 6, "items": {"type": "number"}},
        },
        {"name": "bbox-crs", "in": "query", "schema": {"type": "string", "format": "uri"}},
        {"name": "datetime", "in": "query", "schema": text},
        {"name": "crs", "in": "query", "schema": {"type": "string", "format": "uri"}},
        {"name": "properties", "in": "query", "schema": text},
        {"name": "sortby", "in": "query", "schema": text},
        {"name": "skipGeometry", "in": "query", "schema": {"type": "boolean"}},
        {"name": "filter", "in": "query", "schema": text},
        {
            "name": "filter-lang",
            "in": "query",
            "schema": {"type": "string", "enum": list(cql2sql.FILTER_LANGS), "default": "cql2-text"},
        },
        {"name": "filter-crs", "in": "query", "schema": {"type": "string", "format": "uri"}},
        {"name": "f", "in": "query", "schema": {"type": "string", "enum": ["json", "html"]}},
    ]


def openapi_30(
    document: dict[str, Any], prefix: str, server: str, collections: list[Collection] | None = None
) -> dict[str, Any]:
    """The app's OpenAPI document for `prefix`, in OpenAPI 3.0, with paths relative to the landing page.

    Each collection gets its own items path listing its properties as equality-filter parameters, which is how
    GDAL's OAPIF driver learns which filters it may send to the server rather than evaluate itself.
    """
    paths: dict[str, Any] = {}
    for path, value in document.get("paths", {}).items():
        if path == prefix or path.startswith(prefix + "/"):
            paths[path[len(prefix) :] or "/"] = value
    generic = paths.get("/collections/{collectionId}/items", {}).get("get")
    if generic is not None:
        generic["parameters"] = [
            p for p in generic.get("parameters", []) if p.get("in") == "path"
        ] + _items_parameters()
    for collection in collections or []:
        fields = [
            {
                "name": f.name,
                "in": "query",
                "required": False,
                "description": f.title or f.name,
                "schema": dict(FIELD_TYPES.get(f.type, FIELD_TYPES["any"])[1]),
            }
            for f in collection.fields
            if f.name not in RESERVED
        ]
        paths[f"/collections/{collection.id}/items"] = {
            "get": {
                "summary": f"Features of {collection.title}",
                "operationId": f"items_{collection.id}",
                "tags": ["OGC API - Features"],
                "parameters": _items_parameters() + fields,
                "responses": {
                    "200": {
                        "description": "GeoJSON FeatureCollection",
                        "content": {GEOJSON: {"schema": {"type": "object"}}},
                    }
                },
            }
        }
    converted: dict[str, Any] = _convert_30({**document, "paths": paths})
    converted["openapi"] = "3.0.3"
    converted["servers"] = [{"url": server}]
    info = {k: v for k, v in document.get("info", {}).items() if k != "license"}
    converted["info"] = {
        **info,
        "title": "territoire-data — OGC API – Features",
        "license": {"name": "EUPL-1.2", "url": "https://eupl.eu/1.2/fr/"},
    }
    return converted


# --- collections -----------------------------------------------------------------------------------------------


def _collection_body(collection: Collection, base: str, html_page: bool) -> dict[str, Any]:
    url = f"{base}/collections/{collection.id}"
    links = [
        *_self_links(url, {}, JSON, html_page),
        _link(f"{url}/items?f=json", "items", GEOJSON, "features (GeoJSON)"),
        _link(f"{url}/items?f=html", "items", HTML, "features (HTML)"),
        _link(f"{url}/queryables", "http://www.opengis.net/def/rel/ogc/1.0/queryables", SCHEMA_JSON, "queryables"),
        _link(f"{url}/tiles", "http://www.opengis.net/def/rel/ogc/1.0/tilesets-vector", JSON, "vector tiles"),
    ]
    licence = LICENCES.get(collection.licence or "")
    if licence is not None:  # the licence's URL (what harvesters and people follow), not our id for it
        links.append({"href": licence.url, "rel": "license", "type": "text/html", "title": licence.title})
    # The dataset's DCAT-AP record: what harvesters and catalogue-aware clients read about it
    root = base.rsplit("/ogcapi", 1)[0]
    for extension, (_, media_type) in SERIALISATIONS.items():
        links.append(
            _link(f"{root}/dcat/datasets/{collection.id}.{extension}", "describedby", media_type, "DCAT-AP record")
        )
    extent: dict[str, Any] = {}
    if collection.bbox is not None:
        extent["spatial"] = {"bbox": [list(collection.bbox)], "crs": CRS84}
    start, end = collection.temporal
    if start is not None or end is not None:
        extent["temporal"] = {
            "interval": [[start.isoformat() if start else None, end.isoformat() if end else None]],
            "trs": "http://www.opengis.net/def/uom/ISO-8601/0/Gregorian",
        }
    body: dict[str, Any] = {
        "id": collection.id,
        "title": collection.title,
        "description": collection.description,
        "keywords": list(collection.keywords),
        "itemType": "feature",
        "links": links,
        "crs": supported_uris(),
        "storageCrs": CRS84,
    }
    if extent:
        body["extent"] = extent
    return body


def _collections_etag(collections: list[Collection]) -> tuple[str | None, datetime | None]:
    """Table datasets carry modified_at; the sensor network has none, so no validator for a list holding it."""
    if any(c.modified_at is None for c in collections):
        return None, None
    modified = max((c.modified_at for c in collections if c.modified_at), default=None)
    return etag_for("collections", [(c.id, c.modified_at) for c in collections]), modified


@router.get("/collections", summary="Collections", response_class=Response)
async def collections(request: Request, f: str | None = FORMAT_PARAM) -> Response:
    html_page = _wants_html(request)
    principal = await get_principal(request)
    async with read_connection(request) as conn:
        found = await list_collections(conn, principal)
    base = _base(request)
    etag, modified = _collections_etag(found)
    body = {
        "links": _self_links(f"{base}/collections", {}, JSON, html_page),
        "crs": supported_uris(),
        "collections": [_collection_body(c, base, html_page) for c in found],
    }
    if html_page:
        return html.render("collections.html", request, body=body)
    # The sensor network has no modification time: then the validator is the body's own digest.
    etag = etag or etag_for("collections-body", body)
    cached = not_modified(request, etag, modified)
    if cached is not None:
        return cached
    return _json(body, headers=validators(etag, modified))


@router.get("/collections/{collectionId}", summary="One collection", response_class=Response)
async def collection(request: Request, collectionId: str, f: str | None = FORMAT_PARAM) -> Response:
    html_page = _wants_html(request)
    principal = await get_principal(request)
    async with read_connection(request) as conn:
        found = await get_collection(conn, collectionId, principal)
    etag = None
    if found.modified_at is not None:
        etag = etag_for("collection", found.id, found.dataset_id, found.modified_at, html_page)
    cached = not_modified(request, etag, found.modified_at)
    if cached is not None:
        return cached
    body = _collection_body(found, _base(request), html_page)
    if html_page:
        return html.render("collection.html", request, body=body, headers=validators(etag, found.modified_at))
    return _json(body, headers=validators(etag or etag_for("collection-body", body), found.modified_at))


@router.get("/collections/{collectionId}/queryables", summary="Queryables (JSON Schema)", response_class=Response)
async def queryables(request: Request, collectionId: str, f: str | None = FORMAT_PARAM) -> Response:
    principal = await get_principal(request)
    async with read_connection(request) as conn:
        found = await get_collection(conn, collectionId, principal)
    properties: dict[str, Any] = {
        "geometry": {"format": "geometry-any", "title": "Géométrie", "x-ogc-role": "primary-geometry"},
        "id": {"type": "integer", "title": "Identifiant", "x-ogc-role": "id"},
    }
    for field in found.fields:
        schema = dict(FIELD_TYPES.get(field.type, FIELD_TYPES["any"])[1])
        if field.title:
            schema["title"] = field.title
        if field.description:
            schema["description"] = field.description
        properties[field.name] = schema
    body = {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"{_base(request)}/collections/{found.id}/queryables",
        "type": "object",
        "title": found.title,
        "properties": properties,
        "additionalProperties": False,
    }
    if _wants_html(request):
        return html.render("queryables.html", request, body=body)
    return _json(body, SCHEMA_JSON, headers=validators(etag_for("queryables", body), found.modified_at))


# --- items -----------------------------------------------------------------------------------------------------


def parse_items_query(params: dict[str, str], collection: Collection) -> ItemsQuery:
    """Every parameter of an items request, each by its own small parser."""
    filter_text = params.get("filter")
    return ItemsQuery(
        bbox=parse_bbox(params.get("bbox")),
        bbox_crs=parse_crs(params.get("bbox-crs"), parameter="bbox-crs"),
        datetime=parse_datetime(params.get("datetime")),
        equals=property_filters(params, collection),
        cql=cql2sql.parse(filter_text, params.get("filter-lang")) if filter_text else None,
        filter_crs=parse_crs(params.get("filter-crs"), parameter="filter-crs"),
        properties=parse_properties(params.get("properties"), collection),
        sortby=parse_sortby(params.get("sortby"), collection),
        crs=parse_crs(params.get("crs")),
        skip_geometry=parse_bool(params.get("skipGeometry"), "skipGeometry"),
        limit=parse_limit(params.get("limit")),
        offset=parse_offset(params.get("offset")),
        after_id=parse_after_id(params.get("after-id")),
    )


def _items_etag(request: Request, collection: Collection, html_page: bool) -> str | None:
    if collection.modified_at is None:
        return None
    return etag_for("items", collection.id, collection.dataset_id, collection.modified_at, request.url.query, html_page)


T = TypeVar("T")


async def _from_cache(
    request: Request, collection_id: str, run: Callable[[Collection], Awaitable[T | None]]
) -> tuple[Collection, T] | None:
    """Answer from the cached collection in one round trip when possible (the SQL re-checks it: guard_sql).

    None means: take the long way (nothing cached, a conditional request, a stale or hidden dataset, an error
    that the long way will report properly).
    """
    if "if-none-match" in request.headers or "if-modified-since" in request.headers:
        return None
    collection = recall(collection_id)
    if collection is None:
        return None
    try:
        result = await run(collection)
    except (TerritoireError, asyncpg.UndefinedTableError):  # the table went with its dataset: the long way 404s
        return None
    return None if result is None else (collection, result)


async def _items_fast(
    conn: asyncpg.Connection, collection: Collection, params: dict[str, str], principal: Principal
) -> tuple[ItemsQuery, list[asyncpg.Record]] | None:
    query = parse_items_query(params, collection)
    rows = await fetch_checked(conn, *items_sql(collection, query, guarded=True, principal=principal))
    return (query, rows) if rows else None


@router.get("/collections/{collectionId}/items", summary="Features", response_class=Response)
async def items(request: Request, collectionId: str, f: str | None = FORMAT_PARAM) -> Response:
    params = _query_dict(request)
    html_page = _wants_html(request)
    principal = await get_principal(request)
    async with read_connection(request) as conn:
        fast = await _from_cache(request, collectionId, lambda c: _items_fast(conn, c, params, principal))
        if fast is not None:
            found, (query, rows) = fast
            etag = _items_etag(request, found, html_page)
        else:
            found = await get_collection(conn, collectionId, principal)
            etag = _items_etag(request, found, html_page)
            cached = not_modified(request, etag, found.modified_at)
            if cached is not None:
                return cached
            query = parse_items_query(params, found)
            rows = await fetch_checked(conn, *items_sql(found, query))
        has_next = len(rows) > query.limit
        features = [r[0] for r in rows[: query.limit]]
        matched: int | None = None
        if not query.filtered and found.row_count is not None:
            matched = found.row_count
        elif query.offset == 0 and query.after_id is None and not has_next:
            matched = len(features)
        else:
            counted = (await fetch_checked(conn, *count_sql(found, query, COUNT_CAP)))[0][0]
            matched = counted if counted <= COUNT_CAP else None
    base = _base(request)
    url = f"{base}/collections/{found.id}/items"
    page_params = {k: v for k, v in params.items() if k not in ("f", "offset", "after-id")}
    links = _self_links(url, params, GEOJSON, html_page)
    if has_next:
        next_params = {**page_params, "offset": str(query.offset + query.limit)}
        if not query.sortby:  # in id order the next page starts after this page's last id: no rows counted past
            next_params["after-id"] = str(rows[query.limit - 1][1])
        next_params["f"] = "html" if html_page else "json"
        links.append(_link(_url(url, next_params), "next", HTML if html_page else GEOJSON, "next page"))
    if query.offset > 0:
        prev_params = {**page_params, "offset": str(max(0, query.offset - query.limit))}
        prev_params["f"] = "html" if html_page else "json"
        links.append(_link(_url(url, prev_params), "prev", HTML if html_page else GEOJSON, "previous page"))
    links.append(_link(f"{base}/collections/{found.id}", "collection", JSON, "the collection"))
    tail: dict[str, Any] = {
        "timeStamp": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "numberReturned": len(features),
    }
    if matched is not None:
        tail["numberMatched"] = matched
    tail["links"] = links
    headers = validators(etag, found.modified_at)
    headers["Content-Crs"] = query.crs.header
    if html_page:
        return html.render(
            "items.html",
            request,
            body={
                "collection": found,
                "features": [orjson.loads(x) for x in features],
                "json_url": _url(url, {**params, "f": "json"}),
                **tail,
            },
            headers=headers,
        )
    body = b'{"type":"FeatureCollection","features":[' + ",".join(features).encode() + b"]," + orjson.dumps(tail)[1:]
    return Response(body, media_type=GEOJSON, headers=headers)


@router.get("/collections/{collectionId}/items/{featureId}", summary="One feature", response_class=Response)
async def item(request: Request, collectionId: str, featureId: str, f: str | None = FORMAT_PARAM) -> Response:
    params = _query_dict(request)
    unknown = set(params) - {"f", "crs", "properties", "skipGeometry"}
    if unknown:
        raise BadRequestError(f"unknown query parameter {sorted(unknown)[0]!r}")
    html_page = _wants_html(request)
    try:
        fid = int(featureId)
    except ValueError:
        raise NotFoundError(f"no feature {featureId!r} in {collectionId!r}") from None

    def item_query(collection: Collection) -> ItemsQuery:
        return ItemsQuery(
            crs=parse_crs(params.get("crs")),
            properties=parse_properties(params.get("properties"), collection),
            skip_geometry=parse_bool(params.get("skipGeometry"), "skipGeometry"),
        )

    async def item_fast(collection: Collection) -> tuple[ItemsQuery, list[asyncpg.Record]] | None:
        query = item_query(collection)
        rows = await fetch_checked(conn, *item_sql(collection, query, fid, guarded=True, principal=principal))
        return (query, rows) if rows else None

    principal = await get_principal(request)
    async with read_connection(request) as conn:
        fast = await _from_cache(request, collectionId, item_fast)
        if fast is not None:
            found, (query, rows) = fast
            etag = _items_etag(request, found, html_page)
            etag = etag_for(etag, featureId) if etag else None
        else:
            found = await get_collection(conn, collectionId, principal)
            etag = _items_etag(request, found, html_page)
            if etag is not None:
                etag = etag_for(etag, featureId)
            cached = not_modified(request, etag, found.modified_at)
            if cached is not None:
                return cached
            query = item_query(found)
            rows = await fetch_checked(conn, *item_sql(found, query, fid))
    if not rows:
        raise NotFoundError(f"no feature {featureId!r} in {collectionId!r}")
    base = _base(request)
    url = f"{base}/collections/{found.id}/items/{fid}"
    links = [
        *_self_links(url, {k: v for k, v in params.items() if k != "f"}, GEOJSON, html_page),
        _link(f"{base}/collections/{found.id}", "collection", JSON, "the collection"),
    ]
    headers = validators(etag, found.modified_at)
    headers["Content-Crs"] = query.crs.header
    feature_text: str = rows[0][0]
    if html_page:
        return html.render(
            "item.html",
            request,
            body={"collection": found, "feature": orjson.loads(feature_text), "links": links},
            headers=headers,
        )
    body = feature_text[:-1].encode() + b',"links":' + orjson.dumps(links) + b"}"
    return Response(body, media_type=GEOJSON, headers=headers)


# --- vector tiles ---------------------------------------------------------------------------------------------


def _tileset(collection: Collection, base: str) -> dict[str, Any]:
    url = f"{base}/collections/{collection.id}/tiles/{tiles.TMS_ID}"
    template = url + "/{z}/{x}/{y}"
    return {
        "title": f"{collection.title} — tuiles vectorielles",
        "dataType": "vector",
        "crs": "http://www.opengis.net/def/crs/EPSG/0/3857",
        "tileMatrixSetURI": tiles.TMS_URI,
        "minzoom": 0,
        "maxzoom": tiles.MAX_ZOOM,
        # TileJSON-style template for MapLibre / OpenLayers; x is the column, y the row.
        "tiles": [template],
        "links": [
            _link(url, "self", JSON, "this tileset"),
            {
                "href": template.replace("{z}/{x}/{y}", "{tileMatrix}/{tileCol}/{tileRow}"),
                "rel": "item",
                "type": tiles.MVT,
                "templated": True,
                "title": "Mapbox Vector Tiles",
            },
            _link(
                f"{base}/tileMatrixSets/{tiles.TMS_ID}",
                "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme",
                JSON,
                "the tile matrix set",
            ),
            _link(
                f"{base}/collections/{collection.id}",
                "http://www.opengis.net/def/rel/ogc/1.0/geodata",
                JSON,
                "the collection",
            ),
        ],
        "layers": [
            {
                "id": collection.id,
                "dataType": "vector",
                "title": collection.title,
                "propertiesSchema": {
                    "type": "object",
                    "properties": {
                        f.name: dict(FIELD_TYPES.get(f.type, FIELD_TYPES["any"])[1]) for f in collection.fields
                    },
                },
            }
        ],
    }


@router.get("/tileMatrixSets", summary="Tiling schemes (tile matrix sets)", response_class=Response)
async def tile_matrix_sets(request: Request) -> Response:
    base = _base(request)
    definition = f"{base}/tileMatrixSets/{tiles.TMS_ID}"
    return _json(
        {
            "links": [_link(f"{base}/tileMatrixSets", "self", JSON, "tiling schemes")],
            "tileMatrixSets": [
                {
                    "id": tiles.TMS_ID,
                    "title": "Google Maps Compatible for the World",
                    "uri": tiles.TMS_URI,
                    "links": [
                        _link(definition, "http://www.opengis.net/def/rel/ogc/1.0/tiling-scheme", JSON, "definition")
                    ],
                }
            ],
        }
    )


@router.get("/tileMatrixSets/{tileMatrixSetId}", summary="A tiling scheme's definition", response_class=Response)
async def tile_matrix_set(tileMatrixSetId: str) -> Response:
    if tileMatrixSetId != tiles.TMS_ID:
        raise NotFoundError(f"no tile matrix set {tileMatrixSetId!r} (this server tiles in {tiles.TMS_ID})")
    return _json(tiles.tile_matrix_set())


@router.get("/collections/{collectionId}/tiles", summary="Vector tilesets of a collection", response_class=Response)
async def tilesets(request: Request, collectionId: str) -> Response:
    principal = await get_principal(request)
    async with read_connection(request) as conn:
        found = await get_collection(conn, collectionId, principal)
    base = _base(request)
    tileset = _tileset(found, base)
    return _json(
        {
            "links": [_link(f"{base}/collections/{found.id}/tiles", "self", JSON, "tilesets")],
            "tilesets": [{k: tileset[k] for k in ("title", "dataType", "crs", "tileMatrixSetURI", "links")}],
        }
    )


@router.get(
    "/collections/{collectionId}/tiles/WebMercatorQuad", summary="Vector tileset metadata", response_class=Response
)
async def tileset(request: Request, collectionId: str) -> Response:
    principal = await get_principal(request)
    async with read_connection(request) as conn:
        found = await get_collection(conn, collectionId, principal)
    return _json(_tileset(found, _base(request)))


@router.get(
    "/collections/{collectionId}/tiles/WebMercatorQuad/{z}/{x}/{y}",
    summary="A Mapbox Vector Tile (ST_AsMVT)",
    response_class=Response,
)
async def tile(request: Request, collectionId: str, z: int, x: int, y: int) -> Response:
    tiles.check_tile(z, x, y)
    params = _query_dict(request)
    unknown = set(params) - {"filter", "filter-lang", "filter-crs", "datetime", "properties"}
    if unknown:
        raise BadRequestError(f"unknown query parameter {sorted(unknown)[0]!r}")
    principal = await get_principal(request)
    async with read_connection(request) as conn:
        found = await get_collection(conn, collectionId, principal)
        etag = None
        if found.modified_at is not None:
            etag = etag_for("tile", found.id, found.dataset_id, found.modified_at, z, x, y, request.url.query)
        cached = not_modified(request, etag, found.modified_at)
        if cached is not None:
            return cached
        filter_text = params.get("filter")
        query = ItemsQuery(
            datetime=parse_datetime(params.get("datetime")),
            cql=cql2sql.parse(filter_text, params.get("filter-lang")) if filter_text else None,
            filter_crs=parse_crs(params.get("filter-crs"), parameter="filter-crs"),
            properties=parse_properties(params.get("properties"), found),
        )
        rows = await fetch_checked(conn, *tiles.tile_sql(found, query, z, x, y))
    data: bytes = rows[0][0] or b""
    headers = validators(etag, found.modified_at)
    if not data:
        return Response(status_code=204, headers=headers)
    return Response(data, media_type=tiles.MVT, headers=headers)


__all__ = ["router"]
