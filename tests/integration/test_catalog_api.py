"""Catalog JSON API on a real PostGIS: search, facets, paging, publisher writes and the restricted rule."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.settings import Settings
from tests.catalog_helpers import AUTH, FULL_METADATA, add_point_table, add_sensor, create_dataset
from tests.conftest import make_key

pytestmark = pytest.mark.db


@pytest.fixture
async def api(settings: Settings, engine: AsyncEngine, db: asyncpg.Connection) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(settings, engine=engine)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
        yield http


async def test_writes_need_a_publisher_key_and_a_write_grant(api: httpx.AsyncClient, engine: AsyncEngine) -> None:
    body = {"slug": "parcs", "title": "Parcs"}
    for headers in ({}, {"Authorization": "Bearer td_00000000_wrong"}, {"Authorization": "Basic abc"}):
        response = await api.post("/api/v1/datasets", json=body, headers=headers)
        assert response.status_code == 401
        assert response.headers["content-type"] == "application/problem+json"
    reader = {"X-API-Key": await make_key(engine, "reader")}
    assert (await api.post("/api/v1/datasets", json=body, headers=reader)).status_code == 403

    await create_dataset(api, "parcs", "Parcs")  # by the admin
    other = {"X-API-Key": await make_key(engine, "publisher")}
    assert (await api.patch("/api/v1/datasets/parcs", json={"title": "X"}, headers=other)).status_code == 403
    assert (await api.delete("/api/v1/datasets/parcs", headers=other)).status_code == 403

    # A publisher owns what it creates (its key gets the write grant), and only that.
    mine = await api.post("/api/v1/datasets", json={"slug": "jardins", "title": "Jardins"}, headers=other)
    assert mine.status_code == 201, mine.text
    assert (await api.patch("/api/v1/datasets/jardins", json={"title": "Jardins"}, headers=other)).status_code == 200
    granted = {"X-API-Key": await make_key(engine, "publisher", [("parcs", "write")])}
    assert (await api.patch("/api/v1/datasets/parcs", json={"title": "P"}, headers=granted)).status_code == 200


async def test_create_show_update_delete_round_trip(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    created = await create_dataset(api, "sanisettes", "Toilettes publiques", **FULL_METADATA)
    assert created["licence"]["url"] == "https://www.etalab.gouv.fr/licence-ouverte-open-licence"
    assert [t["code"] for t in created["themes"]] == ["REGI", "HEAL"]
    assert created["quality_warnings"] == []
    identifier = created["identifier"]

    public = (await api.get("/api/v1/datasets/sanisettes")).json()
    assert "quality_warnings" not in public
    assert public["contact"] == {"name": "Service données", "email": "donnees@testville.fr"}
    assert public["conforms_to"] == FULL_METADATA["conforms_to"]

    patched = await api.patch(
        "/api/v1/datasets/sanisettes", json={"title": "Sanisettes", "licence": None, "keywords": ["wc"]}, headers=AUTH
    )
    assert patched.status_code == 200, patched.text
    body = patched.json()
    assert body["title"] == "Sanisettes"
    assert body["keywords"] == ["wc"]
    assert body["licence"] is None
    assert body["identifier"] == identifier, "the identifier never changes"
    assert body["description"] == FULL_METADATA["description"], "fields not sent are kept"
    assert [w["field"] for w in body["quality_warnings"]] == ["licence"]

    assert (
        await api.post("/api/v1/datasets", json={"slug": "sanisettes", "title": "B"}, headers=AUTH)
    ).status_code == 409
    assert (await api.delete("/api/v1/datasets/sanisettes", headers=AUTH)).status_code == 204
    assert (await api.get("/api/v1/datasets/sanisettes")).status_code == 404
    actions = [r["action"] for r in await db.fetch("SELECT action FROM audit_event ORDER BY id")]
    assert actions == ["dataset.create", "dataset.publish", "dataset.update", "dataset.delete"]


async def test_delete_drops_the_typed_table(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await create_dataset(api, "arbres", "Arbres", **FULL_METADATA)
    await add_point_table(db, "arbres", [("chêne", 2.35, 48.85, "2024-01-01"), ("if", 2.36, 48.86, "2024-01-02")])
    table = await db.fetchval("SELECT table_name FROM dataset WHERE slug = 'arbres'")
    assert (await api.delete("/api/v1/datasets/arbres", headers=AUTH)).status_code == 204
    assert await db.fetchval("SELECT to_regclass($1)", f"datasets.{table}") is None


async def test_invalid_metadata_is_a_clear_422(api: httpx.AsyncClient) -> None:
    cases = [
        {"slug": "Bad Slug", "title": "x"},
        {"slug": "ok", "title": ""},
        {"slug": "ok", "title": "x", "licence": "wtfpl"},
        {"slug": "ok", "title": "x", "themes": ["NOPE"]},
        {"slug": "ok", "title": "x", "contact_email": "not-an-email"},
        {"slug": "ok", "title": "x", "update_frequency": "sometimes"},
        {"slug": "ok", "title": "x", "unknown_field": 1},
    ]
    for body in cases:
        response = await api.post("/api/v1/datasets", json=body, headers=AUTH)
        assert response.status_code == 422, body
        assert response.headers["content-type"] == "application/problem+json"
    assert (await api.patch("/api/v1/datasets/nope", json={"title": "x"}, headers=AUTH)).status_code == 404
    await create_dataset(api, "ok", "Ok")
    assert (await api.patch("/api/v1/datasets/ok", json={"title": None}, headers=AUTH)).status_code == 422
    assert (await api.patch("/api/v1/datasets/ok", json={"slug": "other"}, headers=AUTH)).status_code == 422


async def test_quality_warnings_name_missing_licence_description_and_contact(api: httpx.AsyncClient) -> None:
    created = await create_dataset(api, "brouillon", "Brouillon")
    assert sorted(w["field"] for w in created["quality_warnings"]) == ["contact", "description", "licence"]
    shown = (await api.get("/api/v1/datasets/brouillon", headers=AUTH)).json()
    assert len(shown["quality_warnings"]) == 3


async def test_full_text_search_is_french_accent_insensitive_and_ranked(api: httpx.AsyncClient) -> None:
    await create_dataset(api, "velos", "Stationnements vélos", description="Arceaux et abris pour les cycles.")
    await create_dataset(api, "parkings", "Parkings", description="Places pour voitures et vélos.", keywords=["auto"])
    await create_dataset(api, "arbres", "Arbres d'alignement", keywords=["végétation"])

    def slugs(response: httpx.Response) -> list[str]:
        assert response.status_code == 200, response.text
        return [item["slug"] for item in response.json()["items"]]

    assert slugs(await api.get("/api/v1/datasets", params={"q": "velos"})) == ["velos", "parkings"]
    assert slugs(await api.get("/api/v1/datasets", params={"q": "vegetation"})) == ["arbres"]
    assert slugs(await api.get("/api/v1/datasets", params={"q": "arbre"})) == ["arbres"], "French stemming"
    assert slugs(await api.get("/api/v1/datasets", params={"q": "sous-marin"})) == []
    assert slugs(await api.get("/api/v1/datasets", params={"q": "VÉLOS -voitures"})) == ["velos"]


async def test_facets_filter_and_count(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await create_dataset(api, "a", "A", themes=["TRAN"], licence="etalab-2.0", publisher="Ville")
    await create_dataset(api, "b", "B", themes=["TRAN", "ENVI"], licence="odbl-1.0", publisher="Métropole")
    await create_dataset(api, "c", "C", kind="sensors", themes=["ENVI"], licence="etalab-2.0", publisher="Ville")
    await add_point_table(db, "a", [("x", 1.0, 45.0, "2024-05-01"), ("y", 1.1, 45.1, "2024-05-02")])

    body = (await api.get("/api/v1/datasets")).json()
    facets = {name: {v["value"]: v["count"] for v in values} for name, values in body["facets"].items()}
    assert facets["theme"] == {"TRAN": 2, "ENVI": 2}
    assert facets["licence"] == {"etalab-2.0": 2, "odbl-1.0": 1}
    assert facets["publisher"] == {"Ville": 2, "Métropole": 1}
    assert facets["format"] == {"csv": 2, "parquet": 2, "geojson": 1, "sensorthings": 1}

    async def search(**params: object) -> list[str]:
        response = await api.get("/api/v1/datasets", params=params)  # type: ignore[arg-type]
        assert response.status_code == 200, response.text
        return [i["slug"] for i in response.json()["items"]]

    assert await search(theme="ENVI") == ["b", "c"]
    assert await search(theme=["ENVI", "TRAN"], licence="etalab-2.0") == ["a", "c"]
    assert await search(publisher="Métropole") == ["b"]
    assert await search(format="geojson") == ["a"]
    assert await search(format="sensorthings") == ["c"]
    bad = await api.get("/api/v1/datasets", params={"format": "xls"})
    assert bad.status_code == 422
    assert "unknown format" in bad.json()["detail"]


async def test_list_pages_in_stable_order_with_next_links(api: httpx.AsyncClient) -> None:
    for i in range(7):
        await create_dataset(api, f"jeu-{i}", f"Jeu {6 - i}")
    seen: list[str] = []
    url: str | None = "/api/v1/datasets?limit=3"
    pages = 0
    while url:
        body = (await api.get(url)).json()
        assert body["total"] == 7
        seen += [item["title"] for item in body["items"]]
        url = body["next"]
        pages += 1
    assert pages == 3
    assert seen == [f"Jeu {i}" for i in range(7)]


async def test_restricted_dataset_is_absent_from_lists_counts_and_detail(api: httpx.AsyncClient) -> None:
    await create_dataset(api, "ouvert", "Données ouvertes du parc", themes=["ENVI"])
    await create_dataset(api, "secret", "Données secrètes du parc", themes=["ENVI"], access="restricted")
    body = (await api.get("/api/v1/datasets", params={"q": "parc"})).json()
    assert [i["slug"] for i in body["items"]] == ["ouvert"]
    assert body["total"] == 1
    assert body["facets"]["theme"] == [{"value": "ENVI", "label": "Environnement", "count": 1}]
    missing = await api.get("/api/v1/datasets/secret")
    absent = await api.get("/api/v1/datasets/never-existed")
    assert missing.status_code == absent.status_code == 404
    # the publisher (admin token) sees it
    assert (await api.get("/api/v1/datasets/secret", headers=AUTH)).status_code == 200
    assert (await api.get("/api/v1/datasets", headers=AUTH)).json()["total"] == 2


async def test_coverage_is_computed_from_the_data(api: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await create_dataset(api, "points", "Points", **FULL_METADATA)
    await add_point_table(db, "points", [("a", 2.0, 48.0, "2024-01-15"), ("b", 3.0, 49.0, "2024-03-01")])
    body = (await api.get("/api/v1/datasets/points")).json()
    assert body["bbox"] == [2.0, 48.0, 3.0, 49.0]
    assert body["temporal"]["start"].startswith("2024-01-15")
    assert body["temporal"]["end"].startswith("2024-03-01")
    assert body["formats"] == ["csv", "geojson", "parquet", "gpkg", "fgb", "shapefile"]
    urls = {d["format"]: d["url"] for d in body["distributions"]}
    assert urls["csv"] == "http://testserver/api/v1/datasets/points/exports/csv"
    assert urls["ogcapi-features"] == "http://testserver/ogcapi/collections/points/items"

    await create_dataset(api, "air", "Qualité de l'air", kind="sensors", **{**FULL_METADATA, "keywords": ["air"]})
    datastream = await add_sensor(db, "air", lon=4.8, lat=45.7, values=[10.0, 12.5, 11.0])
    sensors = (await api.get("/api/v1/datasets/air")).json()
    assert sensors["bbox"] == [4.8, 45.7, 4.8, 45.7]
    assert sensors["temporal"]["start"] is not None
    assert sensors["temporal"]["end"] > sensors["temporal"]["start"]
    assert [d["url"] for d in sensors["distributions"]] == [
        "http://testserver/api/v1/datasets/air/exports/csv",
        "http://testserver/api/v1/datasets/air/exports/parquet",
        f"http://testserver/sta/v1.1/Datastreams({datastream})/Observations",
    ]
    assert sensors["distributions"][2]["title"] == "Capteur NO2 — API SensorThings", "named, not numbered"


async def test_making_a_dataset_restricted_removes_it_everywhere_at_once(api: httpx.AsyncClient) -> None:
    await create_dataset(api, "parcs", "Parcs et jardins", **FULL_METADATA)
    assert (await api.get("/api/v1/datasets/parcs")).status_code == 200
    patched = await api.patch("/api/v1/datasets/parcs", json={"access": "restricted"}, headers=AUTH)
    assert patched.status_code == 200
    assert patched.json()["access"] == "restricted"
    assert (await api.get("/api/v1/datasets/parcs")).status_code == 404
    assert (await api.get("/api/v1/datasets")).json()["total"] == 0
    assert "parcs" not in (await api.get("/dcat/catalog.ttl")).text
    assert (await api.get("/datasets/parcs")).status_code == 404
    assert "Parcs et jardins" not in (await api.get("/")).text
