"""DCAT-AP catalog as one rdflib graph, serialised as JSON-LD, Turtle or RDF/XML, with Hydra paging.

Field choices follow what udata's DCAT harvester (data.gouv.fr) and ckanext-dcat read: dct:identifier (our
permanent UUID), licences as URIs, themes as EU data-theme concepts with skos:prefLabel (udata turns labels into
tags), EU frequency URIs, dct:PeriodOfTime with dcat:startDate/endDate, dct:spatial with a GeoJSON polygon
(locn:geometry) and a WKT dcat:bbox, dcat:contactPoint as a vCard with fn and hasEmail, one dcat:Distribution per
format, dcat:DataService entries for our APIs, and both Hydra paging styles (PartialCollectionView + next,
PagedCollection + nextPage). Free of FastAPI so it is unit-testable.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote, urlencode

import orjson
from rdflib import BNode, Graph, Literal, Namespace, URIRef
from rdflib.namespace import DCAT, DCTERMS, FOAF, PROV, RDF, RDFS, SKOS, XSD

from territoire_data.catalog.metadata import (
    EU_ACCESS_RIGHT_BASE,
    EU_FILE_TYPE_BASE,
    EU_FREQUENCY_BASE,
    FORMATS,
    IANA_MEDIA_TYPE_BASE,
    LICENCES,
    THEMES,
    DatasetPublic,
)

VCARD = Namespace("http://www.w3.org/2006/vcard/ns#")
LOCN = Namespace("http://www.w3.org/ns/locn#")
HYDRA = Namespace("http://www.w3.org/ns/hydra/core#")
ADMS = Namespace("http://www.w3.org/ns/adms#")
DCATAP = Namespace("http://data.europa.eu/r5r/")
GEOJSON_LITERAL = URIRef("https://www.iana.org/assignments/media-types/application/vnd.geo+json")
WKT_LITERAL = URIRef("http://www.opengis.net/ont/geosparql#wktLiteral")
LANGUAGE_FRA = URIRef("http://publications.europa.eu/resource/authority/language/FRA")
EU_THEMES = URIRef("http://publications.europa.eu/resource/authority/data-theme")
# Our exports and APIs answer from the live tables as long as the dataset is published: a stable availability.
AVAILABILITY_STABLE = URIRef("http://publications.europa.eu/resource/authority/planned-availability/STABLE")
# The ADMS publisher type of a local government (DCAT-AP recommends dct:type on agents).
LOCAL_AUTHORITY = URIRef("http://purl.org/adms/publishertype/LocalAuthority")
# What each licence lets users do, as ADMS licence types (DCAT-AP recommends dct:type on licence documents).
# Labels of the concepts we name from outside vocabularies (DCAT-AP 3 wants a skos:prefLabel on each).
CONCEPT_LABELS: dict[str, tuple[str, str]] = {
    "LocalAuthority": ("Autorité locale", "Local Authority"),
    "Attribution": ("Attribution", "Attribution"),
    "ShareAlike": ("Partage dans les mêmes conditions", "Share Alike"),
    "CommercialUse": ("Usage commercial", "Commercial Use"),
    "Derivative": ("Œuvres dérivées", "Derivative Works"),
    "STABLE": ("Stable", "Stable"),
}
LICENCE_TYPES: dict[str, tuple[str, ...]] = {
    "etalab-2.0": ("Attribution", "CommercialUse", "Derivative"),
    "odbl-1.0": ("Attribution", "ShareAlike", "CommercialUse", "Derivative"),
    "cc-by-4.0": ("Attribution", "CommercialUse", "Derivative"),
    "cc-by-sa-4.0": ("Attribution", "ShareAlike", "CommercialUse", "Derivative"),
}
ADMS_LICENCE_TYPE_BASE = "http://purl.org/adms/licencetype/"
# What a distribution is, in words, per format (DCAT-AP recommends a dct:description on each).
DISTRIBUTION_DESCRIPTIONS: dict[str, str] = {
    "csv": "Export complet au format CSV (UTF-8, séparateur virgule), produit à la demande depuis la base.",
    "geojson": "Export complet au format GeoJSON (WGS 84), produit à la demande depuis la base.",
    "parquet": "Export complet au format GeoParquet (géométries WKB, WGS 84), pour les outils d'analyse.",
    "gpkg": "Export complet au format GeoPackage (OGC), pour QGIS et les SIG.",
    "fgb": "Export complet au format FlatGeobuf, lisible en flux par les SIG et le web.",
    "shapefile": "Export complet en Shapefile zippé (.shp, .shx, .dbf, .prj, .cpg), pour les SIG plus anciens.",
    "records": "API JSON des enregistrements : filtres, tri et pagination.",
    "ogcapi-features": "Collection OGC API – Features : entités GeoJSON, filtres CQL2, emprise, pagination.",
    "sensorthings": "Flux de capteur (Datastream) de l'API OGC SensorThings 1.1 : observations et métadonnées.",
}

SERIALISATIONS: dict[str, tuple[str, str]] = {
    "jsonld": ("json-ld", "application/ld+json"),
    "ttl": ("turtle", "text/turtle"),
    "rdf": ("pretty-xml", "application/rdf+xml"),
}
# Media types a client may ask /dcat/catalog for, and the extension that serves them.
NEGOTIABLE: dict[str, str] = {
    "application/ld+json": "jsonld",
    "application/json": "jsonld",
    "text/turtle": "ttl",
    "application/x-turtle": "ttl",
    "application/rdf+xml": "rdf",
    "application/xml": "rdf",
    "text/xml": "rdf",
}

STA_CONFORMS_TO = "http://www.opengis.net/doc/is/sensorthings/1.1"
OGCAPI_FEATURES_CONFORMS_TO = "http://www.opengis.net/spec/ogcapi-features-1/1.0/conf/core"


@dataclass(frozen=True)
class CatalogInfo:
    """The catalog itself: who publishes it and where it lives."""

    base_url: str
    title: str
    publisher: str


@dataclass(frozen=True)
class Page:
    """Where this page sits in the whole catalog (for Hydra paging links)."""

    number: int
    size: int
    total: int
    extension: str
    default_size: int

    @property
    def last(self) -> int:
        return max(1, -(-self.total // self.size))


def page_url(info: CatalogInfo, page: Page, number: int) -> str:
    params: dict[str, int] = {"page": number}
    if page.size != page.default_size:
        params["page_size"] = page.size
    return f"{info.base_url}/dcat/catalog.{page.extension}?{urlencode(params)}"


def negotiate(accept: str | None) -> str | None:
    """The serialisation to serve for an Accept header (JSON-LD when anything goes); None when none fits."""
    if not accept or not accept.strip():
        return "jsonld"
    choices: list[tuple[float, int, str]] = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        quality = 1.0
        for param in params:
            key, _, value = param.partition("=")
            if key.strip() == "q":
                try:
                    quality = float(value)
                except ValueError:
                    quality = 0.0
        if quality <= 0:
            continue
        media = media.lower()
        if media in NEGOTIABLE:
            choices.append((quality, -position, NEGOTIABLE[media]))
        elif media in ("*/*", "application/*", "text/html"):
            # Browsers ask for HTML first; they get JSON-LD, which they display.
            choices.append((quality - 0.001, -position, "jsonld"))
        elif media == "text/*":
            choices.append((quality - 0.001, -position, "ttl"))
    return max(choices)[2] if choices else None


def _dt(value: object) -> Literal:
    return Literal(value, datatype=XSD.dateTime)


def _bbox_geometries(bbox: Sequence[float]) -> tuple[str, str]:
    """A bounding box as a GeoJSON polygon (what udata reads) and a WKT polygon (DCAT-AP's dcat:bbox)."""
    west, south, east, north = bbox
    ring = [[west, south], [east, south], [east, north], [west, north], [west, south]]
    geojson = orjson.dumps({"type": "Polygon", "coordinates": [ring]}).decode()
    wkt = "POLYGON((" + ", ".join(f"{x} {y}" for x, y in ring) + "))"
    return geojson, wkt


def dataset_iri(base_url: str, slug: str) -> str:
    """The dataset as a thing (`…/datasets/<slug>#dataset`), apart from its portal page, the landing page."""
    return f"{base_url}/datasets/{slug}#dataset"


def _typed(graph: Graph, value: URIRef, kind: URIRef) -> URIRef:
    """A code-list value or document with the class DCAT-AP's range asks for (concepts with their labels)."""
    graph.add((value, RDF.type, kind))
    if kind == SKOS.Concept:
        french, english = CONCEPT_LABELS[str(value).rsplit("/", 1)[-1]]
        graph.add((value, SKOS.prefLabel, Literal(french, lang="fr")))
        graph.add((value, SKOS.prefLabel, Literal(english, lang="en")))
    elif kind == SKOS.ConceptScheme:
        graph.add((value, DCTERMS.title, Literal("Thèmes des données (UE)", lang="fr")))
        graph.add((value, DCTERMS.title, Literal("Data Theme (EU)", lang="en")))
    return value


def _add_dataset(graph: Graph, ds: DatasetPublic, info: CatalogInfo, services: dict[str, URIRef]) -> URIRef:
    landing = f"{info.base_url}/datasets/{ds.slug}"
    node = URIRef(dataset_iri(info.base_url, ds.slug))
    graph.add((node, RDF.type, DCAT.Dataset))
    graph.add((node, DCTERMS.identifier, Literal(str(ds.identifier))))
    graph.add((node, DCTERMS.title, Literal(ds.title, lang="fr")))
    graph.add((node, DCTERMS.description, Literal(ds.description.strip() or ds.title, lang="fr")))
    page = _typed(graph, URIRef(landing), FOAF.Document)
    graph.add((node, DCAT.landingPage, page))
    graph.add((page, DCTERMS.title, Literal(f"{ds.title} — portail", lang="fr")))
    graph.add((node, DCTERMS.language, _typed(graph, LANGUAGE_FRA, DCTERMS.LinguisticSystem)))
    graph.add(
        (node, DCTERMS.accessRights, _typed(graph, URIRef(EU_ACCESS_RIGHT_BASE + "PUBLIC"), DCTERMS.RightsStatement))
    )
    graph.add((node, DCTERMS.issued, _dt(ds.created)))
    graph.add((node, DCTERMS.modified, _dt(ds.modified)))
    for keyword in ds.keywords:
        graph.add((node, DCAT.keyword, Literal(keyword, lang="fr")))
    for theme in ds.themes:
        concept = URIRef(theme.uri)
        graph.add((node, DCAT.theme, concept))
        graph.add((concept, RDF.type, SKOS.Concept))
        graph.add((concept, SKOS.prefLabel, Literal(THEMES[theme.code][0], lang="fr")))
        graph.add((concept, SKOS.prefLabel, Literal(THEMES[theme.code][1], lang="en")))
    licence = LICENCES.get(ds.licence.id) if ds.licence else None
    if licence:
        graph.add((node, DCTERMS.license, URIRef(licence.url)))
        graph.add((URIRef(licence.url), RDF.type, DCTERMS.LicenseDocument))
        graph.add((URIRef(licence.url), DCTERMS.title, Literal(licence.title)))
        for kind in LICENCE_TYPES.get(licence.id, ()):
            graph.add(
                (URIRef(licence.url), DCTERMS.type, _typed(graph, URIRef(ADMS_LICENCE_TYPE_BASE + kind), SKOS.Concept))
            )
    if ds.update_frequency:
        frequency = _typed(graph, URIRef(EU_FREQUENCY_BASE + ds.update_frequency), DCTERMS.Frequency)
        graph.add((node, DCTERMS.accrualPeriodicity, frequency))
    if ds.temporal.start or ds.temporal.end:
        period = _bnode(node, "temporal")
        graph.add((node, DCTERMS.temporal, period))
        graph.add((period, RDF.type, DCTERMS.PeriodOfTime))
        if ds.temporal.start:
            graph.add((period, DCAT.startDate, _dt(ds.temporal.start)))
        if ds.temporal.end:
            graph.add((period, DCAT.endDate, _dt(ds.temporal.end)))
    if ds.bbox or ds.spatial_coverage:
        location = _bnode(node, "spatial")
        graph.add((node, DCTERMS.spatial, location))
        graph.add((location, RDF.type, DCTERMS.Location))
        if ds.bbox:
            geojson, wkt = _bbox_geometries(ds.bbox)
            graph.add((location, LOCN.geometry, Literal(geojson, datatype=GEOJSON_LITERAL)))
            graph.add((location, DCAT.bbox, Literal(wkt, datatype=WKT_LITERAL)))
            west, south, east, north = ds.bbox
            centroid = f"POINT({(west + east) / 2} {(south + north) / 2})"
            graph.add((location, DCAT.centroid, Literal(centroid, datatype=WKT_LITERAL)))
        if ds.spatial_coverage:
            graph.add((location, SKOS.prefLabel, Literal(ds.spatial_coverage, lang="fr")))
    if ds.contact.email or ds.contact.name:
        contact = _bnode(node, "contact")
        graph.add((node, DCAT.contactPoint, contact))
        graph.add((contact, RDF.type, VCARD.Kind))
        graph.add((contact, VCARD.fn, Literal(ds.contact.name or ds.publisher or info.publisher or ds.contact.email)))
        if ds.contact.email:
            graph.add((contact, VCARD.hasEmail, _uri(f"mailto:{ds.contact.email}")))
    if ds.publisher and ds.publisher != info.publisher:
        agent = _bnode(node, "publisher")
        graph.add((node, DCTERMS.publisher, agent))
        graph.add((agent, RDF.type, FOAF.Agent))
        graph.add((agent, FOAF.name, Literal(ds.publisher)))
    else:
        graph.add((node, DCTERMS.publisher, _catalog_publisher(graph, info)))
    standard = _typed(graph, _uri(ds.conforms_to), DCTERMS.Standard) if ds.conforms_to else None
    if standard is not None:
        graph.add((node, DCTERMS.conformsTo, standard))
    for source in ds.was_derived_from:
        graph.add((node, PROV.wasDerivedFrom, URIRef(source)))
    if ds.provenance:
        statement = _bnode(node, "provenance")
        graph.add((node, DCTERMS.provenance, statement))
        graph.add((statement, RDF.type, DCTERMS.ProvenanceStatement))
        graph.add((statement, RDFS.label, Literal(ds.provenance, lang="fr")))

    for distribution in ds.distributions:
        fmt = FORMATS[distribution.format]
        dist = URIRef(f"{landing}#distribution-{distribution.format}")
        if distribution.format == "sensorthings":
            dist = URIRef(f"{landing}#distribution-{distribution.url.rsplit('(', 1)[-1].split(')')[0]}")
        graph.add((node, DCAT.distribution, dist))
        graph.add((dist, RDF.type, DCAT.Distribution))
        graph.add((dist, DCTERMS.title, Literal(distribution.title, lang="fr")))
        description = DISTRIBUTION_DESCRIPTIONS.get(distribution.format, distribution.title)
        graph.add((dist, DCTERMS.description, Literal(description, lang="fr")))
        graph.add((dist, DCAT.accessURL, URIRef(distribution.url)))
        graph.add(
            (dist, DCAT.mediaType, _typed(graph, URIRef(IANA_MEDIA_TYPE_BASE + fmt.media_type), DCTERMS.MediaType))
        )
        graph.add(
            (
                dist,
                DCTERMS.format,
                _typed(graph, URIRef(EU_FILE_TYPE_BASE + fmt.eu_file_type), DCTERMS.MediaTypeOrExtent),
            )
        )
        graph.add((dist, DCATAP.availability, _typed(graph, AVAILABILITY_STABLE, SKOS.Concept)))
        if licence:
            graph.add((dist, DCTERMS.license, URIRef(licence.url)))
        if standard is not None and distribution.kind == "download":
            graph.add((dist, DCTERMS.conformsTo, standard))
        if distribution.kind == "download":
            # Exports are streamed from the live table, so their size is not known in advance: no dcat:byteSize.
            graph.add((dist, DCAT.downloadURL, URIRef(distribution.url)))
        else:
            service = services[{"sensorthings": "sta", "ogcapi-features": "ogcapi"}.get(distribution.format, "api")]
            graph.add((dist, DCAT.accessService, service))
            graph.add((service, DCAT.servesDataset, node))
    return node


def _catalog_publisher(graph: Graph, info: CatalogInfo) -> BNode:
    """The local government publishing the catalog (settings: never empty), one agent for all it publishes."""
    agent = _bnode(URIRef(f"{info.base_url}/dcat/catalog"), "publisher")
    graph.add((agent, RDF.type, FOAF.Agent))
    graph.add((agent, FOAF.name, Literal(info.publisher)))
    graph.add((agent, DCTERMS.type, _typed(graph, LOCAL_AUTHORITY, SKOS.Concept)))
    return agent


# Our APIs: endpoint path, title, standard, description path, keywords (DCAT-AP recommends them on services).
_SERVICES: dict[str, tuple[str, str, str | None, str, tuple[str, ...]]] = {
    "sta": (
        "/sta/v1.1",
        "OGC SensorThings API 1.1 — capteurs et observations",
        STA_CONFORMS_TO,
        "/sta/v1.1",
        ("capteurs", "observations", "SensorThings", "API"),
    ),
    "ogcapi": (
        "/ogcapi",
        "OGC API – Features — données géographiques",
        OGCAPI_FEATURES_CONFORMS_TO,
        "/ogcapi/api",
        ("données géographiques", "OGC API", "API"),
    ),
    "api": (
        "/api/v1/datasets",
        "API du catalogue et des enregistrements (JSON)",
        "https://spec.openapis.org/oas/v3.1.0",
        "/openapi.json",
        ("catalogue", "enregistrements", "API"),
    ),
}


def _add_services(graph: Graph, info: CatalogInfo, used: set[str]) -> dict[str, URIRef]:
    """Our APIs as dcat:DataService entries (SensorThings, OGC API – Features, the records API): those that
    serve a dataset of this page (a service must say which datasets it serves, dcat:servesDataset)."""
    services: dict[str, URIRef] = {}
    for key, (path, title, conforms_to, description, keywords) in _SERVICES.items():
        node = URIRef(info.base_url + path)
        services[key] = node
        if key not in used:
            continue
        graph.add((node, RDF.type, DCAT.DataService))
        graph.add((node, DCTERMS.title, Literal(title, lang="fr")))
        graph.add((node, DCTERMS.description, Literal(title, lang="fr")))
        graph.add((node, DCAT.endpointURL, URIRef(info.base_url + path)))
        graph.add((node, DCAT.endpointDescription, URIRef(info.base_url + description)))
        if conforms_to:
            graph.add((node, DCTERMS.conformsTo, _typed(graph, URIRef(conforms_to), DCTERMS.Standard)))
        graph.add(
            (
                node,
                DCTERMS.accessRights,
                _typed(graph, URIRef(EU_ACCESS_RIGHT_BASE + "PUBLIC"), DCTERMS.RightsStatement),
            )
        )
        graph.add((node, DCTERMS.publisher, _catalog_publisher(graph, info)))
        for keyword in keywords:
            graph.add((node, DCAT.keyword, Literal(keyword, lang="fr")))
    return services


def _new_graph() -> Graph:
    graph = Graph()
    for prefix, namespace in (
        ("dcat", DCAT),
        ("dct", DCTERMS),
        ("foaf", FOAF),
        ("vcard", VCARD),
        ("locn", LOCN),
        ("hydra", HYDRA),
        ("skos", SKOS),
        ("adms", ADMS),
        ("prov", PROV),
        ("rdfs", RDFS),
    ):
        graph.bind(prefix, namespace, override=True)
    return graph


def _used_services(datasets: Sequence[DatasetPublic]) -> set[str]:
    """The records API serves every dataset; SensorThings and OGC API – Features those with a distribution there."""
    used = {"api"} if datasets else set()
    for ds in datasets:
        for distribution in ds.distributions:
            if distribution.kind != "download":
                used.add({"sensorthings": "sta", "ogcapi-features": "ogcapi"}.get(distribution.format, "api"))
    return used


def dataset_graph(ds: DatasetPublic, info: CatalogInfo) -> Graph:
    """The DCAT-AP record of one dataset (`/dcat/datasets/{slug}.ttl`): the dataset, its distributions, the data
    services that serve it and its publisher, with a link to the catalog it belongs to."""
    graph = _new_graph()
    services = _add_services(graph, info, _used_services([ds]))
    node = _add_dataset(graph, ds, info, services)
    graph.add((services["api"], DCAT.servesDataset, node))
    graph.add((node, DCTERMS.isPartOf, URIRef(f"{info.base_url}/dcat/catalog")))
    return graph


def catalog_graph(datasets: Sequence[DatasetPublic], info: CatalogInfo, page: Page) -> Graph:
    """The DCAT-AP graph of one page of the catalog (public datasets only: the caller filters)."""
    graph = _new_graph()
    catalog = URIRef(f"{info.base_url}/dcat/catalog")
    graph.add((catalog, RDF.type, DCAT.Catalog))
    graph.add((catalog, DCTERMS.title, Literal(info.title, lang="fr")))
    graph.add((catalog, DCTERMS.description, Literal(f"Catalogue des données ouvertes : {info.title}", lang="fr")))
    graph.add((catalog, FOAF.homepage, _typed(graph, URIRef(f"{info.base_url}/"), FOAF.Document)))
    graph.add((catalog, DCTERMS.language, _typed(graph, LANGUAGE_FRA, DCTERMS.LinguisticSystem)))
    graph.add((catalog, DCTERMS.publisher, _catalog_publisher(graph, info)))
    graph.add((catalog, DCAT.themeTaxonomy, _typed(graph, EU_THEMES, SKOS.ConceptScheme)))
    if datasets:
        graph.add((catalog, DCTERMS.issued, _dt(min(ds.created for ds in datasets))))
        graph.add((catalog, DCTERMS.modified, _dt(max(ds.modified for ds in datasets))))
    used = _used_services(datasets)
    services = _add_services(graph, info, used)
    for key in sorted(used):
        graph.add((catalog, DCAT.service, services[key]))
    for ds in datasets:
        node = _add_dataset(graph, ds, info, services)
        graph.add((catalog, DCAT.dataset, node))
        graph.add((services["api"], DCAT.servesDataset, node))

    view = URIRef(page_url(info, page, page.number))
    for kind in (HYDRA.PartialCollectionView, HYDRA.PagedCollection):
        graph.add((view, RDF.type, kind))
    graph.add((view, HYDRA.totalItems, Literal(page.total, datatype=XSD.integer)))
    graph.add((view, HYDRA.itemsPerPage, Literal(page.size, datatype=XSD.integer)))
    links = [(HYDRA.first, HYDRA.firstPage, 1), (HYDRA.last, HYDRA.lastPage, page.last)]
    if page.number < page.last:
        links.append((HYDRA.next, HYDRA.nextPage, page.number + 1))
    if page.number > 1:
        links.append((HYDRA.previous, HYDRA.previousPage, min(page.number - 1, page.last)))
    for new_style, old_style, number in links:
        # PartialCollectionView uses hydra:next (udata), PagedCollection hydra:nextPage (older ckanext-dcat).
        target = Literal(page_url(info, page, number))
        graph.add((view, new_style, URIRef(str(target))))
        graph.add((view, old_style, URIRef(str(target))))
    return graph


def _bnode(owner: URIRef, role: str) -> BNode:
    """A blank node whose label depends only on what it describes: the same catalog serialises to the same bytes on
    every request and in every process, so a harvester comparing documents sees no change where there is none."""
    return BNode("b" + hashlib.sha256(f"{owner} {role}".encode()).hexdigest()[:20])


def _uri(text: str) -> URIRef:
    """A URI from stored text, with the characters no URI may hold escaped (rdflib refuses to write them)."""
    return URIRef(quote(text, safe="".join(chr(c) for c in range(33, 127) if chr(c) not in '<>"{}|\\^`')))


def serialise(graph: Graph, extension: str) -> tuple[bytes, str]:
    """The graph in one of our serialisations, with its media type."""
    rdflib_format, media_type = SERIALISATIONS[extension]
    if rdflib_format == "json-ld":
        context = {prefix: str(ns) for prefix, ns in graph.namespaces() if prefix}
        text = graph.serialize(format="json-ld", context=context, auto_compact=True)
    else:
        text = graph.serialize(format=rdflib_format)
    return text.encode("utf-8"), media_type
