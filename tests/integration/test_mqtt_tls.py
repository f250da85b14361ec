"""MQTT over TLS with credentials and client certificates, against private Mosquitto brokers configured for it.

Brokers: one with a password_file, anonymous clients refused and a TLS listener (server certificate from a CA made
in the test); one that requires a client certificate signed by that CA and takes its CN as the user name.
Every process that talks to the broker is covered: the ingest worker, /ready, `simulate`, the SensorThings bridge.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import queue
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.ingest.mqtt.config import ConnectorConfig
from territoire_data.mqtt_url import configure_client, parse_mqtt_url
from territoire_data.settings import Settings
from tests.conftest import ROOT, TEST_ADMIN_AUTH, BrokerTls, MosquittoProcess, make_settings
from tests.integration.mqtt_helpers import Publisher, RunningWorker, chirpstack_up, connector_for, count, until
from tests.tls_pki import Pki, make_pki

pytestmark = [
    pytest.mark.db,
    pytest.mark.mqtt,
    pytest.mark.skipif(not shutil.which("mosquitto"), reason="needs the mosquitto binary for private brokers"),
]

USER = "ingest"
PASSWORD = "Tls-Secr3t-Pw-4b1e9"
WRONG = "Wrong-Pw-77c0d2"


def launched(settings: Settings, connector: ConnectorConfig) -> RunningWorker:
    """A worker running without waiting for its subscription (one the broker refuses never subscribes)."""
    worker = RunningWorker(settings, connector)
    worker.task = asyncio.create_task(worker.worker.run(worker.stop_event))
    return worker


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_broker(pki: Pki) -> Iterator[MosquittoProcess]:
    """Users only (password_file, no anonymous), over TLS."""
    broker = MosquittoProcess(
        users={USER: PASSWORD}, tls=BrokerTls(pki.ca_pem, pki.server.cert_pem, pki.server.key_pem)
    )
    broker.start()
    yield broker
    broker.stop()


@pytest.fixture(scope="module")
def cert_broker(pki: Pki) -> Iterator[MosquittoProcess]:
    """Client certificates only: signed by our CA, the certificate's CN is the user."""
    tls = BrokerTls(
        pki.ca_pem, pki.server.cert_pem, pki.server.key_pem, require_certificate=True, use_identity_as_username=True
    )
    broker = MosquittoProcess(tls=tls)
    broker.start()
    yield broker
    broker.stop()


def url_with(broker: MosquittoProcess, password: str = PASSWORD) -> str:
    return f"mqtts://{USER}:{password}@127.0.0.1:{broker.port}"


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        assert PASSWORD not in text and WRONG not in text


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


async def test_worker_ingests_through_mqtts_with_credentials_and_the_ca(
    db: asyncpg.Connection,
    settings: Settings,
    tls_broker: MosquittoProcess,
    pki: Pki,
    topic_prefix: str,
    logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    tls_settings = make_settings(settings.database_url, mqtt_url=url_with(tls_broker), mqtt_ca_file=pki.ca_file)
    worker = await RunningWorker(tls_settings, connector_for(topic_prefix)).start()
    publisher = Publisher(url_with(tls_broker), ca_file=pki.ca_file)
    try:
        publisher.publish_all([chirpstack_up(topic_prefix, "70b3d50000000001", seq) for seq in range(20)])
        await until(lambda: worker.worker.source.acknowledged >= 20, what="20 acknowledged")
    finally:
        publisher.close()
        await worker.stop()
    assert await count(db, "SELECT count(*) FROM observation") == 40
    assert "connected to BrokerAddress(mqtts://ingest:***@127.0.0.1" in logs.text
    out, err = capfd.readouterr()
    assert_no_secret(logs.text, out, err)


async def test_wrong_password_is_a_clear_error_retried_with_backoff_and_stores_nothing(
    db: asyncpg.Connection,
    settings: Settings,
    tls_broker: MosquittoProcess,
    pki: Pki,
    topic_prefix: str,
    logs: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    bad = make_settings(settings.database_url, mqtt_url=url_with(tls_broker, WRONG), mqtt_ca_file=pki.ca_file)
    worker = launched(bad, connector_for(topic_prefix))
    publisher = Publisher(url_with(tls_broker), ca_file=pki.ca_file)

    def refusals() -> list[str]:
        return [r.getMessage() for r in logs.records if "refused the connection" in r.getMessage()]

    try:
        await until(lambda: bool(refusals()), what="the refusal logged")
        assert "Bad user name or password" in refusals()[0] or "Not authorized" in refusals()[0]
        publisher.publish_all([chirpstack_up(topic_prefix, "70b3d50000000002", seq) for seq in range(5)])
        await asyncio.sleep(5)
        # paho waits 1, 2, 4... s (capped at 30) between attempts: 2 or 3 more in 5 s, not a tight loop.
        assert 2 <= len(refusals()) <= 4, refusals()
        assert not worker.task.done()  # still running, retrying
        assert not worker.worker.source.subscribed.is_set()
    finally:
        publisher.close()
        await worker.stop()
    assert await count(db, "SELECT count(*) FROM observation") == 0
    out, err = capfd.readouterr()
    assert_no_secret(logs.text, out, err)


async def test_a_broker_certificate_from_an_untrusted_ca_is_refused(
    db: asyncpg.Connection,
    settings: Settings,
    tls_broker: MosquittoProcess,
    pki: Pki,
    topic_prefix: str,
    logs: pytest.LogCaptureFixture,
) -> None:
    rogue = make_settings(settings.database_url, mqtt_url=url_with(tls_broker), mqtt_ca_file=pki.rogue_ca_file)
    worker = launched(rogue, connector_for(topic_prefix))
    try:
        await until(lambda: "certificate verify failed" in logs.text, what="the TLS failure logged")
        assert not worker.worker.source.connected.is_set()
        assert not worker.task.done()
    finally:
        await worker.stop()
    assert await count(db, "SELECT count(*) FROM observation") == 0
    assert_no_secret(logs.text)


async def test_client_certificate_from_the_connector_yaml_authenticates_the_worker(
    db: asyncpg.Connection, settings: Settings, cert_broker: MosquittoProcess, pki: Pki, topic_prefix: str
) -> None:
    broker = {
        "url": cert_broker.url,
        "ca_file": pki.ca_file,
        "cert_file": pki.client_cert_file,
        "key_file": pki.client_key_file,
        "client_id": f"w-{topic_prefix}",
    }
    worker = await RunningWorker(settings, connector_for(topic_prefix, broker=broker)).start()
    publisher = Publisher(
        cert_broker.url, ca_file=pki.ca_file, cert_file=pki.client_cert_file, key_file=pki.client_key_file
    )
    try:
        publisher.publish_all([chirpstack_up(topic_prefix, "70b3d50000000003", seq) for seq in range(10)])
        await until(lambda: worker.worker.source.acknowledged >= 10, what="10 acknowledged")
    finally:
        publisher.close()
        await worker.stop()
    assert await count(db, "SELECT count(*) FROM observation") == 20

    # The same worker without a client certificate never gets in.
    without = {key: value for key, value in broker.items() if key not in ("cert_file", "key_file")}
    refused = launched(settings, connector_for(topic_prefix, broker=without))
    try:
        await asyncio.sleep(3)
        assert not refused.worker.source.subscribed.is_set()
    finally:
        await refused.stop()


async def test_ready_probes_the_broker_with_tls_and_credentials_and_never_shows_them(
    settings: Settings, engine: AsyncEngine, db: asyncpg.Connection, tls_broker: MosquittoProcess, pki: Pki
) -> None:
    async def ready(**extra: Any) -> httpx.Response:
        app = create_app(make_settings(settings.database_url, **extra), engine=engine)
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            response = await http.get("/ready")
            metrics = await http.get("/metrics")
            service_root = await http.get("/sta/v1.1")  # advertises the broker, without its credentials
        assert_no_secret(response.text, metrics.text, service_root.text)
        assert f"mqtts://127.0.0.1:{tls_broker.port}" in service_root.text
        return response

    good = await ready(mqtt_url=url_with(tls_broker), mqtt_ca_file=pki.ca_file)
    assert good.status_code == 200, good.text
    assert good.json()["checks"]["broker"] == {"status": "ok"}

    wrong = await ready(mqtt_url=url_with(tls_broker, WRONG), mqtt_ca_file=pki.ca_file)
    assert wrong.status_code == 503
    assert wrong.json()["checks"]["broker"]["reason"].startswith("broker refused")

    untrusted = await ready(mqtt_url=url_with(tls_broker), mqtt_ca_file=pki.rogue_ca_file)
    assert untrusted.status_code == 503
    assert "SSLCertVerificationError" in untrusted.json()["checks"]["broker"]["reason"]

    missing = await ready(mqtt_url=url_with(tls_broker), mqtt_ca_file="/nonexistent/ca.pem")
    assert "/nonexistent/ca.pem" in missing.json()["checks"]["broker"]["reason"]


class TlsSubscriber:
    """An outside MQTT client on a TLS broker, collecting what it receives."""

    def __init__(self, url: str, topic: str, **tls_files: str) -> None:
        self.messages: queue.Queue[tuple[str, bytes]] = queue.Queue()
        address = parse_mqtt_url(url)
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"sub-{uuid.uuid4().hex[:8]}")
        configure_client(self.client, address, **tls_files)
        subscribed = threading.Event()
        self.client.on_connect = lambda c, *_: c.subscribe(topic, qos=1)
        self.client.on_subscribe = lambda *_: subscribed.set()
        self.client.on_message = lambda _c, _u, m: self.messages.put((m.topic, bytes(m.payload)))
        self.client.connect(address.host, address.port)
        self.client.loop_start()
        assert subscribed.wait(10), "subscription not acknowledged"

    def received(self, n: int, timeout: float = 20) -> list[tuple[str, bytes]]:
        return [self.messages.get(timeout=timeout) for _ in range(n)]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def test_simulate_publishes_over_mqtts_and_says_clearly_when_refused(
    tls_broker: MosquittoProcess, pki: Pki, topic_prefix: str
) -> None:
    subscriber = TlsSubscriber(url_with(tls_broker), f"{topic_prefix}/#", ca_file=pki.ca_file)
    base = [sys.executable, "-m", "territoire_data.cli", "simulate", "--rate", "50", "--prefix", f"{topic_prefix}/"]
    env = {**os.environ, "TERRITOIRE_MQTT_CA_FILE": pki.ca_file}
    try:
        done = subprocess.run(
            [*base, "--count", "6"],
            env={**env, "TERRITOIRE_MQTT_URL": url_with(tls_broker)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, done.stderr
        assert "6 messages published" in done.stdout + done.stderr  # a log line
        assert len(subscriber.received(6)) == 6
        assert_no_secret(done.stdout, done.stderr)
    finally:
        subscriber.close()
    refused = subprocess.run(
        [*base, "--count", "1"],
        env={**env, "TERRITOIRE_MQTT_URL": url_with(tls_broker, WRONG)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1
    assert "refused the connection" in refused.stderr and "Traceback" not in refused.stderr
    assert_no_secret(refused.stdout, refused.stderr)


async def test_sensorthings_bridge_publishes_over_mqtts_with_credentials(
    settings: Settings,
    client: httpx.AsyncClient,
    tls_broker: MosquittoProcess,
    pki: Pki,
    topic_prefix: str,
    logs: pytest.LogCaptureFixture,
) -> None:
    from territoire_data.sensorthings.mqtt import StaMqttBridge
    from tests.integration.sensorthings.conftest import thing_body

    tls_settings = make_settings(settings.database_url, mqtt_url=url_with(tls_broker), mqtt_ca_file=pki.ca_file)
    bridge = StaMqttBridge(tls_settings, topic_prefix=f"{topic_prefix}/")
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(bridge.run(stop, ready))
    subscriber = TlsSubscriber(url_with(tls_broker), f"{topic_prefix}/v1.1/Observations", ca_file=pki.ca_file)
    try:
        await asyncio.wait_for(bridge.is_publisher.wait(), 30)
        thing = await client.post("/sta/v1.1/Things", json=thing_body(), headers=TEST_ADMIN_AUTH)
        assert thing.status_code == 201, thing.text
        streams = await client.get(f"/sta/v1.1/Things({thing.json()['@iot.id']})/Datastreams")
        stream = streams.json()["value"][0]["@iot.id"]
        created = await client.post(
            f"/sta/v1.1/Datastreams({stream})/Observations",
            json={"result": 12.5, "phenomenonTime": "2026-11-01T10:00:00Z"},
            headers=TEST_ADMIN_AUTH,
        )
        assert created.status_code == 201, created.text
        (_topic, payload), *_ = await asyncio.to_thread(subscriber.received, 1)
        assert json.loads(payload)["result"] == 12.5
    finally:
        subscriber.close()
        stop.set()
        await asyncio.wait_for(task, 30)
    assert_no_secret(logs.text)


async def test_json_connector_end_to_end_through_a_real_broker(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    """connectors/json-example.yaml as shipped (topics under a test prefix): publish, the worker stores, rows match."""
    from territoire_data.ingest.mqtt.config import BrokerSpec, load_connector

    shipped = load_connector(ROOT / "connectors" / "json-example.yaml")
    config = shipped.model_copy(
        update={"topics": [f"{topic_prefix}/{t}" for t in shipped.topics], "broker": BrokerSpec(client_id=topic_prefix)}
    )
    worker = await RunningWorker(settings, config).start()
    publisher = Publisher(mqtt_url)
    payload = {
        "id": "aq-12",
        "ts": 1764331200000,
        "position": {"lat": 47.2184, "lon": -1.5536},
        "measures": {"pm10": 18.2, "no2": 31.0, "temperature": 8.5},
    }
    try:
        publisher.publish_all([(f"{topic_prefix}/devices/json/aq-12", payload)])
        await until(lambda: worker.worker.source.acknowledged >= 1, what="the message acknowledged")
    finally:
        publisher.close()
        await worker.stop()
    rows = await db.fetch(
        "SELECT op.external_key AS quantity, o.result_number, o.phenomenon_time, d.unit_of_measurement, "
        "t.name AS thing, ds.slug FROM observation o JOIN datastream d ON d.id = o.datastream_id "
        "JOIN observed_property op ON op.id = d.observed_property_id JOIN thing t ON t.id = d.thing_id "
        "JOIN dataset ds ON ds.id = d.dataset_id ORDER BY 1"
    )
    assert [(r["quantity"], r["result_number"]) for r in rows] == [("no2", 31.0), ("pm10", 18.2), ("temperature", 8.5)]
    assert {r["phenomenon_time"].timestamp() for r in rows} == {1764331200.0}
    assert {json.loads(r["unit_of_measurement"])["symbol"] for r in rows} == {"ug/m3", "Cel"}
    assert {r["slug"] for r in rows} == {"capteurs-json"}
    location = await db.fetchrow("SELECT ST_X(geom) AS lon, ST_Y(geom) AS lat FROM location")
    assert (round(location["lon"], 4), round(location["lat"], 4)) == (-1.5536, 47.2184)
    assert await count(db, "SELECT count(*) FROM ingest_rejection") == 0
