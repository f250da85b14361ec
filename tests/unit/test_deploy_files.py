"""Dockerfile and compose.yaml stay consistent with the CLI and the settings they use."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from territoire_data.cli import app
from territoire_data.settings import ENV_PREFIX, Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS_VARIABLES = {ENV_PREFIX + name.upper() for name in Settings.model_fields}


def _compose() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "compose.yaml").read_text())
    return loaded


def _our_services() -> dict[str, dict[str, Any]]:
    return {
        name: service
        for name, service in _compose()["services"].items()
        # the platform's image (built from this repository), not the Patroni nodes' (deploy/patroni)
        if service.get("build") == "." or str(service.get("image", "")).startswith("territoire-data:")
    }


def _assert_cli_accepts(args: list[str]) -> None:
    result = CliRunner().invoke(app, [*args, "--help"])
    assert result.exit_code == 0, f"`territoire-data {' '.join(args)}` is not a command: {result.output}"
    for arg in args:
        if arg.startswith("connectors/"):
            assert (ROOT / arg).is_file(), f"{arg} is used by a deployment file but does not exist"


def test_compose_commands_are_cli_commands() -> None:
    services = _our_services()
    assert {"migrate", "api", "worker", "sta-mqtt"} <= set(services)
    assert {"migrate-ha", "api-ha", "worker-ha", "sta-mqtt-ha"} <= set(services)  # the profile `ha`
    for service in services.values():
        _assert_cli_accepts([str(a) for a in service["command"]])


def test_compose_environment_uses_only_known_settings() -> None:
    for name, service in _our_services().items():
        env = service.get("environment", {})
        assert "TERRITOIRE_DATABASE_URL" in env, name
        unknown = {key for key in env if key.startswith(ENV_PREFIX)} - SETTINGS_VARIABLES
        assert not unknown, f"{name} sets unknown settings {unknown}"


def test_compose_mounts_the_broker_settings_we_ship() -> None:
    broker = _compose()["services"]["broker"]
    mounted = {volume.split(":")[0] for volume in broker["volumes"]}
    assert "./deploy/mosquitto/territoire.conf" in mounted
    for path in mounted:
        if path.startswith("./"):
            assert (ROOT / path).is_file(), path
    assert "include_dir /mosquitto/config/conf.d" in (ROOT / "deploy/mosquitto/compose.conf").read_text()


def test_dockerfile_is_multi_stage_non_root_with_healthcheck_and_valid_commands() -> None:
    text = (ROOT / "Dockerfile").read_text()
    assert len(re.findall(r"^FROM ", text, re.M)) >= 2
    users = re.findall(r"^USER (\S+)", text, re.M)
    assert users and users[-1] not in ("root", "0")
    assert re.search(r"^HEALTHCHECK ", text, re.M)
    entrypoint = re.search(r"^ENTRYPOINT (\[.*\])", text, re.M)
    cmd = re.search(r"^CMD (\[.*\])", text, re.M)
    assert entrypoint and cmd
    assert yaml.safe_load(entrypoint.group(1)) == ["territoire-data"]
    _assert_cli_accepts([str(a) for a in yaml.safe_load(cmd.group(1))])
    for source in re.findall(r"^COPY (?!--from)(?:--\S+ )*(.+) \S+$", text, re.M):
        for path in shlex.split(source):
            assert (ROOT / path).exists(), f"Dockerfile copies {path}, which does not exist"
    for variable in re.findall(r"\b(TERRITOIRE_[A-Z_]+)=", text):
        assert variable in SETTINGS_VARIABLES, variable


def _compose_command() -> list[str] | None:
    if (
        shutil.which("docker")
        and subprocess.run(["docker", "compose", "version"], capture_output=True, check=False).returncode == 0
    ):
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def test_docker_compose_config_passes() -> None:
    command = _compose_command()
    if command is None:
        pytest.skip("neither `docker compose` nor `docker-compose` is installed (.ci/run installs docker-compose)")
    result = subprocess.run(
        [*command, "-f", str(ROOT / "compose.yaml"), "config", "-q"],
        env={**os.environ, "TERRITOIRE_DB_PASSWORD": "check-only"},
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
