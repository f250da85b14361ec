"""Datasets as typed tables (TYPED_TABLES.md): the one module that writes their DDL and refreshes their extents."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import orjson

from territoire_data.catalog.metadata import FREQUENCIES, LICENCES, THEMES
from territoire_data.catalog.schema import TableSchema, parse_table_schema
from territoire_data.db.bulk import qualified, quote_ident
from territoire_data.errors import BadRequestError, ConflictError, ValidationFailedError

SCHEMA = "datasets"
SLUG = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")


@dataclass(frozen=True)
class DatasetMeta:
    """Descriptive metadata given when a dataset is created."""

    title: str | None = None
    description: str = ""
    keywords: tuple[str, ...] = ()
    themes: tuple[str, ...] = ()
    licence: str | None = None
    publisher: str | None = None
    contact_name: str | None = None
    contact_email: str | None = None
    update_frequency: str | None = None
    access: str = "public"
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Dataset:
    """A dataset row as the loader needs it."""

    id: int
    slug: str
    table_name: str
    schema: TableSchema

    @property
    def table(self) -> str:
        return qualified(SCHEMA, self.table_name)


def check_slug(slug: str) -> str:
    if not SLUG.fullmatch(slug):
        raise BadRequestError(f"dataset slug {slug!r} must be lowercase letters, digits and dashes (max 63)")
    return slug


async def get_dataset(conn: asyncpg.Connection, slug: str, *, lock: bool = False) -> Dataset | None:
    """The table dataset `slug`, optionally locked for the rest of the transaction (one import at a time)."""
    sql = "SELECT id, slug, kind, table_name, table_schema::text AS schema FROM dataset WHERE slug = $1"
    row = await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), slug)
    if row is None:
        return None
    if row["kind"] != "table" or not row["table_name"] or row["schema"] is None:
        raise ConflictError(f"dataset {slug!r} is not a table dataset (it holds {row['kind']})")
    return Dataset(row["id"], row["slug"], row["table_name"], parse_table_schema(orjson.loads(row["schema"])))


def table_ddl(table_name: str, schema: TableSchema) -> list[str]:
    """CREATE TABLE and index statements of a typed dataset table (identifiers quoted, types from an allow-list)."""
    target = qualified(SCHEMA, table_name)
    required = set(schema.primary_key)
    columns = ['"_fid" bigint GENERATED ALWAYS AS IDENTITY']
    for f in schema.fields:
        not_null = " NOT NULL" if f.required or f.name in required else ""
        columns.append(f"{quote_ident(f.name)} {f.sql_type}{not_null}")
    columns.append('"geom" geometry(Geometry, 4326)')
    return [f"CREATE TABLE {target} (\n    " + ",\n    ".join(columns) + "\n)", *index_ddl(table_name, schema)[1]]


def index_ddl(table_name: str, schema: TableSchema) -> tuple[list[str], list[str]]:
    """(drop, create) statements of the unique constraints, the GiST index and the row id's primary key, so a bulk
    load into an empty table can build them once at the end instead of row by row."""
    target = qualified(SCHEMA, table_name)
    drop: list[str] = []
    create: list[str] = []
    for index, key in enumerate(schema.unique_keys()):
        name = quote_ident(
            f"{table_name}_pk_key" if index == 0 and key == schema.primary_key else f"{table_name}_u{index}"
        )
        drop.append(f"ALTER TABLE {target} DROP CONSTRAINT {name}")
        create.append(f"ALTER TABLE {target} ADD CONSTRAINT {name} UNIQUE ({', '.join(quote_ident(k) for k in key)})")
    gist = quote_ident(f"{table_name}_geom_idx")
    drop.append(f"DROP INDEX {qualified(SCHEMA, table_name + '_geom_idx')}")
    create.append(f"CREATE INDEX {gist} ON {target} USING gist (geom)")
    # The row id's primary key too: a bulk load into an empty table builds it once, like the others.
    pkey = quote_ident(f"{table_name}_pkey")
    drop.append(f"ALTER TABLE {target} DROP CONSTRAINT {pkey}")
    create.append(f"ALTER TABLE {target} ADD CONSTRAINT {pkey} PRIMARY KEY (_fid)")
    return drop, create


def check_vocabularies(meta: DatasetMeta) -> None:
    """Licence, themes and frequency come from the catalog's vocabularies, so DCAT and the portal can name them."""
    if meta.licence is not None and meta.licence not in LICENCES:
        raise ValidationFailedError(f"licence {meta.licence!r} is not one of {', '.join(LICENCES)}")
    unknown = [theme for theme in meta.themes if theme not in THEMES]
    if unknown:
        raise ValidationFailedError(f"themes {unknown} are not EU data themes ({', '.join(THEMES)})")
    if meta.update_frequency is not None and meta.update_frequency not in FREQUENCIES:
        raise ValidationFailedError(
            f"update frequency {meta.update_frequency!r} is not one of {', '.join(FREQUENCIES)}"
        )


async def create_dataset(conn: asyncpg.Connection, slug: str, schema: TableSchema, meta: DatasetMeta) -> Dataset:
    """Insert the dataset row and create its typed table, in the caller's transaction."""
    check_vocabularies(meta)
    check_slug(slug)
    if await conn.fetchval("SELECT 1 FROM dataset WHERE slug = $1", slug):
        raise ConflictError(f"dataset {slug!r} already exists")
    dataset_id = await conn.fetchval(
        """INSERT INTO dataset (slug, kind, title, description, keywords, themes, licence, publisher, contact_name,
               contact_email, update_frequency, access, table_schema, extra, row_count)
           VALUES ($1, 'table', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb, $13::text::jsonb, 0)
           RETURNING id""",
        slug,
        (meta.title or slug)[:300],
        meta.description,
        list(meta.keywords),
        list(meta.themes),
        meta.licence,
        meta.publisher,
        meta.contact_name,
        meta.contact_email,
        meta.update_frequency,
        meta.access,
        orjson.dumps(schema.descriptor).decode(),
        orjson.dumps(meta.extra).decode(),
    )
    table_name = f"ds_{dataset_id}"
    await conn.execute("UPDATE dataset SET table_name = $1 WHERE id = $2", table_name, dataset_id)
    for statement in table_ddl(table_name, schema):
        await conn.execute(statement)
    return Dataset(dataset_id, slug, table_name, schema)


async def ensure_sensors_dataset(conn: asyncpg.Connection, slug: str, meta: DatasetMeta) -> int:
    """The id of the sensors dataset `slug` (observations of a connector), created from `meta` when missing.

    Checked like any dataset the catalog creates (slug, licence, themes, frequency), so a connector cannot put
    a dataset outside the catalog's vocabularies; an existing table dataset of that slug is a conflict.
    """
    check_vocabularies(meta)
    check_slug(slug)
    await conn.execute(
        """INSERT INTO dataset (slug, kind, title, description, access, licence, publisher, contact_name,
               contact_email, keywords, themes, update_frequency, extra)
           VALUES ($1, 'sensors', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb)
           ON CONFLICT (slug) DO NOTHING""",
        slug,
        (meta.title or slug)[:300],
        meta.description,
        meta.access,
        meta.licence,
        meta.publisher,
        meta.contact_name,
        meta.contact_email,
        list(meta.keywords),
        list(meta.themes),
        meta.update_frequency,
        orjson.dumps(meta.extra).decode(),
    )
    row = await conn.fetchrow("SELECT id, kind FROM dataset WHERE slug = $1", slug)
    if row is None:  # deleted between the two statements
        raise ConflictError(f"dataset {slug!r} was deleted while being created")
    if row["kind"] != "sensors":
        raise ConflictError(f"dataset {slug!r} exists and is not a sensors dataset")
    return int(row["id"])


async def refresh_dataset_stats(conn: asyncpg.Connection, dataset: Dataset, *, only_points: bool = False) -> None:
    """Row count, geometry type, spatial and temporal extents and modified_at, after an import.

    `only_points`: the caller knows every geometry is a point (a point file into an empty table): no need to read
    each one's type."""
    target = dataset.table
    temporal = dataset.schema.temporal_field()
    if temporal is not None:
        column = quote_ident(temporal.name)
        cast = "::timestamptz" if temporal.type == "date" else ""
        time_sql = f"min({column}){cast} AS t0, max({column}){cast} AS t1"
    else:
        time_sql = "NULL::timestamptz AS t0, NULL::timestamptz AS t1"
    kind = "replace(ST_GeometryType(geom), 'ST_', '')"
    kinds_sql = (
        "CASE WHEN count(geom) > 0 THEN 'Point' END AS k0, NULL::text AS k1"
        if only_points
        else f"min({kind}) AS k0, max({kind}) AS k1"
    )
    stats = await conn.fetchrow(
        f"""SELECT n, k0, k1, t0, t1, ST_XMin(e) AS xmin, ST_YMin(e) AS ymin, ST_XMax(e) AS xmax, ST_YMax(e) AS ymax
            FROM (SELECT count(*) AS n,
                         {kinds_sql},
                         ST_Extent(geom) AS e,
                         {time_sql}
                  FROM {target}) AS s"""
    )
    # One kind when the least and the greatest agree (min/max: one pass, no sort of every row's kind).
    kinds = [k for k in {stats["k0"], stats["k1"]} if k is not None]
    geometry_type = None if not kinds else kinds[0] if len(kinds) == 1 else "Geometry"
    await conn.execute(
        """UPDATE dataset SET row_count = $2, geometry_type = $3,
                spatial_extent = CASE WHEN $6::float8 IS NULL THEN NULL
                    ELSE ST_MakeEnvelope($6::float8, $7::float8, $8::float8, $9::float8, 4326) END,
                temporal_start = $4, temporal_end = $5, modified_at = now()
            WHERE id = $1""",
        dataset.id,
        stats["n"],
        geometry_type,
        stats["t0"],
        stats["t1"],
        stats["xmin"],
        stats["ymin"],
        stats["xmax"],
        stats["ymax"],
    )
