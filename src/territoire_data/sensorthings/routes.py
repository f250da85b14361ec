"""HTTP door of SensorThings API 1.1 under /sta/v1.1: thin routes over `service.handle` and `service.batch`."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import asyncpg
from fastapi import APIRouter, Request
from fastapi.responses import Response

from territoire_data.auth.deps import client_address, get_principal
from territoire_data.auth.policy import ANONYMOUS, Principal
from territoire_data.db.readpool import close_read_pool
from territoire_data.deps import read_connection
from territoire_data.errors import BadRequestError
from territoire_data.sensorthings import multipart, read, service
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

PREFIX = "/sta/v1.1"
router = APIRouter(prefix=PREFIX, tags=["SensorThings API 1.1"])


def context(settings: Settings, principal: Principal = ANONYMOUS) -> read.Context:
    return read.Context(
        base=settings.base_url + PREFIX,
        principal=principal,
        default_top=settings.sta_default_top,
        max_top=settings.sta_max_top,
        count_exact_limit=settings.sta_count_exact_limit,
    )


def mqtt_endpoints(settings: Settings) -> list[str]:
    """The broker advertised in the service root (without credentials) when the MQTT bridge is deployed."""
    if not settings.sta_mqtt_publish:
        return []
    parts = urlsplit(settings.mqtt_url)
    host = parts.hostname or "127.0.0.1"
    port = parts.port or (8883 if parts.scheme in ("mqtts", "ssl") else 1883)
    return [f"{'mqtts' if parts.scheme in ('mqtts', 'ssl') else 'mqtt'}://{host}:{port}"]


async def close_pool(app: Any) -> None:
    """Close the app's read pool (tests that run apps without their lifespan call this)."""
    await close_read_pool(app.state.engine)


@asynccontextmanager
async def _connection(request: Request) -> AsyncIterator[asyncpg.Connection]:
    """A connection of the shared read pool (db.readpool), or of the standby's for an anonymous read: no pre-ping
    or reset round trips per request.

    Generic plans by default (see `readpool.use_generic_plans`); `read` switches back the statements that
    need their values to plan well.
    """
    async with read_connection(request, generic_plans=True) as conn:  # anonymous GETs: maybe a standby's
        yield conn


def _render(reply: service.Reply) -> Response:
    if reply.body is None:
        return Response(status_code=reply.status, headers=reply.headers)
    if isinstance(reply.body, bytes):  # an already encoded body (the multipart batch answer)
        return Response(reply.body, status_code=reply.status, headers=reply.headers)
    if isinstance(reply.body, str) and reply.headers.get("content-type", "").startswith("text/plain"):
        return Response(reply.body, status_code=reply.status, headers=reply.headers)
    return Response(
        read.dumps(reply.body), status_code=reply.status, media_type="application/json", headers=reply.headers
    )


def _database_error(exc: asyncpg.PostgresError) -> BadRequestError | None:
    """Errors caused by a user's value (a malformed geometry, a division by zero) are 400s, not 500s."""
    return service.database_error(exc)


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


async def _serve(request: Request, path: str, body: bytes) -> Response:
    settings = _settings(request)
    params = dict(request.query_params)
    principal = await get_principal(request)  # an API key widens what is visible and allows writes
    async with _connection(request) as conn:
        try:
            reply = await service.handle(
                conn,
                context(settings, principal),
                service.WriteAuth(principal, remote_addr=client_address(request)),
                request.method,
                path,
                params,
                body,
                request.headers.get("authorization"),
                prefer=request.headers.get("prefer"),
            )
        except asyncpg.PostgresError as exc:
            mapped = _database_error(exc)
            if mapped is None:
                raise
            raise mapped from None
    return _render(reply)


@router.get("", summary="Service root: entity sets and serverSettings.conformance")
@router.get("/", include_in_schema=False)
async def root(request: Request) -> Response:
    settings = _settings(request)
    return _render(service.Reply(200, service.service_root(context(settings), mqtt_endpoints(settings))))


@router.post(
    "/$batch",
    summary="Batch request: multipart/mixed (OData 4.0, change sets) or JSON (atomicityGroup = one transaction)",
)
async def batch(request: Request) -> Response:
    settings = _settings(request)
    principal = await get_principal(request)
    body = await request.body()
    content_type = request.headers.get("content-type", "")
    async with _connection(request) as conn:
        if content_type.lower().startswith("multipart/mixed"):
            reply = await multipart.multipart_batch(
                conn,
                context(settings, principal),
                service.WriteAuth(principal),
                body,
                content_type,
                request.headers.get("authorization"),
            )
            return _render(reply)
        reply = await service.batch(
            conn,
            context(settings, principal),
            service.WriteAuth(principal, remote_addr=client_address(request), via="batch"),
            body,
            request.headers.get("authorization"),
        )
    return _render(reply)


@router.get(
    "/{path:path}",
    summary="Entity sets, entities, navigation, properties, $value, $ref; OData $filter $expand $select ...",
    responses={
        200: {
            "description": "JSON; a property's `$value` is plain text",
            "content": {"application/json": {}, "text/plain": {"schema": {"type": "string"}}},
        }
    },
)
async def get_resource(path: str, request: Request) -> Response:
    return await _serve(request, path, b"")


_GET_ROUTE = next(r for r in router.routes if getattr(r, "endpoint", None) is get_resource)


async def _get_resource_fast(request: Request) -> Response:
    """`get_resource` as a plain Starlette endpoint: no route search through every door, no dependency
    resolution (about a fifth of a latest-value read's CPU time in the server). Same handler, same answers;
    the request is labelled with the documented route (metrics, telemetry)."""
    path: str = request.path_params["path"]
    if not path:  # /sta/v1.1/ is the service root
        return await root(request)
    request.scope["route"] = _GET_ROUTE
    return await _serve(request, path, b"")


@dataclass(frozen=True)
class FastRoute:
    path: str
    endpoint: Callable[[Request], Awaitable[Response]]


# GET (and so HEAD) under the prefix, registered by the app ahead of every router.
fast_get = FastRoute(PREFIX + "/{path:path}", _get_resource_fast)


_WRITE_DOC: dict[str, Any] = {
    "description": "Needs a publisher or admin API key: `Authorization: Bearer <key>` (or Basic, key as password); "
    "a publisher changes only the entities of the datasets it may write. A new Thing joins the dataset named by "
    '`"@territoire.dataset": "<slug>"` in its body. With `Prefer: return=minimal`, a create answers 201 with its '
    "`Location` and no body, an update 204 (also per request inside `$batch`)."
}


@router.post(
    "/{path:path}", summary="Create (deep insert, link by @iot.id), $ref links, CreateObservations", **_WRITE_DOC
)
async def post_resource(path: str, request: Request) -> Response:
    return await _serve(request, path, await request.body())


@router.patch("/{path:path}", summary="Update an entity", **_WRITE_DOC)
async def patch_resource(path: str, request: Request) -> Response:
    return await _serve(request, path, await request.body())


@router.put("/{path:path}", summary="Update an entity (the properties given)", **_WRITE_DOC)
async def put_resource(path: str, request: Request) -> Response:
    return await _serve(request, path, await request.body())


@router.delete(
    "/{path:path}",
    summary="Delete an entity with the standard's cascades, or a $ref link",
    response_class=Response,  # 200 without a body, as the standard says
    **_WRITE_DOC,
)
async def delete_resource(path: str, request: Request) -> Response:
    return await _serve(request, path, b"")
