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
# Every typed table is named after its dataset's id (see create_dataset): any other name is not ours to read.
TYPED_TABLE_NAME = re.compile(r"^ds_[0-9]+$")


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
    # A new dataset is a draft (its writers only) until published (catalog.publishing); a connector that declares
    # `publish: auto` with complete metadata creates it published.
    status: str = "draft"


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


def typed_table(table_name: str | None) -> str | None:
    """The schema-qualified, quoted typed table of a dataset row's `table_name`; None for anything not ours."""
    return qualified(SCHEMA, table_name) if table_name and TYPED_TABLE_NAME.match(table_name) else None


def check_slug(slug: str) -> str:
    if not SLUG.fullmatch(slug):
        raise BadRequestError(f"dataset slug {slug!r} must be lowercase letters, digits and dashes (max 63)")
    return slug


async def get_dataset(conn: asyncpg.Connection, slug: str, *, lock: bool = False) -> Dataset | None:
    """The table dataset `slug`, optionally locked for the rest of the transaction (one import at a time).

    None when there is none, or when it was described first and holds no table yet (see `described_dataset`)."""
    sql = (
        "SELECT id, slug, kind, table_name, table_schema::text AS schema, extra->>'derived_by' AS derived_by "
        "FROM dataset WHERE slug = $1"
    )
    row = await conn.fetchrow(sql + (" FOR UPDATE" if lock else ""), slug)
    if row is None:
        return None
    if row["kind"] != "table":
        raise ConflictError(f"dataset {slug!r} is not a table dataset (it holds {row['kind']})")
    if row["derived_by"]:
        raise ConflictError(f"dataset {slug!r} is computed ({row['derived_by']}): it cannot be loaded from a file")
    if not row["table_name"] or row["schema"] is None:
        return None
    return Dataset(row["id"], row["slug"], row["table_name"], parse_table_schema(orjson.loads(row["schema"])))


async def described_dataset(conn: asyncpg.Connection, slug: str) -> int | None:
    """The id of table dataset `slug` when it was described first (metadata only, no table yet), locked for the
    caller's transaction: its first import creates its table (`attach_table`)."""
    return await conn.fetchval(  # type: ignore[no-any-return]
        "SELECT id FROM dataset WHERE slug = $1 AND kind = 'table' AND table_name IS NULL FOR UPDATE", slug
    )


async def attach_table(conn: asyncpg.Connection, dataset_id: int, slug: str, schema: TableSchema) -> Dataset:
    """Create the typed table of a dataset described first, from the schema of its first file."""
    table_name = f"ds_{dataset_id}"  # TYPED_TABLE_NAME
    await conn.execute(
        "UPDATE dataset SET table_name = $1, table_schema = $2::text::jsonb, row_count = 0 WHERE id = $3",
        table_name,
        orjson.dumps(schema.descriptor).decode(),
        dataset_id,
    )
    for statement in table_ddl(table_name, schema):
        await conn.execute(statement)
    return Dataset(dataset_id, slug, table_name, schema)


def _field_columns(schema: TableSchema) -> list[str]:
    required = set(schema.primary_key)
    columns = []
    for f in schema.fields:
        not_null = " NOT NULL" if f.required or f.name in required else ""
        columns.append(f"{quote_ident(f.name)} {f.sql_type}{not_null}")
    return columns


def table_ddl(table_name: str, schema: TableSchema) -> list[str]:
    """CREATE TABLE and index statements of a typed dataset table (identifiers quoted, types from an allow-list)."""
    target = qualified(SCHEMA, table_name)
    columns = ['"_fid" bigint GENERATED ALWAYS AS IDENTITY', *_field_columns(schema), '"geom" geometry(Geometry, 4326)']
    return [f"CREATE TABLE {target} (\n    " + ",\n    ".join(columns) + "\n)", *index_ddl(table_name, schema)[1]]


def load_table_ddl(table_name: str, schema: TableSchema, fid_default: str, geometry: str | None) -> str:
    """CREATE TABLE of a private load table (see ingest.files.parload): the dataset table's columns in the same order,
    without index, the row id taken from `fid_default` and the point generated by `geometry` (None: no point)."""
    geom = '"geom" geometry(Geometry, 4326)'
    if geometry is not None:
        geom += f" GENERATED ALWAYS AS ({geometry}) STORED"
    columns = [f'"_fid" bigint NOT NULL DEFAULT {fid_default}', *_field_columns(schema), geom]
    return f"CREATE TABLE {qualified(SCHEMA, table_name)} (" + ", ".join(columns) + ")"


def index_names(table_name: str, schema: TableSchema) -> tuple[list[str], str, str]:
    """(unique constraints, GiST index, row id's primary key): the names of a dataset table's indexes."""
    unique = [
        f"{table_name}_pk_key" if index == 0 and key == schema.primary_key else f"{table_name}_u{index}"
        for index, key in enumerate(schema.unique_keys())
    ]
    return unique, f"{table_name}_geom_idx", f"{table_name}_pkey"


def index_ddl(table_name: str, schema: TableSchema) -> tuple[list[str], list[str]]:
    """(drop, create) statements of the unique constraints, the GiST index and the row id's primary key, so a bulk
    load into an empty table can build them once at the end instead of row by row."""
    target = qualified(SCHEMA, table_name)
    unique, gist_name, pkey_name = index_names(table_name, schema)
    drop: list[str] = []
    create: list[str] = []
    for name, key in zip(unique, schema.unique_keys(), strict=True):
        drop.append(f"ALTER TABLE {target} DROP CONSTRAINT {quote_ident(name)}")
        create.append(
            f"ALTER TABLE {target} ADD CONSTRAINT {quote_ident(name)} UNIQUE ({', '.join(quote_ident(k) for k in key)})"
        )
    drop.append(f"DROP INDEX {qualified(SCHEMA, gist_name)}")
    create.append(f"CREATE INDEX {quote_ident(gist_name)} ON {target} USING gist (geom)")
    # The row id's primary key too: a bulk load into an empty table builds it once, like the others.
    pkey = quote_ident(pkey_name)
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
               contact_email, update_frequency, access, table_schema, extra, row_count, status, published_at)
           VALUES ($1, 'table', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb, $13::text::jsonb, 0,
                   $14, CASE WHEN $14 = 'published' THEN now() END)
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
        meta.status,
    )
    return await attach_table(conn, dataset_id, slug, schema)


async def ensure_sensors_dataset(conn: asyncpg.Connection, slug: str, meta: DatasetMeta) -> int:
    """The id of the sensors dataset `slug` (observations of a connector), created from `meta` when missing.

    Checked like any dataset the catalog creates (slug, licence, themes, frequency), so a connector cannot put
    a dataset outside the catalog's vocabularies; an existing table dataset of that slug is a conflict.
    """
    check_vocabularies(meta)
    check_slug(slug)
    await conn.execute(
        """INSERT INTO dataset (slug, kind, title, description, access, licence, publisher, contact_name,
               contact_email, keywords, themes, update_frequency, extra, status, published_at)
           VALUES ($1, 'sensors', $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12::text::jsonb,
                   $13, CASE WHEN $13 = 'published' THEN now() END)
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
        meta.status,
    )
    row = await conn.fetchrow("SELECT id, kind FROM dataset WHERE slug = $1", slug)
    if row is None:  # deleted between the two statements
        raise ConflictError(f"dataset {slug!r} was deleted while being created")
    if row["kind"] != "sensors":
        raise ConflictError(f"dataset {slug!r} exists and is not a sensors dataset")
    return int(row["id"])


def stats_sql(
    schema: TableSchema,
    table: str,
    *,
    only_points: bool = False,
    extra: tuple[str, str] | None = None,
    lonlat: tuple[str, str] | None = None,
) -> str:
    """The query of a dataset table's statistics (see write_dataset_stats), over `table` (qualified, quoted);
    `extra`: (name, aggregate) of one more value computed in the same pass (e.g. a validity check); `lonlat`:
    the (quoted) columns every point was made of, in WGS84 (the extent from them, without reading the points)."""
    temporal = schema.temporal_field()
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
    first, more = (f"{extra[0]}, ", f"{extra[1]} AS {extra[0]}, ") if extra else ("", "")
    if lonlat is not None:
        x, y = lonlat
        extent = f"min({x}) AS xmin, min({y}) AS ymin, max({x}) AS xmax, max({y}) AS ymax"
        bounds = "xmin, ymin, xmax, ymax"
    else:
        extent = "ST_Extent(geom) AS e"
        bounds = "ST_XMin(e) AS xmin, ST_YMin(e) AS ymin, ST_XMax(e) AS xmax, ST_YMax(e) AS ymax"
    return (
        f"SELECT {first}n, k0, k1, t0, t1, {bounds} "
        f"FROM (SELECT {more}count(*) AS n, {kinds_sql}, {extent}, {time_sql} FROM {table}) AS s"
    )


async def refresh_dataset_stats(conn: asyncpg.Connection, dataset: Dataset, *, only_points: bool = False) -> None:
    """Row count, geometry type, spatial and temporal extents and modified_at, after an import.

    `only_points`: the caller knows every geometry is a point (a point file into an empty table): no need to read
    each one's type."""
    stats = await conn.fetchrow(stats_sql(dataset.schema, dataset.table, only_points=only_points))
    await write_dataset_stats(conn, dataset, stats)


async def write_dataset_stats(conn: asyncpg.Connection, dataset: Dataset, stats: Any) -> None:
    """Store statistics computed by stats_sql's query (a row with n, k0, k1, t0, t1, xmin, ymin, xmax, ymax)."""
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


# --- derived datasets: tables the platform computes (an indicator's latest values), never loaded from files -----


async def create_derived_dataset(
    conn: asyncpg.Connection, slug: str, schema: TableSchema, meta: DatasetMeta, *, derived_by: str
) -> Dataset:
    """A table dataset whose rows the platform writes (`derived_by` says what computes it: imports refuse it).

    Published at once: what computes it (a declared indicator) has no draft state of its own; its access (public or
    restricted) still follows its sources."""
    meta = DatasetMeta(**{**meta.__dict__, "extra": {**meta.extra, "derived_by": derived_by}, "status": "published"})
    return await create_dataset(conn, slug, schema, meta)


async def update_derived_dataset(conn: asyncpg.Connection, dataset_id: int, meta: DatasetMeta) -> None:
    """Its descriptive metadata and access follow what computes it (an indicator's definition)."""
    check_vocabularies(meta)
    await conn.execute(
        """UPDATE dataset SET title = $2, description = $3, keywords = $4, themes = $5, licence = $6,
               publisher = $7, update_frequency = $8, access = $9,
               extra = extra || $10::text::jsonb, modified_at = now()
           WHERE id = $1 AND extra ? 'derived_by'""",
        dataset_id,
        (meta.title or "")[:300],
        meta.description,
        list(meta.keywords),
        list(meta.themes),
        meta.licence,
        meta.publisher,
        meta.update_frequency,
        meta.access,
        orjson.dumps(meta.extra).decode(),
    )


async def drop_derived_dataset(conn: asyncpg.Connection, dataset_id: int) -> None:
    """Delete a derived dataset's row and table (what computed it is being deleted)."""
    table_name = await conn.fetchval(
        "DELETE FROM dataset WHERE id = $1 AND extra ? 'derived_by' RETURNING table_name", dataset_id
    )
    table = typed_table(table_name)
    if table is not None:
        await conn.execute(f"DROP TABLE IF EXISTS {table}")
