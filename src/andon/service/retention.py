"""Retention: prune images of old passes and of reviewed frames; never of unreviewed flagged frames.

Records stay (they are small and they are the audit trail); only the image and heatmap files go, and the
record says when (``image_pruned_at``). The rule is in the query: a row qualifies only if its review status
is ``not_required`` (a pass) or ``reviewed``, so an ``unreviewed`` frame is never touched whatever its age.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from andon.service.storage import ImageStore
from andon.service.tables import REVIEW_NOT_REQUIRED, REVIEW_REVIEWED, Inspection, utcnow

log = logging.getLogger("andon.service")
_CHUNK = 500


@dataclass
class PruneReport:
    images_pruned: int = 0
    bytes_freed: int = 0


def prune(sessions: Callable[[], Session], store: ImageStore, *, pass_days: float | None,
          reviewed_days: float | None, now: dt.datetime | None = None) -> PruneReport:
    """Delete the images the policy lets go; returns how many and how many bytes (posted sizes)."""
    now = now or utcnow()
    rules = []
    if pass_days is not None:
        rules.append(and_(Inspection.review_status == REVIEW_NOT_REQUIRED,
                          Inspection.created_at < now - dt.timedelta(days=pass_days)))
    if reviewed_days is not None:
        rules.append(and_(Inspection.review_status == REVIEW_REVIEWED,
                          Inspection.created_at < now - dt.timedelta(days=reviewed_days)))
    report = PruneReport()
    if not rules:
        return report
    while True:
        with sessions() as session:
            rows = list(session.scalars(select(Inspection).where(Inspection.image_key.is_not(None), or_(*rules))
                                        .order_by(Inspection.id).limit(_CHUNK)))
            if not rows:
                return report
            for row in rows:
                for key in (row.image_key, row.heatmap_key):
                    if key:
                        store.delete(key)
                report.images_pruned += 1
                report.bytes_freed += row.image_bytes
                row.image_key = None
                row.heatmap_key = None
                row.image_pruned_at = now
            session.commit()
        log.info("retention: pruned %d images so far", report.images_pruned)
