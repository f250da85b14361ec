"""THE access matrix: every read door x every kind of caller x every state of a dataset, over one world.

States of the "secret" datasets (a table and a sensor dataset): restricted (published, access restricted), draft
(access public, not yet published) and published (public and published: everyone sees them). A draft is hidden
exactly like a restricted dataset, except from a reader granted it: only its writers and admins see a draft.

A restricted table dataset (loaded through the real import door and loader) and restricted sensor entities
(a Thing, its Location, Sensor, Datastream and Observations in a restricted dataset), next to public ones. For
every door in DOORS, each caller must get:

- no key, a reader granted another dataset, a publisher without a grant: 404 for a restricted resource (exactly
  like a missing one), or a list that does not show it — no marker of it, and the same body, counts and
  extents as an anonymous caller gets;
- a reader granted the restricted datasets, and an admin: 200 and the restricted data.

Public doors (DCAT, the portal) never show restricted data, whoever asks: they carry no key. Adding a door is one
line in DOORS. The world is built once for the module (the doors only read it).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import orjson
import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from territoire_data.api.app import create_app
from territoire_data.sensorthings.routes import close_pool
from territoire_data.settings import Settings
from tests.conftest import TEST_ADMIN_AUTH, make_key, reset_database

pytestmark = pytest.mark.db

STA = "/sta/v1.1"
SECRET = "registre-secret"  # the restricted table dataset
SECRET_SENSORS = "capteurs-secrets"  # the restricted sensor dataset
# Text that only restricted data contains (its rows, names, results, theme, coordinates).
ROW, THING, STREAM, PLACE, PROBE, RESULT, THEME = (
    "Zorglub",
    "Capteur confidentiel",
    "flux confidentiel",
    "Lieu confidentiel",
    "Sonde confidentielle",
    "987.654",
    "HEAL",
)
HIDDEN_STREAM, HIDDEN_RESULT = "flux caché", "555.125"  # a restricted Datastream on the public Thing
CROSSED = "flux croisé"  # a Datastream filed under the public dataset, on the restricted Thing
# A restricted MultiDatastream on the restricted Thing: the public Température and a Humidité of its own.
MULTI, MULTI_RESULT, HUMIDITY = "multiflux confidentiel", "876.125", "Humidité secrète"
OTHER = "autre"  # the restricted dataset that the reader of another dataset may read
HIDDEN = ("anonymous", "reader of another dataset", "publisher without grant")
GRANTED = ("granted reader", "granted writer", "admin")
STATES = ("restricted", "draft", "published")
# Who may not see the secret datasets in each state (everyone else may).
HIDDEN_IN = {"restricted": HIDDEN, "draft": (*HIDDEN, "granted reader"), "published": ()}


@dataclass(frozen=True)
class Door:
    """One read path. `path` is formatted with the world's ids; `markers` are what shows the restricted data.

    kind: "entity" (404 when hidden), "list" (200, restricted part absent when hidden), "public" (a door without
    keys: hidden from everyone, 404 for an entity-like path when `status` is 404).
    """

    name: str
    path: str
    kind: str = "entity"
    markers: tuple[str, ...] = ()
    count: Callable[[Any], int] | None = None  # a count (or extent) that the restricted data would change
    headers: dict[str, str] = field(default_factory=dict)
    status: int = 200  # what a public door answers
    method: str = "GET"
    json: Any = None  # a request body, its strings formatted with the world's ids like `path`


def iot_count(body: Any) -> int:
    return int(body["@iot.count"])


def catalog_total(body: Any) -> int:
    """The catalog's total, less the dataset the reader of another dataset was granted (its own to see)."""
    return int(body["total"]) - sum(1 for item in body["items"] if item["slug"] == OTHER)


def sensors_east_edge(body: Any) -> int:
    """The east edge of the sensor network's extent: the restricted Thing stands far east of the public one."""
    return round(body["extent"]["spatial"]["bbox"][0][2] * 100)


def sensors_last_year(body: Any) -> int:
    """The end of the sensor network's temporal extent: restricted Datastreams run to 2030 and 2031."""
    return int(body["extent"]["temporal"]["interval"][0][1][:4])


def collections_east_edge(body: Any) -> int:
    capteurs = next(c for c in body["collections"] if c["id"] == "capteurs")
    return sensors_east_edge(capteurs) + 1000 * len(body["collections"])


DOORS: list[Door] = [
    # catalog API
    Door("catalog detail", f"/api/v1/datasets/{SECRET}", markers=(SECRET,)),
    Door("catalog detail sensors", f"/api/v1/datasets/{SECRET_SENSORS}", markers=(SECRET_SENSORS,)),
    Door("catalog list", "/api/v1/datasets", "list", (SECRET, SECRET_SENSORS, THEME), catalog_total),
    Door("catalog search", "/api/v1/datasets?q=confidentiel", "list", (SECRET,), catalog_total),
    Door("catalog import report", f"/api/v1/datasets/{SECRET}/imports/{{import_id}}", markers=(SECRET,)),
    # DCAT: the harvested catalog is public data only, whoever asks
    Door("dcat jsonld", "/dcat/catalog.jsonld", "public", (SECRET, SECRET_SENSORS)),
    Door("dcat ttl", "/dcat/catalog.ttl", "public", (SECRET, SECRET_SENSORS)),
    Door("dcat rdf", "/dcat/catalog.rdf", "public", (SECRET, SECRET_SENSORS)),
    Door("dcat negotiated", "/dcat/catalog", "public", (SECRET,), headers={"Accept": "text/turtle"}),
    Door("dcat scdl", "/dcat/catalog.scdl.csv", "public", (SECRET, SECRET_SENSORS)),
    # the portal: browsers carry no key
    Door("portal home", "/", "public", (SECRET, "Registre confidentiel")),
    Door("portal search", "/?q=confidentiel", "public", (SECRET, "Registre confidentiel")),
    Door("portal page", f"/datasets/{SECRET}", "public", (ROW,), status=404),
    Door("portal map", f"/datasets/{SECRET}/preview.geojson", "public", (ROW,), status=404),
    Door("portal sensors page", f"/datasets/{SECRET_SENSORS}", "public", (THING,), status=404),
    Door("portal chart", f"/datasets/{SECRET_SENSORS}/recent.json?periode=1an", "public", (STREAM,), status=404),
    Door("portal public sensors map", "/datasets/capteurs-publics/preview.geojson", "public", (THING, PLACE)),
    Door("portal public sensors chart", "/datasets/capteurs-publics/recent.json?periode=1an", "public", (CROSSED,)),
    Door("portal public sensors page", "/datasets/capteurs-publics", "public", (CROSSED, THING)),
    # OGC API - Features
    Door("ogc collections", "/ogcapi/collections", "list", (SECRET, "48.58"), collections_east_edge),
    Door("ogc collections html", "/ogcapi/collections?f=html", "list", (SECRET,)),
    Door("ogc api definition", "/ogcapi/api", "list", (SECRET,)),
    Door("ogc collection", f"/ogcapi/collections/{SECRET}", markers=(SECRET,)),
    Door("ogc collection html", f"/ogcapi/collections/{SECRET}?f=html", markers=(SECRET,)),
    Door("ogc items", f"/ogcapi/collections/{SECRET}/items", markers=(ROW,)),
    Door("ogc items filtered", f"/ogcapi/collections/{SECRET}/items?nom={ROW}&limit=1", markers=(ROW,)),
    Door("ogc items html", f"/ogcapi/collections/{SECRET}/items?f=html", markers=(ROW,)),
    Door("ogc item", f"/ogcapi/collections/{SECRET}/items/1", markers=(ROW,)),
    Door("ogc queryables", f"/ogcapi/collections/{SECRET}/queryables", markers=('"nom"',)),
    Door("ogc tilesets", f"/ogcapi/collections/{SECRET}/tiles", markers=(SECRET,)),
    Door("ogc tileset", f"/ogcapi/collections/{SECRET}/tiles/WebMercatorQuad", markers=(SECRET,)),
    Door("ogc tile", f"/ogcapi/collections/{SECRET}/tiles/WebMercatorQuad/0/0/0", markers=(ROW,)),
    Door("ogc sensors collection", "/ogcapi/collections/capteurs", "list", ("48.58",), sensors_east_edge),
    Door("ogc sensors items", "/ogcapi/collections/capteurs/items", "list", (THING, RESULT, STREAM, HIDDEN_STREAM)),
    Door("ogc sensors public item", "/ogcapi/collections/capteurs/items/{public_thing}", "list", (HIDDEN_RESULT,)),
    Door("ogc sensors temporal extent", "/ogcapi/collections/capteurs", "list", (), sensors_last_year),
    Door("ogc sensors item", "/ogcapi/collections/capteurs/items/{thing}", markers=(THING,)),
    # records and exports
    Door("records", f"/api/v1/datasets/{SECRET}/records", markers=(ROW,)),
    Door("export csv", f"/api/v1/datasets/{SECRET}/exports/csv", markers=(ROW,)),
    Door("export geojson", f"/api/v1/datasets/{SECRET}/exports/geojson", markers=(ROW,)),
    Door("export parquet", f"/api/v1/datasets/{SECRET}/exports/parquet"),
    Door("export gpkg", f"/api/v1/datasets/{SECRET}/exports/gpkg"),
    Door("export fgb", f"/api/v1/datasets/{SECRET}/exports/fgb"),
    Door("export shapefile", f"/api/v1/datasets/{SECRET}/exports/shapefile"),
    Door("datastream export csv", "/api/v1/datastreams/{datastream}/exports/csv", markers=("987",)),
    Door("datastream export parquet", "/api/v1/datastreams/{datastream}/exports/parquet"),
    Door("sensor dataset export csv", f"/api/v1/datasets/{SECRET_SENSORS}/exports/csv", markers=("987", THING)),
    Door("sensor dataset export parquet", f"/api/v1/datasets/{SECRET_SENSORS}/exports/parquet"),
    # SensorThings: entity sets, with $count
    Door("sta Things", f"{STA}/Things?$count=true", "list", (THING,), iot_count),
    Door("sta Datastreams", f"{STA}/Datastreams?$count=true", "list", (STREAM,), iot_count),
    Door("sta Observations", f"{STA}/Observations?$count=true", "list", (RESULT,), iot_count),
    Door("sta Locations", f"{STA}/Locations?$count=true", "list", (PLACE,), iot_count),
    Door(
        "sta HistoricalLocations",
        f"{STA}/HistoricalLocations?$count=true",
        "list",
        ("HistoricalLocations({hl})",),
        iot_count,
    ),
    Door("sta Sensors", f"{STA}/Sensors?$count=true", "list", (PROBE,), iot_count),
    Door("sta FeaturesOfInterest", f"{STA}/FeaturesOfInterest?$count=true", "list", (PLACE,), iot_count),
    Door("sta ObservedProperties", f"{STA}/ObservedProperties?$count=true", "list", ("Radon",), iot_count),
    Door("sta count only", f"{STA}/Observations?$count=true&$top=0", "list", (), iot_count),
    Door("sta MultiDatastreams", f"{STA}/MultiDatastreams?$count=true", "list", (MULTI,), iot_count),
    Door("sta Observations of both kinds", f"{STA}/Observations?$count=true", "list", (MULTI_RESULT,), iot_count),
    Door("sta ObservedProperties multi", f"{STA}/ObservedProperties?$count=true", "list", (HUMIDITY,), iot_count),
    # by id, properties, $value, $ref
    Door("sta Thing", f"{STA}/Things({{thing}})", markers=(THING,)),
    Door("sta Datastream", f"{STA}/Datastreams({{datastream}})", markers=(STREAM,)),
    Door("sta Observation", f"{STA}/Observations({{observation}})", markers=(RESULT,)),
    Door("sta Location", f"{STA}/Locations({{location}})", markers=(PLACE,)),
    Door("sta HistoricalLocation", f"{STA}/HistoricalLocations({{hl}})"),
    Door("sta Sensor", f"{STA}/Sensors({{sensor}})", markers=(PROBE,)),
    Door("sta ObservedProperty", f"{STA}/ObservedProperties({{radon}})", markers=("Radon",)),
    Door("sta FeatureOfInterest", f"{STA}/FeaturesOfInterest({{foi}})", markers=(PLACE,)),
    Door("sta MultiDatastream", f"{STA}/MultiDatastreams({{multi}})", markers=(MULTI,)),
    Door("sta multi Observation", f"{STA}/Observations({{multi_observation}})", markers=(MULTI_RESULT,)),
    Door("sta multi ObservedProperty", f"{STA}/ObservedProperties({{humidity}})", markers=(HUMIDITY,)),
    Door("sta MultiDatastream property", f"{STA}/MultiDatastreams({{multi}})/unitOfMeasurements", markers=("%",)),
    Door("sta property", f"{STA}/Things({{thing}})/name", markers=(THING,)),
    Door("sta $value", f"{STA}/Things({{thing}})/name/$value", markers=(THING,)),
    Door("sta $ref", f"{STA}/Things({{thing}})/Datastreams/$ref", markers=("Datastreams",)),
    # navigation
    Door("sta Thing/Datastreams", f"{STA}/Things({{thing}})/Datastreams", markers=(STREAM,)),
    Door("sta Datastream/Observations", f"{STA}/Datastreams({{datastream}})/Observations", markers=(RESULT,)),
    Door("sta Observation/Datastream", f"{STA}/Observations({{observation}})/Datastream", markers=(STREAM,)),
    Door("sta Location/Things", f"{STA}/Locations({{location}})/Things", markers=(THING,)),
    Door("sta Sensor/Datastreams", f"{STA}/Sensors({{sensor}})/Datastreams", markers=(STREAM,)),
    Door("sta FOI/Observations", f"{STA}/FeaturesOfInterest({{foi}})/Observations", markers=(RESULT,)),
    Door("sta Thing/MultiDatastreams", f"{STA}/Things({{thing}})/MultiDatastreams", markers=(MULTI,)),
    Door(
        "sta MultiDatastream/Observations", f"{STA}/MultiDatastreams({{multi}})/Observations", markers=(MULTI_RESULT,)
    ),
    Door("sta MultiDatastream/ObservedProperties", f"{STA}/MultiDatastreams({{multi}})/ObservedProperties"),
    Door("sta MultiDatastream/Sensor", f"{STA}/MultiDatastreams({{multi}})/Sensor", markers=(PROBE,)),
    Door("sta Observation/MultiDatastream", f"{STA}/Observations({{multi_observation}})/MultiDatastream"),
    Door("sta Sensor/MultiDatastreams", f"{STA}/Sensors({{sensor}})/MultiDatastreams", markers=(MULTI,)),
    Door(
        "sta shared ObservedProperty/MultiDatastreams",
        f"{STA}/ObservedProperties({{temperature}})/MultiDatastreams?$count=true",
        "list",
        (MULTI,),
        iot_count,
    ),
    # $expand through a restricted Datastream (the shared ObservedProperty and Sensors are public)
    Door(
        "sta expand shared",
        f"{STA}/ObservedProperties({{temperature}})?$expand=Datastreams($expand=Observations,Thing)",
        "list",
        (STREAM, RESULT, THING),
    ),
    Door("sta expand Things", f"{STA}/Things?$expand=Datastreams($expand=Observations)", "list", (STREAM, RESULT)),
    Door(
        "sta expand latest",
        f"{STA}/Things?$expand=Datastreams($expand=Observations($top=1;$orderby=phenomenonTime desc))",
        "list",
        (RESULT,),
    ),
    Door("sta expand Sensors", f"{STA}/Sensors?$expand=Datastreams", "list", (STREAM,)),
    Door(
        "sta expand shared multi",
        f"{STA}/ObservedProperties({{temperature}})?$expand=MultiDatastreams($expand=Observations,Thing)",
        "list",
        (MULTI, MULTI_RESULT, THING),
    ),
    Door(
        "sta expand Things multi",
        f"{STA}/Things?$expand=MultiDatastreams($expand=ObservedProperties,Observations)",
        "list",
        (MULTI, MULTI_RESULT, HUMIDITY),
    ),
    Door(
        "sta expand public Thing",
        f"{STA}/Things({{public_thing}})?$expand=Datastreams($expand=Observations)",
        "list",
        (HIDDEN_STREAM, HIDDEN_RESULT),
    ),
    Door("sta public Thing/Datastreams", f"{STA}/Things({{public_thing}})/Datastreams", "list", (HIDDEN_STREAM,)),
    Door(
        "sta batch read",
        f"{STA}/$batch",
        "list",
        (THING, HIDDEN_STREAM),
        method="POST",
        json={
            "requests": [
                {"id": "1", "method": "get", "url": "Things({thing})"},
                {"id": "2", "method": "get", "url": "Datastreams({hidden_stream})"},
            ]
        },
    ),
    # $filter over relations
    Door(
        "sta filter Observations by Datastream",
        f"{STA}/Observations?$count=true&$filter=Datastream/name eq '{STREAM}'",
        "list",
        (RESULT,),
        iot_count,
    ),
    Door(
        "sta filter Things by Datastreams",
        f"{STA}/Things?$count=true&$filter=Datastreams/name eq '{STREAM}'",
        "list",
        (THING,),
        iot_count,
    ),
    Door(
        "sta filter Locations by Things",
        f"{STA}/Locations?$count=true&$filter=Things/name eq '{THING}'",
        "list",
        (PLACE,),
        iot_count,
    ),
    Door(
        "sta filter by result",
        f"{STA}/Observations?$count=true&$filter=result gt 900",
        "list",
        (RESULT,),
        iot_count,
    ),
    Door("sta dataArray", f"{STA}/Observations?$resultFormat=dataArray", "list", ("987.654", MULTI_RESULT)),
    Door(
        "sta filter Observations by MultiDatastream",
        f"{STA}/Observations?$count=true&$filter=MultiDatastream/name eq '{MULTI}'",
        "list",
        (MULTI_RESULT,),
        iot_count,
    ),
    Door(
        "sta filter Things by MultiDatastreams",
        f"{STA}/Things?$count=true&$filter=MultiDatastreams/name eq '{MULTI}'",
        "list",
        (THING,),
        iot_count,
    ),
    # extensions: aggregates and the latest observation
    Door(
        "sta aggregates", f"{STA}/Datastreams({{datastream}})/Aggregates?interval=day&aggregate=max", markers=("987",)
    ),
    Door(
        "sta latest",
        f"{STA}/Datastreams({{datastream}})/Observations?$top=1&$orderby=phenomenonTime desc",
        markers=(RESULT,),
    ),
]

CALLERS = (*HIDDEN, *GRANTED)


@dataclass
class World:
    ids: dict[str, Any]
    headers: dict[str, dict[str, str]]
    db: asyncpg.Connection

    async def use(self, state: str) -> None:
        """Put the secret datasets in `state` (the doors must follow at once: no cache may keep the old one)."""
        access, status = {
            "restricted": ("restricted", "published"),
            "draft": ("public", "draft"),
            "published": ("public", "published"),
        }[state]
        await self.db.execute(
            "UPDATE dataset SET access = $1, status = $2, modified_at = now() WHERE slug = ANY($3::text[])",
            access,
            status,
            [SECRET, SECRET_SENSORS],
        )


async def _post(http: httpx.AsyncClient, path: str, body: Any) -> dict[str, Any]:
    response = await http.post(path, json=body, headers=TEST_ADMIN_AUTH)
    assert response.status_code in (200, 201), response.text
    return dict(response.json()) if response.content else {}


async def _import_table(http: httpx.AsyncClient, slug: str, csv: str) -> int:
    """A typed table through the real import door (the loader), created from the file."""
    response = await http.post(
        f"/api/v1/datasets/{slug}/imports",
        files={"file": (f"{slug}.csv", csv.encode(), "text/csv")},
        data={"create": "true"},
        headers=TEST_ADMIN_AUTH,
    )
    assert response.status_code == 201, response.text
    return int(response.json()["import_id"])


def _thing(name: str, dataset: str, place: str, lon: float, lat: float, stream: str, probe: str, prop: Any) -> Any:
    return {
        "name": name,
        "description": "station",
        "@territoire.dataset": dataset,
        "Locations": [
            {
                "name": place,
                "description": "site",
                "encodingType": "application/geo+json",
                "location": {"type": "Point", "coordinates": [lon, lat]},
            }
        ],
        "Datastreams": [
            {
                "name": stream,
                "description": "mesures",
                "observationType": "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                "unitOfMeasurement": {"name": "degree Celsius", "symbol": "°C", "definition": "ucum:Cel"},
                "Sensor": {"name": probe, "description": "sonde", "encodingType": "text/html", "metadata": "-"},
                "ObservedProperty": prop,
            }
        ],
    }


async def build_world(http: httpx.AsyncClient, db: asyncpg.Connection, engine: AsyncEngine) -> World:
    """Public and restricted data on every door; the keys of each kind of caller."""
    ids: dict[str, Any] = {}
    await _import_table(http, "registre-public", "nom;code;lon;lat\nPlace publique;P1;4.83;45.75\n")
    ids["import_id"] = await _import_table(http, SECRET, f"nom;code;lon;lat\n{ROW};S1;7.75;48.58\n")
    patched = await http.patch(
        f"/api/v1/datasets/{SECRET}",
        json={"access": "restricted", "title": "Registre confidentiel", "themes": [THEME]},
        headers=TEST_ADMIN_AUTH,
    )
    assert patched.status_code == 200, patched.text
    await _post(http, "/api/v1/datasets", {"slug": "capteurs-publics", "title": "Capteurs", "kind": "sensors"})
    await _post(
        http,
        "/api/v1/datasets",
        {"slug": SECRET_SENSORS, "title": "Capteurs confidentiels", "kind": "sensors", "access": "restricted"},
    )
    await _post(http, "/api/v1/datasets", {"slug": OTHER, "title": "Autre", "access": "restricted"})
    # Everything was created as a draft (imports, the catalog API): publish it all; World.use sets the secret ones.
    await db.execute("UPDATE dataset SET status = 'published', published_at = now()")
    temperature = {"name": "Température", "definition": "https://qudt.org/vocab/quantitykind/Temperature"}
    public = await _post(
        http,
        f"{STA}/Things",
        _thing("Station publique", "capteurs-publics", "Lieu public", 4.85, 45.76, "flux public", "Sonde", temperature),
    )
    ds_public = (await http.get(f"{STA}/Things({public['@iot.id']})/Datastreams")).json()["value"][0]
    ids["public_datastream"] = ds_public["@iot.id"]
    ids["temperature"] = (await http.get(f"{STA}/Datastreams({ds_public['@iot.id']})/ObservedProperty")).json()[
        "@iot.id"
    ]
    # The restricted Datastream shares the public ObservedProperty; a second one has a Radon property of its own.
    secret = _thing(THING, SECRET_SENSORS, PLACE, 7.75, 48.58, STREAM, PROBE, {"@iot.id": ids["temperature"]})
    radon = {"name": "Radon", "definition": "https://qudt.org/vocab/quantitykind/Radon"}
    secret["Datastreams"] += _thing(THING, "", "", 0, 0, "radon", f"{PROBE} 2", radon)["Datastreams"]
    thing = await _post(http, f"{STA}/Things", secret)
    ids["thing"] = thing["@iot.id"]
    streams = (await http.get(f"{STA}/Things({ids['thing']})/Datastreams", headers=TEST_ADMIN_AUTH)).json()["value"]
    ids["datastream"] = next(d["@iot.id"] for d in streams if d["name"] == STREAM)
    for ds, value in ((ds_public["@iot.id"], 21.5), (ids["datastream"], float(RESULT))):
        for hour in (1, 2):
            await _post(
                http,
                f"{STA}/Datastreams({ds})/Observations",
                {"phenomenonTime": f"2026-11-20T0{hour}:00:00Z", "result": value},
            )
    # A restricted Datastream on the public Thing (as a connector may file one), observed in 2030.
    ids["public_thing"] = public["@iot.id"]
    ids["hidden_stream"] = await db.fetchval(
        "INSERT INTO datastream (name, unit_of_measurement, thing_id, sensor_id, observed_property_id, dataset_id) "
        "SELECT $1, '{}'::jsonb, d.thing_id, d.sensor_id, d.observed_property_id, "
        f"(SELECT id FROM dataset WHERE slug = '{SECRET_SENSORS}') FROM datastream d WHERE d.id = $2 RETURNING id",
        HIDDEN_STREAM,
        ds_public["@iot.id"],
    )
    await _post(
        http,
        f"{STA}/Datastreams({ids['hidden_stream']})/Observations",
        {"phenomenonTime": "2030-06-01T00:00:00Z", "result": float(HIDDEN_RESULT)},
    )
    # A connector may file a Datastream of the restricted Thing under the public dataset: the Thing's access wins.
    crossed = await db.fetchval(
        "INSERT INTO datastream (name, unit_of_measurement, thing_id, sensor_id, observed_property_id, dataset_id) "
        "SELECT $1, '{}'::jsonb, d.thing_id, d.sensor_id, d.observed_property_id, "
        "(SELECT id FROM dataset WHERE slug = 'capteurs-publics') FROM datastream d WHERE d.id = $2 RETURNING id",
        CROSSED,
        ids["datastream"],
    )
    await _post(
        http, f"{STA}/Datastreams({crossed})/Observations", {"phenomenonTime": "2031-01-01T00:00:00Z", "result": 1}
    )
    row = await db.fetchrow(
        "SELECT o.id AS observation, o.feature_of_interest_id AS foi, d.sensor_id AS sensor, "
        "(SELECT location_id FROM thing_location WHERE thing_id = d.thing_id) AS location, "
        "(SELECT id FROM historical_location WHERE thing_id = d.thing_id) AS hl, "
        "(SELECT id FROM observed_property WHERE name = 'Radon') AS radon "
        "FROM observation o JOIN datastream d ON d.id = o.datastream_id WHERE d.id = $1 LIMIT 1",
        ids["datastream"],
    )
    ids.update(dict(row))
    multi = await _post(
        http,
        f"{STA}/MultiDatastreams",
        {
            "name": MULTI,
            "description": "mesures",
            "unitOfMeasurements": [
                {"name": "degree Celsius", "symbol": "°C", "definition": "ucum:Cel"},
                {"name": "percent", "symbol": "%", "definition": "ucum:%"},
            ],
            "multiObservationDataTypes": [
                "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
                "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_Measurement",
            ],
            "Thing": {"@iot.id": ids["thing"]},
            "Sensor": {"@iot.id": ids["sensor"]},
            "ObservedProperties": [
                {"@iot.id": ids["temperature"]},
                {"name": HUMIDITY, "definition": "https://qudt.org/vocab/quantitykind/RelativeHumidity"},
            ],
        },
    )
    ids["multi"] = multi["@iot.id"]
    created = await _post(
        http,
        f"{STA}/MultiDatastreams({ids['multi']})/Observations",
        {"phenomenonTime": "2026-11-20T03:00:00Z", "result": [float(MULTI_RESULT), 55]},
    )
    ids["multi_observation"] = created["@iot.id"]
    ids["humidity"] = await db.fetchval("SELECT id FROM observed_property WHERE name = $1", HUMIDITY)
    assert await db.fetchval("SELECT count(*) FROM datastream WHERE dataset_id IS NULL") == 0
    assert await db.fetchval("SELECT count(*) FROM multi_datastream WHERE dataset_id IS NULL") == 0
    headers = {
        "anonymous": {},
        "reader of another dataset": {"X-API-Key": await make_key(engine, "reader", [(OTHER, "read")])},
        "publisher without grant": {"Authorization": f"Bearer {await make_key(engine, 'publisher')}"},
        "granted reader": {"X-API-Key": await make_key(engine, "reader", [(SECRET, "read"), (SECRET_SENSORS, "read")])},
        "granted writer": {
            "X-API-Key": await make_key(engine, "publisher", [(SECRET, "write"), (SECRET_SENSORS, "write")])
        },
        "admin": TEST_ADMIN_AUTH,
    }
    return World(ids, headers, db)


@pytest.fixture(scope="module")
async def world(settings: Settings, engine: AsyncEngine, database_url: str) -> AsyncIterator[tuple[Any, World]]:
    """One world for the whole matrix (the doors only read). Keep tests that use `db` out of this module."""
    db = await asyncpg.connect(database_url)
    await reset_database(db)
    app = create_app(settings, engine=engine)
    try:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as http:
            yield http, await build_world(http, db, engine)
    finally:
        await close_pool(app)
        await db.close()


_VOLATILE = re.compile(rb'"timeStamp":"[^"]*"|datastream-\d+-\d+T\d+Z')


def _same(a: httpx.Response, b: httpx.Response) -> bool:
    return _VOLATILE.sub(b"", a.content) == _VOLATILE.sub(b"", b.content)


def _fill(value: Any, ids: dict[str, Any]) -> Any:
    """A request body with the world's ids put into its strings."""
    if isinstance(value, str):
        return value.format(**ids)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


@pytest.mark.parametrize("state", STATES)
@pytest.mark.parametrize("door", DOORS, ids=[d.name for d in DOORS])
async def test_door(door: Door, state: str, world: tuple[httpx.AsyncClient, World]) -> None:
    http, w = world
    await w.use(state)
    hidden_callers = HIDDEN_IN[state]
    path = door.path.format(**w.ids)
    body = _fill(door.json, w.ids)
    answers = {
        c: await http.request(door.method, path, json=body, headers={**door.headers, **w.headers[c]}) for c in CALLERS
    }
    anonymous = answers["anonymous"]
    for caller, response in answers.items():
        text = response.content.decode("utf-8", "replace")
        hidden = caller in hidden_callers or (door.kind == "public" and state != "published")
        where = f"{door.name} ({state}) as {caller}: {response.status_code} {text[:300]}"
        if (hidden and door.kind == "entity") or (door.kind == "public" and door.status == 404 and hidden):
            assert response.status_code == 404, where
            assert response.headers["content-type"].startswith(("application/problem+json", "text/html")), where
        elif hidden:
            assert response.status_code == 200, where
            # A caller that may see no restricted data gets what an anonymous one gets, byte for byte (the other
            # reader also sees its own dataset; RDF serialisations name blank nodes afresh each time).
            if door.kind != "public" and (caller != "reader of another dataset" or f'"{OTHER}"' not in text):
                assert _same(response, anonymous), f"{where}: differs from what an anonymous caller gets"
        else:
            assert response.status_code == 200, where
        for marker in door.markers if response.status_code == 200 else ():  # a 404 may repeat its URL
            shown = marker.format(**w.ids) in text
            assert shown != hidden, f"{where}: {marker!r} {'shown' if shown else 'missing'}"
        if door.count is not None and response.status_code == 200:
            anonymous_count = door.count(orjson.loads(anonymous.content))
            count = door.count(orjson.loads(response.content))
            seen_by_all = state == "published"
            assert (count == anonymous_count) if hidden or seen_by_all else (count > anonymous_count), (
                f"{where}: count {count} against {anonymous_count} for anonymous"
            )
        if caller != "anonymous":  # what a key reads never goes to a shared cache
            assert "public" not in response.headers.get("cache-control", "private"), where
            assert "private" in response.headers["cache-control"], where


@pytest.mark.parametrize("door", [d for d in DOORS if d.kind == "entity"], ids=lambda d: d.name)
async def test_validators_do_not_reveal_a_hidden_resource(door: Door, world: tuple[httpx.AsyncClient, World]) -> None:
    """An ETag learnt with a key opens nothing without it: a conditional request is a 404, never a 304."""
    http, w = world
    await w.use("restricted")
    path = door.path.format(**w.ids)
    granted = await http.get(path, headers=w.headers["admin"])
    assert granted.status_code == 200
    etag = granted.headers.get("etag")
    modified = granted.headers.get("last-modified")
    conditional = {"If-None-Match": etag} if etag else {"If-Modified-Since": modified} if modified else {}
    for caller in HIDDEN:
        response = await http.get(path, headers={**conditional, **w.headers[caller]})
        assert response.status_code == 404, (caller, response.status_code)
        assert "etag" not in response.headers
    if etag:
        again = await http.get(path, headers={"If-None-Match": etag, **w.headers["granted reader"]})
        assert again.status_code in (200, 304)
        assert "public" not in again.headers.get("cache-control", "")


async def test_anonymous_cacheable_answers_vary_on_credentials(world: tuple[httpx.AsyncClient, World]) -> None:
    http, _ = world
    for path in (
        "/ogcapi/collections",
        "/ogcapi/collections/registre-public/items",
        "/api/v1/datasets/registre-public/records",
    ):
        response = await http.get(path)
        assert response.status_code == 200
        assert response.headers["cache-control"].startswith("public")
        vary = {v.strip().lower() for v in response.headers["vary"].split(",")}
        assert {"authorization", "x-api-key", "accept"} <= vary, path


async def test_the_fast_path_cache_never_serves_a_shape_learnt_with_a_key(
    world: tuple[httpx.AsyncClient, World],
) -> None:
    """Warm the collection cache as the admin, then ask without a key, many times over: still 404."""
    http, w = world
    await w.use("restricted")
    items = f"/ogcapi/collections/{SECRET}/items"
    for _ in range(3):
        assert (await http.get(items, headers=w.headers["admin"])).status_code == 200
        assert (await http.get(f"{items}/1", headers=w.headers["granted reader"])).status_code == 200
        results = await asyncio.gather(*(http.get(items, headers=w.headers[c]) for c in HIDDEN))
        assert [r.status_code for r in results] == [404, 404, 404]
        assert (await http.get(f"{items}/1")).status_code == 404


@pytest.mark.mqtt
async def test_mqtt_topics_never_carry_restricted_observations(
    world: tuple[httpx.AsyncClient, World], settings: Settings, topic_prefix: str
) -> None:
    """The bridge publishes what anyone may read: a restricted Observation goes to no topic at all."""
    from territoire_data.sensorthings.mqtt import StaMqttBridge
    from tests.integration.sensorthings.conftest import Subscriber

    http, w = world
    await w.use("restricted")
    bridge = StaMqttBridge(settings, topic_prefix=f"{topic_prefix}/")
    stop, ready = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(bridge.run(stop, ready))
    sub: Subscriber | None = None
    try:
        await asyncio.wait_for(ready.wait(), 30)
        await asyncio.wait_for(bridge.is_publisher.wait(), 30)
        sub = Subscriber(settings.mqtt_url, [f"{topic_prefix}/v1.1/#"])
        # The restricted one first: the bridge publishes in commit order, so by the time the public one arrives
        # the restricted one would have been published too.
        await _post(
            http,
            f"{STA}/MultiDatastreams({w.ids['multi']})/Observations",
            {"phenomenonTime": "2026-11-21T01:00:00Z", "result": [float(MULTI_RESULT), 1]},
        )
        for ds, value in ((w.ids["datastream"], float(RESULT)), (w.ids["public_datastream"], 22.5)):
            await _post(
                http,
                f"{STA}/Datastreams({ds})/Observations",
                {"phenomenonTime": "2026-11-21T01:00:00Z", "result": value},
            )
        received: list[tuple[str, dict[str, Any]]] = []
        while not any(m.get("result") == 22.5 and t.endswith("/v1.1/Observations") for t, m in received):
            received.append(await asyncio.to_thread(sub.next, 10))
        await asyncio.sleep(0.5)  # anything published after it
        while not sub.messages.empty():
            received.append(sub.messages.get_nowait())
    finally:
        if sub is not None:
            sub.close()
        stop.set()
        await asyncio.wait_for(task, 30)
    assert {t.removeprefix(f"{topic_prefix}/") for t, _ in received} >= {
        f"v1.1/Datastreams({w.ids['public_datastream']})/Observations",
        "v1.1/Observations",
    }
    assert all(m.get("result") != float(RESULT) for _, m in received), received
    assert not any(f"Datastreams({w.ids['datastream']})" in t for t, _ in received), received
    assert not any(MULTI_RESULT in orjson.dumps(m).decode() for _, m in received), received
    assert not any(f"MultiDatastreams({w.ids['multi']})" in t for t, _ in received), received
    assert bridge.published == 1
