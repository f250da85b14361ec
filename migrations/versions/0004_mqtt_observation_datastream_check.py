"""Observation -> Datastream integrity checked once per statement instead of once per row.

The foreign key observation.datastream_id -> datastream cost more than the rest of a bulk merge's per-row work
(one SPI lookup and row lock per observation). It is replaced by triggers that keep the same guarantees for every
writer (STA HTTP, CSV, MQTT), set-wise:
- after each INSERT or UPDATE statement on observation: the distinct datastream ids written are locked FOR KEY
  SHARE (as the foreign key does, so a concurrent delete of that Datastream waits for this transaction) and any id
  without a Datastream raises SQLSTATE 23503 (foreign_key_violation) with the foreign key's message;
- after a DELETE on datastream: its observations are deleted (the STA cascade, as ON DELETE CASCADE did);
- a Datastream's id cannot change while observations refer to it; TRUNCATE datastream truncates observation.
Also: fillfactor on datastream and observation_rollup_15min, so the per-statement updates of extents and rollups
(migration 0002_sta) are HOT updates.
The checks fire for writes through the partitioned parent `observation` (statement triggers are not cloned to
partitions); every writer of the project goes through the parent.

Revision ID: 0004_mqtt
Revises: 0003_stagaps
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0004_mqtt"
down_revision: str | None = "0003_stagaps"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
ALTER TABLE observation DROP CONSTRAINT observation_datastream_id_fkey;

-- One pass over the statement's rows for the distinct ids, one query to lock them, a second only on failure.
CREATE FUNCTION observation_datastream_check() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    ids     bigint[];
    locked  bigint;
    missing bigint;
BEGIN
    SELECT array_agg(DISTINCT datastream_id) INTO ids FROM obs_ds_new_rows;
    IF ids IS NULL THEN
        RETURN NULL;
    END IF;
    -- Lock the Datastreams written to (in id order, like every other writer), so none disappears before commit.
    PERFORM 1 FROM datastream d WHERE d.id = ANY (ids) ORDER BY d.id FOR KEY SHARE OF d;
    GET DIAGNOSTICS locked = ROW_COUNT;
    IF locked < cardinality(ids) THEN
        SELECT i INTO missing FROM unnest(ids) AS i
        WHERE NOT EXISTS (SELECT 1 FROM datastream d WHERE d.id = i) LIMIT 1;
        RAISE foreign_key_violation USING
            MESSAGE = 'insert or update on table "observation" violates foreign key constraint '
                      '"observation_datastream_id_fkey"',
            DETAIL = format('Key (datastream_id)=(%s) is not present in table "datastream".', missing),
            TABLE = 'observation',
            CONSTRAINT = 'observation_datastream_id_fkey';
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER observation_datastream_inserted
    AFTER INSERT ON observation
    REFERENCING NEW TABLE AS obs_ds_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION observation_datastream_check();

CREATE TRIGGER observation_datastream_updated
    AFTER UPDATE ON observation
    REFERENCING NEW TABLE AS obs_ds_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION observation_datastream_check();

CREATE FUNCTION datastream_observations_delete() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM observation o USING (SELECT DISTINCT id FROM ds_old_rows) d WHERE o.datastream_id = d.id;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER datastream_observations_cascade
    AFTER DELETE ON datastream
    REFERENCING OLD TABLE AS ds_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION datastream_observations_delete();

CREATE FUNCTION datastream_id_referenced() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM observation WHERE datastream_id = OLD.id) THEN
        RAISE foreign_key_violation USING
            MESSAGE = 'update on table "datastream" violates foreign key constraint '
                      '"observation_datastream_id_fkey" on table "observation"',
            DETAIL = format('Key (id)=(%s) is still referenced from table "observation".', OLD.id),
            TABLE = 'datastream',
            CONSTRAINT = 'observation_datastream_id_fkey';
    END IF;
    RETURN NEW;
END
$fn$;

CREATE TRIGGER datastream_id_referenced
    BEFORE UPDATE OF id ON datastream
    FOR EACH ROW WHEN (OLD.id IS DISTINCT FROM NEW.id)
    EXECUTE FUNCTION datastream_id_referenced();

-- Every statement storing observations rewrites its Datastreams' time extents and 15-minute rollups (0002_sta):
-- room on their pages lets those updates stay HOT (no new index entries), 11 % of a bulk merge's server time.
ALTER TABLE datastream SET (fillfactor = 40);
ALTER TABLE observation_rollup_15min SET (fillfactor = 70);

-- (When the same TRUNCATE lists observation too, it is empty by now and may not be truncated twice.)
CREATE FUNCTION datastream_observations_truncate() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM observation) THEN
        TRUNCATE observation;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER datastream_observations_truncate
    AFTER TRUNCATE ON datastream
    FOR EACH STATEMENT EXECUTE FUNCTION datastream_observations_truncate();
"""

DOWNGRADE = r"""
ALTER TABLE datastream RESET (fillfactor);
ALTER TABLE observation_rollup_15min RESET (fillfactor);
DROP TRIGGER IF EXISTS datastream_observations_truncate ON datastream;
DROP TRIGGER IF EXISTS datastream_id_referenced ON datastream;
DROP TRIGGER IF EXISTS datastream_observations_cascade ON datastream;
DROP TRIGGER IF EXISTS observation_datastream_updated ON observation;
DROP TRIGGER IF EXISTS observation_datastream_inserted ON observation;
DROP FUNCTION IF EXISTS datastream_observations_truncate();
DROP FUNCTION IF EXISTS datastream_id_referenced();
DROP FUNCTION IF EXISTS datastream_observations_delete();
DROP FUNCTION IF EXISTS observation_datastream_check();
-- Observations written without a Datastream cannot exist (the triggers refused them); restore the foreign key.
ALTER TABLE observation ADD CONSTRAINT observation_datastream_id_fkey
    FOREIGN KEY (datastream_id) REFERENCES datastream(id) ON DELETE CASCADE;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
