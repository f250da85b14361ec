"""`territoire-data datasets list|show|create|update|delete` against the real test database."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import asyncpg
import pytest

from territoire_data.settings import Settings

pytestmark = pytest.mark.db


def run(settings: Settings, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "territoire_data.cli", "datasets", *args],
        env={
            **os.environ,
            "TERRITOIRE_DATABASE_URL": settings.database_url,
            "TERRITOIRE_BASE_URL": "https://data.ville.fr",
        },
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        timeout=60,
    )


def test_cli_manages_datasets_end_to_end(settings: Settings, db: asyncpg.Connection) -> None:
    created = run(
        settings,
        "create",
        "bornes-irve",
        "--title",
        "Bornes de recharge",
        "--keyword",
        "irve",
        "--keyword",
        "mobilité",
        "--theme",
        "TRAN",
        "--licence",
        "etalab-2.0",
        "--frequency",
        "WEEKLY",
    )
    assert created.returncode == 0, created.stderr
    body = json.loads(created.stdout)
    assert body["keywords"] == ["irve", "mobilité"]
    assert body["links"][0]["href"] == "https://data.ville.fr/api/v1/datasets/bornes-irve"
    assert sorted(w["field"] for w in body["quality_warnings"]) == ["contact", "description"]

    updated = run(settings, "update", "bornes-irve", "--contact-email", "sig@ville.fr", "--clear", "licence")
    assert updated.returncode == 0, updated.stderr
    body = json.loads(updated.stdout)
    assert body["licence"] is None
    assert body["contact"]["email"] == "sig@ville.fr"

    listed = run(settings, "list")
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.startswith("bornes-irve\tdraft\tpublic\tBornes de recharge  (3 warnings)")

    shown = run(settings, "show", "bornes-irve")
    assert json.loads(shown.stdout)["update_frequency"] == "WEEKLY"

    deleted = run(settings, "delete", "bornes-irve", "--yes")
    assert deleted.returncode == 0, deleted.stderr
    missing = run(settings, "show", "bornes-irve")
    assert missing.returncode == 2
    assert missing.stderr.strip() == "error: no dataset 'bornes-irve'"


def test_cli_rejects_bad_metadata_with_one_line(settings: Settings, db: asyncpg.Connection) -> None:
    bad = run(settings, "create", "x", "--title", "X", "--licence", "wtfpl")
    assert bad.returncode == 2
    assert bad.stderr.startswith("error: licence:")
    assert "Traceback" not in bad.stderr
    assert run(settings, "update", "x").returncode == 2
