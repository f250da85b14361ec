"""Steering indicators: territorial divisions, declared indicators, their stored values and what is left to compute.

- `division`: a polygon dataset declared a territorial division (communes, IRIS, quartiers, EPCI): which field is
  the unit's code, which its name, and which fields are attributes (population…) usable as denominators.
- `indicator`: a declared indicator (its definition as validated JSON), the dataset it is published as
  (`indicateur-<slug>`, one row per unit with its latest value), and what it reads, so triggers can find it.
- `indicator_value`: one value per indicator × unit × period, with the count of underlying records and when it
  was computed. `raw_value` is the aggregate before any denominator, so rates and growths are recomputed from it.
- `indicator_dirty`: the periods to recompute. Marked by PostgreSQL itself, in the writer's transaction, so no
  ingest path (MQTT workers, SensorThings writes, bulk imports) has to know indicators exist:
  * a statement trigger on `observation` marks, for the indicators that read the written rows' ObservedProperty
    (`indicator_sensor_source`), the periods holding those rows (grouped by hour first: a 5,000-row batch is a
    handful of (Datastream, hour) pairs); it skips the insert when the period is already marked, so concurrent
    writers do not queue on the same key;
  * a row trigger on `dataset` marks a whole indicator (period `-infinity`) when its source dataset or its
    division's dataset is reloaded (`modified_at` moves).
  Both notify `indicator_dirty`; the API processes listen and recompute only those periods (indicators.compute).

Revision ID: 0014_indicators
Revises: 0013_publish
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0014_indicators"
down_revision: str | None = "0013_publish"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE TABLE division (
    dataset_id   bigint PRIMARY KEY REFERENCES dataset(id) ON DELETE CASCADE,
    level        text NOT NULL,
    code_field   text NOT NULL,
    name_field   text NOT NULL,
    attributes   jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    modified_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE indicator (
    id                        bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    slug                      text NOT NULL UNIQUE,
    definition                jsonb NOT NULL,
    origin                    text NOT NULL CHECK (origin IN ('file', 'api')),
    dataset_id                bigint UNIQUE REFERENCES dataset(id) ON DELETE SET NULL,
    source_dataset_id         bigint REFERENCES dataset(id) ON DELETE SET NULL,
    division_dataset_id       bigint REFERENCES dataset(id) ON DELETE SET NULL,
    denominator_indicator_id  bigint REFERENCES indicator(id) ON DELETE SET NULL,
    computed_at               timestamptz,
    compute_error             text,
    created_at                timestamptz NOT NULL DEFAULT now(),
    modified_at               timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX indicator_source_dataset_idx ON indicator (source_dataset_id);
CREATE INDEX indicator_division_dataset_idx ON indicator (division_dataset_id);

CREATE TABLE indicator_sensor_source (
    indicator_id          bigint NOT NULL REFERENCES indicator(id) ON DELETE CASCADE,
    observed_property_id  bigint NOT NULL REFERENCES observed_property(id) ON DELETE CASCADE,
    dataset_ids           bigint[],
    period                text NOT NULL CHECK (period IN ('day', 'week', 'month', 'quarter', 'year')),
    timezone              text NOT NULL,
    PRIMARY KEY (observed_property_id, indicator_id)
);

CREATE TABLE indicator_value (
    indicator_id  bigint NOT NULL REFERENCES indicator(id) ON DELETE CASCADE,
    unit_code     text NOT NULL,
    period_start  timestamptz NOT NULL,
    value         double precision,
    raw_value     double precision,
    denominator   double precision,
    record_count  bigint NOT NULL,
    computed_at   timestamptz NOT NULL,
    PRIMARY KEY (indicator_id, unit_code, period_start)
);
CREATE INDEX indicator_value_period_idx ON indicator_value (indicator_id, period_start);

CREATE TABLE indicator_dirty (
    indicator_id  bigint NOT NULL REFERENCES indicator(id) ON DELETE CASCADE,
    period_start  timestamptz NOT NULL,
    marked_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (indicator_id, period_start)
);

CREATE FUNCTION indicator_mark_observations() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    marked bigint := 0;
    n      bigint;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM indicator_sensor_source) THEN
        RETURN NULL;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO indicator_dirty (indicator_id, period_start)
        SELECT DISTINCT s.indicator_id, date_trunc(s.period, h.hour, s.timezone)
        FROM (SELECT datastream_id, date_trunc('hour', phenomenon_time) AS hour
              FROM ind_new_rows GROUP BY 1, 2) h
        JOIN datastream d ON d.id = h.datastream_id
        JOIN indicator_sensor_source s ON s.observed_property_id = d.observed_property_id
             AND (s.dataset_ids IS NULL OR d.dataset_id = ANY (s.dataset_ids))
        WHERE NOT EXISTS (SELECT 1 FROM indicator_dirty x WHERE x.indicator_id = s.indicator_id
                          AND x.period_start = date_trunc(s.period, h.hour, s.timezone))
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS n = ROW_COUNT;
        marked := marked + n;
    END IF;
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO indicator_dirty (indicator_id, period_start)
        SELECT DISTINCT s.indicator_id, date_trunc(s.period, h.hour, s.timezone)
        FROM (SELECT datastream_id, date_trunc('hour', phenomenon_time) AS hour
              FROM ind_old_rows GROUP BY 1, 2) h
        JOIN datastream d ON d.id = h.datastream_id
        JOIN indicator_sensor_source s ON s.observed_property_id = d.observed_property_id
             AND (s.dataset_ids IS NULL OR d.dataset_id = ANY (s.dataset_ids))
        WHERE NOT EXISTS (SELECT 1 FROM indicator_dirty x WHERE x.indicator_id = s.indicator_id
                          AND x.period_start = date_trunc(s.period, h.hour, s.timezone))
        ON CONFLICT DO NOTHING;
        GET DIAGNOSTICS n = ROW_COUNT;
        marked := marked + n;
    END IF;
    IF marked > 0 THEN
        PERFORM pg_notify('indicator_dirty', TG_OP);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER observation_indicator_inserted AFTER INSERT ON observation
    REFERENCING NEW TABLE AS ind_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION indicator_mark_observations();
CREATE TRIGGER observation_indicator_updated AFTER UPDATE ON observation
    REFERENCING OLD TABLE AS ind_old_rows NEW TABLE AS ind_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION indicator_mark_observations();
CREATE TRIGGER observation_indicator_deleted AFTER DELETE ON observation
    REFERENCING OLD TABLE AS ind_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION indicator_mark_observations();

CREATE FUNCTION indicator_mark_dataset() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    INSERT INTO indicator_dirty (indicator_id, period_start)
    SELECT i.id, '-infinity'::timestamptz FROM indicator i
    WHERE (i.source_dataset_id = NEW.id OR i.division_dataset_id = NEW.id)
      AND i.dataset_id IS DISTINCT FROM NEW.id
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        PERFORM pg_notify('indicator_dirty', 'dataset');
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER dataset_indicator_modified AFTER UPDATE OF modified_at ON dataset
    FOR EACH ROW WHEN (OLD.modified_at IS DISTINCT FROM NEW.modified_at)
    EXECUTE FUNCTION indicator_mark_dataset();
"""

DOWNGRADE = r"""
DROP TRIGGER dataset_indicator_modified ON dataset;
DROP FUNCTION indicator_mark_dataset();
DROP TRIGGER observation_indicator_inserted ON observation;
DROP TRIGGER observation_indicator_updated ON observation;
DROP TRIGGER observation_indicator_deleted ON observation;
DROP FUNCTION indicator_mark_observations();
DROP TABLE indicator_dirty;
DROP TABLE indicator_value;
DROP TABLE indicator_sensor_source;
DROP TABLE indicator;
DROP TABLE division;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
