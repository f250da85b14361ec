"""Client traffic for the drills: MQTT at a steady pace, HTTP readers and writers that note every answer."""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from territoire_data.mqtt_url import parse_mqtt_url


def uplink(prefix: str, seq: int, start: datetime, devices: int = 20) -> tuple[str, bytes]:
    """A ChirpStack v4 uplink with one reading: device `seq % devices`, 10 ms apart, all distinct."""
    eui = f"70b3d5{seq % devices:010x}"
    event = {
        "deduplicationId": str(uuid.uuid4()),
        "time": (start + timedelta(milliseconds=10 * seq)).isoformat(),
        "deviceInfo": {
            "applicationName": "drill",
            "deviceProfileName": "Elsys ERS",
            "deviceName": f"capteur-{eui[-4:]}",
            "devEui": eui,
        },
        "fCnt": seq,
        "fPort": 1,
        "object": {"temperature": seq % 40},
    }
    return f"{prefix}/application/app-1/device/{eui}/event/up", orjson.dumps(event)


@dataclass
class SteadyPublisher:
    """Publishes `count` QoS 1 messages at `rate` per second from its own thread, waiting for every PUBACK."""

    url: str
    prefix: str
    count: int
    rate: float
    start: datetime = field(default_factory=lambda: datetime.now(UTC) - timedelta(hours=2))
    sent: int = 0
    errors: list[str] = field(default_factory=list)
    thread: threading.Thread | None = None

    def run(self) -> None:
        address = parse_mqtt_url(self.url)
        client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"drill-pub-{uuid.uuid4().hex[:8]}")
        client.max_queued_messages_set(0)
        client.max_inflight_messages_set(1000)
        client.connect(address.host, address.port)
        client.loop_start()
        began = time.monotonic()
        infos = []
        try:
            for seq in range(self.count):
                delay = began + seq / self.rate - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                topic, payload = uplink(self.prefix, seq, self.start)
                info = client.publish(topic, payload, qos=1)
                if info.rc != mqtt.MQTT_ERR_SUCCESS:
                    self.errors.append(f"publish {seq}: rc {info.rc}")
                infos.append(info)
                self.sent = seq + 1
            for info in infos:
                info.wait_for_publish(60)
                if not info.is_published():
                    self.errors.append(f"no PUBACK for message {info.mid}")
        finally:
            client.disconnect()
            client.loop_stop()

    def begin(self) -> SteadyPublisher:
        self.thread = threading.Thread(target=self.run, name="drill-publisher", daemon=True)
        self.thread.start()
        return self

    def join(self, seconds: float) -> None:
        assert self.thread is not None
        self.thread.join(seconds)
        assert not self.thread.is_alive(), "the publisher did not finish"


@dataclass
class Answer:
    began: float
    ended: float
    status: int  # 0: no answer (connection error, timeout)
    detail: str = ""


@dataclass
class HttpProbe:
    """Sends requests in a loop from its own thread until stopped, noting each answer and its time."""

    base_url: str
    requests: list[tuple[str, str, dict[str, Any] | None]]  # (method, path, JSON body)
    headers: dict[str, str] = field(default_factory=dict)
    pause: float = 0.05
    answers: list[Answer] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def run(self) -> None:
        with httpx.Client(base_url=self.base_url, timeout=60, headers=self.headers) as http:
            turn = 0
            while not self.stop.is_set():
                method, path, body = self.requests[turn % len(self.requests)]
                turn += 1
                began = time.monotonic()
                try:
                    response = http.request(method, path, json=body() if callable(body) else body)
                    status, detail = response.status_code, response.text[:300] if response.status_code >= 300 else ""
                except httpx.HTTPError as exc:
                    status, detail = 0, f"{type(exc).__name__}: {exc}"
                self.answers.append(Answer(began, time.monotonic(), status, detail))
                time.sleep(self.pause)

    def begin(self) -> HttpProbe:
        self.thread = threading.Thread(target=self.run, name="drill-http", daemon=True)
        self.thread.start()
        return self

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(90)

    def errors(self) -> list[Answer]:
        return [answer for answer in self.answers if not 200 <= answer.status < 300]

    def longest_gap(self, since: float = 0.0) -> float:
        """The longest time without a successful answer (from one success to the next), after `since`."""
        ends = [a.ended for a in self.answers if 200 <= a.status < 300 and a.ended >= since]
        return max((b - a for a, b in itertools.pairwise(ends)), default=0.0)

    def slowest(self) -> float:
        return max((a.ended - a.began for a in self.answers), default=0.0)
