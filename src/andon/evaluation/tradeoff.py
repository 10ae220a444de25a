"""The escape / false-reject / review trade-off, as numbers and as one picture an engineer can choose from.

Every three-way band (pass_below, reject_at) on P(defect) is described by three curves over a threshold t:

- ``escape[t]``: share of defective parts with score < t (the escape rate if ``pass_below = t``)
- ``false_reject[t]``: share of good parts with score >= t (the false-reject rate if ``reject_at = t``)
- ``below[t]``: share of all parts with score < t, so the review rate of a band is ``below[ra] - below[pb]``

Widening the band (lower ``pass_below``, higher ``reject_at``) buys fewer escapes and fewer false rejects
with more review. ``operating_points`` runs the calibration for a grid of targets so the report can show the
choices side by side, and ``andon.evaluation.plots.plot_tradeoff`` draws it with the chosen band marked.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from andon.errors import CalibrationError
from andon.inspect.card import ThresholdBand

#: escape-rate targets and false-reject caps the report tabulates (None: two-way, no review band)
DEFAULT_TARGETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.02, 0.05)
DEFAULT_CAPS: tuple[float | None, ...] = (None, 0.01, 0.02, 0.05)


@dataclass(frozen=True)
class TradeoffCurve:
    """The three rate curves over a grid of thresholds (ascending)."""

    thresholds: np.ndarray
    escape: np.ndarray
    false_reject: np.ndarray
    below: np.ndarray
    n_defective: int
    n_good: int

    def rates(self, band: ThresholdBand) -> dict[str, float]:
        """Escape, false-reject and review rate of one band (P(defect) alone, no per-class bands)."""
        escape, _, below_pb = self._at(band.pass_below)
        _, false_reject, below_ra = self._at(band.reject_at)
        return {"escape_rate": escape, "false_reject_rate": false_reject, "review_rate": below_ra - below_pb}

    def _at(self, t: float) -> tuple[float, float, float]:
        # the rates are step functions changing just above each score; the grid holds every distinct score
        # (unless thinned), so the first grid point >= t has exactly the rates of t
        i = min(int(np.searchsorted(self.thresholds, t, side="left")), len(self.thresholds) - 1)
        return float(self.escape[i]), float(self.false_reject[i]), float(self.below[i])

    def as_dict(self) -> dict[str, list[float] | int]:
        return {
            "thresholds": self.thresholds.tolist(),
            "escape": self.escape.tolist(),
            "false_reject": self.false_reject.tolist(),
            "below": self.below.tolist(),
            "n_defective": self.n_defective,
            "n_good": self.n_good,
        }


def tradeoff_curve(
    is_defective: np.ndarray, scores: np.ndarray, *, extra: Sequence[float] = (), max_points: int = 2001
) -> TradeoffCurve:
    """Rates at every distinct score (thinned to ``max_points`` by quantile), 0, 1 and the ``extra`` thresholds."""
    bad = np.asarray(is_defective, dtype=bool)
    scores = np.asarray(scores, dtype=np.float64)
    grid = np.unique(scores)
    if len(grid) > max_points:
        grid = np.unique(np.quantile(scores, np.linspace(0, 1, max_points)))
    grid = np.unique(np.r_[0.0, grid, 1.0, np.nextafter(1.0, 2.0), np.asarray(extra, dtype=np.float64)])
    sorted_bad, sorted_good, sorted_all = np.sort(scores[bad]), np.sort(scores[~bad]), np.sort(scores)
    n_bad, n_good = len(sorted_bad), len(sorted_good)
    escape = np.searchsorted(sorted_bad, grid, side="left") / max(n_bad, 1)
    false_reject = (n_good - np.searchsorted(sorted_good, grid, side="left")) / max(n_good, 1)
    below = np.searchsorted(sorted_all, grid, side="left") / max(len(scores), 1)
    if n_bad == 0:
        escape = np.full_like(grid, np.nan)
    if n_good == 0:
        false_reject = np.full_like(grid, np.nan)
    return TradeoffCurve(grid, escape, false_reject, below, n_bad, n_good)


@dataclass(frozen=True)
class OperatingPoint:
    """One calibrated choice: the targets, the band they need, and the rates it gives on this data."""

    target_escape: float
    max_false_reject: float | None
    pass_below: float | None
    reject_at: float | None
    escape_rate: float | None
    false_reject_rate: float | None
    review_rate: float | None
    #: why no band could be chosen for these targets (too few defective parts, ...)
    error: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def operating_points(
    is_defective: np.ndarray,
    scores: np.ndarray,
    *,
    targets: Sequence[float] = DEFAULT_TARGETS,
    caps: Sequence[float | None] = DEFAULT_CAPS,
) -> list[OperatingPoint]:
    """Calibrate for every (escape target, false-reject cap) pair; failures are kept, with their reason."""
    from andon.evaluation.calibration import calibrate

    points = []
    for target in _with_smallest_verifiable(targets, int(np.asarray(is_defective, dtype=bool).sum())):
        for cap in caps:
            try:
                result = calibrate(is_defective, scores, target_escape=target, max_false_reject=cap)
            except CalibrationError as exc:
                points.append(OperatingPoint(target, cap, None, None, None, None, None, error=exc.message))
                continue
            band = result.thresholds.defect
            points.append(
                OperatingPoint(
                    target,
                    cap,
                    band.pass_below,
                    band.reject_at,
                    result.escape_rate,
                    result.false_reject_rate,
                    result.review_rate,
                )
            )
    return points


def _with_smallest_verifiable(targets: Sequence[float], n_defective: int) -> list[float]:
    """``targets`` plus the smallest escape target these defective parts can verify, 1/(n+1) rounded up to two
    significant digits, when some of the targets are below it: the report then always shows what *can* be had."""
    targets = sorted(targets)
    if n_defective < 1:
        return targets
    smallest = 1.0 / (n_defective + 1)
    digits = 1 - math.floor(math.log10(smallest))
    smallest = math.ceil(smallest * 10**digits) / 10**digits
    if targets and smallest > targets[0] and smallest < 1.0 and smallest not in targets:
        targets = sorted({*targets, smallest})
    return targets
