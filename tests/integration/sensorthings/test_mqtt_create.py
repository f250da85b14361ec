"""Conformance class MQTT create: Observations published to v1.1/Datastreams(id)/Observations are stored."""

from __future__ import annotations

import asyncio
from typing import Any

import asyncpg
import httpx
import pytest

from territoire_data.settings import Settings
from tests.integration.sensorthings.conftest import ADMIN_TOKEN, Subscriber, create, get, thing_body

pytestmark = [pytest.mark.db, pytest.mark.mqtt]


async def _wait_for(db: asyncpg.Connection, query: str, expected: int, *args: Any) -> int:
    value = -1
    for _ in range(200):
        value = await db.fetchval(query, *args)
        if value >= expected:
            return int(value)
        await asyncio.sleep(0.05)
    return int(value)


async def test_publishing_creates_observations_and_subscribers_see_them(
    sta: httpx.AsyncClient, bridge: Any, db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    topic = f"{topic_prefix}/v1.1/Datastreams({ds})/Observations"
    sub = Subscriber(settings.mqtt_url, [topic])
    try:
        sub.publish(topic, {"result": 42, "phenomenonTime": "2026-11-01T08:00:00Z"}, f"Bearer {ADMIN_TOKEN}")
        received = []
        while len(received) < 2:  # our own publish, then the server's notification with its id
            received.append((await asyncio.to_thread(sub.next, 10))[1])
        notification = next(m for m in received if "@iot.id" in m)
        assert notification["result"] == 42.0
        stored = await get(sta, f"Observations({notification['@iot.id']})", **{"$expand": "FeatureOfInterest"})
        assert stored["FeatureOfInterest"]["feature"]["type"] == "Point"
        # on the collection topic, the body names its Datastream
        sub.publish(
            f"{topic_prefix}/v1.1/Observations",
            {"result": 43, "phenomenonTime": "2026-11-01T09:00:00Z", "Datastream": {"@iot.id": ds}},
            f"Bearer {ADMIN_TOKEN}",
        )
        assert await _wait_for(db, "SELECT count(*) FROM observation", 2) == 2
    finally:
        sub.close()
    assert bridge.created == 2
    assert await db.fetchval("SELECT count(*) FROM observation") == 2  # notifications were not stored again


async def test_unauthorised_or_invalid_messages_are_rejected_not_stored(
    sta: httpx.AsyncClient, bridge: Any, db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    thing = await create(sta, "Things", thing_body())
    ds = (await get(sta, f"Things({thing['@iot.id']})/Datastreams"))["value"][0]["@iot.id"]
    topic = f"{topic_prefix}/v1.1/Datastreams({ds})/Observations"
    sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/unused"])
    try:
        sub.publish(topic, {"result": 1})  # no token
        sub.publish(topic, {"result": 1}, "Bearer wrong")
        sub.publish(topic, {"phenomenonTime": "nope", "result": 1}, f"Bearer {ADMIN_TOKEN}")
        sub.publish(f"{topic_prefix}/v1.1/Datastreams(999)/Observations", {"result": 1}, f"Bearer {ADMIN_TOKEN}")
        sub.publish(topic, {"result": 5, "phenomenonTime": "2026-11-01T00:00:00Z"}, f"Bearer {ADMIN_TOKEN}")
        assert await _wait_for(db, "SELECT count(*) FROM observation", 1) == 1
        assert await _wait_for(db, "SELECT count(*) FROM ingest_rejection WHERE source = 'sta-mqtt'", 4) == 4
        reasons = [r["reason"] for r in await db.fetch("SELECT reason FROM ingest_rejection ORDER BY id")]
        assert "publisher or admin API key" in reasons[0]  # no key
        assert "unknown, revoked or expired API key" not in reasons[0]
        assert "publisher or admin API key" in reasons[1] or "Authorization must be" in reasons[1]
        assert "date-time" in reasons[2]
        assert "no Datastream with id 999" in reasons[3]
    finally:
        sub.close()
