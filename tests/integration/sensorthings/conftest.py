"""Fixtures for the SensorThings tests: an in-process client, writes with the test admin key, sample data."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.sensorthings.routes import close_pool
from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_AUTH, TEST_ADMIN_KEY

ADMIN_TOKEN = TEST_ADMIN_KEY
AUTH = TEST_ADMIN_AUTH
BASE = "/sta/v1.1"


@pytest.fixture
def sta_settings(settings: Settings) -> Settings:
    return settings


@pytest.fixture
async def sta(sta_settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client on the app (writes allowed with AUTH), over a clean database."""
    async with app_client(sta_settings, engine) as http:
        yield http


@asynccontextmanager
async def app_client(settings: Settings, engine: AsyncEngine) -> AsyncIterator[httpx.AsyncClient]:
    """A client on a fresh app; closes the app's SensorThings pool afterwards (no lifespan runs in process)."""
    app = create_app(settings, engine=engine)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            yield http
    finally:
        await close_pool(app)


def thing_body(
    name: str = "Station Bellecour",
    lon: float = 4.832,
    lat: float = 45.757,
    n_ds: int = 1,
    observation_type: str = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
) -> dict[str, Any]:
    """A Thing with its Location and Datastreams (Sensor and ObservedProperty nested): one deep insert; results
    of mixed kinds need `observation_type=OBSERVATION` (any JSON), as the standard says."""
    return {
        "name": name,
        "description": "Air quality station",
        "properties": {"owner": "Métropole de Lyon", "floors": 3},
        "Locations": [
            {
                "name": f"{name} site",
                "description": "where it stands",
                "encodingType": "application/geo+json",
                "location": {"type": "Point", "coordinates": [lon, lat]},
            }
        ],
        "Datastreams": [
            {
                "name": f"{name} temperature {i}",
                "description": "air temperature",
                "observationType": observation_type,
                "unitOfMeasurement": {"name": "degree Celsius", "symbol": "°C", "definition": "ucum:Cel"},
                "Sensor": {
                    "name": f"DHT22 {name} {i}",
                    "description": "thermometer",
                    "encodingType": "application/pdf",
                    "metadata": "https://example.org/dht22.pdf",
                },
                "ObservedProperty": {
                    "name": "Temperature",
                    "definition": "http://dbpedia.org/page/Temperature",
                    "description": "air temperature",
                },
            }
            for i in range(n_ds)
        ],
    }


CATEGORY = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_CategoryObservation"
COMPLEX = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_ComplexObservation"
MEASUREMENT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
OBSERVATION = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Observation"


def multi_datastream_body(name: str = "Wind", thing: Any = None, properties: tuple[str, ...] = ("speed", "direction")):
    """A MultiDatastream (deep insert of its Sensor and ObservedProperties) with one member per property;
    `thing` is a Thing body or a link ({"@iot.id": n}), a new one by default."""
    return {
        "name": name,
        "description": f"{name} station",
        "observationType": COMPLEX,
        "unitOfMeasurements": [{"name": p, "symbol": p[:1], "definition": f"ucum:{p}"} for p in properties],
        # a direction comes as degrees or as a word ("NNE"): any JSON value, an OM_Observation
        "multiObservationDataTypes": [OBSERVATION if p == "direction" else MEASUREMENT for p in properties],
        "properties": {"height": 10},
        "Thing": thing
        if thing is not None
        else {k: v for k, v in thing_body(f"{name} mast").items() if k != "Datastreams"},
        "Sensor": {
            "name": f"{name} sensor",
            "description": "anemometer",
            "encodingType": "application/pdf",
            "metadata": "https://example.org/anemometer.pdf",
        },
        "ObservedProperties": [
            {"name": f"{name} {p}", "definition": f"https://example.org/{p}", "description": p} for p in properties
        ],
    }


async def create(http: httpx.AsyncClient, path: str, body: Any) -> dict[str, Any]:
    response = await http.post(f"{BASE}/{path}", json=body, headers=AUTH)
    assert response.status_code == 201, response.text
    result: dict[str, Any] = response.json()
    assert response.headers["location"] == result["@iot.selfLink"]
    return result


async def get(http: httpx.AsyncClient, path: str, **params: Any) -> Any:
    response = await http.get(f"{BASE}/{path}", params=params)
    assert response.status_code == 200, response.text
    return response.json()


# --- MQTT ------------------------------------------------------------------------------------------------


class Subscriber:
    """A plain MQTT v5 client that records what it receives (the outside client of the MQTT tests)."""

    def __init__(self, mqtt_url: str, topics: list[str]) -> None:
        import queue

        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        from territoire_data.mqtt_url import parse_mqtt_url

        self.messages: queue.Queue[tuple[str, dict[str, Any]]] = queue.Queue()
        address = parse_mqtt_url(mqtt_url)
        self.client = paho.Client(CallbackAPIVersion.VERSION2, protocol=paho.MQTTv5)
        subscribed = __import__("threading").Event()
        self.client.on_connect = lambda c, *_: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, __import__("json").loads(m.payload)))
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        assert subscribed.wait(10), "subscription not acknowledged"

    def publish(self, topic: str, payload: Any, authorization: str | None = None) -> None:
        import json

        from paho.mqtt.packettypes import PacketTypes
        from paho.mqtt.properties import Properties

        props = Properties(PacketTypes.PUBLISH)
        if authorization:
            props.UserProperty = [("Authorization", authorization)]
        self.client.publish(topic, json.dumps(payload), qos=1, properties=props).wait_for_publish(10)

    def next(self, timeout: float = 10) -> tuple[str, dict[str, Any]]:
        return self.messages.get(timeout=timeout)

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


@pytest.fixture
async def bridge(sta_settings: Settings, db: asyncpg.Connection, topic_prefix: str) -> AsyncIterator[Any]:
    """The SensorThings MQTT bridge running in this event loop, on the test broker, under a private prefix."""
    import asyncio

    from territoire_data.sensorthings.mqtt import StaMqttBridge

    bridge = StaMqttBridge(sta_settings, topic_prefix=f"{topic_prefix}/")
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(bridge.run(stop, ready))
    await asyncio.wait_for(ready.wait(), 30)
    await asyncio.wait_for(bridge.is_publisher.wait(), 30)
    yield bridge
    stop.set()
    await asyncio.wait_for(task, 30)
