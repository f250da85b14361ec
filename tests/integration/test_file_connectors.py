"""Recurring file sources: the ready-made connectors parse and load the official examples; reruns skip."""

from __future__ import annotations

from pathlib import Path

import asyncpg
import pytest

from territoire_data.errors import ConfigurationError
from territoire_data.ingest.files.connector import load_connector, run_connector
from territoire_data.ingest.files.loader import load_schema_file
from territoire_data.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
CONNECTORS = sorted((ROOT / "connectors").glob("*.yaml"))
SCHEMAS = ROOT / "tests" / "fixtures" / "schemas"

EXAMPLES = {
    "irve-statique": (SCHEMAS / "irve/statique/exemple-valide-statique.csv", 2),
    "irve-dynamique": (SCHEMAS / "irve/dynamique/exemple-valide-dynamique.csv", 2),
    "stationnement": (SCHEMAS / "stationnement/exemple-valide.csv", 2),
    "comptage-mobilites-site": (SCHEMAS / "comptage-mobilites/site/exemple-valide.csv", 1),
    "comptage-mobilites-channel": (SCHEMAS / "comptage-mobilites/channel/exemple-valide.csv", 1),
    "comptage-mobilites-measure": (SCHEMAS / "comptage-mobilites/measure/exemple-valide.csv", 9),
}


def file_connectors() -> list[Path]:
    return [p for p in CONNECTORS if "kind: file" in p.read_text(encoding="utf-8")]


@pytest.mark.parametrize("path", file_connectors(), ids=lambda p: p.stem)
def test_ready_made_connectors_are_valid(path: Path) -> None:
    connector, base = load_connector(path)
    assert connector.table_schema is not None
    assert load_schema_file(base / connector.table_schema).fields
    assert connector.dataset.licence == "etalab-2.0"


@pytest.mark.db
@pytest.mark.parametrize("name", sorted(EXAMPLES))
async def test_ready_made_connector_loads_the_official_example_once(
    settings: Settings, db: asyncpg.Connection, name: str
) -> None:
    example, rows = EXAMPLES[name]
    [report] = await run_connector(settings, ROOT / "connectors" / f"{name}.yaml", override=str(example))
    assert report["status"] == "succeeded", report.get("errors")
    assert report["rows_inserted"] == rows
    assert report["connector"] == name
    assert len(report["sha256"]) == 64
    [again] = await run_connector(settings, ROOT / "connectors" / f"{name}.yaml", override=str(example))
    assert again["status"] == "skipped"
    meta = await db.fetchrow("SELECT title, licence, keywords, row_count FROM dataset")
    assert meta["licence"] == "etalab-2.0"
    assert meta["row_count"] == rows
    assert meta["keywords"]


@pytest.mark.db
async def test_folder_mapping_and_lambert93(settings: Settings, db: asyncpg.Connection, tmp_path: Path) -> None:
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    (inbox / "2024-01.csv").write_text("Identifiant;E;N;Places\nA;652000;6862000;4\nB;619000;6754000;2\n")
    (inbox / "2024-02.csv").write_text("Identifiant;E;N;Places\nA;652000;6862000;5\nC;652100;6862100;1\n")
    (inbox / "notes.md").write_text("ignored")
    schema = tmp_path / "schema.json"
    schema.write_text(
        '{"fields": [{"name": "id", "type": "string"}, {"name": "x", "type": "number"},'
        ' {"name": "y", "type": "number"}, {"name": "places", "type": "integer"}], "primaryKey": ["id"]}'
    )
    definition = tmp_path / "velos.yaml"
    definition.write_text(
        "kind: file\nname: velos\ndataset: {slug: velos, title: Stations}\nsource: {path: inbox}\n"
        "schema: schema.json\nmapping: {Identifiant: id, E: x, N: y, Places: places}\n"
        "geometry: {lon: x, lat: y}\ncrs: EPSG:2154\nmode: upsert\n"
    )
    reports = await run_connector(settings, definition)
    assert [(r["source"], r["rows_inserted"], r["rows_updated"]) for r in reports] == [
        ("2024-01.csv", 2, 0),
        ("2024-02.csv", 1, 1),
    ]
    table = "datasets." + await db.fetchval("SELECT table_name FROM dataset")
    row = await db.fetchrow(f"SELECT places, ST_X(geom) AS lon FROM {table} WHERE id = 'A'")
    assert row["places"] == 5
    assert row["lon"] == pytest.approx(2.3458, abs=1e-3)


def test_bad_definitions_say_what_is_wrong(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("kind: file\nname: x\ndataset: {slug: x}\nsource: {path: .}\nmode: merge\n")
    with pytest.raises(ConfigurationError, match="mode"):
        load_connector(path)
    path.write_text("kind: file\nname: x\ndataset: {slug: x}\nsource: {path: .}\ngeometry: {lon: a}\n")
    with pytest.raises(ConfigurationError, match="both lon and lat"):
        load_connector(path)
