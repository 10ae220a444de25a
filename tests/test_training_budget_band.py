"""andon train's thresholds when the validation split cannot verify the escape target: the budget band."""

from __future__ import annotations

import numpy as np

from andon.inspect import DecisionPolicy
from andon.inspect.card import ModelCard, PreprocessSpec
from andon.training.fit import calibrate_card
from andon.training.recipe import DecisionSection
from andon.training.rundir import RunDir, save_predictions

CARD = ModelCard(classes=["defect", "ok"], defect_classes=["defect"], preprocess=PreprocessSpec(input_size=(32, 32)))


def _run_with_val(tmp_path, n_good: int, n_bad: int, seed: int = 0) -> RunDir:
    """Validation predictions of a model sure of its good parts, unsure of its defects (34 of them: too few to
    verify a 0.5 % escape rate, which needs 199)."""
    rng = np.random.default_rng(seed)
    p_defect = np.r_[rng.beta(1, 15, n_good), rng.beta(1.5, 1.5, n_bad)]
    y = np.r_[np.ones(n_good, int), np.zeros(n_bad, int)]  # classes: 0 defect, 1 ok
    run = RunDir(tmp_path, "budget")
    save_predictions(
        run.predictions("val"),
        [f"{i}.png" for i in range(len(y))],
        y,
        np.c_[p_defect, 1 - p_defect],
        CARD.classes,
    )
    return run


def _decision(**kw) -> DecisionSection:
    return DecisionSection(
        **{"target_escape": 0.005, "max_false_reject": 0.02, "max_review": 0.10, "max_reject_good": 0.05, **kw}
    )


def test_too_few_val_defects_give_a_three_way_band_within_both_budgets(tmp_path):
    run = _run_with_val(tmp_path, 153, 34)
    notes: list[str] = []
    card = calibrate_card(CARD, _decision(), run, None, notes=notes)
    band = card.thresholds.defect
    assert band.pass_below < band.reject_at < 0.5  # three-way, below the plain split
    val = np.load(run.predictions("val"))
    bad = val["y_true"] == 0
    rank = DecisionPolicy.from_card(card).decide(val["probs"]).rank
    assert (rank[~bad] == 2).mean() <= 0.02 and (rank == 1).mean() <= 0.10
    assert (rank[bad] > 0).mean() > (val["probs"][bad, 0] >= 0.5).mean()  # more caught than the 0.5 split
    assert len(notes) == 1 and notes[0].startswith("Thresholds set to the budget band")
    assert "at least 199 needed" in notes[0] and "not a verified escape rate" in notes[0]
    assert "budget band" in card.thresholds.source


def test_without_a_review_budget_the_plain_split_stays(tmp_path):
    run = _run_with_val(tmp_path, 153, 34)
    notes: list[str] = []
    card = calibrate_card(CARD, _decision(max_review=None), run, None, notes=notes)
    assert (card.thresholds.defect.pass_below, card.thresholds.defect.reject_at) == (0.5, 0.5)
    assert notes[0].startswith("Thresholds left at 0.5 / 0.5")


def test_the_anomaly_bands_share_is_kept_out_of_the_classifiers_budget(tmp_path):
    run = _run_with_val(tmp_path, 600, 40, seed=1)
    val = np.load(run.predictions("val"))
    reviews = {}
    for reserve in (0.0, 0.04):
        notes: list[str] = []
        card = calibrate_card(CARD, _decision(), run, None, notes=notes, review_reserve=reserve)
        reviews[reserve] = (DecisionPolicy.from_card(card).decide(val["probs"]).rank == 1).mean()
    assert reviews[0.04] <= 0.06 < reviews[0.0] <= 0.10
    assert "4.0% of the budget left to the anomaly band" in notes[0]
