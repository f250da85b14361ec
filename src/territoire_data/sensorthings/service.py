"""One SensorThings request in, (status, body, headers) out: used by the HTTP routes and by `$batch` alike.

Writes need a publisher or admin API key, sent as `Authorization: Bearer <key>` (or as the password of HTTP
Basic, which is all FROST's client sends).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import orjson

from territoire_data.auth.deps import check_publisher
from territoire_data.auth.policy import Principal
from territoire_data.errors import BadRequestError, NotFoundError, TerritoireError
from territoire_data.sensorthings import read
from territoire_data.sensorthings.model import BY_NAME, BY_PLURAL, ENTITY_TYPES
from territoire_data.sensorthings.odata import QueryOptions, parse_options
from territoire_data.sensorthings.writes import Writer, apply_json_patch, patched_properties

logger = logging.getLogger(__name__)

CONFORMANCE = [
    "http://www.opengis.net/spec/iot_sensing/1.1/req/datamodel",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/resource-path/resource-path-to-entities",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/request-data",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/create-update-delete",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/data-array/data-array",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/batch-request/batch-request",
]
# Receiving updates is served for Observations only (not for the other entity sets, nor `?$select` topics), so
# the standard's receive-updates class is not claimed: our own extension below says what is published.
MQTT_CONFORMANCE = [
    "http://www.opengis.net/spec/iot_sensing/1.1/req/create-observations-via-mqtt/observations-creation",
]
EXT = "https://territoire-data.fr/spec/sta"
EXTENSIONS = {
    f"{EXT}/aggregates": {
        "description": "Time-bucketed aggregates of a Datastream's numeric Observations",
        "path": "/Datastreams({id})/Aggregates?interval=15min|hour|day|month&aggregate=min,max,avg,sum,count,last",
        "options": "$filter (on the Observations, e.g. phenomenonTime ge ... and phenomenonTime lt ...), $top, $skip",
        "buckets": "UTC, aligned on 2000-01-01T00:00:00Z (months: calendar months in UTC)",
    },
    f"{EXT}/latest-observation": {
        "description": "The latest Observation of a Datastream is read from the (datastream, phenomenonTime) key",
        "path": "/Datastreams({id})/Observations?$top=1&$orderby=phenomenonTime desc",
        "expand": "$expand=Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc)) uses one query",
    },
    f"{EXT}/mqtt-observation-updates": {
        "description": "Every stored Observation (whatever path stored it) is published as JSON, as over HTTP",
        "topics": [
            "v1.1/Datastreams({id})/Observations",
            "v1.1/FeaturesOfInterest({id})/Observations",
            "v1.1/Observations",
        ],
        "not_published": "other entity sets, entity property topics, $select topics; restricted datasets",
    },
    f"{EXT}/count-estimate": {
        "description": "$count=true answers the planner's estimate when it exceeds the limit, flagged in the body",
        "flag": "@territoire.countEstimated",
    },
}


@dataclass
class Reply:
    status: int
    body: Any = None
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class WriteAuth:
    """Who writes: an admin or publisher API key (the key was resolved by the caller, HTTP or MQTT)."""

    principal: Principal

    def check(self, authorization: str | None = None) -> None:
        check_publisher(self.principal)


def service_root(ctx: read.Context, mqtt_endpoints: list[str]) -> dict[str, Any]:
    extensions = [e for e in EXTENSIONS if mqtt_endpoints or "mqtt" not in e]
    settings: dict[str, Any] = {"conformance": CONFORMANCE + (MQTT_CONFORMANCE if mqtt_endpoints else []) + extensions}
    settings["http://www.opengis.net/spec/iot_sensing/1.1/req/create-update-delete"] = {"enabled": True}
    if mqtt_endpoints:
        settings[
            "http://www.opengis.net/spec/iot_sensing/1.1/req/create-observations-via-mqtt/observations-creation"
        ] = {"endpoints": mqtt_endpoints}
    settings.update({e: EXTENSIONS[e] for e in extensions})
    return {
        "value": [{"name": e.plural, "url": f"{ctx.base}/{e.plural}"} for e in ENTITY_TYPES],
        "serverSettings": settings,
    }


def _json(body: bytes) -> Any:
    if not body:
        raise BadRequestError("the request has no JSON body")
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequestError(f"the body is not valid JSON: {exc}") from None


# Type errors of an expression the user wrote ($filter, $orderby): the compiler leaves some to PostgreSQL.
_USER_TYPE_ERRORS = frozenset({"42804", "42883", "42846", "42P18", "42725"})


def database_error(exc: asyncpg.PostgresError) -> BadRequestError | None:
    """Errors caused by a user's value or expression (a malformed geometry, a division by zero, `not 'text'`)
    are 400s, not 500s; None for the others."""
    state = getattr(exc, "sqlstate", "") or ""
    message = str(exc).split("\n")[0]
    if state.startswith("22") or (state == "XX000" and ("geometry" in message or "parse error" in message)):
        return BadRequestError(f"the database refused a value of the query: {message}")
    if state in _USER_TYPE_ERRORS:
        return BadRequestError(f"the query combines values of types that do not go together: {message}")
    return None


async def handle(
    conn: asyncpg.Connection,
    ctx: read.Context,
    auth: WriteAuth,
    method: str,
    path: str,
    params: dict[str, str],
    body: bytes | Any,
    authorization: str | None,
    *,
    in_transaction: bool = False,
) -> Reply:
    """Serve one SensorThings request on `conn`; `body` is raw bytes, or already parsed JSON (batch)."""
    segments = read.parse_resource_path(path)
    method = method.upper()
    url = f"{ctx.base}/{path.strip('/')}"
    if method == "GET":
        try:
            return await _get(conn, ctx, segments, params, url)
        except asyncpg.PostgresError as exc:  # here, not in the routes: a $batch's reads need it too
            mapped = database_error(exc)
            if mapped is None:
                raise
            raise mapped from None
    if method not in ("POST", "PATCH", "PUT", "DELETE"):
        raise BadRequestError(f"method {method} is not supported here")
    auth.check(authorization)
    parsed = _json(bytes(body)) if isinstance(body, bytes | bytearray) and method != "DELETE" else body
    if in_transaction:
        return await _write(conn, ctx, segments, method, parsed)
    async with conn.transaction():
        return await _write(conn, ctx, segments, method, parsed)


async def _get(
    conn: asyncpg.Connection, ctx: read.Context, segments: list[read.Segment], params: dict[str, str], url: str
) -> Reply:
    opts = parse_options(params)
    target = await read.resolve(conn, ctx, segments)
    if target.extension == "Aggregates":
        assert target.entity_id is not None
        interval = params.get("interval", "")
        functions = [f.strip() for f in params.get("aggregate", "avg,min,max,count").split(",") if f.strip()]
        body = await read.read_aggregates(
            conn, ctx, target.entity_id, interval=interval, functions=functions, opts=opts, url=url, params=params
        )
        return Reply(200, body)
    if target.prop is not None:
        assert target.entity_id is not None
        value = await read.read_property(conn, ctx, target.entity, target.entity_id, target.prop)
        if target.value:
            if value is None:
                return Reply(204)
            if isinstance(value, datetime):
                text = read.iso(value) or ""
            else:
                text = value if isinstance(value, str) else read.dumps(value).decode()
            return Reply(200, text, {"content-type": "text/plain; charset=utf-8"})
        return Reply(200, {target.prop.wire: value})
    if target.entity_id is not None:
        if target.ref:
            return Reply(200, {"@iot.selfLink": read.self_link(ctx, target.entity, target.entity_id)})
        return Reply(200, await read.read_entity(conn, ctx, target.entity, target.entity_id, opts))
    body = await read.read_collection(
        conn, ctx, target.entity, opts, scope=target.scope, url=url, params=params, ref=target.ref
    )
    return Reply(200, body)


async def _write(
    conn: asyncpg.Connection, ctx: read.Context, segments: list[read.Segment], method: str, body: Any
) -> Reply:
    writer = Writer(conn, ctx.principal)
    if len(segments) == 1 and segments[0].name == "CreateObservations" and method == "POST":
        return Reply(201, await writer.create_observations(body, ctx.base))
    if not segments or segments[0].name not in BY_PLURAL:
        raise NotFoundError("no such SensorThings resource")
    entity = BY_PLURAL[segments[0].name]
    first_id = segments[0].id
    if len(segments) == 1:
        if method == "POST":
            if first_id is not None:
                raise BadRequestError("POST goes to an entity set, not to one entity")
            new_id = await writer.create(entity, body)
            return await _created(conn, ctx, entity, new_id)
        if first_id is None:
            raise BadRequestError(f"{method} needs one entity, e.g. {entity.plural}(1)")
        if method == "DELETE":
            await writer.delete(entity, first_id)
            return Reply(200)
        if method == "PATCH" and isinstance(body, list):  # JSON Patch (application/json-patch+json)
            before = orjson.loads(read.dumps(await read.read_entity(conn, ctx, entity, first_id, QueryOptions())))
            body = patched_properties(entity, before, apply_json_patch(before, body))
        await writer.update(entity, first_id, body)
        return Reply(200, await read.read_entity(conn, ctx, entity, first_id, QueryOptions()))
    if first_id is None:
        raise NotFoundError("no such SensorThings resource")
    rel_seg = segments[1]
    rel = entity.rel_by_name.get(rel_seg.name)
    if rel is None:
        raise NotFoundError(f"{entity.name} has no relation {rel_seg.name!r}")
    target = BY_NAME[rel.target]
    is_ref = len(segments) == 3 and segments[2].name == "$ref"
    if is_ref and method == "POST" and rel_seg.id is None:
        if not isinstance(body, dict) or "@iot.id" not in body:
            raise BadRequestError('a $ref body is {"@iot.id": n}')
        await writer.add_link(entity, first_id, rel, body["@iot.id"])
        return Reply(204)
    if is_ref and method == "DELETE" and rel_seg.id is not None:
        await writer.remove_link(entity, first_id, rel, rel_seg.id)
        return Reply(200)
    if len(segments) == 2 and method == "POST" and rel.many and rel_seg.id is None:
        parent_id = await writer.existing(entity, first_id)
        if rel.kind == "child_fk":
            new_id = await writer.create(target, body, forced={rel.column: parent_id})
        else:
            new_id = await writer.create(target, body)
            await writer.add_link(entity, parent_id, rel, new_id)
        return await _created(conn, ctx, target, new_id)
    raise BadRequestError(f"{method} is not supported on this path")


async def _created(conn: asyncpg.Connection, ctx: read.Context, entity: Any, new_id: int) -> Reply:
    link = read.self_link(ctx, entity, new_id)
    body = await read.read_entity(conn, ctx, entity, new_id, QueryOptions())
    return Reply(201, body, {"location": link})


# --- JSON batch ---------------------------------------------------------------------------------------------


async def batch(
    conn: asyncpg.Connection, ctx: read.Context, auth: WriteAuth, body: bytes, authorization: str | None
) -> Reply:
    """The JSON batch extension: requests run in order; an atomicityGroup commits whole or not at all."""
    document = _json(body)
    requests = document.get("requests") if isinstance(document, dict) else None
    if not isinstance(requests, list):
        raise BadRequestError('a batch is {"requests": [{"id", "method", "url", "body"}, ...]}')
    responses: list[dict[str, Any]] = []
    locations: dict[str, str] = {}
    index = 0
    while index < len(requests):
        group = requests[index].get("atomicityGroup") if isinstance(requests[index], dict) else None
        end = index + 1
        if group is not None:
            while (
                end < len(requests) and isinstance(requests[end], dict) and requests[end].get("atomicityGroup") == group
            ):
                end += 1
        chunk = requests[index:end]
        index = end
        if group is None:
            responses.append(await _one(conn, ctx, auth, chunk[0], authorization, locations))
            continue
        group_responses: list[dict[str, Any]] = []
        try:
            async with conn.transaction():
                for item in chunk:
                    reply = await _one(conn, ctx, auth, item, authorization, locations, raise_errors=True)
                    group_responses.append(reply)
        except TerritoireError as exc:
            failed = {"status": exc.status, "body": {"title": exc.title, "detail": exc.detail}}
            group_responses = [{"id": item.get("id"), **failed} for item in chunk]
        responses.extend(group_responses)
    return Reply(200, {"responses": responses})


async def _one(
    conn: asyncpg.Connection,
    ctx: read.Context,
    auth: WriteAuth,
    item: Any,
    authorization: str | None,
    locations: dict[str, str],
    *,
    raise_errors: bool = False,
) -> dict[str, Any]:
    if not isinstance(item, dict) or "method" not in item or "url" not in item:
        raise BadRequestError("each batch request needs method and url")
    request_id = str(item.get("id", ""))
    url = str(item["url"])
    for ref, location in sorted(locations.items(), key=lambda kv: -len(kv[0])):
        url = url.replace(f"${ref}", location)
    parts = urlsplit(url)
    path = parts.path
    base_path = urlsplit(ctx.base).path
    if path.startswith(base_path):
        path = path[len(base_path) :]
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    method = str(item["method"]).upper()
    try:
        if raise_errors:
            reply = await handle(
                conn, ctx, auth, method, path, params, item.get("body"), authorization, in_transaction=True
            )
        else:
            async with conn.transaction():
                reply = await handle(
                    conn, ctx, auth, method, path, params, item.get("body"), authorization, in_transaction=True
                )
    except TerritoireError as exc:
        if raise_errors:
            raise
        return {"id": request_id, "status": exc.status, "body": {"title": exc.title, "detail": exc.detail}}
    out: dict[str, Any] = {"id": request_id, "status": reply.status}
    if reply.body is not None:
        out["body"] = reply.body
    if "location" in reply.headers:
        out["location"] = reply.headers["location"]
        if request_id:
            locations[request_id] = urlsplit(reply.headers["location"]).path.removeprefix(base_path).lstrip("/")
    return out
