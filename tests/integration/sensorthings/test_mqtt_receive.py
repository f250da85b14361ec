"""MQTT receive updates, for Observations (our mqtt-observation-updates extension): whatever path stored them."""

from __future__ import annotations

import asyncio
import queue
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from territoire_data.sensorthings.mqtt import LOCK_KEY
from territoire_data.settings import Settings
from tests.integration.sensorthings.conftest import Subscriber, create, get, thing_body

pytestmark = [pytest.mark.db, pytest.mark.mqtt]


async def _next(sub: Subscriber, wait: float = 10) -> tuple[str, dict[str, Any]]:
    return await asyncio.to_thread(sub.next, wait)


async def test_observations_stored_by_http_sql_and_copy_are_published(
    sta: httpx.AsyncClient, bridge: Any, db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    sub = Subscriber(
        settings.mqtt_url, [f"{topic_prefix}/v1.1/Datastreams({ds})/Observations", f"{topic_prefix}/v1.1/Observations"]
    )
    try:
        # 1. over HTTP
        created = await create(
            sta, f"Datastreams({ds})/Observations", {"result": 21.5, "phenomenonTime": "2026-11-01T10:00:00Z"}
        )
        got = {(await _next(sub))[0], (await _next(sub))[0]}
        assert got == {f"{topic_prefix}/v1.1/Datastreams({ds})/Observations", f"{topic_prefix}/v1.1/Observations"}
        # 2. a plain INSERT ... ON CONFLICT DO NOTHING, as the ingest worker's merge does (duplicates not re-sent)
        await db.execute(
            "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
            "SELECT $1, t::timestamptz, 1 FROM unnest($2::text[]) t "
            "ON CONFLICT (datastream_id, phenomenon_time) DO NOTHING",
            ds,
            ["2026-11-01T10:00:00Z", "2026-11-01T11:00:00Z"],
        )
        messages = [await _next(sub), await _next(sub)]
        body = messages[0][1]
        assert body["phenomenonTime"] == "2026-11-01T11:00:00Z"
        assert body["result"] == 1.0
        assert body["@iot.selfLink"].endswith(f"/Observations({body['@iot.id']})")
        assert body["@iot.id"] != created["@iot.id"]
        # 3. COPY, as the CSV connector does
        await db.copy_records_to_table(
            "observation",
            records=[(ds, datetime(2026, 11, 1, 12, tzinfo=UTC), 7.0)],
            columns=["datastream_id", "phenomenon_time", "result_number"],
        )
        _topic, body = await _next(sub)
        assert body["result"] == 7.0
        await _next(sub)
        with pytest.raises(queue.Empty):
            sub.next(timeout=0.5)
    finally:
        sub.close()
    assert bridge.published == 3


async def test_restricted_observations_are_not_published(
    sta: httpx.AsyncClient, bridge: Any, db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    dataset = await db.fetchval(
        "INSERT INTO dataset (slug, title, kind, access) VALUES ('s', 'S', 'sensors', 'restricted') RETURNING id"
    )
    await db.execute("UPDATE datastream SET dataset_id = $1 WHERE id = $2", dataset, ds)
    sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/v1.1/#"])
    try:
        await db.execute(
            "INSERT INTO observation (datastream_id, phenomenon_time, result_number) VALUES ($1, now(), 1)", ds
        )
        for _ in range(100):  # the bridge has read (and withheld) it before the dataset opens
            if bridge.notifications_handled:
                break
            await asyncio.sleep(0.05)
        assert bridge.published == 0
        await db.execute("UPDATE datastream SET dataset_id = NULL WHERE id = $1", ds)
        await db.execute(
            "INSERT INTO observation (datastream_id, phenomenon_time, result_number) "
            "VALUES ($1, now() - interval '1 minute', 2)",
            ds,
        )
        results = {(await _next(sub))[1]["result"] for _ in range(2)}
        assert results == {2.0}
        with pytest.raises(queue.Empty):
            sub.next(timeout=0.5)
    finally:
        sub.close()


async def test_sta_mqtt_command_publishes(sta: httpx.AsyncClient, sta_settings: Settings, settings: Settings) -> None:
    """The real `territoire-data sta-mqtt` process (no prefix: the standard's topics)."""
    import os
    import sys

    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    sub = Subscriber(settings.mqtt_url, [f"v1.1/Datastreams({ds})/Observations"])
    env = {**os.environ, "TERRITOIRE_DATABASE_URL": settings.database_url, "TERRITOIRE_MQTT_URL": settings.mqtt_url}
    process = await asyncio.create_subprocess_exec(sys.executable, "-m", "territoire_data.cli", "sta-mqtt", env=env)
    try:
        for _ in range(100):  # until the process holds the publisher lock
            await asyncio.sleep(0.1)
            conn = await asyncpg.connect(settings.database_url)
            try:
                held = await conn.fetchval(
                    "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted AND objid = $1 "
                    "AND database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                    LOCK_KEY,
                ) and await conn.fetchval(  # the bridge takes the lock, then LISTENs: wait for both
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND query ILIKE 'LISTEN%'"
                )
            finally:
                await conn.close()
            if held:
                break
        await create(sta, f"Datastreams({ds})/Observations", {"result": 3, "phenomenonTime": "2026-11-01T00:00:00Z"})
        topic, body = await _next(sub)
        assert topic == f"v1.1/Datastreams({ds})/Observations"
        assert body["result"] == 3.0
    finally:
        process.terminate()
        await asyncio.wait_for(process.wait(), 10)
        sub.close()
