"""initial schema: inspections, shadow results, api keys

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=128), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("camera_id", sa.String(length=64), nullable=True),
        sa.Column("salt", sa.String(length=32), nullable=False),
        sa.Column("secret_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_api_keys")),
    )
    op.create_table(
        "inspections",
        sa.Column("id", sa.String(length=26), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("captured_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("line_id", sa.String(length=64), nullable=False),
        sa.Column("camera_id", sa.String(length=64), nullable=False),
        sa.Column("part_id", sa.String(length=128), nullable=True),
        sa.Column("serial", sa.String(length=128), nullable=True),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("defect_score", sa.Float(), nullable=False),
        sa.Column("scores", sa.JSON(), nullable=False),
        sa.Column("reasons", sa.JSON(), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("model_hash", sa.String(length=64), nullable=False),
        sa.Column("image_format", sa.String(length=8), nullable=False),
        sa.Column("image_width", sa.Integer(), nullable=False),
        sa.Column("image_height", sa.Integer(), nullable=False),
        sa.Column("image_bytes", sa.Integer(), nullable=False),
        sa.Column("body_sha256", sa.String(length=64), nullable=False),
        sa.Column("image_key", sa.String(length=255), nullable=True),
        sa.Column("heatmap_key", sa.String(length=255), nullable=True),
        sa.Column("image_pruned_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("review_status", sa.String(length=16), nullable=False),
        sa.Column("idempotency_key", sa.String(length=255), nullable=True),
        sa.Column("timings_ms", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_inspections")),
        sa.UniqueConstraint("camera_id", "idempotency_key", name=op.f("uq_inspections_camera_id_idempotency_key")),
    )
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.create_index("ix_inspections_camera_created", ["camera_id", "created_at"], unique=False)
        batch_op.create_index("ix_inspections_created_at", ["created_at"], unique=False)
        batch_op.create_index("ix_inspections_line_created", ["line_id", "created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_inspections_part_id"), ["part_id"], unique=False)
        batch_op.create_index("ix_inspections_queue", ["decision", "review_status", "created_at"], unique=False)

    op.create_table(
        "shadow_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("inspection_id", sa.String(length=26), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_version", sa.String(length=128), nullable=False),
        sa.Column("model_hash", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=False),
        sa.Column("decision", sa.String(length=8), nullable=False),
        sa.Column("defect_score", sa.Float(), nullable=False),
        sa.Column("active_decision", sa.String(length=8), nullable=False),
        sa.Column("agree_decision", sa.Boolean(), nullable=False),
        sa.Column("agree_label", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["inspection_id"],
            ["inspections.id"],
            name=op.f("fk_shadow_results_inspection_id_inspections"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_shadow_results")),
    )
    with op.batch_alter_table("shadow_results", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_shadow_results_inspection_id"), ["inspection_id"], unique=False)
        batch_op.create_index("ix_shadow_results_model", ["model_version", "model_hash"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("shadow_results", schema=None) as batch_op:
        batch_op.drop_index("ix_shadow_results_model")
        batch_op.drop_index(batch_op.f("ix_shadow_results_inspection_id"))

    op.drop_table("shadow_results")
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.drop_index("ix_inspections_queue")
        batch_op.drop_index(batch_op.f("ix_inspections_part_id"))
        batch_op.drop_index("ix_inspections_line_created")
        batch_op.drop_index("ix_inspections_created_at")
        batch_op.drop_index("ix_inspections_camera_created")

    op.drop_table("inspections")
    op.drop_table("api_keys")
