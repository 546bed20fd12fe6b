"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-23 00:03:47.875403
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

import state.models

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "cursor",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("stream", sa.String(), nullable=False),
        sa.Column("value", sa.JSON(), nullable=True),
        sa.Column("in_flight", sa.JSON(), nullable=True),
        sa.Column("in_flight_since", state.models.UTCDateTime(), nullable=True),
        sa.Column("updated_at", state.models.UTCDateTime(), nullable=True),
        sa.Column("recoveries", sa.Integer(), nullable=False),
        sa.Column("last_recovery_at", state.models.UTCDateTime(), nullable=True),
        sa.Column("last_recovery", sa.JSON(), nullable=True),
        sa.Column("consecutive_errors", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("last_success_at", state.models.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("pipeline", "stream"),
    )
    op.create_table(
        "deletion",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("stream", sa.String(), nullable=False),
        sa.Column("record_key", sa.String(), nullable=False),
        sa.Column("fields", sa.JSON(), nullable=False),
        sa.Column("seen_at", state.models.UTCDateTime(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("pipeline", "stream", "record_key", name="uq_deletion"),
    )
    with op.batch_alter_table("deletion", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_deletion_pipeline"), ["pipeline"], unique=False)

    op.create_table(
        "pipeline_lock",
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("owner", sa.String(), nullable=False),
        sa.Column("expires_at", state.models.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("pipeline"),
    )
    op.create_table(
        "run",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("started_at", state.models.UTCDateTime(), nullable=False),
        sa.Column("finished_at", state.models.UTCDateTime(), nullable=True),
        sa.Column("outcome", sa.String(), nullable=False),
        sa.Column("pulled", sa.Integer(), nullable=False),
        sa.Column("duplicates", sa.Integer(), nullable=False),
        sa.Column("delivered", sa.Integer(), nullable=False),
        sa.Column("retried", sa.Integer(), nullable=False),
        sa.Column("dead", sa.Integer(), nullable=False),
        sa.Column("error", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_run_pipeline"), ["pipeline"], unique=False)

    op.create_table(
        "delivery",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("deletion_id", sa.Integer(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=False),
        sa.Column("target", sa.String(), nullable=False),
        sa.Column("status", sa.String(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", state.models.UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("detail", sa.String(), nullable=False),
        sa.Column("claim", sa.String(), nullable=True),
        sa.Column("created_at", state.models.UTCDateTime(), nullable=False),
        sa.Column("updated_at", state.models.UTCDateTime(), nullable=False),
        sa.Column("finished_at", state.models.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["deletion_id"],
            ["deletion.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("deletion_id", "target", name="uq_delivery"),
    )
    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.create_index(
            "ix_delivery_queue", ["pipeline", "target", "status", "next_attempt_at"], unique=False
        )


def downgrade() -> None:

    with op.batch_alter_table("delivery", schema=None) as batch_op:
        batch_op.drop_index("ix_delivery_queue")

    op.drop_table("delivery")
    with op.batch_alter_table("run", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_run_pipeline"))

    op.drop_table("run")
    op.drop_table("pipeline_lock")
    with op.batch_alter_table("deletion", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_deletion_pipeline"))

    op.drop_table("deletion")
    op.drop_table("cursor")
