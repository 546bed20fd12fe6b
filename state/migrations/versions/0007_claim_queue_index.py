"""claim queue index: (pipeline, target, status, id), so a claim reads its batch in order

A claim takes the oldest pending (or due failed) deliveries of a target. With the
index ending in next_attempt_at, the database had to sort every pending delivery
of the target for each batch (a backfill of 100,000 records sorted 100,000 rows a
thousand times); ending in id, it reads the first `batch_size` entries and stops.

Revision ID: 0007
Revises: 0006
"""

from __future__ import annotations

from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.drop_index("ix_delivery_queue", table_name="delivery")
    op.create_index("ix_delivery_queue", "delivery", ["pipeline", "target", "status", "id"])


def downgrade() -> None:
    op.drop_index("ix_delivery_queue", table_name="delivery")
    op.create_index(
        "ix_delivery_queue", "delivery", ["pipeline", "target", "status", "next_attempt_at"]
    )
