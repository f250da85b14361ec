"""Collection metadata as outside clients read it: OWSLib on the OGC API – Features collection (description,
keywords, licence link, extent, a link to the dataset's DCAT record), rdflib on that record
(`/dcat/datasets/{slug}.ttl|.jsonld|.rdf`), checked against DCAT-AP 3.0.1's shapes too; restricted: 404.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest
from owslib.ogcapi.features import Features
from rdflib import Graph, Literal, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, RDF

from territoire_data.catalog.datasets import DatasetMeta
from territoire_data.ingest.files.loader import ImportOptions, import_csv
from territoire_data.settings import Settings
from tests.conftest import FIXTURES, LiveServer
from tests.integration.test_dcat_ap_shapes import _report

pytestmark = [pytest.mark.e2e, pytest.mark.db]

META = DatasetMeta(
    title="Toilettes publiques de Paris",
    description="Sanisettes de la Ville de Paris : adresse, horaires, accès PMR.",
    keywords=("sanisettes", "toilettes", "propreté"),
    licence="odbl-1.0",
    status="published",
)
RDF_FORMATS = {"ttl": "turtle", "jsonld": "json-ld", "rdf": "xml"}


@pytest.fixture
async def loaded(db: asyncpg.Connection) -> None:
    csv = FIXTURES / "csv" / "paris_sanisettes.csv"
    await import_csv(db, csv, "sanisettes", ImportOptions(create=True, meta=META))
    secret = DatasetMeta(title="Registre interne", description="interne", access="restricted", status="published")
    await import_csv(db, csv, "registre", ImportOptions(create=True, meta=secret))


@pytest.fixture
def server(settings: Settings, loaded: None) -> Iterator[LiveServer]:
    live = LiveServer(settings)
    live.start()
    yield live
    live.stop()


def test_owslib_reads_the_collection_metadata(server: LiveServer) -> None:
    api = Features(f"{server.url}/ogcapi")
    collection: dict[str, Any] = api.collection("sanisettes")
    assert collection["title"] == META.title
    assert collection["description"] == META.description
    assert sorted(collection["keywords"]) == sorted(META.keywords)
    west, south, east, north = collection["extent"]["spatial"]["bbox"][0]
    assert 2.2 < west < east < 2.5 and 48.8 < south < north < 48.95
    links = {(link["rel"], link.get("type")): link["href"] for link in collection["links"]}
    assert links[("license", "text/html")] == "https://opendatacommons.org/licenses/odbl/1-0/"
    record = links[("describedby", "text/turtle")]
    assert record == f"{server.url}/dcat/datasets/sanisettes.ttl"
    assert links[("describedby", "application/ld+json")].endswith("/dcat/datasets/sanisettes.jsonld")
    # the link leads to the dataset's record
    graph = Graph().parse(data=httpx.get(record, timeout=30).text, format="turtle")
    dataset = URIRef(f"{server.url}/datasets/sanisettes#dataset")
    assert (dataset, RDF.type, DCAT.Dataset) in graph
    assert "registre" not in str([c["id"] for c in api.collections()["collections"]])


def test_each_dataset_has_its_dcat_record_in_three_serialisations(server: LiveServer) -> None:
    dataset = URIRef(f"{server.url}/datasets/sanisettes#dataset")
    for extension, rdf_format in RDF_FORMATS.items():
        response = httpx.get(f"{server.url}/dcat/datasets/sanisettes.{extension}", timeout=30)
        assert response.status_code == 200, response.text
        graph = Graph().parse(data=response.content, format=rdf_format)
        assert graph.value(dataset, DCTERMS.title) == Literal(META.title, lang="fr")
        assert set(map(str, graph.objects(dataset, DCAT.keyword))) == set(META.keywords)
        assert (graph.value(dataset, DCAT.landingPage), RDF.type, FOAF.Document) in graph
        assert graph.value(dataset, DCTERMS.isPartOf) == URIRef(f"{server.url}/dcat/catalog")
        formats = {
            str(graph.value(d, DCTERMS.format)).rsplit("/", 1)[-1] for d in graph.objects(dataset, DCAT.distribution)
        }
        assert {"CSV", "GPKG", "SHP", "GEOJSON"} <= formats
        if extension == "ttl":
            for version in ("2.1.1", "3.0.1"):
                assert _report(graph, version)["Violation"] == [], version
    for path in ("/dcat/datasets/registre.ttl", "/dcat/datasets/absent.jsonld"):
        response = httpx.get(f"{server.url}{path}", timeout=30)
        assert response.status_code == 404
        assert response.headers["content-type"] == "application/problem+json"
