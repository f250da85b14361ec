"""The query forms published SensorThings clients send, replayed against the real server.

Each form below is the one a client's source code builds (repository, commit and file named with it), with our
ids and times put in. Dashboards name ids `@iot.id` at any step of a path (`Datastream/@iot.id eq 12`), in
`$orderby`, `$select` and inside `$expand`: FROST accepts `@iot.id` wherever `id` is, and so must we. FROST's own
Python client (frost-sta-client, from PyPI, unmodified) drives the same forms through its query builder.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import frost_sta_client as fsc
import httpx
import pytest
from frost_sta_client.model.ext.unitofmeasurement import UnitOfMeasurement
from geojson import Point

from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_KEY, LiveServer

pytestmark = [pytest.mark.e2e, pytest.mark.db]

MEASUREMENT = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement"


@pytest.fixture
def server(settings: Settings, db: object) -> Iterator[LiveServer]:
    live = LiveServer(settings)
    live.start()
    yield live
    live.stop()


def _populate(service: fsc.SensorThingsService) -> dict[str, Any]:
    """Two stations with one Datastream each and a day of hourly values, made with FROST's client."""
    made: dict[str, Any] = {}
    for name, lon, lat, base in (("Bellecour", 4.832, 45.757, 10), ("Louvre", 2.336, 48.861, 100)):
        location = fsc.Location(
            name=f"{name} site", description="", encoding_type="application/geo+json", location=Point((lon, lat))
        )
        thing = fsc.Thing(name=f"Station {name}", description="air", locations=[location])
        service.create(thing)
        datastream = fsc.Datastream(
            name=f"temperature {name}",
            description="air temperature",
            observation_type=MEASUREMENT,
            unit_of_measurement=UnitOfMeasurement(name="degree Celsius", symbol="°C", definition="ucum:Cel"),
            thing=thing,
            sensor=fsc.Sensor(name=f"DHT22 {name}", description="", encoding_type="application/pdf", metadata="x"),
            observed_property=fsc.ObservedProperty(name=f"T {name}", definition="http://x/T", description="T"),
        )
        service.create(datastream)
        for hour in range(24):
            service.create(
                fsc.Observation(
                    result=base + hour, phenomenon_time=f"2026-11-01T{hour:02d}:00:00Z", datastream=datastream
                )
            )
        made[name] = {"thing": thing.id, "datastream": datastream.id}
    return made


def _frost_client_forms(url: str) -> None:
    service = fsc.SensorThingsService(f"{url}/sta/v1.1", auth_handler=fsc.AuthHandler("admin", TEST_ADMIN_KEY))
    made = _populate(service)
    louvre = made["Louvre"]["datastream"]
    # `@iot.id` at the end of a path in $filter, and as the sort key
    found = list(
        service.observations()
        .query()
        .filter(f"Datastream/@iot.id eq {louvre} and result lt 103")
        .orderby("@iot.id", "DESC")
        .list()
    )
    assert [o.result for o in found] == [102.0, 101.0, 100.0]
    assert [o.id for o in found] == sorted((o.id for o in found), reverse=True)
    # `@iot.id` in $select and inside $expand's options
    things = list(
        service.things()
        .query()
        .select("@iot.id,name")
        .filter("Datastreams/@iot.id eq " + str(made["Bellecour"]["datastream"]))
        .expand("Datastreams($select=@iot.id,name;$orderby=@iot.id asc)")
        .list()
    )
    assert [(t.id, t.name) for t in things] == [(made["Bellecour"]["thing"], "Station Bellecour")]
    assert [d.id for d in things[0].datastreams] == [made["Bellecour"]["datastream"]]
    assert [t.id for t in service.things().query().filter("@iot.id gt 0").orderby("@iot.id", "ASC").list()] == [
        made["Bellecour"]["thing"],
        made["Louvre"]["thing"],
    ]


async def test_frost_python_client_uses_iot_id_everywhere(server: LiveServer) -> None:
    await asyncio.to_thread(_frost_client_forms, server.url)


def _replayed(url: str) -> None:
    service = fsc.SensorThingsService(f"{url}/sta/v1.1", auth_handler=fsc.AuthHandler("admin", TEST_ADMIN_KEY))
    made = _populate(service)
    bellecour, louvre = made["Bellecour"], made["Louvre"]
    http = httpx.Client(base_url=f"{url}/sta/v1.1", timeout=30)

    def get(path: str) -> dict[str, Any]:
        response = http.get(path)
        assert response.status_code == 200, (path, response.text)
        body: dict[str, Any] = response.json()
        return body

    # FROST's Grafana datasource (FraunhoferIOSB/frost-sensorthings-datasource @ 659fd5c, src/datasource.ts and
    # src/components/DatastreamTable.tsx): a Datastream's Observations in the panel's time range, 1,000 a page;
    # the entry-point tables filtered with startswith and counted
    body = get(
        f"/Datastreams({bellecour['datastream']})/Observations?$orderby=phenomenonTime asc"
        "&$filter=phenomenonTime ge 2026-11-01T03:00:00.000Z and phenomenonTime le 2026-11-01T05:00:00.000Z"
        "&$top=1000"
    )
    assert [o["result"] for o in body["value"]] == [13, 14, 15]
    body = get("/Things?$filter=startswith(name,'Station L')&$count=true&$skip=0&$top=10")
    assert body["@iot.count"] == 1 and body["value"][0]["@iot.id"] == louvre["thing"]

    # istSOS4's Grafana plugin (istSOS/istSOS4-GrafanaPlugin @ 02568ef, supsi-istsos4/src/queryBuilder.ts): it
    # prepends `@iot.id` to every $select, filters on `<Entity>/@iot.id`, and its tests send quoted instants
    body = get(
        f"/Datastreams?$filter=Thing/@iot.id eq {louvre['thing']}&$select=@iot.id,name,description"
        "&$orderby=name asc&$top=10&$count=true"
    )
    assert body["value"] == [
        {"@iot.id": louvre["datastream"], "name": "temperature Louvre", "description": "air temperature"}
    ]
    body = get(
        f"/Observations?$filter=Datastream/@iot.id eq {louvre['datastream']} and phenomenonTime ge "
        "'2026-11-01T20:00:00Z' and phenomenonTime le '2026-11-01T22:00:00Z'&$orderby=phenomenonTime desc"
    )
    assert [o["result"] for o in body["value"]] == [122, 121, 120]
    body = get(
        f"/Datastreams?$select=@iot.id,name&$expand=Observations($select=@iot.id,result;$orderby=@iot.id desc;$top=1)"
        f"&$filter=@iot.id eq {bellecour['datastream']}"
    )
    assert body["value"][0]["Observations"][0]["result"] == 33

    # pygeoapi's SensorThings provider (geopython/pygeoapi @ 0287f75, pygeoapi/provider/sensorthings.py): its
    # Datastreams $expand, a filter on a related entity's @iot.id, a sort on one, and its bbox as st_within
    expand = (
        "Sensor,ObservedProperty,Thing,Thing/Locations,Observations($select=@iot.id;$orderby=phenomenon"
        "Time desc),Observations/FeatureOfInterest($select=feature)"
    )
    body = get(
        f"/Datastreams?$skip=0&$top=10&$filter=Thing/@iot.id eq {bellecour['thing']}"
        f"&$orderby=Thing/@iot.id desc&$expand={expand}"
    )
    assert [d["@iot.id"] for d in body["value"]] == [bellecour["datastream"]]
    assert body["value"][0]["Thing"]["Locations"][0]["location"]["coordinates"] == [4.832, 45.757]
    assert len(body["value"][0]["Observations"]) == 24
    body = get(
        "/Datastreams?$skip=0&$top=10&$filter=st_within(Thing/Locations/location, geography'POLYGON ((2 48, "
        "3 48, 3 49, 2 49, 2 48))')&$orderby=Thing/@iot.id asc"
    )
    assert [d["@iot.id"] for d in body["value"]] == [louvre["datastream"]]
    http.close()


async def test_query_forms_of_published_clients(server: LiveServer) -> None:
    await asyncio.to_thread(_replayed, server.url)


def _ogc_ets(url: str) -> None:
    """The OGC conformance test suite (opengeospatial/ets-sta10 @ f8308be,
    filteringExtension/Capability3Tests.java): twelve Observations with results 1..12, then every query option at
    once; `result gt '3'` compares as text there ("4".."9": 6), which FROST and the suite agree on."""
    service = fsc.SensorThingsService(f"{url}/sta/v1.1", auth_handler=fsc.AuthHandler("admin", TEST_ADMIN_KEY))
    location = fsc.Location(
        name="ETS site", description="", encoding_type="application/geo+json", location=Point((-117.05, 51.05))
    )
    thing = fsc.Thing(name="ETS thing", description="", locations=[location])
    service.create(thing)
    datastream = fsc.Datastream(
        name="ETS datastream",
        description="",
        observation_type=MEASUREMENT,
        unit_of_measurement=UnitOfMeasurement(name="", symbol="", definition=""),
        thing=thing,
        sensor=fsc.Sensor(name="s", description="", encoding_type="application/pdf", metadata="x"),
        observed_property=fsc.ObservedProperty(name="p", definition="http://x/p", description=""),
    )
    service.create(datastream)
    for day in range(1, 13):
        service.create(
            fsc.Observation(result=day, phenomenon_time=f"2015-03-{day:02d}T00:00:00Z", datastream=datastream)
        )
    query = "?$count=true&$top=1&$skip=2&$orderby=phenomenonTime%20asc&$filter=result%20gt%20'3'"
    response = httpx.get(f"{url}/sta/v1.1/Observations{query}", timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["@iot.count"] == 6
    assert [o["result"] for o in body["value"]] == [6]


async def test_query_forms_of_the_ogc_conformance_suite(server: LiveServer) -> None:
    await asyncio.to_thread(_ogc_ets, server.url)
