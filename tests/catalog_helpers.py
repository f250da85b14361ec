"""Test helpers for the catalog: datasets through our own API, typed tables and sensors in small SQL per contract.

Until the CSV loader is merged, a typed table is built here exactly as TYPED_TABLES.md describes it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx

from tests.conftest import TEST_ADMIN_AUTH

AUTH = TEST_ADMIN_AUTH

FULL_METADATA: dict[str, Any] = {
    "description": "Emplacements des toilettes publiques gérées par la ville, avec leurs horaires d'ouverture.",
    "keywords": ["toilettes", "sanisettes", "propreté"],
    "themes": ["REGI", "HEAL"],
    "licence": "etalab-2.0",
    "publisher": "Ville de Testville",
    "contact_name": "Service données",
    "contact_email": "donnees@testville.fr",
    "update_frequency": "MONTHLY",
    "conforms_to": "https://schema.data.gouv.fr/schemas/etalab/schema-lieux-covoiturage/latest/schema.json",
    "spatial_coverage": "Testville",
}


async def create_dataset(
    client: httpx.AsyncClient, slug: str, title: str, *, publish: bool = True, **fields: Any
) -> dict[str, Any]:
    """Create a dataset through the API with the admin token; fails the test on anything but 201.

    `publish` (the default, so tests written before the publishing workflow keep their meaning): published through
    the API when its metadata is complete; otherwise marked published in the database, as the migration did for
    every dataset that existed before drafts (whatever its metadata). `publish=False` leaves it a draft."""
    response = await client.post("/api/v1/datasets", json={"slug": slug, "title": title, **fields}, headers=AUTH)
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    assert body["status"] == "draft", body
    if publish:
        published = await client.post(f"/api/v1/datasets/{slug}/publish", headers=AUTH)
        if published.status_code == 422:
            await mark_published(slug)
            body["status"] = "published"
        else:
            assert published.status_code == 200, published.text
            body = published.json()
    return body


async def mark_published(*slugs: str) -> None:
    """Mark datasets published in the test database directly (datasets from before the workflow, whatever their
    metadata; rows tests insert by SQL)."""
    db = await asyncpg.connect(os.environ["TD_TEST_DATABASE_URL"])
    try:
        await db.execute(
            "UPDATE dataset SET status = 'published', published_at = now() WHERE slug = ANY($1::text[])", list(slugs)
        )
    finally:
        await db.close()


async def add_point_table(db: asyncpg.Connection, slug: str, points: list[tuple[str, float, float, str]]) -> None:
    """A typed table (name, lon, lat, ISO date) per the contract, with the dataset's computed extents."""
    dataset_id = await db.fetchval("SELECT id FROM dataset WHERE slug = $1", slug)
    table = f"ds_{dataset_id}"
    await db.execute(
        f'CREATE TABLE datasets."{table}" (_fid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, '
        f'"nom" text, "date_releve" date, geom geometry(Geometry, 4326))'
    )
    await db.execute(f'CREATE INDEX "{table}_geom_idx" ON datasets."{table}" USING gist (geom)')
    await db.executemany(
        f'INSERT INTO datasets."{table}" ("nom", "date_releve", geom) '
        "VALUES ($1, $4::text::date, ST_SetSRID(ST_MakePoint($2, $3), 4326))",
        points,
    )
    schema = {"fields": [{"name": "nom", "type": "string"}, {"name": "date_releve", "type": "date"}]}
    await db.execute(
        f"""UPDATE dataset SET table_name = $2, table_schema = $3::jsonb, row_count = $4, geometry_type = 'Point',
            spatial_extent = (SELECT ST_SetSRID(ST_Envelope(ST_Extent(geom)::geometry), 4326)
                                FROM datasets."{table}"),
            temporal_start = (SELECT min(date_releve) FROM datasets."{table}"),
            temporal_end = (SELECT max(date_releve) FROM datasets."{table}"),
            modified_at = now()
            WHERE id = $1""",
        dataset_id,
        table,
        __import__("json").dumps(schema),
        len(points),
    )


async def add_sensor(
    db: asyncpg.Connection, slug: str, *, lon: float, lat: float, values: list[float], name: str = "Capteur NO2"
) -> int:
    """A thing at a location with one datastream of the dataset and observations over the last hours."""
    dataset_id = await db.fetchval("SELECT id FROM dataset WHERE slug = $1", slug)
    thing_id = await db.fetchval(
        "INSERT INTO thing (name, dataset_id) VALUES ($1, $2) RETURNING id", f"Station {name}", dataset_id
    )
    location_id = await db.fetchval(
        "INSERT INTO location (name, location, geom) VALUES ($1, $2::jsonb, ST_SetSRID(ST_MakePoint($3, $4), 4326)) "
        "RETURNING id",
        "Station",
        f'{{"type": "Point", "coordinates": [{lon}, {lat}]}}',
        lon,
        lat,
    )
    await db.execute("INSERT INTO thing_location VALUES ($1, $2)", thing_id, location_id)
    sensor_id = await db.fetchval("INSERT INTO sensor (name) VALUES ('Capteur') RETURNING id")
    property_id = await db.fetchval("INSERT INTO observed_property (name) VALUES ('NO2') RETURNING id")
    datastream_id = await db.fetchval(
        "INSERT INTO datastream (name, unit_of_measurement, thing_id, sensor_id, observed_property_id, dataset_id) "
        "VALUES ($1, $2::jsonb, $3, $4, $5, $6) RETURNING id",
        name,
        '{"name": "microgramme par mètre cube", "symbol": "µg/m³"}',
        thing_id,
        sensor_id,
        property_id,
        dataset_id,
    )
    now = datetime.now(UTC).replace(microsecond=0)
    await db.executemany(
        "INSERT INTO observation (datastream_id, phenomenon_time, result_number) VALUES ($1, $2, $3)",
        [(datastream_id, now - timedelta(hours=len(values) - i), v) for i, v in enumerate(values)],
    )
    return int(datastream_id)


async def add_geojson_table(db: asyncpg.Connection, slug: str, path: str) -> int:
    """A typed table per the contract from a GeoJSON file of features with string properties."""
    import json

    features = load_features(path)
    fields = sorted({key for f in features for key in f["properties"]})
    dataset_id = await db.fetchval("SELECT id FROM dataset WHERE slug = $1", slug)
    table = f"ds_{dataset_id}"
    columns = ", ".join(f'"{name}" text' for name in fields)
    await db.execute(
        f'CREATE TABLE datasets."{table}" (_fid bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, {columns}, '
        "geom geometry(Geometry, 4326))"
    )
    await db.execute(f'CREATE INDEX "{table}_geom_idx" ON datasets."{table}" USING gist (geom)')
    names = ", ".join(f'"{name}"' for name in fields)
    placeholders = ", ".join(f"${i + 1}" for i in range(len(fields)))
    await db.executemany(
        f'INSERT INTO datasets."{table}" ({names}, geom) '
        f"VALUES ({placeholders}, ST_SetSRID(ST_GeomFromGeoJSON(${len(fields) + 1}), 4326))",
        [
            [None if f["properties"].get(n) is None else str(f["properties"][n]) for n in fields]
            + [json.dumps(f["geometry"])]
            for f in features
        ],
    )
    schema = {"fields": [{"name": name, "type": "string"} for name in fields]}
    await db.execute(
        f"""UPDATE dataset SET table_name = $2, table_schema = $3::jsonb, row_count = $4, geometry_type = 'Point',
            spatial_extent = (SELECT ST_SetSRID(ST_Envelope(ST_Extent(geom)::geometry), 4326)
                                FROM datasets."{table}"),
            modified_at = now() WHERE id = $1""",
        dataset_id,
        table,
        json.dumps(schema),
        len(features),
    )
    return len(features)


def load_features(path: str) -> list[dict[str, Any]]:
    """The features of a GeoJSON file."""
    import json
    from pathlib import Path

    features: list[dict[str, Any]] = json.loads(Path(path).read_text(encoding="utf-8"))["features"]
    return features
