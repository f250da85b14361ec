"""Test helpers for indicators: a PM10 sensor placed somewhere, and its readings."""

from __future__ import annotations

from datetime import datetime

import asyncpg


async def pm10_sensor(db: asyncpg.Connection, lon: float, lat: float) -> int:
    """A public sensor dataset's Thing at (lon, lat) with a PM10 Datastream (ObservedProperty key `pm10`)."""
    dataset_id = await db.fetchval(
        "INSERT INTO dataset (slug, kind, title, description, keywords, themes, access, extra, status) "
        "VALUES ('capteurs-air', 'sensors', 'Capteurs air', '', '{}', '{}', 'public', '{}', 'published') "
        "ON CONFLICT (slug) DO UPDATE SET title = EXCLUDED.title RETURNING id"
    )
    thing = await db.fetchval("INSERT INTO thing (name, dataset_id) VALUES ('Air', $1) RETURNING id", dataset_id)
    location = await db.fetchval(
        "INSERT INTO location (name, location, geom) "
        "VALUES ('ici', '{}'::jsonb, ST_SetSRID(ST_MakePoint($1, $2), 4326)) RETURNING id",
        lon,
        lat,
    )
    await db.execute("INSERT INTO thing_location VALUES ($1, $2)", thing, location)
    sensor = await db.fetchval("INSERT INTO sensor (name) VALUES ('s') RETURNING id")
    prop = await db.fetchval(
        "INSERT INTO observed_property (name, external_key) VALUES ('Particules PM10', 'pm10') "
        "ON CONFLICT (external_key) DO UPDATE SET name = EXCLUDED.name RETURNING id"
    )
    return int(
        await db.fetchval(
            "INSERT INTO datastream (name, thing_id, sensor_id, observed_property_id, dataset_id) "
            "VALUES ('PM10', $1, $2, $3, $4) RETURNING id",
            thing,
            sensor,
            prop,
            dataset_id,
        )
    )


async def observe(db: asyncpg.Connection, datastream: int, readings: list[tuple[datetime, float]]) -> None:
    await db.executemany(
        "INSERT INTO observation (datastream_id, phenomenon_time, result_number) VALUES ($1, $2, $3)",
        [(datastream, at, value) for at, value in readings],
    )
