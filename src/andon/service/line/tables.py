"""The line outbox: one row per (verdict, sink), written in the transaction of the verdict's record.

A frame the camera got a 2xx for has its outbox rows committed with its record, so no acknowledged verdict
can be lost before it reaches the line. The dispatcher (``andon.service.line.dispatcher``) delivers each
sink's rows in ``id`` order and marks them delivered: ``delivered_at``, the ``delivered_decision`` (reject
when the deadline had passed: ``late``) and the ``sequence`` number. ``decision`` stays the model's. A part
verdict's rows are made by its first frame and completed by the last one (``Line.record``).
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import JSON, BigInteger, Boolean, ForeignKey, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from andon.service.tables import Base, UTCDateTime, utcnow

#: the id column: 64-bit on PostgreSQL, SQLite's rowid (INTEGER PRIMARY KEY) there
OUTBOX_ID = BigInteger().with_variant(Integer(), "sqlite")


class LineOutbox(Base):
    __tablename__ = "line_outbox"

    id: Mapped[int] = mapped_column(OUTBOX_ID, primary_key=True, autoincrement=True)
    sink: Mapped[str] = mapped_column(String(16))
    #: "frame" (one camera's verdict) or "part" (the worst across the cameras of ``line_cameras[line_id]``)
    kind: Mapped[str] = mapped_column(String(8))
    inspection_id: Mapped[str | None] = mapped_column(ForeignKey("inspections.id", ondelete="CASCADE"))
    line_id: Mapped[str] = mapped_column(String(64))
    camera_id: Mapped[str | None] = mapped_column(String(64))
    part_id: Mapped[str | None] = mapped_column(String(128))
    serial: Mapped[str | None] = mapped_column(String(128))
    #: the model's decision; for a part: the worst of its cameras', or "pending" until they have all reported
    decision: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(String(128))
    model_version: Mapped[str] = mapped_column(String(128))
    #: the product (SKU) the verdict was judged under; None: the default (migration 0005)
    product: Mapped[str | None] = mapped_column(String(64))
    #: when the frame's request arrived; the deadline counts from here
    received_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    deadline_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    created_at: Mapped[dt.datetime] = mapped_column(UTCDateTime(), default=utcnow)
    delivered_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    delivered_decision: Mapped[str | None] = mapped_column(String(8))
    late: Mapped[bool | None] = mapped_column(Boolean)
    sequence: Mapped[int | None] = mapped_column(BigInteger)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    last_error: Mapped[str | None] = mapped_column(String(255))
    #: a part's cameras: {"expected": [camera, ...], "cameras": {camera: {"decision", "reason", "inspection_id"}}}
    detail: Mapped[dict | None] = mapped_column(JSON)

    __table_args__ = (Index("ix_line_outbox_pending", "sink", "delivered_at", "id"),)
