"""asynchronous jobs

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:22:57.229175
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import state.models

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "job",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("client_id", sa.String(), nullable=False),
        sa.Column("remote_id", sa.String(), nullable=True),
        sa.Column("phase", sa.String(), nullable=False),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("items", sa.Integer(), nullable=False),
        sa.Column("next_poll_at", state.models.UTCDateTime(), nullable=True),
        sa.Column("submit_attempts", sa.Integer(), nullable=False),
        sa.Column("polls", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("handle", sa.JSON(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("created_at", state.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", state.models.UTCDateTime(), nullable=False),
        sa.Column("submitted_at", state.models.UTCDateTime(), nullable=True),
        sa.Column("finished_at", state.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("client_id"),
    )
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.create_index(
            "ix_job_open", ["pipeline", "target", "phase", "next_poll_at"], unique=False
        )

    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.add_column(sa.Column("job_id", sa.Integer(), nullable=True))
        batch_op.create_index(batch_op.f("ix_delivery_job_id"), ["job_id"], unique=False)
        batch_op.create_foreign_key("fk_delivery_job", "job", ["job_id"], ["id"])


def downgrade() -> None:

    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_constraint("fk_delivery_job", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_delivery_job_id"))
        batch_op.drop_column("job_id")

    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index("ix_job_open")

    op.drop_table("job")
