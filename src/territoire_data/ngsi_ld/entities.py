"""Entity operations (clauses 5.6 and 5.7 of GS CIM 009): create, retrieve, query, update, append, merge, replace,
delete, batch. Route handlers parse, call these and render; these hold no HTTP."""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import asyncpg

from territoire_data.auth.audit import record_pg
from territoire_data.auth.deps import check_publisher
from territoire_data.auth.policy import Principal, can_read, can_write
from territoire_data.errors import ForbiddenError
from territoire_data.ngsi_ld import model, sensors, store
from territoire_data.ngsi_ld.contexts import ActiveContext
from territoire_data.ngsi_ld.errors import (
    AlreadyExists,
    BadRequestData,
    OperationNotSupported,
    ResourceNotFound,
)
from territoire_data.ngsi_ld.model import Entity
from territoire_data.ngsi_ld.qlang import Compiler, compile_geo_query, compile_scope_q, parse_geo_query

NOTIFY_CHANNEL = "ngsild_change"


@dataclass(frozen=True)
class Writer:
    """Who writes, from where (audit), into which dataset new entities go."""

    principal: Principal
    remote_addr: str | None = None
    dataset_slug: str | None = None
    type_gate: frozenset[str] | None = None  # expanded types of the request's `type` selector


@dataclass
class Outcome:
    """What a write did, for the notifier: entity id -> (entity before, entity after)."""

    changes: list[tuple[Entity | None, Entity | None]] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


async def _dataset_for_new(conn: asyncpg.Connection, writer: Writer) -> int | None:
    principal = writer.principal
    check_publisher(principal)
    if writer.dataset_slug:
        row = await conn.fetchrow("SELECT id, access FROM dataset WHERE slug = $1", writer.dataset_slug)
        if row is None or not can_read(principal, row["id"], row["access"]):
            raise ResourceNotFound(f"no dataset {writer.dataset_slug!r}")
        if not can_write(principal, row["id"]):
            raise ForbiddenError("this key may not write this dataset (ask an admin for a write grant)")
        return int(row["id"])
    if principal.is_admin:
        return None
    if len(principal.writable) == 1:
        return next(iter(principal.writable))
    raise ForbiddenError(
        "a publisher key that writes several datasets names the one of a new entity (NGSILD-Dataset: <slug>)"
    )


async def _visible(conn: asyncpg.Connection, principal: Principal, dataset_id: int | None) -> bool:
    if dataset_id is None or principal.is_admin:
        return True
    access = await conn.fetchval("SELECT access FROM dataset WHERE id = $1", dataset_id)
    return access is not None and can_read(principal, dataset_id, access)


async def _load_writable(conn: asyncpg.Connection, writer: Writer, entity_id: str) -> Entity:
    """The stored entity, locked, that this writer may change (404 when invisible, 403 when read-only, and when
    the request's `type` selector names types it does not have)."""
    model.check_uri(entity_id, "entity id")
    check_publisher(writer.principal)
    entity = await store.native_for_update(conn, entity_id)
    if entity is None or not await _visible(conn, writer.principal, entity.dataset_id):
        exists, dataset = await store.thing_dataset(conn, entity_id)
        if exists and await _visible(conn, writer.principal, dataset):
            raise OperationNotSupported(
                f"{entity_id} is a sensor entity: its attributes change through its Observations (SensorThings, "
                "MQTT ingest, or the temporal API)"
            )
        raise ResourceNotFound(f"entity {entity_id} not found")
    if not can_write(writer.principal, entity.dataset_id):
        raise ForbiddenError("this key may not write this entity's dataset")
    if writer.type_gate is not None and not (writer.type_gate & set(entity.types)):
        raise ResourceNotFound(f"entity {entity_id} is not of the type asked for")
    return entity


async def _audit(conn: asyncpg.Connection, writer: Writer, action: str, target: str, **details: Any) -> None:
    await record_pg(
        conn, writer.principal, action, "ngsi-ld:entity", target, remote_addr=writer.remote_addr, details=details
    )


# --- create, delete -------------------------------------------------------------------------------------------


async def create(conn: asyncpg.Connection, writer: Writer, entity: Entity, outcome: Outcome) -> None:
    if await store.thing_exists(conn, entity.id):
        raise AlreadyExists(f"entity {entity.id} already exists")
    entity.dataset_id = await _dataset_for_new(conn, writer)
    at = _now()
    stamp_all(entity, model.iso(at))
    if not await store.insert(conn, entity, at):
        raise AlreadyExists(f"entity {entity.id} already exists")
    await store.record_instances(conn, entity.id, entity.attrs, at)
    entity.created_at = entity.modified_at = model.iso(at)
    outcome.changes.append((None, entity))


def stamp_all(entity: Entity, at: str, previous: Entity | None = None) -> None:
    for iri, instances in entity.attrs.items():
        model.stamp(instances, at, previous.attrs.get(iri) if previous else None)


async def delete(conn: asyncpg.Connection, writer: Writer, entity_id: str, outcome: Outcome) -> None:
    entity = await _load_writable(conn, writer, entity_id)
    await store.delete(conn, entity_id)
    outcome.changes.append((entity, None))


# --- attribute operations ---------------------------------------------------------------------------------------


@dataclass
class PartialResult:
    updated: list[str] = field(default_factory=list)
    not_updated: list[tuple[str, str]] = field(default_factory=list)  # (attribute, reason)


async def append(
    conn: asyncpg.Connection,
    writer: Writer,
    entity_id: str,
    fragment: Entity,
    ctx: ActiveContext,
    *,
    no_overwrite: bool,
    outcome: Outcome,
) -> PartialResult:
    """Append Entity Attributes (5.6.3): add or replace each attribute (instance by datasetId)."""
    entity = await _load_writable(conn, writer, entity_id)
    before = copy.deepcopy(entity)
    result = PartialResult()
    at = model.iso(_now())
    changed: dict[str, list[dict[str, Any]]] = {}
    for iri, instances in fragment.attrs.items():
        current = entity.attrs.get(iri, [])
        by_dataset = {i.get("datasetId"): i for i in current}
        kept = []
        for instance in instances:
            if no_overwrite and instance.get("datasetId") in by_dataset:
                result.not_updated.append((ctx.compact(iri), "attribute exists and noOverwrite was asked"))
                continue
            kept.append(instance)
        if not kept:
            continue
        _apply_instances(entity, iri, by_dataset, kept, at, current)
        changed[iri] = [i for i in kept if not model.is_null(i)]
        result.updated.append(ctx.compact(iri))
    if fragment.types:
        entity.types = list(dict.fromkeys(entity.types + fragment.types))
    if fragment.scopes is not None:
        entity.scopes = list(dict.fromkeys((entity.scopes or []) + fragment.scopes))
    await _save(conn, entity, before, changed, outcome)
    return result


async def update(
    conn: asyncpg.Connection, writer: Writer, entity_id: str, fragment: Entity, ctx: ActiveContext, outcome: Outcome
) -> PartialResult:
    """Update Entity Attributes (5.6.2): only attributes (and instances) that exist."""
    entity = await _load_writable(conn, writer, entity_id)
    before = copy.deepcopy(entity)
    result = PartialResult()
    at = model.iso(_now())
    changed: dict[str, list[dict[str, Any]]] = {}
    for iri, instances in fragment.attrs.items():
        current = entity.attrs.get(iri)
        if not current:
            result.not_updated.append((ctx.compact(iri), "attribute does not exist"))
            continue
        by_dataset = {i.get("datasetId"): i for i in current}
        # instances of an existing attribute: replaced by datasetId, or added (a new datasetId)
        kept = [i for i in instances if not model.is_null(i) or i.get("datasetId") in by_dataset]
        if len(kept) < len(instances):
            result.not_updated.append((ctx.compact(iri), "no instance with that datasetId to delete"))
        if not kept:
            continue
        _apply_instances(entity, iri, by_dataset, kept, at, current)
        changed[iri] = [i for i in kept if not model.is_null(i)]
        result.updated.append(ctx.compact(iri))
    await _save(conn, entity, before, changed, outcome)
    return result


def _apply_instances(
    entity: Entity,
    iri: str,
    by_dataset: dict[str | None, dict[str, Any]],
    instances: list[dict[str, Any]],
    at: str,
    current: list[dict[str, Any]],
) -> None:
    """Put new instances in place (by datasetId); an instance saying urn:ngsi-ld:null removes its namesake."""
    live = [i for i in instances if not model.is_null(i)]
    model.stamp(live, at, current)
    for instance in instances:
        if model.is_null(instance):
            by_dataset.pop(instance.get("datasetId"), None)
        else:
            by_dataset[instance.get("datasetId")] = instance
    if by_dataset:
        entity.attrs[iri] = list(by_dataset.values())
    else:
        entity.attrs.pop(iri, None)


async def partial_attribute_update(
    conn: asyncpg.Connection,
    writer: Writer,
    entity_id: str,
    attr: str,
    body: dict[str, Any],
    ctx: ActiveContext,
    outcome: Outcome,
) -> None:
    """Partial Attribute Update (5.6.4): the members given replace those of the instance (by datasetId)."""
    entity = await _load_writable(conn, writer, entity_id)
    before = copy.deepcopy(entity)
    iri = ctx.expand(attr)
    current = entity.attrs.get(iri)
    if not current:
        raise ResourceNotFound(f"attribute {attr} not found")
    dataset = body.get("datasetId")
    target = next((i for i in current if i.get("datasetId") == dataset), None)
    if target is None:
        raise ResourceNotFound(f"attribute {attr} has no instance with datasetId {dataset}")
    if any(body.get(member) == model.NULL for member in model.MEMBER_TYPE | {"value": "Property"}):
        remaining = [i for i in current if i is not target]
        if remaining:
            entity.attrs[iri] = remaining
        else:
            del entity.attrs[iri]
        await _save(conn, entity, before, {}, outcome)
        return
    merged = {k: v for k, v in target.items() if k not in model.SYSTEM_MEMBERS}
    kind = body.get("type", merged.get("type"))
    if kind != merged.get("type") and body.get("type") is not None:
        merged = {"type": kind}
    merged_body = {**_compact_instance(merged, ctx), **body}
    merged_body.setdefault("type", kind)
    merged_body = {k: v for k, v in merged_body.items() if v != model.NULL}
    instance = model.parse_attribute(attr, merged_body, ctx)[0]
    at = model.iso(_now())
    model.stamp([instance], at, current)
    entity.attrs[iri] = [instance if i is target else i for i in current]
    await _save(conn, entity, before, {iri: [instance]}, outcome)


def _compact_instance(instance: dict[str, Any], ctx: ActiveContext) -> dict[str, Any]:
    rendered = model.render_instance(instance, ctx, model.RenderOptions())
    return rendered if isinstance(rendered, dict) else {"value": rendered}


async def replace_attribute(
    conn: asyncpg.Connection,
    writer: Writer,
    entity_id: str,
    attr: str,
    body: Any,
    ctx: ActiveContext,
    outcome: Outcome,
) -> None:
    """Replace Attribute (5.6.19): the whole attribute (instance by datasetId)."""
    entity = await _load_writable(conn, writer, entity_id)
    before = copy.deepcopy(entity)
    iri = ctx.expand(attr)
    current = entity.attrs.get(iri)
    if not current:
        raise ResourceNotFound(f"attribute {attr} not found")
    instances = model.parse_attribute(attr, body, ctx)
    at = model.iso(_now())
    model.stamp(instances, at, current)
    by_dataset = {i.get("datasetId"): i for i in current}
    for instance in instances:
        by_dataset[instance.get("datasetId")] = instance
    entity.attrs[iri] = list(by_dataset.values())
    await _save(conn, entity, before, {iri: instances}, outcome)


async def delete_attribute(
    conn: asyncpg.Connection,
    writer: Writer,
    entity_id: str,
    attr: str,
    ctx: ActiveContext,
    outcome: Outcome,
    *,
    dataset_id: str | None,
    delete_all: bool,
) -> None:
    entity = await _load_writable(conn, writer, entity_id)
    before = copy.deepcopy(entity)
    iri = ctx.expand(attr)
    current = entity.attrs.get(iri)
    if not current:
        raise ResourceNotFound(f"attribute {attr} not found")
    if delete_all:
        remaining: list[dict[str, Any]] = []
    else:
        remaining = [i for i in current if i.get("datasetId") != dataset_id]
        if len(remaining) == len(current):
            raise ResourceNotFound(f"attribute {attr} has no instance with datasetId {dataset_id}")
    if remaining:
        entity.attrs[iri] = remaining
    else:
        del entity.attrs[iri]
    await _save(conn, entity, before, {}, outcome)


async def merge(conn: asyncpg.Connection, writer: Writer, entity_id: str, fragment: Entity, outcome: Outcome) -> None:
    """Merge Entity (5.6.17): attributes added or merged, `urn:ngsi-ld:null` deletes."""
    entity = await _load_writable(conn, writer, entity_id)
    before = copy.deepcopy(entity)
    at = model.iso(_now())
    changed: dict[str, list[dict[str, Any]]] = {}
    for iri, instances in fragment.attrs.items():
        if instances is None:
            entity.attrs.pop(iri, None)
            continue
        current = entity.attrs.get(iri, [])
        by_dataset = {i.get("datasetId"): i for i in current}
        merged_list = []
        for instance in instances:
            old = by_dataset.get(instance.get("datasetId"))
            if model.is_null(instance):
                merged_list.append(instance)
                continue
            merged = {**old, **instance} if old and old.get("type") == instance.get("type") else instance
            merged = {k: v for k, v in merged.items() if v != model.NULL}
            merged_list.append(merged)
        _apply_instances(entity, iri, by_dataset, merged_list, at, current)
        changed[iri] = [i for i in merged_list if not model.is_null(i)]
    if fragment.types:
        entity.types = list(dict.fromkeys(entity.types + fragment.types))
    if fragment.scopes is not None:
        entity.scopes = fragment.scopes
    await _save(conn, entity, before, changed, outcome)


async def replace(conn: asyncpg.Connection, writer: Writer, entity_id: str, new: Entity, outcome: Outcome) -> None:
    """Replace Entity (5.6.18): everything but the id and creation time."""
    entity = await _load_writable(conn, writer, entity_id)
    if new.id and new.id != entity_id:
        raise BadRequestData("the body's id differs from the entity's")
    before = copy.deepcopy(entity)
    new.id = entity_id
    new.dataset_id = entity.dataset_id
    new.created_at = entity.created_at
    stamp_all(new, model.iso(_now()))
    await _save(conn, new, before, new.attrs, outcome)


async def _save(
    conn: asyncpg.Connection,
    entity: Entity,
    before: Entity,
    changed: dict[str, list[dict[str, Any]]],
    outcome: Outcome,
) -> None:
    at = _now()
    await store.save(conn, entity, at)
    await store.record_instances(conn, entity.id, changed, at)
    entity.modified_at = model.iso(at)
    outcome.changes.append((before, entity))


# --- queries ------------------------------------------------------------------------------------------------------


@dataclass
class QuerySpec:
    ids: list[str] | None = None
    types: str | None = None
    id_pattern: str | None = None
    attrs: list[str] | None = None
    q: str | None = None
    scope_q: str | None = None
    georel: str | None = None
    geometry: str | None = None
    coordinates: Any = None
    geoproperty: str | None = None


def build_filter(spec: QuerySpec, ctx: ActiveContext) -> store.Filter:
    flt = store.Filter(ids=spec.ids)
    params = flt.params
    if spec.ids is not None:
        for entity_id in spec.ids:
            model.check_uri(entity_id, "id")
    if spec.types:
        flt.conditions.append(_type_condition(spec.types, ctx, params))
        flt.type_hint = {ctx.expand(t.strip()) for t in re.split(r"[(),;|]", spec.types) if t.strip()}
    if spec.id_pattern:
        try:
            re.compile(spec.id_pattern)
        except re.error:
            raise BadRequestData("invalid idPattern") from None
        flt.conditions.append(f"e.id ~ {params.add(spec.id_pattern, 'text')}")
    if spec.attrs:
        iris = [ctx.expand(a) for a in spec.attrs]
        flt.conditions.append(f"e.attrs ?| {params.add(iris, 'text[]')}")
    if spec.q:
        flt.conditions.append(Compiler(ctx, params).compile_q(spec.q))
    if spec.scope_q:
        flt.conditions.append(compile_scope_q(spec.scope_q, params))
    if spec.georel or spec.geometry or spec.coordinates is not None:
        geo = parse_geo_query(spec.georel, spec.geometry, spec.coordinates, spec.geoproperty)
        geoproperty = ctx.expand(geo.geoproperty)
        if geoproperty == sensors.LOCATION_IRI:
            geom = "e.location"
        else:
            geom = f"ST_SetSRID(ST_GeomFromGeoJSON(e.attrs -> {params.add(geoproperty, 'text')} -> 0 -> 'value'), 4326)"
        flt.conditions.append(f"({geom} IS NOT NULL AND {compile_geo_query(geo, params, geom)})")
    return flt


def _type_condition(text: str, ctx: ActiveContext, params: Any) -> str:
    """`A,B` (or), `A;B` (and), parentheses: the 1.8 type selector, over the expanded types array."""
    tokens = re.findall(r"[(),;|]|[^(),;|]+", text)
    sql: list[str] = []
    for token in tokens:
        token = token.strip()
        if not token:
            continue
        if token in ("(", ")"):
            sql.append(token)
        elif token in (",", "|"):
            sql.append(" OR ")
        elif token == ";":  # noqa: S105 - a separator of the type selector, not a password
            sql.append(" AND ")
        else:
            model.check_name(token)
            sql.append(f"({params.add(ctx.expand(token), 'text')} = ANY(e.types))")
    condition = "".join(sql)
    if condition.count("(") != condition.count(")"):
        raise BadRequestData("unbalanced parentheses in type")
    return f"({condition})"


# --- temporal representation writes (5.6.11, 5.6.12) ------------------------------------------------------------


async def temporal_upsert(
    conn: asyncpg.Connection,
    writer: Writer,
    entity: Entity,
    history: dict[str, list[dict[str, Any]]],
    outcome: Outcome,
) -> bool:
    """Create the entity (True) or add to it (False): every instance goes to the history, the latest per datasetId
    becomes the attribute's current value."""
    at = _now()
    stamp = model.iso(at)
    for instances in history.values():
        for instance in instances:
            instance.setdefault("createdAt", stamp)
            instance["modifiedAt"] = stamp
    current = await store.native_for_update(conn, entity.id)
    if current is None:
        if not entity.types:
            raise BadRequestData("a new temporal entity needs a type")
        if await store.thing_exists(conn, entity.id):
            raise OperationNotSupported(f"{entity.id} is a sensor entity: its history is its Observations")
        entity.attrs = {iri: model.latest_instances(items) for iri, items in history.items()}
        entity.dataset_id = await _dataset_for_new(conn, writer)
        if not await store.insert(conn, entity, at):
            raise AlreadyExists(f"entity {entity.id} already exists")
        await store.record_instances(conn, entity.id, history, at)
        outcome.changes.append((None, entity))
        return True
    current = await _load_writable(conn, writer, entity.id)
    before = copy.deepcopy(current)
    for iri, items in history.items():
        by_dataset = {i.get("datasetId"): i for i in current.attrs.get(iri, [])}
        for instance in model.latest_instances(items):
            old = by_dataset.get(instance.get("datasetId"))
            if old is None or str(instance.get("observedAt", "")) >= str(old.get("observedAt", "")):
                by_dataset[instance.get("datasetId")] = instance
        current.attrs[iri] = list(by_dataset.values())
    if entity.types:
        current.types = list(dict.fromkeys(current.types + entity.types))
    await store.save(conn, current, at)
    await store.record_instances(conn, current.id, history, at)
    outcome.changes.append((before, current))
    return False


async def temporal_delete_attribute(
    conn: asyncpg.Connection, writer: Writer, entity_id: str, iri: str, dataset_id: str | None, delete_all: bool
) -> None:
    entity = await _load_writable(conn, writer, entity_id)
    found = await conn.fetchval(
        "SELECT count(*) FROM ngsild_attribute_instance WHERE entity_id = $1 AND attr = $2", entity_id, iri
    )
    if not found and iri not in entity.attrs:
        raise ResourceNotFound("attribute not found")
    if delete_all:
        await conn.execute("DELETE FROM ngsild_attribute_instance WHERE entity_id = $1 AND attr = $2", entity_id, iri)
        entity.attrs.pop(iri, None)
    else:
        await conn.execute(
            "DELETE FROM ngsild_attribute_instance WHERE entity_id = $1 AND attr = $2 "
            "AND dataset_id IS NOT DISTINCT FROM $3",
            entity_id,
            iri,
            dataset_id,
        )
        remaining = [i for i in entity.attrs.get(iri, []) if i.get("datasetId") != dataset_id]
        if remaining:
            entity.attrs[iri] = remaining
        else:
            entity.attrs.pop(iri, None)
    await store.save(conn, entity, _now())


async def temporal_instance(
    conn: asyncpg.Connection,
    writer: Writer,
    entity_id: str,
    iri: str,
    instance_id: str,
    replacement: dict[str, Any] | None,
) -> None:
    """Modify (replacement) or delete (None) one instance of an attribute's history."""
    await _load_writable(conn, writer, entity_id)
    if replacement is None:
        status = await conn.execute(
            "DELETE FROM ngsild_attribute_instance WHERE entity_id = $1 AND attr = $2 AND instance_id = $3",
            entity_id,
            iri,
            instance_id,
        )
    else:
        replacement["modifiedAt"] = model.now_iso()
        status = await conn.execute(
            "UPDATE ngsild_attribute_instance SET instance = $4::text::jsonb, modified_at = now(), "
            "observed_at = $5::text::timestamptz WHERE entity_id = $1 AND attr = $2 AND instance_id = $3",
            entity_id,
            iri,
            instance_id,
            json.dumps(replacement),
            replacement.get("observedAt"),
        )
    if status.endswith(" 0"):
        raise ResourceNotFound(f"no instance {instance_id} of this attribute")
