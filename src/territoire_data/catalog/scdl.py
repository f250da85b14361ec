"""The catalog in OpenDataFrance's SCDL "catalogue simplifié" CSV (schema v0.1.3), one row per public dataset.

Values the platform does not know are left empty rather than invented (the SIRETs when not configured, the
temporal coverage of a dataset without dates); the spatial granularity is 'Autre' as nothing records it yet.
"""

from __future__ import annotations

import csv
import io
import unicodedata
from collections.abc import Iterable

from territoire_data.catalog.metadata import FREQUENCIES, LICENCES, THEMES, DatasetPublic

SCDL_FIELDS = (
    "COLL_NOM",
    "COLL_SIRET",
    "ID",
    "TITRE",
    "DESCRIPTION",
    "THEME",
    "PRODUCTEUR_NOM",
    "PRODUCTEUR_SIRET",
    "COUV_SPAT_MAILLE",
    "COUV_SPAT_NOM",
    "COUV_TEMP_DEBUT",
    "COUV_TEMP_FIN",
    "DATE_PUBL",
    "FREQ_MAJ",
    "DATE_MAJ",
    "MOTS_CLES",
    "LICENCE",
    "NOMBRE_RESSOURCES",
    "FORMAT_RESSOURCES",
    "URL",
)


def plain_lower(value: str) -> str:
    """Lower case without accents, as the schema asks for keywords and formats; ';' is the list separator."""
    decomposed = unicodedata.normalize("NFKD", value.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c)).replace(";", ",").strip()


def scdl_row(ds: DatasetPublic, *, base_url: str, organisation: str, siret: str | None) -> dict[str, str]:
    licence = LICENCES.get(ds.licence.id) if ds.licence else None
    frequency = FREQUENCIES.get(ds.update_frequency or "")
    formats: list[str] = []
    for distribution in ds.distributions:
        name = "json" if distribution.format in ("sensorthings", "records") else plain_lower(distribution.format)
        if name not in formats:
            formats.append(name)
    return {
        "COLL_NOM": organisation[:140],
        "COLL_SIRET": siret or "",
        "ID": ds.slug,
        "TITRE": ds.title,
        "DESCRIPTION": ds.description,
        "THEME": ";".join(THEMES[t.code][0] for t in ds.themes)[:140],
        "PRODUCTEUR_NOM": (ds.publisher or organisation)[:140],
        "PRODUCTEUR_SIRET": siret if siret and (not ds.publisher or ds.publisher == organisation) else "",
        "COUV_SPAT_MAILLE": "Autre",
        "COUV_SPAT_NOM": (ds.spatial_coverage or organisation)[:140],
        "COUV_TEMP_DEBUT": ds.temporal.start.date().isoformat() if ds.temporal.start else "",
        "COUV_TEMP_FIN": ds.temporal.end.date().isoformat() if ds.temporal.end else "",
        "DATE_PUBL": ds.created.date().isoformat(),
        "FREQ_MAJ": frequency[2] if frequency else "Inconnue",
        "DATE_MAJ": ds.modified.date().isoformat(),
        "MOTS_CLES": ";".join(k for k in (plain_lower(k) for k in ds.keywords) if k),
        "LICENCE": licence.scdl if licence else "Spécifique ou autre",
        "NOMBRE_RESSOURCES": str(max(1, len(ds.distributions))),
        "FORMAT_RESSOURCES": ";".join(formats),
        "URL": f"{base_url}/datasets/{ds.slug}",
    }


def scdl_csv(datasets: Iterable[DatasetPublic], *, base_url: str, organisation: str, siret: str | None) -> str:
    """The whole catalogue as CSV text (comma-separated, UTF-8, header first)."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=SCDL_FIELDS, lineterminator="\r\n")
    writer.writeheader()
    for ds in datasets:
        writer.writerow(scdl_row(ds, base_url=base_url, organisation=organisation, siret=siret))
    return buffer.getvalue()
