"""deletion windows: a key deleted again is a new deletion; malformed records kept as such

The unique (pipeline, stream, record_key) goes: a duplicate is now a key journaled
from a read whose window overlaps, which no constraint can express. A plain index
keeps the look-up by key fast.

Revision ID: 0005
Revises: 0004
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import state.models

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deletion", schema=None) as batch_op:
        batch_op.add_column(sa.Column("window_start", state.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("window_end", state.models.UTCDateTime(), nullable=True))
        batch_op.add_column(sa.Column("rejected", sa.Text(), nullable=True))
        batch_op.drop_constraint("uq_deletion", type_="unique")
        batch_op.create_index("ix_deletion_key", ["pipeline", "stream", "record_key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("deletion", schema=None) as batch_op:
        batch_op.drop_index("ix_deletion_key")
        batch_op.create_unique_constraint("uq_deletion", ["pipeline", "stream", "record_key"])
        batch_op.drop_column("rejected")
        batch_op.drop_column("window_end")
        batch_op.drop_column("window_start")
