"""The review station's tables, on the service's declarative ``Base`` (so one Alembic history covers both).

* ``users``: operators and engineers who log in to the pages (API keys are for machines; a camera key can
  never open a page). Passwords are stored as scrypt hashes with a per-user salt.
* ``web_sessions``: server-side sessions. The cookie holds a random token; the table holds only its SHA-256,
  so a copy of the database does not let anyone in. Each session has its own CSRF token.
* ``review_verdicts``: the audit trail. Append-only: a changed verdict is a new row, and the row it replaces
  gets ``superseded_at``/``superseded_by`` (its content never changes). The current verdict of an inspection
  is its row with ``superseded_at`` NULL.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import Mapped, mapped_column

from andon.service.tables import Base, Inspection, UTCDateTime, utcnow

USER_ROLES: tuple[str, ...] = ("operator", "engineer")

CONFIRM_DEFECT = "confirm_defect"
FALSE_ALARM = "false_alarm"
CANT_TELL = "cant_tell"
VERDICTS: tuple[str, ...] = (CONFIRM_DEFECT, FALSE_ALARM, CANT_TELL)


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    username: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    password_hash: Mapped[str] = mapped_column(String(255))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    disabled_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_login_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class WebSession(Base):
    __tablename__ = "web_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id", ondelete="CASCADE"), index=True)
    csrf_token: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    expires_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), index=True)
    last_seen_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    ended_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ReviewVerdict(Base):
    __tablename__ = "review_verdicts"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id", ondelete="CASCADE"))
    verdict: Mapped[str] = mapped_column(String(16))
    #: the defect type the operator confirmed (re-labelled or the model's), the good class for a false alarm,
    #: None when the operator could not tell
    label: Mapped[str | None] = mapped_column(String(128))
    comment: Mapped[str | None] = mapped_column(Text)
    user_id: Mapped[int | None] = mapped_column(ForeignKey("users.id"))
    #: who gave it, as shown in the audit trail: the username, or "key:<name>" for an API key
    reviewer: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    #: what the model said, copied so that agreement statistics need no join and survive model changes
    model_label: Mapped[str] = mapped_column(String(128))
    model_decision: Mapped[str] = mapped_column(String(8))
    model_score: Mapped[float] = mapped_column(Float)
    superseded_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    superseded_by: Mapped[int | None] = mapped_column(Integer)

    __table_args__ = (
        Index("ix_review_verdicts_inspection", "inspection_id", "id"),
        Index("ix_review_verdicts_current", "superseded_at", "created_at"),
    )


#: the audit queue's partial index condition: frames whose image is kept (every flagged frame and a small
#: sample of passes); the condition has no parameter, so SQLite can match it to queries that state it
AUDIT_CONDITION = "image_key IS NOT NULL"

# On the service's table, declared here: a partial index over frames with a stored image. For the audit
# queue (passes whose image was sampled) it is a range of a few thousand entries instead of a walk over
# every passed frame; SQLite's planner prefers it to the queue index because it is smaller.
Index(
    "ix_inspections_audit",
    Inspection.decision,
    Inspection.review_status,
    Inspection.created_at,
    sqlite_where=text(AUDIT_CONDITION),
    postgresql_where=text(AUDIT_CONDITION),
)
