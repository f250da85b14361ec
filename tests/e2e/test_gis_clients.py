"""What a city's GIS team opens: the GeoPackage, FlatGeobuf and zipped Shapefile exports, read by GDAL's
`ogrinfo` (Debian's gdal-bin) and by QGIS (Debian's python3-qgis, headless), and the OGC API – Features layer
in QGIS with the metadata QGIS shows (title, abstract, keywords). GeoParquet's bbox covering is read back
with pyarrow (Debian's GDAL 3.6 has no Parquet driver).

QGIS runs in the system Python (`/usr/bin/python3`, where Debian installs its bindings) with
QT_QPA_PLATFORM=offscreen; the test skips with the reason when either tool is missing (.ci/run installs both).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import textwrap
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pyarrow.parquet as pq
import pytest

from territoire_data.catalog.datasets import DatasetMeta
from territoire_data.ingest.files.loader import ImportOptions, import_csv
from territoire_data.settings import Settings
from tests.conftest import FIXTURES, LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.db, pytest.mark.slow]

SYSTEM_PYTHON = "/usr/bin/python3"
SANISETTES = FIXTURES / "csv" / "paris_sanisettes.csv"
ROWS = 615
META = DatasetMeta(
    title="Toilettes publiques de Paris",
    description="Sanisettes de la Ville de Paris : adresse, horaires, accès PMR.",
    keywords=("sanisettes", "toilettes", "propreté"),
    licence="odbl-1.0",
    status="published",
)


def _has_qgis() -> bool:
    if not Path(SYSTEM_PYTHON).exists():
        return False
    probe = subprocess.run([SYSTEM_PYTHON, "-c", "import qgis.core"], capture_output=True, check=False)
    return probe.returncode == 0


@pytest.fixture
async def loaded(db: asyncpg.Connection) -> None:
    report = await import_csv(db, SANISETTES, "sanisettes", ImportOptions(create=True, meta=META))
    assert report["rows_inserted"] == ROWS


@pytest.fixture
def server(settings: Settings, loaded: None) -> Iterator[LiveServer]:
    live = LiveServer(settings)
    live.start()
    yield live
    live.stop()


def _download(server: LiveServer, fmt: str, folder: Path, **params: str) -> Path:
    response = httpx.get(f"{server.url}/api/v1/datasets/sanisettes/exports/{fmt}", params=params, timeout=60)
    assert response.status_code == 200, response.text
    name = response.headers["content-disposition"].split('filename="', 1)[1].rstrip('"')
    path = folder / (f"l93-{name}" if params else name)
    path.write_bytes(response.content)
    return path


def _ogrinfo(path: str) -> str:
    done = subprocess.run(["ogrinfo", "-so", "-al", path], capture_output=True, text=True, check=False, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="ogrinfo (Debian gdal-bin) is not installed")
def test_gdal_opens_every_gis_export(server: LiveServer, tmp_path: Path) -> None:
    gpkg = _ogrinfo(str(_download(server, "gpkg", tmp_path)))
    assert f"Feature Count: {ROWS}" in gpkg and "Geometry: Point" in gpkg
    assert "Sanisettes de la Ville de Paris" in gpkg  # the layer's description (gpkg_contents)
    fgb = _ogrinfo(str(_download(server, "fgb", tmp_path)))
    assert f"Feature Count: {ROWS}" in fgb and "Geometry: Point" in fgb
    shapefile = _download(server, "shapefile", tmp_path, crs="EPSG:2154")
    import zipfile

    parts = sorted(Path(n).suffix for n in zipfile.ZipFile(shapefile).namelist())
    assert parts == [".cpg", ".dbf", ".prj", ".shp", ".shx"]
    shp = _ogrinfo(f"/vsizip/{shapefile}")
    assert f"Feature Count: {ROWS}" in shp
    assert "Lambert" in shp or "2154" in shp  # the .prj says Lambert-93
    # metres, not degrees: the extent is in Paris's Lambert-93 range
    extent = next(line for line in shp.splitlines() if line.startswith("Extent:"))
    xmin = float(extent.split("(")[1].split(",")[0])
    assert 640_000 < xmin < 660_000, extent
    # GDAL's OGC API driver shows the collection's metadata
    done = subprocess.run(
        ["ogrinfo", "-so", f"OAPIF:{server.url}/ogcapi", "sanisettes"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert META.description in done.stdout


def test_geoparquet_has_a_bbox_covering_readers_can_skip_on(server: LiveServer, tmp_path: Path) -> None:
    path = _download(server, "parquet", tmp_path)
    parquet = pq.ParquetFile(io.BytesIO(path.read_bytes()))
    geo = json.loads(parquet.schema_arrow.metadata[b"geo"])
    covering = geo["columns"]["geometry"]["covering"]["bbox"]
    assert covering == {
        "xmin": ["bbox", "xmin"],
        "ymin": ["bbox", "ymin"],
        "xmax": ["bbox", "xmax"],
        "ymax": ["bbox", "ymax"],
    }
    names = [parquet.schema.column(i).path for i in range(parquet.metadata.num_columns)]
    group = parquet.metadata.row_group(0)
    xmin = group.column(names.index("bbox.xmin")).statistics
    ymax = group.column(names.index("bbox.ymax")).statistics
    assert xmin.has_min_max and 2.2 < xmin.min < 2.3  # Paris's west edge, from the row-group statistics
    assert ymax.has_min_max and 48.8 < ymax.max < 48.95
    table = parquet.read()
    first = table.column("bbox")[0].as_py()
    assert first["xmin"] == first["xmax"] and first["ymin"] == first["ymax"]  # a point's box is the point


QGIS_SCRIPT = textwrap.dedent(
    """
    import json, sys
    from qgis.core import QgsApplication, QgsVectorLayer
    app = QgsApplication([], False)
    app.initQgis()
    out = {}
    for name, uri, provider in json.loads(sys.argv[1]):
        layer = QgsVectorLayer(uri, name, provider)
        meta = layer.metadata()
        out[name] = {
            "valid": layer.isValid(),
            "error": layer.error().summary() if not layer.isValid() else "",
            "count": layer.featureCount() if layer.isValid() else -1,
            "crs": layer.crs().authid(),
            "geometry": layer.wkbType(),
            "title": meta.title(),
            "abstract": meta.abstract(),
            "keywords": sorted(k for words in meta.keywords().values() for k in words),
            "licenses": list(meta.licenses()),
            "links": [link.url for link in meta.links()],
        }
    print(json.dumps(out))
    app.exitQgis()
    """
)


def run_qgis(layers: list[tuple[str, str, str]]) -> dict[str, dict[str, object]]:
    env = {**os.environ, "QT_QPA_PLATFORM": "offscreen", "XDG_RUNTIME_DIR": "/tmp"}
    env.pop("PYTHONPATH", None)
    done = subprocess.run(
        [SYSTEM_PYTHON, "-c", QGIS_SCRIPT, json.dumps(layers)],
        capture_output=True,
        text=True,
        check=False,
        timeout=240,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result: dict[str, dict[str, object]] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


@pytest.mark.skipif(not _has_qgis(), reason="QGIS's Python bindings (Debian python3-qgis) are not installed")
def test_qgis_opens_the_exports_and_the_ogc_api_layer(server: LiveServer, tmp_path: Path) -> None:
    gpkg = _download(server, "gpkg", tmp_path)
    fgb = _download(server, "fgb", tmp_path)
    shapefile = _download(server, "shapefile", tmp_path, crs="EPSG:2154")
    oapif = f"url='{server.url}/ogcapi' typename='sanisettes' restrictToRequestBBOX='0'"
    seen = run_qgis(
        [
            ("gpkg", str(gpkg), "ogr"),
            ("fgb", str(fgb), "ogr"),
            ("shapefile", f"/vsizip/{shapefile}", "ogr"),
            ("oapif", oapif, "OAPIF"),
        ]
    )
    for name in ("gpkg", "fgb", "shapefile"):
        assert seen[name]["valid"], seen[name]
        assert seen[name]["count"] == ROWS, (name, seen[name])
    assert seen["gpkg"]["crs"] == "EPSG:4326" and seen["shapefile"]["crs"] == "EPSG:2154"
    layer = seen["oapif"]
    assert layer["valid"], layer
    assert layer["count"] == ROWS
    # the collection metadata QGIS shows in the layer's properties
    assert layer["title"] == META.title
    assert layer["abstract"] == META.description
    assert set(META.keywords) <= set(layer["keywords"])  # type: ignore[arg-type]
    assert any("Open Database License" in str(text) for text in layer["licenses"]), layer["licenses"]  # type: ignore[attr-defined]
