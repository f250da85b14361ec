"""SCDL 'catalogue simplifié' export checked against the schema's own fields, patterns and enums."""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.settings import Settings
from tests.catalog_helpers import FULL_METADATA, add_point_table, add_sensor, create_dataset
from tests.conftest import FIXTURES

pytestmark = pytest.mark.db

SCHEMA = json.loads((FIXTURES / "scdl_catalogue_schema.json").read_text(encoding="utf-8"))


@pytest.fixture
async def api(settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings.model_copy(
            update={
                "catalog_publisher": "Ville de Testville",
                "catalog_publisher_siret": "21350238800019",
            }
        ),
        engine=engine,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield http


async def test_scdl_export_follows_the_schema_for_every_public_dataset(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await create_dataset(
        api, "sanisettes", "Toilettes publiques", **{**FULL_METADATA, "publisher": "Ville de Testville"}
    )
    await add_point_table(db, "sanisettes", [("a", 2.3, 48.8, "2024-01-02"), ("b", 2.4, 48.9, "2024-06-30")])
    await create_dataset(api, "air", "Qualité de l'air", kind="sensors", **{**FULL_METADATA, "licence": "odbl-1.0"})
    await add_sensor(db, "air", lon=4.8, lat=45.7, values=[1.0, 2.0])
    await create_dataset(api, "secret", "Secret", access="restricted", **FULL_METADATA)

    response = await api.get("/dcat/catalog.scdl.csv")
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/csv; charset=utf-8"
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert list(rows[0].keys()) == [f["name"] for f in SCHEMA["fields"]]
    assert [r["ID"] for r in rows] == ["air", "sanisettes"]

    for row in rows:
        for field in SCHEMA["fields"]:
            value = row[field["name"]]
            constraints = field.get("constraints", {})
            assert value != "", f"{field['name']} is required and empty in {row['ID']}"
            if "pattern" in constraints:
                assert re.fullmatch(constraints["pattern"], value), field["name"]
            if "enum" in constraints:
                assert value in constraints["enum"], field["name"]
            if field["type"] == "date":
                assert re.fullmatch(r"\d{4}-\d{2}-\d{2}", value), field["name"]
            if field["type"] == "integer":
                assert int(value) >= constraints.get("minimum", 0)

    sanisettes = next(r for r in rows if r["ID"] == "sanisettes")
    assert sanisettes["COLL_NOM"] == "Ville de Testville"
    assert sanisettes["LICENCE"] == "Licence Ouverte-LO"
    assert sanisettes["FREQ_MAJ"] == "Mensuelle ou plusieurs fois par mois"
    assert sanisettes["MOTS_CLES"] == "toilettes;sanisettes;proprete"
    assert sanisettes["COUV_TEMP_DEBUT"] == "2024-01-02"
    assert sanisettes["COUV_TEMP_FIN"] == "2024-06-30"
    assert sanisettes["FORMAT_RESSOURCES"] == "csv;geojson;parquet;gpkg;fgb;shapefile;ogcapi-features;json"
    assert sanisettes["URL"] == "http://testserver/datasets/sanisettes"
    air = next(r for r in rows if r["ID"] == "air")
    assert air["LICENCE"] == "Open Database License-ODBL"
    assert air["FORMAT_RESSOURCES"] == "csv;parquet;json", "its observations as files, then its APIs"
