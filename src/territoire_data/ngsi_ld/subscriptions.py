"""Subscriptions (clause 5.8): stored with their @context and their creator's access, matched against every change,
their notifications queued in the change's own transaction (outbox `ngsild_notification`), delivered by `notifier`.

A change is matched in the database itself: the subscription's `q`, `geoQ` and `scopeQ` compile (qlang) to a
condition evaluated over the changed entity, so a subscription filters exactly as a query does. The creator's
access is kept with the subscription: a restricted dataset's entities never reach a subscriber who may not read
them, and a subscription is a 404 to anyone but its creator and admins.
"""

from __future__ import annotations

import json
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import unquote

import asyncpg

from territoire_data.auth.policy import Principal, can_read
from territoire_data.db.params import Params
from territoire_data.ngsi_ld import model
from territoire_data.ngsi_ld.contexts import ActiveContext, ContextStore
from territoire_data.ngsi_ld.errors import BadRequestData, ResourceNotFound
from territoire_data.ngsi_ld.model import Entity, RenderOptions
from territoire_data.ngsi_ld.qlang import Compiler, compile_geo_query, compile_scope_q, parse_geo_query

QUEUE_CHANNEL = "ngsild_notification"
FORMATS = ("normalized", "keyValues", "concise")
TRIGGERS = (
    "entityCreated",
    "entityUpdated",
    "entityDeleted",
    "attributeCreated",
    "attributeUpdated",
    "attributeDeleted",
)
_MQTT = re.compile(r"^mqtts?://[^/\s]+(:\d+)?/\S+$")


def principal_json(principal: Principal) -> dict[str, Any]:
    return {
        "name": principal.name,
        "role": principal.role,
        "readable": sorted(principal.readable),
        "key_id": principal.key_id,
        "subject": principal.subject,
    }


def principal_from(data: dict[str, Any]) -> Principal:
    return Principal(
        name=data.get("name", "anonymous"),
        role=data.get("role"),
        key_id=data.get("key_id"),
        readable=frozenset(data.get("readable") or ()),
        subject=data.get("subject"),
    )


def owns(principal: Principal, stored: dict[str, Any]) -> bool:
    if principal.is_admin:
        return True
    if principal.key_id is not None:
        return stored.get("key_id") == principal.key_id
    if principal.subject is not None:
        return stored.get("subject") == principal.subject
    return stored.get("role") is None and principal.role is None


def validate(body: Any, ctx: ActiveContext, *, partial: bool = False) -> dict[str, Any]:
    """A subscription (or, `partial`, a fragment of one) checked member by member; returns it without @context."""
    if not isinstance(body, dict):
        raise BadRequestData("a subscription must be a JSON object")
    body = {k: v for k, v in body.items() if k != "@context"}
    if not partial:
        if body.get("type") != "Subscription":
            raise BadRequestData('a subscription needs "type": "Subscription"')
        if "id" in body:
            model.check_uri(body["id"], "id")
        if not body.get("entities") and not body.get("watchedAttributes"):
            raise BadRequestData("a subscription needs entities or watchedAttributes")
        if "notification" not in body:
            raise BadRequestData("a subscription needs a notification")
    elif "type" in body and body["type"] != "Subscription":
        raise BadRequestData('type must be "Subscription"')
    if "entities" in body:
        selectors = body["entities"]
        if not isinstance(selectors, list) or not selectors:
            raise BadRequestData("entities must be a non-empty list")
        for selector in selectors:
            if not isinstance(selector, dict) or not isinstance(selector.get("type"), str):
                raise BadRequestData("each entities item needs a type")
            if "id" in selector:
                model.check_uri(selector["id"], "entities.id")
            if "idPattern" in selector:
                try:
                    re.compile(str(selector["idPattern"]))
                except re.error:
                    raise BadRequestData("invalid idPattern") from None
    if "watchedAttributes" in body:
        watched = body["watchedAttributes"]
        if not isinstance(watched, list) or not watched or not all(isinstance(w, str) for w in watched):
            raise BadRequestData("watchedAttributes must be a non-empty list of names")
    if "timeInterval" in body:
        raise BadRequestData("periodic subscriptions (timeInterval) are not supported; use watchedAttributes")
    if "throttling" in body and (not isinstance(body["throttling"], int | float) or body["throttling"] <= 0):
        raise BadRequestData("throttling must be a positive number of seconds")
    if "expiresAt" in body:
        expires = model.parse_datetime(body["expiresAt"], "expiresAt")
        if not partial and expires <= datetime.now(UTC):
            raise BadRequestData("expiresAt is in the past")
    if "jsonldContext" in body:
        model.check_uri(body["jsonldContext"], "jsonldContext")
    if "csf" in body:
        raise BadRequestData("csf (context source filters) is not supported: this broker has no context sources")
    if "isActive" in body and not isinstance(body["isActive"], bool):
        raise BadRequestData("isActive must be true or false")
    if "notificationTrigger" in body:
        triggers = body["notificationTrigger"]
        if not isinstance(triggers, list) or not set(triggers) <= set(TRIGGERS):
            raise BadRequestData(f"notificationTrigger items are among {', '.join(TRIGGERS)}")
    if "q" in body:
        if not isinstance(body["q"], str):
            raise BadRequestData("q must be a string")
        Compiler(ctx, Params()).compile_q(unquote(body["q"]))
    if "scopeQ" in body:
        compile_scope_q(str(body["scopeQ"]), Params())
    if "geoQ" in body:
        geo = body["geoQ"]
        if not isinstance(geo, dict):
            raise BadRequestData("geoQ must be an object")
        parse_geo_query(geo.get("georel"), geo.get("geometry"), geo.get("coordinates"), geo.get("geoproperty"))
    if "notification" in body:
        _check_notification(body["notification"])
    checked: dict[str, Any] = body
    return checked


def _check_notification(notification: Any) -> None:
    if not isinstance(notification, dict):
        raise BadRequestData("notification must be an object")
    endpoint = notification.get("endpoint")
    if not isinstance(endpoint, dict) or not isinstance(endpoint.get("uri"), str):
        raise BadRequestData("notification.endpoint.uri is required")
    uri = endpoint["uri"]
    if not (uri.startswith(("http://", "https://")) or _MQTT.match(uri)):
        raise BadRequestData("notification.endpoint.uri must be http(s):// or mqtt(s)://host[:port]/topic")
    if endpoint.get("accept", "application/json") not in ("application/json", "application/ld+json"):
        raise BadRequestData("notification.endpoint.accept is application/json or application/ld+json")
    if notification.get("format", "normalized") not in FORMATS:
        raise BadRequestData(f"notification.format is one of {', '.join(FORMATS)}")
    for member in ("attributes", "pick", "omit"):
        names = notification.get(member)
        if names is not None and (
            not isinstance(names, list) or not names or not all(isinstance(a, str) and a for a in names)
        ):
            raise BadRequestData(f"notification.{member} must be a non-empty list of names")
    chosen = [m for m in ("attributes", "pick") if m in notification]
    if len(chosen) > 1 or ("omit" in notification and (chosen or False)):
        raise BadRequestData("notification: attributes, pick and omit do not combine")
    if notification.get("showChanges") and notification.get("format") == "keyValues":
        raise BadRequestData("showChanges needs the normalized or concise format")
    for member in ("receiverInfo", "notifierInfo"):
        pairs = endpoint.get(member)
        if pairs is not None and (
            not isinstance(pairs, list)
            or not all(
                isinstance(p, dict) and isinstance(p.get("key"), str) and isinstance(p.get("value"), str) for p in pairs
            )
        ):
            raise BadRequestData(f"notification.endpoint.{member} is a list of string key/value pairs")


async def create(conn: asyncpg.Connection, principal: Principal, body: dict[str, Any], ctx: ActiveContext) -> str:
    subscription_id = body.get("id") or f"urn:ngsi-ld:Subscription:{uuid.uuid4()}"
    body = {**body, "id": subscription_id}
    status = await conn.execute(
        "INSERT INTO ngsild_subscription (id, body, context, principal, is_active, expires_at) "
        "VALUES ($1, $2, $3, $4, $5, $6::text::timestamptz) ON CONFLICT (id) DO NOTHING",
        subscription_id,
        body,
        ctx.output,
        principal_json(principal),
        body.get("isActive", True),
        body.get("expiresAt"),
    )
    if not status.endswith(" 1"):
        from territoire_data.ngsi_ld.errors import AlreadyExists

        raise AlreadyExists(f"subscription {subscription_id} already exists")
    return str(subscription_id)


def render(row: asyncpg.Record, *, sys_attrs: bool = False) -> dict[str, Any]:
    body: dict[str, Any] = dict(row["body"])
    now = datetime.now(UTC)
    expired = row["expires_at"] is not None and row["expires_at"] <= now
    if expired:
        status = "expired"
    elif not row["is_active"]:
        status = "paused"
    elif row["last_failure"] is not None and (row["last_success"] is None or row["last_failure"] > row["last_success"]):
        status = "failed"
    else:
        status = "active"
    body["isActive"] = bool(row["is_active"]) and not expired
    body["status"] = status
    notification = dict(body.get("notification") or {})
    notification["timesSent"] = int(row["times_sent"])
    notification["timesFailed"] = int(row["times_failed"])
    for column, name in (
        ("last_notification", "lastNotification"),
        ("last_success", "lastSuccess"),
        ("last_failure", "lastFailure"),
    ):
        if row[column] is not None:
            notification[name] = model.iso(row[column])
    notification["status"] = "failed" if status == "failed" else "ok"
    body["notification"] = notification
    if sys_attrs:
        body["createdAt"] = model.iso(row["created_at"])
        body["modifiedAt"] = model.iso(row["modified_at"])
    return body


async def fetch(conn: asyncpg.Connection, principal: Principal, subscription_id: str) -> asyncpg.Record:
    row = await conn.fetchrow("SELECT * FROM ngsild_subscription WHERE id = $1", subscription_id)
    if row is None or not owns(principal, row["principal"]):
        raise ResourceNotFound(f"subscription {subscription_id} not found")
    return row


async def listing(
    conn: asyncpg.Connection, principal: Principal, limit: int, offset: int
) -> tuple[list[asyncpg.Record], int]:
    rows = await conn.fetch("SELECT * FROM ngsild_subscription ORDER BY created_at, id")
    mine = [r for r in rows if owns(principal, r["principal"])]
    return mine[offset : offset + limit], len(mine)


async def update(
    conn: asyncpg.Connection, principal: Principal, subscription_id: str, fragment: dict[str, Any], ctx: ActiveContext
) -> None:
    row = await fetch(conn, principal, subscription_id)
    body = dict(row["body"])
    for key, value in fragment.items():
        if key in ("id", "type"):
            continue
        if key == "notification" and isinstance(value, dict):
            body["notification"] = {**body.get("notification", {}), **value}
        else:
            body[key] = value
    validate(body, ctx)
    await conn.execute(
        "UPDATE ngsild_subscription SET body = $2, context = $3, is_active = $4, expires_at = $5::text::timestamptz, "
        "modified_at = now() WHERE id = $1",
        subscription_id,
        body,
        ctx.output if fragment else row["context"],
        body.get("isActive", True),
        body.get("expiresAt"),
    )


async def delete(conn: asyncpg.Connection, principal: Principal, subscription_id: str) -> None:
    await fetch(conn, principal, subscription_id)
    await conn.execute("DELETE FROM ngsild_subscription WHERE id = $1", subscription_id)


# --- matching -----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Change:
    before: Entity | None
    after: Entity | None
    attrs: frozenset[str] | None = None  # expanded names that changed (None: compare before and after)


def _changed_attrs(change: Change) -> set[str]:
    if change.attrs is not None:
        return set(change.attrs)
    before = change.before.attrs if change.before else {}
    after = change.after.attrs if change.after else {}
    changed = set()
    for name in set(before) | set(after):
        if _strip(before.get(name)) != _strip(after.get(name)):
            changed.add(name)
    return changed


def _strip(instances: list[dict[str, Any]] | None) -> Any:
    if instances is None:
        return None
    return [{k: v for k, v in i.items() if k not in model.SYSTEM_MEMBERS} for i in instances]


def _trigger(change: Change, changed: set[str]) -> str:
    if change.before is None:
        return "entityCreated"
    if change.after is None:
        return "entityDeleted"
    return "entityUpdated"


async def queue_changes(
    conn: asyncpg.Connection,
    changes: list[tuple[Entity | None, Entity | None]] | list[Change],
    contexts: ContextStore | None = None,
) -> int:
    """Queue a notification for each active subscription each change matches; returns how many were queued."""
    if not changes:
        return 0
    rows = await conn.fetch(
        "SELECT * FROM ngsild_subscription WHERE is_active AND (expires_at IS NULL OR expires_at > now())"
    )
    if not rows:
        return 0
    store = contexts or _default_store()
    queued = 0
    items = [c if isinstance(c, Change) else Change(c[0], c[1]) for c in changes]
    for row in rows:
        ctx = await store.active(conn, row["context"])
        body = row["body"]
        subscriber = principal_from(row["principal"])
        matched: list[tuple[Entity, str]] = []
        for change in items:
            entity = change.after or change.before
            assert entity is not None
            changed = _changed_attrs(change)
            trigger = _trigger(change, changed)
            if not await _matches(conn, body, ctx, subscriber, entity, changed, trigger, change.after is None):
                continue
            matched.append((entity, trigger))
        if not matched:
            continue
        throttling = body.get("throttling")
        last = row["last_notification"]
        if throttling and last is not None and datetime.now(UTC) - last < timedelta(seconds=float(throttling)):
            continue
        payload = notification_payload(row["id"], body, ctx, [e for e, _ in matched], matched[0][1])
        await conn.execute(
            "INSERT INTO ngsild_notification (subscription_id, payload) VALUES ($1, $2)", row["id"], payload
        )
        await conn.execute("UPDATE ngsild_subscription SET last_notification = now() WHERE id = $1", row["id"])
        queued += 1
    if queued:
        await conn.execute(f"NOTIFY {QUEUE_CHANNEL}")
    return queued


_STORE: ContextStore | None = None


def _default_store() -> ContextStore:
    global _STORE
    if _STORE is None:
        _STORE = ContextStore()
    return _STORE


async def _matches(
    conn: asyncpg.Connection,
    body: dict[str, Any],
    ctx: ActiveContext,
    subscriber: Principal,
    entity: Entity,
    changed: set[str],
    trigger: str,
    deleted: bool,
) -> bool:
    triggers = body.get("notificationTrigger") or [
        "entityCreated",
        "entityUpdated",
        "attributeCreated",
        "attributeUpdated",
    ]
    if trigger == "entityDeleted" and "entityDeleted" not in triggers:
        return False
    if trigger != "entityDeleted" and not ({trigger, "attributeCreated", "attributeUpdated"} & set(triggers)):
        return False
    selectors = body.get("entities")
    if selectors and not any(_selector_matches(s, ctx, entity) for s in selectors):
        return False
    watched = body.get("watchedAttributes")
    if watched and not deleted and not ({ctx.expand(w) for w in watched} & changed):
        return False
    if not deleted and not changed and trigger == "entityUpdated":
        return False
    if entity.dataset_id is not None and not subscriber.is_admin:
        access = await conn.fetchval("SELECT access FROM dataset WHERE id = $1", entity.dataset_id)
        if access is None or not can_read(subscriber, entity.dataset_id, access):
            return False
    conditions = []
    params = Params()
    if body.get("q"):  # a subscription's q is URL-encoded, as in a query string
        conditions.append(Compiler(ctx, params).compile_q(unquote(str(body["q"]))))
    if body.get("scopeQ"):
        conditions.append(compile_scope_q(str(body["scopeQ"]), params))
    if body.get("geoQ"):
        geo_body = body["geoQ"]
        geo = parse_geo_query(
            geo_body.get("georel"), geo_body.get("geometry"), geo_body.get("coordinates"), geo_body.get("geoproperty")
        )
        geometry = model.geometry_of(entity, ctx.expand(geo.geoproperty))
        if geometry is None:
            return False
        geom = f"ST_SetSRID(ST_GeomFromGeoJSON({params.add(json.dumps(geometry), 'text')}), 4326)"
        conditions.append(compile_geo_query(geo, params, geom))
    if not conditions:
        return True
    attrs = params.add(entity.attrs, "jsonb")
    scopes = params.add(entity.scopes, "text[]")
    sql = f"SELECT {' AND '.join(conditions)} FROM (SELECT {attrs} AS attrs, {scopes} AS scopes) e"
    return bool(await conn.fetchval(sql, *params.values))


def _selector_matches(selector: dict[str, Any], ctx: ActiveContext, entity: Entity) -> bool:
    if ctx.expand(selector["type"]) not in entity.types:
        return False
    if selector.get("id") and selector["id"] != entity.id:
        return False
    return not (selector.get("idPattern") and not re.search(selector["idPattern"], entity.id))


def notification_payload(
    subscription_id: str, body: dict[str, Any], ctx: ActiveContext, entities: list[Entity], trigger: str
) -> dict[str, Any]:
    notification = body.get("notification") or {}
    attributes = notification.get("attributes") or notification.get("pick")
    options = RenderOptions(
        form=notification.get("format", "normalized"),
        sys_attrs=bool(notification.get("sysAttrs")),
        attrs=None if not attributes else frozenset(ctx.expand(a) for a in attributes if a not in ("id", "type")),
        omit=frozenset(a if a in ("id", "type") else ctx.expand(a) for a in notification.get("omit") or []),
    )
    endpoint = notification["endpoint"]
    accept = endpoint.get("accept", "application/json")
    data = [model.render_entity(e, ctx, options) for e in entities]
    message: dict[str, Any] = {
        "id": f"urn:ngsi-ld:Notification:{uuid.uuid4()}",
        "type": "Notification",
        "subscriptionId": subscription_id,
        "notifiedAt": model.now_iso(),
        "data": data,
        "triggerReason": trigger,
    }
    context = body.get("jsonldContext") or ctx.output  # the subscriber's own context for its notifications
    headers = {"Content-Type": accept}
    if accept == "application/ld+json":
        message = {"@context": context, **message}
    else:
        from territoire_data.ngsi_ld.request import CONTEXT_REL, link_header

        headers["Link"] = (
            f'<{body["jsonldContext"]}>; rel="{CONTEXT_REL}"; type="application/ld+json"'
            if body.get("jsonldContext")
            else link_header(ctx)
        )
    for info in endpoint.get("receiverInfo") or []:
        if isinstance(info, dict) and isinstance(info.get("key"), str) and isinstance(info.get("value"), str):
            headers[info["key"]] = info["value"]
    return {"endpoint": endpoint["uri"], "headers": headers, "body": message}
