"""The DCAT catalog against DCAT-AP's own SHACL shapes (2.1.1 and 3.0.1, SEMICeu/DCAT-AP), checked with pyshacl.

A fresh install (no dataset, default settings) and the demo territory must report 0 violations; the shapes and
their provenance are in tests/fixtures/dcat-ap/. Among the warnings (recommended properties), those the platform
can always fill must not appear: a distribution's description, availability and licence, a data service's
dcat:servesDataset, an empty description. Others depend on what a publisher entered (a contact point, keywords)
or what the data holds (a temporal extent), and may remain.
"""

from __future__ import annotations

from pathlib import Path

import asyncpg
import httpx
import pytest
from pyshacl import validate
from rdflib import Graph, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF, SH
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.demo import load_demo
from territoire_data.settings import Settings

pytestmark = pytest.mark.db

SHAPES_DIR = Path(__file__).parents[1] / "fixtures" / "dcat-ap"
SHAPES = {
    "2.1.1": (
        "2.1.1/dcat-ap_2.1.1_shacl_shapes.ttl",
        "2.1.1/dcat-ap_2.1.1_shacl_range.ttl",
        "2.1.1/dcat-ap_2.1.1_shacl_shapes_recommended.ttl",
    ),
    "3.0.1": ("3.0.1/shapes.ttl", "3.0.1/range.ttl", "3.0.1/shapes_recommended.ttl"),
}


def _shapes(version: str) -> Graph:
    graph = Graph()
    for name in SHAPES[version]:
        graph.parse(SHAPES_DIR / name, format="turtle")
    return graph


# Recommended properties the platform always fills (the issue's findings among the warnings).
ALWAYS_FILLED = (
    "#distribution",  # anything missing on a distribution: description, availability, licence, format
    "dcat#servesDataset",
    "dc/terms/description",
    "->dct:publisher",
    "foaf/0.1/Document",
)


def _avoidable(warnings: list[str]) -> list[str]:
    return [w for w in warnings if any(marker in w for marker in ALWAYS_FILLED)]


def _report(data: Graph, version: str) -> dict[str, list[str]]:
    """Results by severity, each as 'focus node: path: message' for a readable failure."""
    _, report, _ = validate(data, shacl_graph=_shapes(version), inference="none", allow_warnings=True)
    out: dict[str, list[str]] = {"Violation": [], "Warning": [], "Info": []}
    for result in report.subjects(RDF.type, SH.ValidationResult):
        severity = str(report.value(result, SH.resultSeverity)).rsplit("#", 1)[-1]
        line = f"{report.value(result, SH.focusNode)}: {report.value(result, SH.resultPath)}: "
        line += str(report.value(result, SH.resultMessage))
        out.setdefault(severity, []).append(line)
    return out


@pytest.fixture
async def fresh_settings(settings: Settings) -> Settings:
    """What the quick start gives: default settings (the publisher is taken from the territory's name)."""
    return settings


async def _catalog(settings: Settings, engine: AsyncEngine) -> Graph:
    app = create_app(settings, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        response = await http.get("/dcat/catalog.ttl", params={"page_size": 1000})
        assert response.status_code == 200, response.text
    graph = Graph()
    graph.parse(data=response.content, format="turtle")
    return graph


@pytest.mark.parametrize("version", ["2.1.1", "3.0.1"])
async def test_a_fresh_install_has_no_violation(
    fresh_settings: Settings, engine: AsyncEngine, db: asyncpg.Connection, version: str
) -> None:
    graph = await _catalog(fresh_settings, engine)
    report = _report(graph, version)
    assert report["Violation"] == []
    assert _avoidable(report["Warning"]) == []
    publisher = graph.value(URIRef("http://testserver/dcat/catalog"), DCTERMS.publisher)
    assert str(graph.value(publisher, FOAF.name)) == fresh_settings.territory_name


@pytest.fixture
async def demo_catalog(settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> Graph:
    await load_demo(settings, history_hours=2)
    return await _catalog(settings, engine)


async def test_the_demo_has_no_violation_against_either_version(demo_catalog: Graph) -> None:
    datasets = set(demo_catalog.subjects(RDF.type, DCAT.Dataset))
    assert len(datasets) >= 3
    for version in SHAPES:
        report = _report(demo_catalog, version)
        assert report["Violation"] == [], version
        assert _avoidable(report["Warning"]) == [], version
    # the landing page is the portal's page, a foaf:Document distinct from the dataset
    for dataset in datasets:
        page = demo_catalog.value(dataset, DCAT.landingPage)
        assert isinstance(page, URIRef) and page != dataset
        assert (page, RDF.type, FOAF.Document) in demo_catalog
        assert str(dataset) == f"{page}#dataset"
    for service in demo_catalog.subjects(RDF.type, DCAT.DataService):
        assert demo_catalog.value(service, DCAT.servesDataset) is not None, service


def test_the_shapes_catch_what_the_issue_found() -> None:
    """The shapes are the real ones: the catalog shape as it was (no publisher, landing page = dataset,
    untyped homepage) is reported."""
    data = Graph()
    data.parse(
        data="""
        @prefix dcat: <http://www.w3.org/ns/dcat#> . @prefix dct: <http://purl.org/dc/terms/> .
        @prefix foaf: <http://xmlns.com/foaf/0.1/> .
        <http://x/dcat/catalog> a dcat:Catalog ; dct:title "t"@fr ; dct:description "d"@fr ;
            foaf:homepage <http://x/> ; dcat:dataset <http://x/datasets/a> .
        <http://x/datasets/a> a dcat:Dataset ; dct:title "a"@fr ; dct:description "a"@fr ;
            dcat:landingPage <http://x/datasets/a> .
        """,
        format="turtle",
    )
    for version in SHAPES:
        violations = _report(data, version)["Violation"]
        assert any("publisher" in v for v in violations), (version, violations)
