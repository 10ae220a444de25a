"""The service's tables (SQLAlchemy 2.x typed ORM). Alembic migrations in ``migrations/`` create them.

``inspections`` is the durable record of every frame: what the model said, which model said it, where the
image is, and whether an operator has looked at it. ``review_status`` is ``unreviewed`` for every frame whose
decision is not pass (the operators' queue, indexed by decision, status and time), ``not_required`` for
passes; the review station sets ``reviewed``. Retention never prunes an ``unreviewed`` image.
"""

from __future__ import annotations

import datetime as dt
import os
import time

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    UniqueConstraint,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column
from sqlalchemy.types import TypeDecorator

REVIEW_NOT_REQUIRED = "not_required"
REVIEW_UNREVIEWED = "unreviewed"
REVIEW_REVIEWED = "reviewed"
#: an operator could not tell (review station): stays in the engineers' queue, never pruned by retention
REVIEW_ESCALATED = "escalated"
REVIEW_STATUSES = (REVIEW_NOT_REQUIRED, REVIEW_UNREVIEWED, REVIEW_REVIEWED, REVIEW_ESCALATED)

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"


def new_id() -> str:
    """A ULID: 26 characters, sortable by creation time (48-bit ms clock + 80 random bits)."""
    value = (int(time.time() * 1000) << 80) | int.from_bytes(os.urandom(10), "big")
    return "".join(_CROCKFORD[(value >> (5 * i)) & 31] for i in range(25, -1, -1))


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.timezone.utc)


class UTCDateTime(TypeDecorator[dt.datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite has no time zones: stored as naive UTC)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value} given; use timezone-aware UTC datetimes")
        value = value.astimezone(dt.timezone.utc)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


class Base(DeclarativeBase):
    metadata = MetaData(
        naming_convention={
            "ix": "ix_%(table_name)s_%(column_0_N_name)s",
            "uq": "uq_%(table_name)s_%(column_0_N_name)s",
            "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
            "pk": "pk_%(table_name)s",
        }
    )


class Inspection(Base):
    """One frame's verdict."""

    __tablename__ = "inspections"

    id: Mapped[str] = mapped_column(String(26), primary_key=True, default=new_id)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    captured_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    line_id: Mapped[str] = mapped_column(String(64))
    camera_id: Mapped[str] = mapped_column(String(64))
    part_id: Mapped[str | None] = mapped_column(String(128), index=True)
    serial: Mapped[str | None] = mapped_column(String(128))
    label: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(8))
    defect_score: Mapped[float] = mapped_column(Float)
    scores: Mapped[dict] = mapped_column(JSON)
    reasons: Mapped[list] = mapped_column(JSON)
    model_version: Mapped[str] = mapped_column(String(128))
    model_hash: Mapped[str] = mapped_column(String(64))
    image_format: Mapped[str] = mapped_column(String(8))
    image_width: Mapped[int] = mapped_column(Integer)
    image_height: Mapped[int] = mapped_column(Integer)
    image_bytes: Mapped[int] = mapped_column(Integer)
    body_sha256: Mapped[str] = mapped_column(String(64))
    image_key: Mapped[str | None] = mapped_column(String(255))
    heatmap_key: Mapped[str | None] = mapped_column(String(255))
    image_pruned_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    review_status: Mapped[str] = mapped_column(String(16))
    idempotency_key: Mapped[str | None] = mapped_column(String(255))
    timings_ms: Mapped[dict] = mapped_column(JSON)
    # frame-quality signals (andon.inspect.quality), for the dashboard's dirty-lens / failed-lamp watch
    brightness: Mapped[float | None] = mapped_column(Float)
    contrast: Mapped[float | None] = mapped_column(Float)
    focus: Mapped[float | None] = mapped_column(Float)
    #: the decision's reason code (``InspectionResult.reason``): "pass", the deciding signal ("defect", a defect
    #: class with its own band, "anomaly") or "unknown defect"; None for records from before migration 0003
    reason: Mapped[str | None] = mapped_column(String(128))
    #: the good-only anomaly score, for models that have one
    anomaly_score: Mapped[float | None] = mapped_column(Float)
    #: the product (SKU) whose model and thresholds judged the frame; None: the default (migration 0005)
    product: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("camera_id", "idempotency_key"),
        Index("ix_inspections_queue", "decision", "review_status", "created_at"),
        Index("ix_inspections_line_created", "line_id", "created_at"),
        Index("ix_inspections_camera_created", "camera_id", "created_at"),
        Index("ix_inspections_created_at", "created_at"),
    )


class ShadowResult(Base):
    """What a shadow (candidate) model said about a frame the active model judged."""

    __tablename__ = "shadow_results"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    inspection_id: Mapped[str] = mapped_column(ForeignKey("inspections.id", ondelete="CASCADE"), index=True)
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    model_version: Mapped[str] = mapped_column(String(128))
    model_hash: Mapped[str] = mapped_column(String(64))
    label: Mapped[str] = mapped_column(String(128))
    decision: Mapped[str] = mapped_column(String(8))
    defect_score: Mapped[float] = mapped_column(Float)
    active_decision: Mapped[str] = mapped_column(String(8))
    agree_decision: Mapped[bool] = mapped_column(Boolean)
    agree_label: Mapped[bool] = mapped_column(Boolean)

    __table_args__ = (Index("ix_shadow_results_model", "model_version", "model_hash"),)


class ApiKey(Base):
    """A credential. Only a salted hash of the secret is stored; the key is shown once, at creation."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    name: Mapped[str] = mapped_column(String(128))
    role: Mapped[str] = mapped_column(String(16))
    camera_id: Mapped[str | None] = mapped_column(String(64))
    salt: Mapped[str] = mapped_column(String(32))
    secret_hash: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    revoked_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    last_used_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class ProductSwitch(Base):
    """A line's product (SKU recipe) changed: who or what switched it, from what, to what, and when it took effect
    in the process that made it (``andon.service.products``). None is the default product."""

    __tablename__ = "product_switches"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    line_id: Mapped[str] = mapped_column(String(64))
    from_product: Mapped[str | None] = mapped_column(String(64))
    to_product: Mapped[str | None] = mapped_column(String(64))
    #: what made the switch: "api", "opcua", "cli", ...
    source: Mapped[str] = mapped_column(String(32))
    #: who: the API key id or login of the caller, when the source knows one
    actor: Mapped[str | None] = mapped_column(String(128))
    #: the registry state generation the switch wrote
    generation: Mapped[int] = mapped_column(Integer)

    __table_args__ = (Index("ix_product_switches_line_at", "line_id", "at"),)


# ---- the model registry (andon.service.registry): shared by every replica through the database -------------


class ModelVersion(Base):
    """One registered model: its file is the object ``store_key`` in the model store (verified by sha256)."""

    __tablename__ = "model_versions"

    version: Mapped[str] = mapped_column(String(64), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    content_hash: Mapped[str] = mapped_column(String(64), index=True)
    file_sha256: Mapped[str] = mapped_column(String(64))
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    added_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    source: Mapped[str] = mapped_column(String(300))
    store_key: Mapped[str] = mapped_column(String(600))
    #: the card's summary (classes, thresholds, metrics, ...): what ``andon info`` would show
    card: Mapped[dict | None] = mapped_column(JSON)


class RegistryStateRow(Base):
    """The one row (id 1) of pointers; its row lock (SQLite: the writer lock) serialises registry changes."""

    __tablename__ = "registry_state"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    active: Mapped[str | None] = mapped_column(String(64))
    previous: Mapped[str | None] = mapped_column(String(64))
    shadow: Mapped[str | None] = mapped_column(String(64))
    generation: Mapped[int] = mapped_column(Integer, default=0)
    #: the legacy folder (state.json + versions/) imported into these tables, and when
    imported_from: Mapped[str | None] = mapped_column(String(1000))
    imported_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())


class RegistryEvent(Base):
    """One change of the registry (add, promote, rollback, shadow, select), as ``RegistryState.history`` shows it."""

    __tablename__ = "registry_history"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    generation: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(String(16))
    event: Mapped[dict] = mapped_column(JSON)


class RegistryProduct(Base):
    """A named product (SKU) and its active and previous model version."""

    __tablename__ = "registry_products"

    product: Mapped[str] = mapped_column(String(64), primary_key=True)
    active: Mapped[str | None] = mapped_column(String(64))
    previous: Mapped[str | None] = mapped_column(String(64))


class RegistryLine(Base):
    """The product a line runs now (a line without a row runs the default)."""

    __tablename__ = "registry_lines"

    line_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    product: Mapped[str] = mapped_column(String(64))
