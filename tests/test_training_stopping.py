"""Best-epoch choice and early stopping (``andon.training.stopping``) on sequences of validation values."""

from __future__ import annotations

import math

import pytest

from andon.training.recipe import load_recipe
from andon.training.stopping import StopState, patience_start, record_epoch, resolve_monitor, stop_due

#: validation macro recall of the NEU benchmark run (seed 0, 20 epochs): one error in 269 in most epochs from
#: 4 on, and 0.99667 / 0.99573 only say which class it fell in
NEU = [
    0.95627,
    0.96667,
    0.93053,
    0.99667,
    0.99264,
    0.99573,
    0.99145,
    0.99145,
    0.99573,
    0.99573,
    0.99573,
    0.99573,
    0.99573,
    0.99239,
    0.99573,
    0.99573,
    0.99573,
    0.99573,
    0.99573,
    0.99573,
]


def _train(**changes):
    values = {"data.path": "unused"} | {f"train.{k}": v for k, v in changes.items()}
    return load_recipe(values=values).train


def _replay(values, cfg) -> tuple[StopState, list[int]]:
    state, bests = StopState(), []
    for epoch, value in enumerate(values, start=1):
        if record_epoch(state, epoch, value, cfg):
            bests.append(epoch)
        if state.stopped:
            break
    return state, bests


def test_a_saturated_validation_split_keeps_the_last_epoch_of_the_tie():
    state, bests = _replay(NEU, _train())
    assert (state.epoch, state.best_epoch, state.stopped) == (20, 20, False)
    assert bests[:3] == [1, 2, 4] and 14 not in bests  # epoch 14: a second error, below the tie margin
    assert state.best_value == 0.99667  # the highest value seen, not the later epoch's


def test_without_a_margin_the_first_of_the_saturated_epochs_wins_and_patience_ends_the_run():
    state, _ = _replay(NEU, _train(min_delta=0.0, min_epochs=0))
    assert (state.best_epoch, state.epoch, state.stopped) == (4, 9, True)


def test_patience_counts_only_from_half_the_schedule_by_default():
    falling = [0.9 - 0.01 * e for e in range(20)]  # epoch 1 is the best, every later epoch worse
    cfg = _train()
    assert patience_start(cfg) == 10
    state, _ = _replay(falling, cfg)
    assert (state.best_epoch, state.epoch, state.stopped) == (1, 15, True)
    state, _ = _replay(falling, _train(min_epochs=3))
    assert state.epoch == 8
    state, _ = _replay(falling, _train(patience=0))
    assert (state.epoch, state.stopped) == (20, False)


def test_a_late_improvement_resets_patience():
    values = [0.5] * 12 + [0.4, 0.4, 0.6, 0.4, 0.4, 0.4, 0.4, 0.4]
    state, bests = _replay(values, _train(patience=3))
    assert bests[-1] == 15 and (state.epoch, state.stopped) == (18, True)


def test_frozen_backbone_epochs_never_count_and_nan_is_the_worst_value():
    cfg = _train(min_epochs=0, freeze_epochs=2, patience=1)
    assert patience_start(cfg) == 2
    state, bests = _replay([0.9, float("nan"), float("nan")], cfg)
    assert bests == [1] and (state.epoch, state.stopped) == (3, True)
    state, bests = _replay([float("nan")], cfg)
    assert bests == [1] and state.best_value == -math.inf


def test_the_patience_given_on_resume_decides_whether_a_stopped_run_goes_on():
    falling = [0.9 - 0.01 * e for e in range(20)]
    state, _ = _replay(falling, _train())
    assert (state.epoch, state.bad_epochs, state.stopped) == (15, 5, True)
    assert not stop_due(state, _train(patience=8))  # a larger patience: the run continues
    assert not stop_due(state, _train(patience=0))  # early stopping off: it runs to the end
    assert stop_due(state, _train(patience=5))  # the same patience: it stays stopped


@pytest.mark.parametrize(
    ("monitor", "classes", "defects", "resolved"),
    [
        ("auto", ["defect", "ok"], ["defect"], "roc_auc"),
        ("auto", ["ok", "scratch", "spot"], ["scratch", "spot"], "macro_recall"),
        ("auto", ["crazing", "inclusion"], ["crazing", "inclusion"], "macro_recall"),  # no good class: no ranking
        ("val_loss", ["defect", "ok"], ["defect"], "val_loss"),
        ("macro_recall", ["defect", "ok"], ["defect"], "macro_recall"),
    ],
)
def test_auto_monitor_ranks_an_ok_defect_model_and_recalls_the_others(monitor, classes, defects, resolved):
    assert resolve_monitor(monitor, classes, defects) == resolved
