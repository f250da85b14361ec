"""One model, two views: sensor data stored once, read as SensorThings, OGC API - Features and NGSI-LD entities."""

from __future__ import annotations

import asyncpg
import httpx
import pytest

from territoire_data.demo import DEMO_CONNECTORS, _history, _store_history
from territoire_data.ingest.mqtt.config import load_connector
from territoire_data.paths import shipped
from territoire_data.settings import Settings

pytestmark = [pytest.mark.db]

BASE = "/ngsi-ld/v1"


async def load_sensor_history(settings: Settings, hours: int = 2) -> int:
    """A couple of hours of the demo's simulated traffic, through the shipped ChirpStack connector's pipeline."""
    from tests.catalog_helpers import mark_published

    config = load_connector(shipped("connectors") / DEMO_CONNECTORS["application"])
    stored = await _store_history(settings, config, _history(hours, seed=7)["application"])
    await mark_published(config.dataset.slug)  # a connector's new dataset is a draft until published
    return stored


async def test_a_demo_sensor_reads_the_same_through_sensorthings_features_and_ngsi_ld(
    client: httpx.AsyncClient, db: asyncpg.Connection, settings: Settings
) -> None:
    assert await load_sensor_history(settings) > 0
    row = await db.fetchrow(
        "SELECT d.id AS datastream, d.thing_id FROM datastream d JOIN observed_property op "
        "ON op.id = d.observed_property_id WHERE op.external_key = 'pm10' ORDER BY d.id LIMIT 1"
    )
    thing, datastream = row["thing_id"], row["datastream"]
    entity_id = f"urn:ngsi-ld:Thing:{thing}"
    ngsi = await client.get(f"{BASE}/entities/{entity_id}")
    assert ngsi.status_code == 200, ngsi.text
    entity = ngsi.json()
    assert entity["type"] == "AirQualityObserved"
    assert entity["location"]["type"] == "GeoProperty"
    pm10 = entity["pm10"]
    assert pm10["type"] == "Property" and pm10["unitCode"] == "GQ"
    sta = await client.get(
        f"/sta/v1.1/Datastreams({datastream})/Observations",
        params={"$top": 1, "$orderby": "phenomenonTime desc", "$select": "result,phenomenonTime"},
    )
    latest = sta.json()["value"][0]
    assert pm10["value"] == latest["result"]
    assert pm10["observedAt"][:19] == latest["phenomenonTime"][:19]
    feature = await client.get(f"/ogcapi/collections/capteurs/items/{thing}")
    assert feature.status_code == 200
    observations = feature.json()["properties"]["observations"]
    by_datastream = {o["datastream"]: o["result"] for o in observations.values()}
    assert by_datastream[datastream] == pm10["value"]
    # every attribute is a valid NGSI-LD attribute: no null member anywhere (a unitCode unknown is left out)
    for name, attribute in entity.items():
        if isinstance(attribute, dict):
            assert None not in attribute.values(), name


async def test_sensor_entities_are_queried_by_type_q_and_geo(client: httpx.AsyncClient, settings: Settings) -> None:
    await load_sensor_history(settings, hours=1)
    air = await client.get(f"{BASE}/entities", params={"type": "AirQualityObserved", "count": "true", "limit": 100})
    assert air.status_code == 200
    count = int(air.headers["ngsild-results-count"])
    assert count == len(air.json()) > 0
    assert all(e["type"] == "AirQualityObserved" for e in air.json())
    dirty = await client.get(f"{BASE}/entities", params={"type": "AirQualityObserved", "q": "pm10>0", "limit": 100})
    assert len(dirty.json()) == count
    none = await client.get(f"{BASE}/entities", params={"type": "AirQualityObserved", "q": "pm10>100000"})
    assert none.json() == []
    nantes = await client.get(
        f"{BASE}/entities",
        params={
            "type": "AirQualityObserved",
            "georel": "within",
            "geometry": "Polygon",
            "coordinates": "[[[-1.65,47.15],[-1.45,47.15],[-1.45,47.30],[-1.65,47.30],[-1.65,47.15]]]",
            "limit": 100,
        },
    )
    assert len(nantes.json()) == count


async def test_restricted_sensor_data_is_invisible_on_every_ngsi_ld_path(
    client: httpx.AsyncClient, db: asyncpg.Connection, settings: Settings
) -> None:
    await load_sensor_history(settings, hours=1)
    thing = await db.fetchval("SELECT min(id) FROM thing")
    visible = await client.get(f"{BASE}/entities", params={"idPattern": ".*", "count": "true", "limit": 1})
    total = int(visible.headers["ngsild-results-count"])
    await db.execute("UPDATE dataset SET access = 'restricted'")
    assert (await client.get(f"{BASE}/entities/urn:ngsi-ld:Thing:{thing}")).status_code == 404
    hidden = await client.get(f"{BASE}/entities", params={"idPattern": ".*", "count": "true", "limit": 1})
    assert hidden.headers["ngsild-results-count"] == "0" and total > 0
    temporal = await client.get(f"{BASE}/temporal/entities/urn:ngsi-ld:Thing:{thing}")
    assert temporal.status_code == 404


async def test_a_table_dataset_reads_as_entities_of_its_declared_type(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    from tests.catalog_helpers import add_point_table, create_dataset

    await create_dataset(client, "toilettes", "Toilettes publiques")
    await add_point_table(
        db,
        "toilettes",
        [("Place Royale", -1.5593, 47.2136, "2026-01-02"), ("Commerce", -1.5589, 47.2130, "2026-01-03")],
    )
    plain = await client.get(f"{BASE}/entities", params={"type": "PublicToilet"})
    assert plain.json() == []  # no mapping declared: the dataset is no NGSI-LD entity
    mapping = (
        '{"ngsi_ld": {"type": "PublicToilet", "id": "nom", '
        '"attributes": {"nom": "name", "date_releve": "dateObserved"}}}'
    )
    await db.execute("UPDATE dataset SET extra = extra || $1::jsonb WHERE slug = 'toilettes'", mapping)
    found = await client.get(f"{BASE}/entities", params={"type": "PublicToilet", "count": "true"})
    assert found.headers["ngsild-results-count"] == "2"
    entity = next(e for e in found.json() if e["name"]["value"] == "Place Royale")
    assert entity["id"] == "urn:ngsi-ld:PublicToilet:toilettes:Place Royale"
    assert entity["dateObserved"] == {"type": "Property", "value": "2026-01-02"}
    assert entity["location"]["value"]["coordinates"] == [-1.5593, 47.2136]
    one = await client.get(f"{BASE}/entities/urn:ngsi-ld:PublicToilet:toilettes:Commerce")
    assert one.status_code == 200 and one.json()["name"]["value"] == "Commerce"
    near = await client.get(
        f"{BASE}/entities",
        params={
            "type": "PublicToilet",
            "georel": "near;maxDistance==30",
            "geometry": "Point",
            "coordinates": "[-1.5593,47.2136]",
        },
    )
    assert [e["name"]["value"] for e in near.json()] == ["Place Royale"]
    await db.execute("UPDATE dataset SET access = 'restricted' WHERE slug = 'toilettes'")
    assert (await client.get(f"{BASE}/entities", params={"type": "PublicToilet"})).json() == []
    assert (await client.get(f"{BASE}/entities/urn:ngsi-ld:PublicToilet:toilettes:Commerce")).status_code == 404
