"""TERRITOIRE_LOG_JSON holds in every process, the ingest storing child included: one JSON object a line."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncpg
import pytest
import yaml

from territoire_data.settings import Settings
from tests.integration.mqtt_helpers import connector_for

pytestmark = [pytest.mark.db, pytest.mark.mqtt]


def _env(settings: Settings) -> dict[str, str]:
    return {
        **os.environ,
        "TERRITOIRE_DATABASE_URL": settings.database_url,
        "TERRITOIRE_MQTT_URL": settings.mqtt_url,
        "TERRITOIRE_LOG_JSON": "true",
        "TERRITOIRE_LOG_JSNO": "oops",
    }


def _records(output: str) -> list[dict[str, object]]:
    lines = [line for line in output.splitlines() if line.strip()]
    assert lines
    bad = [line for line in lines if not line.startswith("{")]
    assert not bad, f"lines outside the JSON format: {bad[:5]}"
    return [json.loads(line) for line in lines]


@pytest.mark.parametrize(
    ("args", "expected"),
    [(["simulate", "--count", "5", "--rate", "50"], "5 messages published"), (["migrate"], None)],
    ids=["simulate", "migrate"],
)
def test_commands_log_json_lines_and_report_an_unknown_variable(
    settings: Settings, args: list[str], expected: str | None
) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "territoire_data.cli", *args],
        env=_env(settings),
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tempfile.gettempdir(),
    )
    assert done.returncode == 0, done.stderr
    records = _records(done.stderr)
    assert any("TERRITOIRE_LOG_JSNO is not a setting" in str(r["message"]) for r in records), records
    assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
    if expected:
        assert any(r["message"] == expected for r in records)


def test_the_ingest_worker_and_its_storing_child_log_json(
    settings: Settings, db: asyncpg.Connection, topic_prefix: str, tmp_path: Path
) -> None:
    connector = tmp_path / "connector.yaml"
    connector.write_text(yaml.safe_dump(connector_for(topic_prefix).model_dump(mode="json", by_alias=True)))
    log = tmp_path / "worker.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "territoire_data.cli", "ingest", "mqtt", str(connector)],
            env=_env(settings),
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=tempfile.gettempdir(),
        )
    try:
        deadline = time.monotonic() + 30
        while "subscribed" not in log.read_text() and time.monotonic() < deadline:
            time.sleep(0.1)
        process.send_signal(signal.SIGTERM)
        assert process.wait(20) == 0
    finally:
        if process.poll() is None:
            process.kill()
    records = _records(log.read_text())
    loggers = {r["logger"] for r in records}
    assert "territoire_data.ingest.mqtt.process" in loggers, loggers  # the child's "storing process done"
    assert "territoire_data.ingest.mqtt.worker" in loggers
