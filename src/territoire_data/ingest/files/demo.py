"""The demo territory's tabular datasets: real open data shipped in demo/data, loaded with their metadata."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from territoire_data.catalog.datasets import DatasetMeta
from territoire_data.db.engine import connect_raw
from territoire_data.ingest.files.geojson import GeoJsonSource
from territoire_data.ingest.files.loader import ImportOptions, load_schema_file, run_import
from territoire_data.ingest.files.sources import CsvSource, RowSource
from territoire_data.paths import shipped
from territoire_data.settings import Settings

logger = logging.getLogger(__name__)

ETALAB = "etalab-2.0"
ODBL = "odbl-1.0"


@dataclass(frozen=True)
class DemoDataset:
    slug: str
    file: str
    meta: DatasetMeta
    schema: str | None = None
    timezone: str = "Europe/Paris"


DEMO_DATASETS: tuple[DemoDataset, ...] = (
    DemoDataset(
        "sanisettes-paris",
        "paris_sanisettes.csv",
        DatasetMeta(
            status="published",
            title="Sanisettes de Paris",
            description=(
                "Toilettes publiques (sanisettes) de la Ville de Paris : adresse, arrondissement, horaires, "
                "accessibilité aux personnes à mobilité réduite et localisation."
            ),
            keywords=("toilettes", "sanisettes", "accessibilité", "équipements publics", "Paris"),
            themes=("SOCI",),
            licence=ODBL,
            publisher="Ville de Paris",
            update_frequency="IRREG",
        ),
    ),
    DemoDataset(
        "bornes-recharge-irve",
        "irve_consolidation_extrait.csv",
        DatasetMeta(
            status="published",
            title="Bornes de recharge pour véhicules électriques (extrait IRVE)",
            description=(
                "Extrait de 100 points de recharge de la consolidation nationale des infrastructures de recharge "
                "pour véhicules électriques (schéma IRVE) : aménageur, opérateur, puissance, prises, accès, horaires."
            ),
            keywords=("mobilité", "recharge", "véhicule électrique", "IRVE"),
            themes=("TRAN",),
            licence=ETALAB,
            publisher="Etalab (data.gouv.fr)",
            update_frequency="DAILY",
        ),
    ),
    DemoDataset(
        "precipitations-alba-la-romaine",
        "meteofrance_MN_07_precip_6min.csv",
        DatasetMeta(
            status="published",
            title="Précipitations toutes les 6 minutes – Alba-la-Romaine (Ardèche)",
            description=(
                "Hauteurs de précipitations mesurées toutes les 6 minutes par la station Météo-France 07005001 "
                "d'Alba-la-Romaine, avec leur code qualité. Heures en UTC."
            ),
            keywords=("météo", "précipitations", "pluie", "climat", "Ardèche"),
            themes=("ENVI",),
            licence=ETALAB,
            publisher="Météo-France",
            update_frequency="UPDATE_CONT",
        ),
        schema="meteofrance_MN_07_precip_6min.schema.json",
        timezone="UTC",
    ),
    DemoDataset(
        "sites-comptage-velo-loire",
        "ecocompteur_loire_site.csv",
        DatasetMeta(
            status="published",
            title="Sites de comptage vélos et piétons – bords de Loire",
            description=(
                "Sites des compteurs Eco-Compteur de Champtoceaux, Mauves-sur-Loire et de la rue Gambetta à Nantes."
            ),
            keywords=("vélo", "piétons", "comptage", "mobilité", "Loire-Atlantique"),
            themes=("TRAN",),
            licence=ETALAB,
            publisher="Eco-Compteur",
        ),
    ),
    DemoDataset(
        "communes-nantes-metropole",
        "communes_nantes_metropole.geojson",
        DatasetMeta(
            status="published",
            title="Communes de Nantes Métropole et leur population",
            description=(
                "Contours des 24 communes de Nantes Métropole (IGN, GEOFLA) avec leur code INSEE et leur population "
                "légale (INSEE, millésime 2026 du découpage administratif). Déclaré division territoriale : "
                "les indicateurs par commune s'y rapportent."
            ),
            keywords=("communes", "population", "découpage administratif", "Nantes Métropole"),
            themes=("REGI", "SOCI"),
            licence=ETALAB,
            publisher="IGN, INSEE (via data.gouv.fr)",
            update_frequency="ANNUAL",
        ),
    ),
    DemoDataset(
        "quartiers-nantes",
        "quartiers_nantes.geojson",
        DatasetMeta(
            status="published",
            title="Quartiers de Nantes",
            description=(
                "Contours des 11 quartiers de la Ville de Nantes (limites administratives de niveau 10 "
                "d'OpenStreetMap). Déclaré division territoriale : les indicateurs par quartier s'y rapportent."
            ),
            keywords=("quartiers", "découpage", "Nantes"),
            themes=("REGI",),
            licence=ODBL,
            publisher="Contributeurs OpenStreetMap",
            update_frequency="IRREG",
        ),
    ),
    DemoDataset(
        "comptages-velo-loire-2022",
        "ecocompteur_loire_measure.csv",
        DatasetMeta(
            status="published",
            title="Comptages quotidiens vélos et piétons 2022 – bords de Loire",
            description=(
                "Nombre quotidien de passages de vélos et de piétons en 2022, par canal de comptage, "
                "sur les sites Eco-Compteur des bords de Loire."
            ),
            keywords=("vélo", "piétons", "comptage", "mobilité", "séries temporelles"),
            themes=("TRAN",),
            licence=ETALAB,
            publisher="Eco-Compteur",
            update_frequency="DAILY",
        ),
    ),
)


async def load_demo_datasets(settings: Settings, *, data_dir: Path | None = None) -> list[dict[str, Any]]:
    """Create and load the demo datasets that are not there yet (safe to run again); one report each."""
    folder = data_dir or shipped("demo") / "data"
    reports: list[dict[str, Any]] = []
    conn = await connect_raw(settings, application_name="demo")
    try:
        for demo in DEMO_DATASETS:
            if await conn.fetchval("SELECT 1 FROM dataset WHERE slug = $1", demo.slug):
                reports.append({"dataset": demo.slug, "status": "skipped", "reason": "already loaded"})
                continue
            options = ImportOptions(
                create=True,
                meta=demo.meta,
                schema=load_schema_file(folder / demo.schema) if demo.schema else None,
                timezone=demo.timezone,
            )
            path = folder / demo.file
            source: RowSource = GeoJsonSource(path) if path.suffix == ".geojson" else CsvSource(path)
            report = await run_import(conn, source, demo.slug, options)
            logger.info("demo dataset %s: %s rows", demo.slug, report.get("rows_inserted"))
            reports.append(report)
    finally:
        await conn.close()
    return reports
