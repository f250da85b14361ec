"""Territorial divisions: any polygon table dataset declared as communes, IRIS, quartiers, EPCI…

A division names which field is a unit's code, which its name, and which numeric fields are attributes usable as
denominators (population…). Indicators broken down by a division join their records to its polygons spatially.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import asyncpg
import orjson
from pydantic import BaseModel, ConfigDict, Field

from territoire_data.auth.policy import Principal, dataset_visible_sql
from territoire_data.catalog.datasets import typed_table
from territoire_data.db.bulk import quote_ident
from territoire_data.errors import NotFoundError, ValidationFailedError

POLYGONS = ("Polygon", "MultiPolygon")
NUMERIC = ("integer", "number", "year")


class DivisionDeclaration(BaseModel):
    """What makes a polygon dataset a division."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    level: str = Field(min_length=1, max_length=50, description="commune, iris, quartier, epci…")
    code_field: str = Field(min_length=1, max_length=200)
    name_field: str = Field(min_length=1, max_length=200)
    attributes: dict[str, str] = Field(
        default_factory=dict, max_length=20, description="attribute name -> numeric field (e.g. population)"
    )


class DivisionPublic(BaseModel):
    dataset: str
    title: str
    level: str
    code_field: str
    name_field: str
    attributes: dict[str, str]
    units: int | None


@dataclass(frozen=True)
class Division:
    """A declared division, as the compiler needs it: its table and the columns it reads."""

    dataset_id: int
    slug: str
    title: str
    access: str
    table: str
    level: str
    code_field: str
    name_field: str
    attributes: dict[str, str]
    geometry_type: str | None

    @property
    def code_sql(self) -> str:
        return f"u.{quote_ident(self.code_field)}::text"

    @property
    def name_sql(self) -> str:
        return f"u.{quote_ident(self.name_field)}::text"

    def attribute_sql(self, name: str) -> str:
        return f"u.{quote_ident(self.attributes[name])}::float8"


def _fields(schema_text: str | None) -> dict[str, str]:
    schema = orjson.loads(schema_text) if schema_text else {}
    return {f["name"]: f.get("type", "string") for f in schema.get("fields", [])}


async def declare(
    conn: asyncpg.Connection, principal: Principal, slug: str, body: DivisionDeclaration
) -> DivisionPublic:
    """Declare (or re-declare) the dataset `slug` a division, after checking it can be one."""
    row = await conn.fetchrow(
        "SELECT d.id, d.kind, d.table_name, d.table_schema::text AS schema, d.geometry_type FROM dataset d "
        f"WHERE d.slug = $1 AND {dataset_visible_sql(principal, 'd')}",
        slug,
    )
    if row is None:
        raise NotFoundError(f"no dataset {slug!r}")
    if row["kind"] != "table" or typed_table(row["table_name"]) is None:
        raise ValidationFailedError(f"dataset {slug!r} is not a table dataset: it cannot be a division")
    polygonal = row["geometry_type"] in POLYGONS or (
        row["geometry_type"] == "Geometry"
        and await conn.fetchval(
            f"SELECT bool_and(ST_Dimension(geom) = 2) FROM {typed_table(row['table_name'])} WHERE geom IS NOT NULL"
        )
    )
    if not polygonal:
        raise ValidationFailedError(
            f"dataset {slug!r} is not a polygon dataset (its geometries are {row['geometry_type'] or 'none'}): "
            "a division needs polygons"
        )
    fields = _fields(row["schema"])
    errors = []
    for role, name in (("code_field", body.code_field), ("name_field", body.name_field)):
        if name not in fields:
            errors.append({"field": role, "message": f"unknown field {name!r}; fields: {', '.join(fields)}"})
    for attribute, name in body.attributes.items():
        if name not in fields:
            errors.append({"field": f"attributes.{attribute}", "message": f"unknown field {name!r}"})
        elif fields[name] not in NUMERIC:
            errors.append(
                {
                    "field": f"attributes.{attribute}",
                    "message": f"type mismatch: {name!r} is {fields[name]}, not a number",
                }
            )
    if errors:
        summary = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        raise ValidationFailedError(f"invalid division: {summary}", errors=errors)
    duplicates = await conn.fetchval(
        f"SELECT count(*) - count(DISTINCT {quote_ident(body.code_field)}) FROM {typed_table(row['table_name'])}"
    )
    if duplicates:
        raise ValidationFailedError(f"field {body.code_field!r} is not a code: {duplicates} units share one")
    await conn.execute(
        """INSERT INTO division (dataset_id, level, code_field, name_field, attributes)
           VALUES ($1, $2, $3, $4, $5::text::jsonb)
           ON CONFLICT (dataset_id) DO UPDATE SET level = EXCLUDED.level, code_field = EXCLUDED.code_field,
               name_field = EXCLUDED.name_field, attributes = EXCLUDED.attributes, modified_at = now()""",
        row["id"],
        body.level,
        body.code_field,
        body.name_field,
        orjson.dumps(body.attributes).decode(),
    )
    found = await get(conn, principal, slug)
    return await public(conn, found)


_SELECT = (
    "SELECT d.id, d.slug, d.title, d.access, d.table_name, d.geometry_type, v.level, v.code_field, v.name_field, "
    "v.attributes::text AS attributes FROM division v JOIN dataset d ON d.id = v.dataset_id"
)


def _division(row: asyncpg.Record) -> Division:
    table = typed_table(row["table_name"])
    if table is None:
        raise ValidationFailedError(f"division {row['slug']!r} has no table")
    return Division(
        dataset_id=row["id"],
        slug=row["slug"],
        title=row["title"],
        access=row["access"],
        table=table,
        level=row["level"],
        code_field=row["code_field"],
        name_field=row["name_field"],
        attributes=orjson.loads(row["attributes"]),
        geometry_type=row["geometry_type"],
    )


async def get(conn: asyncpg.Connection, principal: Principal, slug: str) -> Division:
    row = await conn.fetchrow(f"{_SELECT} WHERE d.slug = $1 AND {dataset_visible_sql(principal, 'd')}", slug)
    if row is None:
        raise NotFoundError(f"no division {slug!r} (declare a polygon dataset with PUT /api/v1/divisions/{{slug}})")
    return _division(row)


async def by_dataset_id(conn: asyncpg.Connection, dataset_id: int) -> Division | None:
    row = await conn.fetchrow(f"{_SELECT} WHERE d.id = $1", dataset_id)
    return _division(row) if row else None


async def all_visible(conn: asyncpg.Connection, principal: Principal) -> list[Division]:
    rows = await conn.fetch(f"{_SELECT} WHERE {dataset_visible_sql(principal, 'd')} ORDER BY d.slug")
    return [_division(r) for r in rows]


async def public(conn: asyncpg.Connection, division: Division) -> DivisionPublic:
    units = await conn.fetchval(f"SELECT count(*) FROM {division.table}")
    return DivisionPublic(
        dataset=division.slug,
        title=division.title,
        level=division.level,
        code_field=division.code_field,
        name_field=division.name_field,
        attributes=division.attributes,
        units=units,
    )


async def units(conn: asyncpg.Connection, division: Division) -> list[dict[str, Any]]:
    """Every unit of a division: code, name and attributes, ordered by name."""
    attrs = "".join(f", {division.attribute_sql(a)} AS {quote_ident('a_' + a)}" for a in division.attributes)
    rows = await conn.fetch(
        f"SELECT {division.code_sql} AS code, {division.name_sql} AS name{attrs} FROM {division.table} u ORDER BY 2, 1"
    )
    return [
        {"code": r["code"], "name": r["name"], "attributes": {a: r["a_" + a] for a in division.attributes}}
        for r in rows
    ]


async def remove(conn: asyncpg.Connection, principal: Principal, slug: str) -> None:
    division = await get(conn, principal, slug)
    used = await conn.fetchval(
        "SELECT string_agg(slug, ', ') FROM indicator WHERE division_dataset_id = $1", division.dataset_id
    )
    if used:
        raise ValidationFailedError(f"division {slug!r} is used by indicators: {used}")
    await conn.execute("DELETE FROM division WHERE dataset_id = $1", division.dataset_id)
