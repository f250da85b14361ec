"""Indicator rows: save a checked definition (with the dataset it is published as), read, list, delete.

An indicator is published as the table dataset `indicateur-<slug>` (one row per unit: latest value, the previous
period's, the target status; polygons when broken down by a division), so every door of the platform serves it:
catalog and DCAT-AP, records and exports, OGC API – Features. Who may see and change an indicator is who may see
and write that dataset (the access policy's one rule): a publisher who creates one owns it, a restricted source
makes it restricted.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from territoire_data.auth.policy import Principal, dataset_visible_sql
from territoire_data.catalog.datasets import (
    DatasetMeta,
    create_derived_dataset,
    drop_derived_dataset,
    update_derived_dataset,
)
from territoire_data.catalog.schema import parse_table_schema
from territoire_data.errors import ConflictError, NotFoundError
from territoire_data.indicators.compile import Resolved, resolve
from territoire_data.indicators.model import IndicatorDefinition, SensorSource

logger = logging.getLogger(__name__)

DATASET_PREFIX = "indicateur-"

# The published table: one row per unit, French field names like the rest of the demo's datasets.
PUBLICATION_SCHEMA: dict[str, Any] = {
    "fields": [
        {"name": "code", "type": "string", "title": "Code de l'unité territoriale"},
        {"name": "nom", "type": "string", "title": "Unité territoriale"},
        {"name": "periode", "type": "string", "title": "Période de la dernière valeur"},
        {"name": "debut_periode", "type": "datetime", "title": "Début de la période"},
        {"name": "valeur", "type": "number", "title": "Valeur"},
        {"name": "periode_precedente", "type": "string", "title": "Période précédente"},
        {"name": "valeur_precedente", "type": "number", "title": "Valeur de la période précédente"},
        {"name": "evolution", "type": "number", "title": "Évolution depuis la période précédente (%)"},
        {"name": "cible", "type": "number", "title": "Valeur cible"},
        {"name": "statut_cible", "type": "string", "title": "Statut au regard de la cible"},
        {"name": "unite", "type": "string", "title": "Unité de mesure"},
        {"name": "enregistrements", "type": "integer", "title": "Enregistrements sources"},
        {"name": "calcule_le", "type": "datetime", "title": "Calculé le"},
    ],
    "primaryKey": ["code"],
}
FREQUENCY = {"day": "DAILY", "week": "WEEKLY", "month": "MONTHLY", "quarter": "QUARTERLY", "year": "ANNUAL"}


@dataclass(frozen=True)
class IndicatorRow:
    id: int
    slug: str
    definition: IndicatorDefinition
    origin: str
    dataset_id: int | None
    dataset_slug: str | None
    access: str
    computed_at: datetime | None
    compute_error: str | None
    created_at: datetime
    modified_at: datetime


_SELECT = (
    "SELECT i.id, i.slug, i.definition::text AS definition, i.origin, i.dataset_id, d.slug AS dataset_slug, "
    "COALESCE(d.access, 'restricted') AS access, i.computed_at, i.compute_error, i.created_at, i.modified_at "
    "FROM indicator i LEFT JOIN dataset d ON d.id = i.dataset_id"
)


def _row(record: asyncpg.Record) -> IndicatorRow:
    return IndicatorRow(
        id=record["id"],
        slug=record["slug"],
        definition=IndicatorDefinition.model_validate(orjson.loads(record["definition"])),
        origin=record["origin"],
        dataset_id=record["dataset_id"],
        dataset_slug=record["dataset_slug"],
        access=record["access"],
        computed_at=record["computed_at"],
        compute_error=record["compute_error"],
        created_at=record["created_at"],
        modified_at=record["modified_at"],
    )


def _visible(principal: Principal) -> str:
    """An indicator is visible when the dataset it is published as is (admins also see one that lost it)."""
    if principal.is_admin:
        return "TRUE"
    return f"(d.id IS NOT NULL AND {dataset_visible_sql(principal, 'd')})"


async def get(conn: asyncpg.Connection, principal: Principal, slug: str) -> IndicatorRow:
    row = await conn.fetchrow(f"{_SELECT} WHERE i.slug = $1 AND {_visible(principal)}", slug)
    if row is None:
        raise NotFoundError(f"no indicator {slug!r}")
    return _row(row)


async def by_id(conn: asyncpg.Connection, indicator_id: int) -> IndicatorRow | None:
    row = await conn.fetchrow(f"{_SELECT} WHERE i.id = $1", indicator_id)
    return _row(row) if row else None


async def list_visible(conn: asyncpg.Connection, principal: Principal) -> list[IndicatorRow]:
    rows = await conn.fetch(f"{_SELECT} WHERE {_visible(principal)} ORDER BY i.definition->>'title', i.slug")
    return [_row(r) for r in rows]


def _meta(r: Resolved, access: str) -> DatasetMeta:
    d = r.definition
    description = d.description or d.title
    return DatasetMeta(
        title=f"Indicateur : {d.title}",
        description=f"{description}\n\nMéthode : {d.methodology}",
        keywords=tuple(dict.fromkeys(("indicateur", *d.keywords))),
        themes=tuple(d.themes),
        licence=d.licence,
        publisher=d.publisher,
        update_frequency=FREQUENCY[d.period],
        access=access,
        extra={
            "derived_from": list(r.sources),
            "provenance": d.methodology,
            "indicator": d.slug,
        },
    )


async def save(
    conn: asyncpg.Connection,
    principal: Principal,
    definition: IndicatorDefinition,
    *,
    origin: str,
    existing: IndicatorRow | None = None,
) -> tuple[IndicatorRow, bool]:
    """Create or replace an indicator (checked first), its sensor triggers' lookup rows and its dataset; the whole
    indicator is marked for computation. Returns the row and whether the publication dataset was created."""
    resolved = await resolve(conn, principal, definition, self_id=existing.id if existing else None)
    access = "restricted" if resolved.restricted else "public"
    meta = _meta(resolved, access)
    definition_json = orjson.dumps(definition.model_dump(mode="json", exclude_none=True)).decode()
    created = False
    if existing is None:
        if await conn.fetchval("SELECT 1 FROM indicator WHERE slug = $1", definition.slug):
            raise ConflictError(f"indicator {definition.slug!r} already exists")
        dataset = await create_derived_dataset(
            conn,
            DATASET_PREFIX + definition.slug,
            parse_table_schema(PUBLICATION_SCHEMA),
            meta,
            derived_by=f"indicator {definition.slug}",
        )
        created = True
        indicator_id = await conn.fetchval(
            """INSERT INTO indicator (slug, definition, origin, dataset_id, source_dataset_id, division_dataset_id,
                   denominator_indicator_id) VALUES ($1, $2::text::jsonb, $3, $4, $5, $6, $7) RETURNING id""",
            definition.slug,
            definition_json,
            origin,
            dataset.id,
            resolved.source_dataset_id,
            resolved.division.dataset_id if resolved.division else None,
            resolved.denominator_indicator_id,
        )
    else:
        if existing.slug != definition.slug:
            raise ConflictError("an indicator's slug cannot change (create another one)")
        indicator_id = existing.id
        await conn.execute(
            """UPDATE indicator SET definition = $2::text::jsonb, source_dataset_id = $3, division_dataset_id = $4,
                   denominator_indicator_id = $5, modified_at = now(), compute_error = NULL WHERE id = $1""",
            indicator_id,
            definition_json,
            resolved.source_dataset_id,
            resolved.division.dataset_id if resolved.division else None,
            resolved.denominator_indicator_id,
        )
        if existing.dataset_id is not None:
            await update_derived_dataset(conn, existing.dataset_id, meta)
        # A new definition: old values mean something else.
        await conn.execute("DELETE FROM indicator_value WHERE indicator_id = $1", indicator_id)
    await conn.execute("DELETE FROM indicator_sensor_source WHERE indicator_id = $1", indicator_id)
    if isinstance(definition.source, SensorSource):
        await conn.executemany(
            """INSERT INTO indicator_sensor_source (indicator_id, observed_property_id, dataset_ids, period, timezone)
               VALUES ($1, $2, $3, $4, $5)""",
            [
                (
                    indicator_id,
                    op,
                    list(resolved.sensor_dataset_ids) if resolved.sensor_dataset_ids is not None else None,
                    definition.period,
                    definition.timezone,
                )
                for op in resolved.observed_property_ids
            ],
        )
    await mark_all(conn, indicator_id)
    row = await by_id(conn, indicator_id)
    assert row is not None
    logger.info("indicator %s saved (%s) by %s", definition.slug, origin, principal.name)
    return row, created


async def mark_all(conn: asyncpg.Connection, indicator_id: int) -> None:
    """Mark a whole indicator for computation (its dependants follow when it is computed)."""
    await conn.execute(
        "INSERT INTO indicator_dirty (indicator_id, period_start) VALUES ($1, '-infinity') ON CONFLICT DO NOTHING",
        indicator_id,
    )
    await conn.execute("SELECT pg_notify('indicator_dirty', 'saved')")


async def delete(conn: asyncpg.Connection, row: IndicatorRow) -> None:
    dependants = await conn.fetchval(
        "SELECT string_agg(slug, ', ') FROM indicator WHERE denominator_indicator_id = $1", row.id
    )
    if dependants:
        raise ConflictError(f"indicator {row.slug!r} is the denominator of: {dependants}")
    await conn.execute("DELETE FROM indicator WHERE id = $1", row.id)
    if row.dataset_id is not None:
        await drop_derived_dataset(conn, row.dataset_id)
    logger.info("indicator %s deleted", row.slug)
