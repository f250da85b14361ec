"""SensorThings entities for incoming readings: Things, Locations, Sensors, ObservedProperties, Datastreams,
and the FeaturesOfInterest of their Observations.

Resolved set-wise per batch by their unique `external_key` (INSERT ... ON CONFLICT, then one SELECT), cached in
memory by key, so a batch of known devices costs no query at all. The cache is only filled after commit.

A reading from a device that reports its position gets the FeatureOfInterest of that position (one per device and
position: a fixed station has one, a mobile device one per place it reported from), as the SensorThings write path
makes one from a Thing's Location; the device's later readings without a position keep its last one (after a
restart too: read back from its Thing's Location). A device that never reported a position leaves its
observations without a FeatureOfInterest.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import asyncpg
import orjson

from territoire_data.ingest.model import Device, Position, Reading
from territoire_data.observation_types import CATEGORY, MEASUREMENT, OBSERVATION, TRUTH

logger = logging.getLogger(__name__)

OBSERVATION_TYPES = {  # a new Datastream's type, from its first value (later values must fit it)
    "number": MEASUREMENT,
    "boolean": TRUTH,
    "string": CATEGORY,
    "json": OBSERVATION,
}
UCUM = "http://unitsofmeasure.org/ucum.html"


def _coordinates(position: Position) -> list[float]:
    """GeoJSON's order: longitude, latitude, and the altitude when known."""
    coordinates = [position.longitude, position.latitude]
    if position.altitude is not None:
        coordinates.append(position.altitude)
    return coordinates


def _point(position: Position) -> str:
    return orjson.dumps({"type": "Point", "coordinates": _coordinates(position)}).decode()


def value_kind(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, float | int):
        return "number"
    if isinstance(value, str):
        return "string"
    return "json"


@dataclass(frozen=True, slots=True)
class QuantityInfo:
    """What the connector says of a quantity (ObservedProperty name, definition, unit name)."""

    name: str
    definition: str = ""
    description: str = ""
    unit_name: str | None = None


@dataclass
class Resolution:
    """What one batch's registration found: datastream ids, positions written, and pairs it could not resolve."""

    datastreams: dict[tuple[str, str], int] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    unresolved: dict[tuple[str, str], str] = field(default_factory=dict)
    features: dict[str, int] = field(default_factory=dict)  # feature key -> FeatureOfInterest id
    device_features: dict[str, str] = field(default_factory=dict)  # device key -> its latest feature key
    kinds: dict[int, str] = field(default_factory=dict)  # datastream id -> its observationType


@dataclass
class Pending:
    """Entities to create or look up for one batch, keyed by external key; filled from readings."""

    things: dict[str, Device] = field(default_factory=dict)
    positions: dict[str, Position] = field(default_factory=dict)
    position_times: dict[str, datetime] = field(default_factory=dict)  # when the device reported it
    sensors: dict[str, str] = field(default_factory=dict)  # sensor key -> name
    properties: dict[str, str] = field(default_factory=dict)  # quantity -> quantity
    datastreams: dict[tuple[str, str], Reading] = field(default_factory=dict)
    features: dict[str, tuple[Device, Position]] = field(default_factory=dict)  # feature key -> where
    device_features: dict[str, str] = field(default_factory=dict)  # device key -> its latest feature key


class EntityRegistry:
    """Maps (device key, quantity) to a datastream id, registering what is new when allowed."""

    def __init__(
        self,
        source: str,
        dataset_id: int,
        *,
        auto_register: bool,
        quantities: dict[str, QuantityInfo] | None = None,
    ) -> None:
        self.source = source
        self.dataset_id = dataset_id
        self.auto_register = auto_register
        self.quantities = quantities or {}
        self.datastreams: dict[tuple[str, str], int] = {}
        self.kinds: dict[int, str] = {}  # datastream id -> its observationType (results are checked against it)
        self.positions: dict[str, Position] = {}
        self.features: dict[str, int] = {}
        self.device_features: dict[str, str] = {}
        self._feature_keys: dict[tuple[str, Position], str] = {}

    def thing_key(self, device_key: str) -> str:
        return f"{self.source}:{device_key}"

    def sensor_key(self, device: Device) -> str:
        return f"{self.source}:model:{device.model or 'default'}"

    def datastream_key(self, device_key: str, quantity: str) -> str:
        return f"{self.source}:{device_key}/{quantity}"

    def feature_key(self, device_key: str, position: Position) -> str:
        """`<thing key>@<lon>,<lat>[,<alt>]`; memoized (every reading asks, and formatting floats costs more
        than the lookup), the memo emptied when it grows past 100,000 places."""
        memo = self._feature_keys.get((device_key, position))
        if memo is not None:
            return memo
        key = f"{self.thing_key(device_key)}@{','.join(repr(c) for c in _coordinates(position))}"
        if len(self._feature_keys) >= 100_000:
            self._feature_keys.clear()
        self._feature_keys[(device_key, position)] = key
        return key

    def feature_id(self, reading: Reading, resolution: Resolution) -> int | None:
        """The FeatureOfInterest of a reading: of its position, else of its device's latest one (see above)."""
        device_key = reading.device.key
        position = reading.device.position
        if position is not None:
            key = self.feature_key(device_key, position)
        else:
            key = resolution.device_features.get(device_key) or self.device_features.get(device_key, "")
        return resolution.features.get(key) or self.features.get(key)

    def missing(self, readings: Iterable[Reading]) -> Pending:
        """What this batch needs that the cache does not know (new devices, quantities, moved devices)."""
        pending = Pending()
        for reading in readings:
            device = reading.device
            pair = (device.key, reading.quantity)
            position = device.position
            if position is not None and (known := self.positions.get(device.key)) is not position and known != position:
                pending.positions[device.key] = position
                pending.position_times[device.key] = reading.time
                pending.things.setdefault(device.key, device)
            if position is not None:
                feature = self.feature_key(device.key, position)
                if feature not in self.features:
                    pending.features[feature] = (device, position)
                pending.device_features[device.key] = feature
            if pair in self.datastreams or pair in pending.datastreams:
                continue
            pending.datastreams[pair] = reading
            pending.things.setdefault(device.key, device)
            pending.sensors.setdefault(self.sensor_key(device), device.model or f"{self.source} device")
            pending.properties.setdefault(reading.quantity, reading.quantity)
        return pending

    async def resolve(self, conn: asyncpg.Connection, pending: Pending) -> Resolution:
        """Create or find what `pending` lists, in the caller's transaction (`remember` it after commit)."""
        if not pending.things and not pending.datastreams and not pending.features:
            return Resolution(device_features=dict(pending.device_features))
        if self.auto_register:
            resolution = await self._register(conn, pending)
        else:
            resolution = await self._lookup(conn, pending)
        # Only for devices whose readings are stored: a refused device's position must not become a public
        # FeatureOfInterest (one with no Observation is visible to all).
        stored = {d for d, _ in resolution.datastreams} | {d for d, _ in self.datastreams}
        wanted = {k: v for k, v in pending.features.items() if v[0].key in stored}
        resolution.device_features = dict(pending.device_features)
        # Devices met for the first time since this worker started, with no position in this batch: the place
        # their Thing was last seen at (a restart forgets it; so does an upgrade from before features)
        unplaced = sorted(d for d in pending.things if d in stored and d not in pending.device_features)
        if unplaced:
            for device_key, position in (await self._last_positions(conn, unplaced)).items():
                feature = self.feature_key(device_key, position)
                wanted.setdefault(feature, (pending.things[device_key], position))
                resolution.device_features[device_key] = feature
        if wanted:
            resolution.features = await self._features(conn, wanted)
        unknown_kinds = [i for i in resolution.datastreams.values() if i not in self.kinds]
        if unknown_kinds:  # only when Datastreams are met for the first time: a known device costs no query
            rows = await conn.fetch(
                "SELECT id, observation_type FROM datastream WHERE id = ANY($1::bigint[])", unknown_kinds
            )
            resolution.kinds = {row["id"]: row["observation_type"] for row in rows}
        return resolution

    def kind_of(self, datastream_id: int, resolution: Resolution) -> str | None:
        """The observationType a reading's result must fit (None when unknown: nothing to check against)."""
        return self.kinds.get(datastream_id) or resolution.kinds.get(datastream_id)

    async def _last_positions(self, conn: asyncpg.Connection, device_keys: list[str]) -> dict[str, Position]:
        """Where these devices' Things are (their Location, which the worker keeps at the last reported place)."""
        rows = await conn.fetch(
            "SELECT t.external_key, l.location FROM thing t "
            "JOIN thing_location tl ON tl.thing_id = t.id JOIN location l ON l.id = tl.location_id "
            "WHERE t.external_key = ANY($1::text[]) AND l.external_key = t.external_key",
            [self.thing_key(d) for d in device_keys],
        )
        by_thing = {self.thing_key(d): d for d in device_keys}
        found: dict[str, Position] = {}
        for row in rows:
            point = orjson.loads(row["location"]) if isinstance(row["location"], str) else row["location"]
            if not isinstance(point, dict) or point.get("type") != "Point":
                continue
            coordinates = point.get("coordinates")
            if not isinstance(coordinates, list) or len(coordinates) < 2:
                continue
            altitude = float(coordinates[2]) if len(coordinates) > 2 else None
            found[by_thing[row["external_key"]]] = Position(float(coordinates[0]), float(coordinates[1]), altitude)
        return found

    async def _features(self, conn: asyncpg.Connection, wanted: dict[str, tuple[Device, Position]]) -> dict[str, int]:
        """The FeaturesOfInterest of these positions (feature key -> where), made once per (device, position)."""
        keys = sorted(wanted)  # one lock order for every worker
        names, geojson, lons, lats = [], [], [], []
        for key in keys:
            device, position = wanted[key]
            names.append(device.name)
            geojson.append(_point(position))
            lons.append(position.longitude)
            lats.append(position.latitude)
        await conn.execute(
            "INSERT INTO feature_of_interest (name, description, encoding_type, feature, geom, external_key)"
            " SELECT u.name, 'Position du capteur ' || u.name, 'application/geo+json', u.loc::jsonb,"
            " ST_SetSRID(ST_MakePoint(u.lon, u.lat), 4326), u.ext"
            " FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::text[])"
            " AS u(name, loc, lon, lat, ext)"
            " ON CONFLICT (external_key) DO NOTHING",
            names,
            geojson,
            lons,
            lats,
            keys,
        )
        rows = await conn.fetch(
            "SELECT id, external_key FROM feature_of_interest WHERE external_key = ANY($1::text[])", keys
        )
        return {row["external_key"]: row["id"] for row in rows}

    async def _lookup(self, conn: asyncpg.Connection, pending: Pending) -> Resolution:
        pairs = sorted(pending.datastreams)
        rows = await conn.fetch(
            "SELECT id, external_key FROM datastream WHERE external_key = ANY($1::text[])",
            [self.datastream_key(d, q) for d, q in pairs],
        )
        found = {row["external_key"]: row["id"] for row in rows}
        things = await conn.fetch(
            "SELECT external_key FROM thing WHERE external_key = ANY($1::text[])",
            [self.thing_key(d) for d in {d for d, _ in pairs}],
        )
        known_things = {row["external_key"] for row in things}
        result = Resolution(positions=dict(pending.positions))  # not written: nothing is registered
        for device_key, quantity in pairs:
            ds_id = found.get(self.datastream_key(device_key, quantity))
            if ds_id is not None:
                result.datastreams[(device_key, quantity)] = ds_id
            elif self.thing_key(device_key) not in known_things:
                result.unresolved[(device_key, quantity)] = "unknown_device"
            else:
                result.unresolved[(device_key, quantity)] = "unknown_datastream"
        return result

    async def _upsert_keys(
        self, conn: asyncpg.Connection, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]
    ) -> dict[str, int]:
        """INSERT rows (the last column is external_key) unless their key exists; return key -> id for all."""
        if not rows:
            return {}
        rows.sort(key=lambda row: row[-1])  # one lock order for every worker: no deadlock between workers
        # Table and column names come from this module's constants only; values are bound.
        types = {"properties": "jsonb", "location": "jsonb", "dataset_id": "bigint", "thing_id": "bigint"}
        types |= {"sensor_id": "bigint", "observed_property_id": "bigint", "unit_of_measurement": "jsonb"}
        arrays = ", ".join(
            f"${i + 1}::{'text' if types.get(c) == 'jsonb' else types.get(c, 'text')}[]" for i, c in enumerate(columns)
        )
        select = ", ".join(f"u.{c}::{types[c]}" if types.get(c) == "jsonb" else f"u.{c}" for c in columns)
        column_list = ", ".join(columns)
        await conn.execute(
            f"INSERT INTO {table} ({column_list}) SELECT {select} FROM unnest({arrays}) AS u({column_list}) "  # noqa: S608
            "ON CONFLICT (external_key) DO NOTHING",
            *[list(col) for col in zip(*rows, strict=True)],
        )
        found = await conn.fetch(
            f"SELECT id, external_key FROM {table} WHERE external_key = ANY($1::text[])",  # noqa: S608
            [row[-1] for row in rows],
        )
        return {row["external_key"]: row["id"] for row in found}

    async def _register(self, conn: asyncpg.Connection, pending: Pending) -> Resolution:
        thing_rows = []
        for key, device in pending.things.items():
            properties = {"source": self.source, "device": key, **device.properties}
            thing_rows.append(
                (
                    device.name,
                    f"Capteur {device.name}",
                    orjson.dumps(properties).decode(),
                    self.dataset_id,
                    self.thing_key(key),
                )
            )
        thing_ids = await self._upsert_keys(
            conn, "thing", ("name", "description", "properties", "dataset_id", "external_key"), thing_rows
        )
        if pending.positions:
            await self._locate(conn, pending)
        sensor_ids = await self._upsert_keys(
            conn,
            "sensor",
            ("name", "description", "encoding_type", "metadata", "external_key"),
            [(name, f"Modèle de capteur {name}", "text/plain", name, key) for key, name in pending.sensors.items()],
        )
        property_rows = []
        for quantity in pending.properties:
            info = self.quantities.get(quantity) or QuantityInfo(name=quantity)
            property_rows.append((info.name, info.definition, info.description, quantity))
        property_ids = await self._upsert_keys(
            conn, "observed_property", ("name", "definition", "description", "external_key"), property_rows
        )
        datastream_rows = []
        for (device_key, quantity), reading in pending.datastreams.items():
            device = reading.device
            info = self.quantities.get(quantity) or QuantityInfo(name=quantity)
            unit: dict[str, Any] = {}
            if reading.unit:
                unit = {
                    "name": info.unit_name or reading.unit,
                    "symbol": reading.unit,
                    "definition": f"{UCUM}#{reading.unit}",
                }
            datastream_rows.append(
                (
                    f"{info.name} – {device.name}",
                    f"{info.name} mesuré(e) par {device.name}",
                    OBSERVATION_TYPES[value_kind(reading.value)],
                    orjson.dumps(unit).decode(),
                    thing_ids[self.thing_key(device_key)],
                    sensor_ids[self.sensor_key(device)],
                    property_ids[quantity],
                    self.dataset_id,
                    self.datastream_key(device_key, quantity),
                )
            )
        datastream_ids = await self._upsert_keys(
            conn,
            "datastream",
            (
                "name",
                "description",
                "observation_type",
                "unit_of_measurement",
                "thing_id",
                "sensor_id",
                "observed_property_id",
                "dataset_id",
                "external_key",
            ),
            datastream_rows,
        )
        return Resolution(
            datastreams={pair: datastream_ids[self.datastream_key(*pair)] for pair in pending.datastreams},
            positions=dict(pending.positions),
        )

    async def _locate(self, conn: asyncpg.Connection, pending: Pending) -> None:
        """One Location per device (key = the thing's), updated when the device reports a new position."""
        keys = sorted(pending.positions)
        names, geojson, lons, lats, ext, times = [], [], [], [], [], []
        for key in keys:
            position = pending.positions[key]
            names.append(pending.things[key].name)
            geojson.append(_point(position))
            lons.append(position.longitude)
            lats.append(position.latitude)
            ext.append(self.thing_key(key))
            times.append(pending.position_times[key])
        # New or moved: write the Location, link it to its Thing, and record a HistoricalLocation (SensorThings
        # keeps the history of where a Thing was); an unchanged position writes nothing.
        await conn.execute(
            "WITH changed AS ("
            " INSERT INTO location (name, description, encoding_type, location, geom, external_key)"
            " SELECT u.name, 'Position du capteur ' || u.name, 'application/geo+json', u.loc::jsonb,"
            " ST_SetSRID(ST_MakePoint(u.lon, u.lat), 4326), u.ext"
            " FROM unnest($1::text[], $2::text[], $3::float8[], $4::float8[], $5::text[])"
            " AS u(name, loc, lon, lat, ext)"
            " ON CONFLICT (external_key) DO UPDATE SET location = EXCLUDED.location, geom = EXCLUDED.geom"
            " WHERE location.location IS DISTINCT FROM EXCLUDED.location"
            " RETURNING id, external_key"
            "), moved AS ("
            " SELECT c.id AS location_id, t.id AS thing_id, w.at FROM changed c"
            " JOIN thing t ON t.external_key = c.external_key"
            " JOIN unnest($5::text[], $6::timestamptz[]) AS w(ext, at) ON w.ext = c.external_key"
            "), linked AS ("
            " INSERT INTO thing_location (thing_id, location_id) SELECT thing_id, location_id FROM moved"
            " ON CONFLICT DO NOTHING"
            "), history AS ("
            " INSERT INTO historical_location (thing_id, time) SELECT thing_id, at FROM moved"
            " RETURNING id, thing_id"
            ") INSERT INTO location_historical_location (location_id, historical_location_id)"
            " SELECT m.location_id, h.id FROM history h JOIN moved m ON m.thing_id = h.thing_id",
            names,
            geojson,
            lons,
            lats,
            ext,
            times,
        )

    def remember(self, resolution: Resolution) -> None:
        """Fill the cache with what a registration found, once its transaction has committed."""
        self.datastreams.update(resolution.datastreams)
        self.kinds.update(resolution.kinds)
        self.positions.update(resolution.positions)
        self.features.update(resolution.features)
        self.device_features.update(resolution.device_features)
