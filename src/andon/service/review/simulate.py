"""A simulated line history, written straight into the database: for benchmarks, demos and tests.

It writes what the service itself would have written (records of frames, with decisions, scores, quality
signals and model versions) at the volume of a real line, in bulk (about 100,000 records in seconds), plus
operator verdicts for a share of the flagged frames. Images are not written: records point at no image,
like frames whose image retention pruned. Events make the dashboard's job visible: a lamp failing on one
camera for a while (darker frames, lower contrast, more rejects) and a defocused lens (lower focus).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import insert
from sqlalchemy.orm import Session

from andon.service.review.tables import CANT_TELL, CONFIRM_DEFECT, FALSE_ALARM, ReviewVerdict
from andon.service.tables import (
    REVIEW_ESCALATED,
    REVIEW_NOT_REQUIRED,
    REVIEW_REVIEWED,
    REVIEW_UNREVIEWED,
    Inspection,
    new_id,
)

DEFECTS = ("scratch", "dent", "stain")
CLASSES = ("ok", *DEFECTS)


@dataclass(frozen=True)
class Event:
    """Between ``start`` and ``end`` (fractions of the history), ``camera`` is affected."""

    camera: str
    start: float
    end: float
    kind: str  # "lamp": darker, flatter frames and more rejects; "focus": blurred frames


@dataclass
class LineHistory:
    frames: int = 100_000
    hours: float = 24.0
    lines: tuple[str, ...] = ("L1", "L2")
    cameras_per_line: int = 2
    reject_rate: float = 0.03
    review_rate: float = 0.06
    reviewed_share: float = 0.7  # of the flagged frames older than the newest tenth
    model_version: str = "1"
    model_hash: str = "0" * 64
    seed: int = 0
    events: list[Event] = field(
        default_factory=lambda: [Event("L1-cam2", 0.70, 0.80, "lamp"), Event("L2-cam1", 0.85, 1.00, "focus")]
    )

    def cameras(self) -> list[tuple[str, str]]:
        return [(line, f"{line}-cam{i + 1}") for line in self.lines for i in range(self.cameras_per_line)]


def simulate(session: Session, h: LineHistory, *, now: dt.datetime | None = None, chunk: int = 5000) -> dict:
    """Write the history ending at ``now``; returns counts of what was written."""
    rng = np.random.default_rng(h.seed)
    now = now or dt.datetime.now(dt.timezone.utc)
    start = now - dt.timedelta(hours=h.hours)
    cams = h.cameras()
    offsets = np.sort(rng.uniform(0, h.hours * 3600, h.frames))
    which = rng.integers(0, len(cams), h.frames)
    rows, verdicts, counts = [], [], {"frames": 0, "verdicts": 0}
    for i in range(h.frames):
        line, camera = cams[which[i]]
        frac = offsets[i] / (h.hours * 3600)
        active = {e.kind for e in h.events if e.camera == camera and e.start <= frac < e.end}
        row = _frame(rng, h, line, camera, active, start + dt.timedelta(seconds=float(offsets[i])), i)
        if row["decision"] != "pass" and frac < 0.9 and rng.random() < h.reviewed_share:
            verdict = _verdict(rng, row)
            row["review_status"] = REVIEW_ESCALATED if verdict["verdict"] == CANT_TELL else REVIEW_REVIEWED
            verdicts.append(verdict)
        rows.append(row)
        if len(rows) >= chunk:
            _flush(session, rows, verdicts, counts)
    _flush(session, rows, verdicts, counts)
    session.commit()
    return counts


def _flush(session: Session, rows: list[dict], verdicts: list[dict], counts: dict) -> None:
    if rows:
        session.execute(insert(Inspection), rows)
        counts["frames"] += len(rows)
    if verdicts:
        session.execute(insert(ReviewVerdict), verdicts)
        counts["verdicts"] += len(verdicts)
    rows.clear()
    verdicts.clear()


def _frame(rng, h: LineHistory, line: str, camera: str, active: set[str], at: dt.datetime, i: int) -> dict:
    cam_seed = sum(map(ord, camera))
    brightness = 150 + cam_seed % 30 + rng.normal(0, 3)
    contrast = 28 + cam_seed % 7 + rng.normal(0, 1.2)
    focus = (400 + 7 * (cam_seed % 40)) * rng.lognormal(0, 0.08)
    reject, review = h.reject_rate, h.review_rate
    if "lamp" in active:
        brightness -= 45
        contrast *= 0.6
        reject, review = reject * 3, review * 2
    if "focus" in active:
        focus *= 0.35
        review *= 1.5
    u = rng.random()
    decision = "reject" if u < reject else "review" if u < reject + review else "pass"
    score = {"reject": rng.uniform(0.7, 1.0), "review": rng.uniform(0.3, 0.7), "pass": rng.beta(1, 40)}[decision]
    label = str(rng.choice(DEFECTS, p=[0.5, 0.3, 0.2])) if decision == "reject" else "ok"
    if decision == "review" and score > 0.5:
        label = str(rng.choice(DEFECTS))
    share = rng.dirichlet(np.ones(len(DEFECTS)))
    scores = {"ok": 1.0 - score, **{d: float(score * s) for d, s in zip(DEFECTS, share)}}
    return {
        "id": new_id(),
        "created_at": at,
        "captured_at": None,
        "line_id": line,
        "camera_id": camera,
        "part_id": f"{line}-P{i // 2:07d}",
        "serial": None,
        "label": label,
        "decision": decision,
        "defect_score": float(score),
        "scores": scores,
        "reasons": [],
        "model_version": h.model_version,
        "model_hash": h.model_hash,
        "image_format": "JPEG",
        "image_width": 2448,
        "image_height": 2048,
        "image_bytes": 600_000,
        "body_sha256": "0" * 64,
        "image_key": None,
        "heatmap_key": None,
        "image_pruned_at": None,
        "review_status": REVIEW_NOT_REQUIRED if decision == "pass" else REVIEW_UNREVIEWED,
        "idempotency_key": None,
        "timings_ms": {},
        "reason": "pass" if decision == "pass" else "defect",
        "anomaly_score": None,
        "brightness": round(float(brightness), 2),
        "contrast": round(float(contrast), 2),
        "focus": round(float(focus), 2),
    }


def _verdict(rng, row: dict) -> dict:
    p_confirm = 0.9 if row["decision"] == "reject" else 0.35
    u = rng.random()
    if u < 0.03:
        verdict, label = CANT_TELL, None
    elif u < 0.03 + p_confirm:
        verdict = CONFIRM_DEFECT
        label = row["label"] if row["label"] in DEFECTS and rng.random() < 0.9 else str(rng.choice(DEFECTS))
    else:
        verdict, label = FALSE_ALARM, "ok"
    return {
        "inspection_id": row["id"],
        "verdict": verdict,
        "label": label,
        "comment": None,
        "user_id": None,
        "reviewer": "sim-operator",
        "created_at": row["created_at"] + dt.timedelta(minutes=float(rng.uniform(1, 30))),
        "model_label": row["label"],
        "model_decision": row["decision"],
        "model_score": row["defect_score"],
        "superseded_at": None,
        "superseded_by": None,
    }
