"""Rates per subgroup (hour, shift or day of plant time) on p-charts, and which signal flagged the flagged
frames: the figures the line dashboard and the shift report both draw from the same ``records.Frames``.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from dataclasses import dataclass, field

import numpy as np

from andon.service.quality import reasons, records, stats

SUBGROUPS = {"hour": 3600, "shift": 8 * 3600, "day": 86400}
#: shifts start at 06:00, 14:00 and 22:00 plant time
SHIFT_ORIGIN_HOURS = 6


@dataclass
class RateSeries:
    name: str
    starts: list[dt.datetime]
    chart: stats.PChart


@dataclass
class SignalShare:
    """Flagged frames (review and reject) one signal decided, and their share of all flagged frames."""

    signal: str
    frames: int
    share: float | None
    #: per_class: frames per defect class band; anomaly: {"unknown defect": n} (the classifier passed them)
    detail: dict[str, int] = field(default_factory=dict)

    @property
    def title(self) -> str:
        return reasons.SIGNAL_TITLES[self.signal]


def flagged_by(fr: records.Frames) -> list[SignalShare]:
    """Flagged frames per deciding signal (``reasons.SIGNALS``; unknown defects count under anomaly, where
    ``detail`` says how many they are). Signals that flagged nothing are left out, except the classifier."""
    flagged = fr.decision != "pass"
    total = int(flagged.sum())
    counts: Counter[str] = Counter()
    detail: dict[str, Counter[str]] = defaultdict(Counter)
    for reason in fr.reason[flagged].tolist():
        signal = reasons.signal_of(reason) or reasons.NOT_RECORDED
        counts[signal] += 1
        if signal in (reasons.PER_CLASS, reasons.ANOMALY) and reason != "anomaly":
            detail[signal][reason] += 1
    return [
        SignalShare(s, counts[s], counts[s] / total if total else None, dict(sorted(detail[s].items())))
        for s in reasons.SIGNALS
        if counts[s] or s == reasons.CLASSIFIER
    ]


def subgroup_edges(since: dt.datetime, until: dt.datetime, subgroup: str) -> np.ndarray:
    """Subgroup boundaries (epoch seconds) aligned to plant time: whole hours, shifts from 06:00, days."""
    width = SUBGROUPS[subgroup]
    local = since.astimezone()
    if subgroup == "hour":
        start = local.replace(minute=0, second=0, microsecond=0)
    else:
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        origin = midnight + dt.timedelta(hours=SHIFT_ORIGIN_HOURS if subgroup == "shift" else 0)
        while origin > local:
            origin -= dt.timedelta(seconds=width)
        start = origin + dt.timedelta(seconds=width * int((local - origin).total_seconds() // width))
    t0, t1 = start.timestamp(), until.timestamp()
    count = max(1, int(np.ceil((t1 - t0) / width)))
    return t0 + width * np.arange(count + 1, dtype=np.float64)


def starts(edges: np.ndarray) -> list[dt.datetime]:
    """The start of each subgroup, as aware UTC datetimes."""
    return [dt.datetime.fromtimestamp(t, tz=dt.timezone.utc) for t in edges[:-1]]


def rate_series(fr: records.Frames, edges: np.ndarray) -> list[RateSeries]:
    idx = np.clip(np.searchsorted(edges, fr.t, side="right") - 1, 0, len(edges) - 2)
    n = np.bincount(idx, minlength=len(edges) - 1)
    out = []
    for name in ("reject", "review"):
        x = np.bincount(idx, weights=(fr.decision == name).astype(np.float64), minlength=len(edges) - 1)
        out.append(RateSeries(name, starts(edges), stats.p_chart(x, n)))
    return out
