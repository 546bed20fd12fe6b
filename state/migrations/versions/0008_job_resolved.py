"""job.resolved: look-ups done for a job's batch before submission, kept with the job

A target that must look keys up before it submits (Reltio's crosswalks) lost
every finished look-up to one failed key or a restart, and under faults with
frequent restarts never reached a submit. Each result is now stored here as it
arrives, with the time it may be used until, and cleared when the job ends.

Revision ID: 0008
Revises: 0007
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("resolved", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_column("resolved")
