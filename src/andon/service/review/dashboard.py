"""The line dashboard's numbers: per subgroup (hour, shift or day) rates with p-chart limits, operator
agreement with the model, score drift, frame quality against each camera's usual values, and which signal
flagged the flagged frames (classifier, a per-class band, the anomaly score; ``reasons``).

``build(session, DashboardQuery)`` reads the records once (``records``) and computes everything the page
and its charts show; the page caches the result for a minute, so the page and its pictures share one read.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy.orm import Session

from andon.errors import ConfigError
from andon.inspect.card import GOOD_CLASS_NAMES
from andon.inspect.quality import SIGNALS
from andon.service.quality import records, stats
from andon.service.quality.series import (
    SUBGROUPS,
    RateSeries,
    SignalShare,
    flagged_by,
    rate_series,
    starts,
    subgroup_edges,
)
from andon.service.review.tables import CANT_TELL, CONFIRM_DEFECT, FALSE_ALARM

WINDOWS = {"24h": dt.timedelta(hours=24), "7d": dt.timedelta(days=7), "30d": dt.timedelta(days=30)}
REFERENCE_FRAMES = 1000
MIN_DRIFT_FRAMES = 100
MAX_QUALITY_CAMERAS = 6


@dataclass(frozen=True)
class DashboardQuery:
    line_id: str | None = None
    camera_id: str | None = None
    window: str = "24h"
    subgroup: str = "hour"

    def __post_init__(self) -> None:
        if self.window not in WINDOWS:
            raise ConfigError(f"window {self.window!r} is not one of {', '.join(WINDOWS)}")
        if self.subgroup not in SUBGROUPS:
            raise ConfigError(f"subgroup {self.subgroup!r} is not one of {', '.join(SUBGROUPS)}")

    def params(self) -> dict[str, str]:
        return {
            "line": self.line_id or "",
            "camera": self.camera_id or "",
            "window": self.window,
            "subgroup": self.subgroup,
        }


@dataclass
class ClassAgreement:
    model_label: str
    confirmed: int = 0
    relabelled: int = 0
    false_alarm: int = 0
    cant_tell: int = 0

    @property
    def judged(self) -> int:
        return self.confirmed + self.false_alarm

    @property
    def agreement(self) -> float | None:
        return self.confirmed / self.judged if self.judged else None


@dataclass
class Drift:
    model_version: str
    reference: np.ndarray
    current: np.ndarray
    psi: float | None
    ks: float | None
    level: str
    note: str = ""


@dataclass
class QualitySeries:
    camera_id: str
    signal: str
    starts: list[dt.datetime]
    medians: np.ndarray
    usual: stats.Usual | None
    out: np.ndarray
    baseline_note: str


@dataclass
class Dashboard:
    query: DashboardQuery
    since: dt.datetime
    until: dt.datetime
    frames: int
    truncated: bool
    decisions: dict[str, int]
    rates: list[RateSeries]
    agreement: list[ClassAgreement]
    agreement_over_time: tuple[list[dt.datetime], np.ndarray, np.ndarray]
    drift: Drift | None
    quality: list[QualitySeries]
    model_versions: list[str]
    #: flagged frames by the signal that flagged them
    flagged_by: list[SignalShare] = field(default_factory=list)
    alerts: list[str] = field(default_factory=list)

    @property
    def flagged(self) -> int:
        return sum(n for d, n in self.decisions.items() if d != "pass")

    def summary(self) -> dict:
        """The numbers of the page as JSON (``GET /v1/review/dashboard``): counts, rates, who flagged what,
        operator agreement, drift and the alerts; the charts' series stay on the page."""
        total = self.frames
        return {
            "since": self.since.isoformat(),
            "until": self.until.isoformat(),
            "line_id": self.query.line_id,
            "camera_id": self.query.camera_id,
            "window": self.query.window,
            "frames": total,
            "truncated": self.truncated,
            "model_versions": self.model_versions,
            "decisions": {d: int(self.decisions.get(d, 0)) for d in ("pass", "review", "reject")},
            "reject_rate": self.decisions.get("reject", 0) / total if total else None,
            "review_rate": self.decisions.get("review", 0) / total if total else None,
            "flagged": self.flagged,
            "flagged_by": {
                s.signal: {"frames": s.frames, "share": s.share, "detail": s.detail} for s in self.flagged_by
            },
            "agreement": [
                {
                    "model_label": a.model_label,
                    "confirmed": a.confirmed,
                    "relabelled": a.relabelled,
                    "false_alarm": a.false_alarm,
                    "cant_tell": a.cant_tell,
                    "agreement": a.agreement,
                }
                for a in self.agreement
            ],
            "drift": None
            if self.drift is None
            else {
                "model_version": self.drift.model_version,
                "psi": self.drift.psi,
                "ks": self.drift.ks,
                "level": self.drift.level,
                "note": self.drift.note,
            },
            "alerts": list(self.alerts),
        }


def agreement_by_class(verdicts: list[records.VerdictRecord]) -> list[ClassAgreement]:
    table: dict[str, ClassAgreement] = {}
    for v in verdicts:
        row = table.setdefault(v.model_label, ClassAgreement(v.model_label))
        if v.verdict == CONFIRM_DEFECT:
            row.confirmed += 1
            if v.label != v.model_label and v.model_label.lower() not in GOOD_CLASS_NAMES:
                row.relabelled += 1  # the operator named another defect type (not: confirmed an unsure one)
        elif v.verdict == FALSE_ALARM:
            row.false_alarm += 1
        elif v.verdict == CANT_TELL:
            row.cant_tell += 1
    return sorted(table.values(), key=lambda r: -(r.judged + r.cant_tell))


def agreement_series(
    verdicts: list[records.VerdictRecord], edges: np.ndarray
) -> tuple[list[dt.datetime], np.ndarray, np.ndarray]:
    confirmed = np.zeros(len(edges) - 1)
    judged = np.zeros(len(edges) - 1)
    for v in verdicts:
        if v.verdict not in (CONFIRM_DEFECT, FALSE_ALARM):
            continue
        i = int(np.clip(np.searchsorted(edges, v.created_at.timestamp(), side="right") - 1, 0, len(edges) - 2))
        judged[i] += 1
        confirmed[i] += v.verdict == CONFIRM_DEFECT
    return starts(edges), confirmed, judged


def drift(session: Session, fr: records.Frames, q: DashboardQuery) -> Drift | None:
    """Scores of the newest model version in the window against its first frames (see ``stats``)."""
    if len(fr) == 0:
        return None
    version = str(fr.model_version[-1])
    reference, ref_end = records.reference_scores(
        session, version, line_id=q.line_id, camera_id=q.camera_id, frames_=REFERENCE_FRAMES
    )
    mask = fr.model_version == version
    if ref_end is not None:
        mask &= fr.t > ref_end.timestamp()
    current = fr.score[mask]
    if reference.size < MIN_DRIFT_FRAMES or current.size < MIN_DRIFT_FRAMES:
        return Drift(
            version,
            reference,
            current,
            None,
            None,
            "unknown",
            f"needs {MIN_DRIFT_FRAMES} frames in the reference (the first {REFERENCE_FRAMES} frames of "
            f"model {version}) and after it; has {reference.size} and {current.size}",
        )
    value = stats.psi(current, reference)
    return Drift(version, reference, current, value, stats.ks_statistic(current, reference), stats.drift_level(value))


def quality_series(
    session: Session, fr: records.Frames, edges: np.ndarray, q: DashboardQuery, since: dt.datetime
) -> list[QualitySeries]:
    """Per camera and signal: subgroup medians, and the camera's usual values from the week before the window
    (or the window itself when there is no earlier data)."""
    cameras = [c for c, _ in Counter(fr.camera.tolist()).most_common(MAX_QUALITY_CAMERAS)]
    base = records.frames(
        session, since - dt.timedelta(days=7), since, line_id=q.line_id, camera_id=q.camera_id, max_rows=100_000
    )
    idx = np.clip(np.searchsorted(edges, fr.t, side="right") - 1, 0, len(edges) - 2)
    out = []
    for camera in sorted(cameras):
        in_cam = fr.camera == camera
        base_cam = base.camera == camera
        for signal in SIGNALS:
            values = getattr(fr, signal)
            before = getattr(base, signal)[base_cam]
            note = "the 7 days before"
            if np.isfinite(before).sum() < 50:
                before, note = values[in_cam], "this window (no earlier data)"
            usual = stats.usual(before)
            medians = np.full(len(edges) - 1, np.nan)
            groups: dict[int, list[float]] = defaultdict(list)
            for i, v in zip(idx[in_cam], values[in_cam]):
                if np.isfinite(v):
                    groups[int(i)].append(float(v))
            for i, vs in groups.items():
                medians[i] = float(np.median(vs))
            outside = usual.outside(medians) & np.isfinite(medians) if usual else np.zeros_like(medians, bool)
            out.append(QualitySeries(camera, signal, starts(edges), medians, usual, outside, note))
    return out


def build(session: Session, q: DashboardQuery, now: dt.datetime | None = None) -> Dashboard:
    until = now or dt.datetime.now(dt.timezone.utc)
    since = until - WINDOWS[q.window]
    fr = records.frames(session, since, until, line_id=q.line_id, camera_id=q.camera_id)
    edges = subgroup_edges(since, until, q.subgroup)
    verdicts = records.current_verdicts(session, since, until, line_id=q.line_id, camera_id=q.camera_id)
    board = Dashboard(
        query=q,
        since=since,
        until=until,
        frames=len(fr),
        truncated=fr.truncated,
        decisions=dict(Counter(fr.decision.tolist())),
        rates=rate_series(fr, edges),
        agreement=agreement_by_class(verdicts),
        agreement_over_time=agreement_series(verdicts, edges),
        drift=drift(session, fr, q),
        quality=quality_series(session, fr, edges, q, since),
        model_versions=sorted(set(fr.model_version.tolist())),
        flagged_by=flagged_by(fr),
    )
    board.alerts = alerts(board)
    return board


def alerts(board: Dashboard) -> list[str]:
    """One line per thing an engineer should look at, newest subgroup first."""
    out = []
    for series in board.rates:
        flagged = np.flatnonzero(series.chart.out)
        for i in flagged[::-1][:3]:
            direction = "above" if series.chart.p[i] > series.chart.ucl[i] else "below"
            out.append(
                f"{series.name} rate {100 * series.chart.p[i]:.1f}% at {series.starts[i].astimezone():%a %H:%M}"
                f" is {direction} its control limit ({100 * series.chart.lcl[i]:.1f}%-"
                f"{100 * series.chart.ucl[i]:.1f}%)"
            )
    if board.drift is not None and board.drift.level in ("moderate", "major"):
        out.append(
            f"score distribution of model {board.drift.model_version}: {board.drift.level} shift "
            f"(PSI {board.drift.psi:.2f})"
        )
    for s in board.quality:
        flagged = np.flatnonzero(s.out)
        if flagged.size and s.usual is not None:
            i = flagged[-1]
            out.append(
                f"{s.camera_id} {s.signal} {s.medians[i]:.1f} at {s.starts[i].astimezone():%a %H:%M} is "
                f"outside its usual {s.usual.band()[0]:.1f}-{s.usual.band()[1]:.1f}"
            )
    return out
