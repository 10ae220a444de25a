"""The decision targets a model is held to: what to say when calibration cannot meet them, and weak cards.

Torch-free (``andon thresholds`` imports it on a serving box). Two things live here:

- ``shortfall``: why the targets (``target_escape``, ``max_false_reject``, ``max_review``) cannot be met on
  the calibration data, as one paragraph with the figures and the choices (more labelled images, a review
  budget, a looser target, each with what it would give on this data). ``andon train`` prints it and puts it
  in the report, ``andon thresholds --calibrate`` fails with it.
- ``weak_reasons``: whether a card rejects more good parts (``val_false_reject_rate`` above
  ``max_reject_good``) or sends more parts to review (``val_review_rate`` above ``max_review``) than stated.
  Training records the reasons in the card (``ModelCard.threshold_warnings``); ``andon export`` refuses such
  a card without ``--allow-weak-thresholds``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from andon.errors import CalibrationError

#: looser targets tried when a band needs more review than the budget (ascending)
LOOSER_ESCAPE = (0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2)
LOOSER_CAPS = (0.01, 0.02, 0.03, 0.05, 0.1, 0.2)


@dataclass(frozen=True)
class Shortfall:
    """Targets that cannot be met on the calibration data: which, and one paragraph saying what to do."""

    #: defective: too few defective parts to verify the escape target; good: too few good parts for the
    #: false-reject cap; review: the band meets both but needs more review than the budget; other: the
    #: calibration failed for another reason (the paragraph quotes it)
    kind: Literal["defective", "good", "review", "other"]
    paragraph: str


def required(rate: float) -> int:
    """Parts needed before the rank rule can verify ``rate`` (k >= 1): ceil(1/rate - 1)."""
    return max(1, math.ceil(1.0 / rate - 1.0 - 1e-9))


def smallest_verifiable(n: int) -> float:
    """The smallest rate ``n`` parts can verify, 1/(n+1), rounded up to two significant digits."""
    rate = 1.0 / (n + 1)
    digits = 1 - math.floor(math.log10(rate))
    return math.ceil(rate * 10**digits - 1e-9) / 10**digits


def shortfall(
    is_defective: np.ndarray,
    scores: np.ndarray,
    *,
    target_escape: float,
    max_false_reject: float | None,
    max_review: float | None,
    error: str | None = None,
    review_rate: float | None = None,
    where: str = "the validation split",
    val_fraction: float | None = None,
    keys: Mapping[str, str] | None = None,
) -> Shortfall | None:
    """Why the targets are not met on this data, or None when they are.

    ``error`` is the calibration's own message when it raised; ``review_rate`` the review share of the band it
    returned otherwise. ``keys`` names the settings in the caller's terms (recipe keys for ``andon train``,
    options for ``andon thresholds``); ``val_fraction`` turns validation counts into data-set counts.
    """
    names = {
        "target_escape": "decision.target_escape",
        "max_false_reject": "decision.max_false_reject",
        "max_review": "decision.max_review",
        "no_cap": "null",
        **(keys or {}),
    }
    bad = np.asarray(is_defective, dtype=bool).ravel()
    scores = np.asarray(scores, dtype=np.float64).ravel()
    n_bad, n_good = int(bad.sum()), int((~bad).sum())
    counts = f"it holds {n_bad} defective and {n_good} good parts"
    scale = (
        (lambda n: f" (about {math.ceil(n / val_fraction)} in the whole data set at val_fraction {val_fraction:g})")
        if val_fraction
        else (lambda n: "")
    )
    if n_bad < required(target_escape):
        need = required(target_escape)
        choices = [f"label more defective images: at least {need} defective parts in {where}{scale(need)}"]
        if n_bad:
            looser = smallest_verifiable(n_bad)
            choices.append(
                f"loosen {names['target_escape']} to {looser:g} (the smallest escape rate {n_bad} "
                f"defective parts can verify{_gives(bad, scores, looser, max_false_reject)})"
            )
        if "budget" in names and max_false_reject is not None and max_review is not None:
            choices.append(
                f"calibrate the budget band with {names['budget']}: the most defective parts caught within the "
                f"false-reject cap and the review budget (its escape rate is measured, not verified)"
            )
        return Shortfall(
            "defective",
            f"too few defective parts to verify an escape rate of {target_escape:.2%}: "
            f"{n_bad} in {where}, at least {need} needed ({counts}). {_choices(choices)}",
        )
    if max_false_reject is not None and n_good < required(max_false_reject):
        need = required(max_false_reject)
        choices = [f"add good images: at least {need} good parts in {where}{scale(need)}"]
        if n_good:
            looser = smallest_verifiable(n_good)
            choices.append(
                f"loosen {names['max_false_reject']} to {looser:g} (the smallest false-reject rate "
                f"{n_good} good parts can verify{_gives(bad, scores, target_escape, looser)})"
            )
        choices.append(
            f"drop the cap ({names['max_false_reject']} {names.get('no_cap', 'null')}: a two-way band, "
            "every good part above pass_below rejected)"
        )
        return Shortfall(
            "good",
            f"too few good parts to verify a false-reject rate of {max_false_reject:.2%}: "
            f"{n_good} in {where}, at least {need} needed ({counts}). {_choices(choices)}",
        )
    if error is not None:
        return Shortfall(
            "other",
            f"the targets (escape <= {target_escape:.2%}"
            + (f", false reject <= {max_false_reject:.2%}" if max_false_reject is not None else "")
            + f") cannot be met on {where} ({n_bad} defective, {n_good} good parts): {error}. "
            + _choices(
                [
                    f"loosen {names['target_escape']} or {names['max_false_reject']}",
                    "train on more images so that the model separates defective from good parts better",
                ]
            ),
        )
    if max_review is None or review_rate is None or review_rate <= max_review + 1e-12:
        return None
    choices = [
        f"allow {names['max_review']} = {math.ceil(review_rate * 100) / 100:g} (operators review "
        f"{review_rate:.1%} of the parts)"
    ]
    for target in LOOSER_ESCAPE:
        if target > target_escape and n_bad >= required(target):
            review = _review(bad, scores, target, max_false_reject)
            if review is not None and review <= max_review + 1e-12:
                choices.append(f"loosen {names['target_escape']} to {target:g} (review {review:.1%})")
                break
    if max_false_reject is not None:
        for cap in LOOSER_CAPS:
            if cap > max_false_reject and n_good >= required(cap):
                review = _review(bad, scores, target_escape, cap)
                if review is not None and review <= max_review + 1e-12:
                    choices.append(f"loosen {names['max_false_reject']} to {cap:g} (review {review:.1%})")
                    break
    choices.append(
        "train on more images, defective ones above all, so that fewer parts score between the two thresholds"
    )
    return Shortfall(
        "review",
        f"the band that meets escape <= {target_escape:.2%}"
        + (f" and false reject <= {max_false_reject:.2%}" if max_false_reject is not None else "")
        + f" sends {review_rate:.1%} of the parts in {where} to review, above the review budget of "
        f"{max_review:.1%} ({names['max_review']}). {_choices(choices)}",
    )


def _choices(items: Sequence[str]) -> str:
    if len(items) == 1:
        return f"To meet it: {items[0]}."
    return "Choices: " + "; ".join(items[:-1]) + f"; or {items[-1]}."


def _review(bad: np.ndarray, scores: np.ndarray, target: float, cap: float | None) -> float | None:
    from andon.evaluation.calibration import calibrate

    try:
        return calibrate(bad, scores, target_escape=target, max_false_reject=cap).review_rate
    except CalibrationError:
        return None


def _gives(bad: np.ndarray, scores: np.ndarray, target: float, cap: float | None) -> str:
    review = _review(bad, scores, target, cap)
    return "" if review is None else f"; on this data it sends {review:.1%} to review"


def weak_reasons(
    metrics: Mapping[str, float], *, max_reject_good: float | None, max_review: float | None, split: str = "val"
) -> list[str]:
    """What makes a card weak, judged on its own ``{split}_false_reject_rate`` and ``{split}_review_rate``."""
    reasons = []
    false_reject = metrics.get(f"{split}_false_reject_rate")
    review = metrics.get(f"{split}_review_rate")
    if max_reject_good is not None and false_reject is not None and false_reject > max_reject_good + 1e-12:
        reasons.append(
            f"it rejects {false_reject:.1%} of the {split} good parts, above the limit of "
            f"{max_reject_good:.1%} (decision.max_reject_good)"
        )
    if max_review is not None and review is not None and review > max_review + 1e-12:
        reasons.append(
            f"it sends {review:.1%} of the {split} parts to review, above the budget of "
            f"{max_review:.1%} (decision.max_review)"
        )
    return reasons


def weak_sentence(reasons: Sequence[str]) -> str:
    """The warning for a weak card, in one sentence (training summary, report, ``andon export``)."""
    return (
        "Weak thresholds: " + "; ".join(reasons) + ". `andon export` refuses this model without "
        "--allow-weak-thresholds: recalibrate on more labelled parts (andon thresholds MODEL --calibrate DATA), "
        "retrain with more images, or change the limits (decision.max_review, decision.max_reject_good)."
    )
