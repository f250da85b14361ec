"""Demo traffic for a territory: a few dozen sensors in Nantes publishing as ChirpStack v4, TTN v3 and SenML.

Air quality and bike counters speak ChirpStack, parking bays The Things Stack, noise meters SenML, with
plausible values (daily cycles, rush hours, parking turnover). `territoire-data simulate` runs it; the connectors
in connectors/ (chirpstack-v4, ttn-v3, senml) ingest it unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import math
import random
import signal
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from territoire_data.mqtt_url import configure_client, parse_mqtt_url

logger = logging.getLogger(__name__)

AIR_APP = "5b3c6f0e-6c1a-4c55-9d55-3a0f7a1e0a01"
BIKE_APP = "5b3c6f0e-6c1a-4c55-9d55-3a0f7a1e0a02"

# Real places in Nantes (WGS84). The Rue Gambetta counter is an Eco-Compteur site of the demo's counting data.
AIR_SITES = [
    ("Place Royale", 47.2136, -1.5593),
    ("Cours des 50 Otages", 47.2170, -1.5540),
    ("Île de Nantes – Machines", 47.2065, -1.5640),
    ("Bouffay", 47.2149, -1.5528),
    ("Gare Nord", 47.2177, -1.5420),
    ("Chantenay", 47.2010, -1.5960),
    ("Doulon", 47.2267, -1.5125),
    ("Campus Tertre", 47.2470, -1.5550),
]
BIKE_SITES = [
    ("Rue Gambetta", 47.213215, -1.551592),
    ("Pont Anne de Bretagne", 47.2066, -1.5652),
    ("Chaussée de la Madeleine", 47.2090, -1.5505),
    ("Quai de la Fosse", 47.2093, -1.5700),
    ("Boulevard du Général de Gaulle", 47.1985, -1.5430),
    ("Pont de Pirmil", 47.1930, -1.5390),
]
NOISE_SITES = [
    ("Place du Bouffay", 47.2147, -1.5531),
    ("Place Graslin", 47.2129, -1.5626),
    ("Hangar à Bananes", 47.2005, -1.5730),
    ("Place du Commerce", 47.2128, -1.5583),
    ("Talensac", 47.2205, -1.5590),
    ("Quai de Versailles", 47.2250, -1.5535),
]
PARKING_STREETS = [("Rue Crébillon", 47.2131, -1.5605), ("Rue de Strasbourg", 47.2168, -1.5520)]


@dataclass
class SimDevice:
    kind: str  # air, bike, parking, noise
    key: str
    name: str
    latitude: float
    longitude: float
    state: dict[str, Any] = field(default_factory=dict)
    last: datetime | None = None
    seq: int = 0

    def next_time(self, now: datetime) -> datetime:
        """Strictly increasing per device, so every message is a distinct observation."""
        moment = now.replace(microsecond=now.microsecond // 1000 * 1000)
        if self.last is not None and moment <= self.last:
            moment = self.last + timedelta(milliseconds=1)
        self.last = moment
        self.seq += 1
        return moment


def demo_devices(seed: int = 44) -> list[SimDevice]:
    """The demo territory's 40 devices, at stable identifiers and positions."""
    rng = random.Random(seed)  # noqa: S311 - demo values, reproducible on purpose
    devices: list[SimDevice] = []
    for i, (place, lat, lon) in enumerate(AIR_SITES):
        devices.append(SimDevice("air", f"a84041000018{i:04x}", f"Qualité de l'air – {place}", lat, lon))
    for i, (place, lat, lon) in enumerate(BIKE_SITES):
        devices.append(SimDevice("bike", f"70b3d5e75e00{i:04x}", f"Compteur vélos – {place}", lat, lon))
    for i, (place, lat, lon) in enumerate(NOISE_SITES):
        devices.append(SimDevice("noise", f"sonometre-{i + 1:02d}", f"Sonomètre – {place}", lat, lon))
    for street, lat, lon in PARKING_STREETS:
        for bay in range(10):
            slug = "crebillon" if "Crébillon" in street else "strasbourg"
            devices.append(
                SimDevice(
                    "parking",
                    f"place-{slug}-{bay + 1:02d}",
                    f"Place {bay + 1} – {street}",
                    lat + rng.uniform(-0.0006, 0.0006),
                    lon + rng.uniform(-0.0008, 0.0008),
                    state={"occupied": rng.random() < 0.6, "battery": rng.uniform(70, 100)},
                )
            )
    return devices


def _hour(now: datetime) -> float:
    local = now + timedelta(hours=1)  # Europe/Paris in winter; close enough for daily cycles
    return local.hour + local.minute / 60


def _rush(hour: float) -> float:
    """0..1, peaking at 8:15 and 17:45."""
    return max(math.exp(-((hour - 8.25) ** 2) / 1.5), math.exp(-((hour - 17.75) ** 2) / 2.0))


def _air(rng: random.Random, now: datetime) -> dict[str, float]:
    hour = _hour(now)
    rush = _rush(hour)
    pm10 = max(3.0, rng.gauss(16 + 14 * rush, 3))
    return {
        "pm10": round(pm10, 1),
        "pm2_5": round(max(2.0, pm10 * rng.uniform(0.5, 0.7)), 1),
        "no2": round(max(4.0, rng.gauss(22 + 30 * rush, 5)), 1),
        "temperature": round(9 + 4 * math.sin((hour - 9) / 24 * 2 * math.pi) + rng.gauss(0, 0.4), 1),
        "humidity": round(min(99.0, max(40.0, 80 - 12 * math.sin((hour - 9) / 24 * 2 * math.pi) + rng.gauss(0, 2))), 0),
    }


def _bikes(rng: random.Random, now: datetime) -> dict[str, float]:
    rate = 2 + 40 * _rush(_hour(now))
    return {"count": float(max(0, round(rng.gauss(rate, math.sqrt(rate)))))}


def _noise(rng: random.Random, now: datetime) -> float:
    hour = _hour(now)
    night = 1.0 if hour < 6 or hour > 22 else 0.0
    return round(max(35.0, rng.gauss(62 + 6 * _rush(hour) - 12 * night, 3)), 1)


def message(device: SimDevice, now: datetime, rng: random.Random, prefix: str = "") -> tuple[str, bytes]:
    """One realistic message of `device` at `now`, as its network server or gateway would publish it."""
    base = f"{prefix.rstrip('/')}/" if prefix else ""
    moment = device.next_time(now)
    if device.kind in ("air", "bike"):
        app = AIR_APP if device.kind == "air" else BIKE_APP
        event = {
            "deduplicationId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "time": moment.isoformat(),
            "deviceInfo": {
                "tenantName": "Nantes Métropole",
                "applicationId": app,
                "applicationName": "qualite-air" if device.kind == "air" else "comptage-velos",
                "deviceProfileName": "Elsys ERS CO2 / PM" if device.kind == "air" else "Eco-Compteur ZELT LoRaWAN",
                "deviceName": device.name,
                "devEui": device.key,
                "tags": {"latitude": str(device.latitude), "longitude": str(device.longitude)},
            },
            "devAddr": device.key[-8:],
            "dr": 5,
            "fPort": 1,
            "fCnt": device.seq,
            "data": "AQDiAikEACcFBgYDCA==",
            "object": _air(rng, now) if device.kind == "air" else _bikes(rng, now),
            "rxInfo": [
                {
                    "gatewayId": "0016c001f153a14c",
                    "rssi": rng.randint(-115, -70),
                    "snr": round(rng.uniform(-5, 10), 1),
                    "metadata": {"region_name": "eu868"},
                }
            ],
            "txInfo": {"frequency": 868100000, "modulation": {"lora": {"bandwidth": 125000, "spreadingFactor": 7}}},
        }
        topic = f"{base}application/{app}/device/{device.key}/event/up"
        return topic, orjson.dumps(event)
    if device.kind == "parking":
        state = device.state
        if rng.random() < 0.15:
            state["occupied"] = not state["occupied"]
        state["battery"] = max(5.0, state["battery"] - 0.01)
        uplink = {
            "end_device_ids": {
                "device_id": device.key,
                "application_ids": {"application_id": "stationnement-nantes"},
                "dev_eui": f"0004A30B{zlib.crc32(device.key.encode()):08X}",
            },
            "received_at": moment.isoformat().replace("+00:00", "Z"),
            "uplink_message": {
                "f_port": 2,
                "f_cnt": device.seq,
                "frm_payload": "AQ==" if state["occupied"] else "AA==",
                "decoded_payload": {"occupied": state["occupied"], "battery": round(state["battery"], 1)},
                "rx_metadata": [
                    {"gateway_ids": {"gateway_id": "nantes-gw-1"}, "rssi": rng.randint(-110, -60), "snr": 7}
                ],
                "settings": {"frequency": "868300000"},
                "locations": {
                    "user": {"latitude": device.latitude, "longitude": device.longitude, "source": "SOURCE_REGISTRY"}
                },
                "version_ids": {"brand_id": "nwave", "model_id": "nps310"},
                "received_at": moment.isoformat().replace("+00:00", "Z"),
            },
        }
        return f"{base}v3/stationnement-nantes@ttn/devices/{device.key}/up", orjson.dumps(uplink)
    pack = [
        {
            "bn": f"urn:dev:nantes:{device.key}:",
            "bt": moment.timestamp(),
            "n": "laeq",
            "u": "dB",
            "v": _noise(rng, now),
        },
        {"n": "lat", "u": "lat", "v": device.latitude},
        {"n": "lon", "u": "lon", "v": device.longitude},
    ]
    return f"{base}senml/nantes/bruit/{device.key}", orjson.dumps(pack)


def traffic(seed: int = 44, prefix: str = "") -> Iterator[tuple[str, bytes]]:
    """An endless stream of demo messages, devices taken in turn in a shuffled order."""
    rng = random.Random(seed)  # noqa: S311 - demo values, reproducible on purpose
    devices = demo_devices(seed)
    while True:
        rng.shuffle(devices)
        for device in devices:
            yield message(device, datetime.now(UTC), rng, prefix)


def run_simulation(
    url: str,
    *,
    rate: float = 5.0,
    duration: float | None = None,
    count: int | None = None,
    seed: int = 44,
    prefix: str = "",
    qos: int = 1,
    ca_file: str | None = None,
    cert_file: str | None = None,
    key_file: str | None = None,
) -> int:
    """Publish demo traffic at `rate` messages/s until `duration` seconds or `count` messages; returns the count."""
    address = parse_mqtt_url(url)
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"territoire-simulate-{uuid.uuid4().hex[:8]}")
    configure_client(client, address, ca_file=ca_file, cert_file=cert_file, key_file=key_file)
    client.max_inflight_messages_set(1000)
    answered = threading.Event()
    refusal: list[str] = []

    def on_connect(client: mqtt.Client, userdata: Any, flags: Any, reason: Any, properties: Any) -> None:
        if reason.is_failure:
            refusal.append(str(reason))
        answered.set()

    client.on_connect = on_connect
    client.connect(address.host, address.port)
    client.loop_start()
    # Publishing before the broker accepted us would only queue messages that a refused connection never sends.
    if not answered.wait(10) or refusal:
        client.loop_stop()
        reason = refusal[0] if refusal else "no answer"
        raise ConnectionError(f"the broker at {address!r} refused the connection: {reason}")
    published = 0
    started = time.monotonic()
    pending: list[mqtt.MQTTMessageInfo] = []
    stopping = _StopOnSignal()
    try:
        with stopping:
            for topic, payload in traffic(seed, prefix):
                if count is not None and published >= count:
                    break
                elapsed = time.monotonic() - started
                if duration is not None and elapsed >= duration:
                    break
                ahead = published / rate - elapsed
                if ahead > 0:
                    time.sleep(ahead)
                pending.append(client.publish(topic, payload, qos=qos))
                published += 1
                if len(pending) >= 500:
                    _wait_published(pending, 30)
                if published % max(1, int(rate * 10)) == 0:
                    logger.info("%d messages published", published)
    except KeyboardInterrupt:
        pass
    finally:
        # Stopped or done: the messages handed to paho get their PUBACK before we disconnect (bounded), and the
        # count says what the broker acknowledged, never what was merely queued.
        unacknowledged = _wait_published(pending, DRAIN_SECONDS)
        client.disconnect()
        client.loop_stop()
    if unacknowledged:
        logger.warning("%d message(s) not acknowledged by the broker before the stop", unacknowledged)
    return published - unacknowledged


DRAIN_SECONDS = 5.0


def _wait_published(pending: list[mqtt.MQTTMessageInfo], seconds: float) -> int:
    """Wait (at most `seconds` in all) for the broker's PUBACKs; empties `pending`, returns how many never came."""
    deadline = time.monotonic() + seconds
    for info in pending:
        remaining = deadline - time.monotonic()
        if remaining > 0:
            with contextlib.suppress(RuntimeError, ValueError):  # not queued (disconnected): counted below
                info.wait_for_publish(remaining)
    missing = sum(1 for info in pending if not info.is_published())
    pending.clear()
    return missing


class _StopOnSignal:
    """SIGTERM ends the simulation as Ctrl-C does (KeyboardInterrupt), in the main thread only."""

    def __enter__(self) -> None:
        self.previous: Any = None
        if threading.current_thread() is threading.main_thread():
            self.previous = signal.signal(signal.SIGTERM, self._interrupt)

    def _interrupt(self, _signum: int, _frame: object) -> None:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # once: the drain that follows is not interrupted again
        raise KeyboardInterrupt

    def __exit__(self, *_exc: object) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
