"""Helpers for MQTT ingest tests: a QoS 1 publisher, payload builders, a worker in a task, waiting."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from territoire_data.ingest.mqtt.config import ConnectorConfig, parse_connector
from territoire_data.ingest.mqtt.worker import MqttWorker
from territoire_data.mqtt_url import configure_client, parse_mqtt_url
from territoire_data.settings import Settings

T0 = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)


class Publisher:
    """A plain paho publisher, QoS 1, waiting for every PUBACK."""

    def __init__(self, url: str, **tls_files: str | None) -> None:
        address = parse_mqtt_url(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
        configure_client(self.client, address, **tls_files)  # credentials in the URL, TLS for mqtts://
        self.client.max_queued_messages_set(0)
        self.client.max_inflight_messages_set(1000)
        self.client.connect(address.host, address.port)
        self.client.loop_start()

    def publish(self, topic: str, payload: bytes | dict[str, Any] | list[Any], qos: int = 1) -> mqtt.MQTTMessageInfo:
        data = payload if isinstance(payload, bytes) else orjson.dumps(payload)
        return self.client.publish(topic, data, qos=qos)

    def publish_all(self, items: list[tuple[str, Any]], qos: int = 1) -> None:
        infos = [self.publish(topic, payload, qos) for topic, payload in items]
        for info in infos:
            info.wait_for_publish(30)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def chirpstack_up(prefix: str, eui: str, seq: int, **values: Any) -> tuple[str, dict[str, Any]]:
    """A ChirpStack v4 uplink event on `<prefix>/application/...` with a decoded object."""
    topic = f"{prefix}/application/app-1/device/{eui}/event/up"
    event = {
        "deduplicationId": str(uuid.UUID(int=seq + (int(eui, 16) << 64))),
        "time": (T0 + timedelta(seconds=seq)).isoformat(),
        "deviceInfo": {
            "applicationName": "test",
            "deviceProfileName": "Elsys ERS CO2",
            "deviceName": f"capteur-{eui[-4:]}",
            "devEui": eui,
            "tags": {"latitude": "47.2184", "longitude": "-1.5536"},
        },
        "fCnt": seq,
        "fPort": 1,
        "object": values or {"temperature": 20 + seq % 10, "co2": 400 + seq},
        "rxInfo": [{"gatewayId": "0016c001f153a14c", "rssi": -80, "snr": 7.5}],
    }
    return topic, event


def connector_for(prefix: str, decoder: str = "chirpstack-v4", **extra: Any) -> ConnectorConfig:
    topics = {
        "chirpstack-v4": f"{prefix}/application/+/device/+/event/+",
        "ttn-v3": f"{prefix}/v3/+/devices/+/up",
        "senml": f"{prefix}/senml/#",
        "json": f"{prefix}/json/+",
    }
    data: dict[str, Any] = {
        "name": f"test-{decoder}",
        "decoder": decoder,
        "topics": [topics[decoder]],
        "broker": {"client_id": f"w-{prefix}"},
        "dataset": {"slug": "capteurs-test", "title": "Capteurs de test", "description": "Jeu de test"},
        "quantities": {"temperature": {"name": "Température", "unit": "Cel"}, "co2": {"unit": "[ppm]"}},
        "batch_ms": 50,
    }
    data.update(extra)
    return parse_connector(data)


class RunningWorker:
    """A worker running as a task of the test's event loop."""

    def __init__(self, settings: Settings, config: ConnectorConfig, client_id: str | None = None) -> None:
        self.worker = MqttWorker(settings, config, client_id=client_id)
        self.stop_event = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    async def start(self) -> RunningWorker:
        self.task = asyncio.create_task(self.worker.run(self.stop_event))
        await until(lambda: self.worker.source.subscribed.is_set(), what="worker subscribed")
        return self

    async def stop(self) -> None:
        self.stop_event.set()
        if self.task is not None:
            await asyncio.wait_for(self.task, 30)


async def until(
    condition: Callable[[], bool | Awaitable[bool]], *, seconds: float = 20, what: str = "condition"
) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        result = condition()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def count(db: asyncpg.Connection, sql: str, *args: Any) -> int:
    return int(await db.fetchval(sql, *args))
