"""line alarms: each raise and clear of a p-chart, score drift or frame quality alarm

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-03

One row per occurrence of an alarm (docs/line.md, "Alarms"): raised_at, then cleared_at. A new table: nothing
existing is rewritten. Its events reach the sinks through line_outbox rows of kind "alarm".
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "line_alarms",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("key", sa.String(length=200), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("signal", sa.String(length=16), nullable=False),
        sa.Column("line_id", sa.String(length=64), nullable=False),
        sa.Column("camera_id", sa.String(length=64), nullable=True),
        sa.Column("value", sa.Float(), nullable=False),
        sa.Column("low", sa.Float(), nullable=True),
        sa.Column("high", sa.Float(), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.Column("raised_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("cleared_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("clear_value", sa.Float(), nullable=True),
        sa.Column("clear_reason", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_line_alarms")),
    )
    with op.batch_alter_table("line_alarms", schema=None) as batch_op:
        batch_op.create_index("ix_line_alarms_active", ["cleared_at", "key"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("line_alarms", schema=None) as batch_op:
        batch_op.drop_index("ix_line_alarms_active")
    op.drop_table("line_alarms")
