"""Catalog full-text search: a French, accent-insensitive tsvector over title, keywords and description.

Revision ID: 0002_catalog
Revises: 0001
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0002_catalog"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# `french_unaccent` is the stock `french` configuration with accents folded first ("velo" finds "vélo").
# A generated column needs immutable expressions: to_tsvector with an explicit configuration is, and the
# keywords go through a small immutable wrapper because array_to_string is only stable.
UPGRADE = r"""
CREATE EXTENSION IF NOT EXISTS unaccent;
DO $$BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_ts_config WHERE cfgname = 'french_unaccent') THEN
        CREATE TEXT SEARCH CONFIGURATION french_unaccent (COPY = pg_catalog.french);
        ALTER TEXT SEARCH CONFIGURATION french_unaccent
            ALTER MAPPING FOR hword, hword_part, word WITH unaccent, french_stem;
    END IF;
END$$;

CREATE FUNCTION catalog_keywords_text(text[]) RETURNS text
LANGUAGE sql IMMUTABLE PARALLEL SAFE STRICT AS $fn$ SELECT array_to_string($1, ' ') $fn$;

ALTER TABLE dataset ADD COLUMN search_vector tsvector GENERATED ALWAYS AS (
    setweight(to_tsvector('french_unaccent'::regconfig, coalesce(title, '')), 'A')
    || setweight(to_tsvector('french_unaccent'::regconfig, coalesce(catalog_keywords_text(keywords), '')), 'B')
    || setweight(to_tsvector('french_unaccent'::regconfig, coalesce(description, '')), 'C')
) STORED;
CREATE INDEX dataset_search_idx ON dataset USING gin (search_vector);
CREATE INDEX dataset_themes_idx ON dataset USING gin (themes);
"""

DOWNGRADE = r"""
DROP INDEX IF EXISTS dataset_themes_idx;
DROP INDEX IF EXISTS dataset_search_idx;
ALTER TABLE dataset DROP COLUMN IF EXISTS search_vector;
DROP FUNCTION IF EXISTS catalog_keywords_text(text[]);
DROP TEXT SEARCH CONFIGURATION IF EXISTS french_unaccent;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    # The unaccent extension stays, like PostGIS: it costs nothing and others may use it.
    run_script(DOWNGRADE)
