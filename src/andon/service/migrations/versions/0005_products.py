"""recipes per product: the product each inspection (and line verdict) was judged under, and the switches

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03

``inspections.product`` and ``line_outbox.product`` name the product (SKU) whose model and thresholds judged
the frame (NULL: the default product, and every record from before the upgrade). Both are nullable ADD
COLUMNs (no table rewrite). ``product_switches`` records each change of a line's product: when, from what, to
what, and who or what made it (docs/line.md, "Recipes per product").
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("product", sa.String(length=64), nullable=True))
    with op.batch_alter_table("line_outbox", schema=None) as batch_op:
        batch_op.add_column(sa.Column("product", sa.String(length=64), nullable=True))
    op.create_table(
        "product_switches",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("line_id", sa.String(length=64), nullable=False),
        sa.Column("from_product", sa.String(length=64), nullable=True),
        sa.Column("to_product", sa.String(length=64), nullable=True),
        sa.Column("source", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_product_switches")),
    )
    with op.batch_alter_table("product_switches", schema=None) as batch_op:
        batch_op.create_index("ix_product_switches_line_at", ["line_id", "at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("product_switches", schema=None) as batch_op:
        batch_op.drop_index("ix_product_switches_line_at")
    op.drop_table("product_switches")
    with op.batch_alter_table("line_outbox", schema=None) as batch_op:
        batch_op.drop_column("product")
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.drop_column("product")
