"""FROST's own Python client (frost-sta-client, unmodified) against the real server: create, query, paging."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import frost_sta_client as fsc
import pytest
from frost_sta_client.model.ext.unitofmeasurement import UnitOfMeasurement
from geojson import Point

from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_KEY, LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.db]

TOKEN = TEST_ADMIN_KEY


@pytest.fixture
def sta_server(settings: Settings, db: object) -> Iterator[LiveServer]:
    server = LiveServer(settings, env={"TERRITOIRE_STA_DEFAULT_TOP": "3"})
    server.start()
    yield server
    server.stop()


def _scenario(url: str) -> None:
    # FROST's client sends HTTP Basic: our API key goes as the password
    service = fsc.SensorThingsService(f"{url}/sta/v1.1", auth_handler=fsc.AuthHandler("admin", TOKEN))
    location = fsc.Location(
        name="Place Bellecour",
        description="Lyon",
        encoding_type="application/geo+json",
        location=Point((4.832, 45.757)),
    )
    thing = fsc.Thing(name="Station", description="air quality", properties={"owner": "Lyon"}, locations=[location])
    service.create(thing)
    assert isinstance(thing.id, int)
    datastream = fsc.Datastream(
        name="temperature",
        description="air temperature",
        observation_type="http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
        unit_of_measurement=UnitOfMeasurement(name="degree Celsius", symbol="°C", definition="ucum:Cel"),
        thing=thing,
        sensor=fsc.Sensor(name="DHT22", description="sensor", encoding_type="application/pdf", metadata="x"),
        observed_property=fsc.ObservedProperty(name="Temperature", definition="http://x/T", description="T"),
    )
    service.create(datastream)
    for minute in range(7):
        service.create(
            fsc.Observation(result=20 + minute, phenomenon_time=f"2026-11-01T10:0{minute}:00Z", datastream=datastream)
        )
    found = service.things().query().filter("name eq 'Station'").expand("Locations,Datastreams").list()
    things = list(found)
    assert [t.name for t in things] == ["Station"]
    # paging: the default page is 3, the client follows @iot.nextLink
    observations = service.observations().query().filter("result ge 21").orderby("result", "ASC").list()
    assert [o.result for o in observations] == [21.0, 22.0, 23.0, 24.0, 25.0, 26.0]
    counted = service.datastreams().query().count().list()
    assert counted.count == 1
    # FROST's client patches with JSON Patch (application/json-patch+json)
    service.patch(
        thing,
        [
            {"op": "replace", "path": "/name", "value": "Station Bellecour"},
            {"op": "add", "path": "/properties/floors", "value": 3},
        ],
    )
    # $select, and $select inside $expand, as FROST's query builder writes them
    selected = list(
        service.things()
        .query()
        .select("name,id")
        .expand("Datastreams($select=name,id;$expand=Sensor($select=name))")
        .list()
    )
    assert [(t.id, t.name, t.description) for t in selected] == [(thing.id, "Station Bellecour", None)]
    expanded = list(selected[0].datastreams)
    assert [(d.id, d.name, d.unit_of_measurement) for d in expanded] == [(datastream.id, "temperature", None)]
    assert expanded[0].sensor.name == "DHT22"
    fetched = service.things().find(thing.id)
    assert fetched.name == "Station Bellecour"
    assert fetched.properties == {"owner": "Lyon", "floors": 3}
    service.delete(fetched)
    assert list(service.things().query().list()) == []


async def test_frost_client_creates_queries_and_pages(sta_server: LiveServer) -> None:
    await asyncio.to_thread(_scenario, sta_server.url)


class _Units(list[UnitOfMeasurement]):
    """frost-sta-client 1.1.53 (the latest) writes `unit_of_measurements.__getstate__()`: on Python >= 3.11 a
    plain list has that method and answers None, so the client would send `"unitOfMeasurements": null`. This
    list answers what the client means (its units' JSON); everything else goes through the client unchanged."""

    def __getstate__(self) -> list[dict[str, object]]:  # type: ignore[override]
        return [unit.__getstate__() for unit in self]


def _multi_datastream_scenario(url: str) -> None:
    """The MultiDatastream extension through FROST's client: deep insert, Observations with array results, reads."""
    service = fsc.SensorThingsService(f"{url}/sta/v1.1", auth_handler=fsc.AuthHandler("admin", TOKEN))
    location = fsc.Location(
        name="Mât", description="Lyon", encoding_type="application/geo+json", location=Point((4.83, 45.75))
    )
    thing = fsc.Thing(name="Mast", description="weather mast", locations=[location])
    service.create(thing)
    measurement = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"
    multi = fsc.MultiDatastream(
        name="wind",
        description="speed and direction",
        observation_type="http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_ComplexObservation",
        unit_of_measurements=_Units(
            [
                UnitOfMeasurement(name="metre per second", symbol="m/s", definition="ucum:m/s"),
                UnitOfMeasurement(name="degree", symbol="°", definition="ucum:deg"),
            ]
        ),
        multi_observation_data_types=[measurement, measurement],
        thing=thing,
        sensor=fsc.Sensor(name="anemometer", description="sensor", encoding_type="application/pdf", metadata="x"),
        observed_properties=[
            fsc.ObservedProperty(name="Wind speed", definition="http://x/speed", description="speed"),
            fsc.ObservedProperty(name="Wind direction", definition="http://x/direction", description="direction"),
        ],
    )
    service.create(multi)
    assert isinstance(multi.id, int)
    for hour in range(4):
        service.create(
            fsc.Observation(
                result=[hour + 0.5, 90 * hour], phenomenon_time=f"2026-11-01T0{hour}:00:00Z", multi_datastream=multi
            )
        )
    found = service.multi_datastreams().find(multi.id)
    assert found.name == "wind"
    assert [u["symbol"] for u in found.unit_of_measurements] == ["m/s", "°"]
    assert found.multi_observation_data_types == [measurement, measurement]
    listed = list(service.multi_datastreams().query().expand("ObservedProperties,Thing").list())
    assert [p.name for p in listed[0].observed_properties] == ["Wind speed", "Wind direction"]
    assert listed[0].thing.name == "Mast"
    # the client pages through a MultiDatastream's Observations (3 a page here)
    results = [o.result for o in found.get_observations().query().orderby("phenomenonTime", "ASC").list()]
    assert results == [[0.5, 0], [1.5, 90], [2.5, 180], [3.5, 270]]
    service.delete(found)
    assert list(service.multi_datastreams().query().list()) == []
    assert list(service.observations().query().list()) == []


async def test_frost_client_multi_datastreams(sta_server: LiveServer) -> None:
    await asyncio.to_thread(_multi_datastream_scenario, sta_server.url)
