"""Why the validation band does not hold on new tiles: the ranking against the band, on runs bench.recipes trained.

    python -m bench.transfer --variants letterbox,letterbox-seed1 [--ensemble] [--seeds 5]

For each variant (and, with ``--ensemble``, the mean of their probabilities and anomaly scores), on the grouped
split (mt2g) of magnetic tile:

1. **val band**: the fused decision on test at the band ``andon train`` calibrates on the validation split (the
   figure bench.recipes reports; for the ensemble, both bands calibrated again on its averaged validation outputs).
2. **ceiling**: the most test defects any classifier band (pass_below, reject_at on P(defect); the anomaly band
   as calibrated) catches within false rejects <= 2 % and review <= 10 %, **chosen on test itself**. It is an upper
   bound of what the ranking allows, not a result: it says whether the ranking or the band is what falls short.
3. **commissioning**: the band calibrated by ``andon train``'s own rule on one half of the test tiles (split by
   near-duplicate group, as the split itself is, seeded), judged on the other half; both halves, ``--seeds``
   times. This is what a plant does when it recalibrates on reviewed parts of a new lot (``andon thresholds
   --calibrate``). The anomaly band keeps its validation threshold: a half holds too few good parts for 1 %.

Nothing here trains: run bench.recipes for the variants first.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from bench.accuracy import REPO, machine

MAX_FALSE_REJECT = 0.02
MAX_REVIEW = 0.10


def ceiling(
    bad: np.ndarray,
    p_defect: np.ndarray,
    flagged_by_anomaly: np.ndarray | None = None,
    *,
    max_false_reject: float = MAX_FALSE_REJECT,
    max_review: float = MAX_REVIEW,
) -> tuple[float, float, float, float, float]:
    """The band (pass_below, reject_at) on ``p_defect`` that flags the most of the ``bad`` parts with at most
    ``max_false_reject`` of the good parts rejected and ``max_review`` of all parts sent to review, searched over
    every cut the scores allow. Parts ``flagged_by_anomaly`` that the band would pass go to review as the fused
    policy sends them. Returns (caught, pass_below, reject_at, review, false_reject); caught 0 if no band fits."""
    bad = np.asarray(bad, dtype=bool)
    p = np.asarray(p_defect, dtype=np.float64)
    extra = np.zeros(len(p), dtype=bool) if flagged_by_anomaly is None else np.asarray(flagged_by_anomaly, bool)
    n, good = len(p), ~bad
    cuts = np.unique(np.concatenate([p, [0.0, np.nextafter(1.0, 2.0)]]))
    best = (0.0, float("nan"), float("nan"), float("nan"), float("nan"))
    for r in cuts[::-1]:  # reject at >= r
        reject = p >= r
        false_reject = (reject & good).sum() / max(1, good.sum())
        if false_reject > max_false_reject:
            break  # a lower reject_at only rejects more good parts
        for q in cuts[cuts <= r][::-1]:  # pass below q
            review = ((p >= q) | extra) & ~reject
            if review.sum() > max_review * n:
                break  # a lower pass_below only reviews more
            caught = ((reject | review) & bad).sum() / max(1, bad.sum())
            if caught > best[0]:
                best = (float(caught), float(q), float(r), float(review.mean()), float(false_reject))
    return best


def group_folds(groups: np.ndarray, seed: int) -> np.ndarray:
    """0/1 per part: its near-duplicate group's half, drawn at random with ``seed`` (a group never splits)."""
    names = np.unique(groups)
    half = dict(zip(names, np.random.default_rng(seed).permutation(len(names)) % 2))
    return np.array([half[g] for g in groups])


@dataclass
class Row:
    label: str
    test_auroc: float
    val_band: tuple[float, float, float]  # caught, false rejects, review
    ceiling: tuple[float, float, float, float, float]
    commissioning: np.ndarray  # folds x (caught, false rejects, review)


def _subset(pred: dict, index: np.ndarray, n: int) -> dict:
    return {k: (v[index] if isinstance(v, np.ndarray) and len(v) == n else v) for k, v in pred.items()}


def _load(args, name: str):
    from bench.recipes import load_trained, variant_recipe

    recipe = variant_recipe(args, name)
    run_dir = Path(recipe.output.runs_dir) / recipe.output.name
    if not (run_dir / "predictions_test.npz").is_file():
        raise SystemExit(f"{run_dir} holds no finished run: train it first (python -m bench.recipes --variants {name})")
    _, reserve, card, _, preds = load_trained(recipe, run_dir)
    return recipe, card, preds, reserve


def near_duplicate_groups(paths: list[str], say=print) -> np.ndarray:
    """Near-duplicate groups of the test images, by the rule the grouped split uses."""
    from andon.datasets.check import DEFAULT_NEAR_DUPLICATE_DISTANCE, confirmed_pairs, scan_files
    from andon.datasets.grouping import connected_components

    infos = scan_files([Path(p) for p in paths], False)
    edges = [(a, b) for a, b, _ in confirmed_pairs(infos, DEFAULT_NEAR_DUPLICATE_DISTANCE, include_identical=True)]
    roots = np.array(connected_components(len(paths), edges))
    say(f"test: {len(paths)} images in {len(np.unique(roots))} near-duplicate groups")
    return roots


def measure(label, recipe, card, preds, reserve, groups: np.ndarray, seeds: int) -> Row:
    from andon.evaluation.metrics import roc_auc
    from bench.fusion import rates
    from bench.recipes import recalibrated

    val, test = preds["val"], preds["test"]
    n = len(test["y_true"])
    bad = np.isin(test["y_true"], card.defect_indices)
    p = test["probs"][:, card.defect_indices].sum(axis=1)
    score = test.get("anomaly_score")
    band = recalibrated(card, recipe, val, reserve, val.get("anomaly_score"))
    at_val = rates(band, test, score)
    # the parts the anomaly band sends to review at its calibrated threshold, whatever the classifier band
    anomaly = band.thresholds.anomaly
    flagged = None if score is None or anomaly is None else score >= anomaly.pass_below
    folds = []
    for seed in range(seeds):
        half = group_folds(groups, seed)
        for k in (0, 1):
            cal, held = np.where(half == k)[0], np.where(half != k)[0]
            c = recalibrated(band, recipe, _subset(test, cal, n), reserve, None)
            r = rates(c, _subset(test, held, n), None if score is None else score[held])
            folds.append((r.caught, r.false_reject, r.review))
    return Row(
        label=label,
        test_auroc=float(roc_auc(bad, p)),
        val_band=(at_val.caught, at_val.false_reject, at_val.review),
        ceiling=ceiling(bad, p, flagged),
        commissioning=np.array(folds),
    )


def _pct(x: float) -> str:
    return f"{100 * x:.1f} %"


def render(rows: list[Row], command: str, machine_text: str, n_groups: int) -> str:
    lines = [
        f"Magnetic tile ok/defect, grouped split (mt2g), test 245 parts (73 defective) in {n_groups} near-duplicate "
        f"groups. Cells: caught / false rejects / review on test. Machine: {machine_text}. Command: `{command}`",
        "",
        "| run | test P(defect) AUROC | **at the val band** "
        "| ceiling: best band chosen on test (pass_below, reject_at) "
        "| commissioning: band from half of the new tiles, on the other half (mean; caught min, review max) |",
        "|---|---|---|---|---|",
    ]
    for r in rows:
        c = r.ceiling
        m = r.commissioning
        lines.append(
            f"| {r.label} | {_pct(r.test_auroc)} | **{' / '.join(_pct(x) for x in r.val_band)}** "
            f"| {_pct(c[0])} / {_pct(c[4])} / {_pct(c[3])} ({c[1]:.3f}, {c[2]:.3f}) "
            f"| {_pct(m[:, 0].mean())} / {_pct(m[:, 1].mean())} / {_pct(m[:, 2].mean())} "
            f"(caught min {_pct(m[:, 0].min())}, review max {_pct(m[:, 2].max())}; {len(m)} folds) |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.transfer", description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="letterbox,letterbox-seed1", help="bench.recipes variants, trained")
    parser.add_argument("--ensemble", action="store_true", help="also the mean of the variants' outputs")
    parser.add_argument("--seeds", type=int, default=5, help="random halvings of the test groups")
    parser.add_argument("--epochs", type=int, default=12, help="the runs' epochs (their folder names)")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "fusion")
    args = parser.parse_args(argv)
    args.main_run = None
    from bench.recipes import VARIANTS

    names = [n for n in args.variants.split(",") if n]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; known: {', '.join(VARIANTS)}")
    loaded = {name: _load(args, name) for name in names}
    paths = [str(x) for x in next(iter(loaded.values()))[2]["test"]["paths"]]
    if any([str(x) for x in preds["test"]["paths"]] != paths for _, _, preds, _ in loaded.values()):
        raise SystemExit("the runs' test splits differ: an ensemble needs the same split")
    groups = near_duplicate_groups(paths)
    items = [(name, *loaded[name]) for name in names]
    if args.ensemble and len(names) > 1:
        recipe, card, first, reserve = loaded[names[0]]
        mean = {}
        for split in ("val", "test"):
            mean[split] = dict(first[split])
            for key in ("probs", "anomaly_score"):
                parts = [preds[split].get(key) for _, _, preds, _ in loaded.values()]
                if all(x is not None for x in parts):
                    mean[split][key] = np.mean(parts, axis=0)
        items.append(("mean of " + " + ".join(names), recipe, card, mean, reserve))
    rows = []
    for label, recipe, card, preds, reserve in items:
        row = measure(label, recipe, card, preds, reserve, groups, args.seeds)
        at_val = " / ".join(_pct(x) for x in row.val_band)
        print(f"{label}: val band {at_val}, ceiling {_pct(row.ceiling[0])}", flush=True)
        rows.append(row)
    command = "python -m bench.transfer " + " ".join(argv if argv is not None else sys.argv[1:])
    print(render(rows, command, machine(), len(np.unique(groups))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
