"""DCAT-AP catalog parsed back with rdflib: every field udata's harvester reads, for every public dataset."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from rdflib import BNode, Graph, Literal, URIRef
from rdflib import namespace as rns
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.catalog.dcat import GEOJSON_LITERAL, HYDRA, LOCN, VCARD
from territoire_data.settings import Settings
from tests.catalog_helpers import AUTH, FULL_METADATA, add_point_table, add_sensor, create_dataset

pytestmark = pytest.mark.db

FORMATS = {"jsonld": "json-ld", "ttl": "turtle", "rdf": "xml"}


@pytest.fixture
async def api(settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings.model_copy(update={"catalog_publisher": "Ville de Testville"}),
        engine=engine,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield http


async def fill_catalog(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await create_dataset(api, "sanisettes", "Toilettes publiques", **FULL_METADATA)
    await add_point_table(db, "sanisettes", [("a", 2.3, 48.8, "2024-01-02"), ("b", 2.4, 48.9, "2024-06-30")])
    await create_dataset(
        api, "air", "Qualité de l'air", kind="sensors", **{**FULL_METADATA, "licence": "odbl-1.0", "themes": ["ENVI"]}
    )
    await add_sensor(db, "air", lon=4.8, lat=45.7, values=[10.0, 12.0])
    await add_sensor(db, "air", lon=4.9, lat=45.8, values=[8.0, 9.0], name="Capteur PM10")
    await create_dataset(api, "secret", "Registre secret", access="restricted", **FULL_METADATA)
    await add_point_table(db, "secret", [("s", 1.0, 47.0, "2020-01-01"), ("t", 1.5, 47.5, "2020-02-01")])


async def parse(api: httpx.AsyncClient, extension: str, **params: object) -> Graph:
    response = await api.get(f"/dcat/catalog.{extension}", params=params)  # type: ignore[arg-type]
    assert response.status_code == 200, response.text
    graph = Graph()
    graph.parse(data=response.content, format=FORMATS[extension])
    return graph


@pytest.mark.parametrize("extension", ["jsonld", "ttl", "rdf"])
async def test_every_public_dataset_has_every_field_udata_reads(
    api: httpx.AsyncClient, db: asyncpg.Connection, extension: str
) -> None:
    await fill_catalog(api, db)
    graph = await parse(api, extension)
    datasets = set(graph.subjects(rns.RDF.type, rns.DCAT.Dataset))
    # the dataset is a thing (#dataset), its portal page the landing page (a foaf:Document, DCAT-AP)
    assert datasets == {
        URIRef("http://testserver/datasets/sanisettes#dataset"),
        URIRef("http://testserver/datasets/air#dataset"),
    }

    catalog = URIRef("http://testserver/dcat/catalog")
    assert (catalog, rns.RDF.type, rns.DCAT.Catalog) in graph
    assert set(graph.objects(catalog, rns.DCAT.dataset)) == datasets

    for node in datasets:
        slug = str(node).rsplit("/", 1)[-1].removesuffix("#dataset")
        assert graph.value(node, rns.DCAT.landingPage) == URIRef(f"http://testserver/datasets/{slug}")
        api_view = (await api.get(f"/api/v1/datasets/{slug}")).json()
        one = lambda p, n=node: list(graph.objects(n, p))  # noqa: E731
        assert one(rns.DCTERMS.identifier) == [Literal(api_view["identifier"])]
        assert str(one(rns.DCTERMS.title)[0]) == api_view["title"]
        assert str(one(rns.DCTERMS.description)[0]) == FULL_METADATA["description"]
        assert sorted(str(k) for k in one(rns.DCAT.keyword)) == sorted(FULL_METADATA["keywords"])
        themes = one(rns.DCAT.theme)
        assert themes
        for theme in themes:
            assert str(theme).startswith("http://publications.europa.eu/resource/authority/data-theme/")
            assert any(label.language == "fr" for label in graph.objects(theme, rns.SKOS.prefLabel))
        assert len(one(rns.DCTERMS.issued)) == 1
        assert len(one(rns.DCTERMS.modified)) == 1
        licence = {"sanisettes": "https://www.etalab.gouv.fr/licence-ouverte-open-licence"}.get(
            slug, "https://opendatacommons.org/licenses/odbl/1-0/"
        )
        assert one(rns.DCTERMS.license) == [URIRef(licence)]
        assert one(rns.DCTERMS.accrualPeriodicity) == [
            URIRef("http://publications.europa.eu/resource/authority/frequency/MONTHLY")
        ]
        (period,) = one(rns.DCTERMS.temporal)
        assert (period, rns.RDF.type, rns.DCTERMS.PeriodOfTime) in graph
        assert graph.value(period, rns.DCAT.startDate) is not None
        assert graph.value(period, rns.DCAT.endDate) is not None
        (location,) = one(rns.DCTERMS.spatial)
        geometry = graph.value(location, LOCN.geometry)
        assert geometry is not None
        assert geometry.datatype == GEOJSON_LITERAL
        assert json.loads(str(geometry))["type"] == "Polygon"
        assert graph.value(location, rns.DCAT.bbox) is not None
        (contact,) = one(rns.DCAT.contactPoint)
        assert str(graph.value(contact, VCARD.fn)) == "Service données"
        assert graph.value(contact, VCARD.hasEmail) == URIRef("mailto:donnees@testville.fr")
        (publisher,) = one(rns.DCTERMS.publisher)
        assert str(graph.value(publisher, rns.FOAF.name)) == "Ville de Testville"
        assert one(rns.DCTERMS.conformsTo) == [URIRef(FULL_METADATA["conforms_to"])]

        distributions = one(rns.DCAT.distribution)
        formats = {str(graph.value(d, rns.DCTERMS.format)).rsplit("/", 1)[-1] for d in distributions}
        for dist in distributions:
            assert (dist, rns.RDF.type, rns.DCAT.Distribution) in graph
            assert graph.value(dist, rns.DCAT.mediaType) is not None
            assert graph.value(dist, rns.DCTERMS.format) is not None
            assert graph.value(dist, rns.DCAT.accessURL) is not None
            assert graph.value(dist, rns.DCTERMS.license) == URIRef(licence)
        if slug == "sanisettes":
            assert formats == {"CSV", "GEOJSON", "PARQUET", "GPKG", "BIN", "SHP", "JSON"}
            downloads = {str(graph.value(d, rns.DCAT.downloadURL)) for d in distributions} - {"None"}
            assert downloads == {
                f"http://testserver/api/v1/datasets/sanisettes/exports/{f}"
                for f in ("csv", "geojson", "parquet", "gpkg", "fgb", "shapefile")
            }
            csv = next(d for d in distributions if str(graph.value(d, rns.DCTERMS.format)).endswith("/CSV"))
            assert graph.value(csv, rns.DCAT.mediaType) == URIRef(
                "https://www.iana.org/assignments/media-types/text/csv"
            )
        else:
            apis = [d for d in distributions if graph.value(d, rns.DCAT.downloadURL) is None]
            assert len(apis) == 2, "one SensorThings distribution per datastream"
            for dist in apis:
                assert graph.value(dist, rns.DCAT.accessService) == URIRef("http://testserver/sta/v1.1")
            downloads = {str(graph.value(d, rns.DCAT.downloadURL)) for d in distributions} - {"None"}
            assert downloads == {f"http://testserver/api/v1/datasets/air/exports/{f}" for f in ("csv", "parquet")}

    services = set(graph.subjects(rns.RDF.type, rns.DCAT.DataService))
    assert {URIRef("http://testserver/sta/v1.1"), URIRef("http://testserver/ogcapi")} <= services
    sta = URIRef("http://testserver/sta/v1.1")
    assert graph.value(sta, rns.DCAT.endpointURL) == sta
    assert set(graph.objects(sta, rns.DCAT.servesDataset)) == {URIRef("http://testserver/datasets/air#dataset")}
    assert set(graph.objects(URIRef("http://testserver/ogcapi"), rns.DCAT.servesDataset)) == {
        URIRef("http://testserver/datasets/sanisettes#dataset")
    }


async def test_restricted_dataset_is_nowhere_in_the_dcat_output(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await fill_catalog(api, db)
    for extension in FORMATS:
        response = await api.get(f"/dcat/catalog.{extension}", headers=AUTH)
        assert "secret" not in response.text.lower()
        assert "Registre" not in response.text
    graph = await parse(api, "ttl")
    total = graph.value(predicate=rns.RDF.type, object=HYDRA.PagedCollection)
    assert int(graph.value(total, HYDRA.totalItems)) == 2  # type: ignore[arg-type]


async def test_hydra_paging_walks_the_whole_catalog(api: httpx.AsyncClient) -> None:
    for i in range(5):
        await create_dataset(api, f"jeu-{i}", f"Jeu {i}")
    seen: list[str] = []
    url: str | None = "http://testserver/dcat/catalog.ttl?page=1&page_size=2"
    pages = 0
    while url:
        response = await api.get(url)
        graph = Graph().parse(data=response.text, format="turtle")
        seen += sorted(str(s) for s in graph.subjects(rns.RDF.type, rns.DCAT.Dataset))
        view = graph.value(predicate=rns.RDF.type, object=HYDRA.PartialCollectionView)
        assert int(graph.value(view, HYDRA.totalItems)) == 5  # type: ignore[arg-type]
        assert graph.value(view, HYDRA.next) == graph.value(view, HYDRA.nextPage)
        next_page = graph.value(view, HYDRA.next)
        url = str(next_page) if next_page else None
        pages += 1
    assert pages == 3
    assert seen == [f"http://testserver/datasets/jeu-{i}#dataset" for i in range(5)]


@pytest.mark.parametrize(
    ("accept", "media_type"),
    [
        ("text/turtle", "text/turtle"),
        ("application/rdf+xml", "application/rdf+xml"),
        ("application/ld+json", "application/ld+json"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "application/ld+json"),
        ("application/rdf+xml;q=0.5, text/turtle;q=0.9", "text/turtle"),
        (None, "application/ld+json"),
    ],
)
async def test_content_negotiation_on_dcat_catalog(
    api: httpx.AsyncClient, db: asyncpg.Connection, accept: str | None, media_type: str
) -> None:
    await create_dataset(api, "jeu", "Jeu", **FULL_METADATA)
    headers = {"Accept": accept} if accept else {}
    response = await api.get("/dcat/catalog", headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert "Accept" in [v.strip() for v in response.headers["vary"].split(",")]
    fmt = {"text/turtle": "turtle", "application/rdf+xml": "xml", "application/ld+json": "json-ld"}[media_type]
    graph = Graph().parse(data=response.content, format=fmt)
    assert len(set(graph.subjects(rns.RDF.type, rns.DCAT.Dataset))) == 1


async def test_unacceptable_media_type_is_406_problem(api: httpx.AsyncClient) -> None:
    response = await api.get("/dcat/catalog", headers={"Accept": "image/png"})
    assert response.status_code == 406
    assert response.headers["content-type"] == "application/problem+json"


@pytest.mark.parametrize("extension", ["jsonld", "ttl", "rdf"])
async def test_same_catalog_serialises_to_the_same_bytes(
    api: httpx.AsyncClient, db: asyncpg.Connection, extension: str
) -> None:
    """Harvesters compare documents: blank nodes (period, location, contact, publisher) keep their labels from one
    request to the next, so an unchanged catalog is byte-for-byte the same document."""
    await fill_catalog(api, db)
    first = await api.get(f"/dcat/catalog.{extension}")
    second = await api.get(f"/dcat/catalog.{extension}")
    assert first.status_code == second.status_code == 200
    assert first.content == second.content
    graph = Graph().parse(data=first.content, format=FORMATS[extension])
    blank = {o for o in graph.objects() if isinstance(o, BNode)}
    assert len(blank) >= 4  # the fixture's datasets do have blank nodes: the comparison above means something
