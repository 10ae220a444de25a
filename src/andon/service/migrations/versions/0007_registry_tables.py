"""the model registry in the database: versions, pointers, history, products and line selections

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03

Until now the registry lived in ``<data_dir>/models/state.json`` + ``versions/<v>/info.json`` on one machine's
disk. These tables hold the same state so that replicas on other machines share it (the model files go to the
configured store: docs/scaling.md, "Model registry shared by replicas"). ``registry_state`` has exactly one
row (id 1): its row lock serialises changes. A data folder from before is imported into these tables by the
service on first use (``andon.service.registry``), not here, because its files may have to be copied to the
object store first. New tables only: nothing existing is rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "model_versions",
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("content_hash", sa.String(length=64), nullable=False),
        sa.Column("file_sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("source", sa.String(length=300), nullable=False),
        sa.Column("store_key", sa.String(length=600), nullable=False),
        sa.Column("card", sa.JSON(), nullable=True),
        sa.PrimaryKeyConstraint("version", name=op.f("pk_model_versions")),
    )
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.create_index("ix_model_versions_content_hash", ["content_hash"], unique=False)
    state = op.create_table(
        "registry_state",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("active", sa.String(length=64), nullable=True),
        sa.Column("previous", sa.String(length=64), nullable=True),
        sa.Column("shadow", sa.String(length=64), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("imported_from", sa.String(length=1000), nullable=True),
        sa.Column("imported_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_state")),
    )
    op.bulk_insert(state, [{"id": 1, "generation": 0}])
    op.create_table(
        "registry_history",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("event", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_registry_history")),
    )
    op.create_table(
        "registry_products",
        sa.Column("product", sa.String(length=64), nullable=False),
        sa.Column("active", sa.String(length=64), nullable=True),
        sa.Column("previous", sa.String(length=64), nullable=True),
        sa.PrimaryKeyConstraint("product", name=op.f("pk_registry_products")),
    )
    op.create_table(
        "registry_lines",
        sa.Column("line_id", sa.String(length=64), nullable=False),
        sa.Column("product", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("line_id", name=op.f("pk_registry_lines")),
    )


def downgrade() -> None:
    op.drop_table("registry_lines")
    op.drop_table("registry_products")
    op.drop_table("registry_history")
    op.drop_table("registry_state")
    with op.batch_alter_table("model_versions", schema=None) as batch_op:
        batch_op.drop_index("ix_model_versions_content_hash")
    op.drop_table("model_versions")
