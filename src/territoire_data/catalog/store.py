"""Dataset CRUD and catalog search in SQL: list with full text and facets, detail, create, update, delete.

Every value is a bound parameter; the WHERE clause is assembled only from the fixed fragments below and the
access policy's own SQL. Spatial and temporal coverage are computed from the data: the typed table's extent
kept by the loader, or for sensor datasets the locations of their things and the time span of their datastreams.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncConnection

from territoire_data.auth.policy import Principal, dataset_visible_sql
from territoire_data.catalog.datasets import typed_table
from territoire_data.catalog.metadata import (
    FORMATS,
    FREQUENCIES,
    LICENCES,
    THEMES,
    DatasetCreate,
    DatasetUpdate,
)
from territoire_data.errors import ConflictError, NotFoundError, ValidationFailedError

logger = logging.getLogger(__name__)

SEARCH_CONFIG = "french_unaccent"

# Extra metadata kept in dataset.extra (the core table has no column for them).
EXTRA_FIELDS = ("conforms_to", "spatial_coverage")
COLUMN_FIELDS = (
    "title",
    "description",
    "keywords",
    "themes",
    "licence",
    "publisher",
    "contact_name",
    "contact_email",
    "access",
    "update_frequency",
)

# Which datasets each format facet value selects (formats follow from kind and geometry, see formats_for).
FORMAT_CONDITIONS: dict[str, str] = {
    "csv": "d.kind = 'table'",
    "parquet": "d.kind = 'table'",
    "geojson": "(d.kind = 'table' AND d.geometry_type IS NOT NULL)",
    "sensorthings": "d.kind = 'sensors'",
}

SELECT_COLUMNS = """
    d.id, d.identifier, d.slug, d.kind, d.title, d.description, d.keywords, d.themes, d.licence, d.publisher,
    d.contact_name, d.contact_email, d.access, d.status, d.published_at, d.update_frequency, d.table_schema,
    d.table_name, d.geometry_type, d.row_count, d.extra, d.created_at, d.modified_at,
    ST_XMin(cov.box) AS west, ST_YMin(cov.box) AS south, ST_XMax(cov.box) AS east, ST_YMax(cov.box) AS north,
    tmp.temporal_start, tmp.temporal_end,
    ARRAY(SELECT ds.id FROM datastream ds WHERE ds.dataset_id = d.id ORDER BY ds.id LIMIT 100) AS datastream_ids,
    ARRAY(SELECT ds.name FROM datastream ds WHERE ds.dataset_id = d.id ORDER BY ds.id LIMIT 100) AS datastream_names
"""

# Coverage computed from the data: the loader's extent for tables, things' locations for sensor datasets.
COVERAGE_JOINS = """
LEFT JOIN LATERAL (
    SELECT COALESCE(
        d.spatial_extent::box2d,
        (SELECT ST_Extent(l.geom) FROM location l
           JOIN thing_location tl ON tl.location_id = l.id
           JOIN thing t ON t.id = tl.thing_id
          WHERE t.dataset_id = d.id
             OR t.id IN (SELECT ds.thing_id FROM datastream ds WHERE ds.dataset_id = d.id))
    ) AS box
) cov ON true
LEFT JOIN LATERAL (
    SELECT COALESCE(d.temporal_start, min(ds.phenomenon_time_start), min(first_obs.t)) AS temporal_start,
           COALESCE(d.temporal_end, max(ds.phenomenon_time_end), max(last_obs.t)) AS temporal_end
      FROM (SELECT 1) one
      LEFT JOIN datastream ds ON ds.dataset_id = d.id
      LEFT JOIN LATERAL (SELECT o.phenomenon_time AS t FROM observation o WHERE o.datastream_id = ds.id
                          ORDER BY o.phenomenon_time LIMIT 1) first_obs ON true
      LEFT JOIN LATERAL (SELECT o.phenomenon_time AS t FROM observation o WHERE o.datastream_id = ds.id
                          ORDER BY o.phenomenon_time DESC LIMIT 1) last_obs ON true
) tmp ON true
"""


@dataclass
class SearchQuery:
    """What a catalog search asks for: text, facet filters (OR within one facet, AND across) and a page."""

    q: str | None = None
    themes: list[str] = field(default_factory=list)
    licences: list[str] = field(default_factory=list)
    publishers: list[str] = field(default_factory=list)
    formats: list[str] = field(default_factory=list)
    only_ids: tuple[int, ...] | None = None  # these datasets only (a publisher's own, in the back-office)
    limit: int = 20
    offset: int = 0


@dataclass
class SearchResult:
    rows: list[dict[str, Any]]
    total: int
    facets: dict[str, list[tuple[str, int]]]


def _where(principal: Principal, query: SearchQuery, params: dict[str, Any]) -> str:
    """The WHERE clause for a search, from fixed fragments; values go to `params`."""
    clauses = [dataset_visible_sql(principal, "d")]
    if query.q and query.q.strip():
        params["q"] = query.q.strip()
        clauses.append(f"d.search_vector @@ websearch_to_tsquery('{SEARCH_CONFIG}', :q)")
    if query.themes:
        params["themes"] = query.themes
        clauses.append("d.themes && CAST(:themes AS text[])")
    if query.licences:
        params["licences"] = query.licences
        clauses.append("d.licence = ANY(CAST(:licences AS text[]))")
    if query.publishers:
        params["publishers"] = query.publishers
        clauses.append("d.publisher = ANY(CAST(:publishers AS text[]))")
    if query.only_ids is not None:
        params["only_ids"] = list(query.only_ids)
        clauses.append("d.id = ANY(CAST(:only_ids AS bigint[]))")
    if query.formats:
        unknown = [f for f in query.formats if f not in FORMAT_CONDITIONS]
        if unknown:
            raise ValidationFailedError(f"unknown format {unknown[0]!r}; known: {', '.join(FORMAT_CONDITIONS)}")
        clauses.append("(" + " OR ".join(FORMAT_CONDITIONS[f] for f in query.formats) + ")")
    return " AND ".join(clauses)


async def search_datasets(conn: AsyncConnection, principal: Principal, query: SearchQuery) -> SearchResult:
    """One page of the datasets this principal may see, best match first (or by title), with facet counts."""
    params: dict[str, Any] = {"limit": query.limit, "offset": query.offset}
    where = _where(principal, query, params)
    if "q" in params:
        order = f"ts_rank_cd(d.search_vector, websearch_to_tsquery('{SEARCH_CONFIG}', :q)) DESC, lower(d.title), d.slug"
    else:
        order = "lower(d.title), d.slug"
    page_sql = (
        f"SELECT {SELECT_COLUMNS} FROM dataset d {COVERAGE_JOINS} WHERE {where} "
        f"ORDER BY {order} LIMIT :limit OFFSET :offset"
    )
    rows = [dict(r) for r in (await conn.execute(text(page_sql), params)).mappings()]

    format_counts = ", ".join(
        f"(SELECT count(*) FROM filtered d WHERE {c}) AS fmt_{n}" for n, c in FORMAT_CONDITIONS.items()
    )
    facet_sql = f"""
        WITH filtered AS (SELECT d.* FROM dataset d WHERE {where})
        SELECT (SELECT count(*) FROM filtered) AS total,
               (SELECT coalesce(jsonb_agg(jsonb_build_array(v, n) ORDER BY n DESC, v), '[]')
                  FROM (SELECT unnest(themes) AS v, count(*) AS n FROM filtered GROUP BY 1) t) AS themes,
               (SELECT coalesce(jsonb_agg(jsonb_build_array(v, n) ORDER BY n DESC, v), '[]')
                  FROM (SELECT licence AS v, count(*) AS n FROM filtered WHERE licence IS NOT NULL GROUP BY 1) t)
                  AS licences,
               (SELECT coalesce(jsonb_agg(jsonb_build_array(v, n) ORDER BY n DESC, v), '[]')
                  FROM (SELECT publisher AS v, count(*) AS n FROM filtered WHERE publisher IS NOT NULL GROUP BY 1) t)
                  AS publishers,
               {format_counts}
    """
    facet_params = {k: v for k, v in params.items() if k not in ("limit", "offset")}
    facet_row = (await conn.execute(text(facet_sql), facet_params)).mappings().one()
    facets: dict[str, list[tuple[str, int]]] = {
        "theme": [(str(v), int(n)) for v, n in _json(facet_row["themes"])],
        "licence": [(str(v), int(n)) for v, n in _json(facet_row["licences"])],
        "publisher": [(str(v), int(n)) for v, n in _json(facet_row["publishers"])],
        "format": sorted(
            ((name, int(facet_row[f"fmt_{name}"])) for name in FORMAT_CONDITIONS if facet_row[f"fmt_{name}"]),
            key=lambda item: (-item[1], item[0]),
        ),
    }
    return SearchResult(rows=rows, total=int(facet_row["total"]), facets=facets)


def _json(value: Any) -> Any:
    return orjson.loads(value) if isinstance(value, str | bytes) else value


async def get_dataset(conn: AsyncConnection, principal: Principal, slug: str) -> dict[str, Any]:
    """One dataset by slug; a restricted one the principal may not see is missing, exactly like an absent one."""
    sql = (
        f"SELECT {SELECT_COLUMNS} FROM dataset d {COVERAGE_JOINS} "
        f"WHERE d.slug = :slug AND {dataset_visible_sql(principal, 'd')}"
    )
    row = (await conn.execute(text(sql), {"slug": slug})).mappings().first()
    if row is None:
        raise NotFoundError(f"no dataset {slug!r}")
    return dict(row)


async def dataset_access(conn: AsyncConnection, slug: str) -> tuple[int, str, str] | None:
    """The id, access level and status of dataset `slug` (None when there is none), for the doors' own checks."""
    sql = "SELECT id, access, status FROM dataset WHERE slug = :slug"
    row = (await conn.execute(text(sql), {"slug": slug})).first()
    return None if row is None else (int(row.id), str(row.access), str(row.status))


async def list_public_datasets(conn: AsyncConnection, principal: Principal, *, limit: int, offset: int) -> SearchResult:
    """A page of visible datasets in stable order (for DCAT and SCDL exports)."""
    return await search_datasets(conn, principal, SearchQuery(limit=limit, offset=offset))


async def create_dataset(conn: AsyncConnection, data: DatasetCreate, *, actor: str) -> str:
    """Insert a dataset (409 if the slug is taken) and audit it; returns its slug. The caller commits."""
    values = data.model_dump()
    extra = {k: values[k] for k in EXTRA_FIELDS if values.get(k) is not None}
    params = {name: values[name] for name in COLUMN_FIELDS}
    params.update(slug=data.slug, kind=data.kind, extra=orjson.dumps(extra).decode())
    columns = ", ".join(("slug", "kind", *COLUMN_FIELDS, "extra"))
    placeholders = ", ".join(
        (
            ":slug",
            ":kind",
            *(f"CAST(:{c} AS text[])" if c in ("keywords", "themes") else f":{c}" for c in COLUMN_FIELDS),
        )
    )
    sql = (
        f"INSERT INTO dataset ({columns}) VALUES ({placeholders}, CAST(:extra AS jsonb)) "
        "ON CONFLICT (slug) DO NOTHING RETURNING id"
    )
    row = (await conn.execute(text(sql), params)).first()
    if row is None:
        raise ConflictError(f"a dataset with slug {data.slug!r} already exists")
    await audit_dataset(conn, actor, "dataset.create", data.slug, {"fields": sorted(data.model_fields_set)})
    logger.info("dataset %s created by %s", data.slug, actor)
    return data.slug


async def update_dataset(conn: AsyncConnection, slug: str, data: DatasetUpdate, *, actor: str) -> None:
    """Change only the fields sent (a field sent as null is cleared); the caller commits."""
    sent = data.model_dump(include=data.model_fields_set)
    not_null = {"title", "description", "keywords", "themes", "access"}
    for name in not_null & sent.keys():
        if sent[name] is None:
            raise ValidationFailedError(f"{name} cannot be null")
    params: dict[str, Any] = {"slug": slug}
    assignments = []
    for name in COLUMN_FIELDS:
        if name in sent:
            params[name] = sent[name]
            cast = f"CAST(:{name} AS text[])" if name in ("keywords", "themes") else f":{name}"
            assignments.append(f"{name} = {cast}")
    extra_set = {k: sent[k] for k in EXTRA_FIELDS if k in sent and sent[k] is not None}
    extra_unset = [k for k in EXTRA_FIELDS if k in sent and sent[k] is None]
    params["extra_set"] = orjson.dumps(extra_set).decode()
    params["extra_unset"] = extra_unset
    assignments.append("extra = (extra || CAST(:extra_set AS jsonb)) - CAST(:extra_unset AS text[])")
    sql = f"UPDATE dataset SET {', '.join(assignments)} WHERE slug = :slug RETURNING id"
    if (await conn.execute(text(sql), params)).first() is None:
        raise NotFoundError(f"no dataset {slug!r}")
    await audit_dataset(conn, actor, "dataset.update", slug, {"fields": sorted(sent)})
    logger.info("dataset %s updated by %s (%s)", slug, actor, ", ".join(sorted(sent)))


async def delete_dataset(conn: AsyncConnection, slug: str, *, actor: str) -> None:
    """Delete a dataset and its typed table (one transaction, the caller commits); sensors stay, unlinked."""
    row = (
        await conn.execute(
            text(
                "SELECT id, table_name, extra->>'derived_by' AS derived_by FROM dataset WHERE slug = :slug FOR UPDATE"
            ),
            {"slug": slug},
        )
    ).first()
    if row is None:
        raise NotFoundError(f"no dataset {slug!r}")
    if row.derived_by:
        raise ConflictError(f"dataset {slug!r} is computed ({row.derived_by}): delete that instead")
    await conn.execute(text("DELETE FROM dataset WHERE id = :id"), {"id": row.id})
    if row.table_name:
        table = typed_table(row.table_name)
        if table is None:
            raise ValidationFailedError(f"dataset {slug!r} names an unexpected table; not dropping it")
        await conn.execute(text(f"DROP TABLE IF EXISTS {table}"))
    await audit_dataset(conn, actor, "dataset.delete", slug, {"table": row.table_name})
    logger.info("dataset %s deleted by %s", slug, actor)


async def audit_dataset(conn: AsyncConnection, actor: str, action: str, slug: str, details: dict[str, Any]) -> None:
    await conn.execute(
        text(
            "INSERT INTO audit_event (actor, action, target_type, target_id, details) "
            "VALUES (:actor, :action, 'dataset', :slug, CAST(:details AS jsonb))"
        ),
        {"actor": actor, "action": action, "slug": slug, "details": orjson.dumps(details).decode()},
    )


def facet_label(facet: str, value: str, lang: str = "fr") -> str:
    """The human label of a facet value (theme names, licence titles, format names)."""
    index = 0 if lang == "fr" else 1
    if facet == "theme" and value in THEMES:
        return THEMES[value][index]
    if facet == "licence" and value in LICENCES:
        return LICENCES[value].title
    if facet == "format" and value in FORMATS:
        return FORMATS[value].label
    if facet == "frequency" and value in FREQUENCIES:
        return FREQUENCIES[value][index]
    return value
