"""Which epoch to keep: every epoch's test figures beside the epoch each selection rule would have kept.

    python -m bench.epochs --task mt2 --seeds 0,1,2

Trains a `bench.accuracy` task for the whole schedule (no early stopping) and, after every epoch, scores
that epoch's model on the test split: defect recall and false rejects at P(defect) >= 0.5 (what the card
keeps when validation has too few defects to calibrate). Then replays `andon.training.stopping` on the
validation columns of metrics.csv for each rule (the monitored value, `train.min_delta`, the recipe's
patience counted from `train.min_epochs`) and reports the test figures of the epoch it keeps. Test figures
are only read here, never used to choose. Needs ../shared beside the checkout, like bench.accuracy.
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from andon.evaluation.metrics import defect_score
from bench.accuracy import REPO, SHARED, TASKS, WEIGHTS, _recall_and_false_rejects, _two_way, machine, task_recipe

#: rule name -> (metrics.csv column, higher is better)
RULES = {
    "val_monitor (train.monitor as andon train resolves it)": ("val_monitor", True),
    "val_macro_recall (model's classes)": ("val_macro_recall", True),
    "val_loss (model's classes)": ("val_loss", False),
    "val_roc_auc (defect vs ok)": ("val_roc_auc", True),
}


@dataclass
class EpochScore:
    epoch: int
    defect_recall: float
    false_reject_rate: float
    missed: list[str]


def test_scores(run_dir: Path, epoch: int) -> EpochScore:
    """The test split through last.pt's model (the epoch just finished), at P(defect) >= 0.5."""
    import torch

    from andon.datasets.manifest import load_dataset
    from andon.training.predict import predict_paths

    samples = [s for s in load_dataset(run_dir / "splits.csv").samples if s.split == "test"]
    with torch.random.fork_rng():  # building the model draws a head initialisation: keep training's stream
        probs, card = predict_paths(run_dir, [s.path for s in samples], checkpoint="last.pt", batch_size=64)
    pred = {"probs": probs, "y_true": np.array([card.classes.index(s.label) for s in samples])}
    recall, false_rejects = _recall_and_false_rejects(pred, card.classes, card.defect_classes, _two_way(0.5))
    flagged = defect_score(probs, card.defect_indices) >= 0.5
    missed = [
        f"{Path(s.path).parent.name}/{Path(s.path).name}"
        for s, f in zip(samples, flagged)
        if s.label in card.defect_classes and not f
    ]
    return EpochScore(epoch, recall, false_rejects, missed)


def kept_epoch(rows: list[dict[str, str]], column: str, higher: bool, recipe) -> tuple[int, int]:
    """(epoch kept, epochs run) by ``andon.training.stopping`` with ``column`` monitored."""
    from andon.training.stopping import StopState, record_epoch

    state = StopState()
    for row in rows:
        value = float(row[column])
        record_epoch(state, int(row["epoch"]), value if higher else -value, recipe.train)
        if state.stopped:
            break
    return state.best_epoch, state.epoch


def run_seed(task_key: str, seed: int, runs_dir: Path, epochs: int | None = None) -> dict:
    from rich.console import Console

    from andon.training.fit import fit
    from andon.training.recipe import load_recipe
    from andon.training.rundir import read_metrics

    default = load_recipe()  # its train section is the stopping rule replayed
    recipe = task_recipe(
        TASKS[task_key],
        epochs=epochs or default.train.epochs,
        input_size=224,
        runs_dir=runs_dir,
        batch_size=32,
        lr=3e-4,
        head_lr=3e-3,
        seed=seed,
        patience=0,
    )
    run_dir = runs_dir / recipe.output.name
    scores: list[EpochScore] = []
    fit(recipe, console=Console(stderr=True), callbacks=[lambda epoch, row: scores.append(test_scores(run_dir, epoch))])
    rows = read_metrics(run_dir / "metrics.csv")
    rules = {}
    for name, (column, higher) in RULES.items():
        epoch, ran = kept_epoch(rows, column, higher, default)
        rules[name] = {"epoch": epoch, "epochs_run": ran, **vars(scores[epoch - 1])}
    rules["last epoch"] = {"epoch": len(rows), "epochs_run": len(rows), **vars(scores[-1])}
    return {
        "seed": seed,
        "epochs": [vars(s) for s in scores],
        "rules": rules,
        "val": [
            {k: row[k] for k in ("epoch", "val_loss", "val_macro_recall", "val_monitor", "val_roc_auc")} for row in rows
        ],
    }


def render(task_key: str, results: list[dict], command: str) -> str:
    seeds = [r["seed"] for r in results]
    lines = [
        f"Command: `{command}`  ",
        f"Machine: {machine()}. Task {task_key} ({TASKS[task_key].title}); test "
        "figures at P(defect) >= 0.5: defect recall / false rejects (epoch kept, epochs run).",
        "",
        "| rule | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---" * (len(seeds) + 1) + "|",
    ]
    for name in results[0]["rules"]:
        cells = []
        for r in results:
            x = r["rules"][name]
            cells.append(
                f"{100 * x['defect_recall']:.2f} / {100 * x['false_reject_rate']:.2f} % "
                f"({x['epoch']}, {x['epochs_run']})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Every epoch, test defect recall / false rejects:",
        "",
        "| epoch | " + " | ".join(f"seed {s}" for s in seeds) + " |",
        "|---" * (len(seeds) + 1) + "|",
    ]
    for i in range(max(len(r["epochs"]) for r in results)):
        cells = [
            f"{100 * r['epochs'][i]['defect_recall']:.2f} / {100 * r['epochs'][i]['false_reject_rate']:.2f}"
            if i < len(r["epochs"])
            else ""
            for r in results
        ]
        lines.append(f"| {i + 1} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.epochs", description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="mt2", choices=[k for k, t in TASKS.items() if "ok/defect" in t.title])
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated training seeds")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "epochs")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--json", type=Path, default=None, help="also write the per-epoch figures here")
    args = parser.parse_args(argv)
    if not (SHARED / "data").is_dir() or not WEIGHTS.is_file():
        print(f"skipped: {SHARED} with data/ and weights/ is needed beside the checkout")
        return 0
    seeds = [int(s) for s in args.seeds.split(",") if s.strip()]
    results = [run_seed(args.task, seed, args.runs_dir, args.epochs) for seed in seeds]
    command = "python -m bench.epochs " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    print(render(args.task, results, command.strip()))
    if args.json is not None:
        args.json.write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
