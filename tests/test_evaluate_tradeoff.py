"""The trade-off curve agrees with the decision rule, operating points with calibration, and the plot is drawn."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from andon.evaluation.evaluate import evaluate_probs, jsonable
from andon.evaluation.metrics import decision_rates
from andon.evaluation.plots import plot_tradeoff
from andon.evaluation.tradeoff import operating_points, tradeoff_curve
from andon.inspect import DecisionPolicy, ThresholdBand, Thresholds


def sample(seed: int = 0, n_good: int = 900, n_bad: int = 300):
    rng = np.random.default_rng(seed)
    bad = np.r_[np.zeros(n_good, bool), np.ones(n_bad, bool)]
    return bad, np.r_[rng.beta(2, 6, n_good), rng.beta(6, 2, n_bad)]


@pytest.mark.parametrize(("pb", "ra"), [(0.2, 0.2), (0.3, 0.7), (0.05, 0.95), (0.0, 1.0)])
def test_curve_rates_equal_decision_rates(pb: float, ra: float) -> None:
    bad, scores = sample()
    band = ThresholdBand(pass_below=pb, reject_at=ra)
    curve = tradeoff_curve(bad, scores)
    decisions = (
        DecisionPolicy(Thresholds(defect=band), ["ok", "d"], ["d"]).decide(np.stack([1 - scores, scores], 1)).decisions
    )
    expected = decision_rates(bad, decisions)
    got = curve.rates(band)
    assert got["escape_rate"] == pytest.approx(expected.escape_rate)
    assert got["false_reject_rate"] == pytest.approx(expected.false_reject_rate)
    assert got["review_rate"] == pytest.approx(expected.review_rate)


def test_curve_rates_at_observed_scores() -> None:
    """Thresholds placed exactly on scores (as calibration does) are handled on the right side of >=."""
    bad, scores = sample(1)
    curve = tradeoff_curve(bad, scores)
    for t in scores[::37]:
        band = ThresholdBand(pass_below=float(t), reject_at=float(t))
        assert curve.rates(band)["escape_rate"] == pytest.approx((scores[bad] < t).mean())
        assert curve.rates(band)["false_reject_rate"] == pytest.approx((scores[~bad] >= t).mean())


def test_curve_is_monotone() -> None:
    bad, scores = sample(2)
    curve = tradeoff_curve(bad, scores)
    assert np.all(np.diff(curve.thresholds) > 0)
    assert np.all(np.diff(curve.escape) >= 0) and np.all(np.diff(curve.false_reject) <= 0)
    assert curve.escape[0] == 0 and curve.false_reject[0] == 1 and curve.escape[-1] == 1 and curve.false_reject[-1] == 0


def test_operating_points() -> None:
    bad, scores = sample(3)
    points = operating_points(bad, scores, targets=(0.001, 0.01, 0.05), caps=(None, 0.02))
    by_key = {(p.target_escape, p.max_false_reject): p for p in points}
    # 300 defective parts cannot verify 0.1%; the smallest verifiable target (1/301 -> 0.0034) is added
    assert by_key[(0.001, None)].error and "at least 999 needed" in by_key[(0.001, None)].error
    assert (0.0034, None) in by_key and by_key[(0.0034, None)].error is None
    two_way, banded = by_key[(0.01, None)], by_key[(0.01, 0.02)]
    assert two_way.pass_below == two_way.reject_at and two_way.review_rate == 0
    assert banded.reject_at > banded.pass_below and banded.false_reject_rate <= 0.02
    assert banded.review_rate > 0 and banded.escape_rate == two_way.escape_rate
    # a looser escape target needs a higher pass_below
    assert by_key[(0.05, None)].pass_below > two_way.pass_below


def test_plot_tradeoff(tmp_path: Path) -> None:
    bad, scores = sample(4)
    band = ThresholdBand(pass_below=0.3, reject_at=0.6)
    path = plot_tradeoff(tradeoff_curve(bad, scores), tmp_path / "deep" / "tradeoff.png", band=band, target_escape=0.01)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(path.parent.glob(".*.tmp"))


def test_evaluate_probs_all_defect_classes() -> None:
    """A defect-type classifier (no good class): every part rejected, and the report says why."""
    rng = np.random.default_rng(5)
    y = rng.integers(0, 3, 60)
    probs = rng.dirichlet([1, 1, 1], 60)
    classes = ["crazing", "inclusion", "patches"]
    evaluation = evaluate_probs(y, probs, classes, classes, Thresholds())
    assert evaluation.decisions == {"pass": 0, "review": 0, "reject": 60}
    assert any("every class is a defect class" in n for n in evaluation.notes)
    data = jsonable(evaluation.as_dict())
    assert data["rates"]["false_reject_rate"] is None and data["metrics"]["roc_auc"] is None  # NaN -> null
