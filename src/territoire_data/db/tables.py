"""SQLAlchemy Core tables of the core schema; the DDL itself lives in the Alembic migrations.

A test compares these tables with the migrated database, so the two never drift apart.
"""

from __future__ import annotations

from geoalchemy2 import Geometry
from sqlalchemy import (
    ARRAY,
    BigInteger,
    Boolean,
    Column,
    Float,
    ForeignKey,
    Identity,
    MetaData,
    Table,
    Text,
    Uuid,
)
from sqlalchemy.dialects.postgresql import INET, JSONB, TIMESTAMP

metadata = MetaData()

TZ = TIMESTAMP(timezone=True)


def _geom(kind: str = "GEOMETRY") -> Geometry:
    return Geometry(geometry_type=kind, srid=4326, spatial_index=False)


dataset = Table(
    "dataset",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("identifier", Uuid, nullable=False, unique=True),
    Column("slug", Text, nullable=False, unique=True),
    Column("kind", Text, nullable=False),
    Column("title", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("keywords", ARRAY(Text), nullable=False),
    Column("themes", ARRAY(Text), nullable=False),
    Column("licence", Text),
    Column("publisher", Text),
    Column("contact_name", Text),
    Column("contact_email", Text),
    Column("access", Text, nullable=False),
    Column("update_frequency", Text),
    Column("table_schema", JSONB),
    Column("table_name", Text, unique=True),
    Column("geometry_type", Text),
    Column("spatial_extent", _geom("POLYGON")),
    Column("temporal_start", TZ),
    Column("temporal_end", TZ),
    Column("row_count", BigInteger),
    Column("extra", JSONB, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("modified_at", TZ, nullable=False),
)

dataset_import = Table(
    "dataset_import",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("dataset_id", BigInteger, ForeignKey("dataset.id", ondelete="CASCADE"), nullable=False),
    Column("status", Text, nullable=False),
    Column("source", Text, nullable=False),
    Column("mode", Text, nullable=False),
    Column("rows_read", BigInteger, nullable=False),
    Column("rows_loaded", BigInteger, nullable=False),
    Column("rows_rejected", BigInteger, nullable=False),
    Column("report", JSONB, nullable=False),
    Column("started_at", TZ, nullable=False),
    Column("finished_at", TZ),
)

thing = Table(
    "thing",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("properties", JSONB),
    Column("dataset_id", BigInteger, ForeignKey("dataset.id", ondelete="SET NULL")),
    Column("external_key", Text, unique=True),
    Column("created_at", TZ, nullable=False),
)

location = Table(
    "location",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("encoding_type", Text, nullable=False),
    Column("location", JSONB, nullable=False),
    Column("geom", _geom()),
    Column("properties", JSONB),
    Column("external_key", Text, unique=True),
)

thing_location = Table(
    "thing_location",
    metadata,
    Column("thing_id", BigInteger, ForeignKey("thing.id", ondelete="CASCADE"), primary_key=True),
    Column("location_id", BigInteger, ForeignKey("location.id", ondelete="CASCADE"), primary_key=True),
)

historical_location = Table(
    "historical_location",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("thing_id", BigInteger, ForeignKey("thing.id", ondelete="CASCADE"), nullable=False),
    Column("time", TZ, nullable=False),
)

location_historical_location = Table(
    "location_historical_location",
    metadata,
    Column("location_id", BigInteger, ForeignKey("location.id", ondelete="CASCADE"), primary_key=True),
    Column(
        "historical_location_id",
        BigInteger,
        ForeignKey("historical_location.id", ondelete="CASCADE"),
        primary_key=True,
    ),
)

sensor = Table(
    "sensor",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("encoding_type", Text, nullable=False),
    Column("metadata", Text, nullable=False),
    Column("properties", JSONB),
    Column("external_key", Text, unique=True),
)

observed_property = Table(
    "observed_property",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("definition", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("properties", JSONB),
    Column("external_key", Text, unique=True),
)

datastream = Table(
    "datastream",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("observation_type", Text, nullable=False),
    Column("unit_of_measurement", JSONB, nullable=False),
    Column("observed_area", _geom()),
    Column("phenomenon_time_start", TZ),
    Column("phenomenon_time_end", TZ),
    Column("result_time_start", TZ),
    Column("result_time_end", TZ),
    Column("properties", JSONB),
    Column("thing_id", BigInteger, ForeignKey("thing.id", ondelete="CASCADE"), nullable=False),
    Column("sensor_id", BigInteger, ForeignKey("sensor.id", ondelete="CASCADE"), nullable=False),
    Column(
        "observed_property_id",
        BigInteger,
        ForeignKey("observed_property.id", ondelete="CASCADE"),
        nullable=False,
    ),
    Column("dataset_id", BigInteger, ForeignKey("dataset.id", ondelete="SET NULL")),
    Column("external_key", Text, unique=True),
)

feature_of_interest = Table(
    "feature_of_interest",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=False),
    Column("encoding_type", Text, nullable=False),
    Column("feature", JSONB, nullable=False),
    Column("geom", _geom()),
    Column("properties", JSONB),
    Column("external_key", Text, unique=True),
)

observation = Table(
    "observation",
    metadata,
    Column("id", BigInteger, nullable=False),
    Column(
        "datastream_id",
        BigInteger,
        ForeignKey("datastream.id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("phenomenon_time", TZ, primary_key=True),
    Column("phenomenon_time_end", TZ),
    Column("result_time", TZ),
    Column("result_number", Float(precision=53)),
    Column("result_string", Text),
    Column("result_boolean", Boolean),
    Column("result_json", JSONB),
    Column("result_quality", JSONB),
    Column("valid_time_start", TZ),
    Column("valid_time_end", TZ),
    Column("parameters", JSONB),
    Column(
        "feature_of_interest_id",
        BigInteger,
        ForeignKey("feature_of_interest.id", ondelete="SET NULL"),
    ),
)

api_key = Table(
    "api_key",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("prefix", Text, nullable=False, unique=True),
    Column("key_hash", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("role", Text, nullable=False),
    Column("created_at", TZ, nullable=False),
    Column("expires_at", TZ),
    Column("revoked_at", TZ),
    Column("last_used_at", TZ),
)

api_key_grant = Table(
    "api_key_grant",
    metadata,
    Column("api_key_id", BigInteger, ForeignKey("api_key.id", ondelete="CASCADE"), primary_key=True),
    Column("dataset_id", BigInteger, ForeignKey("dataset.id", ondelete="CASCADE"), primary_key=True),
    Column("permission", Text, primary_key=True),
)

audit_event = Table(
    "audit_event",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("at", TZ, nullable=False),
    Column("actor", Text, nullable=False),
    Column("action", Text, nullable=False),
    Column("target_type", Text, nullable=False),
    Column("target_id", Text),
    Column("remote_addr", INET),
    Column("details", JSONB, nullable=False),
)

ingest_rejection = Table(
    "ingest_rejection",
    metadata,
    Column("id", BigInteger, Identity(always=True), primary_key=True),
    Column("at", TZ, nullable=False),
    Column("source", Text, nullable=False),
    Column("topic", Text),
    Column("file", Text),
    Column("line", BigInteger),
    Column("dataset_id", BigInteger, ForeignKey("dataset.id", ondelete="CASCADE")),
    Column("import_id", BigInteger, ForeignKey("dataset_import.id", ondelete="CASCADE")),
    Column("reason", Text, nullable=False),
    Column("payload", Text),
    Column("payload_bytes", BigInteger),
)


# SensorThings aggregation rollups (migration 0002_sta), kept exact by statement triggers on observation.
observation_rollup_15min = Table(
    "observation_rollup_15min",
    metadata,
    Column("datastream_id", BigInteger, ForeignKey("datastream.id", ondelete="CASCADE"), primary_key=True),
    Column("bucket", TZ, primary_key=True),
    Column("n", BigInteger, nullable=False),
    Column("total", Float(precision=53), nullable=False),
    Column("min_value", Float(precision=53), nullable=False),
    Column("max_value", Float(precision=53), nullable=False),
    Column("last_time", TZ, nullable=False),
    Column("last_value", Float(precision=53), nullable=False),
)
