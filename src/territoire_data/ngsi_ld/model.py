"""The NGSI-LD information model: entities and attributes parsed from any of the representations, and rendered.

Stored and passed around in one normalized form: an `Entity` with expanded type IRIs and, per expanded attribute
name, its instances (several with distinct `datasetId`s); an instance is a dict of the core members (`type`,
`value`, `object`, `observedAt`, `unitCode`, `datasetId`, ...) and of its sub-attributes by expanded name. Input may
be normalized, concise or key-value; output is normalized, concise or keyValues (clause 4.5 of GS CIM 009).
A member is never written as null: a missing `unitCode` is absent, not `"unitCode": null` (the store's own
validation rejected that once).
"""

from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import shapely.errors
import shapely.geometry

from territoire_data.ngsi_ld.contexts import ActiveContext
from territoire_data.ngsi_ld.errors import BadRequestData

ATTRIBUTE_TYPES = (
    "Property",
    "Relationship",
    "GeoProperty",
    "LanguageProperty",
    "ListProperty",
    "ListRelationship",
    "JsonProperty",
    "VocabProperty",
)
# the member that carries each attribute type's value
VALUE_MEMBER = {
    "Property": "value",
    "GeoProperty": "value",
    "Relationship": "object",
    "LanguageProperty": "languageMap",
    "ListProperty": "valueList",
    "ListRelationship": "objectList",
    "JsonProperty": "json",
    "VocabProperty": "vocab",
}
MEMBER_TYPE = {member: kind for kind, member in VALUE_MEMBER.items() if kind != "GeoProperty"}
SYSTEM_MEMBERS = ("createdAt", "modifiedAt", "deletedAt")
CORE_MEMBERS = frozenset(
    {
        "type",
        "value",
        "object",
        "objectType",
        "languageMap",
        "valueList",
        "objectList",
        "json",
        "vocab",
        "observedAt",
        "unitCode",
        "datasetId",
        "instanceId",
        "lang",
        *SYSTEM_MEMBERS,
    }
)
GEOMETRY_TYPES = frozenset(
    {"Point", "MultiPoint", "LineString", "MultiLineString", "Polygon", "MultiPolygon", "GeometryCollection"}
)
GEO_ATTRIBUTES = ("location", "observationSpace", "operationSpace")
# members a broker writes in its output only, never accepted in a request
OUTPUT_ONLY = frozenset(
    {
        "previousValue",
        "previousObject",
        "previousLanguageMap",
        "previousValueList",
        "previousObjectList",
        "previousJson",
        "previousVocab",
        "entityIdSealed",
        "entityTypeSealed",
    }
)
FORBIDDEN_NAMES = OUTPUT_ONLY | {"value", "object", "objectList", "valueList", "languageMap", "json", "vocab"}
NULL = "urn:ngsi-ld:null"
RESERVED = frozenset({"id", "@id", "type", "@type", "scope", "@context", "createdAt", "modifiedAt", "deletedAt"})
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:\S+$")
_BAD_NAME = re.compile(r"[\s<>\"'=;()\\{}|^`\[\]]")
MAX_DEPTH = 8


@dataclass
class Entity:
    id: str
    types: list[str]
    scopes: list[str] | None = None
    attrs: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    created_at: str | None = None
    modified_at: str | None = None
    dataset_id: int | None = None


def now_iso() -> str:
    return iso(datetime.now(UTC))


def iso(moment: datetime) -> str:
    """NGSI-LD DateTime: UTC, milliseconds, `Z`."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.replace(tzinfo=None).isoformat(timespec="milliseconds") + "Z"  # 3x faster than strftime


def parse_datetime(text: Any, what: str) -> datetime:
    if not isinstance(text, str):
        raise BadRequestData(f"{what} must be a DateTime string")
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00").replace("z", "+00:00"))
    except ValueError:
        raise BadRequestData(f"{what} is not a valid DateTime: {text[:60]!r}") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


# Characters a URI never holds raw (RFC 3986) plus invisible or look-alike ones that make two ids read the same:
# format characters (bidi overrides, zero-width spaces, BOM), variation selectors, fillers, noncharacters.
_INVISIBLE = frozenset("\u115f\u1160\u3164\uffa0\u2800\u180e")


def _bad_char(char: str) -> bool:
    code = ord(char)
    category = unicodedata.category(char)
    return (
        category in ("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp")
        or char in _INVISIBLE
        or 0xFE00 <= code <= 0xFE0F
        or 0xE0100 <= code <= 0xE01EF
        or 0xFDD0 <= code <= 0xFDEF
        or (code & 0xFFFE) == 0xFFFE
    )


def check_uri(value: Any, what: str) -> str:
    if (
        not isinstance(value, str)
        or not _URI.match(value)
        or len(value) > 2048
        or any(c in '<>"{}|\\^`' or _bad_char(c) for c in value)
    ):
        raise BadRequestData(f"{what} must be a URI, got {str(value)[:80]!r}")
    return value


def check_name(name: str) -> None:
    if not name or _BAD_NAME.search(name) or len(name) > 512 or any(_bad_char(c) for c in name):
        raise BadRequestData(f"invalid name {name[:80]!r}")


def check_attribute_name(name: str) -> None:
    """An attribute name: a valid name that is not one of the core members (`observedAt`, `datasetId`, ...)."""
    check_name(name)
    if name in CORE_MEMBERS or name in FORBIDDEN_NAMES or name in RESERVED:
        raise BadRequestData(f"{name!r} is a core NGSI-LD term, not an attribute name")


def _types(raw: Any, ctx: ActiveContext) -> list[str]:
    names = raw if isinstance(raw, list) else [raw]
    if not names or not all(isinstance(n, str) and n for n in names):
        raise BadRequestData("type must be a name or a list of names")
    for name in names:
        check_name(name)
        if name[0].isdigit():
            raise BadRequestData(f"an entity type does not start with a digit: {name[:60]!r}")
    return list(dict.fromkeys(ctx.expand(name) for name in names))


def scopes_of(raw: Any) -> list[str]:
    scopes = raw if isinstance(raw, list) else [raw]
    for scope in scopes:
        if not isinstance(scope, str) or not re.fullmatch(r"(/[^/#+\s]+)+|/", scope):
            raise BadRequestData(f"invalid scope {str(scope)[:80]!r}")
    return list(dict.fromkeys(scopes))


def parse_entity(
    body: Any, ctx: ActiveContext, *, require_id: bool = True, require_type: bool = True, allow_null: bool = False
) -> Entity:
    """An entity of a create, upsert, replace or batch body (normalized or concise; key-values are concise)."""
    if not isinstance(body, dict):
        raise BadRequestData("an entity must be a JSON object")
    entity_id = body.get("id", body.get("@id"))
    if entity_id is None and require_id:
        raise BadRequestData("an entity needs an id")
    if entity_id is not None:
        check_uri(entity_id, "id")
    raw_type = body.get("type", body.get("@type"))
    if raw_type is None and require_type:
        raise BadRequestData("an entity needs a type")
    entity = Entity(id=entity_id or "", types=_types(raw_type, ctx) if raw_type is not None else [])
    if "scope" in body:
        entity.scopes = scopes_of(body["scope"])
    entity.attrs = parse_attributes(body, ctx, allow_null=allow_null)
    return entity


def parse_attributes(body: dict[str, Any], ctx: ActiveContext, *, allow_null: bool = False) -> dict[str, Any]:
    """The attributes of an entity or fragment by expanded name (None for a merge-patch's `urn:ngsi-ld:null`)."""
    attrs: dict[str, Any] = {}
    for name, raw in body.items():
        if name in RESERVED:
            continue
        check_attribute_name(name)
        iri = ctx.expand(name)
        if allow_null and (raw is None or raw == NULL):
            attrs[iri] = None
            continue
        attrs[iri] = parse_attribute(name, raw, ctx, allow_null=allow_null)
    return attrs


def parse_attribute(name: str, raw: Any, ctx: ActiveContext, *, allow_null: bool = False) -> list[dict[str, Any]]:
    raws = (
        raw if isinstance(raw, list) and raw and all(isinstance(r, dict) and _is_attribute(r) for r in raw) else [raw]
    )
    instances = [_instance(name, r, ctx, depth=0, allow_null=allow_null) for r in raws]
    seen: set[str | None] = set()
    for instance in instances:
        dataset = instance.get("datasetId")
        if dataset in seen:
            raise BadRequestData(f"attribute {name!r} has two instances with the same datasetId")
        seen.add(dataset)
    return instances


def _is_attribute(raw: dict[str, Any]) -> bool:
    return raw.get("type") in ATTRIBUTE_TYPES or any(member in raw for member in (*MEMBER_TYPE, "value"))


def _is_geometry(value: Any) -> bool:
    return (
        isinstance(value, dict)
        and value.get("type") in GEOMETRY_TYPES
        and ("coordinates" in value or "geometries" in value)
    )


def _instance(name: str, raw: Any, ctx: ActiveContext, *, depth: int, allow_null: bool = False) -> dict[str, Any]:
    if depth > MAX_DEPTH:
        raise BadRequestData("attributes nest too deeply")
    if not isinstance(raw, dict) or (not _is_attribute(raw) and _is_geometry(raw)):
        if raw is None:
            raise BadRequestData(f"attribute {name!r} has a null value")
        return {"type": "GeoProperty" if _is_geometry(raw) else "Property", "value": raw}
    kind: str | None = raw.get("type")
    if kind is None:
        kind = next((t for member, t in MEMBER_TYPE.items() if member in raw), None)
        if kind is None:
            if "value" not in raw:
                raise BadRequestData(f"attribute {name!r} has no type and no value")
            kind = "GeoProperty" if name in GEO_ATTRIBUTES or _is_geometry(raw["value"]) else "Property"
    if kind not in ATTRIBUTE_TYPES:
        raise BadRequestData(f"attribute {name!r} has an unknown type {str(kind)[:60]!r}")
    member = VALUE_MEMBER[kind]
    if member not in raw or raw[member] is None:
        raise BadRequestData(f"attribute {name!r} ({kind}) needs a non-null {member!r}")
    value = raw[member]
    if value == NULL:
        if not allow_null:
            raise BadRequestData(f"attribute {name!r}: {NULL} deletes, it creates nothing")
        null: dict[str, Any] = {"type": kind, member: NULL}
        if raw.get("datasetId") not in (None, "@none"):
            null["datasetId"] = check_uri(raw["datasetId"], f"{name}.datasetId")
        return null
    if kind == "GeoProperty" and isinstance(value, str):  # a geometry encoded as a JSON string
        try:
            value = json.loads(value)
        except ValueError:
            raise BadRequestData(f"attribute {name!r} must hold a GeoJSON geometry") from None
    if kind != "JsonProperty":
        _check_no_null(name, value)
    for key in raw:
        if key in OUTPUT_ONLY:
            raise BadRequestData(f"{key!r} is written by the broker only")
    if kind in ("Relationship", "ListRelationship", "JsonProperty") and "unitCode" in raw:
        raise BadRequestData(f"a {kind} has no unitCode")
    if name in GEO_ATTRIBUTES and kind != "GeoProperty":
        raise BadRequestData(f"attribute {name!r} must be a GeoProperty")
    instance: dict[str, Any] = {"type": kind, member: _checked_value(name, kind, value, ctx)}
    for key, sub in raw.items():
        if key in (member, "type") or key in SYSTEM_MEMBERS or key == "instanceId":
            continue
        if key == "observedAt":
            parse_datetime(sub, f"{name}.observedAt")
            if not isinstance(sub, str) or not sub.endswith("Z"):
                raise BadRequestData(f"{name}.observedAt must be in UTC, ending with Z")
            instance[key] = sub
        elif key == "datasetId":
            if sub != "@none":  # the default instance, said explicitly
                instance[key] = check_uri(sub, f"{name}.datasetId")
        elif key == "unitCode":
            if not isinstance(sub, str):
                raise BadRequestData(f"{name}.unitCode must be a string")
            instance[key] = sub
        elif key == "objectType" and kind in ("Relationship", "ListRelationship"):
            instance[key] = [ctx.expand(t) for t in sub] if isinstance(sub, list) else ctx.expand(str(sub))
        elif key == "lang" and isinstance(sub, str):
            instance[key] = sub
        elif key in CORE_MEMBERS:
            raise BadRequestData(f"{key!r} does not belong in a {kind}")
        else:
            check_attribute_name(key)
            instance[ctx.expand(key)] = _instance(key, sub, ctx, depth=depth + 1, allow_null=allow_null)
    return instance


def _check_no_null(name: str, value: Any) -> None:
    """No JSON null anywhere in a value (null is no NGSI-LD value; urn:ngsi-ld:null says so explicitly)."""
    if value is None:
        raise BadRequestData(f"attribute {name!r} holds a null inside its value")
    if isinstance(value, dict):
        for item in value.values():
            _check_no_null(name, item)
    elif isinstance(value, list):
        for item in value:
            _check_no_null(name, item)


def _checked_value(name: str, kind: str, value: Any, ctx: ActiveContext) -> Any:
    if kind == "GeoProperty":
        if not _is_geometry(value) or value.get("type") == "GeometryCollection":
            raise BadRequestData(f"attribute {name!r} must hold a GeoJSON geometry (not a GeometryCollection)")
        check_geometry(value, name)
        return value
    if kind == "Relationship":
        if isinstance(value, list):
            return [check_uri(v, f"{name}.object") for v in value]
        return check_uri(value, f"{name}.object")
    if kind == "ListRelationship":
        if not isinstance(value, list):
            raise BadRequestData(f"{name}.objectList must be a list")
        return [check_uri(v.get("object") if isinstance(v, dict) else v, f"{name}.objectList") for v in value]
    if kind == "LanguageProperty":
        if (
            not isinstance(value, dict)
            or not value
            or not all(
                isinstance(v, str) or (isinstance(v, list) and all(isinstance(i, str) for i in v))
                for v in value.values()
            )
            or not all(re.fullmatch(r"[A-Za-z]{1,8}(-[A-Za-z0-9]{1,8})*|@none", k) for k in value)
        ):
            raise BadRequestData(f"{name}.languageMap must map language tags to strings")
        return value
    if kind == "JsonProperty" and not isinstance(value, dict | list):
        raise BadRequestData(f"{name}.json must be a JSON object or array")
    if kind == "ListProperty" and not isinstance(value, list):
        raise BadRequestData(f"{name}.valueList must be a list")
    if kind == "VocabProperty":
        if isinstance(value, list):
            return [ctx.expand(str(v)) for v in value]
        return ctx.expand(str(value))
    return value


# --- rendering -------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RenderOptions:
    form: str = "normalized"  # normalized | concise | keyValues
    sys_attrs: bool = False
    attrs: frozenset[str] | None = None  # expanded names kept (attrs / pick); None: all
    omit: frozenset[str] = frozenset()
    lang: str | None = None
    pick_core: frozenset[str] | None = None  # id, type, scope kept by pick (None: all)


def render_entity(entity: Entity, ctx: ActiveContext, options: RenderOptions) -> dict[str, Any]:
    out: dict[str, Any] = {}
    keep_core = options.pick_core
    if (keep_core is None or "id" in keep_core) and "id" not in options.omit:
        out["id"] = entity.id
    if (keep_core is None or "type" in keep_core) and "type" not in options.omit:
        types = [ctx.compact(t) for t in entity.types]
        out["type"] = types[0] if len(types) == 1 else types
    if entity.scopes and (keep_core is None or "scope" in keep_core) and "scope" not in options.omit:
        out["scope"] = entity.scopes[0] if len(entity.scopes) == 1 else entity.scopes
    if options.sys_attrs and options.form != "keyValues":
        if entity.created_at:
            out["createdAt"] = entity.created_at
        if entity.modified_at:
            out["modifiedAt"] = entity.modified_at
    for iri, instances in entity.attrs.items():
        if options.attrs is not None and iri not in options.attrs:
            continue
        if iri in options.omit:
            continue
        rendered = [render_instance(i, ctx, options) for i in instances]
        out[ctx.compact(iri)] = rendered[0] if len(rendered) == 1 else rendered
    return out


def render_instance(instance: dict[str, Any], ctx: ActiveContext, options: RenderOptions) -> Any:
    kind = instance.get("type", "Property")
    member = VALUE_MEMBER.get(kind, "value")
    value = instance.get(member)
    if kind == "VocabProperty":
        value = [ctx.compact(v) for v in value] if isinstance(value, list) else ctx.compact(str(value))
    if kind == "LanguageProperty" and options.lang is not None:
        kind, member = "Property", "value"
        value = _pick_language(instance.get("languageMap") or {}, options.lang)
    if options.form == "keyValues":
        if kind == "LanguageProperty":
            return {"languageMap": value}
        return value
    out: dict[str, Any] = {} if options.form == "concise" else {"type": kind}
    out[member] = value
    if kind == "Property" and options.lang is not None and instance.get("type") == "LanguageProperty":
        out["lang"] = options.lang
    for key, sub in instance.items():
        if key in ("type", member, "languageMap") or sub is None:
            continue
        if key in SYSTEM_MEMBERS:
            if options.sys_attrs:
                out[key] = sub
        elif key == "objectType":
            out[key] = [ctx.compact(t) for t in sub] if isinstance(sub, list) else ctx.compact(sub)
        elif key in CORE_MEMBERS:
            out[key] = sub
        elif isinstance(sub, dict):
            out[ctx.compact(key)] = render_instance(sub, ctx, options)
    if options.form == "concise" and list(out) == ["value"] and not isinstance(value, dict | list):
        return value
    return out


def _pick_language(language_map: dict[str, Any], lang: str) -> Any:
    wanted = [part.split(";")[0].strip() for part in lang.split(",") if part.strip()]
    for tag in wanted:
        if tag == "*":
            break
        if tag in language_map:
            return language_map[tag]
    if "@none" in language_map:
        return language_map["@none"]
    return next(iter(language_map.values()), None)


def geometry_of(entity: Entity, iri: str) -> dict[str, Any] | None:
    for instance in entity.attrs.get(iri, []):
        if instance.get("type") == "GeoProperty" and isinstance(instance.get("value"), dict):
            value: dict[str, Any] = instance["value"]
            return value
    return None


def is_null(instance: dict[str, Any]) -> bool:
    """An instance that says `urn:ngsi-ld:null`: delete it (update, merge)."""
    return instance.get(VALUE_MEMBER.get(instance.get("type", "Property"), "value")) == NULL


def stamp(instances: list[dict[str, Any]], at: str, previous: list[dict[str, Any]] | None = None) -> None:
    """System members of new instances: createdAt kept from the instance they replace, modifiedAt now."""
    before = {i.get("datasetId"): i for i in previous or []}
    for instance in instances:
        old = before.get(instance.get("datasetId"))
        instance["createdAt"] = old.get("createdAt", at) if old else at
        instance["modifiedAt"] = at


def parse_temporal_attributes(body: dict[str, Any], ctx: ActiveContext) -> dict[str, list[dict[str, Any]]]:
    """A temporal fragment: each attribute a list of instances (several per datasetId, at different times)."""
    attrs: dict[str, list[dict[str, Any]]] = {}
    for name, raw in body.items():
        if name in RESERVED:
            continue
        check_name(name)
        raws = raw if isinstance(raw, list) else [raw]
        attrs[ctx.expand(name)] = [_instance(name, r, ctx, depth=0) for r in raws]
    return attrs


def latest_instances(instances: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The current value of a temporal attribute: per datasetId, the instance observed last."""
    latest: dict[str | None, dict[str, Any]] = {}
    for instance in instances:
        key = instance.get("datasetId")
        old = latest.get(key)
        if old is None or str(instance.get("observedAt", "")) >= str(old.get("observedAt", "")):
            latest[key] = instance
    return list(latest.values())


def check_geometry(geometry: dict[str, Any], what: str) -> None:
    """A GeoJSON geometry PostGIS will read: well-formed coordinates (shapely builds it or says why not)."""
    try:
        built = shapely.geometry.shape(geometry)
    except (ValueError, TypeError, IndexError, AttributeError, shapely.errors.ShapelyError):
        raise BadRequestData(f"{what}: malformed GeoJSON coordinates") from None
    if built.is_empty:
        raise BadRequestData(f"{what}: empty geometry")
