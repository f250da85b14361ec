"""NGSI-LD (ETSI GS CIM 009): what has no home in the existing tables.

Sensor data are NGSI-LD entities without a table of their own (a Thing with its Datastreams, its latest
Observations as attributes, the observations and rollups as history: `ngsi_ld.sensors`). What has no home yet:
- `ngsild_entity`: entities created through NGSI-LD whose type has no table: their attributes as normalized
  NGSI-LD with expanded attribute names (`attrs`), their `location` GeoProperty as a geometry for geoQ, the dataset
  they belong to (access policy, as for SensorThings entities);
- `ngsild_attribute_instance`: the history of those entities' attributes (temporal API), one row per instance;
- `ngsild_context`: user @contexts stored or cached by the broker (offline: never fetched unless allowed);
- `ngsild_subscription`, `ngsild_notification`: subscriptions, with their status and counters, and the outbox of
  notifications still to deliver (at least once: a row leaves only once its endpoint acknowledged it).
Changes of sensor entities reach subscriptions through the Observation notifications of 0002_sta, whatever door
stored them; `ngsild_entity` is written only by the NGSI-LD door, which queues its notifications itself.

Revision ID: 0016_ngsild
Revises: 0015_distkey
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0016_ngsild"
down_revision: str | None = "0015_distkey"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE TABLE ngsild_entity (
    id           text PRIMARY KEY,
    types        text[] NOT NULL,
    scopes       text[],
    attrs        jsonb NOT NULL DEFAULT '{}'::jsonb,
    location     geometry(Geometry, 4326),
    dataset_id   bigint REFERENCES dataset(id) ON DELETE CASCADE,
    created_at   timestamptz NOT NULL DEFAULT now(),
    modified_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ngsild_entity_types ON ngsild_entity USING gin (types);
CREATE INDEX ngsild_entity_location ON ngsild_entity USING gist (location);
CREATE INDEX ngsild_entity_dataset ON ngsild_entity (dataset_id);

CREATE TABLE ngsild_attribute_instance (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    entity_id    text NOT NULL REFERENCES ngsild_entity(id) ON DELETE CASCADE,
    attr         text NOT NULL,
    instance_id  text NOT NULL,
    dataset_id   text,
    observed_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    modified_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at   timestamptz,
    instance     jsonb NOT NULL,
    UNIQUE (entity_id, attr, instance_id)
);
CREATE INDEX ngsild_attribute_instance_time ON ngsild_attribute_instance (entity_id, attr, observed_at);

CREATE TABLE ngsild_context (
    id            text PRIMARY KEY,
    url           text NOT NULL UNIQUE,
    body          jsonb NOT NULL,
    kind          text NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    last_used_at  timestamptz,
    hits          bigint NOT NULL DEFAULT 0
);

CREATE TABLE ngsild_subscription (
    id                 text PRIMARY KEY,
    body               jsonb NOT NULL,
    context            jsonb NOT NULL,
    principal          jsonb NOT NULL,
    is_active          boolean NOT NULL DEFAULT true,
    expires_at         timestamptz,
    times_sent         bigint NOT NULL DEFAULT 0,
    times_failed       bigint NOT NULL DEFAULT 0,
    last_notification  timestamptz,
    last_success       timestamptz,
    last_failure       timestamptz,
    last_error         text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    modified_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE ngsild_notification (
    id               bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    subscription_id  text NOT NULL REFERENCES ngsild_subscription(id) ON DELETE CASCADE,
    payload          jsonb NOT NULL,
    attempts         integer NOT NULL DEFAULT 0,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ngsild_notification_due ON ngsild_notification (next_attempt_at);
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS ngsild_notification;
DROP TABLE IF EXISTS ngsild_subscription;
DROP TABLE IF EXISTS ngsild_context;
DROP TABLE IF EXISTS ngsild_attribute_instance;
DROP TABLE IF EXISTS ngsild_entity;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
