"""Steering indicators: divisions, definitions checked against the data, values computed by PostgreSQL and kept,
recomputed only where new data lands, and served by every door (API, CSV/Parquet, OGC API, DCAT, portal)."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import asyncpg
import httpx
import pyarrow.parquet as pq
import pytest
import yaml
from rdflib import Graph, Namespace, URIRef
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.demo import DEMO_DIVISIONS
from territoire_data.indicators.compute import process_dirty
from territoire_data.indicators.files import load_folder
from territoire_data.ingest.files.demo import load_demo_datasets
from territoire_data.settings import Settings
from tests.catalog_helpers import add_point_table, create_dataset
from tests.conftest import ROOT, TEST_ADMIN_AUTH, make_key
from tests.indicator_helpers import observe, pm10_sensor

pytestmark = pytest.mark.db

AUTH = TEST_ADMIN_AUTH
PROV = Namespace("http://www.w3.org/ns/prov#")
DEFINITIONS = ROOT / "indicators"
PARIS = ZoneInfo("Europe/Paris")
BIKE_CHANNELS = {"353226370", "353226405", "353226380", "353226415", "353226382", "353226417"}
PLACE_ROYALE = (-1.5593, 47.2136)  # in the quartier Centre Ville
REZE_CENTRE = (-1.5680, 47.1900)  # in the commune of Rezé


def definition(slug: str) -> dict[str, Any]:
    data = yaml.safe_load((DEFINITIONS / f"{slug}.yaml").read_text(encoding="utf-8"))
    parsed: dict[str, Any] = json.loads(json.dumps(data, default=str))  # YAML dates as JSON strings
    return parsed


async def territory(settings: Settings, client: httpx.AsyncClient) -> None:
    """The demo's files (communes, quartiers, bike counts, charge points…) and its two divisions, through the API."""
    await load_demo_datasets(settings)
    for slug, declaration in DEMO_DIVISIONS.items():
        response = await client.put(f"/api/v1/divisions/{slug}", json=declaration.model_dump(), headers=AUTH)
        assert response.status_code == 200, response.text


async def test_polygon_datasets_become_divisions_and_others_are_refused(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    await territory(settings, client)
    listed = (await client.get("/api/v1/divisions")).json()["items"]
    assert {d["dataset"]: d["units"] for d in listed} == {"communes-nantes-metropole": 24, "quartiers-nantes": 11}
    communes = next(d for d in listed if d["dataset"] == "communes-nantes-metropole")
    assert communes["attributes"] == {"population": "population"}

    points = await client.put(
        "/api/v1/divisions/sites-comptage-velo-loire",
        json={"level": "site", "code_field": "site_id", "name_field": "site_name"},
        headers=AUTH,
    )
    assert points.status_code == 422
    assert "not a polygon dataset" in points.json()["detail"]
    unknown = await client.put(
        "/api/v1/divisions/quartiers-nantes",
        json={"level": "quartier", "code_field": "osm_id", "name_field": "nom", "attributes": {"pop": "name"}},
        headers=AUTH,
    )
    assert unknown.status_code == 422
    fields = {e["field"]: e["message"] for e in unknown.json()["errors"]}
    assert "unknown field 'nom'" in fields["name_field"]
    assert fields["attributes.pop"].startswith("type mismatch")
    anonymous = await client.put(
        "/api/v1/divisions/quartiers-nantes", json={"level": "q", "code_field": "osm_id", "name_field": "name"}
    )
    assert anonymous.status_code == 401


async def test_definitions_are_refused_with_the_field_and_the_reason(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await territory(settings, client)
    base = definition("velos-passages-hebdo")

    async def refused(body: dict[str, Any]) -> dict[str, Any]:
        response = await client.post("/api/v1/indicators", json=body, headers=AUTH)
        assert response.status_code == 422, response.text
        assert response.headers["content-type"].startswith("application/problem+json")
        problem: dict[str, Any] = response.json()
        return problem

    unknown = await refused({**base, "valeur": 3})
    assert unknown["errors"][0]["location"] == "body.valeur"
    assert "extra" in unknown["errors"][0]["message"].lower()
    mismatch = await refused({**base, "period": 7})
    assert mismatch["errors"][0]["location"] == "body.period"
    # A text field aggregated as a number: the field and its type are named.
    text_value = await refused({**base, "source": {**base["source"], "value": "counter_id"}})
    assert text_value["errors"] == [
        {"field": "source.value", "message": "type mismatch: field 'counter_id' is string, a number is needed"}
    ]
    missing = await refused({**base, "source": {**base["source"], "value": "comptage"}})
    assert "unknown field 'comptage'" in missing["errors"][0]["message"]
    # A filter PostgreSQL cannot run (a date compared with a word) is caught before anything is stored.
    failing = await refused({**base, "source": {**base["source"], "filter": "start_datetime > 'hier'"}})
    assert failing["errors"][0]["field"] == "source.filter"
    assert "cannot run" in failing["errors"][0]["message"]
    bad_cql = await refused({**base, "source": {**base["source"], "filter": "channel_id IN ("}})
    assert bad_cql["errors"][0]["field"] == "source.filter"
    no_dataset = await refused({**base, "source": {**base["source"], "dataset": "nulle-part"}})
    assert no_dataset["errors"][0] == {"field": "source.dataset", "message": "no table dataset 'nulle-part'"}
    no_attribute = definition("bornes-recharge-10000-habitants")
    no_attribute["denominator"] = {"attribute": "habitants", "per": 10000}
    attribute = await refused(no_attribute)
    assert "has no attribute 'habitants'" in attribute["errors"][0]["message"]
    assert await db.fetchval("SELECT count(*) FROM indicator") == 0
    assert await db.fetchval("SELECT count(*) FROM dataset WHERE slug LIKE 'indicateur-%'") == 0


async def test_weekly_bike_counts_equal_the_file_summed_by_iso_week_and_are_served_everywhere(
    settings: Settings, client: httpx.AsyncClient
) -> None:
    await territory(settings, client)
    created = await client.post("/api/v1/indicators", json=definition("velos-passages-hebdo"), headers=AUTH)
    assert created.status_code == 201, created.text

    expected: dict[str, float] = defaultdict(float)
    with (ROOT / "demo" / "data" / "ecocompteur_loire_measure.csv").open(encoding="utf-8") as handle:
        for row in csv.DictReader(handle):
            if row["channel_id"] in BIKE_CHANNELS:
                iso = datetime.fromisoformat(row["start_datetime"]).astimezone(PARIS).isocalendar()
                expected[f"{iso.year}-S{iso.week:02d}"] += float(row["count"])
    page = (await client.get("/api/v1/indicators/velos-passages-hebdo/values", params={"limit": 1000})).json()
    assert page["total"] == len(expected)
    assert {item["period"]: item["value"] for item in page["items"]} == pytest.approx(dict(expected))
    assert all(item["unit"] == "territoire" for item in page["items"])

    detail = (await client.get("/api/v1/indicators/velos-passages-hebdo")).json()
    last = max(expected)
    assert detail["latest"]["period"] == last
    assert detail["latest"]["values"][0]["value"] == pytest.approx(expected[last])
    assert detail["dataset"] == "indicateur-velos-passages-hebdo"

    as_csv = await client.get("/api/v1/indicators/velos-passages-hebdo/values", params={"format": "csv"})
    rows = list(csv.DictReader(io.StringIO(as_csv.text)))
    assert len(rows) == len(expected) and float(rows[0]["value"]) == pytest.approx(expected[rows[0]["period"]])
    parquet = await client.get("/api/v1/indicators/velos-passages-hebdo/values", params={"format": "parquet"})
    table = pq.read_table(io.BytesIO(parquet.content))
    assert table.num_rows == len(expected) and "record_count" in table.column_names

    # DCAT-AP: a dataset with its methodology, derived from the bike counts, under its licence.
    graph = Graph().parse(data=(await client.get("/dcat/catalog.ttl")).text, format="turtle")
    node = URIRef("http://testserver/datasets/indicateur-velos-passages-hebdo#dataset")
    assert (node, PROV.wasDerivedFrom, URIRef("http://testserver/datasets/comptages-velo-loire-2022#dataset")) in graph
    assert "comptages quotidiens" in graph.serialize(format="turtle")


async def test_charge_points_per_10000_inhabitants_per_commune_against_the_target(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await territory(settings, client)
    await create_dataset(client, "bornes-test", "Bornes de test", licence="etalab-2.0")
    nantes = [
        ("a", *PLACE_ROYALE, "2025-01-01"),
        ("b", -1.5530, 47.2150, "2025-01-01"),
        ("c", -1.55, 47.22, "2025-01-01"),
    ]
    await add_point_table(db, "bornes-test", [*nantes, ("d", *REZE_CENTRE, "2025-01-01")])
    body = definition("bornes-recharge-10000-habitants")
    body["slug"] = "bornes-test-10000"
    body["source"]["dataset"] = "bornes-test"
    created = await client.post("/api/v1/indicators", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    latest = {v["unit"]: v for v in created.json()["latest"]["values"]}
    communes = await db.fetchval("SELECT table_name FROM dataset WHERE slug = 'communes-nantes-metropole'")
    population = {
        r["code"]: r["population"]
        for r in await db.fetch(f'SELECT code::text AS code, population FROM datasets."{communes}"')
    }
    assert len(latest) == 24
    assert latest["44109"]["value"] == pytest.approx(3 / population["44109"] * 10_000)
    assert latest["44143"]["value"] == pytest.approx(1 / population["44143"] * 10_000)
    assert latest["44020"]["value"] == 0 and latest["44020"]["record_count"] == 0  # Bouguenais: no charge point
    assert {v["status"] for v in latest.values()} == {"non atteint"}  # 58 per 10,000 is far

    # The choropleth collection: every commune's polygon with its value and target status, for QGIS.
    items = (await client.get("/ogcapi/collections/indicateur-bornes-test-10000/items", params={"limit": 100})).json()
    assert items["numberMatched"] == 24
    nantes_feature = next(f for f in items["features"] if f["properties"]["code"] == "44109")
    assert nantes_feature["geometry"]["type"] == "MultiPolygon"
    assert nantes_feature["properties"]["valeur"] == pytest.approx(latest["44109"]["value"])
    assert nantes_feature["properties"]["statut_cible"] == "non atteint"
    assert nantes_feature["properties"]["cible"] == 58

    # A new charge point is an import: the dataset's modified_at moves, the indicator is marked and recomputed.
    await db.execute(
        f"""INSERT INTO datasets."{await db.fetchval("SELECT table_name FROM dataset WHERE slug = 'bornes-test'")}"
            (nom, date_releve, geom) VALUES ('e', '2025-02-01', ST_SetSRID(ST_MakePoint($1, $2), 4326))""",
        *REZE_CENTRE,
    )
    await db.execute("UPDATE dataset SET modified_at = now(), row_count = 5 WHERE slug = 'bornes-test'")
    assert (
        await db.fetchval(
            "SELECT count(*) FROM indicator_dirty d JOIN indicator i ON i.id = d.indicator_id "
            "WHERE i.slug = 'bornes-test-10000' AND d.period_start = '-infinity'"
        )
        == 1
    )
    await process_dirty(db)
    after = (await client.get("/api/v1/indicators/bornes-test-10000")).json()["latest"]["values"]
    assert next(v for v in after if v["unit"] == "44143")["value"] == pytest.approx(2 / population["44143"] * 10_000)
    # The derived dataset is the indicator's: imports and catalog deletion are refused.
    refused = await client.delete("/api/v1/datasets/indicateur-bornes-test-10000", headers=AUTH)
    assert refused.status_code == 409


async def test_growth_over_the_same_period_of_the_previous_year(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await create_dataset(client, "releves", "Relevés", licence="etalab-2.0")
    dates = ["2024-03-10"] * 4 + ["2025-03-02"] * 5 + ["2025-07-14"] * 2
    lon, lat = PLACE_ROYALE
    await add_point_table(
        db, "releves", [(f"r{i}", lon + i / 10_000, lat + i / 20_000, day) for i, day in enumerate(dates)]
    )
    body = {
        "slug": "releves-croissance",
        "title": "Croissance des relevés",
        "methodology": "Nombre de relevés par an, comparé à l'année précédente.",
        "unit": "%",
        "source": {"type": "dataset", "dataset": "releves", "time": "date_releve"},
        "aggregation": {"function": "count"},
        "period": "year",
        "denominator": {"growth": "previous_year"},
    }
    created = await client.post("/api/v1/indicators", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    values = (await client.get("/api/v1/indicators/releves-croissance/values")).json()["items"]
    assert [(v["period"], v["raw_value"], v["value"]) for v in values] == [
        ("2024", 4, None),
        ("2025", 7, pytest.approx(75.0)),
    ]


async def test_new_observations_mark_and_recompute_only_their_day(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await territory(settings, client)
    datastream = await pm10_sensor(db, *PLACE_ROYALE)
    day1 = datetime(2026, 3, 10, 8, tzinfo=PARIS)
    day2 = datetime(2026, 3, 11, 8, tzinfo=PARIS)
    await observe(db, datastream, [(day1, 20.0), (day1 + timedelta(hours=2), 40.0), (day2, 10.0)])
    body = definition("pm10-moyenne-journaliere")
    created = await client.post("/api/v1/indicators", json=body, headers=AUTH)
    assert created.status_code == 201, created.text
    centre = await _quartier_code(db, "Centre Ville")
    before = await _values(db, "pm10-moyenne-journaliere")
    assert {k[1]: v["value"] for k, v in before.items() if k[0] == centre} == {
        day1.replace(hour=0).astimezone(UTC): pytest.approx(30.0),
        day2.replace(hour=0).astimezone(UTC): pytest.approx(10.0),
    }

    await observe(db, datastream, [(day1 + timedelta(hours=4), 90.0)])  # one more reading, on day 1 only
    dirty = await db.fetch("SELECT period_start FROM indicator_dirty")
    assert [r["period_start"] for r in dirty] == [day1.replace(hour=0).astimezone(UTC)]
    report = await process_dirty(db)
    assert [(r.indicator, r.full, r.periods) for r in report.computed] == [("pm10-moyenne-journaliere", False, 1)]
    after = await _values(db, "pm10-moyenne-journaliere")
    key1 = (centre, day1.replace(hour=0).astimezone(UTC))
    key2 = (centre, day2.replace(hour=0).astimezone(UTC))
    assert after[key1]["value"] == pytest.approx(50.0)
    assert after[key1]["computed_at"] > before[key1]["computed_at"]
    assert after[key2] == before[key2]  # the other day is not even rewritten
    assert after[key1]["record_count"] == 3

    # A deleted observation marks its day too.
    await db.execute("DELETE FROM observation WHERE datastream_id = $1 AND result_number = 90", datastream)
    await process_dirty(db)
    assert (await _values(db, "pm10-moyenne-journaliere"))[key1]["value"] == pytest.approx(30.0)


async def test_days_above_the_eu_daily_limit_per_quartier_per_year(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await territory(settings, client)
    datastream = await pm10_sensor(db, *PLACE_ROYALE)
    readings = []
    for day, mean in ((1, 80.0), (2, 49.0), (3, 51.0), (4, 20.0)):
        start = datetime(2026, 1, day, 6, tzinfo=PARIS)
        readings += [(start, mean - 10), (start + timedelta(hours=6), mean + 10)]
    await observe(db, datastream, readings)
    created = await client.post("/api/v1/indicators", json=definition("pm10-jours-depassement"), headers=AUTH)
    assert created.status_code == 201, created.text
    latest = {v["name"]: v for v in created.json()["latest"]["values"]}
    assert latest["Centre Ville"]["value"] == 2  # 80 and 51; 49 is not over 50
    assert latest["Centre Ville"]["status"] == "atteint"  # 2 days, 35 allowed
    assert latest["Nantes Nord"]["value"] is None  # no sensor there: no value, not zero
    assert latest["Nantes Nord"]["status"] == "sans donnée"


async def test_restricted_sources_make_a_restricted_indicator(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine
) -> None:
    await create_dataset(client, "secret", "Relevés internes", licence="etalab-2.0", access="restricted")
    await add_point_table(db, "secret", [("a", *PLACE_ROYALE, "2025-01-01"), ("b", *REZE_CENTRE, "2025-02-01")])
    publisher = {"Authorization": f"Bearer {await make_key(engine, 'publisher', [('secret', 'read')])}"}
    body = {
        "slug": "secret-compte",
        "title": "Relevés internes",
        "methodology": "Nombre de relevés.",
        "unit": "relevés",
        "source": {"type": "dataset", "dataset": "secret", "time": "date_releve"},
        "aggregation": {"function": "count"},
        "period": "year",
    }
    outsider = {"Authorization": f"Bearer {await make_key(engine, 'publisher')}"}
    hidden_source = await client.post("/api/v1/indicators", json=body, headers=outsider)
    assert hidden_source.status_code == 422  # it cannot even name a dataset it does not see
    created = await client.post("/api/v1/indicators", json=body, headers=publisher)
    assert created.status_code == 201, created.text
    assert created.json()["access"] == "restricted"
    for path in (
        "/api/v1/indicators/secret-compte",
        "/api/v1/indicators/secret-compte/values",
        "/api/v1/datasets/indicateur-secret-compte",
        "/ogcapi/collections/indicateur-secret-compte/items",
        "/indicateurs/secret-compte",
        "/embed/indicators/secret-compte",
    ):
        assert (await client.get(path)).status_code == 404, path
    assert "secret-compte" not in (await client.get("/api/v1/indicators")).text
    assert "indicateur-secret-compte" not in (await client.get("/dcat/catalog.ttl")).text
    # Its creator owns it: reads it, changes it, deletes it; another publisher may not.
    assert (await client.get("/api/v1/indicators/secret-compte", headers=publisher)).status_code == 200
    assert (await client.delete("/api/v1/indicators/secret-compte", headers=outsider)).status_code == 404
    changed = await client.put("/api/v1/indicators/secret-compte", json={**body, "unit": "points"}, headers=publisher)
    assert changed.status_code == 200 and changed.json()["unit"] == "points"
    assert (await client.delete("/api/v1/indicators/secret-compte", headers=publisher)).status_code == 204
    assert await db.fetchval("SELECT count(*) FROM dataset WHERE slug = 'indicateur-secret-compte'") == 0
    assert await db.fetchval("SELECT count(*) FROM audit_event WHERE action LIKE 'indicator.%'") == 3


async def test_the_shipped_definitions_load_and_a_broken_file_is_reported(
    settings: Settings, client: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine, tmp_path: Path
) -> None:
    await territory(settings, client)
    await pm10_sensor(db, *PLACE_ROYALE)  # the ObservedProperty the PM10 indicators name
    reports = await load_folder(db, DEFINITIONS)
    assert {r["indicator"]: r["status"] for r in reports} == {
        "bornes-recharge-10000-habitants": "loaded",
        "pm10-jours-depassement": "loaded",
        "pm10-moyenne-journaliere": "loaded",
        "velos-croissance-annuelle": "loaded",
        "velos-passages-hebdo": "loaded",
    }
    computed = await process_dirty(db)
    assert sorted(r.indicator for r in computed.computed if r.error is None) == sorted(r["indicator"] for r in reports)
    assert {r["status"] for r in await load_folder(db, DEFINITIONS)} == {"unchanged"}
    (tmp_path / "casse.yaml").write_text("slug: casse\ntitle: Cassé\nunite: jours\n", encoding="utf-8")
    (tmp_path / "velos-passages-hebdo.yaml").write_text(
        (DEFINITIONS / "velos-passages-hebdo.yaml").read_text(encoding="utf-8"), encoding="utf-8"
    )
    broken = {r["file"]: r for r in await load_folder(db, tmp_path)}
    assert broken["casse.yaml"]["status"] == "error"
    assert {"field": "unite", "message": "unknown field"} in broken["casse.yaml"]["errors"]
    assert broken["velos-passages-hebdo.yaml"]["status"] == "unchanged"
    # File-declared indicators are changed in their files, not through the API (admins excepted).
    publisher = {"Authorization": f"Bearer {await make_key(engine, 'publisher')}"}
    assert (await client.delete("/api/v1/indicators/velos-passages-hebdo", headers=publisher)).status_code == 403

    # The portal: cards, pages, the embeddable view (framable, no script), all public.
    cards = await client.get("/indicateurs")
    assert cards.status_code == 200 and "Points de recharge publics pour 10 000 habitants" in cards.text
    page = await client.get("/indicateurs/bornes-recharge-10000-habitants")
    assert page.status_code == 200 and 'class="choropleth"' in page.text and "Objectif non atteint" in page.text
    unit = await client.get("/indicateurs/unites/communes-nantes-metropole/44109")
    assert unit.status_code == 200 and "Nantes" in unit.text
    embed = await client.get("/embed/indicators/velos-passages-hebdo")
    assert embed.status_code == 200 and "frame-ancestors *" in embed.headers["content-security-policy"]
    assert "<script" not in embed.text and 'class="series"' in embed.text
    assert (await client.get("/indicateurs/nulle-part")).status_code == 404


async def _quartier_code(db: asyncpg.Connection, name: str) -> str:
    table = await db.fetchval("SELECT table_name FROM dataset WHERE slug = 'quartiers-nantes'")
    return str(await db.fetchval(f'SELECT osm_id::text FROM datasets."{table}" WHERE name = $1', name))


async def _values(db: asyncpg.Connection, slug: str) -> dict[tuple[str, datetime], dict[str, Any]]:
    rows = await db.fetch(
        "SELECT v.unit_code, v.period_start, v.value, v.record_count, v.computed_at FROM indicator_value v "
        "JOIN indicator i ON i.id = v.indicator_id WHERE i.slug = $1",
        slug,
    )
    return {(r["unit_code"], r["period_start"]): dict(r) for r in rows}
