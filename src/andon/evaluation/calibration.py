"""Calibrating the three-way decision to the plant's targets.

A plant states what it can live with: at most ``target_escape`` of defective parts passed (say 0.5 %), and
perhaps at most ``max_false_reject`` of good parts rejected. ``calibrate`` turns scores on a labelled
calibration set (the validation split) into the band that meets both with the fewest parts sent to review:

- ``pass_below``: the largest threshold whose escape rate on *new* parts is expected to stay within the target.
  Taking the largest threshold whose escape rate on the calibration data is within the target would overshoot
  on new parts: with n defective parts and the threshold placed on the (k+1)-th lowest defect score, a new
  defective part falls below it with probability (k+1)/(n+1), not k/n. So ``pass_below`` is placed on the k-th
  lowest defect score with k = floor(target * (n+1)) (the split-conformal rank): a new defective part, exchangeable
  with the calibration ones, escapes with probability at most k/(n+1) <= target, and on the calibration data
  the escape rate is (k-1)/n <= target. This needs k >= 1, i.e. n >= 1/target - 1 defective parts: 199 for
  0.5 %. With fewer, the target cannot be verified, and ``calibrate`` says how many are needed.
- ``reject_at``: the smallest threshold >= ``pass_below`` whose false-reject rate on new good parts is expected
  to stay within ``max_false_reject`` (the same rank argument on the good parts' scores). Without
  ``max_false_reject`` it equals ``pass_below``: no review band, a two-way decision.
- ``max_review`` optionally caps the share of parts sent to review; when the two targets need a wider band,
  calibration fails with the figures, instead of returning thresholds that do not do what was asked.

Per-class bands (``ClassScores``) are calibrated the same way on one defect class's own probability, with that
class's parts as the defective ones, so a critical defect type gets its own escape target. Thresholds are
rounded to 6 decimals *towards the safe side* (``pass_below`` down, ``reject_at`` up), which keeps the card
readable and immune to float32 noise between batch and single-frame inference.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field

import numpy as np

from andon.errors import CalibrationError
from andon.inspect.card import ThresholdBand, Thresholds
from andon.inspect.decision import DecisionPolicy

_ROUND = 1_000_000  # thresholds are multiples of 1e-6


@dataclass(frozen=True)
class ClassScores:
    """One defect class to give its own band: which parts are of that class, and their P(class)."""

    name: str
    is_class: np.ndarray
    scores: np.ndarray
    target_escape: float | None = None  # None: the overall target


@dataclass(frozen=True)
class BandReport:
    """How one band was chosen and what it does on the calibration data (that band alone)."""

    name: str
    pass_below: float
    reject_at: float
    n_defective: int
    n_good: int
    target_escape: float
    max_false_reject: float | None
    escape_rate: float
    false_reject_rate: float
    #: expected escape rate on new parts: k/(n+1)
    escape_bound: float


@dataclass(frozen=True)
class CalibrationResult:
    """Calibrated thresholds and what they achieve on the calibration data, all bands together."""

    thresholds: Thresholds
    n: int
    n_defective: int
    n_good: int
    escape_rate: float
    false_reject_rate: float
    review_rate: float
    bands: list[BandReport] = field(default_factory=list)
    description: str = ""

    def as_dict(self) -> dict:
        out = asdict(self)
        out["thresholds"] = self.thresholds.model_dump()
        return out


def required_samples(target: float) -> int:
    """Samples needed before a rate of ``target`` can be verified by the rank rule (k >= 1)."""
    return max(1, math.ceil(1.0 / target - 1.0 - 1e-9))


def pass_below_for(
    defect_scores: np.ndarray, target_escape: float, *, what: str = "defective parts"
) -> tuple[float, float]:
    """``pass_below`` for one band and the escape bound k/(n+1) it guarantees on new parts."""
    _check_rate("target escape rate", target_escape)
    scores = np.sort(np.asarray(defect_scores, dtype=np.float64))
    n = len(scores)
    if n == 0:
        raise CalibrationError(
            f"no {what} in the calibration data: the escape rate cannot be measured; "
            "calibrate on data with defective parts"
        )
    k = math.floor(target_escape * (n + 1) + 1e-9)
    if k < 1:
        raise CalibrationError(
            f"too few {what} to verify an escape rate of {target_escape:.2%}: {n} in the calibration data, "
            f"at least {required_samples(target_escape)} needed (or relax the target to "
            f"{1.0 / (n + 1):.2%} or more)"
        )
    pass_below = math.floor(scores[k - 1] * _ROUND) / _ROUND  # rounded down: stricter
    return pass_below, k / (n + 1)


def reject_at_for(good_scores: np.ndarray, max_false_reject: float, *, floor: float) -> float:
    """The smallest ``reject_at >= floor`` whose false-reject rate on new good parts stays within the cap."""
    _check_rate("max false-reject rate", max_false_reject, allow_one=True)
    scores = np.sort(np.asarray(good_scores, dtype=np.float64))[::-1]  # descending
    n = len(scores)
    if n == 0:
        raise CalibrationError(
            "no good parts in the calibration data: the false-reject rate cannot be measured; "
            "drop --max-false-reject or calibrate on data with good parts"
        )
    allowed = math.floor(max_false_reject * (n + 1) + 1e-9) - 1  # good parts that may score >= reject_at
    if allowed < 0:
        raise CalibrationError(
            f"too few good parts to verify a false-reject rate of {max_false_reject:.2%}: {n} in the calibration "
            f"data, at least {required_samples(max_false_reject)} needed"
        )
    if allowed >= n:
        return floor
    above = float(scores[allowed])  # reject_at must lie strictly above this score
    reject_at = (math.floor(above * _ROUND) + 1) / _ROUND
    while reject_at <= above:  # float rounding of the division
        reject_at += 1.0 / _ROUND
    if reject_at > 1.0:
        raise CalibrationError(
            f"a false-reject rate of {max_false_reject:.2%} is impossible: {int((scores >= 1.0).sum())} of {n} good "
            f"parts score P(defect) = 1.0, more than the {allowed} allowed"
        )
    return max(floor, reject_at)


def calibrate_band(
    positive_scores: np.ndarray,
    good_scores: np.ndarray,
    *,
    name: str,
    target_escape: float,
    max_false_reject: float | None,
) -> BandReport:
    """One band: ``pass_below`` from the positives (defective parts), ``reject_at`` from the good parts."""
    positive_scores = np.asarray(positive_scores, dtype=np.float64)
    good_scores = np.asarray(good_scores, dtype=np.float64)
    what = "defective parts" if name == "defect" else f"parts of class '{name}'"
    pass_below, bound = pass_below_for(positive_scores, target_escape, what=what)
    reject_at = (
        pass_below if max_false_reject is None else reject_at_for(good_scores, max_false_reject, floor=pass_below)
    )
    return BandReport(
        name=name,
        pass_below=pass_below,
        reject_at=reject_at,
        n_defective=len(positive_scores),
        n_good=len(good_scores),
        target_escape=target_escape,
        max_false_reject=max_false_reject,
        escape_rate=float((positive_scores < pass_below).mean()),
        false_reject_rate=float((good_scores >= reject_at).mean()) if len(good_scores) else float("nan"),
        escape_bound=bound,
    )


def calibrate(
    is_defective: np.ndarray,
    scores: np.ndarray,
    *,
    target_escape: float = 0.005,
    max_false_reject: float | None = None,
    max_review: float | None = None,
    per_class: Sequence[ClassScores] = (),
    source: str = "calibration data",
) -> CalibrationResult:
    """Thresholds meeting ``target_escape`` (and ``max_false_reject``) with the smallest review band.

    ``scores`` is P(defect) per part; see the module docstring for the rule. Raises ``CalibrationError``,
    with the figures, when the targets cannot be met or verified on this data.
    """
    bad, scores = _check_inputs(is_defective, scores)
    if max_review is not None:
        _check_rate("max review rate", max_review, allow_zero=True, allow_one=True)
    bands = [
        calibrate_band(
            scores[bad], scores[~bad], name="defect", target_escape=target_escape, max_false_reject=max_false_reject
        )
    ]
    for cls in per_class:
        is_class, class_scores = _check_class(cls, bad, len(scores))
        bands.append(
            calibrate_band(
                class_scores[is_class],
                class_scores[~bad],
                name=cls.name,
                target_escape=cls.target_escape or target_escape,
                max_false_reject=max_false_reject,
            )
        )
    thresholds = Thresholds(
        defect=ThresholdBand(pass_below=bands[0].pass_below, reject_at=bands[0].reject_at),
        per_class={b.name: ThresholdBand(pass_below=b.pass_below, reject_at=b.reject_at) for b in bands[1:]},
    )
    rank = DecisionPolicy(thresholds).decide_scores({"defect": scores, **{c.name: c.scores for c in per_class}}).rank
    result = _result(thresholds, bad, rank, bands, source)
    _check_combined(result, max_false_reject, max_review)
    return dataclasses.replace(result, thresholds=thresholds.model_copy(update={"source": result.description}))


def review_floor_for(scores: np.ndarray, max_review: float, *, ceiling: float) -> float:
    """The smallest ``pass_below <= ceiling`` whose band [pass_below, ceiling) is expected to hold at most
    ``max_review`` of new parts (the rank rule on all parts' scores, as ``reject_at_for`` on the good ones)."""
    _check_rate("max review rate", max_review, allow_zero=True, allow_one=True)
    scores = np.asarray(scores, dtype=np.float64)
    n = len(scores)
    below = np.sort(scores[scores < ceiling])[::-1]  # descending: the first ones enter the band first
    allowed = math.floor(max_review * (n + 1) + 1e-9) - 1  # parts that may score in [pass_below, ceiling)
    if allowed < 1 or len(below) == 0:
        return ceiling
    if allowed >= len(below):
        return 0.0
    at = float(below[allowed])  # pass_below must lie strictly above this score
    pass_below = (math.floor(at * _ROUND) + 1) / _ROUND
    while pass_below <= at:
        pass_below += 1.0 / _ROUND
    return min(ceiling, pass_below)


def calibrate_budget(
    is_defective: np.ndarray,
    scores: np.ndarray,
    *,
    max_false_reject: float,
    max_review: float,
    source: str = "calibration data",
) -> CalibrationResult:
    """The band that catches the most defective parts within the plant's two budgets, for data that cannot
    verify an escape target (too few defective parts): ``reject_at`` at the false-reject cap (rank rule on the
    good parts) and ``pass_below`` as low as the review budget allows (rank rule on all parts). The escape rate
    it gives is measured, not guaranteed; callers say so."""
    bad, scores = _check_inputs(is_defective, scores)
    reject_at = reject_at_for(scores[~bad], max_false_reject, floor=0.0)
    pass_below = review_floor_for(scores, max_review, ceiling=reject_at)
    thresholds = Thresholds(defect=ThresholdBand(pass_below=pass_below, reject_at=reject_at))
    rank = DecisionPolicy(thresholds).decide_scores({"defect": scores}).rank
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    escape = float((rank[bad] == 0).mean()) if n_bad else float("nan")
    false_reject = float((rank[~bad] == 2).mean()) if n_good else float("nan")
    review = float((rank == 1).mean())
    band = BandReport(
        name="defect",
        pass_below=pass_below,
        reject_at=reject_at,
        n_defective=n_bad,
        n_good=n_good,
        target_escape=float("nan"),
        max_false_reject=max_false_reject,
        escape_rate=escape,
        false_reject_rate=false_reject,
        escape_bound=float("nan"),
    )
    text = (
        f"budget band on {source} ({len(bad)} parts, {n_bad} defective: too few to verify an escape target): "
        f"false reject <= {max_false_reject:.2%} -> reject_at {reject_at:.6g}; review <= {max_review:.2%} -> "
        f"pass_below {pass_below:.6g}; measured escape {escape:.2%} (not verified), false reject "
        f"{false_reject:.2%}, review {review:.2%}"
    )
    return CalibrationResult(
        thresholds=thresholds.model_copy(update={"source": text}),
        n=len(bad),
        n_defective=n_bad,
        n_good=n_good,
        escape_rate=escape,
        false_reject_rate=false_reject,
        review_rate=review,
        bands=[band],
        description=text,
    )


def calibrate_probs(
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: Sequence[str],
    defect_classes: Sequence[str],
    *,
    target_escape: float = 0.005,
    max_false_reject: float | None = None,
    max_review: float | None = None,
    per_class: Mapping[str, float | None] | Sequence[str] = (),
    source: str = "calibration data",
) -> CalibrationResult:
    """``calibrate`` from class probabilities: P(defect) is the defect classes' summed probability.

    ``per_class`` names defect classes to give their own band, optionally with their own escape target
    (``{"crack": 0.001}``).
    """
    from andon.inspect.decision import defect_score

    classes = list(classes)
    y_true = np.asarray(y_true, dtype=np.int64)
    probs = np.asarray(probs, dtype=np.float64)
    defect_idx = [classes.index(c) for c in defect_classes]
    targets = dict(per_class) if isinstance(per_class, Mapping) else dict.fromkeys(per_class)
    extra = []
    for name, target in targets.items():
        if name not in defect_classes:
            raise CalibrationError(
                f"per-class calibration for {name!r}: not one of the defect classes {list(defect_classes)}"
            )
        i = classes.index(name)
        extra.append(ClassScores(name, y_true == i, probs[:, i], target))
    return calibrate(
        np.isin(y_true, defect_idx),
        defect_score(probs, defect_idx),
        target_escape=target_escape,
        max_false_reject=max_false_reject,
        max_review=max_review,
        per_class=extra,
        source=source,
    )


def _result(
    thresholds: Thresholds, bad: np.ndarray, rank: np.ndarray, bands: list[BandReport], source: str
) -> CalibrationResult:
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    escape = float((rank[bad] == 0).mean())
    false_reject = float((rank[~bad] == 2).mean()) if n_good else float("nan")
    review = float((rank == 1).mean())
    main = bands[0]
    text = (
        f"calibrated on {source} ({len(bad)} parts, {n_bad} defective): escape <= {main.target_escape:.2%} "
        f"-> pass_below {main.pass_below:.6g}"
    )
    text += (
        f"; false reject <= {main.max_false_reject:.2%} -> reject_at {main.reject_at:.6g}"
        if main.max_false_reject is not None
        else "; no false-reject target -> two-way, reject_at = pass_below"
    )
    for b in bands[1:]:
        text += f"; {b.name}: escape <= {b.target_escape:.2%} -> [{b.pass_below:.6g}, {b.reject_at:.6g})"
    text += f"; measured escape {escape:.2%}, false reject {false_reject:.2%}, review {review:.2%}"
    return CalibrationResult(
        thresholds=thresholds,
        n=len(bad),
        n_defective=n_bad,
        n_good=n_good,
        escape_rate=escape,
        false_reject_rate=false_reject,
        review_rate=review,
        bands=bands,
        description=text,
    )


def _check_combined(result: CalibrationResult, max_false_reject: float | None, max_review: float | None) -> None:
    band = result.thresholds.defect
    if max_review is not None and result.review_rate > max_review + 1e-12:
        raise CalibrationError(
            f"the targets cannot both be met within a review rate of {max_review:.2%}: escape <= "
            f"{result.bands[0].target_escape:.2%} needs pass_below {band.pass_below:.6g}, false reject <= "
            f"{(max_false_reject or 0):.2%} needs reject_at {band.reject_at:.6g}, and that band sends "
            f"{result.review_rate:.2%} of parts to review; relax a target or allow more review"
        )
    if max_false_reject is not None and result.false_reject_rate > max_false_reject + 1e-12:
        raise CalibrationError(
            f"with the per-class bands the false-reject rate is {result.false_reject_rate:.2%}, over the "
            f"{max_false_reject:.2%} allowed; relax the per-class targets or the false-reject cap"
        )


def _check_inputs(is_defective: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    bad = np.asarray(is_defective, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    if len(bad) != len(scores):
        raise CalibrationError(f"{len(bad)} labels but {len(scores)} scores; give one score per part")
    if len(scores) and (not np.all(np.isfinite(scores)) or scores.min() < 0.0 or scores.max() > 1.0 + 1e-6):
        raise CalibrationError(
            "scores must be probabilities in [0, 1]; got values outside "
            f"(min {np.nanmin(scores):.4g}, max {np.nanmax(scores):.4g})"
        )
    return bad, np.clip(scores, 0.0, 1.0)


def _check_class(cls: ClassScores, bad: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    is_class = np.asarray(cls.is_class, dtype=bool).ravel()
    scores = np.asarray(cls.scores, dtype=np.float64).ravel()
    if len(is_class) != n or len(scores) != n:
        raise CalibrationError(f"per-class scores for {cls.name!r} have {len(scores)} entries, expected {n}")
    if np.any(is_class & ~bad):
        raise CalibrationError(f"parts of class {cls.name!r} must count as defective")
    if cls.target_escape is not None:
        _check_rate(f"target escape rate for {cls.name!r}", cls.target_escape)
    return is_class, scores


def _check_rate(what: str, value: float, *, allow_zero: bool = False, allow_one: bool = False) -> None:
    low_ok = value >= 0.0 if allow_zero else value > 0.0
    high_ok = value <= 1.0 if allow_one else value < 1.0
    if not (isinstance(value, (int, float)) and math.isfinite(value) and low_ok and high_ok):
        interval = f"{'[' if allow_zero else '('}0, 1{']' if allow_one else ')'}"
        raise CalibrationError(
            f"{what} {value!r} must be in {interval}"
            + (
                "; an escape rate of exactly 0 can never be verified on finite data"
                if value == 0 and not allow_zero
                else ""
            )
        )
