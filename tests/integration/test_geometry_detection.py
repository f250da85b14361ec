"""Real exports whose geometry is found by name or by content, loaded into PostGIS; binary uploads refused.

`opendatasoft_offices.csv` is a real Opendatasoft export (the `Geo Point`/`Geo Shape` label form, multi-line
quoted addresses); `paris_sanisettes.csv` the API-name form (`geo_point_2d`/`geo_shape`). Both with provenance
in tests/fixtures/PROVENANCE.md.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.ingest.files.loader import ImportOptions, import_csv
from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_AUTH

pytestmark = pytest.mark.db

CSV = Path(__file__).resolve().parents[1] / "fixtures" / "csv"
OFFICES = CSV / "opendatasoft_offices.csv"
# (lon, lat) of each office, from its Geo Shape (the Geo Point is the same place, rounded)
EXPECTED = {
    "Paris HQ": (2.2849255800247192, 48.841612621157495),
    "Nantes Office": (-1.5440967679023743, 47.217678943247684),
    "Boston HQ": (-71.05759620666502, 42.356847302874996),
}


async def _points(db: asyncpg.Connection, slug: str, name_column: str) -> dict[str, tuple[float, float]]:
    table = await db.fetchval("SELECT table_name FROM dataset WHERE slug = $1", slug)
    rows = await db.fetch(f'SELECT "{name_column}" AS n, ST_X(geom) AS x, ST_Y(geom) AS y FROM datasets."{table}"')
    return {row["n"]: (row["x"], row["y"]) for row in rows}


async def _load(db: asyncpg.Connection, path: Path, slug: str, **options: Any) -> dict[str, Any]:
    return await import_csv(db, path, slug, ImportOptions(create=True, **options))


async def test_a_real_opendatasoft_export_gets_its_points(db: asyncpg.Connection) -> None:
    report = await _load(db, OFFICES, "bureaux")
    assert report["status"] == "succeeded" and report["rows_inserted"] == 3
    geometry = report["geometry"]
    # its Geo Shape holds single points, the same as its Geo Point: the point column gives a Point layer
    assert (geometry["kind"], geometry["columns"]) == ("latlon", ["Geo Point"])
    assert "Geo Shape" in geometry["reason"]
    points = await _points(db, "bureaux", "Office Name")
    assert points == {name: pytest.approx(xy, abs=1e-9) for name, xy in EXPECTED.items()}
    assert await db.fetchval("SELECT geometry_type FROM dataset WHERE slug = 'bureaux'") == "Point"


async def test_the_same_export_as_excel_saves_it_utf16_tabs(db: asyncpg.Connection, tmp_path: Path) -> None:
    text = OFFICES.read_text(encoding="utf-8").replace(";", "\t")  # no ';' in the values: tabs separate
    path = tmp_path / "bureaux.txt"
    path.write_bytes(b"\xff\xfe" + text.replace("\n", "\r\n").encode("utf-16-le"))
    report = await _load(db, path, "bureaux-utf16")
    assert report["dialect"]["encoding"] == "utf-16" and report["dialect"]["delimiter"] == "\t"
    points = await _points(db, "bureaux-utf16", "Office Name")
    assert set(points) == set(EXPECTED)  # names with no mojibake, every point
    assert points["Boston HQ"] == pytest.approx(EXPECTED["Boston HQ"], abs=1e-9)


async def test_geometry_found_by_content_under_any_column_name(db: asyncpg.Connection, tmp_path: Path) -> None:
    lines = OFFICES.read_text(encoding="utf-8").split("\n", 1)
    renamed = tmp_path / "renamed.csv"
    renamed.write_text("Coordonnées;Forme;Office Name;Address\n" + lines[1], encoding="utf-8")
    report = await _load(db, renamed, "par-contenu")
    geometry = report["geometry"]
    assert geometry["columns"] == ["Coordonnées"] and geometry["kind"] == "latlon"
    assert "'lat,lon' pair" in geometry["reason"]
    points = await _points(db, "par-contenu", "Office Name")
    assert points["Nantes Office"] == pytest.approx((-1.5440967679, 47.2176789432), abs=1e-9)
    # the GeoJSON column alone is found too, and its exact coordinates are kept
    only_shape = tmp_path / "shape.csv"
    rows = []
    for i, (lon, lat) in enumerate(EXPECTED.values()):
        line = json.dumps({"type": "LineString", "coordinates": [[lon, lat], [lon + 0.01, lat]]})
        rows.append(f'{i};"{line.replace(chr(34), chr(34) * 2)}"')
    only_shape.write_text("id;trace\n" + "\n".join(rows) + "\n", encoding="utf-8")
    report = await _load(db, only_shape, "traces")
    assert (report["geometry"]["kind"], report["geometry"]["columns"]) == ("geojson", ["trace"])
    assert await db.fetchval("SELECT geometry_type FROM dataset WHERE slug = 'traces'") == "LineString"


async def test_lambert_93_without_crs_names_epsg_2154(db: asyncpg.Connection, tmp_path: Path) -> None:
    path = tmp_path / "l93.csv"
    path.write_text("nom;X;Y\nHôtel de ville de Nantes;355113.4;6689301.9\n", encoding="utf-8")
    report = await import_csv(db, path, "l93", ImportOptions(create=True, skip_invalid=True))
    assert any("EPSG:2154" in w for w in report["warnings"]), report["warnings"]
    report = await import_csv(db, path, "l93-ok", ImportOptions(create=True, crs="EPSG:2154"))
    assert report["rows_inserted"] == 1
    assert not any("EPSG:2154" in w for w in report.get("warnings", []))
    (lon, lat) = (await _points(db, "l93-ok", "nom"))["Hôtel de ville de Nantes"]
    assert -1.6 < lon < -1.5 and 47.1 < lat < 47.3


@pytest.fixture
async def http(settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
        yield client


async def test_a_png_uploaded_as_csv_is_a_clear_422(http: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    """Found by schemathesis: an image sent as the CSV of an import answered 500."""
    png = b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x01\x00\x00\x00\x01\x08\x02\x00\x00\x00" + bytes(32)
    response = await http.post(
        "/api/v1/datasets/image/imports",
        files={"file": ("photo.csv", png, "text/csv")},
        data={"create": "true"},
        headers=TEST_ADMIN_AUTH,
    )
    assert response.status_code == 422, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert "PNG image" in response.json()["detail"]
    assert await db.fetchval("SELECT count(*) FROM dataset WHERE slug = 'image'") == 0
