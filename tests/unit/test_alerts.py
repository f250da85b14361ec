"""deploy/prometheus/alerts.yml: valid for promtool, its unit tests pass, and it only names metrics we export."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus"
# Metrics of other exporters, or of parts that export them only where they exist.
OUTSIDE = {"territoire_backup_last_success_timestamp_seconds"}


def promtool() -> str:
    found = shutil.which("promtool")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("promtool is missing in CI: .ci/run installs the Debian package prometheus")
        pytest.skip("promtool not installed (Debian package prometheus)")
    return found


def test_promtool_checks_the_rules() -> None:
    result = subprocess.run([promtool(), "check", "rules", "alerts.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_unit_tests_of_the_alerts_pass() -> None:
    result = subprocess.run([promtool(), "test", "rules", "alerts.test.yml"], cwd=RULES, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_metric_an_alert_names_is_exported_by_the_platform() -> None:
    source = "\n".join(p.read_text(encoding="utf-8") for p in (ROOT / "src").rglob("*.py"))
    names = set(re.findall(r"\b(territoire_[a-z0-9_]+)", (RULES / "alerts.yml").read_text(encoding="utf-8")))
    assert names
    missing = []
    for name in sorted(names - OUTSIDE):
        base = re.sub(r"_(total|bucket|count|sum)$", "", name)
        if f'"{base}"' not in source and f'"{name}"' not in source:
            missing.append(name)
    assert not missing, f"alerts on metrics nothing exports: {missing}"
