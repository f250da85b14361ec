"""Sensor data as NGSI-LD entities: one model, two views (no second store).

A Thing with its Datastreams is one entity `urn:ngsi-ld:Thing:<id>` of a Smart Data Models type chosen from what it
measures (or `ngsiLdType` in the Thing's properties); each Datastream is an attribute named after its quantity
(the ObservedProperty's key), a Property whose value is the Datastream's latest Observation, with `observedAt` and
`unitCode` (UN/CEFACT, from the UCUM unit; absent when unknown, never null). The Thing's Location is the
`location` GeoProperty. The attribute's history is the Datastream's Observations (temporal API); its aggregates come
from the 15-minute and daily rollups. Two Datastreams of one Thing on one quantity are two instances of the
attribute: the first (lowest id) is the default instance, the others carry `datasetId urn:ngsi-ld:Datastream:<id>`.
"""

from __future__ import annotations

from territoire_data.auth.policy import Principal, datastream_visible_sql, member_visible_sql
from territoire_data.db.params import Params
from territoire_data.ngsi_ld.contexts import DEFAULT_VOCAB

THING_PREFIX = "urn:ngsi-ld:Thing:"
DATASTREAM_PREFIX = "urn:ngsi-ld:Datastream:"
NAME_IRI = DEFAULT_VOCAB + "name"
DESCRIPTION_IRI = "http://purl.org/dc/terms/description"
LOCATION_IRI = "https://uri.etsi.org/ngsi-ld/location"

# quantity key (ObservedProperty.external_key, as the connectors name them) -> Smart Data Models attribute
ATTRIBUTE_OF_QUANTITY = {
    "temperature": "temperature",
    "humidity": "relativeHumidity",
    "pm10": "pm10",
    "pm2_5": "pm25",
    "no2": "no2",
    "o3": "o3",
    "co2": "co2",
    "laeq": "LAeq",
    "occupied": "occupied",
    "count": "intensity",
    "battery": "batteryLevel",
    "pressure": "atmosphericPressure",
    "rain": "precipitation",
    "wind_speed": "windSpeed",
}
# quantity -> (Smart Data Model, priority: the lowest among a Thing's quantities decides)
TYPE_OF_QUANTITY = {
    "pm10": ("AirQualityObserved", 1),
    "pm2_5": ("AirQualityObserved", 1),
    "no2": ("AirQualityObserved", 1),
    "o3": ("AirQualityObserved", 1),
    "co2": ("AirQualityObserved", 2),
    "occupied": ("ParkingSpot", 1),
    "laeq": ("NoiseLevelObserved", 1),
    "count": ("TrafficFlowObserved", 1),
    "temperature": ("WeatherObserved", 3),
    "humidity": ("WeatherObserved", 3),
    "pressure": ("WeatherObserved", 3),
    "rain": ("WeatherObserved", 3),
    "wind_speed": ("WeatherObserved", 3),
}
DEFAULT_TYPE = "Device"
# UCUM (the Datastreams' unitOfMeasurement.symbol) -> UN/CEFACT common code (NGSI-LD unitCode)
UNIT_CODE = {
    "Cel": "CEL",
    "%": "P1",
    "ug/m3": "GQ",
    "mg/m3": "GP",
    "[ppm]": "59",
    "dB": "2N",
    "dB(A)": "2N",
    "hPa": "A97",
    "Pa": "PAL",
    "mm": "MMT",
    "m/s": "MTS",
    "km/h": "KMH",
    "V": "VLT",
    "W": "WTT",
    "kW": "KWT",
    "kWh": "KWH",
    "m": "MTR",
    "K": "KEL",
    "lx": "LUX",
}


# an ObservedProperty without a connector's quantity key (one created through SensorThings): its name as a term
_NAME_SLUG = "trim(both '_' from regexp_replace(lower(op.name), '[^a-z0-9]+', '_', 'g'))"


def iri(name: str) -> str:
    return name if ":" in name else DEFAULT_VOCAB + name


def thing_id(entity_id: str) -> int | None:
    """The Thing behind `urn:ngsi-ld:Thing:<id>`, or None for any other id."""
    if not entity_id.startswith(THING_PREFIX):
        return None
    tail = entity_id[len(THING_PREFIX) :]
    return int(tail) if tail.isdigit() and len(tail) < 19 else None


def _map(params: Params, mapping: dict[str, str]) -> str:
    keys = params.add(list(mapping), "text[]")
    values = params.add([iri(v) for v in mapping.values()], "text[]")
    return f"unnest({keys}, {values})"


def sensor_entities_sql(params: Params, principal: Principal, where: str = "TRUE") -> str:
    """A SELECT of (id, types, scopes, attrs, location, dataset_id, created_at, modified_at, thing_id) over the
    Things `where` keeps (a condition on alias t) that the principal may see."""
    attribute_map = _map(params, ATTRIBUTE_OF_QUANTITY)
    unit_keys = params.add(list(UNIT_CODE), "text[]")
    unit_values = params.add(list(UNIT_CODE.values()), "text[]")
    type_keys = params.add(list(TYPE_OF_QUANTITY), "text[]")
    type_values = params.add([iri(t) for t, _ in TYPE_OF_QUANTITY.values()], "text[]")
    type_ranks = params.add([rank for _, rank in TYPE_OF_QUANTITY.values()], "int[]")
    vocab = params.add(DEFAULT_VOCAB, "text")
    prefix = params.add(THING_PREFIX, "text")
    ds_prefix = params.add(DATASTREAM_PREFIX, "text")
    name_iri = params.add(NAME_IRI, "text")
    description_iri = params.add(DESCRIPTION_IRI, "text")
    location_iri = params.add(LOCATION_IRI, "text")
    thing_visible = member_visible_sql(principal, "t.dataset_id")
    stream_visible = datastream_visible_sql(principal, "ds")
    return f"""
SELECT {prefix} || t.id AS id,
       ARRAY[COALESCE(
           CASE WHEN t.properties->>'ngsiLdType' LIKE '%:%' THEN t.properties->>'ngsiLdType'
                WHEN t.properties->>'ngsiLdType' <> '' THEN {vocab} || (t.properties->>'ngsiLdType') END,
           (SELECT m.type FROM datastream ds JOIN observed_property op ON op.id = ds.observed_property_id
            JOIN unnest({type_keys}, {type_values}, {type_ranks}) AS m(q, type, rank) ON m.q = op.external_key
            WHERE ds.thing_id = t.id ORDER BY m.rank LIMIT 1),
           {vocab} || 'Device')] AS types,
       NULL::text[] AS scopes,
       jsonb_build_object({name_iri}, jsonb_build_array(jsonb_build_object('type', 'Property', 'value', t.name)))
       || CASE WHEN t.description <> '' THEN jsonb_build_object({description_iri}, jsonb_build_array(
              jsonb_build_object('type', 'Property', 'value', t.description))) ELSE '{{}}'::jsonb END
       || CASE WHEN loc.location IS NOT NULL THEN jsonb_build_object({location_iri}, jsonb_build_array(
              jsonb_build_object('type', 'GeoProperty', 'value', loc.location))) ELSE '{{}}'::jsonb END
       || COALESCE((
           SELECT jsonb_object_agg(a.attr, a.instances) FROM (
               SELECT s.attr, jsonb_agg(s.instance ORDER BY s.ds) AS instances FROM (
                   SELECT COALESCE(m.attr, {vocab} || op.external_key, {vocab} || {_NAME_SLUG}) AS attr,
                          ds.id AS ds,
                          jsonb_strip_nulls(jsonb_build_object(
                              'type', 'Property',
                              'value', COALESCE(to_jsonb(o.result_number), to_jsonb(o.result_string),
                                                to_jsonb(o.result_boolean), o.result_json),
                              'observedAt', to_char(o.phenomenon_time AT TIME ZONE 'UTC',
                                                    'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"'),
                              'unitCode', u.code,
                              'datasetId', CASE WHEN row_number() OVER (
                                  PARTITION BY COALESCE(m.attr, op.external_key, {_NAME_SLUG}) ORDER BY ds.id) > 1
                                  THEN {ds_prefix} || ds.id END)) AS instance
                   FROM datastream ds
                   JOIN observed_property op ON op.id = ds.observed_property_id
                   JOIN observation o ON o.datastream_id = ds.id AND o.phenomenon_time = ds.latest_phenomenon_time
                   LEFT JOIN {attribute_map} AS m(q, attr) ON m.q = op.external_key
                   LEFT JOIN unnest({unit_keys}, {unit_values}) AS u(symbol, code)
                        ON u.symbol = ds.unit_of_measurement->>'symbol'
                   WHERE ds.thing_id = t.id AND {stream_visible}
                     AND COALESCE(to_jsonb(o.result_number), to_jsonb(o.result_string),
                                  to_jsonb(o.result_boolean), o.result_json) IS NOT NULL
               ) s GROUP BY s.attr
           ) a), '{{}}'::jsonb) AS attrs,
       loc.geom AS location,
       t.dataset_id,
       t.created_at,
       COALESCE((SELECT max(ds.latest_phenomenon_time) FROM datastream ds WHERE ds.thing_id = t.id), t.created_at)
           AS modified_at,
       t.id AS thing_id
FROM thing t
LEFT JOIN LATERAL (
    SELECT l.location, l.geom FROM thing_location tl JOIN location l ON l.id = tl.location_id
    WHERE tl.thing_id = t.id AND l.encoding_type IN ('application/geo+json', 'application/vnd.geo+json')
    ORDER BY l.id DESC LIMIT 1
) loc ON TRUE
WHERE {thing_visible} AND ({where})"""


def datastreams_sql(params: Params, principal: Principal, thing: int) -> str:
    """The visible Datastreams of a Thing with their attribute name and instance id (temporal API)."""
    attribute_map = _map(params, ATTRIBUTE_OF_QUANTITY)
    unit_keys = params.add(list(UNIT_CODE), "text[]")
    unit_values = params.add(list(UNIT_CODE.values()), "text[]")
    vocab = params.add(DEFAULT_VOCAB, "text")
    ds_prefix = params.add(DATASTREAM_PREFIX, "text")
    stream_visible = datastream_visible_sql(principal, "ds")
    return f"""
SELECT s.attr, s.id, s.unit_code, s.rollup_day_until,
       CASE WHEN row_number() OVER (PARTITION BY s.attr ORDER BY s.id) > 1 THEN {ds_prefix} || s.id END AS dataset_id
FROM (
    SELECT COALESCE(m.attr, {vocab} || op.external_key, {vocab} || {_NAME_SLUG}) AS attr, ds.id,
           u.code AS unit_code, ds.rollup_day_until
    FROM datastream ds
    JOIN observed_property op ON op.id = ds.observed_property_id
    LEFT JOIN {attribute_map} AS m(q, attr) ON m.q = op.external_key
    LEFT JOIN unnest({unit_keys}, {unit_values}) AS u(symbol, code) ON u.symbol = ds.unit_of_measurement->>'symbol'
    WHERE ds.thing_id = {params.add(thing, "bigint")} AND {stream_visible}
) s ORDER BY s.attr, s.id"""
