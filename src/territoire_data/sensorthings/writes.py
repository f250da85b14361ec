"""SensorThings writes: deep insert, link by @iot.id, update, delete with the standard's cascades.

Every statement binds its values; table and column names come from the entity model only. The caller runs
these inside one transaction, so a deep insert lands whole or not at all.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson

from territoire_data.auth.policy import Principal, can_write, dataset_visible_sql
from territoire_data.errors import BadRequestError, ConflictError, ForbiddenError, NotFoundError
from territoire_data.observation_types import check_declared, result_problem, short_name, stored_predicate
from territoire_data.sensorthings.model import BY_NAME, COMPLEX_OBSERVATION, ORDERED_LINKS, EntityType, Prop, Relation
from territoire_data.sensorthings.sql import Params, visible_sql

logger = logging.getLogger(__name__)

GEOJSON_TYPES = ("application/geo+json", "application/vnd.geo+json", "application/geojson")
# A non-standard annotation of a new Thing: the slug of the dataset it joins (its Datastreams follow it).
DATASET_ANNOTATION = "@territoire.dataset"

# The datasets an entity belongs to, whose write grant a publisher needs to change it (admins change anything).
# Things, Datastreams (own dataset and the Thing's), Observations and HistoricalLocations belong to theirs;
# shared entities to the datasets of everything that uses them. Null members are left aside; no dataset at all
# (or an unused shared entity) means only admins may change it, as `policy.can_write(None)` says.
_DATASETS_OF: dict[str, str] = {
    "Thing": "SELECT dataset_id FROM thing WHERE id = $1",
    "Datastream": "SELECT d.dataset_id FROM datastream d WHERE d.id = $1 "
    "UNION SELECT t.dataset_id FROM datastream d JOIN thing t ON t.id = d.thing_id WHERE d.id = $1",
    "MultiDatastream": "SELECT d.dataset_id FROM multi_datastream d WHERE d.id = $1 "
    "UNION SELECT t.dataset_id FROM multi_datastream d JOIN thing t ON t.id = d.thing_id WHERE d.id = $1",
    "Observation": "SELECT d.dataset_id FROM observation o JOIN datastream d ON d.id = o.datastream_id WHERE o.id = $1 "
    "UNION SELECT t.dataset_id FROM observation o JOIN datastream d ON d.id = o.datastream_id "
    "JOIN thing t ON t.id = d.thing_id WHERE o.id = $1 "
    "UNION SELECT d.dataset_id FROM multi_observation o JOIN multi_datastream d ON d.id = o.multi_datastream_id "
    "WHERE o.id = $1 "
    "UNION SELECT t.dataset_id FROM multi_observation o JOIN multi_datastream d ON d.id = o.multi_datastream_id "
    "JOIN thing t ON t.id = d.thing_id WHERE o.id = $1",
    "HistoricalLocation": "SELECT t.dataset_id FROM historical_location h JOIN thing t ON t.id = h.thing_id "
    "WHERE h.id = $1",
    "Location": "SELECT t.dataset_id FROM thing_location tl JOIN thing t ON t.id = tl.thing_id "
    "WHERE tl.location_id = $1",
    "Sensor": "SELECT d.dataset_id FROM datastream d WHERE d.sensor_id = $1 "
    "UNION SELECT t.dataset_id FROM datastream d JOIN thing t ON t.id = d.thing_id WHERE d.sensor_id = $1 "
    "UNION SELECT d.dataset_id FROM multi_datastream d WHERE d.sensor_id = $1 "
    "UNION SELECT t.dataset_id FROM multi_datastream d JOIN thing t ON t.id = d.thing_id WHERE d.sensor_id = $1",
    "ObservedProperty": "SELECT d.dataset_id FROM datastream d WHERE d.observed_property_id = $1 "
    "UNION SELECT t.dataset_id FROM datastream d JOIN thing t ON t.id = d.thing_id WHERE d.observed_property_id = $1 "
    "UNION SELECT d.dataset_id FROM multi_datastream_observed_property l "
    "JOIN multi_datastream d ON d.id = l.multi_datastream_id WHERE l.observed_property_id = $1 "
    "UNION SELECT t.dataset_id FROM multi_datastream_observed_property l "
    "JOIN multi_datastream d ON d.id = l.multi_datastream_id JOIN thing t ON t.id = d.thing_id "
    "WHERE l.observed_property_id = $1",
    "FeatureOfInterest": "SELECT d.dataset_id FROM datastream d JOIN thing t ON t.id = d.thing_id "
    "WHERE d.id IN (SELECT DISTINCT o.datastream_id FROM observation o WHERE o.feature_of_interest_id = $1) "
    "UNION SELECT t.dataset_id FROM datastream d JOIN thing t ON t.id = d.thing_id "
    "WHERE d.id IN (SELECT DISTINCT o.datastream_id FROM observation o WHERE o.feature_of_interest_id = $1) "
    "UNION SELECT d.dataset_id FROM multi_datastream d "
    "WHERE d.id IN (SELECT o.multi_datastream_id FROM multi_observation o WHERE o.feature_of_interest_id = $1) "
    "UNION SELECT t.dataset_id FROM multi_datastream d JOIN thing t ON t.id = d.thing_id "
    "WHERE d.id IN (SELECT o.multi_datastream_id FROM multi_observation o WHERE o.feature_of_interest_id = $1)",
}
# Entities whose row carries the dataset: linking one under another entity moves it, so it needs a write grant.
_OWNED = ("Thing", "Datastream", "MultiDatastream")
# The columns of an Observation of a MultiDatastream (table multi_observation): its result is one JSON array.
_MULTI_RESULT_COLUMNS = ("result_number", "result_string", "result_boolean")
# The array type each column of a dataArray is bound as (`_insert_observation_rows`).
_ARRAY_CASTS = {
    "phenomenon_time": "timestamptz[]",
    "phenomenon_time_end": "timestamptz[]",
    "result_time": "timestamptz[]",
    "result_number": "float8[]",
    "result_string": "text[]",
    "result_boolean": "boolean[]",
    "result_json": "text[]::jsonb[]",
    "result_quality": "text[]::jsonb[]",
    "valid_time_start": "timestamptz[]",
    "valid_time_end": "timestamptz[]",
    "parameters": "text[]::jsonb[]",
    "feature_of_interest_id": "bigint[]",
}


def parse_time(value: Any, what: str) -> datetime:
    if not isinstance(value, str):
        raise BadRequestError(f"{what} must be an ISO 8601 date-time string")
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise BadRequestError(f"{what} is not an ISO 8601 date-time: {value[:40]!r}") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def parse_time_or_interval(value: Any, what: str) -> tuple[datetime, datetime | None]:
    if isinstance(value, str) and "/" in value:
        start, _, end = value.partition("/")
        first, last = parse_time(start, what), parse_time(end, what)
        if last < first:
            raise BadRequestError(f"{what}: the interval ends before it starts")
        return first, last
    return parse_time(value, what), None


def split_result(value: Any) -> tuple[float | None, str | None, bool | None, str | None]:
    """A result value spread over the typed columns: number, string, boolean, or JSON for anything else."""
    if isinstance(value, bool):
        return None, None, value, None
    if isinstance(value, int | float):
        return float(value), None, None, None
    if isinstance(value, str):
        return None, value, None, None
    return None, None, None, orjson.dumps(value).decode()


@dataclass
class Created:
    entity: EntityType
    id: int


class Writer:
    """Writes of one request (or one batch change set) on one connection inside a transaction."""

    def __init__(self, conn: asyncpg.Connection, principal: Principal) -> None:
        self.conn = conn
        self.principal = principal
        self.created_observations: list[int] = []
        self.created: dict[str, int] = {}  # entity name -> how many this request created (for the audit trail)
        self.datasets: set[int] = set()  # the datasets this request wrote into (for the audit trail)
        self._writable: set[tuple[str, int]] = set()
        self._types: dict[tuple[str, int], list[str]] = {}  # (parent table, id) -> its declared result types

    # --- result types ----------------------------------------------------------------------------------
    async def result_types(self, table: str, parent_id: int) -> list[str]:
        """A Datastream's observationType (one) or a MultiDatastream's multiObservationDataTypes, cached."""
        key = (table, parent_id)
        if key not in self._types:
            if table == "datastream":
                found = await self.conn.fetchval("SELECT observation_type FROM datastream WHERE id = $1", parent_id)
                self._types[key] = [found] if found is not None else []
            else:
                found = await self.conn.fetchval(
                    "SELECT multi_observation_data_types::text FROM multi_datastream WHERE id = $1", parent_id
                )
                self._types[key] = orjson.loads(found) if found is not None else []
        return self._types[key]

    async def check_result(self, table: str, parent_id: int, value: Any, where: str) -> None:
        """400 when a result does not fit its (Multi)Datastream's declared type(s)."""
        types = await self.result_types(table, parent_id)
        if table == "datastream":
            problems = [result_problem(t, value) for t in types]
        else:  # the array's length is checked by multi_result; each member against its own type
            members = value if isinstance(value, list) else []
            problems = [  # a null member is a property not observed this time
                f"member {i}: {problem}"
                for i, (t, member) in enumerate(zip(types, members, strict=False))
                if member is not None and (problem := result_problem(t, member))
            ]
        found = next((p for p in problems if p), None)
        if found:
            parent = "Datastream" if table == "datastream" else "MultiDatastream"
            raise BadRequestError(f"{where}: {found} (the observationType of {parent}({parent_id}))")

    # --- lookups ---------------------------------------------------------------------------------------
    async def existing(self, entity: EntityType, entity_id: Any) -> int:
        if isinstance(entity_id, str) and entity_id.isdigit():
            entity_id = int(entity_id)
        if not isinstance(entity_id, int) or isinstance(entity_id, bool):
            raise BadRequestError(f"@iot.id of a {entity.name} must be an integer")
        found = await self.conn.fetchval(
            f"SELECT c.id FROM {entity.table} c WHERE c.id = $1 AND {visible_sql(entity, 'c', self.principal)}",
            entity_id,
        )
        if found is None:
            raise NotFoundError(f"no {entity.name} with id {entity_id}")
        return int(found)

    async def check_write(self, entity: EntityType, entity_id: int) -> None:
        """403 unless the principal may change this (visible) entity: admins always, publishers when they hold a
        write grant on every dataset it belongs to."""
        if self.principal.is_admin or (entity.name, entity_id) in self._writable:
            return
        # A member of no dataset (a Thing an admin created without one) is left aside: a Datastream of a granted
        # dataset on such a Thing is the publisher's to feed; an entity of no dataset at all stays admin-only.
        datasets = [r[0] for r in await self.conn.fetch(_DATASETS_OF[entity.name], entity_id) if r[0] is not None]
        if not datasets or not all(can_write(self.principal, d) for d in datasets):
            raise ForbiddenError(
                f"this key may not change {entity.name}({entity_id}): it needs a write grant on its dataset"
            )
        self.datasets.update(datasets)
        self._writable.add((entity.name, entity_id))

    async def existing_writable(self, entity: EntityType, entity_id: Any) -> int:
        found = await self.existing(entity, entity_id)
        await self.check_write(entity, found)
        return found

    async def thing_dataset(self, body: dict[str, Any]) -> int | None:
        """The dataset a new Thing joins: the one named by `@territoire.dataset` (a slug), else for a publisher
        the only dataset it may write; admins may leave it out (a Thing of no dataset is public)."""
        slug = body.pop(DATASET_ANNOTATION, None)
        if slug is None:
            if self.principal.is_admin:
                return None
            if len(self.principal.writable) != 1:
                raise ForbiddenError(
                    f"name the dataset the Thing joins with {DATASET_ANNOTATION!r}: this key writes "
                    f"{len(self.principal.writable)} datasets"
                )
            dataset_id = next(iter(self.principal.writable))
        else:
            if not isinstance(slug, str):
                raise BadRequestError(f"Thing/{DATASET_ANNOTATION} must be a dataset slug (a string)")
            found = await self.conn.fetchval(
                f"SELECT d.id FROM dataset d WHERE d.slug = $1 AND {dataset_visible_sql(self.principal, 'd')}", slug
            )
            if found is None:
                raise NotFoundError(f"Thing/{DATASET_ANNOTATION}: no dataset {slug!r}")
            dataset_id = int(found)
        if not can_write(self.principal, dataset_id):
            raise ForbiddenError("this key may not write this dataset (ask an admin for a write grant)")
        self.datasets.add(dataset_id)
        return dataset_id

    async def resolve(self, entity: EntityType, body: Any, where: str) -> int:
        """A nested entity: a link (`{"@iot.id": n}`) or a deep insert."""
        if not isinstance(body, dict):
            raise BadRequestError(f"{where} must be a JSON object")
        if "@iot.id" in body:
            return await self.existing(entity, body["@iot.id"])
        return await self.create(entity, body)

    # --- create ----------------------------------------------------------------------------------------
    def _columns(self, entity: EntityType, body: dict[str, Any], *, partial: bool) -> dict[str, tuple[Any, str]]:
        """Column -> (value, SQL cast or expression template) for the body's plain properties."""
        columns: dict[str, tuple[Any, str]] = {}
        for key in body:
            if key in entity.rel_by_name or key.startswith("@iot.") or key.endswith("@iot.navigationLink"):
                continue
            prop = entity.prop_by_wire.get(key)
            if prop is None:
                raise BadRequestError(f"{entity.name} has no property {key!r}")
            if not prop.writable:
                if key == "id":
                    continue
                raise BadRequestError(f"{entity.name}/{key} is computed by the server and cannot be written")
        if entity.name == "Datastream" and "observationType" in body:
            problem = check_declared(body["observationType"], "Datastream/observationType")
            if problem:
                raise BadRequestError(problem)
        if entity.name == "MultiDatastream" and isinstance(body.get("multiObservationDataTypes"), list):
            for i, declared in enumerate(body["multiObservationDataTypes"]):
                problem = check_declared(declared, f"MultiDatastream/multiObservationDataTypes[{i}]")
                if problem:
                    raise BadRequestError(problem)
        for prop in entity.props:
            if not prop.writable:
                continue
            if prop.wire not in body:
                if not partial and prop.required and not self._has_default(entity, prop):
                    raise BadRequestError(f"a {entity.name} needs {prop.wire!r}")
                continue
            self._column_values(entity, prop, body[prop.wire], body, columns)
        return columns

    @staticmethod
    def _has_default(entity: EntityType, prop: Prop) -> bool:
        return prop.wire in ("description", "observationType", "phenomenonTime") or (
            prop.wire == "encodingType" and entity.name in ("Sensor",)
        )

    def _column_values(
        self, entity: EntityType, prop: Prop, value: Any, body: dict[str, Any], columns: dict[str, tuple[Any, str]]
    ) -> None:
        where = f"{entity.name}/{prop.wire}"
        if prop.kind == "text":
            if not isinstance(value, str):
                raise BadRequestError(f"{where} must be a string")
            columns[prop.column] = (value, "{}::text")
        elif prop.kind == "json":
            if prop.wire == "unitOfMeasurement" and not isinstance(value, dict):
                raise BadRequestError(f"{where} must be a JSON object")
            if prop.wire == "unitOfMeasurements" and (
                not isinstance(value, list) or not all(isinstance(u, dict) for u in value)
            ):
                raise BadRequestError(f"{where} must be a JSON array of unitOfMeasurement objects")
            if prop.wire == "multiObservationDataTypes" and (
                not isinstance(value, list) or not all(isinstance(t, str) for t in value)
            ):
                raise BadRequestError(f"{where} must be a JSON array of observation type URIs (strings)")
            columns[prop.column] = (orjson.dumps(value).decode() if value is not None else None, "{}::text::jsonb")
        elif prop.kind == "geojson":
            if not isinstance(value, dict):
                raise BadRequestError(f"{where} must be a GeoJSON object")
            encoding = body.get("encodingType", "application/geo+json")
            if encoding not in GEOJSON_TYPES:
                raise BadRequestError(
                    f"{entity.name}/encodingType {encoding!r} is not supported; use application/geo+json"
                )
            text = orjson.dumps(value).decode()
            columns[prop.column] = (text, "{}::text::jsonb")
            geometry = value.get("geometry", value) if value.get("type") == "Feature" else value
            if prop.geom and prop.geom != prop.column:
                columns[prop.geom] = (orjson.dumps(geometry).decode(), "ST_SetSRID(ST_GeomFromGeoJSON({}::text), 4326)")
        elif prop.kind == "time":
            start, end = parse_time_or_interval(value, where)
            columns[prop.column] = (start, "{}::timestamptz")
            if prop.end_column:
                columns[prop.end_column] = (end, "{}::timestamptz")
        elif prop.kind == "interval":
            if value is None:
                columns[prop.column] = (None, "{}::timestamptz")
            else:
                start, end = parse_time_or_interval(value, where)
                columns[prop.column] = (start, "{}::timestamptz")
            if prop.end_column:
                columns[prop.end_column] = (end if value is not None else None, "{}::timestamptz")
        elif prop.kind == "result":
            number, string, boolean, js = split_result(value)
            columns["result_number"] = (number, "{}::double precision")
            columns["result_string"] = (string, "{}::text")
            columns["result_boolean"] = (boolean, "{}::boolean")
            columns["result_json"] = (js, "{}::text::jsonb")

    async def observation_table(self, observation_id: int) -> str:
        """The table that holds an Observation: `observation`, or `multi_observation` for a MultiDatastream's."""
        found = await self.conn.fetchval("SELECT 1 FROM multi_observation WHERE id = $1", observation_id)
        return "observation" if found is None else "multi_observation"

    async def write_table(self, entity: EntityType, entity_id: int) -> str:
        """The table to update or delete a row of `entity` in (Observations are read from a view)."""
        return await self.observation_table(entity_id) if entity.name == "Observation" else entity.table

    async def multi_size(self, multi_datastream_id: int) -> int:
        """How many values each result of the MultiDatastream's Observations holds (its ObservedProperties)."""
        size = await self.conn.fetchval(
            "SELECT jsonb_array_length(multi_observation_data_types) FROM multi_datastream WHERE id = $1",
            multi_datastream_id,
        )
        return int(size or 0)

    async def multi_result(self, multi_datastream_id: int, value: Any, where: str, size: int | None = None) -> str:
        """The result of a MultiDatastream's Observation as JSON: an array of one value per ObservedProperty."""
        if size is None:
            size = await self.multi_size(multi_datastream_id)
        if not isinstance(value, list) or len(value) != size:
            raise BadRequestError(
                f"{where}: the result of an Observation of MultiDatastream({multi_datastream_id}) must be an array "
                f"of {size} values, one per ObservedProperty"
            )
        return orjson.dumps(value).decode()

    async def _insert(self, entity: EntityType, columns: dict[str, tuple[Any, str]]) -> int:
        params = Params()
        names: list[str] = []
        exprs: list[str] = []
        for column, (value, template) in columns.items():
            names.append(column)
            params.values.append(value)
            exprs.append(template.format(f"${len(params.values)}"))
        table = entity.table
        if entity.name == "Observation":
            table = "multi_observation" if "multi_datastream_id" in columns else "observation"
        sql = f"INSERT INTO {table} ({', '.join(names)}) VALUES ({', '.join(exprs)}) RETURNING id"
        try:
            return int(await self.conn.fetchval(sql, *params.values))
        except asyncpg.UniqueViolationError:
            if entity.name == "Observation":
                parent = "MultiDatastream" if table == "multi_observation" else "Datastream"
                raise ConflictError(f"an Observation of this {parent} already exists at this phenomenonTime") from None
            raise ConflictError(f"this {entity.name} conflicts with an existing one") from None
        except (asyncpg.DataError, asyncpg.InternalServerError) as exc:
            raise BadRequestError(f"invalid {entity.name}: {exc.args[0] if exc.args else exc}") from None

    async def create(
        self, entity: EntityType, body: Any, forced: dict[str, int] | None = None, linked_from: Relation | None = None
    ) -> int:
        """Create an entity with its nested entities; `forced` sets foreign keys given by the URL or parent."""
        if not isinstance(body, dict):
            raise BadRequestError(f"a {entity.name} must be a JSON object")
        forced = dict(forced or {})
        thing_dataset: int | None = None
        if entity.name == "Thing":
            body = dict(body)
            thing_dataset = await self.thing_dataset(body)
        columns = self._columns(entity, body, partial=False)
        if entity.name == "Thing":
            columns["dataset_id"] = (thing_dataset, "{}::bigint")
        for rel in entity.relations:
            if rel.kind != "parent_fk":
                continue
            target = BY_NAME[rel.target]
            if rel.column in forced:
                columns[rel.column] = (forced[rel.column], "{}::bigint")
            elif rel.name in body:
                columns[rel.column] = (
                    await self.resolve(target, body[rel.name], f"{entity.name}/{rel.name}"),
                    "{}::bigint",
                )
            elif rel.required:
                raise BadRequestError(f'a {entity.name} needs its {rel.name} (an object, or {{"@iot.id": n}})')
            else:
                continue
            if target.name in _OWNED:  # a new Datastream or Observation joins the dataset of its parent
                await self.check_write(target, int(columns[rel.column][0]))
        if entity.name == "Observation":
            await self._observation_parent(body, columns)
            if "phenomenon_time" not in columns:
                columns["phenomenon_time"] = (datetime.now(UTC), "{}::timestamptz")
            if columns.get("feature_of_interest_id") is None:
                multi = "multi_datastream_id" in columns
                parent = columns["multi_datastream_id" if multi else "datastream_id"][0]
                columns["feature_of_interest_id"] = (
                    await self.foi_for_datastream(int(parent), multi=multi),
                    "{}::bigint",
                )
        observed = self._multi_observed_properties(body, columns) if entity.name == "MultiDatastream" else None
        if entity.name in ("Datastream", "MultiDatastream"):
            # it joins the dataset of its Thing, so the access policy follows it
            columns["dataset_id"] = (
                await self.conn.fetchval("SELECT dataset_id FROM thing WHERE id = $1", columns["thing_id"][0]),
                "{}::bigint",
            )
        new_id = await self._insert(entity, columns)
        self.created[entity.name] = self.created.get(entity.name, 0) + 1
        if entity.name in _OWNED:
            self._writable.add((entity.name, new_id))  # checked through its parent or its dataset above
        if entity.name == "Observation":
            self.created_observations.append(new_id)
        if observed is not None:
            await self._link_observed_properties(new_id, observed)
            body = {k: v for k, v in body.items() if k != "ObservedProperties"}
        await self._create_children(entity, new_id, body)
        return new_id

    async def _link_observed_properties(self, multi_datastream_id: int, observed: list[Any]) -> None:
        """A new MultiDatastream's ObservedProperties, in order (`rank`: result[i] is the i-th)."""
        ids = [
            await self.resolve(BY_NAME["ObservedProperty"], item, "MultiDatastream/ObservedProperties")
            for item in observed
        ]
        if len(set(ids)) != len(ids):
            raise BadRequestError("MultiDatastream/ObservedProperties lists an ObservedProperty twice")
        await self.conn.execute(
            "INSERT INTO multi_datastream_observed_property (multi_datastream_id, observed_property_id, rank) "
            "SELECT $1, op, rank - 1 FROM unnest($2::bigint[]) WITH ORDINALITY AS t(op, rank)",
            multi_datastream_id,
            ids,
        )

    async def _observation_parent(self, body: dict[str, Any], columns: dict[str, tuple[Any, str]]) -> None:
        """An Observation belongs to exactly one Datastream or MultiDatastream; a MultiDatastream's result is an
        array as long as its list of ObservedProperties (and is stored whole in `result_json`)."""
        datastream, multi = columns.get("datastream_id"), columns.get("multi_datastream_id")
        if (datastream is None) == (multi is None):
            raise BadRequestError("an Observation needs exactly one of Datastream and MultiDatastream")
        if multi is None:
            assert datastream is not None
            await self.check_result("datastream", int(datastream[0]), body.get("result"), "Observation/result")
            return
        for column in _MULTI_RESULT_COLUMNS:
            columns.pop(column, None)
        columns["result_json"] = (
            await self.multi_result(int(multi[0]), body.get("result"), "Observation/result"),
            "{}::text::jsonb",
        )
        await self.check_result("multi_datastream", int(multi[0]), body.get("result"), "Observation/result")

    @staticmethod
    def _multi_observed_properties(body: dict[str, Any], columns: dict[str, tuple[Any, str]]) -> list[Any]:
        """A new MultiDatastream's ObservedProperties: as many as its units and its observation types (400 else)."""
        observed = body.get("ObservedProperties")
        if not isinstance(observed, list) or not observed:
            raise BadRequestError("a MultiDatastream needs its ObservedProperties (a non-empty JSON array)")
        units = orjson.loads(columns["unit_of_measurements"][0])
        types = orjson.loads(columns["multi_observation_data_types"][0])
        if not len(observed) == len(units) == len(types):
            raise BadRequestError(
                f"a MultiDatastream needs as many unitOfMeasurements ({len(units)}) and multiObservationDataTypes "
                f"({len(types)}) as ObservedProperties ({len(observed)})"
            )
        kind = columns.get("observation_type", (None, ""))[0]
        if kind is None:
            columns["observation_type"] = (COMPLEX_OBSERVATION, "{}::text")
        elif kind != COMPLEX_OBSERVATION:
            raise BadRequestError(f"the observationType of a MultiDatastream is {COMPLEX_OBSERVATION}")
        return observed

    async def _create_children(self, entity: EntityType, new_id: int, body: dict[str, Any]) -> None:
        location_ids: list[int] = []
        for rel in entity.relations:
            if rel.kind == "parent_fk" or rel.name not in body:
                continue
            items = body[rel.name]
            if not isinstance(items, list):
                raise BadRequestError(f"{entity.name}/{rel.name} must be a JSON array")
            target = BY_NAME[rel.target]
            for item in items:
                if rel.kind == "child_fk":
                    if isinstance(item, dict) and "@iot.id" in item:
                        child_id = await self.existing_writable(target, item["@iot.id"])
                        table = await self.write_table(target, child_id)
                        if table == "multi_observation" and rel.column == "datastream_id":
                            raise BadRequestError("an Observation of a MultiDatastream cannot move to a Datastream")
                        await self.conn.execute(f"UPDATE {table} SET {rel.column} = $1 WHERE id = $2", new_id, child_id)
                    else:
                        await self.create(target, item, forced={rel.column: new_id})
                else:
                    if rel.link_table in ORDERED_LINKS:
                        raise BadRequestError(
                            f"{entity.name}/{rel.name}: create a MultiDatastream with its ObservedProperties, in order"
                        )
                    child_id = await self.resolve(target, item, f"{entity.name}/{rel.name}")
                    if target.name in _OWNED:
                        await self.check_write(target, child_id)
                    await self.conn.execute(
                        f"INSERT INTO {rel.link_table} ({rel.link_self}, {rel.link_target}) VALUES ($1, $2) "
                        "ON CONFLICT DO NOTHING",
                        new_id,
                        child_id,
                    )
                    if entity.name == "Thing" and rel.name == "Locations":
                        location_ids.append(child_id)
                    if entity.name == "Location" and rel.name == "Things":
                        await self.set_thing_locations(child_id, [new_id], replace=True)
        if location_ids:
            await self.record_history(new_id, location_ids)

    async def set_thing_locations(self, thing_id: int, location_ids: list[int], *, replace: bool) -> None:
        """A Thing's current Locations change: links replaced and a HistoricalLocation recorded."""
        if replace:
            await self.conn.execute(
                "DELETE FROM thing_location WHERE thing_id = $1 AND NOT (location_id = ANY($2::bigint[]))",
                thing_id,
                location_ids,
            )
        await self.conn.execute(
            "INSERT INTO thing_location (thing_id, location_id) SELECT $1, unnest($2::bigint[]) ON CONFLICT DO NOTHING",
            thing_id,
            location_ids,
        )
        await self.record_history(thing_id, location_ids)

    async def record_history(self, thing_id: int, location_ids: list[int]) -> None:
        hl = await self.conn.fetchval(
            "INSERT INTO historical_location (thing_id, time) VALUES ($1, now()) RETURNING id", thing_id
        )
        await self.conn.execute(
            "INSERT INTO location_historical_location (location_id, historical_location_id) "
            "SELECT unnest($1::bigint[]), $2 ON CONFLICT DO NOTHING",
            location_ids,
            hl,
        )

    async def foi_for_datastream(self, datastream_id: int, *, multi: bool = False) -> int:
        """The FeatureOfInterest generated from the Location of the (Multi)Datastream's Thing (made once, then
        reused)."""
        # the Location and the FeatureOfInterest already made from it, in one round trip (the common case)
        location = await self.conn.fetchrow(
            "SELECT l.id, f.id AS feature_of_interest_id "
            f"FROM {'multi_datastream' if multi else 'datastream'} d "
            "JOIN thing_location tl ON tl.thing_id = d.thing_id "
            "JOIN location l ON l.id = tl.location_id "
            "LEFT JOIN feature_of_interest f ON f.external_key = 'sta:location:' || l.id "
            "WHERE d.id = $1 ORDER BY l.id LIMIT 1",
            datastream_id,
        )
        if location is None:
            raise BadRequestError(
                "the Observation has no FeatureOfInterest and its Datastream's Thing has no Location to make one from"
            )
        if location["feature_of_interest_id"] is not None:
            return int(location["feature_of_interest_id"])
        key = f"sta:location:{location['id']}"
        return int(
            await self.conn.fetchval(
                "INSERT INTO feature_of_interest (name, description, encoding_type, feature, geom, external_key) "
                "SELECT name, description, encoding_type, location, geom, $2 FROM location WHERE id = $1 "
                "ON CONFLICT (external_key) DO UPDATE SET external_key = EXCLUDED.external_key RETURNING id",
                location["id"],
                key,
            )
        )

    # --- update ----------------------------------------------------------------------------------------
    async def update(self, entity: EntityType, entity_id: int, body: Any) -> None:
        if not isinstance(body, dict):
            raise BadRequestError(f"a {entity.name} update must be a JSON object")
        entity_id = await self.existing_writable(entity, entity_id)
        if DATASET_ANNOTATION in body:
            raise BadRequestError(f"{DATASET_ANNOTATION} is set when a Thing is created, not by an update")
        columns = self._columns(entity, body, partial=True)
        for rel in entity.relations:
            if rel.name not in body:
                continue
            target = BY_NAME[rel.target]
            if rel.kind == "parent_fk":
                columns[rel.column] = (
                    await self.resolve(target, body[rel.name], f"{entity.name}/{rel.name}"),
                    "{}::bigint",
                )
                if target.name in _OWNED:  # moving under another Thing or Datastream writes into its dataset
                    await self.check_write(target, int(columns[rel.column][0]))
                if entity.name in ("Datastream", "MultiDatastream") and rel.name == "Thing":  # access follows the Thing
                    columns["dataset_id"] = (
                        await self.conn.fetchval("SELECT dataset_id FROM thing WHERE id = $1", columns["thing_id"][0]),
                        "{}::bigint",
                    )
            elif entity.name == "Thing" and rel.name == "Locations":
                items = body[rel.name]
                if not isinstance(items, list):
                    raise BadRequestError("Thing/Locations must be a JSON array")
                ids = [await self.resolve(target, item, "Thing/Locations") for item in items]
                await self.set_thing_locations(entity_id, ids, replace=True)
            else:
                raise BadRequestError(f"{entity.name}/{rel.name} cannot be changed by an update; use its own entity")
        table = await self.write_table(entity, entity_id)
        if table == "multi_observation":
            if "datastream_id" in columns:
                raise BadRequestError("an Observation of a MultiDatastream cannot move to a Datastream")
            if "result" in body:
                multi = columns.get("multi_datastream_id", (None, ""))[0] or await self.conn.fetchval(
                    "SELECT multi_datastream_id FROM multi_observation WHERE id = $1", entity_id
                )
                for column in _MULTI_RESULT_COLUMNS:
                    columns.pop(column, None)
                columns["result_json"] = (
                    await self.multi_result(int(multi), body["result"], "Observation/result"),
                    "{}::text::jsonb",
                )
                await self.check_result("multi_datastream", int(multi), body["result"], "Observation/result")
        elif entity.name == "Observation" and "multi_datastream_id" in columns:
            raise BadRequestError("an Observation of a Datastream cannot move to a MultiDatastream")
        elif entity.name == "Observation" and ("result" in body or "datastream_id" in columns):
            await self._check_updated_result(entity_id, body, columns)
        if entity.name == "Datastream" and "observation_type" in columns:
            await self._check_stored_results(entity_id, str(columns["observation_type"][0]))
        if entity.name == "MultiDatastream" and (
            {"unit_of_measurements", "multi_observation_data_types"} & set(columns)
        ):
            await self._check_multi_sizes(entity_id, columns)
        if not columns:
            return
        params = Params()
        sets: list[str] = []
        for column, (value, template) in columns.items():
            params.values.append(value)
            sets.append(f"{column} = {template.format(f'${len(params.values)}')}")
        params.values.append(entity_id)
        try:
            await self.conn.execute(
                f"UPDATE {table} SET {', '.join(sets)} WHERE id = ${len(params.values)}", *params.values
            )
        except asyncpg.UniqueViolationError:
            raise ConflictError(f"this change makes the {entity.name} conflict with an existing one") from None
        except (asyncpg.DataError, asyncpg.InternalServerError) as exc:
            raise BadRequestError(f"invalid {entity.name}: {exc.args[0] if exc.args else exc}") from None

    async def _check_updated_result(
        self, entity_id: int, body: dict[str, Any], columns: dict[str, tuple[Any, str]]
    ) -> None:
        """An Observation's new result, or its result under its new Datastream, fits that Datastream's type."""
        datastream = columns.get("datastream_id", (None, ""))[0] or await self.conn.fetchval(
            "SELECT datastream_id FROM observation WHERE id = $1", entity_id
        )
        if "result" in body:
            await self.check_result("datastream", int(datastream), body["result"], "Observation/result")
            return
        (kind,) = await self.result_types("datastream", int(datastream))
        fits = await self.conn.fetchval(f"SELECT {stored_predicate(kind)} FROM observation WHERE id = $1", entity_id)
        if not fits:
            raise BadRequestError(
                f"Observation({entity_id}): its result does not fit the {short_name(kind)} of Datastream({datastream})"
            )

    async def _check_stored_results(self, datastream_id: int, kind: str) -> None:
        """A Datastream's observationType changes only if every Observation it already has fits the new type."""
        misfits = await self.conn.fetchval(
            f"SELECT count(*) FROM observation WHERE datastream_id = $1 AND NOT ({stored_predicate(kind)})",
            datastream_id,
        )
        if misfits:
            raise BadRequestError(
                f"Datastream({datastream_id})/observationType: {misfits} of its Observations have results that are "
                f"not {short_name(kind)} results; change or delete them first"
            )
        self._types.pop(("datastream", datastream_id), None)

    async def _check_multi_sizes(self, entity_id: int, columns: dict[str, tuple[Any, str]]) -> None:
        """After an update, a MultiDatastream still has one unit and one type per ObservedProperty."""
        row = await self.conn.fetchrow(
            "SELECT unit_of_measurements::text AS u, multi_observation_data_types::text AS t, "
            "(SELECT count(*) FROM multi_datastream_observed_property l WHERE l.multi_datastream_id = m.id) AS n "
            "FROM multi_datastream m WHERE m.id = $1",
            entity_id,
        )
        units = orjson.loads(columns["unit_of_measurements"][0]) if "unit_of_measurements" in columns else None
        types = (
            orjson.loads(columns["multi_observation_data_types"][0])
            if "multi_observation_data_types" in columns
            else None
        )
        units = units if units is not None else orjson.loads(row["u"])
        types = types if types is not None else orjson.loads(row["t"])
        if not len(units) == len(types) == row["n"]:
            raise BadRequestError(
                f"a MultiDatastream needs as many unitOfMeasurements ({len(units)}) and multiObservationDataTypes "
                f"({len(types)}) as ObservedProperties ({row['n']})"
            )

    # --- delete ----------------------------------------------------------------------------------------
    async def delete(self, entity: EntityType, entity_id: int) -> None:
        """Delete with the standard's cascades (the schema's foreign keys do the rest)."""
        entity_id = await self.existing_writable(entity, entity_id)
        if entity.name == "FeatureOfInterest":
            await self.conn.execute("DELETE FROM observation WHERE feature_of_interest_id = $1", entity_id)
            await self.conn.execute("DELETE FROM multi_observation WHERE feature_of_interest_id = $1", entity_id)
        if entity.name == "Location":
            await self.conn.execute(
                "DELETE FROM historical_location WHERE id IN (SELECT historical_location_id FROM "
                "location_historical_location WHERE location_id = $1)",
                entity_id,
            )
        await self.conn.execute(f"DELETE FROM {await self.write_table(entity, entity_id)} WHERE id = $1", entity_id)

    # --- $ref links ------------------------------------------------------------------------------------
    async def add_link(self, entity: EntityType, entity_id: int, rel: Relation, target_id: Any) -> None:
        target = BY_NAME[rel.target]
        entity_id = await self.existing_writable(entity, entity_id)
        child = await self.existing(target, target_id)
        if rel.kind == "child_fk" or target.name in _OWNED:  # the target's row (or its dataset's) changes too
            await self.check_write(target, child)
        if rel.link_table in ORDERED_LINKS:
            raise BadRequestError(
                f"{entity.name}/{rel.name}: a MultiDatastream's ObservedProperties are ordered, set when it is created"
            )
        if rel.kind == "parent_fk":
            table = await self.write_table(entity, entity_id)
            if entity.name == "Observation" and rel.name in ("Datastream", "MultiDatastream"):
                raise BadRequestError(f"an Observation's {rel.name} is changed by an update of the Observation")
            await self.conn.execute(f"UPDATE {table} SET {rel.column} = $1 WHERE id = $2", child, entity_id)
        elif rel.kind == "child_fk":
            table = await self.write_table(target, child)
            if target.name == "Observation" and rel.name == "Observations":
                raise BadRequestError("an Observation's (Multi)Datastream is changed by an update of the Observation")
            await self.conn.execute(f"UPDATE {table} SET {rel.column} = $1 WHERE id = $2", entity_id, child)
        elif entity.name == "Thing" and rel.name == "Locations":
            await self.set_thing_locations(entity_id, [child], replace=False)
        else:
            await self.conn.execute(
                f"INSERT INTO {rel.link_table} ({rel.link_self}, {rel.link_target}) VALUES ($1, $2) "
                "ON CONFLICT DO NOTHING",
                entity_id,
                child,
            )

    async def remove_link(self, entity: EntityType, entity_id: int, rel: Relation, target_id: int) -> None:
        if rel.kind != "link" or rel.link_table in ORDERED_LINKS:
            raise BadRequestError(f"{entity.name}/{rel.name} is mandatory or owned; change it with an update instead")
        entity_id = await self.existing_writable(entity, entity_id)
        target = BY_NAME[rel.target]
        if target.name in _OWNED:
            await self.check_write(target, await self.existing(target, target_id))
        status = await self.conn.execute(
            f"DELETE FROM {rel.link_table} WHERE {rel.link_self} = $1 AND {rel.link_target} = $2", entity_id, target_id
        )
        if status.endswith(" 0"):
            raise NotFoundError(f"{entity.name}({entity_id}) has no {rel.name} link to {target_id}")

    # --- dataArray create --------------------------------------------------------------------------------
    async def create_observations(self, body: Any, base: str) -> list[str]:
        """The dataArray create extension: one set-based insert per Datastream, a selfLink or "error" per row."""
        if not isinstance(body, list):
            raise BadRequestError("CreateObservations expects a JSON array of {Datastream, components, dataArray}")
        out: list[str] = []
        for index, group in enumerate(body):
            if not isinstance(group, dict) or not isinstance(group.get("dataArray"), list):
                raise BadRequestError(f"CreateObservations[{index}] needs components and dataArray")
            parent = "MultiDatastream" if "MultiDatastream" in group else "Datastream"
            if parent == "MultiDatastream" and "Datastream" in group:
                raise BadRequestError(f"CreateObservations[{index}] names both a Datastream and a MultiDatastream")
            ds = await self.resolve(BY_NAME[parent], group.get(parent), f"CreateObservations[{index}]/{parent}")
            await self.check_write(BY_NAME[parent], ds)
            components = group.get("components")
            allowed = {
                "phenomenonTime",
                "result",
                "resultTime",
                "resultQuality",
                "validTime",
                "parameters",
                "FeatureOfInterest/id",
            }
            if not isinstance(components, list) or not set(components) <= allowed or "result" not in components:
                raise BadRequestError(
                    f"CreateObservations[{index}]/components must list result and some of {sorted(allowed)}"
                )
            out.extend(
                await self._insert_array(
                    ds, components, group["dataArray"], base, index, multi=parent == "MultiDatastream"
                )
            )
        return out

    async def _insert_array(
        self, datastream_id: int, components: list[str], rows: list[Any], base: str, index: int, *, multi: bool = False
    ) -> list[str]:
        columns: dict[str, list[Any]] = {c: [] for c in _ARRAY_CASTS}
        default_foi: int | None = None
        known_foi: dict[tuple[type, Any], int] = {}
        now = datetime.now(UTC)
        size = await self.multi_size(datastream_id) if multi else None  # once, not per row
        parent_table = "multi_datastream" if multi else "datastream"
        for line_no, line in enumerate(rows):
            if not isinstance(line, list) or len(line) != len(components):
                raise BadRequestError(
                    f"CreateObservations[{index}]/dataArray[{line_no}] must have {len(components)} values"
                )
            values = dict(zip(components, line, strict=True))
            where = f"CreateObservations[{index}]/dataArray[{line_no}]"
            start, end = (
                parse_time_or_interval(values["phenomenonTime"], where) if "phenomenonTime" in values else (now, None)
            )
            columns["phenomenon_time"].append(start)
            columns["phenomenon_time_end"].append(end)
            rt = values.get("resultTime")
            columns["result_time"].append(parse_time(rt, where) if rt is not None else None)
            await self.check_result(parent_table, datastream_id, values["result"], f"{where}/result")
            if multi:
                number, string, boolean = None, None, None
                js: str | None = await self.multi_result(datastream_id, values["result"], f"{where}/result", size)
            else:
                number, string, boolean, js = split_result(values["result"])
            columns["result_number"].append(number)
            columns["result_string"].append(string)
            columns["result_boolean"].append(boolean)
            columns["result_json"].append(js)
            rq = values.get("resultQuality")
            columns["result_quality"].append(orjson.dumps(rq).decode() if rq is not None else None)
            vt = values.get("validTime")
            vs, ve = parse_time_or_interval(vt, where) if vt is not None else (None, None)
            columns["valid_time_start"].append(vs)
            columns["valid_time_end"].append(ve)
            pa = values.get("parameters")
            columns["parameters"].append(orjson.dumps(pa).decode() if pa is not None else None)
            foi = values.get("FeatureOfInterest/id")
            if foi is None:
                if default_foi is None:
                    default_foi = await self.foi_for_datastream(datastream_id, multi=multi)
                foi = default_foi
            elif isinstance(foi, int | str) and (type(foi), foi) in known_foi:
                foi = known_foi[(type(foi), foi)]
            else:
                raw, foi = foi, await self.existing(BY_NAME["FeatureOfInterest"], foi)
                known_foi[(type(raw), raw)] = foi  # rows mostly repeat a few: one visibility check each
            columns["feature_of_interest_id"].append(foi)
        if multi:
            for column in _MULTI_RESULT_COLUMNS:
                del columns[column]
        inserted = await self._insert_observation_rows(
            "multi_observation" if multi else "observation",
            "multi_datastream_id" if multi else "datastream_id",
            datastream_id,
            columns,
        )
        by_time = {r["phenomenon_time"]: int(r["id"]) for r in inserted}
        self.created_observations.extend(by_time.values())
        self.created["Observation"] = self.created.get("Observation", 0) + len(by_time)
        out: list[str] = []
        for t in columns["phenomenon_time"]:
            new_id = by_time.pop(t, None)
            out.append(f"{base}/Observations({new_id})" if new_id is not None else "error")
        return out

    async def _insert_observation_rows(
        self, table: str, parent_column: str, parent_id: int, columns: dict[str, list[Any]]
    ) -> list[asyncpg.Record]:
        """The Observations of one (Multi)Datastream in one set-based insert (a redelivered one is skipped)."""
        arrays = ", ".join(f"${n}::{_ARRAY_CASTS[c]}" for n, c in enumerate(columns, start=2))
        return list(
            await self.conn.fetch(
                f"INSERT INTO {table} ({parent_column}, {', '.join(columns)}) SELECT $1, * FROM unnest({arrays}) "
                f"ON CONFLICT ({parent_column}, phenomenon_time) DO NOTHING RETURNING id, phenomenon_time",
                parent_id,
                *columns.values(),
            )
        )


def apply_json_patch(document: dict[str, Any], operations: Any) -> dict[str, Any]:
    """RFC 6902 JSON Patch (add, replace, remove, test) on an entity's JSON, as FROST's client sends it."""
    if not isinstance(operations, list):
        raise BadRequestError("a JSON Patch is an array of operations")
    doc: dict[str, Any] = orjson.loads(orjson.dumps(document))
    for index, operation in enumerate(operations):
        if not isinstance(operation, dict) or not isinstance(operation.get("path"), str):
            raise BadRequestError(f"JSON Patch operation {index} needs op and path")
        op, path = operation.get("op"), operation["path"]
        parts = [p.replace("~1", "/").replace("~0", "~") for p in path.split("/")[1:]]
        if not parts or not parts[0]:
            raise BadRequestError(f"JSON Patch operation {index}: the path must name a property")
        parent: Any = doc
        for part in parts[:-1]:
            if not isinstance(parent, dict) or part not in parent or parent[part] is None:
                raise BadRequestError(f"JSON Patch operation {index}: no {path!r}")
            parent = parent[part]
        if not isinstance(parent, dict):
            raise BadRequestError(f"JSON Patch operation {index}: {path!r} is not inside an object")
        last = parts[-1]
        if op in ("add", "replace"):
            if "value" not in operation:
                raise BadRequestError(f"JSON Patch operation {index} needs a value")
            if op == "replace" and last not in parent:
                raise BadRequestError(f"JSON Patch operation {index}: no {path!r} to replace")
            parent[last] = operation["value"]
        elif op == "remove":
            if last not in parent:
                raise BadRequestError(f"JSON Patch operation {index}: no {path!r} to remove")
            del parent[last]
        elif op == "test":
            if parent.get(last) != operation.get("value"):
                raise ConflictError(f"JSON Patch test failed at {path!r}")
        else:
            raise BadRequestError(f"JSON Patch operation {op!r} is not supported (add, replace, remove, test)")
    return doc


def patched_properties(entity: EntityType, before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """The writable properties a JSON Patch changed, as an update body (removed ones become null)."""
    changes: dict[str, Any] = {}
    for prop in entity.props:
        if not prop.writable:
            continue
        if prop.wire in after and after[prop.wire] != before.get(prop.wire):
            changes[prop.wire] = after[prop.wire]
        elif prop.wire in before and prop.wire not in after:
            if prop.required:
                raise BadRequestError(f"{entity.name}/{prop.wire} cannot be removed")
            changes[prop.wire] = None
    return changes
