"""One SensorThings request in, (status, body, headers) out: used by the HTTP routes and by `$batch` alike.

Writes need a publisher or admin API key, sent as `Authorization: Bearer <key>` (or as the password of HTTP
Basic, which is all FROST's client sends).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import asyncpg
import orjson

from territoire_data.auth.audit import record_pg
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
    "http://www.opengis.net/spec/iot_sensing/1.1/req/multi-datastream",
    # FROST's name for the JSON form of the batch request, which its clients look for
    "https://fraunhoferiosb.github.io/FROST-Server/extensions/JsonBatchRequest.html",
]
MQTT_CONFORMANCE = [
    "http://www.opengis.net/spec/iot_sensing/1.1/req/create-observations-via-mqtt/observations-creation",
    "http://www.opengis.net/spec/iot_sensing/1.1/req/receive-updates-via-mqtt/receive-updates",
]
EXT = "https://territoire-data.fr/spec/sta"
EXTENSIONS = {
    f"{EXT}/aggregates": {
        "description": "Time-bucketed aggregates of a Datastream's numeric Observations",
        "path": "/Datastreams({id})/Aggregates?interval=15min|hour|day|month&aggregate=min,max,avg,sum,count,last",
        "options": "$filter (on the Observations, e.g. phenomenonTime ge ... and phenomenonTime lt ...), $top, $skip",
        "buckets": "UTC, aligned on 2000-01-01T00:00:00Z (months: calendar months in UTC)",
        "source": "rollup-day, rollup-15min (kept exact on every write; used when no $filter or one on "
        "phenomenonTime bounds aligned on their buckets) or observations",
    },
    f"{EXT}/latest-observation": {
        "description": "The latest Observation of a Datastream is read by its (datastream, phenomenonTime) key "
        "from each Datastream's two newest phenomenonTimes, kept exact on every write",
        "path": "/Datastreams({id})/Observations?$top=1&$orderby=phenomenonTime desc",
        "expand": "$expand=Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc)) uses one query",
    },
    f"{EXT}/mqtt-updates": {
        "description": "Receive updates: every created or changed entity, whatever path wrote it (HTTP, batch, "
        "CSV, MQTT ingest, SQL), is published as JSON, as over HTTP; restricted datasets never are",
        "created": ["v1.1/{EntitySet}", "v1.1/{EntitySet}({id})/{NavigationCollection}"],
        "updated": ["v1.1/{EntitySet}({id})", "v1.1/{EntitySet}({id})/{property}"],
        "select": "v1.1/{collection}?$select=a,b is published for the selections subscribers were seen asking "
        "for (the broker reports subscriptions on $SYS/broker/log/M/subscribe) and those the operator configured; "
        "a broker that reports nothing gets the configured ones only",
        "not_published": "deletions; Datastream phenomenonTime/resultTime changes (computed from the "
        "Observations, which are published); statements creating or changing more than 10,000 rows",
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
    """Who writes: an admin or publisher API key (the key was resolved by the caller, HTTP or MQTT), and from
    where (client address, and the door: http, batch or mqtt), for the audit trail."""

    principal: Principal
    remote_addr: str | None = None
    via: str = "http"

    def check(self, authorization: str | None = None) -> None:
        check_publisher(self.principal)


async def audit_write(
    conn: asyncpg.Connection,
    auth: WriteAuth,
    writer: Writer,
    method: str,
    path: str,
    target: tuple[str, int | None],
    **details: Any,
) -> None:
    """One audit event per write request, whatever it created: a deep insert or a dataArray of 10,000
    Observations is one event that counts them (not one per row)."""
    action = {"POST": "create", "DELETE": "delete"}.get(method, "update")
    if path.rstrip("/").endswith("$ref"):
        action = "unlink" if method == "DELETE" else "link"
    extra: dict[str, Any] = {"via": auth.via, "method": method, "path": path, **details}
    if writer.created:
        extra["created"] = dict(writer.created)
    if writer.datasets:
        extra["datasets"] = sorted(writer.datasets)
    await record_pg(
        conn, auth.principal, f"sta.{action}", target[0], target[1], remote_addr=auth.remote_addr, details=extra
    )


def service_root(ctx: read.Context, mqtt_endpoints: list[str]) -> dict[str, Any]:
    extensions = [e for e in EXTENSIONS if mqtt_endpoints or "mqtt" not in e]
    settings: dict[str, Any] = {"conformance": CONFORMANCE + (MQTT_CONFORMANCE if mqtt_endpoints else []) + extensions}
    settings["http://www.opengis.net/spec/iot_sensing/1.1/req/create-update-delete"] = {"enabled": True}
    if mqtt_endpoints:
        settings.update({c: {"endpoints": mqtt_endpoints} for c in MQTT_CONFORMANCE})
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
    prefer: str | None = None,
) -> Reply:
    """Serve one SensorThings request on `conn`; `body` is raw bytes, or already parsed JSON (batch).

    `prefer` is the request's `Prefer` header: with `return=minimal` a create answers 201 with its Location and
    no body (OData 4.01 section 8.2.8.7, as FROST does), an update 204, and the entity is not read back.
    """
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
    minimal = wants_minimal(prefer)
    if in_transaction:
        return await _write(conn, ctx, segments, method, parsed, auth=auth, path=path, minimal=minimal)
    async with conn.transaction():
        return await _write(conn, ctx, segments, method, parsed, auth=auth, path=path, minimal=minimal)


def wants_minimal(prefer: str | None) -> bool:
    """Whether a `Prefer` header (RFC 7240: comma-separated preferences) asks for `return=minimal`."""
    if not prefer:
        return False
    for preference in prefer.split(","):
        name, _, value = preference.split(";")[0].strip().partition("=")
        if name.strip().lower() == "return" and value.strip().strip('"').lower() == "minimal":
            return True
    return False


async def _get(
    conn: asyncpg.Connection, ctx: read.Context, segments: list[read.Segment], params: dict[str, str], url: str
) -> Reply:
    opts = parse_options(params)
    target = await read.resolve(conn, ctx, segments, defer_check=True)
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
    read.check_select(target.entity, opts)
    if target.entity_id is not None:
        if target.ref:
            return Reply(200, {"@iot.selfLink": read.self_link(ctx, target.entity, target.entity_id)})
        return Reply(200, await read.read_entity_json(conn, ctx, target.entity, target.entity_id, opts))
    body = await read.read_collection(
        conn, ctx, target.entity, opts, scope=target.scope, url=url, params=params, ref=target.ref
    )
    return Reply(200, body)


async def _write(
    conn: asyncpg.Connection,
    ctx: read.Context,
    segments: list[read.Segment],
    method: str,
    body: Any,
    *,
    auth: WriteAuth | None = None,
    path: str = "",
    minimal: bool = False,
) -> Reply:
    """Apply one write, then record it in the audit trail in the same transaction."""
    auth = auth or WriteAuth(ctx.principal)
    writer = Writer(conn, ctx.principal)
    reply, target = await _apply(conn, ctx, writer, segments, method, body, minimal=minimal)
    await audit_write(conn, auth, writer, method, path, target)
    return reply


async def _apply(
    conn: asyncpg.Connection,
    ctx: read.Context,
    writer: Writer,
    segments: list[read.Segment],
    method: str,
    body: Any,
    *,
    minimal: bool = False,
) -> tuple[Reply, tuple[str, int | None]]:
    """The write itself: the reply, and what it targeted (entity name, id) for the audit trail."""
    if len(segments) == 1 and segments[0].name == "CreateObservations" and method == "POST":
        return Reply(201, await writer.create_observations(body, ctx.base)), ("Observation", None)
    if not segments or segments[0].name not in BY_PLURAL:
        raise NotFoundError("no such SensorThings resource")
    entity = BY_PLURAL[segments[0].name]
    first_id = segments[0].id
    if len(segments) == 1:
        if method == "POST":
            if first_id is not None:
                raise BadRequestError("POST goes to an entity set, not to one entity")
            new_id = await writer.create(entity, body)
            return await _created(conn, ctx, entity, new_id, minimal), (entity.name, new_id)
        if first_id is None:
            raise BadRequestError(f"{method} needs one entity, e.g. {entity.plural}(1)")
        if method == "DELETE":
            await writer.delete(entity, first_id)
            return Reply(200), (entity.name, first_id)
        if method == "PATCH" and isinstance(body, list):  # JSON Patch (application/json-patch+json)
            before = orjson.loads(read.dumps(await read.read_entity(conn, ctx, entity, first_id, QueryOptions())))
            body = patched_properties(entity, before, apply_json_patch(before, body))
        await writer.update(entity, first_id, body)
        if minimal:  # 204 No Content, which the standard allows for an update (OGC 18-088, 10.3)
            return Reply(204, None, {"preference-applied": "return=minimal"}), (entity.name, first_id)
        return Reply(200, await read.read_entity(conn, ctx, entity, first_id, QueryOptions())), (entity.name, first_id)
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
        return Reply(204), (entity.name, first_id)
    if is_ref and method == "DELETE" and rel_seg.id is not None:
        await writer.remove_link(entity, first_id, rel, rel_seg.id)
        return Reply(200), (entity.name, first_id)
    if len(segments) == 2 and method == "POST" and rel.many and rel_seg.id is None:
        parent_id = await writer.existing(entity, first_id)
        if rel.kind == "child_fk":
            new_id = await writer.create(target, body, forced={rel.column: parent_id})
        else:
            new_id = await writer.create(target, body)
            await writer.add_link(entity, parent_id, rel, new_id)
        return await _created(conn, ctx, target, new_id, minimal), (target.name, new_id)
    raise BadRequestError(f"{method} is not supported on this path")


async def _created(
    conn: asyncpg.Connection, ctx: read.Context, entity: Any, new_id: int, minimal: bool = False
) -> Reply:
    link = read.self_link(ctx, entity, new_id)
    if minimal:
        return Reply(201, None, {"location": link, "preference-applied": "return=minimal"})
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
    for group, _failed in await run_batch(conn, ctx, auth, requests, authorization):
        responses.extend(group)
    return Reply(200, {"responses": responses})


async def run_batch(
    conn: asyncpg.Connection,
    ctx: read.Context,
    auth: WriteAuth,
    requests: list[Any],
    authorization: str | None,
) -> list[tuple[list[dict[str, Any]], int | None]]:
    """Run batch requests in order: the responses of each request or atomicity group (change set), and
    the index in the group of the request that failed it (the group was then rolled back).

    A failed group answers the same error for each of its requests (the JSON batch form); `$<id>` in a URL or
    as a nested `@iot.id` stands for the entity an earlier request of the batch created.
    """
    out: list[tuple[list[dict[str, Any]], int | None]] = []
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
            out.append(([await _one(conn, ctx, auth, chunk[0], authorization, locations)], None))
            continue
        group_responses: list[dict[str, Any]] = []
        failed: int | None = None
        try:
            async with conn.transaction():
                for item in chunk:
                    reply = await _one(conn, ctx, auth, item, authorization, locations, raise_errors=True)
                    group_responses.append(reply)
        except TerritoireError as exc:
            failed = len(group_responses)
            error = {"status": exc.status, "body": {"title": exc.title, "detail": exc.detail}}
            group_responses = [{"id": item.get("id"), **error} for item in chunk]
            for item in chunk:  # what the rolled-back group created cannot be referenced any more
                locations.pop(str(item.get("id", "")), None)
        out.append((group_responses, failed))
    return out


_REF_ID = re.compile(r"\((\d+)\)$")


def _resolve_body_refs(body: Any, locations: dict[str, str]) -> Any:
    """`{"@iot.id": "$sensor1"}` in a body becomes the id of the entity request `sensor1` created.

    Only entities are looked into (the body, its navigation properties, which are capitalized): free JSON such
    as `properties` or `result` is data and stays as given.
    """
    if isinstance(body, list):
        return [_resolve_body_refs(item, locations) for item in body]
    if not isinstance(body, dict):
        return body
    resolved = {
        key: _resolve_body_refs(value, locations) if key[:1].isupper() else value for key, value in body.items()
    }
    ref = resolved.get("@iot.id")
    if isinstance(ref, str) and ref.startswith("$"):
        location = locations.get(ref[1:])
        match = _REF_ID.search(location or "")
        if match is None:
            raise BadRequestError(f"@iot.id {ref!r} names no entity created earlier in this batch")
        resolved["@iot.id"] = int(match.group(1))
    return resolved


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
    elif "/v1.1/" in path:  # an absolute path or URL written for another mount point of the service
        path = path.split("/v1.1/", 1)[1]
    params = dict(parse_qsl(parts.query, keep_blank_values=True))
    method = str(item["method"]).upper()
    headers = item.get("headers")
    prefer = None
    if isinstance(headers, dict):
        prefer = next((str(v) for k, v in headers.items() if str(k).lower() == "prefer"), None)
    try:
        body = _resolve_body_refs(item.get("body"), locations)
        if raise_errors:
            reply = await handle(
                conn, ctx, auth, method, path, params, body, authorization, in_transaction=True, prefer=prefer
            )
        else:
            async with conn.transaction():
                reply = await handle(
                    conn, ctx, auth, method, path, params, body, authorization, in_transaction=True, prefer=prefer
                )
    except TerritoireError as exc:
        if raise_errors:
            raise
        return {"id": request_id, "status": exc.status, "body": {"title": exc.title, "detail": exc.detail}}
    out: dict[str, Any] = {"id": request_id, "status": reply.status}
    if reply.body is not None:
        out["body"] = reply.body
    if "preference-applied" in reply.headers:
        out["preference-applied"] = reply.headers["preference-applied"]
    if "location" in reply.headers:
        out["location"] = reply.headers["location"]
        if request_id:
            locations[request_id] = urlsplit(reply.headers["location"]).path.removeprefix(base_path).lstrip("/")
    return out
