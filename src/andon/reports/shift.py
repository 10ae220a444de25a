"""The shift report's numbers, computed from the service's records (nothing here is estimated).

Frames are what the cameras sent; a part is a part id (frames without one count as one part each) and its
decision is the worst of its frames' (the service's default part policy). Review figures concern the
flagged frames of the shift and their *current* verdicts (a changed verdict counts once, as changed).
An escape found by review is a frame the model passed whose sampled image an operator confirmed as
defective (the audit queue): the model let a defect through and a person caught it.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import func, select
from sqlalchemy.orm import Session

from andon.inspect.card import GOOD_CLASS_NAMES
from andon.inspect.decision import worst_decision
from andon.service.quality import records, stats
from andon.service.quality.series import SignalShare, flagged_by, rate_series, subgroup_edges
from andon.service.review.tables import CANT_TELL, CONFIRM_DEFECT, FALSE_ALARM
from andon.service.tables import Inspection


@dataclass
class CameraRow:
    line_id: str
    camera_id: str
    frames: int
    passed: int
    review: int
    reject: int

    @property
    def reject_rate(self) -> float | None:
        return self.reject / self.frames if self.frames else None

    @property
    def review_rate(self) -> float | None:
        return self.review / self.frames if self.frames else None


@dataclass
class ModelUse:
    version: str
    model_hash: str
    frames: int
    first: dt.datetime
    last: dt.datetime


@dataclass
class Escape:
    inspection_id: str
    inspected_at: dt.datetime
    line_id: str
    camera_id: str
    part_id: str | None
    label: str | None
    reviewer: str
    comment: str | None


@dataclass
class ShiftReport:
    title: str
    start: dt.datetime
    end: dt.datetime
    line_id: str | None
    generated_at: dt.datetime
    frames: int = 0
    parts: int = 0
    decisions: dict[str, int] = field(default_factory=dict)
    part_decisions: dict[str, int] = field(default_factory=dict)
    cameras: list[CameraRow] = field(default_factory=list)
    models: list[ModelUse] = field(default_factory=list)
    flagged: int = 0
    reviewed: int = 0
    confirmed: int = 0
    relabelled: int = 0
    false_alarms: int = 0
    cant_tell: int = 0
    waiting: int = 0
    false_alarm_rejects: int = 0
    reviewers: dict[str, int] = field(default_factory=dict)
    top_confirmed: list[tuple[str, int]] = field(default_factory=list)
    top_model: list[tuple[str, int]] = field(default_factory=list)
    #: flagged frames per deciding signal (classifier, a class band, the anomaly score: unknown defects)
    flagged_by: list[SignalShare] = field(default_factory=list)
    escapes: list[Escape] = field(default_factory=list)
    audited_passes: int = 0
    out_of_control: list[str] = field(default_factory=list)
    rates: list = field(default_factory=list)

    def rate(self, decision: str) -> float | None:
        return self.decisions.get(decision, 0) / self.frames if self.frames else None

    @property
    def agreement(self) -> float | None:
        judged = self.confirmed + self.false_alarms
        return self.confirmed / judged if judged else None


def build(
    session: Session,
    start: dt.datetime,
    end: dt.datetime,
    *,
    line_id: str | None = None,
    title: str = "Shift report",
    now: dt.datetime | None = None,
) -> ShiftReport:
    report = ShiftReport(
        title=title, start=start, end=end, line_id=line_id, generated_at=now or dt.datetime.now(dt.timezone.utc)
    )
    fr = records.frames(session, start, end, line_id=line_id, max_rows=2_000_000)
    _production(report, fr)
    report.models = _models(session, start, end, line_id)
    _review(report, records.current_verdicts(session, start, end, line_id=line_id), fr)
    _rates(report, fr)
    return report


def _production(report: ShiftReport, fr: records.Frames) -> None:
    report.frames = len(fr)
    report.decisions = {d: int(np.sum(fr.decision == d)) for d in ("pass", "review", "reject")}
    worst: dict[str, str] = {}
    for i, (part, decision) in enumerate(zip(fr.part_id, fr.decision)):
        key = f"part:{part}" if part else f"frame:{i}"
        worst[key] = worst_decision((decision, worst.get(key, "pass")))
    report.parts = len(worst)
    counts = Counter(worst.values())
    report.part_decisions = {d: counts.get(d, 0) for d in ("pass", "review", "reject")}
    table: dict[tuple[str, str], Counter] = defaultdict(Counter)
    for line, camera, decision in zip(fr.line, fr.camera, fr.decision):
        table[(line, camera)][decision] += 1
    report.cameras = [
        CameraRow(line, camera, sum(c.values()), c["pass"], c["review"], c["reject"])
        for (line, camera), c in sorted(table.items())
    ]
    report.top_model = Counter(lab for lab, d in zip(fr.label, fr.decision) if d == "reject").most_common(5)
    report.flagged_by = flagged_by(fr)


def _models(session: Session, start: dt.datetime, end: dt.datetime, line_id: str | None) -> list[ModelUse]:
    query = (
        select(
            Inspection.model_version,
            Inspection.model_hash,
            func.count(),
            func.min(Inspection.created_at),
            func.max(Inspection.created_at),
        )
        .where(Inspection.created_at >= start, Inspection.created_at < end)
        .group_by(Inspection.model_version, Inspection.model_hash)
    )
    if line_id:
        query = query.where(Inspection.line_id == line_id)
    rows = session.execute(query).all()
    return sorted((ModelUse(v, h, int(n), _aware(a), _aware(b)) for v, h, n, a, b in rows), key=lambda m: m.first)


def _aware(value: dt.datetime) -> dt.datetime:
    """Aggregates (min/max) come back without the column type's processing on SQLite: naive UTC."""
    if isinstance(value, str):
        value = dt.datetime.fromisoformat(value)
    return value if value.tzinfo is not None else value.replace(tzinfo=dt.timezone.utc)


def _review(report: ShiftReport, verdicts: list[records.VerdictRecord], fr: records.Frames) -> None:
    report.flagged = int(np.sum(fr.decision != "pass"))
    flagged = [v for v in verdicts if v.decision != "pass"]
    audits = [v for v in verdicts if v.decision == "pass"]
    report.reviewed = len(flagged)
    report.confirmed = sum(v.verdict == CONFIRM_DEFECT for v in flagged)
    report.relabelled = sum(
        v.verdict == CONFIRM_DEFECT and v.label != v.model_label and v.model_label.lower() not in GOOD_CLASS_NAMES
        for v in flagged
    )
    report.false_alarms = sum(v.verdict == FALSE_ALARM for v in flagged)
    report.cant_tell = sum(v.verdict == CANT_TELL for v in flagged)
    report.false_alarm_rejects = sum(v.verdict == FALSE_ALARM and v.decision == "reject" for v in flagged)
    report.waiting = report.flagged - report.reviewed
    report.reviewers = dict(Counter(v.reviewer for v in verdicts).most_common())
    report.top_confirmed = Counter(v.label for v in verdicts if v.verdict == CONFIRM_DEFECT).most_common(5)
    report.audited_passes = len(audits)
    report.escapes = [
        Escape(v.inspection_id, v.created_at, v.line_id, v.camera_id, v.part_id, v.label, v.reviewer, v.comment)
        for v in audits
        if v.verdict == CONFIRM_DEFECT
    ]


def _rates(report: ShiftReport, fr: records.Frames) -> None:
    edges = subgroup_edges(report.start, report.end, "hour")
    report.rates = rate_series(fr, edges)
    for series in report.rates:
        for i in np.flatnonzero(series.chart.out):
            report.out_of_control.append(
                f"{series.name} rate {100 * series.chart.p[i]:.1f}% in the hour from "
                f"{series.starts[i].astimezone():%H:%M} (limits {100 * series.chart.lcl[i]:.1f}%-"
                f"{100 * series.chart.ucl[i]:.1f}%, {int(series.chart.n[i])} frames)"
            )


def interval(successes: int, n: int) -> tuple[float, float]:
    return stats.wilson_interval(successes, n)
