"""Table datasets as NGSI-LD entities of their declared type (one model, two views), read-only.

A dataset declares its Smart Data Model in its metadata (`extra.ngsi_ld`):

    {"type": "ParkingSpot", "id": "<field whose value names the entity>", "attributes": {"<field>": "<attribute>"}}

Each row is then the entity `urn:ngsi-ld:<type>:<slug>:<id field or row number>`; the mapped fields (all fields,
under their own names, when `attributes` is absent) are Properties, empty cells are left out (never null), and the
row's geometry is `location`. The rows are read where they are, through the query layer's collection of the
dataset (its fields are the allow-list of columns), under the same access policy.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

import asyncpg

from territoire_data.auth.policy import Principal
from territoire_data.db.params import Params
from territoire_data.ngsi_ld.contexts import DEFAULT_VOCAB
from territoire_data.query.collections import Collection, list_collections

LOCATION_IRI = "https://uri.etsi.org/ngsi-ld/location"
_TERM = re.compile(r"^[A-Za-z_][A-Za-z0-9_\-]*$")


@dataclass(frozen=True)
class Mapping:
    collection: Collection
    type: str  # expanded
    id_field: str | None
    attributes: tuple[tuple[str, str], ...]  # (field SQL, expanded attribute name)


def _iri(name: str) -> str:
    return name if ":" in name else DEFAULT_VOCAB + name


async def mappings(conn: asyncpg.Connection, principal: Principal) -> list[Mapping]:
    """The visible table datasets that declare an NGSI-LD mapping."""
    rows = await conn.fetch("SELECT id, extra->'ngsi_ld' AS m FROM dataset WHERE kind = 'table' AND extra ? 'ngsi_ld'")
    declared = {r["id"]: r["m"] for r in rows if isinstance(r["m"], dict)}
    if not declared:
        return []
    found = []
    for collection in await list_collections(conn, principal):
        spec = declared.get(collection.dataset_id) if collection.dataset_id is not None else None
        if not spec or not isinstance(spec.get("type"), str) or not _TERM.match(spec["type"]):
            continue
        named = spec.get("attributes")
        pairs = []
        for field in collection.fields:
            attribute = field.name if not isinstance(named, dict) else named.get(field.name)
            if isinstance(attribute, str) and _TERM.match(attribute) and attribute not in ("id", "type", "location"):
                pairs.append((field.sql, _iri(attribute)))
        id_field = collection.field(spec["id"]) if isinstance(spec.get("id"), str) else None
        id_sql = id_field.sql if id_field is not None else None
        found.append(Mapping(collection, _iri(spec["type"]), id_sql, tuple(pairs)))
    return found


def entities_sql(mapping: Mapping, params: Params, ids: list[str] | None) -> str:
    """A SELECT of (id, types, scopes, attrs, location, dataset_id, created_at, modified_at) over the table."""
    collection = mapping.collection
    type_name = mapping.type.removeprefix(DEFAULT_VOCAB)
    prefix = params.add(f"urn:ngsi-ld:{type_name}:{collection.id}:", "text")
    key = f"({mapping.id_field})::text" if mapping.id_field else "t._fid::text"
    parts = ["'{}'::jsonb"]
    for field_sql, attribute in mapping.attributes:
        name = params.add(attribute, "text")
        parts.append(
            f"CASE WHEN {field_sql} IS NULL THEN '{{}}'::jsonb ELSE jsonb_build_object({name}, jsonb_build_array("
            f"jsonb_build_object('type', 'Property', 'value', to_jsonb({field_sql})))) END"
        )
    if collection.has_geometry:
        location = params.add(LOCATION_IRI, "text")
        parts.append(
            f"CASE WHEN t.geom IS NULL THEN '{{}}'::jsonb ELSE jsonb_build_object({location}, jsonb_build_array("
            f"jsonb_build_object('type', 'GeoProperty', 'value', ST_AsGeoJSON(t.geom)::jsonb))) END"
        )
    geom = "t.geom" if collection.has_geometry else "NULL::geometry"
    where = "TRUE" if ids is None else f"{prefix} || {key} = ANY({params.add(ids, 'text[]')})"
    modified = params.add(collection.modified_at, "timestamptz")
    return (
        f"SELECT {prefix} || {key} AS id, ARRAY[{params.add(mapping.type, 'text')}] AS types, "
        "NULL::text[] AS scopes, "
        f"{' || '.join(parts)} AS attrs, {geom} AS location, "
        f"{params.add(collection.dataset_id, 'bigint')} AS dataset_id, "
        f"{modified} AS created_at, {modified} AS modified_at FROM {collection.source} t WHERE {where}"
    )


def wanted(mapping: Mapping, types: set[str] | None) -> bool:
    return types is None or mapping.type in types


def describe(mapping: Mapping) -> dict[str, Any]:
    return {"dataset": mapping.collection.id, "type": mapping.type, "attributes": len(mapping.attributes)}
