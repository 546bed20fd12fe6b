"""lease epochs: a fencing token on the lease, recorded by every claim

Revision ID: 0006
Revises: 0005
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline_lock", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("epoch", sa.Integer(), nullable=False, server_default=sa.text("1"))
        )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_epoch", sa.Integer(), nullable=True))
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("claim_epoch", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_column("claim_epoch")
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_column("claim_epoch")
    with op.batch_alter_table("pipeline_lock", schema=None) as batch_op:
        batch_op.drop_column("epoch")
