"""Describe first, load later; and the publishing workflow through the CLI and the API.

A data officer describes a dataset (`datasets create SLUG --title …`), then loads its first file: the import creates
its table. Until published, the dataset is a draft that answers 404 to the public; publishing refuses while
data.gouv.fr's metadata is missing and says what to fill.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import asyncpg
import httpx
import pytest

from territoire_data.settings import Settings
from tests.catalog_helpers import AUTH, FULL_METADATA
from tests.conftest import FIXTURES, make_key

pytestmark = pytest.mark.db

SANISETTES = FIXTURES / "csv" / "paris_sanisettes.csv"
CSV = "nom;code;lon;lat\nMairie;M1;2.35;48.85\nGare;G1;2.37;48.84\n"


def cli(settings: Settings, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "territoire_data.cli", *args],
        env={**os.environ, "TERRITOIRE_DATABASE_URL": settings.database_url, **(env or {})},
        capture_output=True,
        text=True,
        check=False,
        cwd="/",
        timeout=120,
    )


def test_cli_describe_then_ingest_then_publish(settings: Settings, db: asyncpg.Connection, tmp_path: Path) -> None:
    created = cli(settings, "datasets", "create", "sanisettes", "--title", "Sanisettes de Paris")
    assert created.returncode == 0, created.stderr
    source = tmp_path / "sanisettes.csv"
    source.write_bytes(SANISETTES.read_bytes())

    loaded = cli(settings, "ingest", "csv", str(source), "--dataset", "sanisettes")
    assert loaded.returncode == 0, loaded.stderr
    assert "is a draft" in loaded.stderr
    assert "Licence" in loaded.stderr, "the metadata still missing is listed after the import"

    refused = cli(settings, "datasets", "publish", "sanisettes")
    assert refused.returncode == 2
    assert "cannot be published yet" in refused.stderr
    for word in ("Description", "Licence", "Fréquence", "Thèmes"):  # the producer defaults to the territory
        assert word in refused.stderr, refused.stderr
    assert "Titre" not in refused.stderr, "the title given at creation is fine"

    described = cli(
        settings,
        "datasets",
        "update",
        "sanisettes",
        "--description",
        FULL_METADATA["description"],
        "--theme",
        "SOCI",
        "--frequency",
        "IRREG",
    )
    assert described.returncode == 0, described.stderr
    # Licence and producer come from the platform's defaults.
    published = cli(
        settings,
        "datasets",
        "publish",
        "sanisettes",
        env={"TERRITOIRE_DEFAULT_LICENCE": "odbl-1.0", "TERRITOIRE_CATALOG_PUBLISHER": "Ville de Paris"},
    )
    assert published.returncode == 0, published.stderr
    shown = cli(settings, "datasets", "show", "sanisettes")
    assert '"status": "published"' in shown.stdout
    assert '"id": "odbl-1.0"' in shown.stdout
    assert '"publisher": "Ville de Paris"' in shown.stdout

    unpublished = cli(settings, "datasets", "unpublish", "sanisettes")
    assert unpublished.returncode == 0, unpublished.stderr
    assert "draft" in cli(settings, "datasets", "list").stdout


async def test_cli_describe_first_leaves_rows_in_the_table(settings: Settings, db: asyncpg.Connection) -> None:
    assert cli(settings, "datasets", "create", "sanisettes", "--title", "Sanisettes").returncode == 0
    assert cli(settings, "ingest", "csv", str(SANISETTES), "--dataset", "sanisettes").returncode == 0
    row = await db.fetchrow("SELECT table_name, row_count, kind, title FROM dataset WHERE slug = 'sanisettes'")
    assert row["table_name"] and row["row_count"] > 100 and row["kind"] == "table"
    assert row["title"] == "Sanisettes", "the description written first is kept"
    assert await db.fetchval(f'SELECT count(*) FROM datasets."{row["table_name"]}"') == row["row_count"]


async def test_api_describe_first_then_import_then_publish(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    created = await client.post(
        "/api/v1/datasets", json={"slug": "lieux", "title": "Lieux de la ville", **FULL_METADATA}, headers=AUTH
    )
    assert created.status_code == 201, created.text
    assert created.json()["status"] == "draft"
    assert created.json()["missing_for_publication"] == []

    imported = await client.post(
        "/api/v1/datasets/lieux/imports", files={"file": ("lieux.csv", CSV.encode(), "text/csv")}, headers=AUTH
    )
    assert imported.status_code == 201, imported.text
    report = imported.json()
    assert report["rows_inserted"] == 2
    assert report["dataset_status"] == "draft"
    assert report["metadata_missing"] == []

    # A draft: 404 to the public on the doors, seen by its writer.
    for path in ("/api/v1/datasets/lieux", "/api/v1/datasets/lieux/records", "/ogcapi/collections/lieux/items"):
        assert (await client.get(path)).status_code == 404, path
        assert (await client.get(path, headers=AUTH)).status_code == 200, path
    assert "lieux" not in (await client.get("/dcat/catalog.ttl")).text

    published = await client.post("/api/v1/datasets/lieux/publish", headers=AUTH)
    assert published.status_code == 200, published.text
    assert published.json()["status"] == "published"
    assert published.json()["published"] is not None
    assert (await client.get("/api/v1/datasets/lieux/records")).json()["total_count"] == 2
    assert "lieux" in (await client.get("/dcat/catalog.ttl")).text
    assert (await client.get("/datasets/lieux")).status_code == 200

    assert (await client.post("/api/v1/datasets/lieux/unpublish", headers=AUTH)).status_code == 200
    assert (await client.get("/datasets/lieux")).status_code == 404
    actions = [r["action"] for r in await db.fetch("SELECT action FROM audit_event ORDER BY id")]
    assert actions[-2:] == ["dataset.publish", "dataset.unpublish"]


async def test_publish_refusal_lists_what_is_missing(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await client.post("/api/v1/datasets", json={"slug": "vide", "title": "vide"}, headers=AUTH)
    refused = await client.post("/api/v1/datasets/vide/publish", headers=AUTH)
    assert refused.status_code == 422
    assert refused.headers["content-type"].startswith("application/problem+json")
    fields = [m["field"] for m in refused.json()["missing"]]
    assert fields == ["title", "description", "licence", "update_frequency", "themes"]
    assert await db.fetchval("SELECT status FROM dataset WHERE slug = 'vide'") == "draft"


async def test_import_with_create_is_a_titled_draft_with_its_gaps(
    client: httpx.AsyncClient, db: asyncpg.Connection, engine: object
) -> None:
    publisher = await make_key(engine, "publisher")  # type: ignore[arg-type]
    headers = {"Authorization": f"Bearer {publisher}"}
    imported = await client.post(
        "/api/v1/datasets/toilettes-publiques/imports",
        files={"file": ("toilettes_publiques-paris.csv", SANISETTES.read_bytes(), "text/csv")},
        data={"create": "true"},
        headers=headers,
    )
    assert imported.status_code == 201, imported.text
    report = imported.json()
    assert report["dataset_status"] == "draft"
    assert {m["field"] for m in report["metadata_missing"]} >= {"licence", "description"}
    mine = await client.get("/api/v1/datasets/toilettes-publiques", headers=headers)
    assert mine.status_code == 200
    assert mine.json()["title"] == "Toilettes publiques paris", "titled from its file, not its slug"
    assert mine.json()["quality_warnings"], "its publisher sees the metadata warnings"
    assert (await client.get("/api/v1/datasets/toilettes-publiques")).status_code == 404
    listed = await client.get("/api/v1/datasets", headers=headers)
    assert [i["slug"] for i in listed.json()["items"]] == ["toilettes-publiques"], "listed to its publisher"
    assert (await client.get("/api/v1/datasets")).json()["total"] == 0


async def test_sensor_dataset_described_first_refuses_a_file(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await client.post(
        "/api/v1/datasets", json={"slug": "capteurs", "title": "Capteurs", "kind": "sensors"}, headers=AUTH
    )
    refused = await client.post(
        "/api/v1/datasets/capteurs/imports", files={"file": ("x.csv", CSV.encode(), "text/csv")}, headers=AUTH
    )
    assert refused.status_code == 409
    assert "not a table dataset" in refused.json()["detail"]
