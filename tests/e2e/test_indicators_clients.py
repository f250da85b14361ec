"""Others' clients read the indicators: OWSLib and GDAL's OAPIF driver (what QGIS uses) get the choropleth collection,
rdflib reads its DCAT-AP entry, all from the real server."""

from __future__ import annotations

import shutil
import subprocess

import asyncpg
import httpx
import pytest
from owslib.ogcapi.features import Features
from rdflib import Graph, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, RDF, RDFS

from territoire_data.demo import DEMO_DIVISIONS
from territoire_data.indicators import divisions
from territoire_data.indicators.compute import SYSTEM, process_dirty
from territoire_data.indicators.files import load_folder
from territoire_data.ingest.files.demo import load_demo_datasets
from territoire_data.settings import Settings
from tests.conftest import ROOT, LiveServer

pytestmark = [pytest.mark.db, pytest.mark.e2e]

PROV = Namespace("http://www.w3.org/ns/prov#")
COLLECTION = "indicateur-bornes-recharge-10000-habitants"


@pytest.fixture
async def indicators(settings: Settings, db: asyncpg.Connection) -> asyncpg.Connection:
    await load_demo_datasets(settings)
    for slug, declaration in DEMO_DIVISIONS.items():
        await divisions.declare(db, SYSTEM, slug, declaration)
    reports = await load_folder(db, ROOT / "indicators")
    # Without sensors in this database the PM10 indicators cannot name their quantity: refused, the others load.
    assert {r.get("indicator", r["file"]): r["status"] for r in reports}["bornes-recharge-10000-habitants"] == "loaded"
    await process_dirty(db)
    return db


async def test_owslib_reads_the_choropleth_collection(indicators: asyncpg.Connection, live_server: LiveServer) -> None:
    api = Features(f"{live_server.url}/ogcapi")
    ids = {c["id"] for c in api.collections()["collections"]}
    assert COLLECTION in ids
    page = api.collection_items(COLLECTION, limit=100)
    assert page["numberMatched"] == page["numberReturned"] == 24
    by_code = {f["properties"]["code"]: f for f in page["features"]}
    nantes = by_code["44109"]
    assert nantes["properties"]["nom"] == "Nantes"
    assert nantes["geometry"]["type"] == "MultiPolygon"
    assert nantes["properties"]["valeur"] == 0  # the demo's national extract has no charge point in the metropole
    assert nantes["properties"]["statut_cible"] == "non atteint"
    assert nantes["properties"]["unite"] == "points pour 10 000 habitants"
    queryables = api.collection_queryables(COLLECTION)
    assert queryables["properties"]["valeur"]["type"] == "number"
    # A bbox around Rezé selects it and its neighbours, not the whole metropole.
    near = api.collection_items(COLLECTION, bbox=[-1.57, 47.17, -1.55, 47.18], limit=100)
    assert "44143" in {f["properties"]["code"] for f in near["features"]}
    assert len(near["features"]) < 24


def _ogrinfo(*args: str) -> str:
    result = subprocess.run(
        ["ogrinfo", "-ro", "--config", "GDAL_HTTP_TIMEOUT", "20", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest.mark.skipif(shutil.which("ogrinfo") is None, reason="GDAL's ogrinfo (gdal-bin) is not installed")
async def test_gdal_reads_the_collection_as_qgis_would(indicators: asyncpg.Connection, live_server: LiveServer) -> None:
    source = f"OAPIF:{live_server.url}/ogcapi"
    assert COLLECTION in _ogrinfo(source)
    summary = _ogrinfo("-so", source, COLLECTION)
    assert "Feature Count: 24" in summary
    assert "Multi Polygon" in summary
    for field in ("valeur", "statut_cible", "periode", "cible"):
        assert f"{field}:" in summary
    nantes = _ogrinfo("-where", "code = '44109'", source, COLLECTION)
    assert "nom (String) = Nantes" in nantes
    assert "statut_cible (String) = non atteint" in nantes


async def test_rdflib_reads_the_dcat_entry_with_methodology_and_sources(
    indicators: asyncpg.Connection, live_server: LiveServer
) -> None:
    graph = Graph()
    graph.parse(f"{live_server.url}/dcat/catalog.jsonld", format="json-ld")
    node = URIRef(f"{live_server.url}/datasets/{COLLECTION}#dataset")
    assert (node, RDF.type, DCAT.Dataset) in graph
    sources = set(graph.objects(node, PROV.wasDerivedFrom))
    assert sources == {
        URIRef(f"{live_server.url}/datasets/bornes-recharge-irve#dataset"),
        URIRef(f"{live_server.url}/datasets/communes-nantes-metropole#dataset"),
    }
    assert (node, DCTERMS.license, URIRef("https://www.etalab.gouv.fr/licence-ouverte-open-licence")) in graph
    statement = next(graph.objects(node, DCTERMS.provenance))
    assert "population légale" in str(next(graph.objects(statement, RDFS.label)))
    formats = {str(graph.value(d, DCAT.accessURL)) for d in graph.objects(node, DCAT.distribution)}
    assert f"{live_server.url}/ogcapi/collections/{COLLECTION}/items" in formats
    # The indicator's own API says the same.
    async with httpx.AsyncClient(base_url=live_server.url, timeout=30) as http:
        detail = (await http.get("/api/v1/indicators/bornes-recharge-10000-habitants")).json()
    assert detail["dataset"] == COLLECTION and len(detail["latest"]["values"]) == 24
