"""SensorThings: daily rollups beside the 15-minute ones, and each Datastream's two newest phenomenonTimes.

`observation_rollup_day` holds the same count / sum / min / max / last per Datastream and UTC day as
`observation_rollup_15min` (0002_sta) per quarter hour, for the days before the Datastream's `rollup_day_until`
(the start of the newest day it received an observation for); later days are read from the 15-minute rollups. So a
year of daily (or monthly) aggregates reads about 365 rows instead of 35,040, and live data costs the ingest nothing
more: its rows fall on or after `rollup_day_until`. Kept exact by the same statement triggers on observation:
- an INSERT merges its rows dated before `rollup_day_until` (late data) into the daily rollups; when it brings a
  newer day, the days from the old `rollup_day_until` to that one are closed: computed from their 15-minute rows
  (96 at most a day; once a day per Datastream), and `rollup_day_until` moves to the newer day;
- an UPDATE or DELETE recomputes the 15-minute buckets it touched from the observations (0002_sta), then those
  buckets' days before `rollup_day_until` from the 15-minute rows.

`datastream.latest_phenomenon_time` is a Datastream's newest phenomenonTime, `previous_phenomenon_time` the one
before (NULL when it has fewer observations): the "latest observation" reads (`Datastreams(x)/Observations?$top=1&
$orderby=phenomenonTime desc`, and the same inside `$expand`) fetch that one row by primary key in the one
partition holding it, and know from `previous_phenomenon_time` whether a next page exists, instead of walking the
index of every partition backwards. Kept exact by the same triggers: an INSERT merges the new rows' two newest
times in the UPDATE of the Datastreams' time extents it already makes (a separate table cost the ingest one more
upsert per Datastream and statement); an UPDATE or DELETE that removes or adds a time at or after a Datastream's
previous one recomputes its pair from the observations (two index probes); a TRUNCATE of observation empties
them and the rollups. Like the extents, they are computed columns: their changes are not notified (0003).

After a bulk load with the triggers disabled, `SELECT sta_rebuild_rollups()` recomputes them all.

Revision ID: 0006_stadb
Revises: 0005_staidx
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

# 0003's computed columns of datastream, whose changes are not notified
_COMPUTED = "'phenomenon_time_start', 'phenomenon_time_end', 'result_time_start', 'result_time_end'"

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

# The same, which also merges the new rows' two newest phenomenonTimes into the Datastream's pair (the times are
# new: the primary key; the row is rewritten anyway when the extent grows, as it does with live data).
_EXTENTS_LATEST = """
    FOR ext IN UPDATE datastream d SET
        phenomenon_time_start = LEAST(d.phenomenon_time_start, x.p_min),
        phenomenon_time_end   = GREATEST(d.phenomenon_time_end, x.p_max),
        result_time_start     = LEAST(d.result_time_start, x.r_min),
        result_time_end       = GREATEST(d.result_time_end, x.r_max),
        latest_phenomenon_time = GREATEST(d.latest_phenomenon_time, x.t1),
        previous_phenomenon_time = CASE
            WHEN d.latest_phenomenon_time IS NULL OR x.t1 > d.latest_phenomenon_time
                THEN GREATEST(d.latest_phenomenon_time, x.t2)
            WHEN x.t1 < d.latest_phenomenon_time THEN GREATEST(d.previous_phenomenon_time, x.t1)
            ELSE GREATEST(d.previous_phenomenon_time, x.t2) END
    FROM (
        -- (the second newest time by a join back, not an array_agg(... ORDER BY): that sorts per Datastream)
        SELECT y.datastream_id, y.p_min, y.p_max, y.r_min, y.r_max, y.t1,
               max(s.phenomenon_time) FILTER (WHERE s.phenomenon_time < y.t1) AS t2
        FROM (
            SELECT datastream_id, min(phenomenon_time) AS p_min,
                   max(COALESCE(phenomenon_time_end, phenomenon_time)) AS p_max,
                   min(result_time) AS r_min, max(result_time) AS r_max, max(phenomenon_time) AS t1
            FROM sta_new_rows GROUP BY datastream_id
        ) y JOIN sta_new_rows s ON s.datastream_id = y.datastream_id
        GROUP BY y.datastream_id, y.p_min, y.p_max, y.r_min, y.r_max, y.t1 ORDER BY y.datastream_id
    ) x
    WHERE d.id = x.datastream_id
      AND (d.phenomenon_time_start IS NULL OR x.p_min < d.phenomenon_time_start
           OR d.phenomenon_time_end IS NULL OR x.p_max > d.phenomenon_time_end
           OR x.r_min < d.result_time_start OR x.r_max > d.result_time_end
           OR (x.r_min IS NOT NULL AND d.result_time_start IS NULL)
           OR d.latest_phenomenon_time IS NULL OR x.t1 > COALESCE(d.previous_phenomenon_time, '-infinity')
           OR d.rollup_day_until IS NULL OR x.p_min < d.rollup_day_until OR x.t1 >= d.rollup_day_until + interval '1 day')
        RETURNING d.id, d.rollup_day_until AS until, x.p_min, sta_day(x.t1) AS newest
    LOOP
        IF ext.p_min < ext.until THEN  -- late rows, on days that have daily rollups already
            late := late || ext.id;
        END IF;
        IF ext.until IS NULL OR ext.newest > ext.until THEN  -- a newer day: the days before it can be closed
            ds := ds || ext.id;
            untils := untils || ext.newest;
        END IF;
    END LOOP;"""

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

ALTER TABLE datastream
    ADD COLUMN rollup_day_until timestamptz,
    ADD COLUMN latest_phenomenon_time timestamptz,
    ADD COLUMN previous_phenomenon_time timestamptz,
    ADD CONSTRAINT datastream_latest_phenomenon_time_check CHECK (previous_phenomenon_time < latest_phenomenon_time);

DROP TRIGGER datastream_sta_entity_updated ON datastream;
CREATE TRIGGER datastream_sta_entity_updated AFTER UPDATE ON datastream
    REFERENCING OLD TABLE AS sta_old_rows NEW TABLE AS sta_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sta_entity_updated('Datastream', {_COMPUTED}, 'latest_phenomenon_time',
                                                           'previous_phenomenon_time', 'rollup_day_until');

CREATE FUNCTION sta_day(t timestamptz) RETURNS timestamptz LANGUAGE sql IMMUTABLE PARALLEL SAFE AS
$$ SELECT date_bin(interval '1 day', t, timestamptz '2000-01-01 00:00:00+00') $$;

-- Closes the days of each Datastream from its rollup_day_until (or its first) to `untils` (a day start, later):
-- their daily rollups computed from the 15-minute ones, then rollup_day_until moved there. Only for the
-- Datastreams no other transaction is writing to (a writer holds its Datastream FOR KEY SHARE, 0004, until it
-- commits its 15-minute increments, which a closing must see): the others are closed by a later statement. The
-- lock taken (FOR UPDATE) makes writers that come after wait for the new rollup_day_until.
CREATE FUNCTION sta_close_days(ds bigint[], untils timestamptz[]) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    free bigint[];
BEGIN
    SELECT array_agg(id) INTO free
    FROM (SELECT id FROM datastream WHERE id = ANY (ds) ORDER BY id FOR UPDATE SKIP LOCKED) l;
    IF free IS NULL THEN
        RETURN;
    END IF;
    INSERT INTO observation_rollup_day AS r
    SELECT q.datastream_id, sta_day(q.bucket), sum(q.n), sum(q.total), min(q.min_value), max(q.max_value),
           max(q.last_time), (array_agg(q.last_value ORDER BY q.last_time DESC))[1]
    FROM unnest(ds, untils) AS k(id, until)
    JOIN datastream d ON d.id = k.id
    JOIN observation_rollup_15min q ON q.datastream_id = k.id
         AND q.bucket >= COALESCE(d.rollup_day_until, '-infinity') AND q.bucket < k.until
    WHERE k.id = ANY (free)
    GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (datastream_id, bucket) DO UPDATE SET  -- (none expected: no daily row from rollup_day_until on)
        n = EXCLUDED.n, total = EXCLUDED.total, min_value = EXCLUDED.min_value, max_value = EXCLUDED.max_value,
        last_time = EXCLUDED.last_time, last_value = EXCLUDED.last_value;
    UPDATE datastream d SET rollup_day_until = k.until
    FROM (SELECT * FROM unnest(ds, untils) ORDER BY 1) AS k(id, until)
    WHERE d.id = k.id AND k.id = ANY (free) AND (d.rollup_day_until IS NULL OR d.rollup_day_until < k.until);
END
$fn$;

-- The two newest phenomenonTimes of the given Datastreams, recomputed from the observations.
CREATE FUNCTION sta_recompute_latest(ds bigint[]) RETURNS void LANGUAGE sql AS $fn$
    UPDATE datastream d SET latest_phenomenon_time = t.times[1], previous_phenomenon_time = t.times[2]
    FROM (SELECT DISTINCT unnest(ds) AS id ORDER BY 1) k
    CROSS JOIN LATERAL (
        SELECT ARRAY(SELECT o.phenomenon_time FROM observation o WHERE o.datastream_id = k.id
                     ORDER BY o.phenomenon_time DESC LIMIT 2) AS times
    ) t
    WHERE d.id = k.id
      AND (d.latest_phenomenon_time, d.previous_phenomenon_time) IS DISTINCT FROM (t.times[1], t.times[2]);
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
    -- then the days of those buckets that have daily rollups (before rollup_day_until), from their 15-minute rows
    DELETE FROM observation_rollup_day r
    USING (SELECT DISTINCT d, sta_day(b) FROM unnest(ds, buckets) AS k(d, b)) AS k(datastream_id, bucket)
    WHERE r.datastream_id = k.datastream_id AND r.bucket = k.bucket;
    INSERT INTO observation_rollup_day
    SELECT q.datastream_id, k.bucket, sum(q.n), sum(q.total), min(q.min_value), max(q.max_value), max(q.last_time),
           (array_agg(q.last_value ORDER BY q.last_time DESC))[1]
    FROM (SELECT DISTINCT d, sta_day(b) FROM unnest(ds, buckets) AS k(d, b)) AS k(datastream_id, bucket)
    JOIN datastream d ON d.id = k.datastream_id AND k.bucket < d.rollup_day_until
    JOIN observation_rollup_15min q ON q.datastream_id = k.datastream_id
         AND q.bucket >= k.bucket AND q.bucket < k.bucket + interval '1 day'
    GROUP BY q.datastream_id, k.bucket;
$fn$;

CREATE OR REPLACE FUNCTION sta_rebuild_rollups() RETURNS bigint LANGUAGE sql AS $fn$
    TRUNCATE observation_rollup_15min, observation_rollup_day;
    INSERT INTO observation_rollup_15min
    SELECT datastream_id, sta_bucket(phenomenon_time), count(*), sum(result_number), min(result_number),
           max(result_number), max(phenomenon_time), (array_agg(result_number ORDER BY phenomenon_time DESC))[1]
    FROM observation WHERE result_number IS NOT NULL GROUP BY 1, 2;
    UPDATE datastream SET rollup_day_until = NULL WHERE rollup_day_until IS NOT NULL;
    SELECT sta_close_days(array_agg(datastream_id), array_agg(until))
    FROM (SELECT datastream_id, sta_day(max(bucket)) AS until FROM observation_rollup_15min GROUP BY 1) x;
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
        FROM sta_old_rows o LEFT JOIN datastream d ON d.id = o.datastream_id
        WHERE d.latest_phenomenon_time IS NULL
           OR o.phenomenon_time >= COALESCE(d.previous_phenomenon_time, d.latest_phenomenon_time);
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
        LEFT JOIN datastream d ON d.id = c.datastream_id
        WHERE d.latest_phenomenon_time IS NULL
           OR c.phenomenon_time >= COALESCE(d.previous_phenomenon_time, d.latest_phenomenon_time);
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
    ext      record;
    late     bigint[] := '{{}}';
    ds       bigint[] := '{{}}';
    untils   timestamptz[] := '{{}}';
BEGIN
    SELECT count(*), min(id), max(id) INTO n, lo, hi FROM sta_new_rows;
    IF n = 0 THEN
        RETURN NULL;
    END IF;
{_EXTENTS_LATEST}
    -- late rows, on days that have daily rollups already, merged into them (live data has none)
    IF cardinality(late) > 0 THEN
        INSERT INTO observation_rollup_day AS r
        SELECT s.datastream_id, sta_day(s.phenomenon_time), count(*), sum(s.result_number), min(s.result_number),
               max(s.result_number), max(s.phenomenon_time),
               (array_agg(s.result_number ORDER BY s.phenomenon_time DESC))[1]
        FROM sta_new_rows s JOIN datastream d ON d.id = s.datastream_id
        WHERE s.datastream_id = ANY (late) AND s.result_number IS NOT NULL
          AND s.phenomenon_time < d.rollup_day_until
        GROUP BY 1, 2 ORDER BY 1, 2
        ON CONFLICT (datastream_id, bucket) DO UPDATE SET {_MERGE};
    END IF;
    -- merge the new rows into the 15-minute rollups (one statement, sorted to keep lock order stable)
    INSERT INTO observation_rollup_15min AS r
    SELECT datastream_id, sta_bucket(phenomenon_time), count(*), sum(result_number), min(result_number),
           max(result_number), max(phenomenon_time), (array_agg(result_number ORDER BY phenomenon_time DESC))[1]
    FROM sta_new_rows WHERE result_number IS NOT NULL GROUP BY 1, 2 ORDER BY 1, 2
    ON CONFLICT (datastream_id, bucket) DO UPDATE SET {_MERGE};
    -- a newer day than rollup_day_until: the days before it are closed (once a day per Datastream)
    IF cardinality(ds) > 0 THEN
        PERFORM sta_close_days(ds, untils);
    END IF;
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
    UPDATE datastream SET latest_phenomenon_time = NULL, previous_phenomenon_time = NULL, rollup_day_until = NULL
    WHERE latest_phenomenon_time IS NOT NULL OR rollup_day_until IS NOT NULL;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER observation_sta_truncated
    AFTER TRUNCATE ON observation
    FOR EACH STATEMENT EXECUTE FUNCTION sta_observation_truncated();

SELECT sta_close_days(array_agg(datastream_id), array_agg(until))
FROM (SELECT datastream_id, sta_day(max(bucket)) AS until FROM observation_rollup_15min GROUP BY 1) x;
SELECT sta_recompute_latest(array_agg(id)) FROM datastream;
"""  # noqa: S608 - interpolates this module's constants only, never an outside value

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
DROP FUNCTION IF EXISTS sta_close_days(bigint[], timestamptz[]);
DROP FUNCTION IF EXISTS sta_day(timestamptz);
DROP TABLE IF EXISTS observation_rollup_day;
DROP TRIGGER datastream_sta_entity_updated ON datastream;
CREATE TRIGGER datastream_sta_entity_updated AFTER UPDATE ON datastream
    REFERENCING OLD TABLE AS sta_old_rows NEW TABLE AS sta_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sta_entity_updated('Datastream', {_COMPUTED});
ALTER TABLE datastream DROP COLUMN rollup_day_until, DROP COLUMN latest_phenomenon_time,
    DROP COLUMN previous_phenomenon_time;
"""  # noqa: S608 - interpolates this module's constants only, never an outside value


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
