"""Rejections an operator can filter and replay: a reason code, and when and how a rejection was replayed.

`reason` holds `<code>: <detail>` for the MQTT connectors (`unknown_device: device is not registered ...`); the
code is now a column of its own (generated), so rejections are listed and counted by connector and reason with an
index. `replayed_at` is set, in the same transaction as the observations it gave, when a replay stored a rejected
message (`territoire-data rejections replay`): a second replay skips it, so nothing is stored twice.
`replay_outcome` says what the last replay made of it (stored, ignored, still rejected and why).

Revision ID: 0010_opsrejections
Revises: 0009_foicheck
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0010_opsrejections"
down_revision: str | None = "0009_foicheck"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
ALTER TABLE ingest_rejection
    ADD COLUMN reason_code text GENERATED ALWAYS AS (left(split_part(reason, ':', 1), 100)) STORED,
    ADD COLUMN replayed_at timestamptz,
    ADD COLUMN replay_outcome text;
CREATE INDEX ingest_rejection_reason_idx ON ingest_rejection (source, reason_code, at DESC);
CREATE INDEX ingest_rejection_pending_idx ON ingest_rejection (source, id) WHERE replayed_at IS NULL;
"""

DOWNGRADE = r"""
DROP INDEX IF EXISTS ingest_rejection_pending_idx;
DROP INDEX IF EXISTS ingest_rejection_reason_idx;
ALTER TABLE ingest_rejection DROP COLUMN replay_outcome, DROP COLUMN replayed_at, DROP COLUMN reason_code;
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
