"""lineage: where a deletion came from, what a delivery deleted, echoes of our own deletes

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("deletion", schema=None) as batch_op:
        batch_op.add_column(sa.Column("origin", sa.String(), nullable=True))
        batch_op.add_column(sa.Column("origin_delivery_id", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("echo_of_delivery_id", sa.Integer(), nullable=True))
        batch_op.create_foreign_key(
            "fk_deletion_origin_delivery", "delivery", ["origin_delivery_id"], ["id"]
        )
        batch_op.create_foreign_key(
            "fk_deletion_echo_of_delivery", "delivery", ["echo_of_delivery_id"], ["id"]
        )
        batch_op.create_index(
            "ix_deletion_origin_delivery_id", ["origin_delivery_id"], unique=False
        )
        batch_op.create_index(
            "ix_deletion_echo_of_delivery_id", ["echo_of_delivery_id"], unique=False
        )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("effect", sa.String(), nullable=True))
        batch_op.create_index("ix_delivery_effect", ["effect"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_effect")
        batch_op.drop_column("effect")
    with op.batch_alter_table("deletion", schema=None) as batch_op:
        batch_op.drop_index("ix_deletion_echo_of_delivery_id")
        batch_op.drop_index("ix_deletion_origin_delivery_id")
        batch_op.drop_constraint("fk_deletion_echo_of_delivery", type_="foreignkey")
        batch_op.drop_constraint("fk_deletion_origin_delivery", type_="foreignkey")
        batch_op.drop_column("echo_of_delivery_id")
        batch_op.drop_column("origin_delivery_id")
        batch_op.drop_column("origin")
