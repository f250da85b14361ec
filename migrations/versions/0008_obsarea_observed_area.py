"""SensorThings observedArea of Datastreams and MultiDatastreams, kept by the database.

OGC 18-088 (Table 10): "the spatial bounding box of the spatial extent of all FeaturesOfInterest that belong to
the Observations associated with this Datastream", of type GM_Envelope: the bounding box of those features, always
a GeoJSON Polygon, a degenerate one (its corners on one point, or on a line) for a fixed station. (frost-sta-client
reads a MultiDatastream's observedArea as a Polygon only: a Point there stops it.)

Reading it from the observations would mean a scan of all of a Datastream's observations. Instead, a link table
holds the distinct (Datastream, FeatureOfInterest) pairs of the observations, kept by statement triggers:
- an insert adds its new pairs (ON CONFLICT DO NOTHING: a live Datastream, with one feature, adds none after its
  first observation, so ingest pays one hashed DISTINCT over the statement's rows and a key probe per pair);
- a delete or update removes the pairs no observation has any more;
- and the area of each Datastream whose pairs changed is computed again from its features, as it is when a
  feature's geometry changes. The Datastream rows are locked (FOR NO KEY UPDATE, which writers' KEY SHARE locks
  do not block) before the area is read, so two transactions adding features to one Datastream do not lose one.
The same for MultiDatastreams and their table `multi_observation`. A change of the area is not notified over
MQTT, like the Datastream's time extents.

Revision ID: 0008_obsarea
Revises: 0007_multids
Create Date: 2026-11-29
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0008_obsarea"
down_revision: str | None = "0007_multids"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# (parent table, its key column in the observations, observations table, link table)
_KINDS = (
    ("datastream", "datastream_id", "observation", "datastream_feature"),
    ("multi_datastream", "multi_datastream_id", "multi_observation", "multi_datastream_feature"),
)

_PER_KIND = """
CREATE TABLE {link} (
    {col}                   bigint NOT NULL REFERENCES {parent}(id) ON DELETE CASCADE,
    feature_of_interest_id  bigint NOT NULL,  -- no foreign key: see below
    PRIMARY KEY ({col}, feature_of_interest_id)
);
CREATE INDEX {link}_foi_idx ON {link} (feature_of_interest_id);
-- (A feature deleted sets its observations' feature to NULL, an update whose trigger removes the pair and computes
-- the area again; a cascade from a foreign key here could remove the pair first, and the area would keep it.)

-- The observed area of these parents computed again from their features (rows locked first: see above).
CREATE FUNCTION sta_{parent}_observed_area(ids bigint[]) RETURNS void LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM 1 FROM {parent} WHERE id = ANY (ids) ORDER BY id FOR NO KEY UPDATE;
    UPDATE {parent} d SET observed_area = a.area
    FROM (SELECT x.id,
                 (SELECT ST_MakeEnvelope(ST_XMin(e), ST_YMin(e), ST_XMax(e), ST_YMax(e), 4326)
                  FROM (SELECT ST_Extent(f.geom) AS e
                        FROM {link} l JOIN feature_of_interest f ON f.id = l.feature_of_interest_id
                        WHERE l.{col} = x.id) b) AS area
          FROM unnest(ids) AS x(id) ORDER BY x.id) a
    WHERE d.id = a.id AND d.observed_area IS DISTINCT FROM a.area;
END
$fn$;

CREATE FUNCTION sta_{obs}_area_inserted() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    ids bigint[];
BEGIN
    -- (the pairs already known are left out before the INSERT: a key probe each, cheaper than its conflict path)
    WITH added AS (
        INSERT INTO {link} ({col}, feature_of_interest_id)
        SELECT p.{col}, p.feature_of_interest_id
        FROM (SELECT DISTINCT {col}, feature_of_interest_id FROM sta_area_new
              WHERE feature_of_interest_id IS NOT NULL) p
        WHERE NOT EXISTS (SELECT 1 FROM {link} l
                          WHERE l.{col} = p.{col} AND l.feature_of_interest_id = p.feature_of_interest_id)
        ORDER BY 1, 2
        ON CONFLICT DO NOTHING
        RETURNING {col})
    SELECT array_agg(DISTINCT {col}) INTO ids FROM added;
    IF ids IS NOT NULL THEN
        PERFORM sta_{parent}_observed_area(ids);
    END IF;
    RETURN NULL;
END
$fn$;

-- Pairs that left (deleted rows, or updated rows now elsewhere) and that no observation has any more; on an
-- update, the pairs that arrived are added first.
CREATE FUNCTION sta_{obs}_area_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    added bigint[];
    gone  bigint[];
BEGIN
    IF TG_OP = 'UPDATE' THEN
        WITH a AS (
            INSERT INTO {link} ({col}, feature_of_interest_id)
            SELECT {col}, feature_of_interest_id FROM sta_area_new WHERE feature_of_interest_id IS NOT NULL
            EXCEPT SELECT {col}, feature_of_interest_id FROM sta_area_old
            ORDER BY 1, 2
            ON CONFLICT DO NOTHING
            RETURNING {col})
        SELECT array_agg(DISTINCT {col}) INTO added FROM a;
        WITH g AS (
            DELETE FROM {link} l
            USING (SELECT {col}, feature_of_interest_id FROM sta_area_old WHERE feature_of_interest_id IS NOT NULL
                   EXCEPT SELECT {col}, feature_of_interest_id FROM sta_area_new) o
            WHERE l.{col} = o.{col} AND l.feature_of_interest_id = o.feature_of_interest_id
              AND NOT EXISTS (SELECT 1 FROM {obs} x
                              WHERE x.{col} = o.{col} AND x.feature_of_interest_id = o.feature_of_interest_id)
            RETURNING l.{col})
        SELECT array_agg(DISTINCT {col}) INTO gone FROM g;
    ELSE
        WITH g AS (
            DELETE FROM {link} l
            USING (SELECT DISTINCT {col}, feature_of_interest_id FROM sta_area_old
                   WHERE feature_of_interest_id IS NOT NULL) o
            WHERE l.{col} = o.{col} AND l.feature_of_interest_id = o.feature_of_interest_id
              AND NOT EXISTS (SELECT 1 FROM {obs} x
                              WHERE x.{col} = o.{col} AND x.feature_of_interest_id = o.feature_of_interest_id)
            RETURNING l.{col})
        SELECT array_agg(DISTINCT {col}) INTO gone FROM g;
    END IF;
    IF added IS NOT NULL OR gone IS NOT NULL THEN
        PERFORM sta_{parent}_observed_area(ARRAY(SELECT DISTINCT unnest(COALESCE(added, '{{}}') || COALESCE(gone, '{{}}'))));
    END IF;
    RETURN NULL;
END
$fn$;

CREATE FUNCTION sta_{obs}_area_truncated() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    DELETE FROM {link};
    UPDATE {parent} SET observed_area = NULL WHERE observed_area IS NOT NULL;
    RETURN NULL;
END
$fn$;

CREATE TRIGGER {obs}_sta_area_inserted AFTER INSERT ON {obs}
    REFERENCING NEW TABLE AS sta_area_new FOR EACH STATEMENT EXECUTE FUNCTION sta_{obs}_area_inserted();
CREATE TRIGGER {obs}_sta_area_updated AFTER UPDATE ON {obs}
    REFERENCING OLD TABLE AS sta_area_old NEW TABLE AS sta_area_new
    FOR EACH STATEMENT EXECUTE FUNCTION sta_{obs}_area_changed();
CREATE TRIGGER {obs}_sta_area_deleted AFTER DELETE ON {obs}
    REFERENCING OLD TABLE AS sta_area_old FOR EACH STATEMENT EXECUTE FUNCTION sta_{obs}_area_changed();
CREATE TRIGGER {obs}_sta_area_truncated AFTER TRUNCATE ON {obs}
    FOR EACH STATEMENT EXECUTE FUNCTION sta_{obs}_area_truncated();

-- what the observations hold now
INSERT INTO {link} ({col}, feature_of_interest_id)
SELECT DISTINCT {col}, feature_of_interest_id FROM {obs} WHERE feature_of_interest_id IS NOT NULL;
SELECT sta_{parent}_observed_area(ARRAY(SELECT id FROM {parent} ORDER BY id));
"""

# A feature's geometry changed: the areas of the parents whose observations it belongs to.
_FEATURES = """
CREATE FUNCTION sta_feature_area_changed() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    changed bigint[];
BEGIN
    SELECT array_agg(n.id) INTO changed
    FROM sta_area_new n JOIN sta_area_old o ON o.id = n.id WHERE n.geom IS DISTINCT FROM o.geom;
    IF changed IS NOT NULL THEN
        PERFORM sta_datastream_observed_area(ARRAY(
            SELECT DISTINCT datastream_id FROM datastream_feature WHERE feature_of_interest_id = ANY (changed)));
        PERFORM sta_multi_datastream_observed_area(ARRAY(
            SELECT DISTINCT multi_datastream_id FROM multi_datastream_feature
            WHERE feature_of_interest_id = ANY (changed)));
    END IF;
    RETURN NULL;
END
$fn$;
CREATE TRIGGER feature_of_interest_sta_area_updated AFTER UPDATE ON feature_of_interest
    REFERENCING OLD TABLE AS sta_area_old NEW TABLE AS sta_area_new
    FOR EACH STATEMENT EXECUTE FUNCTION sta_feature_area_changed();
"""

# The entity-updated notifications leave the computed columns out (0006, 0007): the area is one of them now.
_NOTIFIED = """
DROP TRIGGER datastream_sta_entity_updated ON datastream;
CREATE TRIGGER datastream_sta_entity_updated AFTER UPDATE ON datastream
    REFERENCING OLD TABLE AS sta_old_rows NEW TABLE AS sta_new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION sta_entity_updated('Datastream', 'phenomenon_time_start',
        'phenomenon_time_end', 'result_time_start', 'result_time_end', 'latest_phenomenon_time',
        'previous_phenomenon_time', 'rollup_day_until'{area});
DROP TRIGGER multi_datastream_sta_entity_updated ON multi_datastream;
CREATE TRIGGER multi_datastream_sta_entity_updated AFTER UPDATE ON multi_datastream
    REFERENCING OLD TABLE AS sta_old_rows NEW TABLE AS sta_new_rows FOR EACH STATEMENT
    EXECUTE FUNCTION sta_entity_updated('MultiDatastream', 'phenomenon_time_start', 'phenomenon_time_end',
                                        'result_time_start', 'result_time_end'{area});
"""

UPGRADE = (
    _NOTIFIED.format(area=", 'observed_area'")  # first: the areas computed below are not notified either
    + "".join(_PER_KIND.format(parent=p, col=c, obs=o, link=link) for p, c, o, link in _KINDS)
    + _FEATURES
)

_DROP_PER_KIND = """
DROP TRIGGER IF EXISTS {obs}_sta_area_inserted ON {obs};
DROP TRIGGER IF EXISTS {obs}_sta_area_updated ON {obs};
DROP TRIGGER IF EXISTS {obs}_sta_area_deleted ON {obs};
DROP TRIGGER IF EXISTS {obs}_sta_area_truncated ON {obs};
DROP FUNCTION IF EXISTS sta_{obs}_area_inserted();
DROP FUNCTION IF EXISTS sta_{obs}_area_changed();
DROP FUNCTION IF EXISTS sta_{obs}_area_truncated();
DROP FUNCTION IF EXISTS sta_{parent}_observed_area(bigint[]);
DROP TABLE IF EXISTS {link};
UPDATE {parent} SET observed_area = NULL WHERE observed_area IS NOT NULL;
"""

DOWNGRADE = (
    """
DROP TRIGGER IF EXISTS feature_of_interest_sta_area_updated ON feature_of_interest;
DROP FUNCTION IF EXISTS sta_feature_area_changed();
"""
    + "".join(_DROP_PER_KIND.format(parent=p, obs=o, link=link) for p, _c, o, link in _KINDS)
    + _NOTIFIED.format(area="")
)


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
