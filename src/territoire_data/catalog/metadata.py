"""Dataset metadata model: vocabularies (licences, themes, frequencies), the API models and quality warnings.

The vocabularies are the ones data.gouv.fr (udata) and DCAT-AP read: licences by URI, themes from the EU
data-theme authority table, update frequencies from the EU frequency authority table.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal
from uuid import UUID

from pydantic import BaseModel, ConfigDict, Field, field_validator

SLUG_PATTERN = r"^[a-z0-9][a-z0-9-]{0,62}$"
# Without the characters a URI cannot hold (they end up in mailto: and http URIs of the DCAT-AP catalog).
EMAIL_PATTERN = r"^[^@\s<>\"{}|\\^`]+@[^@\s<>\"{}|\\^`]+\.[^@\s<>\"{}|\\^`]+$"
URL_PATTERN = r"^https?://[^\s<>\"{}|\\^`]+$"

EU_THEME_BASE = "http://publications.europa.eu/resource/authority/data-theme/"
EU_FREQUENCY_BASE = "http://publications.europa.eu/resource/authority/frequency/"
EU_FILE_TYPE_BASE = "http://publications.europa.eu/resource/authority/file-type/"
EU_ACCESS_RIGHT_BASE = "http://publications.europa.eu/resource/authority/access-right/"
IANA_MEDIA_TYPE_BASE = "https://www.iana.org/assignments/media-types/"


@dataclass(frozen=True)
class Licence:
    """A licence we offer, with its URI (what harvesters match on) and what it means in plain words."""

    id: str
    title: str
    url: str
    plain_fr: str
    plain_en: str
    scdl: str


LICENCES: dict[str, Licence] = {
    lic.id: lic
    for lic in (
        Licence(
            "etalab-2.0",
            "Licence Ouverte / Open Licence version 2.0",
            "https://www.etalab.gouv.fr/licence-ouverte-open-licence",
            "Vous pouvez réutiliser ces données librement, y compris commercialement, "
            "à condition de citer la source et la date de dernière mise à jour.",
            "You may reuse this data freely, commercial use included, "
            "provided you credit the source and the date of the last update.",
            "Licence Ouverte-LO",
        ),
        Licence(
            "odbl-1.0",
            "Open Database License (ODbL) 1.0",
            "https://opendatacommons.org/licenses/odbl/1-0/",
            "Vous pouvez réutiliser ces données en citant la source ; si vous diffusez une base de données "
            "qui les contient, elle doit être partagée sous la même licence.",
            "You may reuse this data if you credit the source; a database you share that contains it "
            "must be shared under the same licence.",
            "Open Database License-ODBL",
        ),
        Licence(
            "cc-by-4.0",
            "Creative Commons Attribution 4.0 International",
            "https://creativecommons.org/licenses/by/4.0/",
            "Vous pouvez réutiliser ces données librement, y compris commercialement, en citant l'auteur.",
            "You may reuse this data freely, commercial use included, if you credit the author.",
            "Creative Commons-CC",
        ),
        Licence(
            "cc-by-sa-4.0",
            "Creative Commons Attribution – Partage dans les mêmes conditions 4.0 International",
            "https://creativecommons.org/licenses/by-sa/4.0/",
            "Vous pouvez réutiliser ces données en citant l'auteur ; ce que vous en tirez doit être partagé "
            "sous la même licence.",
            "You may reuse this data if you credit the author; what you make from it must be shared "
            "under the same licence.",
            "Creative Commons-CC",
        ),
    )
}

# EU data-theme codes with their French and English labels (DCAT-AP's dcat:theme vocabulary).
THEMES: dict[str, tuple[str, str]] = {
    "AGRI": ("Agriculture, pêche, sylviculture et alimentation", "Agriculture, fisheries, forestry and food"),
    "ECON": ("Économie et finances", "Economy and finance"),
    "EDUC": ("Éducation, culture et sport", "Education, culture and sport"),
    "ENER": ("Énergie", "Energy"),
    "ENVI": ("Environnement", "Environment"),
    "GOVE": ("Gouvernement et secteur public", "Government and public sector"),
    "HEAL": ("Santé", "Health"),
    "INTR": ("Questions internationales", "International issues"),
    "JUST": ("Justice, système juridique et sécurité publique", "Justice, legal system and public safety"),
    "REGI": ("Régions et villes", "Regions and cities"),
    "SOCI": ("Population et société", "Population and society"),
    "TECH": ("Science et technologie", "Science and technology"),
    "TRAN": ("Transports", "Transport"),
}

# EU frequency codes we offer: French label, English label, SCDL "FREQ_MAJ" value.
FREQUENCIES: dict[str, tuple[str, str, str]] = {
    "UPDATE_CONT": ("En continu", "Continuously", "Continuelle"),
    "HOURLY": ("Toutes les heures", "Hourly", "Toutes les heures"),
    "DAILY": ("Quotidienne", "Daily", "Quotidienne ou plusieurs fois par jour"),
    "WEEKLY": ("Hebdomadaire", "Weekly", "Hebdomadaire ou plusieurs fois par semaine"),
    "MONTHLY": ("Mensuelle", "Monthly", "Mensuelle ou plusieurs fois par mois"),
    "BIMONTHLY": ("Bimestrielle", "Every two months", "Bimestrielle"),
    "QUARTERLY": ("Trimestrielle", "Quarterly", "Trimestrielle"),
    "ANNUAL_2": ("Semestrielle", "Twice a year", "Semestrielle"),
    "ANNUAL": ("Annuelle", "Annual", "Annuelle"),
    "BIENNIAL": ("Tous les deux ans", "Every two years", "Biennale"),
    "TRIENNIAL": ("Tous les trois ans", "Every three years", "Triennale"),
    "QUINQUENNIAL": ("Tous les cinq ans", "Every five years", "Quinquennale"),
    "IRREG": ("Irrégulière", "Irregular", "Irrégulière"),
    "AS_NEEDED": ("Ponctuelle", "As needed", "Ponctuelle"),
    "UNKNOWN": ("Inconnue", "Unknown", "Inconnue"),
}

LicenceId = Literal["etalab-2.0", "odbl-1.0", "cc-by-4.0", "cc-by-sa-4.0"]
ThemeCode = Literal[
    "AGRI", "ECON", "EDUC", "ENER", "ENVI", "GOVE", "HEAL", "INTR", "JUST", "REGI", "SOCI", "TECH", "TRAN"
]
FrequencyCode = Literal[
    "UPDATE_CONT",
    "HOURLY",
    "DAILY",
    "WEEKLY",
    "MONTHLY",
    "BIMONTHLY",
    "QUARTERLY",
    "ANNUAL_2",
    "ANNUAL",
    "BIENNIAL",
    "TRIENNIAL",
    "QUINQUENNIAL",
    "IRREG",
    "AS_NEEDED",
    "UNKNOWN",
]
Access = Literal["public", "restricted"]
Kind = Literal["table", "sensors"]


@dataclass(frozen=True)
class Format:
    """A download format of a dataset: what it is called, its media type and EU file-type code."""

    id: str
    label: str
    media_type: str
    eu_file_type: str


FORMATS: dict[str, Format] = {
    "csv": Format("csv", "CSV", "text/csv", "CSV"),
    "geojson": Format("geojson", "GeoJSON", "application/geo+json", "GEOJSON"),
    "parquet": Format("parquet", "GeoParquet", "application/vnd.apache.parquet", "PARQUET"),
    # GIS formats (exports/gis.py), for datasets with a geometry
    "gpkg": Format("gpkg", "GeoPackage", "application/geopackage+sqlite3", "GPKG"),
    "fgb": Format("fgb", "FlatGeobuf", "application/vnd.flatgeobuf", "BIN"),
    "shapefile": Format("shapefile", "Shapefile ZIP", "application/zip", "SHP"),
    "sensorthings": Format("sensorthings", "SensorThings API (JSON)", "application/json", "JSON"),
    # APIs: distributions with an access service, not download formats (never in the format facet).
    "ogcapi-features": Format("ogcapi-features", "OGC API – Features", "application/geo+json", "GEOJSON"),
    "records": Format("records", "API JSON (enregistrements)", "application/json", "JSON"),
}


def formats_for(kind: str, geometry_type: str | None) -> list[str]:
    """The formats a dataset is served in: exports for tables (GeoJSON when it has geometries), STA for sensors."""
    if kind == "sensors":
        return ["sensorthings"]
    return ["csv", "geojson", "parquet", "gpkg", "fgb", "shapefile"] if geometry_type else ["csv", "parquet"]


Keyword = str


def _clean_keywords(values: list[str]) -> list[str]:
    seen: list[str] = []
    for value in values:
        word = " ".join(value.split())
        if not word:
            raise ValueError("keywords cannot be empty")
        if len(word) > 100:
            raise ValueError("a keyword has at most 100 characters")
        if word not in seen:
            seen.append(word)
    return seen


class DatasetFields(BaseModel):
    """Fields a publisher may set (shared by create and update); wire names are the attribute names."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str = Field(min_length=1, max_length=300)
    description: str = Field(default="", max_length=20_000)
    keywords: list[Keyword] = Field(default_factory=list, max_length=50)
    themes: list[ThemeCode] = Field(default_factory=list, max_length=13)
    licence: LicenceId | None = None
    publisher: str | None = Field(default=None, max_length=300)
    contact_name: str | None = Field(default=None, max_length=300)
    contact_email: str | None = Field(default=None, max_length=300, pattern=EMAIL_PATTERN)
    access: Access = "public"
    update_frequency: FrequencyCode | None = None
    conforms_to: str | None = Field(
        default=None, max_length=2000, pattern=URL_PATTERN, description="URL of the Table Schema it follows"
    )
    spatial_coverage: str | None = Field(
        default=None, max_length=200, description="name of the area covered, e.g. the commune"
    )

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str]) -> list[str]:
        return _clean_keywords(value)


class DatasetCreate(DatasetFields):
    """A new dataset: its slug (permanent: it is in every URL) and kind, then the metadata."""

    slug: str = Field(pattern=SLUG_PATTERN, description="permanent, lower-case, in every URL of the dataset")
    kind: Kind = "table"


class DatasetUpdate(BaseModel):
    """A partial update: only the fields sent change; slug and kind never change."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    title: str | None = Field(default=None, min_length=1, max_length=300)
    description: str | None = Field(default=None, max_length=20_000)
    keywords: list[Keyword] | None = Field(default=None, max_length=50)
    themes: list[ThemeCode] | None = Field(default=None, max_length=13)
    licence: LicenceId | None = None
    publisher: str | None = Field(default=None, max_length=300)
    contact_name: str | None = Field(default=None, max_length=300)
    contact_email: str | None = Field(default=None, max_length=300, pattern=EMAIL_PATTERN)
    access: Access | None = None
    update_frequency: FrequencyCode | None = None
    conforms_to: str | None = Field(default=None, max_length=2000, pattern=URL_PATTERN)
    spatial_coverage: str | None = Field(default=None, max_length=200)

    @field_validator("keywords")
    @classmethod
    def _keywords(cls, value: list[str] | None) -> list[str] | None:
        return None if value is None else _clean_keywords(value)


class LicencePublic(BaseModel):
    id: str
    title: str
    url: str


class ThemePublic(BaseModel):
    code: str
    label: str
    uri: str


class Contact(BaseModel):
    name: str | None = None
    email: str | None = None


class Temporal(BaseModel):
    start: datetime | None = None
    end: datetime | None = None


class Distribution(BaseModel):
    """One way to get the data: a download (exports) or an API."""

    format: str
    title: str
    media_type: str
    url: str
    kind: Literal["download", "api"]


class Link(BaseModel):
    rel: str
    href: str
    type: str | None = None
    title: str | None = None


class QualityWarning(BaseModel):
    """A metadata gap a publisher should fill (harvesters and re-users need it)."""

    field: str
    message: str


class DatasetPublic(BaseModel):
    """A dataset as anyone sees it in the catalog."""

    identifier: UUID = Field(description="stable forever (dct:identifier)")
    slug: str
    kind: Kind
    title: str
    description: str
    keywords: list[str]
    themes: list[ThemePublic]
    licence: LicencePublic | None
    publisher: str | None
    contact: Contact
    access: Access
    status: Literal["draft", "published"] = Field(
        description="draft: seen only by its writers, 404 to everyone else; published: in the portal and DCAT"
    )
    published: datetime | None = Field(default=None, description="when it was last published")
    update_frequency: str | None
    conforms_to: str | None
    spatial_coverage: str | None
    table_schema: dict[str, Any] | None
    row_count: int | None
    geometry_type: str | None
    bbox: list[float] | None = Field(description="spatial extent computed from the data: [west, south, east, north]")
    temporal: Temporal = Field(description="temporal extent computed from the data")
    created: datetime
    modified: datetime
    formats: list[str]
    distributions: list[Distribution]
    links: list[Link]
    was_derived_from: list[str] = Field(
        default_factory=list, description="the datasets it is computed from (prov:wasDerivedFrom), for derived datasets"
    )
    provenance: str | None = Field(None, description="how it is computed (dct:provenance), for derived datasets")


class DatasetPublisherView(DatasetPublic):
    """What the publisher sees: the public view plus metadata quality warnings and what publishing still needs."""

    quality_warnings: list[QualityWarning]
    missing_for_publication: list[QualityWarning] = Field(
        description="fields to fill before `POST …/publish` succeeds (empty: it may be published)"
    )


class FacetValue(BaseModel):
    value: str
    label: str
    count: int


class DatasetList(BaseModel):
    """A page of datasets with facets and paging links."""

    items: list[DatasetPublic]
    total: int
    limit: int
    offset: int
    next: str | None
    facets: dict[str, list[FacetValue]]
    links: list[Link]


# Under this many characters a description says nothing a title does not (the quality warning agrees).
MIN_DESCRIPTION = 30


@dataclass(frozen=True)
class Missing:
    """One field a dataset needs before it is published (catalog.publishing), and what to do about it."""

    field: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"field": self.field, "message": self.message}


def missing_metadata(row: dict[str, Any]) -> list[Missing]:
    """What a dataset row (title, description, licence, publisher, update_frequency, themes, slug) lacks to be
    published on data.gouv.fr and harvested from our DCAT catalog."""
    missing: list[Missing] = []
    title = (row.get("title") or "").strip()
    if not title or title == row.get("slug"):
        missing.append(Missing("title", "Titre : donnez un titre lisible, pas l'identifiant du jeu de données."))
    if len((row.get("description") or "").strip()) < MIN_DESCRIPTION:
        missing.append(
            Missing(
                "description",
                f"Description : dites en au moins {MIN_DESCRIPTION} caractères ce que contient le jeu de données.",
            )
        )
    if not row.get("licence") or row["licence"] not in LICENCES:
        missing.append(Missing("licence", "Licence : choisissez sous quelle licence les données sont réutilisables."))
    if not (row.get("publisher") or "").strip():
        missing.append(
            Missing("publisher", "Producteur : nommez la collectivité ou le service qui produit les données.")
        )
    if not row.get("update_frequency"):
        missing.append(Missing("update_frequency", "Fréquence de mise à jour : indiquez-la (même « Ponctuelle »)."))
    if not row.get("themes"):
        missing.append(Missing("themes", "Thèmes : choisissez au moins un thème."))
    return missing


def quality_warnings(
    *, licence: str | None, description: str, contact_name: str | None, contact_email: str | None, **_: Any
) -> list[QualityWarning]:
    """The gaps that keep a dataset from being well reused or harvested: licence, description, contact."""
    warnings: list[QualityWarning] = []
    if not licence:
        warnings.append(
            QualityWarning(
                field="licence",
                message="Aucune licence : les réutilisateurs ne savent pas ce qu'ils ont le droit de faire.",
            )
        )
    if len(description.strip()) < MIN_DESCRIPTION:
        warnings.append(
            QualityWarning(
                field="description",
                message="Description absente ou trop courte (moins de 30 caractères) : "
                "dites ce que contient le jeu de données.",
            )
        )
    if not contact_email:
        warnings.append(
            QualityWarning(
                field="contact",
                message="Aucun contact (courriel) : personne ne peut poser de question sur ces données.",
            )
        )
    elif not contact_name:
        warnings.append(QualityWarning(field="contact", message="Le contact n'a pas de nom."))
    return warnings


def distributions_for(row: dict[str, Any], base_url: str) -> list[Distribution]:
    """Every way to get a dataset: one download per export format, then the APIs that serve it."""
    slug = row["slug"]
    api = f"{base_url}/api/v1/datasets/{slug}"
    result: list[Distribution] = []
    if row["kind"] == "sensors":
        # The observations as files first (every series, streamed; `start`/`end` choose a period), then each
        # Datastream's SensorThings API, named after what it measures.
        for name in ("csv", "parquet"):
            fmt = FORMATS[name]
            label = "Parquet" if name == "parquet" else fmt.label
            result.append(
                Distribution(
                    format=fmt.id,
                    title=f"{row['title']} — mesures ({label})",
                    media_type=fmt.media_type,
                    url=f"{api}/exports/{name}",
                    kind="download",
                )
            )
        names = list(row.get("datastream_names") or [])
        for index, datastream_id in enumerate(row.get("datastream_ids") or []):
            fmt = FORMATS["sensorthings"]
            label = names[index] if index < len(names) and names[index] else f"Datastream {datastream_id}"
            result.append(
                Distribution(
                    format=fmt.id,
                    title=f"{label} — API SensorThings",
                    media_type=fmt.media_type,
                    url=f"{base_url}/sta/v1.1/Datastreams({datastream_id})/Observations",
                    kind="api",
                )
            )
        return result
    for name in formats_for(row["kind"], row.get("geometry_type")):
        fmt = FORMATS[name]
        result.append(
            Distribution(
                format=fmt.id,
                title=f"{row['title']} ({fmt.label})",
                media_type=fmt.media_type,
                url=f"{api}/exports/{name}",
                kind="download",
            )
        )
    if row.get("geometry_type"):
        fmt = FORMATS["ogcapi-features"]
        result.append(
            Distribution(
                format=fmt.id,
                title=f"{row['title']} — OGC API – Features",
                media_type=fmt.media_type,
                url=f"{base_url}/ogcapi/collections/{slug}/items",
                kind="api",
            )
        )
    fmt = FORMATS["records"]
    result.append(
        Distribution(
            format=fmt.id, title=f"{row['title']} — API", media_type=fmt.media_type, url=f"{api}/records", kind="api"
        )
    )
    return result


def dataset_public(row: dict[str, Any], base_url: str, *, publisher_view: bool = False) -> DatasetPublic:
    """Turn a catalog row (see store.SELECT_COLUMNS) into the public model, or the publisher's one."""
    extra = row.get("extra") or {}
    licence = LICENCES.get(row["licence"] or "")
    bbox = None
    if row.get("west") is not None:
        bbox = [float(row["west"]), float(row["south"]), float(row["east"]), float(row["north"])]
    slug = row["slug"]
    values: dict[str, Any] = {
        "identifier": row["identifier"],
        "slug": slug,
        "kind": row["kind"],
        "title": row["title"],
        "description": row["description"],
        "keywords": list(row["keywords"] or []),
        "themes": [
            ThemePublic(code=code, label=THEMES[code][0], uri=EU_THEME_BASE + code)
            for code in row["themes"] or []
            if code in THEMES
        ],
        "licence": LicencePublic(id=licence.id, title=licence.title, url=licence.url) if licence else None,
        "publisher": row["publisher"],
        "contact": Contact(name=row["contact_name"], email=row["contact_email"]),
        "access": row["access"],
        "status": row.get("status", "published"),
        "published": row.get("published_at"),
        "update_frequency": row["update_frequency"],
        "conforms_to": extra.get("conforms_to"),
        "spatial_coverage": extra.get("spatial_coverage"),
        "table_schema": row.get("table_schema"),
        "row_count": row.get("row_count"),
        "geometry_type": row.get("geometry_type"),
        "bbox": bbox,
        "temporal": Temporal(start=row.get("temporal_start"), end=row.get("temporal_end")),
        "created": row["created_at"],
        "modified": row["modified_at"],
        "formats": formats_for(row["kind"], row.get("geometry_type")),
        "distributions": distributions_for(row, base_url),
        "links": [
            Link(rel="self", href=f"{base_url}/api/v1/datasets/{slug}", type="application/json"),
            Link(rel="alternate", href=f"{base_url}/datasets/{slug}", type="text/html", title="Page du jeu de données"),
            Link(rel="describedby", href=f"{base_url}/dcat/catalog.jsonld", type="application/ld+json"),
        ],
        "was_derived_from": [f"{base_url}/datasets/{source}#dataset" for source in extra.get("derived_from") or []],
        "provenance": extra.get("provenance"),
    }
    if publisher_view:
        missing = [QualityWarning(field=m.field, message=m.message) for m in missing_metadata(row)]
        return DatasetPublisherView(**values, quality_warnings=quality_warnings(**row), missing_for_publication=missing)
    return DatasetPublic(**values)
