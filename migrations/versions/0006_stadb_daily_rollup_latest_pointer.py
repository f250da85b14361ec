"""SensorThings: daily rollups beside the 15-minute ones, and each Datastream's two newest phenomenonTimes.

`observation_rollup_day` holds the same count / sum / min / max / last per Datastream and UTC day as
`observation_rollup_15min` (0002_sta) per quarter hour, kept exact by the same statement triggers on observation:
an INSERT merges its new rows into both (one pass over the transition table); an UPDATE or DELETE recomputes the
15-minute buckets it touched from the observations, then the days of those buckets from the 15-minute rows
(96 at most a day). A year of daily (or monthly) aggregates then reads 365 rows instead of 35,040.

`observation_latest` holds, per Datastream with observations, its newest phenomenonTime and the one before
(NULL when it has one observation): the "latest observation" reads (`Datastreams(x)/Observations?$top=1&
$orderby=phenomenonTime desc`, and the same inside `$expand`) fetch that one row by primary key in the one
partition holding it, and know from `previous_time` whether a next page exists, instead of walking the index
of every partition backwards. Kept exact by the same triggers: an INSERT merges the new rows' two newest times;
an UPDATE or DELETE that removes or adds a time at or after a Datastream's `previous_time` recomputes that
Datastream's pair from the observations (two index probes); deleting a Datastream (its observations go by the
0004 trigger) empties its row, a TRUNCATE of observation empties the derived tables too.

After a bulk load with the triggers disabled, `SELECT sta_rebuild_rollups()` recomputes all three.

Revision ID: 0006_stadb
Revises: 0005_staidx
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0006_stadb"
down_revision: str | None = "0005_staidx"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# The ON CONFLICT merge of a partial aggregate (EXCLUDED) into a rollup row (r), for both rollup tables.
_MERGE = """
        n = r.n + EXCLUDED.n,
        total = r.total + EXCLUDED.total,
        min_value = LEAST(r.min_value, EXCLUDED.min_value),
        max_value = GREATEST(r.max_value, EXCLUDED.max_value),
        last_value = CASE WHEN EXCLUDED.last_time >= r.last_time THEN EXCLUDED.last_value ELSE r.last_value END,
        last_time = GREATEST(r.last_time, EXCLUDED.last_time)"""

# The extent update of 0002_sta, unchanged.
_EXTENTS = """
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
           OR (x.r_min IS NOT NULL AND d.result_time_start IS NULL));"""

_NOTIFY = """
    -- pg_notify payloads stop at 8000 bytes: small statements list their ids, big ones send a range
    IF n <= 400 THEN
        SELECT string_agg(id::text, ',' ORDER BY id) INTO payload FROM sta_new_rows;
    ELSE
        payload := lo::text || '-' || hi::text;
    END IF;
    PERFORM pg_notify('sta_observation', payload);
    RETURN NULL;
END
$fn$;"""

UPGRADE = rf"""
CREATE TABLE observation_rollup_day (
    datastream_id  bigint NOT NULL REFERENCES datastream(id) ON DELETE CASCADE,
    bucket         timestamptz NOT NULL,
    n              bigint NOT NULL,
    total          double precision NOT NULL,
    min_value      double precision NOT NULL,
    max_value      double precision NOT NULL,
    last_time      timestamptz NOT NULL,
    last_value     double precision NOT NULL,
    PRIMARY KEY (datastream_id, bucket)
) WITH (fillfactor = 70);

CREATE TABLE observation_latest (
    datastream_id  bigint PRIMARY KEY REFERENCES datastream(id) ON DELETE CASCADE,
    latest_time    timestamptz NOT NULL,
    previous_time  timestamptz CHECK (previous_time < latest_time)
) WITH (fillfactor = 50);

CREATE FUNCTION sta_day(t timestamptz) RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT date_bin(interval '1 day', t, timestamptz '2000-01-01 00:00:00+00') $$;

-- The two newest phenomenonTimes of the given Datastreams, recomputed from the observations.
CREATE FUNCTION sta_recompute_latest(ds bigint[]) RETURNS void LANGUAGE sql AS $fn$
    DELETE FROM observation_latest WHERE datastream_id = ANY (ds);
    INSERT INTO observation_latest (datastream_id, latest_time, previous_time)
    SELECT k.id, t.times[1], t.times[2]
    FROM (SELECT DISTINCT unnest(ds) AS id ORDER BY 1) k
    CROSS JOIN LATERAL (
        SELECT ARRAY(SELECT o.phenomenon_time FROM observation o WHERE o.datastream_id = k.id
                     ORDER BY o.phenomenon_time DESC LIMIT 2) AS times
    ) t
    WHERE cardinality(t.times) > 0;
$fn$;

CREATE OR REPLACE FUNCTION sta_recompute_rollups(ds bigint[], buckets timestamptz[]) RETURNS void LANGUAGE sql AS $fn$
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
    -- then the days of those buckets, from their (now exact) 15-minute rows
    DELETE FROM observation_rollup_day r
    USING (SELECT DISTINCT d, sta_day(b) FROM unnest(ds, buckets) AS k(d, b)) AS k(datastream_id, bucket)
    WHERE r.datastream_id = k.datastream_id AND r.bucket = k.bucket;
    INSERT INTO observation_rollup_day
    SELECT q.datastream_id, k.bucket, sum(q.n), sum(q.total), min(q.min_value), max(q.max_value), max(q.last_time),
           (array_agg(q.last_value ORDER BY q.last_time DESC))[1]
    FROM (SELECT DISTINCT d, sta_day(b) FROM unnest(ds, buckets) AS k(d, b)) AS k(datastream_id, bucket)
    JOIN observation_rollup_15min q ON q.datastream_id = k.datastream_id
         AND q.bucket >= k.bucket AND q.bucket < k.bucket + interval '1 day'
    GROUP BY q.datastream_id, k.bucket;
$fn$;

CREATE OR REPLACE FUNCTION sta_rebuild_rollups() RETURNS bigint LANGUAGE sql AS $fn$
    TRUNCATE observation_rollup_15min, observation_rollup_day, observation_latest;
    INSERT INTO observation_rollup_15min
    SELECT datastream_id, sta_bucket(phenomenon_time), count(*), sum(result_number), min(result_number),
           max(result_number), max(phenomenon_time), (array_agg(result_number ORDER BY phenomenon_time DESC))[1]
    FROM observation WHERE result_number IS NOT NULL GROUP BY 1, 2;
    INSERT INTO observation_rollup_day
    SELECT datastream_id, sta_day(bucket), sum(n), sum(total), min(min_value), max(max_value), max(last_time),
           (array_agg(last_value ORDER BY last_time DESC))[1]
    FROM observation_rollup_15min GROUP BY 1, 2;
    SELECT sta_recompute_latest(array_agg(id)) FROM datastream;
    SELECT count(*) FROM observation_rollup_15min;
$fn$;

CREATE OR REPLACE FUNCTION sta_observation_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    ds bigint[];
    buckets timestamptz[];
    moved bigint[];
BEGIN
    IF TG_OP = 'DELETE' THEN
        SELECT array_agg(datastream_id), array_agg(b) INTO ds, buckets
        FROM (SELECT DISTINCT datastream_id, sta_bucket(phenomenon_time) AS b FROM sta_old_rows) x;
        -- the Datastreams that lost one of their two newest observations (or all of them)
        SELECT array_agg(DISTINCT o.datastream_id) INTO moved
        FROM sta_old_rows o LEFT JOIN observation_latest l ON l.datastream_id = o.datastream_id
        WHERE l.datastream_id IS NULL OR o.phenomenon_time >= COALESCE(l.previous_time, l.latest_time);
    ELSE
        SELECT array_agg(datastream_id), array_agg(b) INTO ds, buckets
        FROM (SELECT datastream_id, sta_bucket(phenomenon_time) AS b FROM sta_old_rows
              UNION SELECT datastream_id, sta_bucket(phenomenon_time) FROM sta_new_rows) x;
        -- the times that left or arrived (an update keeping its Datastream and time changes no pointer)
        SELECT array_agg(DISTINCT c.datastream_id) INTO moved
        FROM ((SELECT datastream_id, phenomenon_time FROM sta_old_rows
               EXCEPT SELECT datastream_id, phenomenon_time FROM sta_new_rows)
              UNION ALL
              (SELECT datastream_id, phenomenon_time FROM sta_new_rows
               EXCEPT SELECT datastream_id, phenomenon_time FROM sta_old_rows)) c
        LEFT JOIN observation_latest l ON l.datastream_id = c.datastream_id
        WHERE l.datastream_id IS NULL OR c.phenomenon_time >= COALESCE(l.previous_time, l.latest_time);
    END IF;
    IF ds IS NOT NULL THEN
        PERFORM sta_recompute_rollups(ds, buckets);
    END IF;
    IF moved IS NOT NULL THEN
        PERFORM sta_recompute_latest(moved);
    END IF;
    RETURN NULL;
END
$fn$;

CREATE OR REPLACE FUNCTION sta_observation_inserted() RETURNS trigger LANGUAGE plpgsql AS $fn$
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
{_EXTENTS}
    -- merge the new rows into the 15-minute rollups, and those partial aggregates into the daily ones
    -- (one pass over the new rows; each statement sorted to keep lock order stable)
    WITH q AS MATERIALIZED (
        SELECT datastream_id, sta_bucket(phenomenon_time) AS bucket, count(*) AS n, sum(result_number) AS total,
               min(result_number) AS min_value, max(result_number) AS max_value, max(phenomenon_time) AS last_time,
               (array_agg(result_number ORDER BY phenomenon_time DESC))[1] AS last_value
        FROM sta_new_rows WHERE result_number IS NOT NULL GROUP BY 1, 2
    ), quarter AS (
        INSERT INTO observation_rollup_15min AS r SELECT * FROM q ORDER BY 1, 2
        ON CONFLICT (datastream_id, bucket) DO UPDATE SET {_MERGE}
    )
    INSERT INTO observation_rollup_day AS r
    SELECT q.datastream_id, sta_day(q.bucket), sum(q.n), sum(q.total), min(q.min_value), max(q.max_value),
           max(q.last_time), (array_agg(q.last_value ORDER BY q.last_time DESC))[1]
    FROM q GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (datastream_id, bucket) DO UPDATE SET {_MERGE};
    -- the new rows' two newest times per Datastream, merged with the pair kept (times are new: the primary key)
    INSERT INTO observation_latest AS l (datastream_id, latest_time, previous_time)
    SELECT x.datastream_id, x.top, max(s.phenomenon_time) FILTER (WHERE s.phenomenon_time < x.top)
    FROM (SELECT datastream_id, max(phenomenon_time) AS top FROM sta_new_rows GROUP BY 1) x
    JOIN sta_new_rows s ON s.datastream_id = x.datastream_id
    GROUP BY x.datastream_id, x.top ORDER BY 1
    ON CONFLICT (datastream_id) DO UPDATE SET
        latest_time = GREATEST(l.latest_time, EXCLUDED.latest_time),
        previous_time = CASE WHEN EXCLUDED.latest_time > l.latest_time
                                  THEN GREATEST(l.latest_time, EXCLUDED.previous_time)
                             WHEN EXCLUDED.latest_time < l.latest_time
                                  THEN GREATEST(l.previous_time, EXCLUDED.latest_time)
                             ELSE GREATEST(l.previous_time, EXCLUDED.previous_time) END;
{_NOTIFY}

-- (A TRUNCATE listing these tables too has emptied them by now, and may not truncate them twice: as in 0004.)
CREATE FUNCTION sta_observation_truncated() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT 1 FROM observation_rollup_15min) THEN
        TRUNCATE observation_rollup_15min;
    END IF;
    IF EXISTS (SELECT 1 FROM observation_rollup_day) THEN
        TRUNCATE observation_rollup_day;
    END IF;
    IF EXISTS (SELECT 1 FROM observation_latest) THEN
        TRUNCATE observation_latest;
    END IF;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER observation_sta_truncated
    AFTER TRUNCATE ON observation
    FOR EACH STATEMENT EXECUTE FUNCTION sta_observation_truncated();

INSERT INTO observation_rollup_day
SELECT datastream_id, sta_day(bucket), sum(n), sum(total), min(min_value), max(max_value), max(last_time),
       (array_agg(last_value ORDER BY last_time DESC))[1]
FROM observation_rollup_15min GROUP BY 1, 2;
SELECT sta_recompute_latest(array_agg(id)) FROM datastream;
"""

DOWNGRADE = rf"""
DROP TRIGGER IF EXISTS observation_sta_truncated ON observation;
DROP FUNCTION IF EXISTS sta_observation_truncated();

CREATE OR REPLACE FUNCTION sta_observation_inserted() RETURNS trigger LANGUAGE plpgsql AS $fn$
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
{_EXTENTS}
    -- merge the new rows into the 15-minute rollups (one statement, sorted to keep lock order stable)
    INSERT INTO observation_rollup_15min AS r
    SELECT datastream_id, sta_bucket(phenomenon_time), count(*), sum(result_number), min(result_number),
           max(result_number), max(phenomenon_time), (array_agg(result_number ORDER BY phenomenon_time DESC))[1]
    FROM sta_new_rows WHERE result_number IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (datastream_id, bucket) DO UPDATE SET {_MERGE};
{_NOTIFY}

CREATE OR REPLACE FUNCTION sta_observation_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
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

CREATE OR REPLACE FUNCTION sta_rebuild_rollups() RETURNS bigint LANGUAGE sql AS $fn$
    TRUNCATE observation_rollup_15min;
    INSERT INTO observation_rollup_15min
    SELECT datastream_id, sta_bucket(phenomenon_time), count(*), sum(result_number), min(result_number),
           max(result_number), max(phenomenon_time), (array_agg(result_number ORDER BY phenomenon_time DESC))[1]
    FROM observation WHERE result_number IS NOT NULL GROUP BY 1, 2;
    SELECT count(*) FROM observation_rollup_15min;
$fn$;

CREATE OR REPLACE FUNCTION sta_recompute_rollups(ds bigint[], buckets timestamptz[]) RETURNS void LANGUAGE sql AS $fn$
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

DROP FUNCTION IF EXISTS sta_recompute_latest(bigint[]);
DROP FUNCTION IF EXISTS sta_day(timestamptz);
DROP TABLE IF EXISTS observation_latest;
DROP TABLE IF EXISTS observation_rollup_day;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
