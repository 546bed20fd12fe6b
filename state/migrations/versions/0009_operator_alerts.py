"""Operator visibility: target health, alert conditions and their outbox, fatal runs

A target whose every send failed, a pipeline stopped for its credentials, held or
dead deliveries were known only to whoever read the log. `target_health` keeps
each target's failing streak, `alert_condition` the conditions open now (one row
per condition, so several daemons raise one alert per episode), `alert_notice`
the alerts still to send to each sink (written with the condition, so a crash
loses none), `run.fatal` which runs ended on rejected credentials, and
`pipeline_lock.acquired_at` since when a daemon holds a pipeline.

Revision ID: 0009
Revises: 0008
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("pipeline_lock") as batch:
        batch.add_column(sa.Column("acquired_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("run") as batch:
        batch.add_column(
            sa.Column("fatal", sa.Boolean(), nullable=False, server_default=sa.false())
        )
    op.create_table(
        "target_health",
        sa.Column("pipeline", sa.String(), primary_key=True),
        sa.Column("target", sa.String(), primary_key=True),
        sa.Column("failing_since", sa.DateTime(), nullable=True),
        sa.Column("failed_runs", sa.Integer(), nullable=False),
        sa.Column("last_ok_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_table(
        "alert_condition",
        sa.Column("key", sa.String(), primary_key=True),
        sa.Column("kind", sa.String(), nullable=False),
        sa.Column("pipeline", sa.String(), nullable=True),
        sa.Column("target", sa.String(), nullable=True),
        sa.Column("state", sa.String(), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("since", sa.DateTime(), nullable=False),
        sa.Column("opened_at", sa.DateTime(), nullable=False),
        sa.Column("resolved_at", sa.DateTime(), nullable=True),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("command", sa.String(), nullable=False),
        sa.Column("blocks_ready", sa.Boolean(), nullable=False),
    )
    op.create_table(
        "alert_notice",
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column("condition_key", sa.String(), nullable=False),
        sa.Column("episode", sa.Integer(), nullable=False),
        sa.Column("event", sa.String(), nullable=False),
        sa.Column("sink", sa.String(), nullable=False),
        sa.Column("payload", sa.JSON(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", sa.DateTime(), nullable=False),
        sa.Column("sent_at", sa.DateTime(), nullable=True),
        sa.Column("gave_up_at", sa.DateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_alert_notice_due", "alert_notice", ["sent_at", "next_attempt_at"])


def downgrade() -> None:
    op.drop_index("ix_alert_notice_due", table_name="alert_notice")
    op.drop_table("alert_notice")
    op.drop_table("alert_condition")
    op.drop_table("target_health")
    with op.batch_alter_table("run") as batch:
        batch.drop_column("fatal")
    with op.batch_alter_table("pipeline_lock") as batch:
        batch.drop_column("acquired_at")
