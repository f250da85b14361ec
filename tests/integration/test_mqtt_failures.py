"""No loss and no duplicates through a broker restart, a database outage, a SIGKILLed worker; shared subscriptions."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest
import yaml

from territoire_data.settings import Settings
from tests.conftest import MosquittoProcess, TcpProxy, make_settings
from tests.integration.mqtt_helpers import (
    Publisher,
    RunningWorker,
    chirpstack_up,
    connector_for,
    count,
    until,
)

pytestmark = [pytest.mark.db, pytest.mark.mqtt, pytest.mark.slow]


def uplinks(prefix: str, start: int, stop: int, devices: int = 10) -> list[tuple[str, dict[str, object]]]:
    """`stop - start` uplinks spread over `devices` devices, two readings each, all distinct."""
    return [chirpstack_up(prefix, f"70b3d5{n % devices:010x}", n) for n in range(start, stop)]


async def assert_exactly(db: asyncpg.Connection, messages: int) -> None:
    """Every message's two readings are stored, once."""
    assert await count(db, "SELECT count(*) FROM observation") == 2 * messages
    assert await count(db, "SELECT count(DISTINCT (datastream_id, phenomenon_time)) FROM observation") == 2 * messages
    assert await count(db, "SELECT count(*) FROM ingest_rejection") == 0


def publish_in_background(url: str, items: list[tuple[str, dict[str, object]]]) -> threading.Thread:
    def run() -> None:
        publisher = Publisher(url)
        try:
            publisher.publish_all(items)  # type: ignore[arg-type]
        finally:
            publisher.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


async def test_broker_restart_mid_stream_loses_nothing_and_duplicates_nothing(
    db: asyncpg.Connection, settings: Settings, topic_prefix: str
) -> None:
    broker = MosquittoProcess()
    broker.start()
    local = settings.model_copy(update={"mqtt_url": broker.url})
    # Small batches make the worker slow enough to be caught mid-stream.
    worker = await RunningWorker(local, connector_for(topic_prefix, batch_size=20, batch_ms=20)).start()
    try:
        first = uplinks(topic_prefix, 0, 3000)
        publisher = Publisher(broker.url)
        publisher.publish_all(first)  # type: ignore[arg-type]
        publisher.close()
        await until(lambda: worker.worker.source.acknowledged >= 300, what="some stored")
        assert worker.worker.source.acknowledged < 3000, "the restart must come mid-stream"
        generation = worker.worker.source.generation
        broker.stop()  # saves its persistence: queued and in-flight messages of the worker's session
        broker.start()
        await until(lambda: worker.worker.source.generation > generation, seconds=30, what="worker reconnected")
        publisher = Publisher(broker.url)
        publisher.publish_all(uplinks(topic_prefix, 3000, 3500))  # type: ignore[arg-type]
        publisher.close()
        await until(lambda: _observations(db, 7000), seconds=60, what="all 3500 messages stored")
    finally:
        await worker.stop()
        broker.stop()
    await assert_exactly(db, 3500)


async def _observations(db: asyncpg.Connection, expected: int) -> bool:
    return await count(db, "SELECT count(*) FROM observation") >= expected


async def test_database_outage_mid_stream_loses_nothing_and_duplicates_nothing(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    target = urlsplit(settings.database_url)
    proxy = TcpProxy(target.hostname or "127.0.0.1", target.port or 5432)
    await proxy.start()
    through_proxy = settings.database_url.replace(f"{target.hostname}:{target.port}", f"127.0.0.1:{proxy.port}", 1)
    local = make_settings(through_proxy, mqtt_url=mqtt_url)
    worker = await RunningWorker(local, connector_for(topic_prefix, batch_size=20, batch_ms=20)).start()
    try:
        thread = publish_in_background(mqtt_url, uplinks(topic_prefix, 0, 3000))
        await until(lambda: worker.worker.source.acknowledged >= 300, what="some stored")
        assert worker.worker.source.acknowledged < 3000, "the outage must come mid-stream"
        await proxy.cut()
        # A batch committed just before the cut is rightly acknowledged just after it: let those land first.
        await asyncio.sleep(0.5)
        acknowledged = worker.worker.source.acknowledged
        await asyncio.sleep(1.5)
        assert worker.worker.source.acknowledged == acknowledged, "nothing acknowledged while the database is away"
        await proxy.heal()
        thread.join(30)
        await until(lambda: _observations(db, 6000), seconds=60, what="all 3000 messages stored")
        await until(lambda: worker.worker.source.acknowledged >= 3000, what="all acknowledged")
    finally:
        await worker.stop()
        await proxy.cut()
    await assert_exactly(db, 3000)


def _worker_process(settings: Settings, connector: Path, client_id: str, log: Path) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "TERRITOIRE_DATABASE_URL": settings.database_url,
        "TERRITOIRE_MQTT_URL": settings.mqtt_url,
        "TERRITOIRE_INGEST_BATCH_SIZE": "50",
        "TERRITOIRE_INGEST_BATCH_MS": "20",
    }
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "territoire_data.cli", "ingest", "mqtt", str(connector), "--client-id", client_id],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
        )


async def test_worker_killed_mid_batch_then_restarted_loses_nothing_and_duplicates_nothing(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    config = connector_for(topic_prefix).model_dump(mode="json", by_alias=True, exclude_none=True)
    config.pop("batch_ms")
    connector = tmp_path / "connector.yaml"
    connector.write_text(yaml.safe_dump(config))
    log = tmp_path / "worker.log"
    client_id = f"kill-{topic_prefix}"
    process = _worker_process(settings, connector, client_id, log)
    try:
        await until(lambda: "subscribed" in log.read_text(), what="worker subscribed")
        thread = publish_in_background(mqtt_url, uplinks(topic_prefix, 0, 4000))
        await until(lambda: _observations(db, 600), what="some stored")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        stored_at_kill = await count(db, "SELECT count(*) FROM observation")
        assert stored_at_kill < 8000, "the kill must come mid-stream"
        thread.join(30)
        process = _worker_process(settings, connector, client_id, log)
        await until(lambda: _observations(db, 8000), seconds=60, what="all 4000 messages stored after restart")
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0, log.read_text()[-2000:]
    finally:
        if process.poll() is None:
            process.kill()
    await assert_exactly(db, 4000)
    assert "stopped" in log.read_text()


async def test_two_workers_share_a_subscription_without_loss_or_duplicate(
    db: asyncpg.Connection, settings: Settings, mqtt_url: str, topic_prefix: str
) -> None:
    config = connector_for(topic_prefix, shared_group=f"g{topic_prefix[-6:]}")
    first = await RunningWorker(settings, config, client_id=f"a-{topic_prefix}").start()
    second = await RunningWorker(settings, config, client_id=f"b-{topic_prefix}").start()
    try:
        publisher = Publisher(mqtt_url)
        publisher.publish_all(uplinks(topic_prefix, 0, 4000))  # type: ignore[arg-type]
        publisher.close()
        await until(lambda: _observations(db, 8000), seconds=60, what="all stored")
        await until(
            lambda: first.worker.source.acknowledged + second.worker.source.acknowledged >= 4000, what="all acked"
        )
    finally:
        await first.stop()
        await second.stop()
    a, b = first.worker.source.received, second.worker.source.received
    assert a > 0, (a, b)
    assert b > 0, (a, b)
    assert a + b == 4000  # each message went to exactly one worker
    await assert_exactly(db, 4000)
    assert await count(db, "SELECT count(*) FROM thing") == 10
