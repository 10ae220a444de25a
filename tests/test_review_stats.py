"""The dashboard's statistics against hand-computed examples: p-chart limits, PSI, KS, usual-value bands,
Wilson intervals; and the frame-quality signals."""

from __future__ import annotations

import math

import cv2
import numpy as np
import pytest

from andon.inspect.quality import focus_measure, frame_quality
from andon.service.quality import stats


def test_p_chart_limits_match_a_hand_computed_example():
    # 4 hourly subgroups: 100, 400, 100, 25 frames with 5, 8, 12, 0 rejects
    chart = stats.p_chart([5, 8, 12, 0], [100, 400, 100, 25])
    pbar = 25 / 625  # 0.04
    assert chart.centre == pytest.approx(pbar)
    # sigma_i = sqrt(0.04 * 0.96 / n_i): n=100 -> 0.019596, n=400 -> 0.009798, n=25 -> 0.039192
    assert chart.ucl == pytest.approx(
        [0.04 + 3 * 0.0195959, 0.04 + 3 * 0.0097980, 0.04 + 3 * 0.0195959, 0.04 + 3 * 0.0391918], abs=1e-6
    )
    assert chart.lcl == pytest.approx([0.0, 0.04 - 3 * 0.0097980, 0.0, 0.0], abs=1e-6)  # clipped at 0
    # 12/100 = 0.12 > 0.0988 is out; 8/400 = 0.02 is inside [0.0106, 0.0694]; 0/25 sits on its LCL of 0
    assert chart.out.tolist() == [False, False, True, False]
    assert chart.out_of_control == 1


def test_p_chart_flags_a_low_point_and_skips_empty_subgroups():
    chart = stats.p_chart([40, 0, 0, 42], [1000, 1000, 0, 1000])
    assert math.isnan(chart.p[2]) and not chart.out[2]
    assert chart.centre == pytest.approx(82 / 3000)
    # limits 0.02733 -+ 3 * 0.005153 = [0.0119, 0.0428]: 0 of 1000 is below, 4.0% and 4.2% are inside
    assert chart.out[1]
    assert not chart.out[0] and not chart.out[3]


def test_p_chart_with_a_fixed_standard_and_bad_input():
    chart = stats.p_chart([5, 3], [100, 100], centre=0.01)  # UCL = 0.01 + 3 * sqrt(0.0099 / 100) = 0.0398
    assert chart.centre == 0.01 and chart.out.tolist() == [True, False]
    with pytest.raises(ValueError):
        stats.p_chart([5], [4])


def test_psi_of_a_hand_computed_two_bin_example():
    reference = np.array([0.1] * 50 + [0.9] * 50)  # median edge splits it 50/50
    current = np.array([0.1] * 80 + [0.9] * 20)
    # edges = unique deciles = [0.1, 0.9) -> bins (-inf,0.1], (0.1,0.9], (0.9,inf): shares 0.5/0.5/0 vs 0.8/0.2/0
    expected = (0.8 - 0.5) * math.log(0.8 / 0.5) + (0.2 - 0.5) * math.log(0.2 / 0.5)
    assert stats.psi(current, reference) == pytest.approx(expected, rel=1e-9)
    assert stats.drift_level(expected) == "major"  # 0.416


def test_psi_is_near_zero_for_the_same_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    reference = rng.beta(1, 30, 5000)
    same = rng.beta(1, 30, 5000)
    shifted = rng.beta(1.6, 30, 5000)
    assert stats.psi(same, reference) < 0.02
    assert stats.psi(shifted, reference) > 0.1
    assert stats.drift_level(stats.psi(same, reference)) == "stable"


def test_ks_statistic_matches_hand_computation():
    assert stats.ks_statistic([1, 2, 3], [1, 2, 3]) == 0.0
    # CDFs of {1,2} and {2,3}: at x=1 -> 0.5 vs 0; at 2 -> 1 vs 0.5; at 3 -> 1 vs 1: D = 0.5
    assert stats.ks_statistic([1, 2], [2, 3]) == pytest.approx(0.5)


def test_usual_band_is_robust_to_the_outliers_it_must_find():
    values = np.r_[np.full(95, 150.0) + np.linspace(-3, 3, 95), [60, 61, 62, 250, 251]]
    u = stats.usual(values)
    assert u.median == pytest.approx(150.0, abs=0.5)
    assert u.sigma < 5  # the MAD ignores the five outliers; a standard deviation would be about 30
    assert u.outside(np.array([150.0, 60.0, 145.0])).tolist() == [False, True, False]
    assert stats.usual(np.array([1.0, 2.0])) is None


def test_wilson_interval():
    low, high = stats.wilson_interval(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert all(math.isnan(v) for v in stats.wilson_interval(0, 0))


def test_frame_quality_signals():
    rng = np.random.default_rng(1)
    sharp = rng.integers(0, 256, (600, 800), dtype=np.uint8)
    blurred = cv2.GaussianBlur(sharp, (0, 0), 3)
    assert focus_measure(blurred) < focus_measure(sharp) / 20
    flat = np.full((64, 64, 3), 100, np.uint8)
    q = frame_quality(flat, flat)
    assert q.brightness == pytest.approx(100.0) and q.contrast == pytest.approx(0.0) and q.focus == 0.0
    halves = np.zeros((64, 64, 3), np.uint8)
    halves[:, 32:] = 200
    q = frame_quality(halves, halves)
    assert q.brightness == pytest.approx(100.0, abs=0.5) and q.contrast == pytest.approx(100.0, abs=0.5)
