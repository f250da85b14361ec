"""NGSI-LD subscriptions (clause 5.8): a real HTTP receiver and our MQTT broker get notifications of changes made
through NGSI-LD and through the other doors (an Observation ingested by MQTT), retried and reported when they fail."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import asyncpg
import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from territoire_data.mqtt_url import parse_mqtt_url
from territoire_data.ngsi_ld.notifier import Notifier
from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_AUTH, free_port
from tests.integration.mqtt_helpers import Publisher, RunningWorker, chirpstack_up, connector_for, until

pytestmark = [pytest.mark.db]

BASE = "/ngsi-ld/v1"
CORE = "https://uri.etsi.org/ngsi-ld/v1/ngsi-ld-core-context-v1.8.jsonld"
LD = {**TEST_ADMIN_AUTH, "Content-Type": "application/ld+json"}


class Receiver:
    """An HTTP server on a free port that records the notifications POSTed to it (answering `status`)."""

    def __init__(self) -> None:
        self.received: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.status = 200
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length", 0))
                body = json.loads(self.rfile.read(length))
                receiver.received.append(body)
                receiver.headers.append(dict(self.headers))
                self.send_response(receiver.status)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.port = free_port()
        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/notify"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver()
    yield server
    server.close()


@pytest.fixture
async def notifier(settings: Settings, db: asyncpg.Connection) -> AsyncIterator[Notifier]:
    running = Notifier(settings.model_copy(update={"ngsild_notify_retries": 2}))
    stop = asyncio.Event()
    task = asyncio.create_task(running.run(stop))
    yield running
    stop.set()
    await asyncio.wait_for(task, 15)


def subscription(endpoint: str, **extra: Any) -> dict[str, Any]:
    return {
        "id": "urn:ngsi-ld:Subscription:s1",
        "type": "Subscription",
        "entities": [{"type": "Vehicle"}],
        "watchedAttributes": ["speed"],
        "q": "speed>50;label==%22Fast%20car%22",
        "notification": {"endpoint": {"uri": endpoint, "accept": "application/json"}, "attributes": ["speed"]},
        "@context": [CORE],
        **extra,
    }


def vehicle(speed: int) -> dict[str, Any]:
    return {
        "id": "urn:ngsi-ld:Vehicle:A",
        "type": "Vehicle",
        "speed": {"value": speed},
        "label": "Fast car",
        "@context": [CORE],
    }


async def test_http_notification_for_a_matching_change_only(
    client: httpx.AsyncClient, receiver: Receiver, notifier: Notifier
) -> None:
    created = await client.post(f"{BASE}/subscriptions", json=subscription(receiver.url), headers=LD)
    assert created.status_code == 201, created.text
    assert (await client.post(f"{BASE}/entities", json=vehicle(80), headers=LD)).status_code == 201
    await until(lambda: len(receiver.received) == 1, what="a notification")
    notification = receiver.received[0]
    assert notification["type"] == "Notification"
    assert notification["subscriptionId"] == "urn:ngsi-ld:Subscription:s1"
    assert notification["data"] == [
        {"id": "urn:ngsi-ld:Vehicle:A", "type": "Vehicle", "speed": {"type": "Property", "value": 80}}
    ]
    assert CORE in receiver.headers[0]["Link"]
    slow = await client.patch(
        f"{BASE}/entities/urn:ngsi-ld:Vehicle:A/attrs", json={"speed": {"value": 10}, "@context": [CORE]}, headers=LD
    )
    assert slow.status_code == 204
    await asyncio.sleep(1.5)
    assert len(receiver.received) == 1  # q=speed>50 no longer holds
    fast = await client.patch(
        f"{BASE}/entities/urn:ngsi-ld:Vehicle:A/attrs", json={"speed": {"value": 90}, "@context": [CORE]}, headers=LD
    )
    assert fast.status_code == 204
    await until(lambda: len(receiver.received) == 2, what="a second notification")
    status = (await client.get(f"{BASE}/subscriptions/urn:ngsi-ld:Subscription:s1", headers=TEST_ADMIN_AUTH)).json()
    assert status["notification"]["timesSent"] == 2
    assert status["status"] == "active" and "lastSuccess" in status["notification"]


async def test_a_failing_endpoint_is_retried_and_shows_as_failed(
    client: httpx.AsyncClient, receiver: Receiver, notifier: Notifier
) -> None:
    receiver.status = 500
    assert (await client.post(f"{BASE}/subscriptions", json=subscription(receiver.url), headers=LD)).status_code == 201
    assert (await client.post(f"{BASE}/entities", json=vehicle(80), headers=LD)).status_code == 201
    await until(lambda: len(receiver.received) >= 2, seconds=10, what="a retry")

    async def failed() -> bool:
        answer = await client.get(f"{BASE}/subscriptions/urn:ngsi-ld:Subscription:s1", headers=TEST_ADMIN_AUTH)
        return bool(answer.json()["notification"]["timesFailed"] >= 2)

    await until(failed, seconds=10, what="the failures recorded")
    status = (await client.get(f"{BASE}/subscriptions/urn:ngsi-ld:Subscription:s1", headers=TEST_ADMIN_AUTH)).json()
    assert status["status"] == "failed"
    assert status["notification"]["timesFailed"] >= 2 and "lastFailure" in status["notification"]
    receiver.status = 200  # the endpoint comes back: the same notification, delivered at last
    await until(lambda: len(receiver.received) >= 3, seconds=10, what="delivery after recovery")

    async def sent() -> bool:
        answer = await client.get(f"{BASE}/subscriptions/urn:ngsi-ld:Subscription:s1", headers=TEST_ADMIN_AUTH)
        return bool(answer.json()["notification"]["timesSent"] == 1)

    await until(sent, seconds=10, what="the delivery recorded")
    status = (await client.get(f"{BASE}/subscriptions/urn:ngsi-ld:Subscription:s1", headers=TEST_ADMIN_AUTH)).json()
    assert status["status"] == "active" and status["notification"]["timesSent"] == 1
    assert {n["id"] for n in receiver.received} == {receiver.received[0]["id"]}  # at least once: one notification


async def test_an_observation_ingested_by_mqtt_notifies_subscribers(
    client: httpx.AsyncClient,
    settings: Settings,
    mqtt_url: str,
    topic_prefix: str,
    receiver: Receiver,
    notifier: Notifier,
) -> None:
    body = {
        "type": "Subscription",
        "entities": [{"type": "AirQualityObserved"}],
        "watchedAttributes": ["co2"],
        "notification": {"endpoint": {"uri": receiver.url}, "format": "keyValues"},
        "@context": [CORE],
    }
    assert (await client.post(f"{BASE}/subscriptions", json=body, headers=LD)).status_code == 201
    worker = await RunningWorker(settings, connector_for(topic_prefix)).start()
    publisher = Publisher(mqtt_url)
    try:
        topic, event = chirpstack_up(topic_prefix, "70b3d50000000042", 1, co2=612, temperature=19.5)
        publisher.publish(topic, event)
        await until(lambda: len(receiver.received) >= 1, what="a notification of the MQTT observation")
    finally:
        publisher.close()
        await worker.stop()
    data = receiver.received[0]["data"][0]
    assert data["type"] == "AirQualityObserved" and data["co2"] == 612 and data["temperature"] == 19.5


async def test_mqtt_notification_on_our_broker(
    client: httpx.AsyncClient, settings: Settings, mqtt_url: str, topic_prefix: str, notifier: Notifier
) -> None:
    broker = parse_mqtt_url(mqtt_url)
    got: list[dict[str, Any]] = []
    listener = mqtt.Client(CallbackAPIVersion.VERSION2)
    listener.on_message = lambda _c, _u, message: got.append(json.loads(message.payload))
    listener.connect(broker.host, broker.port)
    listener.subscribe(f"{topic_prefix}/notify", qos=1)
    listener.loop_start()
    try:
        endpoint = f"mqtt://{broker.host}:{broker.port}/{topic_prefix}/notify"
        assert (await client.post(f"{BASE}/subscriptions", json=subscription(endpoint), headers=LD)).status_code == 201
        assert (await client.post(f"{BASE}/entities", json=vehicle(70), headers=LD)).status_code == 201
        await until(lambda: len(got) == 1, what="an MQTT notification")
    finally:
        listener.loop_stop()
        listener.disconnect()
    assert got[0]["body"]["data"][0]["speed"]["value"] == 70
    elsewhere = subscription("mqtt://broker.example.org:1883/x")
    elsewhere["id"] = "urn:ngsi-ld:Subscription:s2"
    assert (await client.post(f"{BASE}/subscriptions", json=elsewhere, headers=LD)).status_code == 201


async def test_subscriptions_are_their_creators_and_restricted_entities_never_notify_others(
    client: httpx.AsyncClient, db: asyncpg.Connection, receiver: Receiver, notifier: Notifier
) -> None:
    anonymous = {**subscription(receiver.url), "q": "speed>0"}  # label irrelevant here
    anonymous_headers = {"Content-Type": "application/ld+json"}
    assert (await client.post(f"{BASE}/subscriptions", json=anonymous, headers=anonymous_headers)).status_code == 201
    await db.execute(
        "INSERT INTO dataset (identifier, slug, kind, title, description, keywords, themes, access, extra, created_at, "
        "modified_at, status) VALUES (gen_random_uuid(), 'prive', 'sensors', 'Privé', '', '{}', '{}', 'restricted', "
        "'{}', now(), now(), 'published')"
    )
    private = await client.post(f"{BASE}/entities", json=vehicle(80), headers={**LD, "NGSILD-Dataset": "prive"})
    assert private.status_code == 201
    await asyncio.sleep(1.5)
    assert receiver.received == []  # the anonymous subscriber may not read the restricted dataset
    assert (await client.get(f"{BASE}/entities/urn:ngsi-ld:Vehicle:A")).status_code == 404
    assert (await client.get(f"{BASE}/entities/urn:ngsi-ld:Vehicle:A", headers=TEST_ADMIN_AUTH)).status_code == 200
    # a subscription is its creator's: a 404 to another caller
    assert (await client.get(f"{BASE}/subscriptions/urn:ngsi-ld:Subscription:s1")).status_code == 200
    assert (
        await client.get(f"{BASE}/subscriptions/urn:ngsi-ld:Subscription:s1", headers=TEST_ADMIN_AUTH)
    ).status_code == 200


async def test_invalid_subscriptions_are_400(client: httpx.AsyncClient) -> None:
    for broken in (
        {"type": "Subscription", "notification": {"endpoint": {"uri": "http://x/"}}, "@context": [CORE]},
        {**subscription("ftp://x/"), "id": "urn:ngsi-ld:Subscription:b"},
        {**subscription("http://x/"), "q": "speed>>"},
        {**subscription("http://x/"), "geoQ": {"georel": "near", "geometry": "Point", "coordinates": [0, 0]}},
        {**subscription("http://x/"), "type": "Sub"},
        {**subscription("http://x/"), "expiresAt": "2020-01-01T00:00:00Z"},
        {**subscription("http://x/"), "notification": {"endpoint": {"uri": "http://x/"}, "attributes": []}},
        {
            **subscription("http://x/"),
            "notification": {"endpoint": {"uri": "http://x/"}, "format": "keyValues", "showChanges": True},
        },
        {
            **subscription("http://x/"),
            "notification": {"endpoint": {"uri": "http://x/", "receiverInfo": [{"key": "a", "value": 1}]}},
        },
        {**subscription("http://x/"), "jsonldContext": "not a uri"},
    ):
        response = await client.post(f"{BASE}/subscriptions", json=broken, headers=LD)
        assert response.status_code == 400, broken
