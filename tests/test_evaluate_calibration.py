"""Calibration meets its targets on held-out data, picks the smallest band, and fails loudly when it cannot."""

from __future__ import annotations

import math

import numpy as np
import pytest

from andon.errors import CalibrationError
from andon.evaluation.calibration import calibrate, calibrate_probs, required_samples
from andon.inspect import DecisionPolicy


def synthetic(rng: np.random.Generator, n_good: int, n_bad: int, *, overlap: float = 1.0):
    """Scores of a decent but imperfect model: good ~ Beta(2, 8), defective ~ Beta(8, 2) (overlap widens)."""
    good = rng.beta(2 * overlap, 8, n_good)
    bad = rng.beta(8, 2 * overlap, n_bad)
    return np.r_[np.zeros(n_good, bool), np.ones(n_bad, bool)], np.r_[good, bad]


def test_meets_targets_on_held_out_data() -> None:
    target, cap = 0.01, 0.02
    held_bad, held_scores = synthetic(np.random.default_rng(999), 400_000, 400_000)
    escapes, false_rejects = [], []
    for seed in range(8):
        bad, scores = synthetic(np.random.default_rng(seed), 3000, 600)
        result = calibrate(bad, scores, target_escape=target, max_false_reject=cap)
        band = result.thresholds.defect
        assert result.escape_rate <= target and result.false_reject_rate <= cap  # on the calibration data
        escapes.append((held_scores[held_bad] < band.pass_below).mean())
        false_rejects.append((held_scores[~held_bad] >= band.reject_at).mean())
    # each calibration sample: held-out rate within sampling tolerance (3 sigma of the rank statistic)
    sigma_escape = math.sqrt(target * (1 - target) / 600)
    sigma_fr = math.sqrt(cap * (1 - cap) / 3000)
    assert max(escapes) <= target + 3 * sigma_escape
    assert max(false_rejects) <= cap + 3 * sigma_fr
    # on average the rank rule keeps the expected rate within the target
    assert np.mean(escapes) <= target + sigma_escape / math.sqrt(8) * 2
    assert np.mean(false_rejects) <= cap + sigma_fr / math.sqrt(8) * 2


def test_rank_rule_is_conservative_where_the_naive_rule_is_not() -> None:
    """Averaged over many small calibration sets, the held-out escape stays within the target."""
    target, n_bad = 0.02, 149  # k = floor(0.02 * 150) = 3
    held = np.sort(np.random.default_rng(1).beta(8, 2, 1_000_000))
    rates = []
    for seed in range(300):
        bad_scores = np.random.default_rng(100 + seed).beta(8, 2, n_bad)
        result = calibrate(
            np.r_[np.zeros(10, bool), np.ones(n_bad, bool)], np.r_[np.zeros(10), bad_scores], target_escape=target
        )
        rates.append(np.searchsorted(held, result.thresholds.defect.pass_below) / len(held))
    assert np.mean(rates) <= target + 0.001  # expectation k/(n+1) = 0.02
    # the naive rule (largest threshold with empirical escape <= target) would average ~ (k+1)/(n+1) = 0.0267
    assert np.mean(rates) < 0.024


def test_no_false_reject_target_means_two_way() -> None:
    bad, scores = synthetic(np.random.default_rng(3), 2000, 400)
    result = calibrate(bad, scores, target_escape=0.01)
    assert result.thresholds.defect.pass_below == result.thresholds.defect.reject_at
    assert result.review_rate == 0.0
    assert "two-way" in result.thresholds.source


def test_smallest_review_band() -> None:
    bad, scores = synthetic(np.random.default_rng(4), 2000, 500)
    cap = 0.01
    result = calibrate(bad, scores, target_escape=0.01, max_false_reject=cap)
    pb, ra = result.thresholds.defect.pass_below, result.thresholds.defect.reject_at
    assert pb < ra
    good = scores[~bad]
    allowed = math.floor(cap * (len(good) + 1)) - 1
    assert (good >= ra).sum() <= allowed  # meets the cap
    assert (good >= ra - 1e-6).sum() > allowed  # and no smaller reject_at does
    assert pb == math.floor(pb * 1e6) / 1e6 and ra == math.floor(ra * 1e6) / 1e6  # readable, 6 decimals


def test_pass_below_is_the_rank_score_rounded_down() -> None:
    bad_scores = np.linspace(0.2, 0.99, 399)
    scores = np.r_[np.full(100, 0.05), bad_scores]
    bad = np.r_[np.zeros(100, bool), np.ones(399, bool)]
    result = calibrate(bad, scores, target_escape=0.005)  # k = floor(0.005 * 400) = 2
    assert result.thresholds.defect.pass_below == math.floor(bad_scores[1] * 1e6) / 1e6
    assert result.bands[0].escape_bound == pytest.approx(2 / 400)
    assert result.escape_rate == pytest.approx(1 / 399)


def test_decisions_with_calibrated_thresholds_reproduce_the_reported_rates() -> None:
    rng = np.random.default_rng(5)
    bad, scores = synthetic(rng, 3000, 700)
    result = calibrate(bad, scores, target_escape=0.01, max_false_reject=0.03)
    probs = np.stack([1 - scores, scores], axis=1)
    decisions = DecisionPolicy(result.thresholds, ["ok", "defect"], ["defect"]).decide(probs).decisions
    assert ((decisions == "pass") & bad).sum() / bad.sum() == pytest.approx(result.escape_rate)
    assert ((decisions == "reject") & ~bad).sum() / (~bad).sum() == pytest.approx(result.false_reject_rate)
    assert (decisions == "review").mean() == pytest.approx(result.review_rate)


def test_no_defective_parts() -> None:
    with pytest.raises(CalibrationError, match=r"no defective parts in the calibration data"):
        calibrate(np.zeros(500, bool), np.random.default_rng(0).random(500))


def test_too_few_defective_parts_says_how_many() -> None:
    bad, scores = synthetic(np.random.default_rng(6), 1000, 50)
    assert required_samples(0.005) == 199
    with pytest.raises(
        CalibrationError,
        match=r"too few defective parts to verify an escape rate of 0\.50%: "
        r"50 in the calibration data, at least 199 needed",
    ):
        calibrate(bad, scores, target_escape=0.005)
    calibrate(bad, scores, target_escape=0.02)  # 50 >= 1/0.02 - 1: verifiable


def test_targets_that_cannot_both_be_met() -> None:
    bad, scores = synthetic(np.random.default_rng(7), 2000, 500, overlap=3.0)
    with pytest.raises(
        CalibrationError, match=r"cannot both be met within a review rate of 1\.00%.*sends \d+\.\d+% of parts"
    ):
        calibrate(bad, scores, target_escape=0.005, max_false_reject=0.005, max_review=0.01)


def test_false_reject_impossible_when_good_parts_saturate() -> None:
    scores = np.r_[np.ones(50), np.full(950, 0.1), np.full(300, 0.9)]  # 5% of good parts score exactly 1.0
    bad = np.r_[np.zeros(1000, bool), np.ones(300, bool)]
    with pytest.raises(CalibrationError, match=r"false-reject rate of 1\.00% is impossible: 50 of 1000 good parts"):
        calibrate(bad, scores, target_escape=0.01, max_false_reject=0.01)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"target_escape": 0.0}, r"target escape rate 0\.0 must be in \(0, 1\); an escape rate of exactly 0"),
        ({"target_escape": 1.5}, r"target escape rate 1\.5 must be in"),
        ({"max_false_reject": -0.1}, r"max false-reject rate -0\.1 must be in"),
    ],
)
def test_bad_parameters(kwargs, match) -> None:
    bad, scores = synthetic(np.random.default_rng(8), 500, 500)
    with pytest.raises(CalibrationError, match=match):
        calibrate(bad, scores, **kwargs)


def test_scores_must_be_probabilities() -> None:
    with pytest.raises(CalibrationError, match=r"probabilities in \[0, 1\]"):
        calibrate(np.array([True, False]), np.array([1.5, 0.2]))
    with pytest.raises(CalibrationError, match=r"3 labels but 2 scores"):
        calibrate(np.array([True, False, True]), np.array([0.5, 0.2]))


def _three_class(rng: np.random.Generator, n_ok: int, n_scratch: int, n_crack: int):
    """ok / scratch / crack probabilities; cracks are subtle (often mistaken for ok)."""
    y = np.r_[np.zeros(n_ok, int), np.ones(n_scratch, int), np.full(n_crack, 2)]
    alpha = np.array([[8, 1, 1], [1, 8, 1], [3, 1, 4]], float)
    probs = np.stack([rng.dirichlet(alpha[c]) for c in y])
    return y, probs


def test_per_class_band_meets_its_own_target() -> None:
    classes, defects = ["ok", "scratch", "crack"], ["scratch", "crack"]
    y, probs = _three_class(np.random.default_rng(9), 3000, 800, 1200)
    result = calibrate_probs(y, probs, classes, defects, target_escape=0.02, per_class={"crack": 0.005})
    assert set(result.thresholds.per_class) == {"crack"}
    crack_band = result.bands[1]
    assert crack_band.name == "crack" and crack_band.target_escape == 0.005
    y2, probs2 = _three_class(np.random.default_rng(10), 20000, 5000, 40000)
    decisions = DecisionPolicy(result.thresholds, classes, defects).decide(probs2).decisions
    crack_escape = (decisions[y2 == 2] == "pass").mean()
    assert crack_escape <= 0.005 + 3 * math.sqrt(0.005 * 0.995 / 1200)
    without = calibrate_probs(y, probs, classes, defects, target_escape=0.02)
    crack_escape_without = (
        DecisionPolicy(without.thresholds, classes, defects).decide(probs2).decisions[y2 == 2] == "pass"
    ).mean()
    assert crack_escape <= crack_escape_without


def test_per_class_must_be_a_defect_class() -> None:
    y, probs = _three_class(np.random.default_rng(11), 300, 300, 300)
    with pytest.raises(CalibrationError, match=r"per-class calibration for 'ok': not one of the defect classes"):
        calibrate_probs(
            y, probs, ["ok", "scratch", "crack"], ["scratch", "crack"], target_escape=0.05, per_class=["ok"]
        )


def test_too_few_parts_of_a_class() -> None:
    y, probs = _three_class(np.random.default_rng(12), 1000, 1000, 30)
    with pytest.raises(CalibrationError, match=r"too few parts of class 'crack'.*30 in the calibration data"):
        calibrate_probs(
            y, probs, ["ok", "scratch", "crack"], ["scratch", "crack"], target_escape=0.01, per_class=["crack"]
        )


def test_budget_band_spends_the_review_budget_when_escapes_cannot_be_verified() -> None:
    """Too few defective parts for the escape target: the band keeps false rejects and review within their
    limits on new parts, and catches more defects than the plain 0.5 split of a model that is sure of its good
    parts but not of its defects (the grouped-split picture: 0.5 rejects no good part and passes half the
    defects)."""
    from andon.evaluation.calibration import calibrate_budget

    def parts(rng, n_good, n_bad):
        return np.r_[np.zeros(n_good, bool), np.ones(n_bad, bool)], np.r_[
            rng.beta(1, 15, n_good), rng.beta(1.5, 1.5, n_bad)
        ]

    cap, budget = 0.02, 0.10
    held_bad, held_scores = parts(np.random.default_rng(999), 400_000, 80_000)
    false_rejects, reviews, caught = [], [], []
    for seed in range(8):
        bad, scores = parts(np.random.default_rng(seed), 1500, 30)
        with pytest.raises(CalibrationError, match="too few defective parts"):
            calibrate(bad, scores, target_escape=0.005, max_false_reject=cap)
        result = calibrate_budget(bad, scores, max_false_reject=cap, max_review=budget)
        band = result.thresholds.defect
        assert 0.0 <= band.pass_below < band.reject_at <= 1.0
        assert result.false_reject_rate <= cap and result.review_rate <= budget  # on the calibration data
        assert "not verified" in result.thresholds.source and "budget band" in result.thresholds.source
        rank = DecisionPolicy(result.thresholds).decide_scores({"defect": held_scores}).rank
        false_rejects.append((rank[~held_bad] == 2).mean())
        reviews.append((rank == 1).mean())
        caught.append((rank[held_bad] > 0).mean())
    assert np.mean(false_rejects) <= cap + 0.002 and np.mean(reviews) <= budget + 0.005  # new parts, on average
    plain = (held_scores[held_bad] >= 0.5).mean()
    assert (held_scores[~held_bad] >= 0.5).mean() < 0.001  # the plain split rejects no good part either
    assert np.mean(caught) > plain + 0.2, (np.mean(caught), plain)


def test_budget_band_with_no_review_budget_left_is_two_way_at_the_cap() -> None:
    from andon.evaluation.calibration import calibrate_budget

    bad, scores = synthetic(np.random.default_rng(4), 500, 20)
    result = calibrate_budget(bad, scores, max_false_reject=0.02, max_review=0.0)
    band = result.thresholds.defect
    assert band.pass_below == band.reject_at and result.review_rate == 0.0
    with pytest.raises(CalibrationError, match="too few good parts"):
        calibrate_budget(bad[-30:], scores[-30:], max_false_reject=0.02, max_review=0.1)
