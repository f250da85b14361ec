"""SensorThings: one notification per statement that stores Observations, Datastream extents, 15-min rollups.

Whatever path stores Observations (HTTP, CSV import, the MQTT ingest worker's COPY + merge), a statement-level
trigger with a transition table sends one `pg_notify('sta_observation', ...)` for the whole statement (a compact
id list, or `min-max` when the list would not fit) and widens the phenomenonTime / resultTime extents of the
Datastreams touched, so that reads never scan observations to compute them.

`observation_rollup_15min` holds count / sum / min / max / last of the numeric results per Datastream and
15-minute bucket (UTC), kept exact by the same statement triggers on insert, update and delete: the aggregation
extension reads a year of per-minute data from 35,040 rollup rows instead of 525,600 observations.
After a bulk load with the triggers disabled, `SELECT sta_rebuild_rollups()` recomputes them.

Revision ID: 0002_sta
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0002_sta"
down_revision: str | None = "0002_catalog"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
CREATE TABLE observation_rollup_15min (
    datastream_id  bigint NOT NULL REFERENCES datastream(id) ON DELETE CASCADE,
    bucket         timestamptz NOT NULL,
    n              bigint NOT NULL,
    total          double precision NOT NULL,
    min_value      double precision NOT NULL,
    max_value      double precision NOT NULL,
    last_time      timestamptz NOT NULL,
    last_value     double precision NOT NULL,
    PRIMARY KEY (datastream_id, bucket)
);

CREATE FUNCTION sta_bucket(t timestamptz) RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT date_bin(interval '15 minutes', t, timestamptz '2000-01-01 00:00:00+00') $$;

-- Recomputes the rollup rows of the given (datastream, bucket) pairs from the observations themselves.
CREATE FUNCTION sta_recompute_rollups(ds bigint[], buckets timestamptz[]) RETURNS void LANGUAGE sql AS $fn$
    DELETE FROM observation_rollup_15min r
    USING unnest(ds, buckets) AS k(datastream_id, bucket)
    WHERE r.datastream_id = k.datastream_id AND r.bucket = k.bucket;
    INSERT INTO observation_rollup_15min
    SELECT o.datastream_id, k.bucket, count(*), sum(o.result_number), min(o.result_number), max(o.result_number),
           max(o.phenomenon_time), (array_agg(o.result_number ORDER BY o.phenomenon_time DESC))[1]
    FROM unnest(ds, buckets) AS k(datastream_id, bucket)
    JOIN observation o ON o.datastream_id = k.datastream_id
         AND o.phenomenon_time >= k.bucket AND o.phenomenon_time < k.bucket + interval '15 minutes'
    WHERE o.result_number IS NOT NULL
    GROUP BY o.datastream_id, k.bucket;
$fn$;

CREATE FUNCTION sta_rebuild_rollups() RETURNS bigint LANGUAGE sql AS $fn$
    TRUNCATE observation_rollup_15min;
    INSERT INTO observation_rollup_15min
    SELECT datastream_id, sta_bucket(phenomenon_time), count(*), sum(result_number), min(result_number),
           max(result_number), max(phenomenon_time), (array_agg(result_number ORDER BY phenomenon_time DESC))[1]
    FROM observation WHERE result_number IS NOT NULL GROUP BY 1, 2;
    SELECT count(*) FROM observation_rollup_15min;
$fn$;

CREATE FUNCTION sta_observation_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    ds bigint[];
    buckets timestamptz[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT array_agg(datastream_id), array_agg(b) INTO ds, buckets
        FROM (SELECT DISTINCT datastream_id, sta_bucket(phenomenon_time) AS b FROM sta_old_rows) x;
    ELSE
        SELECT array_agg(datastream_id), array_agg(b) INTO ds, buckets
        FROM (SELECT datastream_id, sta_bucket(phenomenon_time) AS b FROM sta_old_rows
              UNION SELECT datastream_id, sta_bucket(phenomenon_time) FROM sta_new_rows) x;
    END IF;
    IF ds IS NOT NULL THEN
        PERFORM sta_recompute_rollups(ds, buckets);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION sta_observation_inserted() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    n        bigint;
    lo       bigint;
    hi       bigint;
    payload  text;
BEGIN
    SELECT count(*), min(id), max(id) INTO n, lo, hi FROM sta_new_rows;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
    UPDATE datastream d SET
        phenomenon_time_start = LEAST(d.phenomenon_time_start, x.p_min),
        phenomenon_time_end   = GREATEST(d.phenomenon_time_end, x.p_max),
        result_time_start     = LEAST(d.result_time_start, x.r_min),
        result_time_end       = GREATEST(d.result_time_end, x.r_max)
    FROM (
        SELECT datastream_id, min(phenomenon_time) AS p_min,
               max(COALESCE(phenomenon_time_end, phenomenon_time)) AS p_max,
               min(result_time) AS r_min, max(result_time) AS r_max
        FROM sta_new_rows GROUP BY datastream_id ORDER BY datastream_id
    ) x
    WHERE d.id = x.datastream_id
      AND (d.phenomenon_time_start IS NULL OR x.p_min < d.phenomenon_time_start
           OR d.phenomenon_time_end IS NULL OR x.p_max > d.phenomenon_time_end
           OR x.r_min < d.result_time_start OR x.r_max > d.result_time_end
           OR (x.r_min IS NOT NULL AND d.result_time_start IS NULL));
    -- merge the new rows into the 15-minute rollups (one statement, sorted to keep lock order stable)
    INSERT INTO observation_rollup_15min AS r
    SELECT datastream_id, sta_bucket(phenomenon_time), count(*), sum(result_number), min(result_number),
           max(result_number), max(phenomenon_time), (array_agg(result_number ORDER BY phenomenon_time DESC))[1]
    FROM sta_new_rows WHERE result_number IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (datastream_id, bucket) DO UPDATE SET
        n = r.n + EXCLUDED.n,
        total = r.total + EXCLUDED.total,
        min_value = LEAST(r.min_value, EXCLUDED.min_value),
        max_value = GREATEST(r.max_value, EXCLUDED.max_value),
        last_value = CASE WHEN EXCLUDED.last_time >= r.last_time THEN EXCLUDED.last_value ELSE r.last_value END,
        last_time = GREATEST(r.last_time, EXCLUDED.last_time);
    -- pg_notify payloads stop at 8000 bytes: small statements list their ids, big ones send a range
    IF n <= 400 THEN
        SELECT string_agg(id::text, ',' ORDER BY id) INTO payload FROM sta_new_rows;
    ELSE
        payload := lo::text || '-' || hi::text;
    END IF;
    PERFORM pg_notify('sta_observation', payload);
    RETURN NULL;
END
$fn$;

CREATE TRIGGER observation_sta_inserted
    AFTER INSERT ON observation
    REFERENCING NEW TABLE AS sta_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sta_observation_inserted();

CREATE TRIGGER observation_sta_updated
    AFTER UPDATE ON observation
    REFERENCING OLD TABLE AS sta_old_rows NEW TABLE AS sta_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sta_observation_changed();

CREATE TRIGGER observation_sta_deleted
    AFTER DELETE ON observation
    REFERENCING OLD TABLE AS sta_old_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sta_observation_changed();
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS observation_sta_inserted ON observation;
DROP TRIGGER IF EXISTS observation_sta_updated ON observation;
DROP TRIGGER IF EXISTS observation_sta_deleted ON observation;
DROP FUNCTION IF EXISTS sta_observation_inserted();
DROP FUNCTION IF EXISTS sta_observation_changed();
DROP FUNCTION IF EXISTS sta_rebuild_rollups();
DROP FUNCTION IF EXISTS sta_recompute_rollups(bigint[], timestamptz[]);
DROP TABLE IF EXISTS observation_rollup_15min;
DROP FUNCTION IF EXISTS sta_bucket(timestamptz);
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
