"""Retention: the prune log, and deletions found by when they were seen

`state prune` and the daemon remove finished history; `prune_log` keeps, per
prune and pipeline, what went and under which setting, so `trace` can say why a
key is no longer found. `ix_deletion_seen_at` lets pruning and period reports
select deletions by time without reading the whole journal.

Revision ID: 0010
Revises: 0009
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_deletion_seen_at", "deletion", ["seen_at"])
    op.create_table(
        "prune_log",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("pruned_at", sa.DateTime(), nullable=False),
        sa.Column("setting", sa.String(), nullable=False),
        sa.Column("cutoff", sa.DateTime(), nullable=False),
        sa.Column("deletions", sa.Integer(), nullable=False),
        sa.Column("deliveries", sa.Integer(), nullable=False),
        sa.Column("first_seen_at", sa.DateTime(), nullable=True),
        sa.Column("last_seen_at", sa.DateTime(), nullable=True),
    )
    op.create_index("ix_prune_log_pipeline", "prune_log", ["pipeline"])


def downgrade() -> None:
    op.drop_index("ix_prune_log_pipeline", table_name="prune_log")
    op.drop_table("prune_log")
    op.drop_index("ix_deletion_seen_at", table_name="deletion")
