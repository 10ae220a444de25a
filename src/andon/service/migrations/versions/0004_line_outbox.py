"""the line outbox: verdicts waiting for (or delivered to) MQTT and the PLC

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-03

One row per (verdict, sink), written in the transaction of the inspection record (docs/line.md). A new table:
nothing existing is rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "line_outbox",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), autoincrement=True, nullable=False),
        sa.Column("sink", sa.String(length=16), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("inspection_id", sa.String(length=26), nullable=True),
        sa.Column("line_id", sa.String(length=64), nullable=False),
        sa.Column("camera_id", sa.String(length=64), nullable=True),
        sa.Column("part_id", sa.String(length=128), nullable=True),
        sa.Column("serial", sa.String(length=128), nullable=True),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("reason", sa.String(length=128), nullable=True),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("deadline_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("delivered_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("delivered_decision", sa.String(length=8), nullable=True),
        sa.Column("late", sa.Boolean(), nullable=True),
        sa.Column("sequence", sa.BigInteger(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.String(length=255), nullable=True),
        sa.Column("detail", sa.JSON(), nullable=True),
        sa.ForeignKeyConstraint(
            ["inspection_id"],
            ["inspections.id"],
            name=op.f("fk_line_outbox_inspection_id_inspections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_line_outbox")),
    )
    with op.batch_alter_table("line_outbox", schema=None) as batch_op:
        batch_op.create_index("ix_line_outbox_pending", ["sink", "delivered_at", "id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("line_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_line_outbox_pending")
    op.drop_table("line_outbox")
