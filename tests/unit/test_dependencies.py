"""The supply chain: the locks match pyproject.toml and carry hashes, the image installs from the lock, the
floors stay above published advisories, and the private paho API we rely on is still there."""

from __future__ import annotations

import inspect
import re
import tomllib
from importlib.metadata import version
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
REFRESH = "the lock no longer matches pyproject.toml: run scripts/lock"


def pins(lock: str) -> dict[str, tuple[Version, int]]:
    """name -> (version, number of hashes) of a pip-tools/uv lock with hashes."""
    text = (ROOT / lock).read_text(encoding="utf-8")
    found: dict[str, tuple[Version, int]] = {}
    for block in re.split(r"\n(?=[A-Za-z0-9])", text):
        match = re.match(r"([A-Za-z0-9_.\-]+)(?:\[[^\]]*\])?==([^\s;\\]+)", block)
        if match:
            found[canonicalize_name(match.group(1))] = (Version(match.group(2)), block.count("--hash=sha256:"))
    return found


def _check(lock: str, requirements: list[str]) -> None:
    pinned = pins(lock)
    assert pinned, lock
    for name, (_, hashes) in pinned.items():
        assert hashes >= 1, f"{lock}: {name} has no hash"
    for line in requirements:
        requirement = Requirement(line)
        if requirement.marker is not None and not requirement.marker.evaluate({"python_version": "3.11"}):
            continue
        name = canonicalize_name(requirement.name)
        assert name in pinned, f"{lock}: {name} missing; {REFRESH}"
        assert pinned[name][0] in requirement.specifier, (
            f"{lock}: {name}=={pinned[name][0]} not {requirement}; {REFRESH}"
        )


def test_the_platform_lock_matches_pyproject() -> None:
    _check("requirements.lock", PYPROJECT["dependencies"])


def test_the_test_lock_matches_pyproject() -> None:
    _check("requirements-test.lock", PYPROJECT["dependencies"] + PYPROJECT["optional-dependencies"]["test"])
    platform = pins("requirements.lock")
    tests = pins("requirements-test.lock")
    differ = {name for name in platform if name in tests and platform[name][0] != tests[name][0]}
    assert not differ, f"the two locks pin different versions of {sorted(differ)}; {REFRESH}"


@pytest.mark.parametrize(
    ("name", "floor"),
    [
        ("pyjwt", "2.10.1"),  # issuer matched as a substring before (CVE-2024-53861)
        ("python-multipart", "0.0.18"),  # DoS on malformed multipart boundaries (CVE-2024-53981)
        ("jinja2", "3.1.6"),  # sandbox breakout (CVE-2025-27516)
        ("starlette", "0.49.1"),  # Range header DoS (CVE-2025-62727)
        ("h11", "0.16.0"),  # request smuggling (CVE-2025-43859)
        ("cryptography", "44.0.1"),  # OpenSSL in the wheels (CVE-2024-12797)
    ],
)
def test_minimums_and_pins_stay_above_published_advisories(name: str, floor: str) -> None:
    requirement = next(r for r in map(Requirement, PYPROJECT["dependencies"]) if canonicalize_name(r.name) == name)
    below = _just_below(floor)
    assert not requirement.specifier.contains(Version(below)), f"{requirement} admits {below}"
    assert pins("requirements.lock")[name][0] >= Version(floor)


def _just_below(floor: str) -> str:
    parts = [int(p) for p in floor.split(".")]
    for index in range(len(parts) - 1, -1, -1):
        if parts[index] > 0:
            parts[index] -= 1
            return ".".join(map(str, parts)) + ".999"
    raise ValueError(floor)


def test_installs_use_the_lock() -> None:
    docker = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert "--require-hashes -r requirements.lock" in docker
    assert "pip install --no-deps ." in docker
    assert "sbom.py" in docker
    system = (ROOT / "scripts" / "lib" / "system.sh").read_text(encoding="utf-8")
    assert '--require-hashes -r "$lock"' in system
    assert "requirements-test.lock" in system


def test_paho_still_has_the_private_queue_the_ingest_worker_batches_pubacks_through() -> None:
    """ingest/mqtt/client.py `_queue_pubacks` calls Client._packet_queue(command, packet, mid, qos): if a paho
    release renames or changes it, the worker falls back to one ack() per message (ten times the CPU): this says
    so before a release ships, and pyproject.toml bounds paho-mqtt below 3."""
    queue = getattr(mqtt.Client, "_packet_queue", None)
    assert queue is not None, f"paho-mqtt {version('paho-mqtt')} has no Client._packet_queue any more"
    parameters = list(inspect.signature(queue).parameters)
    assert parameters[:5] == ["self", "command", "packet", "mid", "qos"], parameters
    assert mqtt.PUBACK == 0x40
    assert Version(version("paho-mqtt")) < Version("3")


def test_bounded_zero_x_libraries_are_within_their_bounds() -> None:
    for name in ("cql2", "paho-mqtt"):
        requirement = next(r for r in map(Requirement, PYPROJECT["dependencies"]) if r.name == name)
        assert any(spec.operator == "<" for spec in requirement.specifier), f"{name} needs an upper bound"
        assert Version(version(name)) in requirement.specifier
