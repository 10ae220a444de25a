"""bench.transfer's two pieces of arithmetic: the ceiling band search and the group halves."""

from __future__ import annotations

import numpy as np
import pytest

from bench.transfer import ceiling, group_folds


def test_ceiling_finds_the_band_within_both_limits() -> None:
    # 10 good parts, 10 defective; one good part scores high (0.9), two defects score low (0.05, 0.15)
    good = [0.01, 0.02, 0.03, 0.04, 0.06, 0.07, 0.08, 0.09, 0.2, 0.9]
    bad_scores = [0.05, 0.15, 0.5, 0.6, 0.7, 0.8, 0.95, 0.96, 0.97, 0.99]
    p = np.array(good + bad_scores)
    bad = np.array([False] * 10 + [True] * 10)
    # no good part may be rejected, 2 parts of 20 may go to review: reject at 0.95 (above the 0.9 good part)
    # and review the band below it that holds the fewest good parts: [0.5, 0.95) holds 0.5-0.8 and 0.9 -> 5
    # parts, too many; [0.7, 0.95) holds 0.7, 0.8 and 0.9 -> 3, too many; [0.8, 0.95) -> 0.8 and 0.9: 2 parts
    caught, pass_below, reject_at, review, false_reject = ceiling(bad, p, max_false_reject=0.0, max_review=0.1)
    assert (pass_below, reject_at) == (0.8, 0.95)
    assert caught == pytest.approx(5 / 10)  # 0.8 in review; 0.95-0.99 rejected
    assert review == pytest.approx(2 / 20) and false_reject == 0.0
    # with one good part allowed among the rejects (10 %), reject at 0.5: every defect from 0.5 up, and the
    # 2-part review band takes 0.2 and 0.15 -> 9 of 10 caught
    caught, pass_below, reject_at, review, false_reject = ceiling(bad, p, max_false_reject=0.1, max_review=0.1)
    assert caught == pytest.approx(9 / 10) and reject_at == pytest.approx(0.5) and pass_below == pytest.approx(0.15)
    assert false_reject == pytest.approx(0.1)


def test_ceiling_counts_the_anomaly_flags_in_the_review_budget() -> None:
    p = np.array([0.1, 0.35, 0.3, 0.9])
    bad = np.array([False, False, True, True])
    # no good part rejected: reject at 0.9 only. Two parts may go to review: [0.3, 0.9) holds 0.3 and 0.35
    caught, *_ = ceiling(bad, p, None, max_false_reject=0.0, max_review=0.5)
    assert caught == pytest.approx(1.0)
    # the anomaly score already sends part 0 to review: that band would review 3 parts, so 0.3 passes
    caught, *_ = ceiling(bad, p, np.array([True, False, False, False]), max_false_reject=0.0, max_review=0.5)
    assert caught == pytest.approx(0.5)


def test_group_folds_never_split_a_group_and_depend_on_the_seed() -> None:
    groups = np.repeat(np.arange(20), 3)
    halves = [group_folds(groups, seed) for seed in range(3)]
    for half in halves:
        for g in range(20):
            assert len(set(half[groups == g])) == 1
        assert set(half) == {0, 1} and (half == 0).sum() == 30  # 10 groups in each half
    assert not np.array_equal(halves[0], halves[1])
    assert np.array_equal(group_folds(groups, 0), halves[0])
