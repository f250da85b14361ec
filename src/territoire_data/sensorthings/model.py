"""The SensorThings 1.1 (Sensing) entity model: entity types, their properties and relations, mapped to tables.

Wire names (`@iot.id`, `encodingType`) appear here only as the public names of properties; the SQL module
reads the column side, the serializer the wire side.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

PropKind = Literal["id", "text", "json", "time", "interval", "geojson", "result", "number", "bool"]


@dataclass(frozen=True)
class Prop:
    """One property: wire name, column(s), kind; `geom` names the geometry column a GeoJSON property mirrors."""

    wire: str
    column: str
    kind: PropKind
    required: bool = False
    geom: str | None = None
    end_column: str | None = None  # for intervals and phenomenonTime of observations
    writable: bool = True


@dataclass(frozen=True)
class Relation:
    """A navigation property.

    kind:
      - `child_fk`: the target's `column` references this entity's id (Thing -> Datastreams);
      - `parent_fk`: this entity's `column` references the target's id (Datastream -> Thing);
      - `link`: a link table `link_table(link_self, link_target)` (Thing <-> Locations).
    """

    name: str
    target: str
    many: bool
    kind: Literal["child_fk", "parent_fk", "link"]
    column: str = ""
    link_table: str = ""
    link_self: str = ""
    link_target: str = ""
    required: bool = False  # must be given on create (Datastream needs Thing, Sensor, ObservedProperty)
    # the table the targets are read from when it is not the target's own (a Datastream's Observations are read
    # from `observation`, not from the view `observation_all` that also holds the MultiDatastreams' ones)
    table: str = ""
    # link tables whose rows are ordered (a MultiDatastream's ObservedProperties): the rank column
    link_rank: str = ""
    # a to-one relation that may be unset (an Observation has a Datastream or a MultiDatastream): its
    # navigationLink is written only when it leads to an entity
    optional: bool = False

    def set_in(self, table: str | None) -> bool | None:
        """Whether the rows of `table` always (True) or never (False) have this to-one relation, or None when
        it depends on the row: the table `observation` holds the Observations of Datastreams only, the view
        `observation_all` those of MultiDatastreams too (exactly one of the two set)."""
        if not self.optional:
            return True
        if table == "observation":
            return self.column == "datastream_id"
        return None

    def condition(self, parent: str, child: str) -> str:
        """SQL condition relating a parent row (alias `parent`) to a target row (alias `child`)."""
        if self.kind == "child_fk":
            return f"{child}.{self.column} = {parent}.id"
        if self.kind == "parent_fk":
            return f"{child}.id = {parent}.{self.column}"
        return f"{child}.id IN (SELECT {self.link_target} FROM {self.link_table} WHERE {self.link_self} = {parent}.id)"

    @property
    def target_table(self) -> str:
        """The table (or view) the targets of this relation are read from."""
        return self.table or BY_NAME[self.target].table


@dataclass(frozen=True)
class EntityType:
    name: str  # Thing
    plural: str  # Things
    table: str
    props: tuple[Prop, ...]
    relations: tuple[Relation, ...] = ()
    default_order: str = "id"
    prop_by_wire: dict[str, Prop] = field(default_factory=dict, compare=False, hash=False)
    rel_by_name: dict[str, Relation] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        self.prop_by_wire.update({p.wire: p for p in self.props})
        self.rel_by_name.update({r.name: r for r in self.relations})


def _common(*extra: Prop) -> tuple[Prop, ...]:
    return (
        Prop("id", "id", "id", writable=False),
        Prop("name", "name", "text", required=True),
        Prop("description", "description", "text", required=True),
        *extra,
        Prop("properties", "properties", "json"),
    )


THING = EntityType(
    "Thing",
    "Things",
    "thing",
    _common(),
    (
        Relation(
            "Locations",
            "Location",
            True,
            "link",
            link_table="thing_location",
            link_self="thing_id",
            link_target="location_id",
        ),
        Relation("HistoricalLocations", "HistoricalLocation", True, "child_fk", column="thing_id"),
        Relation("Datastreams", "Datastream", True, "child_fk", column="thing_id"),
        Relation("MultiDatastreams", "MultiDatastream", True, "child_fk", column="thing_id"),
    ),
)

LOCATION = EntityType(
    "Location",
    "Locations",
    "location",
    _common(
        Prop("encodingType", "encoding_type", "text", required=True),
        Prop("location", "location", "geojson", required=True, geom="geom"),
    ),
    (
        Relation(
            "Things",
            "Thing",
            True,
            "link",
            link_table="thing_location",
            link_self="location_id",
            link_target="thing_id",
        ),
        Relation(
            "HistoricalLocations",
            "HistoricalLocation",
            True,
            "link",
            link_table="location_historical_location",
            link_self="location_id",
            link_target="historical_location_id",
        ),
    ),
)

HISTORICAL_LOCATION = EntityType(
    "HistoricalLocation",
    "HistoricalLocations",
    "historical_location",
    (Prop("id", "id", "id", writable=False), Prop("time", "time", "time", required=True)),
    (
        Relation("Thing", "Thing", False, "parent_fk", column="thing_id", required=True),
        Relation(
            "Locations",
            "Location",
            True,
            "link",
            link_table="location_historical_location",
            link_self="historical_location_id",
            link_target="location_id",
        ),
    ),
)

SENSOR = EntityType(
    "Sensor",
    "Sensors",
    "sensor",
    _common(
        Prop("encodingType", "encoding_type", "text", required=True),
        Prop("metadata", "metadata", "text", required=True),
    ),
    (
        Relation("Datastreams", "Datastream", True, "child_fk", column="sensor_id"),
        Relation("MultiDatastreams", "MultiDatastream", True, "child_fk", column="sensor_id"),
    ),
)

OBSERVED_PROPERTY = EntityType(
    "ObservedProperty",
    "ObservedProperties",
    "observed_property",
    _common(Prop("definition", "definition", "text", required=True)),
    (
        Relation("Datastreams", "Datastream", True, "child_fk", column="observed_property_id"),
        Relation(
            "MultiDatastreams",
            "MultiDatastream",
            True,
            "link",
            link_table="multi_datastream_observed_property",
            link_self="observed_property_id",
            link_target="multi_datastream_id",
        ),
    ),
)

DATASTREAM = EntityType(
    "Datastream",
    "Datastreams",
    "datastream",
    _common(
        Prop("unitOfMeasurement", "unit_of_measurement", "json", required=True),
        Prop("observationType", "observation_type", "text", required=True),
        Prop("observedArea", "observed_area", "geojson", geom="observed_area", writable=False),
        Prop("phenomenonTime", "phenomenon_time_start", "interval", end_column="phenomenon_time_end", writable=False),
        Prop("resultTime", "result_time_start", "interval", end_column="result_time_end", writable=False),
    ),
    (
        Relation("Thing", "Thing", False, "parent_fk", column="thing_id", required=True),
        Relation("Sensor", "Sensor", False, "parent_fk", column="sensor_id", required=True),
        Relation(
            "ObservedProperty", "ObservedProperty", False, "parent_fk", column="observed_property_id", required=True
        ),
        Relation("Observations", "Observation", True, "child_fk", column="datastream_id", table="observation"),
    ),
)

COMPLEX_OBSERVATION = "http://www.opengis.net/def/observationType/OGC-OM/2.0/OM_ComplexObservation"

# The MultiDatastream extension (OGC 18-088 section 14.3): one result per ObservedProperty, in their order.
MULTI_DATASTREAM = EntityType(
    "MultiDatastream",
    "MultiDatastreams",
    "multi_datastream",
    _common(
        Prop("unitOfMeasurements", "unit_of_measurements", "json", required=True),
        Prop("observationType", "observation_type", "text", required=True),
        Prop("multiObservationDataTypes", "multi_observation_data_types", "json", required=True),
        Prop("observedArea", "observed_area", "geojson", geom="observed_area", writable=False),
        Prop("phenomenonTime", "phenomenon_time_start", "interval", end_column="phenomenon_time_end", writable=False),
        Prop("resultTime", "result_time_start", "interval", end_column="result_time_end", writable=False),
    ),
    (
        Relation("Thing", "Thing", False, "parent_fk", column="thing_id", required=True),
        Relation("Sensor", "Sensor", False, "parent_fk", column="sensor_id", required=True),
        Relation(
            "ObservedProperties",
            "ObservedProperty",
            True,
            "link",
            link_table="multi_datastream_observed_property",
            link_self="multi_datastream_id",
            link_target="observed_property_id",
            required=True,
            link_rank="rank",
        ),
        Relation("Observations", "Observation", True, "child_fk", column="multi_datastream_id"),
    ),
)

FEATURE_OF_INTEREST = EntityType(
    "FeatureOfInterest",
    "FeaturesOfInterest",
    "feature_of_interest",
    _common(
        Prop("encodingType", "encoding_type", "text", required=True),
        Prop("feature", "feature", "geojson", required=True, geom="geom"),
    ),
    (Relation("Observations", "Observation", True, "child_fk", column="feature_of_interest_id"),),
)

# Read from the view `observation_all` (migration 0007_multids): the Observations of Datastreams and of
# MultiDatastreams; exactly one of Datastream and MultiDatastream is set.
OBSERVATION = EntityType(
    "Observation",
    "Observations",
    "observation_all",
    (
        Prop("id", "id", "id", writable=False),
        Prop("phenomenonTime", "phenomenon_time", "time", end_column="phenomenon_time_end"),
        Prop("resultTime", "result_time", "time"),
        Prop("result", "result_number", "result", required=True),
        Prop("resultQuality", "result_quality", "json"),
        Prop("validTime", "valid_time_start", "interval", end_column="valid_time_end"),
        Prop("parameters", "parameters", "json"),
    ),
    (
        Relation("Datastream", "Datastream", False, "parent_fk", column="datastream_id", optional=True),
        Relation("MultiDatastream", "MultiDatastream", False, "parent_fk", column="multi_datastream_id", optional=True),
        Relation("FeatureOfInterest", "FeatureOfInterest", False, "parent_fk", column="feature_of_interest_id"),
    ),
)

ENTITY_TYPES: tuple[EntityType, ...] = (
    THING,
    LOCATION,
    HISTORICAL_LOCATION,
    SENSOR,
    OBSERVED_PROPERTY,
    DATASTREAM,
    MULTI_DATASTREAM,
    FEATURE_OF_INTEREST,
    OBSERVATION,
)
BY_NAME: dict[str, EntityType] = {e.name: e for e in ENTITY_TYPES}
# Link tables whose rows carry a rank (a MultiDatastream's ObservedProperties): written only with their entity.
ORDERED_LINKS = frozenset(r.link_table for e in ENTITY_TYPES for r in e.relations if r.link_rank)
BY_PLURAL: dict[str, EntityType] = {e.plural: e for e in ENTITY_TYPES}
