"""The run folder ``runs/<name>/``: its name, the resolved recipe, metrics.csv and the predictions.

recipe.yaml            the resolved recipe (every key), what ``--resume`` continues
splits.csv             the manifest with every image's split (read by export and ``andon evaluate``)
metrics.csv            one row per epoch
last.pt / best.pt      checkpoints (andon.models.checkpoint format)
predictions_{val,test}.npz   paths, y_true, probs and classes of the best model
report.html / report.md + plots/*.png
cache/                 the decoded, resized images of this run
"""

from __future__ import annotations

import csv
import datetime as dt
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from andon.errors import ConfigError, RunError
from andon.fileio import write_atomic
from andon.training.recipe import Recipe, recipe_from_dict

#: recipe keys that may change when a run is resumed; anything else would make it a different run
RESUMABLE_KEYS = frozenset(
    {
        "data.path",
        "train.epochs",
        "train.patience",
        "train.min_epochs",
        "train.workers",
        "train.device",
        "train.threads",
        "train.nproc",
        "train.backend",
        "train.precision",
        "decision.target_escape",
        "decision.max_false_reject",
        "output.runs_dir",
    }
)

#: the headline metrics (``ClassificationReport.headline()`` keys) of metrics.csv, the report and the summary
HEADLINE = ("accuracy", "macro_recall", "macro_f1", "defect_recall", "roc_auc", "pr_auc")
#: val_monitor: the value the best epoch is chosen on (train.monitor, ``auto`` resolved)
METRIC_COLUMNS = (
    "epoch",
    "phase",
    "train_loss",
    "train_accuracy",
    "val_loss",
    *(f"val_{k}" for k in HEADLINE),
    "val_monitor",
    "lr",
    "seconds",
)


@dataclass(frozen=True)
class RunDir:
    path: Path
    name: str

    @property
    def recipe(self) -> Path:
        return self.path / "recipe.yaml"

    @property
    def metrics(self) -> Path:
        return self.path / "metrics.csv"

    @property
    def last(self) -> Path:
        return self.path / "last.pt"

    @property
    def best(self) -> Path:
        return self.path / "best.pt"

    def predictions(self, split: str) -> Path:
        return self.path / f"predictions_{split}.npz"


def default_run_name(recipe: Recipe, now: dt.datetime | None = None) -> str:
    data = Path(str(recipe.data.path or "data")).name or "data"
    stamp = (now or dt.datetime.now()).strftime("%Y%m%d-%H%M%S")
    return f"{data}-{recipe.model.name}-{stamp}"


def named(recipe: Recipe) -> Recipe:
    """The recipe with ``output.name`` filled in and ``data.path`` made absolute (what recipe.yaml records)."""
    changes = []
    if recipe.output.name is None:
        changes.append(f"output.name={default_run_name(recipe)}")
    if recipe.data.path is not None and not recipe.data.path.is_absolute():
        changes.append(f"data.path={recipe.data.path.expanduser().resolve()}")
    return recipe.with_overrides(changes) if changes else recipe


def plan_run(recipe: Recipe, *, resume: bool) -> RunDir:
    """The run folder for ``recipe``, checked but not yet created (bad input must not leave a folder behind).

    A new run may not reuse a folder that holds a finished epoch (``last.pt``); a folder without one is
    from a run that failed before its first epoch and is started over. ``resume`` needs ``last.pt`` and a
    recipe that differs from the saved one only in ``RESUMABLE_KEYS``.
    """
    if resume and recipe.output.name is None:
        raise ConfigError(
            f"--resume needs the name of the run to continue: --name NAME (runs live in {recipe.output.runs_dir})"
        )
    name = recipe.output.name or default_run_name(recipe)
    run = RunDir(Path(recipe.output.runs_dir) / name, name)
    if resume:
        if not run.last.is_file():
            raise RunError(f"cannot resume: {run.last} does not exist (no epoch of run '{name}' finished)")
        check_resumable(read_recipe(run.recipe), recipe)
    elif run.last.exists():
        raise RunError(f"run folder {run.path} already exists; continue it with --resume or choose another --name")
    return run


def create_run(run: RunDir, recipe: Recipe) -> None:
    """Make the folder and write the resolved recipe."""
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write(run.recipe, recipe.to_yaml())


def read_recipe(path: Path) -> Recipe:
    if not path.is_file():
        raise RunError(f"{path} does not exist; is {path.parent} an andon run folder?")
    return recipe_from_dict(yaml.safe_load(path.read_text(encoding="utf-8")) or {}, source=str(path))


def check_resumable(saved: Recipe, given: Recipe) -> None:
    changed = sorted(k for k in _diff(saved.to_dict(), given.to_dict()) if k not in RESUMABLE_KEYS)
    if changed:
        raise ConfigError(
            f"cannot resume with a different recipe: {', '.join(changed)} changed; only "
            f"{', '.join(sorted(RESUMABLE_KEYS))} may change when resuming"
        )


def _diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    keys = []
    for key in sorted(set(a) | set(b)):
        va, vb = a.get(key), b.get(key)
        if isinstance(va, dict) and isinstance(vb, dict) and key != "remap":
            keys += _diff(va, vb, f"{prefix}{key}.")
        elif va != vb:
            keys.append(f"{prefix}{key}")
    return keys


def atomic_write(path: Path, data: bytes | str) -> None:
    """Run files are written whole or not at all (``andon.fileio``)."""
    write_atomic(path, data, durable=False)


def write_metrics(path: Path, rows: list[dict[str, float | int | str]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRIC_COLUMNS, lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: _cell(row.get(k, "")) for k in METRIC_COLUMNS})
    atomic_write(path, buffer.getvalue())


def read_metrics(path: Path) -> list[dict[str, str]]:
    if not path.is_file():
        return []
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))


def _cell(value: float | int | str) -> str:
    if isinstance(value, float):
        return repr(value)  # round-trips exactly: resume tests compare the numbers bit for bit
    return str(value)


def save_predictions(
    path: Path,
    paths: list[str],
    y_true: np.ndarray,
    probs: np.ndarray,
    classes: list[str],
    *,
    anomaly_score: np.ndarray | None = None,
) -> None:
    buffer = io.BytesIO()
    extra = {} if anomaly_score is None else {"anomaly_score": np.asarray(anomaly_score, dtype=np.float32)}
    np.savez_compressed(
        buffer,
        paths=np.array(paths, dtype=np.str_),
        y_true=y_true.astype(np.int64),
        probs=probs.astype(np.float32),
        classes=np.array(classes, dtype=np.str_),
        **extra,
    )
    atomic_write(path, buffer.getvalue())


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    """``paths``, ``y_true``, ``probs``, ``classes`` (and ``anomaly_score`` when the run has an anomaly detector)
    of a run's predictions file."""
    if not path.is_file():
        raise RunError(f"{path} does not exist; the run has not finished")
    with np.load(path, allow_pickle=False) as data:
        return {k: data[k] for k in data.files}
