"""Publishing workflow: a dataset is a draft until published; back-office sessions.

- dataset.status: 'draft' (seen only by its writers and admins, 404 to everyone else on every door) or
  'published'. New rows are drafts unless their creator says otherwise (security by default); every dataset
  that existed before this migration was public already, so it migrates as published.
- dataset.published_at: when it was last published (NULL for a draft never published).
- web_session: the back-office's sessions (/admin). Only the SHA-256 of the cookie's value is kept; a session
  signed in with an API key refers to the key (revoking the key ends it); one signed in through OpenID Connect
  keeps the principal the token gave (role, dataset grants by slug), never the token, and ends when it did.
  A row with `pending` holds an OpenID Connect sign-in under way (state, PKCE verifier) for a few minutes.

Revision ID: 0013_publish
Revises: 0010_opsrejections
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0013_publish"
down_revision: str | None = "0010_opsrejections"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
ALTER TABLE dataset ADD COLUMN status text NOT NULL DEFAULT 'published'
    CONSTRAINT dataset_status_check CHECK (status IN ('draft', 'published'));
ALTER TABLE dataset ALTER COLUMN status SET DEFAULT 'draft';
ALTER TABLE dataset ADD COLUMN published_at timestamptz;
UPDATE dataset SET published_at = created_at;

CREATE TABLE web_session (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    token_hash text NOT NULL UNIQUE,
    csrf_token text NOT NULL,
    pending boolean NOT NULL DEFAULT false,
    api_key_id bigint REFERENCES api_key (id) ON DELETE CASCADE,
    subject text,
    name text NOT NULL,
    role text,
    read_slugs text[] NOT NULL DEFAULT '{}',
    write_slugs text[] NOT NULL DEFAULT '{}',
    oidc_state text,
    oidc_verifier text,
    created_at timestamptz NOT NULL DEFAULT now(),
    last_seen_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX web_session_expires_idx ON web_session (expires_at);
"""

DOWNGRADE = r"""
DROP TABLE IF EXISTS web_session;
ALTER TABLE dataset DROP COLUMN IF EXISTS published_at;
ALTER TABLE dataset DROP COLUMN IF EXISTS status;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
