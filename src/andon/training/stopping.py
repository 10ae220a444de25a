"""Which epoch is the best one, and when to stop: the bookkeeping of ``fit()``, kept apart so it can be tested.

Three rules make it fit small industrial validation sets (a few hundred images, some classes with a dozen):

* **Ties go to the later epoch.** An epoch is the best so far when its monitored value is within
  ``train.min_delta`` of the highest value seen. Counted metrics saturate: NEU's validation split sits at one
  error in 269 in 13 of the epochs 4 to 20, and macro recall only tells which class that error fell in. The
  later epoch, trained on at a lower learning rate, is the better model (measured: the epoch-4 model 98.92 %
  on test, the epoch-20 one 100 %).
* **An ok/defect model is judged on how it ranks defects** (``train.monitor: auto``): ROC AUC of P(defect)
  on validation, the ranking the thresholds cut, rather than macro recall at the 0.5 cut that calibration
  moves anyway. Magnetic tile ok/defect (``python -m bench.epochs``): over training seeds 0-2 the epoch
  ROC AUC keeps caught every test defect; macro recall of ok/defect, or of ok and each defect type, kept
  epochs that missed one or two (docs/benchmarks.md).
* **Patience counts only from ``train.min_epochs``** (default: half the schedule, where the cosine decay
  has halved the learning rate). At the peak rate the validation figures wander, and a run stopped there
  throws away the low-rate epochs that make the model.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from andon.training.recipe import TrainSection


@dataclass
class StopState:
    """Early stopping and best-epoch bookkeeping; saved in last.pt."""

    epoch: int = 0  # epochs completed
    best_value: float = -math.inf  # highest monitored value so far, sign-adjusted so that higher is better
    best_epoch: int = 0
    bad_epochs: int = 0  # counted epochs since the last best one
    stopped: bool = False


def resolve_monitor(monitor: str, classes: list[str], defect_classes: list[str]) -> str:
    """``train.monitor`` with ``auto`` resolved: ``roc_auc`` for a model with one defect class and at least one
    good class (ok/defect), ``macro_recall`` otherwise."""
    if monitor != "auto":
        return monitor
    return "roc_auc" if len(defect_classes) == 1 and len(classes) > 1 else "macro_recall"


def patience_start(cfg: TrainSection) -> int:
    """The last epoch that does not count towards patience."""
    start = cfg.epochs // 2 if cfg.min_epochs is None else cfg.min_epochs
    return max(start, cfg.freeze_epochs)


def record_epoch(state: StopState, epoch: int, value: float, cfg: TrainSection) -> bool:
    """Book ``epoch`` with its monitored ``value`` (higher is better, NaN as -inf); True if it is the new best."""
    value = -math.inf if math.isnan(value) else value
    state.epoch = epoch
    best = value >= state.best_value - cfg.min_delta
    if best:
        state.best_value, state.best_epoch, state.bad_epochs = max(value, state.best_value), epoch, 0
    elif epoch > patience_start(cfg):
        state.bad_epochs += 1
    state.stopped = stop_due(state, cfg)
    return best


def stop_due(state: StopState, cfg: TrainSection) -> bool:
    """Patience used up. Also asked on resume, where a changed ``train.patience`` may let a stopped run go on
    (or end one)."""
    return 0 < cfg.patience <= state.bad_epochs
