"""The portal's server-rendered pages and feeds, without a browser: what works without JavaScript."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.settings import Settings
from tests.catalog_helpers import AUTH, FULL_METADATA, add_point_table, add_sensor, create_dataset

pytestmark = pytest.mark.db


@pytest.fixture
async def api(settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(
        settings.model_copy(update={"catalog_title": "Données de Testville"}),
        engine=engine,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield http


async def fill(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await create_dataset(api, "sanisettes", "Toilettes publiques", **FULL_METADATA)
    await add_point_table(
        db, "sanisettes", [("Gare <Nord>", 2.35, 48.88, "2024-01-02"), ("Mairie", 2.34, 48.86, "2024-02-01")]
    )
    await create_dataset(api, "air", "Qualité de l'air", kind="sensors", themes=["ENVI"], licence="odbl-1.0")
    await add_sensor(db, "air", lon=4.8, lat=45.7, values=[10.0, 12.0, 14.5])
    await create_dataset(api, "secret", "Registre confidentiel des toilettes", access="restricted", **FULL_METADATA)


async def test_home_lists_searches_and_filters_public_datasets(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await fill(api, db)
    home = await api.get("/")
    assert home.status_code == 200
    assert home.headers["content-language"] == "fr"
    html = home.text
    assert '<html lang="fr">' in html
    assert "Données de Testville" in html
    assert 'href="/datasets/sanisettes"' in html
    assert 'href="/datasets/air"' in html
    assert "2 jeux de données" in html
    assert "confidentiel" not in html
    for landmark in ('role="banner"', '<main id="main"', 'role="contentinfo"', 'role="search"', "<nav"):
        assert landmark in html
    assert '<label for="q">' in html

    found = (await api.get("/", params={"q": "toilettes"})).text
    assert 'href="/datasets/sanisettes"' in found
    assert 'href="/datasets/air"' not in found
    assert "confidentiel" not in found
    assert "1 jeu de données" in found

    filtered = (await api.get("/", params={"theme": "ENVI"})).text
    assert 'href="/datasets/air"' in filtered
    assert 'href="/datasets/sanisettes"' not in filtered
    assert 'value="ENVI" checked' in filtered


async def test_dataset_page_shows_metadata_licence_preview_downloads_and_examples(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await fill(api, db)
    page = await api.get("/datasets/sanisettes")
    assert page.status_code == 200
    html = page.text
    assert "<h1>Toilettes publiques</h1>" in html
    assert "Licence Ouverte / Open Licence version 2.0" in html
    assert "à condition de citer la source" in html, "the licence in plain words"
    assert "Gare &lt;Nord&gt;" in html, "preview values are escaped"
    assert "mailto:donnees@testville.fr" in html
    for fmt in ("csv", "geojson", "parquet", "gpkg", "fgb", "shapefile"):
        assert f'href="/api/v1/datasets/sanisettes/exports/{fmt}" download' in html
    assert "GeoPackage</a>" in html and "Shapefile ZIP</a>" in html
    assert 'curl -L -o sanisettes.csv "http://testserver/api/v1/datasets/sanisettes/exports/csv"' in html
    assert 'pd.read_csv("http://testserver/api/v1/datasets/sanisettes/exports/csv")' in html
    tiles = 'data-tiles="/ogcapi/collections/sanisettes/tiles/WebMercatorQuad/{z}/{x}/{y}"'
    assert tiles in html or "La carte n&#39;est pas disponible" in html
    assert "du 02/01/2024 au 01/02/2024" in html

    english = await api.get("/datasets/sanisettes", params={"lang": "en"})
    assert '<html lang="en">' in english.text
    assert "provided you credit the source" in english.text
    assert english.cookies.get("lang") == "en"


async def test_restricted_or_missing_dataset_page_is_404_html(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await fill(api, db)
    for slug in ("secret", "does-not-exist"):
        page = await api.get(f"/datasets/{slug}")
        assert page.status_code == 404
        assert page.headers["content-type"].startswith("text/html")
        assert "confidentiel" not in page.text
        assert (await api.get(f"/datasets/{slug}/preview.geojson")).status_code == 404


async def test_map_feed_is_geojson_of_the_typed_table_and_of_sensor_locations(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await fill(api, db)
    table = (await api.get("/datasets/sanisettes/preview.geojson")).json()
    assert table["type"] == "FeatureCollection"
    assert [f["properties"]["nom"] for f in table["features"]] == ["Gare <Nord>", "Mairie"]
    assert table["features"][0]["geometry"] == {"type": "Point", "coordinates": [2.35, 48.88]}
    sensors = (await api.get("/datasets/air/preview.geojson")).json()
    assert [f["geometry"]["coordinates"] for f in sensors["features"]] == [[4.8, 45.7]]


async def test_sensor_page_shows_the_last_values_and_the_chart_feed(
    api: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """Named by what they measure and where, the latest value written the French way with its age; charts over a
    chosen period from the rollups; downloads of a period; the API links second."""
    await fill(api, db)
    html = (await api.get("/datasets/air")).text
    assert "Mesures par lieu" in html
    assert "<h3" in html and ">Station</h3>" in html, "grouped by place (the Location's name)"
    assert "Station Capteur NO2" in html and "NO2 (µg/m³)" in html
    assert "14,5\u202fµg/m³" in html, "a decimal comma and a narrow space before the unit"
    assert "il y a 1 h" in html
    assert html.index("Mesures par lieu") < html.index("Télécharger les mesures") < html.index("SensorThings API")
    assert "Datastream 1)" not in html, "no wall of links named after ids"
    for period in ("24 heures", "7 jours", "30 jours", "un an"):
        assert period in html
    series = (await api.get("/datasets/air/recent.json")).json()
    assert len(series) == 1
    assert series[0]["values"] == [10.0, 12.0, 14.5]
    assert series[0]["unit"] == "µg/m³" and series[0]["label"] == "NO2 (µg/m³)"
    assert series[0]["thing"] == "Station Capteur NO2"
    assert len(series[0]["times"]) == 3
    assert all(t % 900 == 0 for t in series[0]["times"]), "quarter-hour buckets of the rollups"
    week = (await api.get("/datasets/air/recent.json", params={"periode": "7j"})).json()
    assert week[0]["values"] == [10.0, 12.0, 14.5] and all(t % 3600 == 0 for t in week[0]["times"])
    year = (await api.get("/datasets/air/recent.json", params={"periode": "1an"})).json()
    assert sum(len(s["times"]) for s in year) in (1, 2), "daily means (two days when the hours cross midnight UTC)"
    assert (await api.get("/datasets/air/recent.json", params={"periode": "2j"})).status_code == 400
    download = await api.get("/datasets/air/telechargement", params={"periode": "30j", "format": "parquet"})
    assert download.status_code == 303
    assert download.headers["location"].startswith("/api/v1/datasets/air/exports/parquet?start=")
    one = await api.get("/datasets/air/telechargement", params={"periode": "tout", "serie": "1"})
    assert one.headers["location"] == "/api/v1/datastreams/1/exports/csv"
    await api.post("/api/v1/datasets/air/unpublish", headers=AUTH)
    assert (await api.get("/datasets/air/telechargement")).status_code == 404, "a draft has no download form"
    assert (await api.get("/datasets/air/recent.json")).status_code == 404
