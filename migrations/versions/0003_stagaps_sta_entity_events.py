"""SensorThings MQTT receive updates for every entity type: one notification per statement that changes them.

Statement-level triggers with transition tables send `pg_notify('sta_entity', 'Kind|op|items')`, whatever wrote
the rows (HTTP, batch, the ingest registry, SQL by hand), for the `sta-mqtt` bridge to publish:
- `C` (created): items are ids, on INSERT into every entity table but `observation` (0002_sta notifies those);
- `U` (updated): items are `id:col col ...`, the columns whose value changed (rows where nothing changed, as after
  `ON CONFLICT DO UPDATE` with the same values, are not sent). Datastream extents (phenomenon and result
  time) are computed from Observations on every insert: their changes are not sent (the Observations are);
- `L` (linked): items are `self:target` ids of a new row of a link table (`thing_location`,
  `location_historical_location`), for the navigation topics such as `Things(1)/Locations`.
A payload stays under the 8000 bytes of pg_notify (items are split over several notifications); a statement
touching more than 10,000 rows sends `Kind|op|*` (not streamed message by message, as bulk loads of Observations).

Revision ID: 0003_stagaps
Revises: 0002_sta
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0003_stagaps"
down_revision: str | None = "0002_sta"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ENTITY_TABLES = {
    "thing": "Thing",
    "location": "Location",
    "historical_location": "HistoricalLocation",
    "sensor": "Sensor",
    "observed_property": "ObservedProperty",
    "datastream": "Datastream",
    "feature_of_interest": "FeatureOfInterest",
}
# columns the server computes from other rows: their changes are not notified
COMPUTED = {"datastream": ["phenomenon_time_start", "phenomenon_time_end", "result_time_start", "result_time_end"]}
LINK_TABLES = {
    "thing_location": ("thing_id", "location_id"),
    "location_historical_location": ("location_id", "historical_location_id"),
}

FUNCTIONS = r"""
CREATE FUNCTION sta_notify_entities(kind text, op text, items text[]) RETURNS void LANGUAGE plpgsql AS $fn$
DECLARE
    chunk text := '';
    item  text;
BEGIN
    IF items IS NULL OR cardinality(items) = 0 THEN
        RETURN;
    END IF;
    IF cardinality(items) > 10000 THEN
        PERFORM pg_notify('sta_entity', kind || '|' || op || '|*');
        RETURN;
    END IF;
    FOREACH item IN ARRAY items LOOP
        IF length(chunk) + length(item) > 7000 THEN
            PERFORM pg_notify('sta_entity', kind || '|' || op || '|' || chunk);
            chunk := '';
        END IF;
        chunk := CASE WHEN chunk = '' THEN item ELSE chunk || ',' || item END;
    END LOOP;
    PERFORM pg_notify('sta_entity', kind || '|' || op || '|' || chunk);
END
$fn$;

-- TG_ARGV[0]: the entity type; TG_ARGV[1..]: computed columns whose changes are not notified
CREATE FUNCTION sta_entity_inserted() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM sta_notify_entities(TG_ARGV[0], 'C', (SELECT array_agg(id::text ORDER BY id) FROM sta_new_rows));
    RETURN NULL;
END
$fn$;

CREATE FUNCTION sta_entity_updated() RETURNS trigger LANGUAGE plpgsql AS $fn$
DECLARE
    ignored text[] := COALESCE(TG_ARGV[1:TG_NARGS - 1], '{}');
    items   text[];
    n       bigint;
BEGIN
    SELECT count(*) INTO n FROM sta_new_rows;
    IF n > 10000 THEN  -- a bulk update: not streamed, so not compared
        PERFORM pg_notify('sta_entity', TG_ARGV[0] || '|U|*');
        RETURN NULL;
    END IF;
    -- each row as JSON once, then its members compared: the names of the columns whose value changed
    SELECT array_agg(j.id::text || ':' || c.cols ORDER BY j.id) INTO items
    FROM (SELECT r.id, to_jsonb(r) AS nj, to_jsonb(o) AS oj FROM sta_new_rows r JOIN sta_old_rows o ON o.id = r.id) j
    CROSS JOIN LATERAL (
        SELECT string_agg(e.key, ' ' ORDER BY e.key) AS cols
        FROM jsonb_each(j.nj) e
        WHERE e.value IS DISTINCT FROM j.oj -> e.key AND NOT (e.key = ANY (ignored))
    ) c
    WHERE c.cols IS NOT NULL;
    PERFORM sta_notify_entities(TG_ARGV[0], 'U', items);
    RETURN NULL;
END
$fn$;

-- TG_ARGV[0], TG_ARGV[1]: the two id columns of the link table
CREATE FUNCTION sta_link_inserted() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM sta_notify_entities(TG_TABLE_NAME, 'L', (
        SELECT array_agg((to_jsonb(n) ->> TG_ARGV[0]) || ':' || (to_jsonb(n) ->> TG_ARGV[1])) FROM sta_new_rows n));
    RETURN NULL;
END
$fn$;
"""


def _triggers() -> str:
    statements: list[str] = []
    for table, kind in ENTITY_TABLES.items():
        statements.append(
            f"CREATE TRIGGER {table}_sta_entity_inserted AFTER INSERT ON {table} REFERENCING NEW TABLE AS sta_new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION sta_entity_inserted('{kind}');"
        )
    for table, kind in [*ENTITY_TABLES.items(), ("observation", "Observation")]:
        ignored = "".join(f", '{c}'" for c in COMPUTED.get(table, []))
        statements.append(
            f"CREATE TRIGGER {table}_sta_entity_updated AFTER UPDATE ON {table} "
            "REFERENCING OLD TABLE AS sta_old_rows NEW TABLE AS sta_new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION sta_entity_updated('{kind}'{ignored});"
        )
    for table, (left, right) in LINK_TABLES.items():
        statements.append(
            f"CREATE TRIGGER {table}_sta_linked AFTER INSERT ON {table} REFERENCING NEW TABLE AS sta_new_rows "
            f"FOR EACH STATEMENT EXECUTE FUNCTION sta_link_inserted('{left}', '{right}');"
        )
    return "\n".join(statements)


def _drops() -> str:
    statements = [f"DROP TRIGGER IF EXISTS {t}_sta_entity_inserted ON {t};" for t in ENTITY_TABLES]
    statements += [f"DROP TRIGGER IF EXISTS {t}_sta_entity_updated ON {t};" for t in [*ENTITY_TABLES, "observation"]]
    statements += [f"DROP TRIGGER IF EXISTS {t}_sta_linked ON {t};" for t in LINK_TABLES]
    statements += [
        "DROP FUNCTION IF EXISTS sta_link_inserted();",
        "DROP FUNCTION IF EXISTS sta_entity_updated();",
        "DROP FUNCTION IF EXISTS sta_entity_inserted();",
        "DROP FUNCTION IF EXISTS sta_notify_entities(text, text, text[]);",
    ]
    return "\n".join(statements)


def upgrade() -> None:
    run_script(FUNCTIONS + "\n" + _triggers())


def downgrade() -> None:
    run_script(_drops())
