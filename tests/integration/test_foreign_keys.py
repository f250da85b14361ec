"""Table Schema foreignKeys between the resources of one data package (comptage-mobilites: channel → site)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from territoire_data.catalog.schema import SchemaError, parse_table_schema
from territoire_data.ingest.files.loader import ImportFailedError, ImportOptions, import_csv, load_schema_file

PACKAGE = Path(__file__).resolve().parents[1] / "fixtures" / "schemas" / "comptage-mobilites"


def with_foreign_keys(tmp_path: Path, resource: str, keys: list[dict[str, Any]]) -> Path:
    descriptor = json.loads((PACKAGE / resource / "schema.json").read_text())
    descriptor["foreignKeys"] = keys
    path = tmp_path / f"{resource}.json"
    path.write_text(json.dumps(descriptor))
    return path


CHANNEL_TO_SITE = [{"fields": "site_id", "reference": {"resource": "site", "fields": "site_id"}}]


async def load(db: asyncpg.Connection, path: Path, slug: str, schema: Path | None = None, **options: Any) -> Any:
    return await import_csv(
        db, path, slug, ImportOptions(schema=load_schema_file(schema) if schema else None, **options)
    )


async def count(db: asyncpg.Connection, slug: str) -> int:
    table = await db.fetchval("SELECT table_name FROM dataset WHERE slug = $1", slug)
    return int(await db.fetchval(f'SELECT count(*) FROM datasets."{table}"'))


async def test_rows_pointing_to_a_missing_site_are_reported_with_their_lines(
    db: asyncpg.Connection, tmp_path: Path
) -> None:
    await load(db, PACKAGE / "site/exemple-valide.csv", "site", PACKAGE / "site/schema.json", create=True)
    schema = with_foreign_keys(tmp_path, "channel", CHANNEL_TO_SITE)
    report = await load(db, PACKAGE / "channel/exemple-valide.csv", "channel", schema, create=True)
    assert report["rows_inserted"] == 1

    lines = (PACKAGE / "channel/exemple-valide.csv").read_text().splitlines()
    good = lines[1].split(",", 1)[1]
    bad = tmp_path / "channel.csv"
    rows = [lines[0], "C-2," + good, "C-3," + good.replace("C01-Baix", "C99-Nowhere"), "C-4," + good,
            "C-5," + good.replace("C01-Baix", "C42-Ailleurs")]  # fmt: skip
    bad.write_text("\n".join(rows) + "\n")
    for set_based in (True, False):
        with pytest.raises(ImportFailedError) as info:
            await load(db, bad, "channel", set_based=set_based)
        errors = info.value.report["errors"]
        assert [(e["line"], e["column"], e["code"]) for e in errors] == [
            (3, "site_id", "foreign-key"),
            (5, "site_id", "foreign-key"),
        ]
        assert errors[0]["reason"] == "value (C99-Nowhere) not found in (site_id) of dataset 'site'"
        assert await count(db, "channel") == 1  # all or nothing

    report = await load(db, bad, "channel", skip_invalid=True)
    assert report["rows_inserted"] == 2 and report["rows_rejected"] == 2
    rejected = await db.fetch("SELECT line, reason FROM ingest_rejection WHERE import_id = $1 ORDER BY line",
                              report["import_id"])  # fmt: skip
    assert [r["line"] for r in rejected] == [3, 5]
    assert await count(db, "channel") == 3

    # Appending through the staging table checks the same way.
    more = tmp_path / "more.csv"
    more.write_text("\n".join([lines[0], "C-6," + good.replace("C01-Baix", "C77-Loin")]) + "\n")
    with pytest.raises(ImportFailedError) as info:
        await load(db, more, "channel", mode="append")
    assert [(e["line"], e["code"]) for e in info.value.report["errors"]] == [(2, "foreign-key")]


async def test_a_key_to_the_table_itself_and_a_resource_not_loaded(db: asyncpg.Connection, tmp_path: Path) -> None:
    schema = with_foreign_keys(
        tmp_path, "site", [{"fields": ["parent_site_id"], "reference": {"resource": "", "fields": ["site_id"]}}]
    )
    sites = tmp_path / "sites.csv"
    header = (PACKAGE / "site/exemple-valide.csv").read_text().splitlines()[0]
    sites.write_text(
        f"{header}\nP1,,Parent,72010,1.45,46.59,,GREENWAY\nC1,P1,Enfant,72010,1.45,46.59,,GREENWAY\n"
        "C2,P9,Orphelin,72010,1.45,46.59,,GREENWAY\n"
    )
    with pytest.raises(ImportFailedError) as info:
        await load(db, sites, "sites", schema, create=True)
    assert [(e["line"], e["column"]) for e in info.value.report["errors"]] == [(4, "parent_site_id")]
    assert "this dataset" in info.value.report["errors"][0]["reason"]

    channel = with_foreign_keys(tmp_path, "channel", CHANNEL_TO_SITE)
    with pytest.raises(ImportFailedError) as info:
        await load(db, PACKAGE / "channel/exemple-valide.csv", "channel", channel, create=True,
                   resources={"site": "sites-not-loaded"})  # fmt: skip
    assert "'sites-not-loaded' of resource 'site' does not exist" in info.value.report["errors"][0]["reason"]


def test_foreign_keys_are_checked_in_the_descriptor() -> None:
    base = {"fields": [{"name": "a"}, {"name": "b"}]}
    keys = parse_table_schema(
        {**base, "foreignKeys": [{"fields": "a", "reference": {"resource": "x", "fields": "id"}}]}
    )
    assert keys.foreign_keys[0].fields == ("a",) and keys.foreign_keys[0].reference_fields == ("id",)
    for wrong, message in (
        ([{"fields": "c", "reference": {"resource": "x", "fields": "id"}}], "not a field"),
        ([{"fields": ["a", "b"], "reference": {"resource": "x", "fields": "id"}}], "differ in length"),
        ([{"fields": "a"}], "reference"),
    ):
        with pytest.raises(SchemaError, match=message):
            parse_table_schema({**base, "foreignKeys": wrong})
