"""review station: users, web sessions, review verdicts (audit trail); frame-quality columns on inspections

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25

The quality columns are nullable ADD COLUMNs (no table rewrite, so upgrading a database with millions of
inspections is instant); records from before the upgrade simply have no quality values.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

# the audit queue's partial index condition (as in andon.service.review.tables, frozen here)
AUDIT_CONDITION = "image_key IS NOT NULL"

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "users",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(length=64), nullable=False),
        sa.Column("role", sa.String(length=16), nullable=False),
        sa.Column("password_hash", sa.String(length=255), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("disabled_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_users")),
        sa.UniqueConstraint("username", name=op.f("uq_users_username")),
    )
    op.create_table(
        "review_verdicts",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("inspection_id", sa.String(length=26), nullable=False),
        sa.Column("verdict", sa.String(length=16), nullable=False),
        sa.Column("label", sa.String(length=128), nullable=True),
        sa.Column("comment", sa.Text(), nullable=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("reviewer", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("model_label", sa.String(length=128), nullable=False),
        sa.Column("model_decision", sa.String(length=8), nullable=False),
        sa.Column("model_score", sa.Float(), nullable=False),
        sa.Column("superseded_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("superseded_by", sa.Integer(), nullable=True),
        sa.ForeignKeyConstraint(
            ["inspection_id"],
            ["inspections.id"],
            name=op.f("fk_review_verdicts_inspection_id_inspections"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], name=op.f("fk_review_verdicts_user_id_users")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_review_verdicts")),
    )
    with op.batch_alter_table("review_verdicts", schema=None) as batch_op:
        batch_op.create_index("ix_review_verdicts_current", ["superseded_at", "created_at"], unique=False)
        batch_op.create_index("ix_review_verdicts_inspection", ["inspection_id", "id"], unique=False)

    op.create_table(
        "web_sessions",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("user_id", sa.Integer(), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["users.id"], name=op.f("fk_web_sessions_user_id_users"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("token_hash", name=op.f("pk_web_sessions")),
    )
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_sessions_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_web_sessions_user_id"), ["user_id"], unique=False)

    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.add_column(sa.Column("brightness", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("contrast", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("focus", sa.Float(), nullable=True))
        batch_op.create_index(
            "ix_inspections_audit",
            ["decision", "review_status", "created_at"],
            unique=False,
            sqlite_where=sa.text(AUDIT_CONDITION),
            postgresql_where=sa.text(AUDIT_CONDITION),
        )


def downgrade() -> None:
    with op.batch_alter_table("inspections", schema=None) as batch_op:
        batch_op.drop_index("ix_inspections_audit")
        batch_op.drop_column("focus")
        batch_op.drop_column("contrast")
        batch_op.drop_column("brightness")

    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_sessions_user_id"))
        batch_op.drop_index(batch_op.f("ix_web_sessions_expires_at"))

    op.drop_table("web_sessions")
    with op.batch_alter_table("review_verdicts", schema=None) as batch_op:
        batch_op.drop_index("ix_review_verdicts_inspection")
        batch_op.drop_index("ix_review_verdicts_current")

    op.drop_table("review_verdicts")
    op.drop_table("users")
