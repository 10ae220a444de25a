"""the decision's reason code and the good-only anomaly score on inspections

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

``reason`` is the reason code of the decision (``InspectionResult.reason``): "pass", the signal that decided
("defect", a defect class with its own band, "anomaly") or "unknown defect" (the classifier passed the part and
the anomaly score flagged it). ``anomaly_score`` is the good-only anomaly score of models that have one.

Both are nullable ADD COLUMNs (no table rewrite, instant on a large table); records from before the upgrade
have neither (their reason reads as their decision on the review page).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("reason", sa.String(length=128), nullable=True))
        batch_op.add_column(sa.Column("anomaly_score", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.drop_column("anomaly_score")
        batch_op.drop_column("reason")
