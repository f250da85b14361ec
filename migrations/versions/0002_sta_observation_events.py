"""SensorThings: one notification per statement that stores Observations, and Datastream time extents.

Whatever path stores Observations (HTTP, CSV import, the MQTT ingest worker's COPY + merge), a statement-level
trigger with a transition table sends one `pg_notify('sta_observation', ...)` for the whole statement (a compact
id list, or `min-max` when the list would not fit) and widens the phenomenonTime / resultTime extents of the
Datastreams touched, so that reads never scan observations to compute them.

Revision ID: 0002_sta
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0002_sta"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
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
"""

DOWNGRADE = r"""
DROP TRIGGER IF EXISTS observation_sta_inserted ON observation;
DROP FUNCTION IF EXISTS sta_observation_inserted();
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
