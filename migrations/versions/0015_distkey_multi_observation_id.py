"""multi_observation's id index no longer unique: every unique key of the observation tables includes the
Datastream, so they can be distributed by it (Citus, docs/scale-out.md; tests/integration/test_distribution_key.py).

A unique index on `id` alone cannot be enforced by a node that holds only some Datastreams' rows. Ids still come
from the table's sequence, never given by clients, so they stay unique; the index is kept for lookups by id, as
`observation_id_idx` (0001) has always been. Nothing refers to multi_observation(id) by a foreign key.

Revision ID: 0015_distkey
Revises: 0014_indicators
Create Date: 2026-12-05
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0015_distkey"
down_revision: str | None = "0014_indicators"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

UPGRADE = r"""
DROP INDEX multi_observation_id_idx;
CREATE INDEX multi_observation_id_idx ON multi_observation (id);
"""

DOWNGRADE = r"""
DROP INDEX multi_observation_id_idx;
CREATE UNIQUE INDEX multi_observation_id_idx ON multi_observation (id);
"""


def upgrade() -> None:
    run_script(UPGRADE)


def downgrade() -> None:
    run_script(DOWNGRADE)
