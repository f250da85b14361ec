"""Datasets the OGC API / export tests share: real Rennes stations, a synthetic typed table, a restricted one."""

from __future__ import annotations

import json
from datetime import UTC, date, datetime, timedelta

import asyncpg

from tests.conftest import FIXTURES
from tests.fixtures.typed_tables import create_dataset

STATIONS_SCHEMA = {
    "fields": [
        {"name": "nom", "type": "string", "title": "Nom"},
        {"name": "description", "type": "string"},
        {"name": "commune_insee", "type": "string"},
        {"name": "commune_nom", "type": "string"},
    ]
}

MESURES_SCHEMA = {
    "fields": [
        {"name": "code", "type": "string", "constraints": {"required": True}},
        {"name": "n", "type": "integer"},
        {"name": "valeur", "type": "number"},
        {"name": "actif", "type": "boolean"},
        {"name": "jour", "type": "date"},
        {"name": "mesure à", "type": "datetime"},
        {"name": "note", "type": "string"},
    ],
    "primaryKey": ["code"],
}
T0 = datetime(2024, 1, 1, tzinfo=UTC)
MESURES_COUNT = 120


def mesures_rows() -> tuple[list[tuple[object, ...]], list[str | None]]:
    """120 points around Lyon; a few with awkward values (formula-like text, nulls, no geometry)."""
    rows: list[tuple[object, ...]] = []
    geoms: list[str | None] = []
    for i in range(MESURES_COUNT):
        note = ["=SUM(A1:A2)", "+33 6", "-moins", "@cmd", 'ok; "quoted"\nline', None][i % 6]
        rows.append(
            (f"M{i:03d}", i, i * 1.5, i % 2 == 0, date(2024, 1, 1) + timedelta(days=i), T0 + timedelta(hours=i), note)
        )
        geoms.append(None if i == 7 else f"POINT({4.80 + (i % 12) * 0.01} {45.70 + (i // 12) * 0.01})")
    return rows, geoms


async def load_features_data(db: asyncpg.Connection) -> dict[str, int]:
    collection = json.loads((FIXTURES / "rennes_metropole_stations_comptages_auto.geojson").read_text())
    rows = []
    geoms = []
    for feature in collection["features"]:
        p = feature["properties"]
        rows.append((p["nom"], p["description"], p["commune_insee"], p["commune_nom"]))
        x, y = feature["geometry"]["coordinates"]
        geoms.append(f"POINT({x!r} {y!r})")
    ids = {"stations": await create_dataset(db, "stations", STATIONS_SCHEMA, rows, geometries=geoms)}
    m_rows, m_geoms = mesures_rows()
    ids["mesures"] = await create_dataset(db, "mesures", MESURES_SCHEMA, m_rows, geometries=m_geoms)
    ids["secret"] = await create_dataset(
        db, "secret", STATIONS_SCHEMA, rows[:5], geometries=geoms[:5], access="restricted"
    )
    return ids


async def load_sensor_network(db: asyncpg.Connection, hidden_dataset_id: int) -> None:
    """Two Things with Locations and NO2 observations; the second belongs to a restricted dataset."""
    await db.execute(
        f"""
        INSERT INTO thing (id, name, description, properties)
          VALUES (1, 'Station Bellecour', 'air', '{{"owner": "Métropole"}}');
        INSERT INTO thing (id, name, dataset_id) VALUES (2, 'Capteur privé', {int(hidden_dataset_id)});
        INSERT INTO location (id, name, location, geom) VALUES
          (1, 'Bellecour', '{{"type": "Point", "coordinates": [4.832, 45.757]}}', 'SRID=4326;POINT(4.832 45.757)'),
          (2, 'Privé', '{{"type": "Point", "coordinates": [4.9, 45.8]}}', 'SRID=4326;POINT(4.9 45.8)');
        INSERT INTO thing_location VALUES (1, 1), (2, 2);
        INSERT INTO sensor (id, name) VALUES (1, 's');
        INSERT INTO observed_property (id, name) VALUES (1, 'NO2');
        INSERT INTO datastream (id, name, thing_id, sensor_id, observed_property_id, unit_of_measurement,
                                phenomenon_time_start, phenomenon_time_end)
          VALUES (1, 'no2', 1, 1, 1, '{{"symbol": "µg/m³"}}', now() - interval '2 hours', now() - interval '1 hour');
        INSERT INTO observation (datastream_id, phenomenon_time, result_number) VALUES
          (1, now() - interval '2 hours', 21.5), (1, now() - interval '1 hour', 23.0);
        """
    )
