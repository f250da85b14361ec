"""GeoJSON imports: the real Rennes FeatureCollection, newline-delimited GeoJSON, invalid geometries."""

from __future__ import annotations

import json
from pathlib import Path

import asyncpg
import pytest

from territoire_data.catalog.schema import parse_table_schema
from territoire_data.ingest.files.geojson import GeoJsonFormatError, GeoJsonSource
from territoire_data.ingest.files.loader import ImportFailedError, ImportOptions, import_geojson

pytestmark = pytest.mark.db

RENNES = (
    Path(__file__).resolve().parents[1] / "fixtures" / "geojson" / "rennes_metropole_stations_comptages_auto.geojson"
)

BOWTIE = {"type": "Polygon", "coordinates": [[[0, 0], [1, 1], [1, 0], [0, 1], [0, 0]]]}


def feature(properties: dict[str, object], geometry: dict[str, object] | None) -> dict[str, object]:
    return {"type": "Feature", "properties": properties, "geometry": geometry}


async def test_rennes_feature_collection(db: asyncpg.Connection) -> None:
    report = await import_geojson(db, RENNES, "comptages", ImportOptions(create=True))
    assert report["status"] == "succeeded"
    assert report["dialect"]["kind"] == "FeatureCollection"
    assert report["rows_inserted"] == 74
    assert [f["name"] for f in report["table_schema"]["fields"]] == [
        "nom",
        "description",
        "commune_insee",
        "commune_nom",
    ]
    table = "datasets." + await db.fetchval("SELECT table_name FROM dataset")
    row = await db.fetchrow(f"SELECT ST_X(geom) AS x, ST_Y(geom) AS y, description FROM {table} WHERE nom = '35352_1'")
    assert (row["x"], row["y"]) == pytest.approx((-1.631094, 48.075169))
    assert row["description"] is None  # "" is a missing value
    assert await db.fetchval("SELECT geometry_type FROM dataset") == "Point"


async def test_duplicate_names_are_refused_by_a_unique_schema(db: asyncpg.Connection) -> None:
    schema = parse_table_schema(
        {
            "fields": [
                {"name": "nom", "type": "string", "constraints": {"required": True}},
                {"name": "description", "type": "string"},
                {"name": "commune_insee", "type": "string", "constraints": {"pattern": "\\d{5}"}},
                {"name": "commune_nom", "type": "string"},
            ],
            "primaryKey": ["nom"],
        }
    )
    with pytest.raises(ImportFailedError) as info:
        await import_geojson(db, RENNES, "comptages", ImportOptions(create=True, schema=schema))
    errors = info.value.report["errors"]
    assert len(errors) == 10
    assert {e["code"] for e in errors} == {"primary-key"}
    assert all(e["reason"].startswith("duplicate value of (nom): already on line ") for e in errors)
    assert await db.fetchval("SELECT count(*) FROM dataset") == 0
    report = await import_geojson(db, RENNES, "comptages", ImportOptions(create=True, schema=schema, skip_invalid=True))
    assert (report["rows_inserted"], report["rows_rejected"]) == (64, 10)
    assert await db.fetchval("SELECT count(*) FROM ingest_rejection WHERE source = 'geojson'") == 10


async def test_newline_delimited_mixed_and_invalid_geometries(db: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "mixed.geojsonl"
    lines = [
        feature({"id": 1, "ok": True, "note": "point"}, {"type": "Point", "coordinates": [2.35, 48.85]}),
        feature(
            {"id": 2, "ok": False, "note": "ligne"}, {"type": "LineString", "coordinates": [[2.3, 48.8], [2.4, 48.9]]}
        ),
        feature({"id": 3, "ok": None, "note": "papillon"}, BOWTIE),
        feature({"id": 4, "ok": True, "note": None}, None),
        feature({"id": 5, "ok": True, "note": "3D"}, {"type": "Point", "coordinates": [2.35, 48.85, 35.0]}),
    ]
    path.write_text("\n".join(json.dumps(f) for f in lines), encoding="utf-8")
    with pytest.raises(ImportFailedError) as info:
        await import_geojson(db, path, "mixte", ImportOptions(create=True))
    [error] = info.value.report["errors"]
    assert (error["line"], error["column"], error["code"]) == (3, "geometry", "geometry-error")
    assert error["reason"].startswith("invalid geometry: Self-intersection")
    report = await import_geojson(db, path, "mixte", ImportOptions(create=True, invalid_geometry="repair"))
    assert report["dialect"]["kind"] == "GeoJSONSeq"
    assert report["rows_inserted"] == 5
    assert [f["type"] for f in report["table_schema"]["fields"]] == ["integer", "boolean", "string"]
    table = "datasets." + await db.fetchval("SELECT table_name FROM dataset")
    kinds = await db.fetch(f"SELECT id, GeometryType(geom) AS k, ST_IsValid(geom) AS v FROM {table} ORDER BY id")
    assert [(r["id"], r["k"]) for r in kinds] == [
        (1, "POINT"),
        (2, "LINESTRING"),
        (3, "MULTIPOLYGON"),
        (4, None),
        (5, "POINT"),  # heights are dropped: the column is 2D
    ]
    assert all(r["v"] is not False for r in kinds)
    assert await db.fetchval("SELECT geometry_type FROM dataset") == "Geometry"


async def test_legacy_crs_member_is_honoured(db: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "l93.geojson"
    collection = {
        "type": "FeatureCollection",
        "crs": {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::2154"}},
        "features": [feature({"nom": "Hôtel de Ville"}, {"type": "Point", "coordinates": [652000, 6862000]})],
    }
    path.write_text(json.dumps(collection, indent=2), encoding="utf-8")
    report = await import_geojson(db, path, "l93", ImportOptions(create=True))
    assert report["geometry"]["crs"] == "EPSG:2154"
    table = "datasets." + await db.fetchval("SELECT table_name FROM dataset")
    row = await db.fetchrow(f"SELECT ST_X(geom) AS x, ST_Y(geom) AS y FROM {table}")
    assert (row["x"], row["y"]) == pytest.approx((2.3458, 48.8562), abs=1e-3)


def test_not_geojson(tmp_path: Path) -> None:
    path = tmp_path / "x.geojson"
    path.write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(GeoJsonFormatError, match="JSON object"):
        GeoJsonSource(path)
    path.write_text('{"type": "FeatureCollection", "features": [{"type": "Feature", "geometry": null', encoding="utf-8")
    with pytest.raises(GeoJsonFormatError, match="invalid JSON"):
        GeoJsonSource(path)


def test_streaming_reads_features_across_small_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import territoire_data.ingest.files.geojson as module

    monkeypatch.setattr(module, "_CHUNK", 64)
    path = tmp_path / "many.geojson"
    features = [
        feature({"n": i, "texte": "é" * (i % 7)}, {"type": "Point", "coordinates": [i / 1000, 45]}) for i in range(300)
    ]
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}, indent=1), encoding="utf-8")
    source = GeoJsonSource(path)
    records = list(source.records())
    source.close()
    assert [cells[0] for _, cells, _ in records] == [str(i) for i in range(300)]
    lines = [line for line, _, _ in records]
    assert lines == sorted(lines)
    assert lines[0] == 4  # pretty-printed: the first feature opens on line 4
    assert records[299][2]["coordinates"] == [0.299, 45]


async def test_direct_load_of_shapes_with_heights(db: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "shapes.geojson"
    collection = {
        "type": "FeatureCollection",
        "features": [
            feature({"n": 1}, {"type": "Polygon", "coordinates": [[[2, 48, 1], [3, 48, 1], [3, 49, 1], [2, 48, 1]]]}),
            feature({"n": 2}, {"type": "MultiPoint", "coordinates": [[2.1, 48.1, 5], [2.2, 48.2, 6]]}),
        ],
    }
    path.write_text(json.dumps(collection), encoding="utf-8")
    report = await import_geojson(db, path, "formes", ImportOptions(create=True))
    assert report["rows_inserted"] == 2
    table = "datasets." + await db.fetchval("SELECT table_name FROM dataset")
    rows = await db.fetch(
        f"SELECT n, GeometryType(geom) AS k, ST_NDims(geom) AS d, ST_SRID(geom) AS s FROM {table} ORDER BY n"
    )
    assert [(r["k"], r["d"], r["s"]) for r in rows] == [("POLYGON", 2, 4326), ("MULTIPOINT", 2, 4326)]


async def test_properties_first_seen_after_the_first_thousand_features(db: asyncpg.Connection, tmp_path: Path) -> None:
    point = {"type": "Point", "coordinates": [-1.68, 48.11]}
    features = [feature({"nom": f"n{i}"}, point) for i in range(1, 1101)]
    features[1049]["properties"]["hauteur"] = 12.5  # feature 1,050: after the sample the header is read from
    features[1099]["properties"] |= {"hauteur": 3, "note": "tard"}
    path = tmp_path / "late.geojsonl"
    path.write_text("\n".join(json.dumps(f) for f in features) + "\n")

    # Inferred schema: every property of the file is a column, typed from its values.
    report = await import_geojson(db, path, "late", ImportOptions(create=True))
    fields = {f["name"]: f["type"] for f in report["table_schema"]["fields"]}
    assert fields == {"nom": "string", "hauteur": "number", "note": "string"}
    table = "datasets." + await db.fetchval("SELECT table_name FROM dataset WHERE slug = 'late'")
    rows = await db.fetch(f"SELECT nom, hauteur, note FROM {table} WHERE hauteur IS NOT NULL ORDER BY nom")
    assert [tuple(r) for r in rows] == [("n1050", 12.5, None), ("n1100", 3.0, "tard")]

    # A schema naming the late property: its values load. One that does not: the report names what was left out.
    schema = parse_table_schema({"fields": [{"name": "nom"}, {"name": "hauteur", "type": "number"}]})
    report = await import_geojson(db, path, "with-schema", ImportOptions(create=True, schema=schema))
    table = "datasets." + await db.fetchval("SELECT table_name FROM dataset WHERE slug = 'with-schema'")
    assert await db.fetchval(f"SELECT count(hauteur) FROM {table}") == 2
    assert report["warnings"] == [
        "1 property first seen after the first 1,000 features is not in the dataset's schema and was ignored: "
        "'note' (first on line 1100)"
    ]
