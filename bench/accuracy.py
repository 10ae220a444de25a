"""Real-data accuracy benchmark: NEU steel (6 classes), magnetic tile (6 classes, and ok/defect).

    python -m bench.accuracy                      # every task, table into docs/benchmarks.md
    python -m bench.accuracy --tasks neu --epochs 4

Each task fine-tunes ImageNet MobileNetV2 (../shared/weights, normalisation mean = std = 0.5 as its
SOURCE.md states) with the project's own `fit()` on a fixed, stated split (hash split 70/15/15, seed 0,
stratified per class), and reports the untouched test split. Magnetic tile runs twice: on a random split
like the published results, and on a split grouped by near-duplicates (the data set shows each tile under
several lightings; grouped, no tile is in two splits, which is what a new part on the line is like). For
ok/defect the test split is judged by the thresholds in the trained model's card, which is what the service
would run: `andon train` calibrates them on the validation split to the recipe's `decision.target_escape`,
or leaves them at 0.5 and says why when validation has too few defects to verify it. A second, stricter
reading puts the threshold on the lowest validation defect score (every validation defect caught). The
6-class models give an ok/defect row too (P(defect) = 1 - P(ok)). The data sets are research-only and never
copied into the repo.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from bench.common import cpu_model

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared"
WEIGHTS = SHARED / "weights" / "mobilenet_v2-imagenet.pth"
BEGIN, END = "<!-- accuracy:begin -->", "<!-- accuracy:end -->"


@dataclass(frozen=True)
class Task:
    key: str
    title: str
    data: str
    remap: dict[str, str]
    published: str
    target: str
    #: magnetic-tile shows the same tiles under several lightings: group look-alikes so none straddle splits
    group_by: str | None = None
    #: data.keep_source_classes: learn merged classes as their source classes (the recipe's default)
    keep_sources: bool = True

    @property
    def split(self) -> str:
        return "grouped" if self.group_by else "random"


MERGED = {"blowhole": "defect", "break": "defect", "crack": "defect", "fray": "defect", "uneven": "defect"}
OK_DEFECT_TARGET = "defect recall >= 99 %, false rejects <= 2 %"
TASKS = {
    "neu": Task(
        "neu",
        "NEU steel, 6 classes",
        "neu-cls",
        {},
        "96.94 % MobileNet TL; 99.0 % feature fusion",
        "accuracy >= 99.5 %",
    ),
    "mt6": Task(
        "mt6", "Magnetic tile, 6 classes", "magnetic-tile", {}, "98.69 % VGG16 TL (random split)", "accuracy >= 99 %"
    ),
    "mt2": Task("mt2", "Magnetic tile, ok/defect", "magnetic-tile", MERGED, "-", OK_DEFECT_TARGET),
    "mt2m": Task(
        "mt2m",
        "Magnetic tile, ok/defect, trained on the merged labels",
        "magnetic-tile",
        MERGED,
        "-",
        OK_DEFECT_TARGET,
        keep_sources=False,
    ),
    "mt6g": Task("mt6g", "Magnetic tile, 6 classes", "magnetic-tile", {}, "-", "accuracy >= 99 %", "near-duplicates"),
    "mt2g": Task("mt2g", "Magnetic tile, ok/defect", "magnetic-tile", MERGED, "-", OK_DEFECT_TARGET, "near-duplicates"),
}


@dataclass
class Row:
    task: str
    #: training seed (initialisation of the new head, sampling, augmentation); the split is always seed 0
    seed: int
    title: str
    model: str
    input_size: int
    epochs_run: int
    best_epoch: int
    n_test: int
    accuracy: float
    macro_recall: float
    defect_recall: float
    #: ok/defect at the card's thresholds: share of good parts not passed (nan for class-level rows)
    false_reject_rate: float
    #: the decision: "argmax", or the card's band and where it came from
    threshold: str
    train_seconds: float
    #: ok/defect with the threshold on the lowest validation defect score (nan for class-level rows)
    val_min_threshold: float = float("nan")
    recall_at_val_min: float = float("nan")
    false_reject_at_val_min: float = float("nan")


def task_recipe(
    task: Task,
    *,
    epochs: int,
    input_size: int,
    runs_dir: Path,
    batch_size: int,
    lr: float,
    head_lr: float,
    seed: int = 0,
    patience: int | None = None,
):
    """The recipe a task trains with (also used by bench/epochs.py)."""
    from andon.training.recipe import load_recipe

    values = {
        "data.path": str(SHARED / "data" / task.data),
        "data.remap": task.remap,
        "data.keep_source_classes": task.keep_sources,
        "data.val_fraction": 0.15,
        "data.test_fraction": 0.15,
        "data.split_seed": 0,
        "data.group_by": task.group_by,
        "model.name": "mobilenet_v2",
        "model.weights": str(WEIGHTS),
        "model.mean": [0.5, 0.5, 0.5],
        "model.std": [0.5, 0.5, 0.5],
        "model.input_size": [input_size, input_size],
        "model.color_mode": "gray",
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "train.lr": lr,
        "train.head_lr": head_lr,
        "train.seed": seed,
        "output.runs_dir": str(runs_dir),
        "output.name": f"bench-{task.key}-{input_size}-{epochs}"
        + (f"-seed{seed}" if seed else "")
        + (f"-patience{patience}" if patience is not None else ""),
    }
    if patience is not None:  # None: the recipe's early stopping
        values["train.patience"] = patience
    return load_recipe(values=values)


def run_task(
    task: Task,
    *,
    epochs: int,
    input_size: int,
    runs_dir: Path,
    batch_size: int,
    lr: float,
    head_lr: float,
    seed: int = 0,
    patience: int | None = None,
) -> list[Row]:
    from andon.evaluation.metrics import classification_report
    from andon.models.checkpoint import load_checkpoint
    from andon.training.fit import fit

    recipe = task_recipe(
        task,
        epochs=epochs,
        input_size=input_size,
        runs_dir=runs_dir,
        batch_size=batch_size,
        lr=lr,
        head_lr=head_lr,
        seed=seed,
        patience=patience,
    )
    started = time.perf_counter()
    result = fit(recipe)
    seconds = time.perf_counter() - started
    test = np.load(result.run_dir / "predictions_test.npz", allow_pickle=False)
    val = np.load(result.run_dir / "predictions_val.npz", allow_pickle=False)
    classes = [str(c) for c in test["classes"]]
    defects = [c for c in classes if c != "ok"]
    report = classification_report(test["y_true"], test["probs"], classes, defects)
    common = dict(
        task=task.key,
        seed=seed,
        model="mobilenet_v2",
        input_size=input_size,
        epochs_run=result.epochs_run,
        best_epoch=result.best_epoch,
        n_test=report.n,
        train_seconds=seconds,
    )
    rows = []
    if len(classes) > 2:  # the classes, by argmax
        rows.append(
            Row(
                title=task.title,
                accuracy=report.accuracy,
                macro_recall=report.macro_recall,
                defect_recall=report.defect_recall,
                false_reject_rate=float("nan"),
                threshold="argmax",
                **common,
            )
        )
    if "ok" in classes:  # ok/defect on P(defect): at the card's thresholds, and at the lowest val defect score
        thresholds = load_checkpoint(result.run_dir / "best.pt").card.thresholds
        recall, frr = _recall_and_false_rejects(test, classes, defects, thresholds)
        cut = _val_min_threshold(val, classes, defects)
        n_val_bad = int((val["y_true"] != classes.index("ok")).sum())
        strict = _recall_and_false_rejects(test, classes, defects, _two_way(cut))
        title, accuracy, macro_recall = task.title, report.accuracy, report.macro_recall  # two classes: argmax
        if len(classes) > 2:  # the 6-class model's P(defect) = 1 - P(ok), at the card's thresholds
            n_bad = int((test["y_true"] != classes.index("ok")).sum())
            title = "Magnetic tile, ok/defect from the 6-class model"
            accuracy = (recall * n_bad + (1 - frr) * (report.n - n_bad)) / report.n
            macro_recall = (recall + 1 - frr) / 2
        decision = _describe(thresholds, recipe.decision.target_escape, n_val_bad)
        rows.append(
            Row(
                title=title,
                accuracy=accuracy,
                macro_recall=macro_recall,
                defect_recall=recall,
                false_reject_rate=frr,
                threshold=decision,
                val_min_threshold=cut,
                recall_at_val_min=strict[0],
                false_reject_at_val_min=strict[1],
                **common,
            )
        )
    return rows


def _val_min_threshold(val, classes: list[str], defects: list[str]) -> float:
    """The P(defect) threshold on the lowest validation defect score: every val defect caught."""
    from andon.evaluation.metrics import defect_score

    score = defect_score(val["probs"], [classes.index(c) for c in defects])
    bad = val["y_true"] != classes.index("ok")
    return float(score[bad].min()) if bad.any() else 0.5


def _two_way(cut: float):
    from andon.inspect.card import ThresholdBand, Thresholds

    return Thresholds(defect=ThresholdBand(pass_below=cut, reject_at=cut), source="lowest validation defect score")


def _recall_and_false_rejects(pred, classes: list[str], defects: list[str], thresholds) -> tuple[float, float]:
    """Share of defective parts not passed, and share of good parts not passed, by the card's decision rule."""
    from andon.inspect.decision import DecisionPolicy

    flagged = DecisionPolicy(thresholds, classes, defects).decide(pred["probs"]).rank > 0
    bad = pred["y_true"] != classes.index("ok")
    return float(flagged[bad].mean()), float(flagged[~bad].mean())


def _describe(thresholds, target_escape: float | None, val_defects: int) -> str:
    """The card's decision in a table cell; where calibration kept the default, why (in figures)."""
    from andon.evaluation.calibration import required_samples

    band = thresholds.defect
    rule = (
        f"P(defect) >= {band.pass_below:.4g}"
        if band.pass_below == band.reject_at
        else f"review P(defect) in [{band.pass_below:.4g}, {band.reject_at:.4g})"
    )
    extra = f", {len(thresholds.per_class)} per-class bands" if thresholds.per_class else ""
    why = thresholds.source
    if why.startswith("default") and target_escape and val_defects < required_samples(target_escape):
        why = (
            f"default: {val_defects} val defects, {required_samples(target_escape)} needed to verify "
            f"{100 * target_escape:.2g} % escapes"
        )
    return f"card: {rule}{extra} ({why})"


def machine() -> str:
    return f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, no GPU"


def render(rows: list[Row], command: str) -> str:
    lines = [
        BEGIN,
        f"Command: `{command}`  ",
        f"Machine: {machine()}. Split: hash-based, stratified per class, 70/15/15, seed 0; figures on test; "
        f"training seed {', '.join(sorted({str(r.seed) for r in rows}))}. "
        "random: each image alone (as the published results); grouped: look-alike images (one tile under several "
        "lightings) kept in one split, so test tiles are new tiles.",
        "",
        "| task | split | model | input | epochs (best) | test images | accuracy | macro recall | defect recall "
        "| false rejects | decision | every val defect caught: P(defect) >= t, defect recall / false rejects "
        "| training wall time | target | published |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = TASKS[r.task]
        frr = "-" if np.isnan(r.false_reject_rate) else f"{100 * r.false_reject_rate:.2f} %"
        strict = (
            "-"
            if np.isnan(r.val_min_threshold)
            else f"t = {r.val_min_threshold:.4f}: "
            f"{100 * r.recall_at_val_min:.2f} % / {100 * r.false_reject_at_val_min:.2f} %"
        )
        target = OK_DEFECT_TARGET if "ok/defect" in r.title else t.target
        published = t.published if r.title == t.title else "-"
        lines.append(
            f"| {r.title} | {t.split} | {r.model} | {r.input_size} | {r.epochs_run} ({r.best_epoch}) | {r.n_test} "
            f"| {100 * r.accuracy:.2f} % | {100 * r.macro_recall:.2f} % | {100 * r.defect_recall:.2f} % | {frr} "
            f"| {r.threshold} | {strict} | {r.train_seconds / 60:.1f} min | {target} | {published} |"
        )
    lines.append(END)
    return "\n".join(lines)


def write_doc(block: str, doc: Path) -> None:
    text = doc.read_text(encoding="utf-8") if doc.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text = text.rstrip() + "\n\n## Real-data accuracy (`bench/accuracy.py`)\n\n" + block + "\n"
    doc.write_text(text, encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.accuracy", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--tasks", default=",".join(TASKS), help="comma-separated: " + ",".join(TASKS) + " (g: grouped split)"
    )
    parser.add_argument(
        "--epochs", type=int, default=None, help="epochs per task (default: the recipe default, as `andon train` runs)"
    )
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate of the pretrained trunk")
    parser.add_argument("--head-lr", type=float, default=3e-3, help="peak learning rate of the new head")
    parser.add_argument(
        "--seed",
        type=int,
        default=0,
        help="training seed (head initialisation, sampling, augmentation); the split stays seed 0",
    )
    parser.add_argument(
        "--patience",
        type=int,
        default=None,
        help="early-stopping patience in epochs, 0: run the whole schedule (default: the recipe's)",
    )
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs")
    parser.add_argument("--doc", type=Path, default=REPO / "docs" / "benchmarks.md")
    parser.add_argument("--no-doc", action="store_true", help="print the table, do not touch docs/benchmarks.md")
    args = parser.parse_args(argv)
    if not (SHARED / "data").is_dir() or not WEIGHTS.is_file():
        print(f"skipped: {SHARED} with data/ and weights/ is needed beside the checkout")
        return 0
    if args.epochs is None:
        from andon.training.recipe import load_recipe

        args.epochs = load_recipe().train.epochs
    keys = [k.strip() for k in args.tasks.split(",") if k.strip()]
    unknown = [k for k in keys if k not in TASKS]
    if unknown:
        parser.error(f"unknown task(s) {unknown}; choose from {list(TASKS)}")
    rows = [
        row
        for k in keys
        for row in run_task(
            TASKS[k],
            epochs=args.epochs,
            input_size=args.input_size,
            runs_dir=args.runs_dir,
            batch_size=args.batch_size,
            lr=args.lr,
            head_lr=args.head_lr,
            seed=args.seed,
            patience=args.patience,
        )
    ]
    command = "python -m bench.accuracy " + " ".join(argv if argv is not None else __import__("sys").argv[1:])
    block = render(rows, command.strip())
    print(block)
    print(json.dumps([asdict(r) for r in rows], indent=1))
    if not args.no_doc:
        write_doc(block, args.doc)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
