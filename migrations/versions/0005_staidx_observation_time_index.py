"""An index on observation (phenomenon_time), for the Observations pages not scoped to one Datastream.

`/Observations?$orderby=phenomenonTime desc&$top=100` (the "latest anywhere" query of dashboards) sorted every
observation (9 s at 10 M): no index led with phenomenon_time, the primary key leads with datastream_id. With this
one, each monthly partition is read in time order and a Merge Append stops after the page (then an incremental
sort orders the ties on id, the paging tie-breaker); the same for `asc` and for `$filter` on phenomenonTime.

Ascending, not DESC: observations arrive in time order, so new entries go to the rightmost leaf page, where
PostgreSQL inserts without descending the tree and splits pages 90/10 (a DESC index would put them on the
leftmost page: 50/50 splits, half-empty pages). A backward scan serves `desc` as well. Without id in the key,
the many observations of one instant (all Datastreams of one batch) are deduplicated into posting lists.

Created on the parent, so every partition has it and `ensure_observation_partitions()` gives it to new ones
(ATTACH PARTITION builds the missing partition index). CREATE INDEX on a partitioned table cannot run
CONCURRENTLY: writes wait while it is built (about a minute per 10 M observations).

Revision ID: 0005_staidx
Revises: 0004_mqtt
Create Date: 2026-11-28
"""

from collections.abc import Sequence

from territoire_data.db.migration_helpers import run_script

revision: str = "0005_staidx"
down_revision: str | None = "0004_mqtt"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    run_script("CREATE INDEX observation_phenomenon_time_idx ON observation (phenomenon_time)")


def downgrade() -> None:
    run_script("DROP INDEX IF EXISTS observation_phenomenon_time_idx")
