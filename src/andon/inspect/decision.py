"""The three-way decision: pass, review (send to an operator) or reject.

The rule, applied identically by the inspector, the service, evaluation and calibration:

1. The defect score is ``s = P(defect)``, the sum of the defect classes' probabilities
   (``andon.evaluation.metrics.defect_score``).
2. On the card's ``thresholds.defect`` band: ``s < pass_below`` -> pass; ``s >= reject_at`` -> reject;
   otherwise (``pass_below <= s < reject_at``) -> review. With ``pass_below == reject_at`` there is no review
   band and the decision is two-way.
3. Each per-class band in ``thresholds.per_class`` (on a defect class's own probability ``p_c``) can only make
   the decision stricter, never more lenient: ``p_c >= reject_at_c`` -> reject; ``p_c >= pass_below_c`` ->
   at least review. A per-class band therefore lets one defect type (a crack, say) be caught at a lower
   probability than the others without loosening anything.

When every class is a defect class (a defect-type classifier such as NEU steel, which has no "ok" class),
``s = 1`` for every frame and every frame is rejected. That is correct: such a model says *which* defect a
part has, not *whether* it has one; its label is the useful output.

The ``reasons`` returned with each decision say which comparison decided it, in words an operator can read,
e.g. ``"P(defect) 0.93 >= reject_at 0.80"``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from andon.evaluation.metrics import defect_score
from andon.inspect.card import ThresholdBand, Thresholds

Decision = Literal["pass", "review", "reject"]
DECISIONS: tuple[Decision, ...] = ("pass", "review", "reject")
_RANK = {"pass": 0, "review": 1, "reject": 2}


def band_decision(score: float, band: ThresholdBand) -> Decision:
    """The decision one band gives one score."""
    if score >= band.reject_at:
        return "reject"
    if score < band.pass_below:
        return "pass"
    return "review"


def _reason(name: str, score: float, band: ThresholdBand, decision: Decision) -> str:
    if decision == "reject":
        return f"P({name}) {score:.2f} >= reject_at {band.reject_at:.2f}"
    if decision == "pass":
        return f"P({name}) {score:.2f} < pass_below {band.pass_below:.2f}"
    return f"P({name}) {score:.2f} in review band [{band.pass_below:.2f}, {band.reject_at:.2f})"


def decide(thresholds: Thresholds, probs_row: Sequence[float] | np.ndarray, classes: Sequence[str],
           defect_classes: Sequence[str]) -> tuple[Decision, list[str]]:
    """Decision and reasons for one frame's class probabilities (see the module docstring for the rule)."""
    classes = list(classes)
    probs_row = np.asarray(probs_row, dtype=np.float64).reshape(1, -1)
    score = float(defect_score(probs_row, [classes.index(c) for c in defect_classes])[0])
    decision = band_decision(score, thresholds.defect)
    reasons = [_reason("defect", score, thresholds.defect, decision)]
    for name, band in thresholds.per_class.items():
        p = float(probs_row[0, classes.index(name)])
        stricter = band_decision(p, band)
        if _RANK[stricter] > _RANK[decision]:
            decision = stricter
            reasons.append(_reason(name, p, band, stricter) + f" (per-class band for {name})")
    return decision, reasons


def decide_many(thresholds: Thresholds, probs: np.ndarray, classes: Sequence[str],
                defect_classes: Sequence[str]) -> np.ndarray:
    """Vectorised ``decide`` for an NxK probability matrix: an array of "pass" / "review" / "reject".

    Gives exactly the decisions ``decide`` gives row by row (same ``defect_score``, same comparisons).
    """
    probs = np.asarray(probs, dtype=np.float64)
    classes = list(classes)
    defect_idx = [classes.index(c) for c in defect_classes]
    score = defect_score(probs, defect_idx) if len(probs) else np.zeros(0)
    rank = decision_ranks(score, thresholds.defect)
    for name, band in thresholds.per_class.items():
        rank = np.maximum(rank, decision_ranks(probs[:, classes.index(name)], band))
    return np.asarray(DECISIONS, dtype=object)[rank].astype(str) if len(rank) else np.zeros(0, dtype="<U6")


def decision_ranks(score: np.ndarray, band: ThresholdBand) -> np.ndarray:
    """0 (pass), 1 (review) or 2 (reject) per score, for one band."""
    score = np.asarray(score, dtype=np.float64)
    return np.where(score >= band.reject_at, 2, np.where(score < band.pass_below, 0, 1)).astype(np.int64)
