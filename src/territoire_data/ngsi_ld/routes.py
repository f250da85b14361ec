"""HTTP door of NGSI-LD under /ngsi-ld/v1: parse the request, call `entities`/`temporal`/`subscriptions`, render."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote

import asyncpg
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import Response

from territoire_data.auth.deps import client_address, get_principal
from territoire_data.auth.policy import Principal
from territoire_data.db.readpool import pooled
from territoire_data.ngsi_ld import entities, model
from territoire_data.ngsi_ld import request as rq
from territoire_data.ngsi_ld.contexts import CORE_URL, ActiveContext, ContextStore
from territoire_data.ngsi_ld.errors import BadRequestData, InvalidRequest, ResourceNotFound
from territoire_data.ngsi_ld.model import Entity, RenderOptions
from territoire_data.settings import Settings

PREFIX = "/ngsi-ld/v1"
_SAFE = ":/@!$&'()*+,;=-._~"
router = APIRouter(prefix=PREFIX, tags=["NGSI-LD 1.8"])


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def context_store(request: Request) -> ContextStore:
    store: ContextStore | None = getattr(request.app.state, "ngsild_contexts", None)
    if store is None:
        store = ContextStore(_settings(request).ngsild_context_allow)
        request.app.state.ngsild_contexts = store
    return store


@asynccontextmanager
async def connection(request: Request) -> AsyncIterator[asyncpg.Connection]:
    async with pooled(request.app.state.engine, request.app.state.settings) as conn:
        yield conn


async def principal_of(request: Request) -> Principal:
    rq.check_tenant(request.headers)
    return await get_principal(request)


def writer_of(request: Request, principal: Principal, ctx: ActiveContext | None = None) -> entities.Writer:
    """Who writes; with the request's @context, the `type` selector that gates writes to one entity."""
    selector = request.query_params.get("type")
    gate = None
    if selector and ctx is not None:
        gate = frozenset(ctx.expand(t.strip()) for t in re.split(r"[,;|()]", selector) if t.strip())
    return entities.Writer(principal, client_address(request), request.headers.get("ngsild-dataset"), gate)


async def request_context(request: Request, conn: asyncpg.Connection) -> ActiveContext:
    """The context of a GET or DELETE: the Link header's, else the core one."""
    return await context_store(request).active(conn, rq.link_context(request.headers.get("link")))


def json_response(
    body: Any, media: str, ctx: ActiveContext | None, *, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    out_headers = dict(headers or {})
    if ctx is not None and media == rq.JSON:
        out_headers["Link"] = rq.link_header(ctx)
    if ctx is not None and media == rq.LD_JSON:
        context: Any = ctx.output
        if isinstance(body, list):
            body = [{"@context": context, **item} if isinstance(item, dict) else item for item in body]
        elif isinstance(body, dict):
            body = {"@context": context, **body}
    return Response(orjson.dumps(body), status_code=status, media_type=media, headers=out_headers)


def no_content(status: int = 204, headers: dict[str, str] | None = None) -> Response:
    return Response(status_code=status, headers=headers)


def render_options(request: Request, ctx: ActiveContext) -> RenderOptions:
    params = request.query_params
    options = rq.parse_options(params.get("options"), params.get("format"))
    attrs = rq.names(params.get("attrs"))
    pick = rq.names(params.get("pick"), "pick")
    omit = rq.names(params.get("omit"), "omit")
    if pick is not None and attrs is not None:
        raise BadRequestData("pick and attrs cannot be combined")
    if omit is not None and (attrs is not None or (pick is not None and set(pick) & set(omit))):
        raise BadRequestData("omit goes with neither attrs nor a pick of the same members")
    selected = pick if pick is not None else attrs
    core = {"id", "type", "scope"}
    return RenderOptions(
        form=options.form,
        sys_attrs=options.sys_attrs,
        attrs=None if selected is None else frozenset(ctx.expand(a) for a in selected if a not in core),
        omit=frozenset(a if a in core else ctx.expand(a) for a in omit or []),
        lang=params.get("lang"),
        pick_core=None if pick is None else frozenset(a for a in pick if a in core),
    )


def geojson_feature(
    entity: Entity, rendered: dict[str, Any], ctx: ActiveContext, geometry_property: str
) -> dict[str, Any]:
    geometry = model.geometry_of(entity, ctx.expand(geometry_property))
    properties = {k: v for k, v in rendered.items() if k != "id"}
    return {"id": entity.id, "type": "Feature", "geometry": geometry, "properties": properties}


def render_entities(
    request: Request, found: list[Entity], ctx: ActiveContext, options: RenderOptions, media: str
) -> Any:
    rendered = [model.render_entity(e, ctx, options) for e in found]
    if media == rq.GEO_JSON:
        geometry_property = request.query_params.get("geometryProperty") or "location"
        features = [geojson_feature(e, r, ctx, geometry_property) for e, r in zip(found, rendered, strict=True)]
        collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
        return collection
    return rendered


# --- entities -------------------------------------------------------------------------------------------------


@router.post("/entities", summary="Create Entity (5.6.1)", status_code=201)
@router.post("/entities/", include_in_schema=False, status_code=201)
async def create_entity(request: Request) -> Response:
    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        entity = model.parse_entity(payload, ctx)
        outcome = entities.Outcome()
        writer = writer_of(request, principal)
        async with conn.transaction():
            await entities.create(conn, writer, entity, outcome)
            await entities_audit(conn, writer, "ngsi-ld.create", entity.id)
            await _queue(conn, outcome)
    return no_content(201, {"Location": f"{PREFIX}/entities/{quote(entity.id, safe=_SAFE)}"})


async def entities_audit(
    conn: asyncpg.Connection, writer: entities.Writer, action: str, target: str, **kw: Any
) -> None:
    await entities._audit(conn, writer, action, target, **kw)


async def _queue(conn: asyncpg.Connection, outcome: entities.Outcome) -> None:
    """Queue the notifications of these changes in the write's own transaction (at least once)."""
    from territoire_data.ngsi_ld import subscriptions

    await subscriptions.queue_changes(conn, outcome.changes)


@router.get("/entities", summary="Query Entities (5.7.2): type, id, idPattern, attrs, q, scopeQ, geoQ, paging")
@router.get("/entities/", include_in_schema=False)
async def query_entities(request: Request) -> Response:
    principal = await principal_of(request)
    params = request.query_params
    media = rq.accept(request.headers)
    settings = _settings(request)
    limit = _int(params.get("limit"), settings.ngsild_default_limit, "limit", minimum=0)
    if limit > settings.ngsild_max_limit:
        from territoire_data.ngsi_ld.errors import TooManyResults

        raise TooManyResults(f"limit is at most {settings.ngsild_max_limit}")
    offset = _int(params.get("offset"), 0, "offset", minimum=0)
    count = (params.get("count") or "false").lower() == "true"
    spec = entities.QuerySpec(
        ids=rq.id_list(params.get("id")),
        types=params.get("type"),
        id_pattern=params.get("idPattern"),
        attrs=rq.names(params.get("attrs")) or rq.names(params.get("pick")),
        q=params.get("q"),
        scope_q=params.get("scopeQ"),
        georel=params.get("georel"),
        geometry=params.get("geometry"),
        coordinates=params.get("coordinates"),
        geoproperty=params.get("geoproperty"),
    )
    if not any(
        [spec.ids, spec.types, spec.id_pattern, spec.attrs, spec.q, spec.georel, spec.scope_q]
    ) and not params.get("local"):
        raise BadRequestData("a query needs at least one of type, id, idPattern, attrs, q, geoQ or scopeQ")
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        options = render_options(request, ctx)
        if spec.attrs and params.get("pick"):
            spec.attrs = [a for a in spec.attrs if a not in ("id", "type", "scope")] or None
        flt = entities.build_filter(spec, ctx)
        found, total = await _query(conn, principal, flt, limit, offset, count)
    headers: dict[str, str] = {}
    if total is not None:
        headers["NGSILD-Results-Count"] = str(total)
    links = []
    base = str(request.url.remove_query_params(["offset"]))
    sep = "&" if "?" in base else "?"
    if offset > 0 and limit > 0:
        links.append(f'<{base}{sep}offset={max(offset - limit, 0)}>; rel="prev"; type="{media}"')
    if limit > 0 and len(found) == limit:
        links.append(f'<{base}{sep}offset={offset + limit}>; rel="next"; type="{media}"')
    if links:
        headers["Link"] = ", ".join(links)
    body = render_entities(request, found, ctx, options, media)
    response = json_response(body, media, ctx, headers=headers)
    if links and media == rq.JSON:
        response.headers.append("Link", rq.link_header(ctx))
        response.headers["Link"] = ", ".join([*links, rq.link_header(ctx)])
    return response


async def _query(
    conn: asyncpg.Connection, principal: Principal, flt: Any, limit: int, offset: int, count: bool
) -> tuple[list[Entity], int | None]:
    from territoire_data.ngsi_ld import store

    if limit == 0:
        if not count:
            raise BadRequestData("limit=0 only goes with count=true")
        _, total = await store.query(conn, principal, flt, limit=1, offset=0, count=True)
        return [], total
    return await store.query(conn, principal, flt, limit=limit, offset=offset, count=count)


def _int(text: str | None, default: int, name: str, *, minimum: int) -> int:
    if text is None:
        return default
    try:
        value = int(text)
    except ValueError:
        raise BadRequestData(f"{name} must be an integer") from None
    if value < minimum:
        raise BadRequestData(f"{name} must be at least {minimum}")
    return value


@router.get("/entities/{entity_id:path}", summary="Retrieve Entity (5.7.1)")
async def retrieve_entity(entity_id: str, request: Request) -> Response:
    principal = await principal_of(request)
    media = rq.accept(request.headers)
    model.check_uri(entity_id, "entity id")
    from territoire_data.ngsi_ld import store

    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        options = render_options(request, ctx)
        entity = await store.retrieve(conn, principal, entity_id)
        if entity is None:
            raise ResourceNotFound(f"entity {entity_id} not found")
        wanted_type = request.query_params.get("type")
        if wanted_type and ctx.expand(wanted_type) not in entity.types:
            raise ResourceNotFound(f"entity {entity_id} is not of type {wanted_type}")
        if options.attrs and not options.pick_core and not (options.attrs & set(entity.attrs)):
            raise ResourceNotFound(f"entity {entity_id} has none of the attributes asked for")
    rendered = model.render_entity(entity, ctx, options)
    if media == rq.GEO_JSON:
        body = geojson_feature(entity, rendered, ctx, request.query_params.get("geometryProperty") or "location")
        return json_response(body, media, ctx)
    return json_response(rendered, media, ctx)


@router.delete("/entities/{entity_id:path}/attrs/{attr}", summary="Delete Attribute (5.6.5)", status_code=204)
async def delete_attribute(entity_id: str, attr: str, request: Request) -> Response:
    principal = await principal_of(request)
    model.check_attribute_name(attr)
    params = request.query_params
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        outcome = entities.Outcome()
        writer = writer_of(request, principal, ctx)
        async with conn.transaction():
            await entities.delete_attribute(
                conn,
                writer,
                entity_id,
                attr,
                ctx,
                outcome,
                dataset_id=params.get("datasetId"),
                delete_all=(params.get("deleteAll") or "false").lower() == "true",
            )
            await entities_audit(conn, writer, "ngsi-ld.delete-attribute", entity_id, attribute=attr)
            await _queue(conn, outcome)
    return no_content()


@router.patch("/entities/{entity_id:path}/attrs/{attr}", summary="Partial Attribute Update (5.6.4)", status_code=204)
async def patch_attribute(entity_id: str, attr: str, request: Request) -> Response:
    principal = await principal_of(request)
    model.check_attribute_name(attr)
    payload, context = rq.body_context(request.headers, await request.body())
    if not isinstance(payload, dict):
        raise BadRequestData("an attribute fragment must be a JSON object")
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        body = {k: v for k, v in payload.items() if k != "@context"}
        outcome = entities.Outcome()
        writer = writer_of(request, principal, ctx)
        async with conn.transaction():
            await entities.partial_attribute_update(conn, writer, entity_id, attr, body, ctx, outcome)
            await entities_audit(conn, writer, "ngsi-ld.update-attribute", entity_id, attribute=attr)
            await _queue(conn, outcome)
    return no_content()


@router.put("/entities/{entity_id:path}/attrs/{attr}", summary="Replace Attribute (5.6.19)", status_code=204)
async def put_attribute(entity_id: str, attr: str, request: Request) -> Response:
    principal = await principal_of(request)
    model.check_attribute_name(attr)
    payload, context = rq.body_context(request.headers, await request.body())
    if isinstance(payload, dict):
        payload = {k: v for k, v in payload.items() if k != "@context"}
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        outcome = entities.Outcome()
        writer = writer_of(request, principal, ctx)
        async with conn.transaction():
            await entities.replace_attribute(conn, writer, entity_id, attr, payload, ctx, outcome)
            await entities_audit(conn, writer, "ngsi-ld.replace-attribute", entity_id, attribute=attr)
            await _queue(conn, outcome)
    return no_content()


def _partial(result: entities.PartialResult) -> Response:
    if not result.not_updated:
        return no_content()
    body = {
        "updated": result.updated,
        "notUpdated": [{"attributeName": name, "reason": reason} for name, reason in result.not_updated],
    }
    return Response(orjson.dumps(body), status_code=207, media_type=rq.JSON)


@router.post("/entities/{entity_id:path}/attrs", summary="Append Entity Attributes (5.6.3)", status_code=204)
@router.post("/entities/{entity_id:path}/attrs/", include_in_schema=False, status_code=204)
async def append_attributes(entity_id: str, request: Request) -> Response:
    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    options = rq.parse_options(request.query_params.get("options"))
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        fragment = model.parse_entity(payload, ctx, require_id=False, require_type=False)
        if fragment.id and fragment.id != entity_id:
            raise BadRequestData("the body's id differs from the entity's")
        outcome = entities.Outcome()
        writer = writer_of(request, principal, ctx)
        async with conn.transaction():
            result = await entities.append(
                conn, writer, entity_id, fragment, ctx, no_overwrite=options.no_overwrite, outcome=outcome
            )
            await entities_audit(conn, writer, "ngsi-ld.append", entity_id, attributes=result.updated)
            await _queue(conn, outcome)
    return _partial(result)


@router.patch("/entities/{entity_id:path}/attrs", summary="Update Entity Attributes (5.6.2)", status_code=204)
@router.patch("/entities/{entity_id:path}/attrs/", include_in_schema=False, status_code=204)
async def update_attributes(entity_id: str, request: Request) -> Response:
    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        fragment = model.parse_entity(payload, ctx, require_id=False, require_type=False, allow_null=True)
        outcome = entities.Outcome()
        writer = writer_of(request, principal, ctx)
        async with conn.transaction():
            result = await entities.update(conn, writer, entity_id, fragment, ctx, outcome)
            await entities_audit(conn, writer, "ngsi-ld.update", entity_id, attributes=result.updated)
            await _queue(conn, outcome)
    return _partial(result)


@router.patch("/entities/{entity_id:path}", summary="Merge Entity (5.6.17)", status_code=204)
async def merge_entity(entity_id: str, request: Request) -> Response:
    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body(), allow_merge_patch=True)
    if not isinstance(payload, dict):
        raise BadRequestData("a merge-patch body must be a JSON object")
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        fragment = model.Entity(id=entity_id, types=[])
        if "type" in payload:
            fragment.types = model.parse_entity({"id": entity_id, "type": payload["type"]}, ctx).types
        if "scope" in payload:
            fragment.scopes = model.scopes_of(payload["scope"])
        fragment.attrs = model.parse_attributes(payload, ctx, allow_null=True)
        if payload.get("id") not in (None, entity_id):
            raise BadRequestData("the body's id differs from the entity's")
        outcome = entities.Outcome()
        writer = writer_of(request, principal, ctx)
        async with conn.transaction():
            await entities.merge(conn, writer, entity_id, fragment, outcome)
            await entities_audit(conn, writer, "ngsi-ld.merge", entity_id)
            await _queue(conn, outcome)
    return no_content()


@router.put("/entities/{entity_id:path}", summary="Replace Entity (5.6.18)", status_code=204)
async def replace_entity(entity_id: str, request: Request) -> Response:
    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        new = model.parse_entity(payload, ctx, require_id=False)
        outcome = entities.Outcome()
        writer = writer_of(request, principal, ctx)
        async with conn.transaction():
            await entities.replace(conn, writer, entity_id, new, outcome)
            await entities_audit(conn, writer, "ngsi-ld.replace", entity_id)
            await _queue(conn, outcome)
    return no_content()


@router.delete("/entities/{entity_id:path}", summary="Delete Entity (5.6.6)", status_code=204)
async def delete_entity(entity_id: str, request: Request) -> Response:
    principal = await principal_of(request)
    model.check_uri(entity_id, "entity id")
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        outcome = entities.Outcome()
        writer = writer_of(request, principal, ctx)
        async with conn.transaction():
            await entities.delete(conn, writer, entity_id, outcome)
            await entities_audit(conn, writer, "ngsi-ld.delete", entity_id)
            await _queue(conn, outcome)
    return no_content()


# --- batch operations ------------------------------------------------------------------------------------------


async def _batch(request: Request, operation: str) -> Response:
    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    if not isinstance(payload, list) or not payload:
        raise BadRequestData("a batch operation needs a non-empty JSON array")
    if len(payload) > 1000:
        raise BadRequestData("a batch holds at most 1000 entities")
    options = rq.parse_options(request.query_params.get("options"))
    success: list[str] = []
    errors: list[dict[str, Any]] = []
    created: list[str] = []
    writer = writer_of(request, principal)
    async with connection(request) as conn:
        for item in payload:
            entity_id = item if operation == "delete" and isinstance(item, str) else None
            try:
                ctx = await context_store(request).active(conn, rq.item_context(request.headers, item, context))
                outcome = entities.Outcome()
                async with conn.transaction():
                    if operation == "delete":
                        if not isinstance(item, str):
                            raise BadRequestData("a batch delete holds entity ids")
                        await entities.delete(conn, writer, model.check_uri(item, "id"), outcome)
                    else:
                        entity = model.parse_entity(item, ctx, allow_null=operation in ("update", "merge"))
                        entity_id = entity.id
                        await _batch_one(conn, writer, operation, entity, ctx, options, outcome, created)
                    await _queue(conn, outcome)
                success.append(entity_id or "")
            except Exception as exc:
                from territoire_data.errors import TerritoireError

                if not isinstance(exc, TerritoireError):
                    raise
                if entity_id is None and isinstance(item, dict):
                    entity_id = str(item.get("id", ""))
                errors.append(
                    {
                        "entityId": entity_id or "",
                        "error": {
                            "type": exc.type_slug,
                            "title": exc.title,
                            "status": exc.status,
                            "detail": exc.detail,
                        },
                    }
                )
        if success:
            async with conn.transaction():
                await entities_audit(conn, writer, f"ngsi-ld.batch-{operation}", "batch", entities=len(success))
    if not errors:
        if operation == "create" or (operation == "upsert" and created):
            return Response(
                orjson.dumps(created if operation == "upsert" else success), status_code=201, media_type=rq.JSON
            )
        return no_content()
    return Response(orjson.dumps({"success": success, "errors": errors}), status_code=207, media_type=rq.JSON)


async def _batch_one(
    conn: asyncpg.Connection,
    writer: entities.Writer,
    operation: str,
    entity: Entity,
    ctx: ActiveContext,
    options: rq.Options,
    outcome: entities.Outcome,
    created: list[str],
) -> None:
    from territoire_data.ngsi_ld import store

    if operation == "create":
        await entities.create(conn, writer, entity, outcome)
        return
    exists = await store.native_for_update(conn, entity.id) is not None
    if operation == "upsert":
        if not exists:
            await entities.create(conn, writer, entity, outcome)
            created.append(entity.id)
        elif "update" in options.values:
            await entities.append(conn, writer, entity.id, entity, ctx, no_overwrite=False, outcome=outcome)
        else:
            await entities.replace(conn, writer, entity.id, entity, outcome)
        return
    if operation == "update":
        await entities.append(conn, writer, entity.id, entity, ctx, no_overwrite=options.no_overwrite, outcome=outcome)
        return
    if operation == "merge":
        await entities.merge(conn, writer, entity.id, entity, outcome)
        return
    raise InvalidRequest(f"unknown batch operation {operation}")


@router.post("/entityOperations/create", summary="Batch Entity Creation (5.6.7)")
async def batch_create(request: Request) -> Response:
    return await _batch(request, "create")


@router.post("/entityOperations/upsert", summary="Batch Entity Create or Update (5.6.8)")
async def batch_upsert(request: Request) -> Response:
    return await _batch(request, "upsert")


@router.post("/entityOperations/update", summary="Batch Entity Update (5.6.9)")
async def batch_update(request: Request) -> Response:
    return await _batch(request, "update")


@router.post("/entityOperations/delete", summary="Batch Entity Delete (5.6.10)")
async def batch_delete(request: Request) -> Response:
    return await _batch(request, "delete")


@router.post("/entityOperations/merge", summary="Batch Entity Merge (5.6.20)")
async def batch_merge(request: Request) -> Response:
    return await _batch(request, "merge")


@router.post("/entityOperations/query", summary="Query Entities via POST (5.7.2)")
async def batch_query(request: Request) -> Response:
    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    if not isinstance(payload, dict) or payload.get("type") != "Query":
        raise BadRequestData('the body must be a Query object ("type": "Query")')
    media = rq.accept(request.headers)
    settings = _settings(request)
    params = request.query_params
    limit = min(_int(params.get("limit"), settings.ngsild_default_limit, "limit", minimum=0), settings.ngsild_max_limit)
    offset = _int(params.get("offset"), 0, "offset", minimum=0)
    count = (params.get("count") or "false").lower() == "true"
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        selectors = payload.get("entities") or [{}]
        geo = payload.get("geoQ") or {}
        found: list[Entity] = []
        total = 0
        for selector in selectors:
            spec = entities.QuerySpec(
                ids=[selector["id"]] if selector.get("id") else None,
                types=selector.get("type"),
                id_pattern=selector.get("idPattern"),
                attrs=payload.get("attrs"),
                q=payload.get("q"),
                scope_q=payload.get("scopeQ"),
                georel=geo.get("georel"),
                geometry=geo.get("geometry"),
                coordinates=geo.get("coordinates"),
                geoproperty=geo.get("geoproperty"),
            )
            flt = entities.build_filter(spec, ctx)
            page, n = await _query(conn, principal, flt, limit or 1, offset, count)
            found.extend(page)
            total += n or 0
        options = render_options(request, ctx)
    headers = {"NGSILD-Results-Count": str(total)} if count else {}
    return json_response(render_entities(request, found[:limit], ctx, options, media), media, ctx, headers=headers)


# --- @context management (5.13) ----------------------------------------------------------------------------------


@router.get("/jsonldContexts/{context_id}", summary="Serve @context (5.13.4): the core context among them")
async def serve_context(context_id: str, request: Request) -> Response:
    from territoire_data.ngsi_ld.contexts import context_id as id_of
    from territoire_data.ngsi_ld.contexts import core_document

    if context_id in ("ngsi-ld-core-context-v1.8.jsonld", "core", id_of(CORE_URL)):
        return Response(orjson.dumps(core_document()), media_type=rq.LD_JSON)
    async with connection(request) as conn:
        row = await conn.fetchrow("SELECT body FROM ngsild_context WHERE id = $1 OR url = $1", context_id)
    if row is None:
        raise ResourceNotFound(f"no @context {context_id}")
    return Response(orjson.dumps(row["body"]), media_type=rq.LD_JSON)


# --- temporal API ---------------------------------------------------------------------------------------------


async def _history(
    conn: asyncpg.Connection,
    principal: Principal,
    entity: Entity,
    tq: Any,
    attrs: frozenset[str] | None,
) -> dict[str, list[dict[str, Any]]]:
    from territoire_data.ngsi_ld import temporal

    if await _is_sensor(conn, entity):
        return await temporal.sensor_history(conn, principal, entity, tq, attrs)
    return await temporal.native_history(conn, entity, tq, attrs)


async def _is_sensor(conn: asyncpg.Connection, entity: Entity) -> bool:
    from territoire_data.ngsi_ld import sensors

    if sensors.thing_id(entity.id) is None:
        return False
    return not await conn.fetchval("SELECT EXISTS (SELECT 1 FROM ngsild_entity WHERE id = $1)", entity.id)


def _temporal_query(request: Request) -> tuple[Any, rq.Options]:
    from territoire_data.ngsi_ld import temporal

    params = request.query_params
    options = rq.parse_options(params.get("options"))
    return temporal.parse_query(params, options.values, 10_000), options


@router.get("/temporal/entities/{entity_id:path}", summary="Retrieve Temporal Evolution of an Entity (5.7.3)")
async def retrieve_temporal(entity_id: str, request: Request) -> Response:
    from territoire_data.ngsi_ld import store, temporal

    if not entity_id:  # `/temporal/entities/`: the query
        return await query_temporal(request)
    principal = await principal_of(request)
    media = rq.accept(request.headers, geo=False)
    model.check_uri(entity_id, "entity id")
    tq, options = _temporal_query(request)
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        attrs = rq.names(request.query_params.get("attrs"))
        wanted = None if attrs is None else frozenset(ctx.expand(a) for a in attrs)
        entity = await store.retrieve(conn, principal, entity_id)
        if entity is None:
            raise ResourceNotFound(f"entity {entity_id} not found")
        history = await _history(conn, principal, entity, tq, wanted)
    return json_response(temporal.render(entity, history, ctx, tq, options.sys_attrs), media, ctx)


@router.get("/temporal/entities", summary="Query Temporal Evolution of Entities (5.7.4)")
@router.get("/temporal/entities/", include_in_schema=False)
async def query_temporal(request: Request) -> Response:
    from territoire_data.ngsi_ld import store, temporal

    principal = await principal_of(request)
    media = rq.accept(request.headers, geo=False)
    params = request.query_params
    settings = _settings(request)
    tq, options = _temporal_query(request)
    limit = min(_int(params.get("limit"), settings.ngsild_default_limit, "limit", minimum=1), settings.ngsild_max_limit)
    offset = _int(params.get("offset"), 0, "offset", minimum=0)
    count = (params.get("count") or "false").lower() == "true"
    spec = entities.QuerySpec(
        ids=rq.id_list(params.get("id")),
        types=params.get("type"),
        id_pattern=params.get("idPattern"),
        attrs=rq.names(params.get("attrs")),
        q=params.get("q"),
        scope_q=params.get("scopeQ"),
        georel=params.get("georel"),
        geometry=params.get("geometry"),
        coordinates=params.get("coordinates"),
        geoproperty=params.get("geoproperty"),
    )
    if not any([spec.ids, spec.types, spec.id_pattern, spec.attrs, spec.q, spec.georel, spec.scope_q]):
        raise BadRequestData("a temporal query needs at least one of type, id, idPattern, attrs, q, geoQ or scopeQ")
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        flt = entities.build_filter(spec, ctx)
        found, total = await store.query(conn, principal, flt, limit=limit, offset=offset, count=count)
        wanted = None if spec.attrs is None else frozenset(ctx.expand(a) for a in spec.attrs)
        body = []
        for entity in found:
            history = await _history(conn, principal, entity, tq, wanted)
            body.append(temporal.render(entity, history, ctx, tq, options.sys_attrs))
    headers = {"NGSILD-Results-Count": str(total)} if total is not None else {}
    return json_response(body, media, ctx, headers=headers)


@router.post("/temporal/entities", summary="Create or Update Temporal Representation of an Entity (5.6.11)")
@router.post("/temporal/entities/", include_in_schema=False)
async def create_temporal(request: Request) -> Response:
    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        if not isinstance(payload, dict):
            raise BadRequestData("a temporal entity must be a JSON object")
        head = model.parse_entity(
            {k: v for k, v in payload.items() if k in ("id", "type", "scope")}, ctx, require_type=False
        )
        history = model.parse_temporal_attributes(payload, ctx)
        outcome = entities.Outcome()
        writer = writer_of(request, principal)
        async with conn.transaction():
            created = await entities.temporal_upsert(conn, writer, head, history, outcome)
            await entities_audit(conn, writer, "ngsi-ld.temporal-upsert", head.id)
            await _queue(conn, outcome)
    if created:
        return no_content(201, {"Location": f"{PREFIX}/temporal/entities/{quote(head.id, safe=_SAFE)}"})
    return no_content()


@router.post("/temporal/entities/{entity_id:path}/attrs", summary="Add Attributes to Temporal Entity (5.6.12)")
async def append_temporal(entity_id: str, request: Request) -> Response:
    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        if not isinstance(payload, dict):
            raise BadRequestData("a temporal fragment must be a JSON object")
        history = model.parse_temporal_attributes(payload, ctx)
        head = model.Entity(id=model.check_uri(entity_id, "entity id"), types=[])
        outcome = entities.Outcome()
        writer = writer_of(request, principal)
        async with conn.transaction():
            from territoire_data.ngsi_ld import store

            if await store.native_for_update(conn, entity_id) is None:
                await entities._load_writable(conn, writer, entity_id)  # 404, or 422 for a sensor entity
            await entities.temporal_upsert(conn, writer, head, history, outcome)
            await entities_audit(conn, writer, "ngsi-ld.temporal-append", entity_id)
            await _queue(conn, outcome)
    return no_content()


@router.delete(
    "/temporal/entities/{entity_id:path}/attrs/{attr}/{instance_id:path}", summary="Delete Attribute Instance (5.6.16)"
)
async def delete_temporal_instance(entity_id: str, attr: str, instance_id: str, request: Request) -> Response:
    principal = await principal_of(request)
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        writer = writer_of(request, principal)
        async with conn.transaction():
            await entities.temporal_instance(conn, writer, entity_id, ctx.expand(attr), instance_id, None)
            await entities_audit(conn, writer, "ngsi-ld.temporal-delete-instance", entity_id, attribute=attr)
    return no_content()


@router.patch(
    "/temporal/entities/{entity_id:path}/attrs/{attr}/{instance_id:path}", summary="Modify Attribute Instance (5.6.14)"
)
async def patch_temporal_instance(entity_id: str, attr: str, instance_id: str, request: Request) -> Response:
    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        if not isinstance(payload, dict):
            raise BadRequestData("an attribute instance must be a JSON object")
        fragment = model.parse_temporal_attributes({k: v for k, v in payload.items() if k != "@context"}, ctx)
        iri = ctx.expand(attr)
        instances = fragment.get(iri)
        if not instances or len(fragment) != 1:
            raise BadRequestData(f"the body must hold one instance of {attr}")
        writer = writer_of(request, principal)
        async with conn.transaction():
            await entities.temporal_instance(conn, writer, entity_id, iri, instance_id, instances[0])
            await entities_audit(conn, writer, "ngsi-ld.temporal-modify-instance", entity_id, attribute=attr)
    return no_content()


@router.delete(
    "/temporal/entities/{entity_id:path}/attrs/{attr}", summary="Delete Attribute from Temporal Entity (5.6.15)"
)
async def delete_temporal_attribute(entity_id: str, attr: str, request: Request) -> Response:
    principal = await principal_of(request)
    params = request.query_params
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        writer = writer_of(request, principal)
        async with conn.transaction():
            await entities.temporal_delete_attribute(
                conn,
                writer,
                entity_id,
                ctx.expand(attr),
                params.get("datasetId"),
                (params.get("deleteAll") or "false").lower() == "true",
            )
            await entities_audit(conn, writer, "ngsi-ld.temporal-delete-attribute", entity_id, attribute=attr)
    return no_content()


@router.delete("/temporal/entities/{entity_id:path}", summary="Delete Temporal Representation of an Entity (5.6.13)")
async def delete_temporal(entity_id: str, request: Request) -> Response:
    return await delete_entity(entity_id, request)


# --- subscriptions (5.8) ------------------------------------------------------------------------------------------


def _subscriber(principal: Principal) -> Principal:
    """Subscribing reads data: anyone may, with a key or not; what a subscription sees is its creator's view."""
    return principal


@router.post("/subscriptions", summary="Create Subscription (5.8.1)", status_code=201)
@router.post("/subscriptions/", include_in_schema=False, status_code=201)
async def create_subscription(request: Request) -> Response:
    from territoire_data.ngsi_ld import subscriptions

    principal = _subscriber(await principal_of(request))
    payload, context = rq.body_context(request.headers, await request.body())
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        body = subscriptions.validate(payload, ctx)
        async with conn.transaction():
            subscription_id = await subscriptions.create(conn, principal, body, ctx)
            if principal.role is not None:
                await entities_audit(conn, writer_of(request, principal), "ngsi-ld.subscribe", subscription_id)
    return no_content(201, {"Location": f"{PREFIX}/subscriptions/{quote(subscription_id, safe=_SAFE)}"})


@router.get("/subscriptions", summary="Query Subscriptions (5.8.4)")
@router.get("/subscriptions/", include_in_schema=False)
async def list_subscriptions(request: Request) -> Response:
    from territoire_data.ngsi_ld import subscriptions

    principal = await principal_of(request)
    media = rq.accept(request.headers, geo=False)
    params = request.query_params
    settings = _settings(request)
    limit = min(_int(params.get("limit"), settings.ngsild_default_limit, "limit", minimum=1), settings.ngsild_max_limit)
    offset = _int(params.get("offset"), 0, "offset", minimum=0)
    sys_attrs = rq.parse_options(params.get("options")).sys_attrs
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        rows, total = await subscriptions.listing(conn, principal, limit, offset)
    headers = {"NGSILD-Results-Count": str(total)} if (params.get("count") or "").lower() == "true" else {}
    body = [subscriptions.render(r, sys_attrs=sys_attrs) for r in rows]
    return json_response(body, media, ctx, headers=headers)


@router.get("/subscriptions/{subscription_id:path}", summary="Retrieve Subscription (5.8.3)")
async def retrieve_subscription(subscription_id: str, request: Request) -> Response:
    from territoire_data.ngsi_ld import subscriptions

    principal = await principal_of(request)
    media = rq.accept(request.headers, geo=False)
    model.check_uri(subscription_id, "subscription id")
    sys_attrs = rq.parse_options(request.query_params.get("options")).sys_attrs
    async with connection(request) as conn:
        row = await subscriptions.fetch(conn, principal, subscription_id)
        ctx = await context_store(request).active(conn, row["context"])
    return json_response(subscriptions.render(row, sys_attrs=sys_attrs), media, ctx)


@router.patch("/subscriptions/{subscription_id:path}", summary="Update Subscription (5.8.2)", status_code=204)
async def update_subscription(subscription_id: str, request: Request) -> Response:
    from territoire_data.ngsi_ld import subscriptions

    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    model.check_uri(subscription_id, "subscription id")
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        fragment = subscriptions.validate(payload, ctx, partial=True)
        if payload.get("id") not in (None, subscription_id) if isinstance(payload, dict) else False:
            raise BadRequestData("the body's id differs from the subscription's")
        async with conn.transaction():
            await subscriptions.update(conn, principal, subscription_id, fragment, ctx)
    return no_content()


@router.delete("/subscriptions/{subscription_id:path}", summary="Delete Subscription (5.8.5)", status_code=204)
async def delete_subscription(subscription_id: str, request: Request) -> Response:
    from territoire_data.ngsi_ld import subscriptions

    principal = await principal_of(request)
    model.check_uri(subscription_id, "subscription id")
    async with connection(request) as conn, conn.transaction():
        await subscriptions.delete(conn, principal, subscription_id)
    return no_content()


# --- types and attributes (5.7.5 - 5.7.10) -------------------------------------------------------------------------


async def _catalogue(conn: asyncpg.Connection, principal: Principal) -> list[Entity]:
    from territoire_data.ngsi_ld import store

    found, _ = await store.query(conn, principal, store.Filter(), limit=100_000, offset=0, count=False)
    return found


@router.get("/types", summary="Retrieve Available Entity Types (5.7.5, 5.7.6)")
async def list_types(request: Request) -> Response:
    principal = await principal_of(request)
    media = rq.accept(request.headers, geo=False)
    details = (request.query_params.get("details") or "false").lower() == "true"
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        found = await _catalogue(conn, principal)
    by_type: dict[str, set[str]] = {}
    for entity in found:
        for iri in entity.types:
            by_type.setdefault(iri, set()).update(entity.attrs)
    if details:
        body: Any = [
            {
                "id": iri,
                "type": "EntityType",
                "typeName": ctx.compact(iri),
                "attributeNames": sorted(ctx.compact(a) for a in attrs),
            }
            for iri, attrs in sorted(by_type.items())
        ]
    else:
        body = {
            "id": "urn:ngsi-ld:EntityTypeList:territoire",
            "type": "EntityTypeList",
            "typeList": sorted(ctx.compact(t) for t in by_type),
        }
    return json_response(body, media, ctx)


@router.get("/types/{type_name:path}", summary="Details about an Entity Type (5.7.7)")
async def type_info(type_name: str, request: Request) -> Response:
    principal = await principal_of(request)
    media = rq.accept(request.headers, geo=False)
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        found = await _catalogue(conn, principal)
    iri = ctx.expand(type_name)
    matching = [e for e in found if iri in e.types]
    if not matching:
        raise ResourceNotFound(f"no entity of type {type_name}")
    attrs: dict[str, set[str]] = {}
    for entity in matching:
        for name, instances in entity.attrs.items():
            attrs.setdefault(name, set()).update(i.get("type", "Property") for i in instances)
    body = {
        "id": iri,
        "type": "EntityTypeInfo",
        "typeName": ctx.compact(iri),
        "entityCount": len(matching),
        "attributeDetails": [
            {"id": a, "type": "Attribute", "attributeName": ctx.compact(a), "attributeTypes": sorted(kinds)}
            for a, kinds in sorted(attrs.items())
        ],
    }
    return json_response(body, media, ctx)


@router.get("/attributes", summary="Retrieve Available Attributes (5.7.8, 5.7.9)")
async def list_attributes(request: Request) -> Response:
    principal = await principal_of(request)
    media = rq.accept(request.headers, geo=False)
    details = (request.query_params.get("details") or "false").lower() == "true"
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        found = await _catalogue(conn, principal)
    attrs: dict[str, dict[str, Any]] = {}
    for entity in found:
        for name, instances in entity.attrs.items():
            info = attrs.setdefault(name, {"count": 0, "types": set(), "kinds": set()})
            info["count"] += 1
            info["types"].update(entity.types)
            info["kinds"].update(i.get("type", "Property") for i in instances)
    if details:
        body: Any = [
            {
                "id": a,
                "type": "Attribute",
                "attributeName": ctx.compact(a),
                "typeNames": sorted(ctx.compact(t) for t in info["types"]),
            }
            for a, info in sorted(attrs.items())
        ]
    else:
        body = {
            "id": "urn:ngsi-ld:AttributeList:territoire",
            "type": "AttributeList",
            "attributeList": sorted(ctx.compact(a) for a in attrs),
        }
    return json_response(body, media, ctx)


@router.get("/attributes/{attr:path}", summary="Details about an Attribute (5.7.10)")
async def attribute_info(attr: str, request: Request) -> Response:
    principal = await principal_of(request)
    media = rq.accept(request.headers, geo=False)
    async with connection(request) as conn:
        ctx = await request_context(request, conn)
        found = await _catalogue(conn, principal)
    iri = ctx.expand(attr)
    holders = [e for e in found if iri in e.attrs]
    if not holders:
        raise ResourceNotFound(f"no attribute {attr}")
    body = {
        "id": iri,
        "type": "Attribute",
        "attributeName": ctx.compact(iri),
        "attributeCount": len(holders),
        "attributeTypes": sorted({i.get("type", "Property") for e in holders for i in e.attrs[iri]}),
        "typeNames": sorted({ctx.compact(t) for e in holders for t in e.types}),
    }
    return json_response(body, media, ctx)


@router.post("/jsonldContexts", summary="Add @context (5.13.2): hosted by us from then on", status_code=201)
async def add_context(request: Request) -> Response:
    from territoire_data.auth.deps import check_publisher
    from territoire_data.ngsi_ld.contexts import check_document, store_context

    principal = check_publisher(await principal_of(request))
    try:
        document = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise InvalidRequest("the body is not valid JSON") from None
    check_document(document)
    import uuid

    async with connection(request) as conn:
        ctx = context_store(request)
        await ctx.active(conn, document["@context"])  # resolvable and valid, or 400/503 now rather than later
        identifier = uuid.uuid4().hex
        url = f"{_settings(request).base_url}{PREFIX}/jsonldContexts/{identifier}"
        async with conn.transaction():
            stored = await store_context(conn, url, document, "Hosted")
            await entities_audit(conn, writer_of(request, principal), "ngsi-ld.add-context", url)
    return no_content(201, {"Location": f"{PREFIX}/jsonldContexts/{stored}"})


@router.get("/jsonldContexts", summary="List @contexts (5.13.3)")
async def list_contexts(request: Request) -> Response:
    details = (request.query_params.get("details") or "false").lower() == "true"
    kind = request.query_params.get("kind")
    async with connection(request) as conn:
        rows = await conn.fetch(
            "SELECT id, url, kind, created_at, last_used_at, hits FROM ngsild_context "
            "WHERE $1::text IS NULL OR kind = $1 ORDER BY created_at, id",
            kind,
        )
    if not details:
        return Response(orjson.dumps([CORE_URL, *(r["url"] for r in rows)]), media_type=rq.JSON)
    body = [
        {
            "URL": r["url"],
            "localId": f"urn:ngsi-ld:{r['id']}",
            "kind": r["kind"],
            "createdAt": model.iso(r["created_at"]),
            **({"lastUsage": model.iso(r["last_used_at"])} if r["last_used_at"] else {}),
            "numberOfHits": int(r["hits"]),
        }
        for r in rows
    ]
    return Response(orjson.dumps(body), media_type=rq.JSON)


@router.delete("/jsonldContexts/{context_id}", summary="Delete @context (5.13.5)", status_code=204)
async def delete_context(context_id: str, request: Request) -> Response:
    from territoire_data.auth.deps import check_publisher

    principal = check_publisher(await principal_of(request))
    async with connection(request) as conn, conn.transaction():
        url = await conn.fetchval("DELETE FROM ngsild_context WHERE id = $1 RETURNING url", context_id)
        if url is None:
            raise ResourceNotFound(f"no @context {context_id}")
        await entities_audit(conn, writer_of(request, principal), "ngsi-ld.delete-context", url)
    context_store(request).forget(url)
    return no_content()


@router.post("/temporal/entityOperations/query", summary="Query Temporal Evolution of Entities via POST (5.7.4)")
async def temporal_batch_query(request: Request) -> Response:
    from territoire_data.ngsi_ld import store, temporal

    principal = await principal_of(request)
    payload, context = rq.body_context(request.headers, await request.body())
    if not isinstance(payload, dict) or payload.get("type") != "Query":
        raise BadRequestData('the body must be a Query object ("type": "Query")')
    media = rq.accept(request.headers, geo=False)
    settings = _settings(request)
    params = request.query_params
    limit = min(_int(params.get("limit"), settings.ngsild_default_limit, "limit", minimum=1), settings.ngsild_max_limit)
    offset = _int(params.get("offset"), 0, "offset", minimum=0)
    temporal_q = payload.get("temporalQ") or {}
    if not isinstance(temporal_q, dict):
        raise BadRequestData("temporalQ must be an object")
    flat: dict[str, str] = {}
    for key in ("timerel", "timeAt", "endTimeAt", "lastN", "timeproperty"):
        if key in temporal_q:
            value = temporal_q[key]
            if key == "lastN" and (isinstance(value, bool) or not isinstance(value, int)):
                raise BadRequestData("lastN must be a positive integer")
            flat[key] = str(value)
    for key in ("aggrMethods", "aggrPeriodDuration"):
        value = payload.get(key, temporal_q.get(key, params.get(key)))
        if value is not None:
            flat[key] = ",".join(value) if isinstance(value, list) else str(value)
    option_values = rq.parse_options(params.get("options")).values
    if flat.get("aggrMethods") and "aggregatedValues" not in option_values and params.get("format") is None:
        option_values = option_values | {"aggregatedValues"}
    if params.get("format"):
        flat["format"] = params["format"]
    tq = temporal.parse_query(flat, option_values, 10_000)
    selectors = payload.get("entities")
    if selectors is not None and (not isinstance(selectors, list) or not selectors):
        raise BadRequestData("entities must be a non-empty list")
    attrs = payload.get("attrs")
    if attrs is not None and (not isinstance(attrs, list) or not attrs):
        raise BadRequestData("attrs must be a non-empty list")
    if payload.get("q") is not None and not isinstance(payload["q"], str):
        raise BadRequestData("q must be a string")
    async with connection(request) as conn:
        ctx = await context_store(request).active(conn, context)
        wanted = None if attrs is None else frozenset(ctx.expand(a) for a in attrs)
        body: list[Any] = []
        seen: set[str] = set()
        for selector in selectors or [{}]:
            if not isinstance(selector, dict):
                raise BadRequestData("each entities item is an object")
            geo = payload.get("geoQ") or {}
            spec = entities.QuerySpec(
                ids=[selector["id"]] if selector.get("id") else None,
                types=selector.get("type"),
                id_pattern=selector.get("idPattern"),
                attrs=attrs,
                q=payload.get("q"),
                scope_q=payload.get("scopeQ"),
                georel=geo.get("georel"),
                geometry=geo.get("geometry"),
                coordinates=geo.get("coordinates"),
                geoproperty=geo.get("geoproperty"),
            )
            if not any([spec.ids, spec.types, spec.id_pattern, spec.attrs, spec.q, spec.georel, spec.scope_q]):
                raise BadRequestData("a temporal query needs entities, attrs, q, geoQ or scopeQ")
            found, _ = await store.query(
                conn, principal, entities.build_filter(spec, ctx), limit=limit, offset=offset, count=False
            )
            for entity in found:
                if entity.id in seen:
                    continue
                seen.add(entity.id)
                history = await _history(conn, principal, entity, tq, wanted)
                body.append(temporal.render(entity, history, ctx, tq, False))
    return json_response(body, media, ctx)
