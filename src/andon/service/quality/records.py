"""Reading the records for statistics: frames and current verdicts of a time range, as columns.

Shared by the dashboard and the shift report, so that both count the same way. Frames are fetched as plain
tuples (no ORM objects) and turned into numpy columns; a range larger than ``max_rows`` keeps its newest
``max_rows`` frames and says so (``truncated``), so a dashboard over a busy month cannot exhaust memory.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from andon.service.review.tables import ReviewVerdict
from andon.service.tables import Inspection

MAX_ROWS = 300_000

_FRAME_COLUMNS = (
    Inspection.created_at,
    Inspection.line_id,
    Inspection.camera_id,
    Inspection.decision,
    Inspection.label,
    Inspection.defect_score,
    Inspection.model_version,
    Inspection.part_id,
    Inspection.brightness,
    Inspection.contrast,
    Inspection.focus,
    Inspection.reason,
)


@dataclass
class Frames:
    """Columns of the frames in a range, oldest first. ``t`` is seconds since the epoch (UTC)."""

    t: np.ndarray
    line: np.ndarray
    camera: np.ndarray
    decision: np.ndarray
    label: np.ndarray
    score: np.ndarray
    model_version: np.ndarray
    part_id: np.ndarray
    brightness: np.ndarray
    contrast: np.ndarray
    focus: np.ndarray
    #: the decision's reason code (None for records from before it was stored; ``reasons.signal_of``)
    reason: np.ndarray
    truncated: bool = False

    def __len__(self) -> int:
        return int(self.t.size)

    def where(self, mask: np.ndarray) -> Frames:
        return Frames(**{k: (v[mask] if isinstance(v, np.ndarray) else v) for k, v in self.__dict__.items()})


def _filtered(query, line_id: str | None, camera_id: str | None):
    if line_id:
        query = query.where(Inspection.line_id == line_id)
    if camera_id:
        query = query.where(Inspection.camera_id == camera_id)
    return query


def frames(
    session: Session,
    since: dt.datetime,
    until: dt.datetime,
    *,
    line_id: str | None = None,
    camera_id: str | None = None,
    max_rows: int = MAX_ROWS,
) -> Frames:
    query = _filtered(
        select(*_FRAME_COLUMNS).where(Inspection.created_at >= since, Inspection.created_at < until), line_id, camera_id
    )
    rows = session.execute(query.order_by(Inspection.created_at.desc()).limit(max_rows + 1)).all()
    truncated = len(rows) > max_rows
    rows = rows[:max_rows][::-1]
    cols = list(zip(*rows)) if rows else [()] * len(_FRAME_COLUMNS)

    def floats(values) -> np.ndarray:
        return np.array([np.nan if v is None else v for v in values], dtype=np.float64)

    return Frames(
        t=np.array([r.timestamp() for r in cols[0]], dtype=np.float64),
        line=np.array(cols[1], dtype=object),
        camera=np.array(cols[2], dtype=object),
        decision=np.array(cols[3], dtype=object),
        label=np.array(cols[4], dtype=object),
        score=floats(cols[5]),
        model_version=np.array(cols[6], dtype=object),
        part_id=np.array(cols[7], dtype=object),
        brightness=floats(cols[8]),
        contrast=floats(cols[9]),
        focus=floats(cols[10]),
        reason=np.array(cols[11], dtype=object),
        truncated=truncated,
    )


@dataclass(frozen=True)
class VerdictRecord:
    inspection_id: str
    created_at: dt.datetime  # when the frame was inspected
    line_id: str
    camera_id: str
    part_id: str | None
    decision: str
    model_label: str
    verdict: str
    label: str | None
    reviewer: str
    reviewed_at: dt.datetime
    comment: str | None


def current_verdicts(
    session: Session,
    since: dt.datetime,
    until: dt.datetime,
    *,
    line_id: str | None = None,
    camera_id: str | None = None,
    by: str = "inspected",
) -> list[VerdictRecord]:
    """The current verdict of every judged frame in the range: frames inspected in it (``by="inspected"``)
    or verdicts given in it (``by="reviewed"``)."""
    column = Inspection.created_at if by == "inspected" else ReviewVerdict.created_at
    query = (
        select(
            ReviewVerdict.inspection_id,
            Inspection.created_at,
            Inspection.line_id,
            Inspection.camera_id,
            Inspection.part_id,
            Inspection.decision,
            ReviewVerdict.model_label,
            ReviewVerdict.verdict,
            ReviewVerdict.label,
            ReviewVerdict.reviewer,
            ReviewVerdict.created_at,
            ReviewVerdict.comment,
        )
        .join(Inspection, Inspection.id == ReviewVerdict.inspection_id)
        .where(ReviewVerdict.superseded_at.is_(None), column >= since, column < until)
    )
    query = _filtered(query, line_id, camera_id).order_by(ReviewVerdict.created_at)
    return [VerdictRecord(*row) for row in session.execute(query).all()]


def reference_scores(
    session: Session,
    model_version: str,
    *,
    line_id: str | None = None,
    camera_id: str | None = None,
    frames_: int = 1000,
) -> tuple[np.ndarray, dt.datetime | None]:
    """Defect scores of the first ``frames_`` frames this model version judged (with the same filters),
    and when that reference window ended: the drift baseline (see ``stats``)."""
    query = _filtered(
        select(Inspection.defect_score, Inspection.created_at).where(Inspection.model_version == model_version),
        line_id,
        camera_id,
    )
    rows = session.execute(query.order_by(Inspection.created_at).limit(frames_)).all()
    if not rows:
        return np.zeros(0), None
    return np.array([r[0] for r in rows], dtype=np.float64), rows[-1][1]
