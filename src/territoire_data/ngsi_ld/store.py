"""SQL of the NGSI-LD door: entities of `ngsild_entity` and sensor entities (`sensors`) read as one set, writes."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg

from territoire_data.auth.policy import Principal, member_visible_sql
from territoire_data.db.params import Params
from territoire_data.ngsi_ld import sensors, tables
from territoire_data.ngsi_ld.model import Entity, iso

_COLUMNS = "id, types, scopes, attrs, location, dataset_id, created_at, modified_at"


@dataclass
class Filter:
    """What a query keeps; every condition is SQL over alias `e` of the union, values bound in `params`."""

    params: Params = field(default_factory=Params)
    conditions: list[str] = field(default_factory=list)
    ids: list[str] | None = None
    native_only: bool = False
    type_hint: set[str] | None = None  # expanded types the query can match (None: any), to skip table datasets
    tables: list[Any] = field(default_factory=list)  # tables.Mapping of the visible mapped table datasets


def union_sql(principal: Principal, flt: Filter) -> str:
    """All entities the principal may see (native and sensor ones), as one relation `e`."""
    native_where = member_visible_sql(principal, "n.dataset_id")
    thing_where = "TRUE"
    if flt.ids is not None:
        ids = flt.params.add(flt.ids, "text[]")
        native_where += f" AND n.id = ANY({ids})"
        things = [t for t in (sensors.thing_id(i) for i in flt.ids) if t is not None]
        thing_where = f"t.id = ANY({flt.params.add(things, 'bigint[]')})"
    native = f"SELECT {_COLUMNS} FROM ngsild_entity n WHERE {native_where}"
    if flt.native_only:
        return native
    sensor = sensors.sensor_entities_sql(flt.params, principal, thing_where)
    union = f"{native} UNION ALL SELECT {_COLUMNS} FROM ({sensor}) s"
    for mapping in flt.tables:
        if tables.wanted(mapping, flt.type_hint):
            union += f" UNION ALL ({tables.entities_sql(mapping, flt.params, flt.ids)})"
    return union


def _row_entity(row: asyncpg.Record) -> Entity:
    return Entity(
        id=row["id"],
        types=list(row["types"]),
        scopes=list(row["scopes"]) if row["scopes"] else None,
        attrs=row["attrs"] or {},
        created_at=iso(row["created_at"]) if row["created_at"] else None,
        modified_at=iso(row["modified_at"]) if row["modified_at"] else None,
        dataset_id=row["dataset_id"],
    )


async def query(
    conn: asyncpg.Connection, principal: Principal, flt: Filter, *, limit: int, offset: int, count: bool
) -> tuple[list[Entity], int | None]:
    # ids of Things name no table dataset's rows: no need to look the mappings up (a retrieve's round trip)
    if not flt.native_only and not (flt.ids and all(sensors.thing_id(i) is not None for i in flt.ids)):
        flt.tables = await tables.mappings(conn, principal)
    where = " AND ".join(flt.conditions) or "TRUE"
    source = union_sql(principal, flt)
    total_sql = ", count(*) OVER () AS total" if count else ""
    lim = flt.params.add(limit, "int")
    off = flt.params.add(offset, "int")
    sql = (
        f"SELECT e.id, e.types, e.scopes, e.attrs, e.dataset_id, e.created_at, e.modified_at{total_sql} "
        f"FROM ({source}) e WHERE {where} ORDER BY e.id LIMIT {lim} OFFSET {off}"
    )
    rows = await conn.fetch(sql, *flt.params.values)
    total: int | None = None
    if count:
        if rows:
            total = int(rows[0]["total"])
        elif offset == 0:
            total = 0
        else:  # past the end: count apart
            flt.params.values = flt.params.values[:-2]
            total = int(await conn.fetchval(f"SELECT count(*) FROM ({source}) e WHERE {where}", *flt.params.values))
    return [_row_entity(r) for r in rows], total


async def retrieve(conn: asyncpg.Connection, principal: Principal, entity_id: str) -> Entity | None:
    flt = Filter(ids=[entity_id])
    entities, _ = await query(conn, principal, flt, limit=1, offset=0, count=False)
    return entities[0] if entities else None


async def native_for_update(conn: asyncpg.Connection, entity_id: str) -> Entity | None:
    """The stored entity, locked for the transaction (visibility is the caller's check)."""
    row = await conn.fetchrow(f"SELECT {_COLUMNS} FROM ngsild_entity WHERE id = $1 FOR UPDATE", entity_id)
    return _row_entity(row) if row else None


async def thing_exists(conn: asyncpg.Connection, entity_id: str) -> bool:
    thing = sensors.thing_id(entity_id)
    return thing is not None and bool(await conn.fetchval("SELECT EXISTS (SELECT 1 FROM thing WHERE id = $1)", thing))


async def thing_dataset(conn: asyncpg.Connection, entity_id: str) -> tuple[bool, int | None]:
    thing = sensors.thing_id(entity_id)
    if thing is None:
        return False, None
    row = await conn.fetchrow("SELECT dataset_id FROM thing WHERE id = $1", thing)
    return (row is not None, row["dataset_id"] if row else None)


def _location(entity: Entity) -> str | None:
    for instance in entity.attrs.get(sensors.LOCATION_IRI, []):
        if instance.get("type") == "GeoProperty" and instance.get("datasetId") is None:
            return json.dumps(instance["value"])
    return None


async def insert(conn: asyncpg.Connection, entity: Entity, at: datetime) -> bool:
    status = await conn.execute(
        "INSERT INTO ngsild_entity (id, types, scopes, attrs, location, dataset_id, created_at, modified_at) "
        "VALUES ($1, $2, $3, $4, ST_SetSRID(ST_GeomFromGeoJSON($5), 4326), $6, $7, $7) "
        "ON CONFLICT (id) DO NOTHING",
        entity.id,
        entity.types,
        entity.scopes,
        entity.attrs,
        _location(entity),
        entity.dataset_id,
        at,
    )
    return bool(status.endswith(" 1"))


async def save(conn: asyncpg.Connection, entity: Entity, at: datetime) -> None:
    await conn.execute(
        "UPDATE ngsild_entity SET types = $2, scopes = $3, attrs = $4, "
        "location = ST_SetSRID(ST_GeomFromGeoJSON($5), 4326), modified_at = $6 WHERE id = $1",
        entity.id,
        entity.types,
        entity.scopes,
        entity.attrs,
        _location(entity),
        at,
    )


async def delete(conn: asyncpg.Connection, entity_id: str) -> bool:
    status = await conn.execute("DELETE FROM ngsild_entity WHERE id = $1", entity_id)
    return bool(status.endswith(" 1"))


async def record_instances(
    conn: asyncpg.Connection, entity_id: str, changed: dict[str, list[dict[str, Any]]], at: datetime
) -> None:
    """Append the new attribute instances to the entity's history (temporal API)."""
    rows = []
    for attr, instances in changed.items():
        for instance in instances:
            observed = instance.get("observedAt")
            rows.append(
                (
                    entity_id,
                    attr,
                    instance.get("datasetId"),
                    observed,
                    json.dumps(instance),
                )
            )
    if not rows:
        return
    await conn.executemany(
        "INSERT INTO ngsild_attribute_instance (entity_id, attr, instance_id, dataset_id, observed_at, created_at, "
        "modified_at, instance) VALUES ($1, $2, 'urn:ngsi-ld:instance:' || gen_random_uuid(), $3, "
        "$4::text::timestamptz, $6, $6, $5::text::jsonb)",
        [(*row, at) for row in rows],
    )
