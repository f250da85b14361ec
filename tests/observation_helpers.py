"""Bare SensorThings rows for the database-level tests of observations (triggers, checks, rollups)."""

from __future__ import annotations

import asyncpg


async def create_datastreams(db: asyncpg.Connection, count: int = 2) -> None:
    """One Thing, Sensor and ObservedProperty (ids 1), and `count` Datastreams of them (ids 1..count)."""
    await db.execute(
        "INSERT INTO thing (name) VALUES ('t'); INSERT INTO sensor (name) VALUES ('s');"
        "INSERT INTO observed_property (name) VALUES ('p')"
    )
    await db.execute(
        "INSERT INTO datastream (name, thing_id, sensor_id, observed_property_id) "
        "SELECT 'd' || g, 1, 1, 1 FROM generate_series(1, $1) g",
        count,
    )
