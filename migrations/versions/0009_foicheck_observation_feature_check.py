"""Observation -> FeatureOfInterest integrity checked once per statement instead of once per row.

Since the MQTT connector gives its Observations a FeatureOfInterest, every row of a bulk merge paid the foreign
key's SPI lookup and row lock: the database's CPU per message went from 16 to 22 us in bench/mqtt_ingest.py.
As 0004_mqtt did for the Datastream, the foreign key observation.feature_of_interest_id -> feature_of_interest
is replaced by triggers that keep its guarantees for every writer, set-wise:
- after each INSERT or UPDATE statement on observation: the distinct feature ids written are locked FOR KEY
  SHARE (a concurrent delete of that feature waits for this transaction) and an id without a feature raises
  SQLSTATE 23503 (foreign_key_violation) with the foreign key's message;
- after a DELETE on feature_of_interest: its observations lose their feature (ON DELETE SET NULL, as before);
- a feature's id cannot change while observations refer to it; TRUNCATE feature_of_interest clears the
  observations' features.
`multi_observation` keeps its foreign key (its writes are the SensorThings API's, one entity at a time).

Revision ID: 0009_foicheck
Revises: 0008_obsarea
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0009_foicheck"
down_revision: str | None = "0008_obsarea"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
ALTER TABLE observation DROP CONSTRAINT observation_feature_of_interest_id_fkey;

CREATE FUNCTION observation_feature_check() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    ids     bigint[];
    locked  bigint;
    missing bigint;
BEGIN
    SELECT array_agg(DISTINCT feature_of_interest_id) INTO ids FROM obs_foi_new_rows
    WHERE feature_of_interest_id IS NOT NULL;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    PERFORM 1 FROM feature_of_interest f WHERE f.id = ANY (ids) ORDER BY f.id FOR KEY SHARE OF f;
    GET DIAGNOSTICS locked = ROW_COUNT;
    IF locked < cardinality(ids) THEN
        SELECT i INTO missing FROM unnest(ids) AS i
        WHERE NOT EXISTS (SELECT 1 FROM feature_of_interest f WHERE f.id = i) LIMIT 1;
        RAISE foreign_key_violation USING
            MESSAGE = 'insert or update on table "observation" violates foreign key constraint '
                      '"observation_feature_of_interest_id_fkey"',
            DETAIL = format('Key (feature_of_interest_id)=(%s) is not present in table "feature_of_interest".',
                            missing),
            TABLE = 'observation',
            CONSTRAINT = 'observation_feature_of_interest_id_fkey';
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER observation_feature_inserted
    AFTER INSERT ON observation
    REFERENCING NEW TABLE AS obs_foi_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION observation_feature_check();

CREATE TRIGGER observation_feature_updated
    AFTER UPDATE ON observation
    REFERENCING NEW TABLE AS obs_foi_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION observation_feature_check();

CREATE FUNCTION feature_observations_unset() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE observation o SET feature_of_interest_id = NULL
    FROM (SELECT DISTINCT id FROM foi_old_rows) f WHERE o.feature_of_interest_id = f.id;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER feature_observations_set_null
    AFTER DELETE ON feature_of_interest
    REFERENCING OLD TABLE AS foi_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION feature_observations_unset();

CREATE FUNCTION feature_id_referenced() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM observation WHERE feature_of_interest_id = OLD.id) THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'update on table "feature_of_interest" violates foreign key constraint '
                      '"observation_feature_of_interest_id_fkey" on table "observation"',
            DETAIL = format('Key (id)=(%s) is still referenced from table "observation".', OLD.id),
            TABLE = 'feature_of_interest',
            CONSTRAINT = 'observation_feature_of_interest_id_fkey';
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER feature_id_referenced
    BEFORE UPDATE OF id ON feature_of_interest
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION feature_id_referenced();

CREATE FUNCTION feature_observations_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    UPDATE observation SET feature_of_interest_id = NULL WHERE feature_of_interest_id IS NOT NULL;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER feature_observations_truncate
    AFTER TRUNCATE ON feature_of_interest
    FOR EACH STATEMENT EXECUTE FUNCTION feature_observations_truncate();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS feature_observations_truncate ON feature_of_interest;
DROP TRIGGER IF EXISTS feature_id_referenced ON feature_of_interest;
DROP TRIGGER IF EXISTS feature_observations_set_null ON feature_of_interest;
DROP TRIGGER IF EXISTS observation_feature_updated ON observation;
DROP TRIGGER IF EXISTS observation_feature_inserted ON observation;
DROP FUNCTION IF EXISTS feature_observations_truncate();
DROP FUNCTION IF EXISTS feature_id_referenced();
DROP FUNCTION IF EXISTS feature_observations_unset();
DROP FUNCTION IF EXISTS observation_feature_check();
-- Observations naming a missing feature cannot exist (the triggers refused them); restore the foreign key.
ALTER TABLE observation ADD CONSTRAINT observation_feature_of_interest_id_fkey
    FOREIGN KEY (feature_of_interest_id) REFERENCES feature_of_interest(id) ON DELETE SET NULL;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
