"""Fused decision (classifier + good-only anomaly score), magnetic tile ok/defect, grouped split (mt2g).

    python -m bench.fusion                                 # every part: fused, cost, unseen
    python -m bench.fusion --parts fused,cost              # one training, every anomaly variant, ONNX cost
    python -m bench.fusion --parts unseen --unseen-epochs 8 --holdout blowhole,crack
    python -m bench.fusion --render                        # the tables again from the JSON

One classifier training per task serves every anomaly variant: the run is trained once with the project's own
``fit()`` (reused when its folder already holds a finished run), then for each variant the run is loaded
(``load_run``), its data rebuilt from the same recipe (the image cache is reused) and a detector fitted with
``fit_anomaly`` on the train split's good images and calibrated on the val split's good images
(``anomaly.false_alarm``); test parts are decided by ``DecisionPolicy`` on the card ``with_anomaly`` gives. The
classifier's own band is the run's card (calibrated on val by ``andon train``). Nothing is tuned on test: the
recommended variant is chosen on validation figures, and test figures are reported for every variant.

Parts:

- ``fused``: the mt2g run (mobilenet_v2, ../shared weights, grey, 224, near-duplicate groups). Per variant:
  test caught (reject or review) / false rejects / review / escapes, flagged-by counts, per-type caught,
  and the anomaly score's image AUROC on val and test.
- ``cost``: onnxruntime CPU ms per frame of the run exported without the anomaly head and with it (the
  recommended variant, and the recipe default), timed interleaved in one process; and the seconds the
  anomaly fit adds to training.
- ``unseen``: per defect type, a classifier trained without it (its images dropped from train and val, kept in
  test; same split as mt2g, written as a manifest CSV in the runs folder), then the share of that type's test
  images caught at the card's thresholds, classifier alone and fused.

The data sets are research-only and never copied into the repo (manifests list paths into ../shared).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from bench.accuracy import REPO, SHARED, TASKS, machine, task_recipe

DATA = SHARED / "data" / "magnetic-tile"
TYPES = ("blowhole", "break", "crack", "fray", "uneven")
GOAL = "caught >= 90 %, false rejects <= 2 %, review <= 10 % (test, at the card's thresholds)"


@dataclass(frozen=True)
class Variant:
    name: str
    #: "classifier" (the fine-tuned classifier's own trunk, shared in the graph) or None (frozen ImageNet copy)
    trunk: str | None
    layers: tuple[int, ...]
    bank: int = 2000
    dim: int = 128
    blur: float = 1.0
    false_alarm: float = 0.01

    @property
    def trunk_label(self) -> str:
        return "classifier" if self.trunk == "classifier" else "imagenet copy"


def _v(name: str, trunk: str | None, layers: tuple[int, ...], bank: int = 2000, **kw) -> Variant:
    return Variant(name, trunk, layers, bank, **kw)


VARIANTS = {
    v.name: v
    for v in [
        _v("imagenet-6+13-b2000", None, (6, 13)),  # the recipe default when bench.fusion was written
        _v("imagenet-13+16-b2000", None, (13, 16)),
        _v("classifier-6+13-b2000", "classifier", (6, 13)),
        _v("classifier-13+16-b2000", "classifier", (13, 16)),
        _v("classifier-6+13-b500", "classifier", (6, 13), 500),
        _v("classifier-13+16-b500", "classifier", (13, 16), 500),
        _v("classifier-13+16-b2000-fa3", "classifier", (13, 16), false_alarm=0.03),
        _v("classifier-13+16-b1000", "classifier", (13, 16), 1000),  # the recipe default now
        _v("classifier-13+16-b1000-fa3", "classifier", (13, 16), 1000, false_alarm=0.03),
        _v("classifier-13+16-b1000-fa5", "classifier", (13, 16), 1000, false_alarm=0.05),
        _v("classifier-6+13-b8000", "classifier", (6, 13), 8000),
    ]
}
#: the variants part fused runs unless told (the b8000 coreset takes minutes on 2 cores)
SWEEP = [n for n in VARIANTS if not n.endswith(("b8000", "fa3", "fa5")) and "b1000" not in n]
#: the detector andon train fitted in the measured run (recipe default then: trunk null, layers 6+13, bank 2000)
DEFAULT_VARIANT = "imagenet-6+13-b2000"


@dataclass
class Rates:
    n: int
    n_defective: int
    caught: float
    false_reject: float
    review: float
    escape: float
    good_review: float
    flagged_by: dict[str, int]
    caught_by_type: dict[str, list[int]]  # type -> [caught, n]
    anomaly_auroc: float = float("nan")


@dataclass
class VariantResult:
    variant: str
    trunk: str
    layers: str
    bank: int
    dim: int
    blur: float
    false_alarm: float
    fit_seconds: float
    score_seconds: float
    calibration: str
    val: Rates
    test: Rates


@dataclass
class CostRow:
    variant: str
    trunk: str
    plain_ms: float
    head_ms: float
    ratio: float
    plain_mb: float
    head_mb: float
    fit_seconds: float


@dataclass
class UnseenRow:
    held_out: str
    epochs: int
    epochs_run: int
    best_epoch: int
    train_seconds: float
    variant: str
    n_type_test: int
    caught_classifier: int
    caught_fused: int
    by_anomaly: int
    n_other_defects: int
    caught_other: int
    review: float
    false_reject: float
    val_review: float
    classifier_band: str = ""
    resize: str = "stretch"


@dataclass
class Report:
    machine: str = ""
    commands: list[str] = field(default_factory=list)
    run: str = ""
    train_seconds: float = float("nan")
    classifier: dict[str, Rates] = field(default_factory=dict)
    classifier_band: str = ""
    variants: list[VariantResult] = field(default_factory=list)
    recommended: str = ""
    why: str = ""
    cost: list[CostRow] = field(default_factory=list)
    unseen: list[UnseenRow] = field(default_factory=list)


# --- runs and data -------------------------------------------------------------------------------------------


def with_values(recipe, values: dict):
    """``recipe`` with {"section.key": value} changed, validated again."""
    from andon.training.recipe import recipe_from_dict, set_key

    data = recipe.to_dict()
    for key, value in values.items():
        set_key(data, key, value)
    return recipe_from_dict(data)


def ensure_trained(recipe, say=print) -> tuple[Path, float]:
    """The run folder of ``recipe``, trained with ``fit()`` unless it already holds a finished run (its test
    predictions); and the training wall seconds (recorded beside the run, NaN if it was trained elsewhere)."""
    from andon.training.fit import fit

    run_dir = Path(recipe.output.runs_dir) / recipe.output.name
    timing = run_dir / "fusion-train.json"
    if (run_dir / "predictions_test.npz").is_file() and (run_dir / "best.pt").is_file():
        seconds = json.loads(timing.read_text())["seconds"] if timing.is_file() else float("nan")
        say(f"reusing {run_dir}")
        return run_dir, seconds
    resume = (run_dir / "last.pt").is_file()
    say(f"training {run_dir}" + (" (resuming)" if resume else ""))
    started = time.perf_counter()
    result = fit(recipe, resume=resume)
    seconds = time.perf_counter() - started
    timing.write_text(
        json.dumps(
            {"seconds": seconds, "epochs_run": result.epochs_run, "best_epoch": result.best_epoch, "resumed": resume}
        )
    )
    return result.run_dir, seconds


def run_data(recipe, run_dir: Path, card):
    """The run's data as ``fit()`` built it (same samples, order and split; the image cache is reused).

    A near-duplicate grouped split reads every image to group it (minutes), so for that the splits are read
    back from the run's ``splits.csv`` instead (same paths and order; splits are not part of the cache key)."""
    from andon.datasets import load_dataset
    from andon.datasets.dataset import Sample
    from andon.datasets.manifest import load_manifest
    from andon.datasets.remap import class_plan
    from andon.training.data import load_split_dataset, prepare_run_data

    cfg = recipe.data
    if cfg.group_by == "near-duplicates":
        dataset = load_dataset(cfg.path)
        split_of = {s.path: s.split for s in load_manifest(run_dir / "splits.csv").samples}
        dataset = dataset.with_samples([Sample(s.path, s.label, split_of[s.path], s.group) for s in dataset.samples])
        plan = class_plan(dataset.classes, cfg.remap, keep_sources=cfg.keep_source_classes)
    else:
        dataset, plan = load_split_dataset(cfg)
    return prepare_run_data(dataset, plan, card.preprocess, run_dir, workers=recipe.train.workers)


def predictions(run_dir: Path, data) -> dict[str, dict[str, np.ndarray]]:
    from andon.training.rundir import load_predictions

    out = {}
    for split in ("val", "test"):
        pred = dict(load_predictions(run_dir / f"predictions_{split}.npz"))
        if [str(p) for p in pred["paths"]] != data.paths(split):
            raise RuntimeError(f"{run_dir}: the rebuilt {split} split is not the one the predictions hold")
        pred["type"] = np.array([Path(str(p)).parent.name for p in pred["paths"]])
        out[split] = pred
    return out


def plain_card(card):
    """The card without its anomaly detector: the classifier alone (probabilities + heatmap)."""
    from andon.inspect.outputs import exported_names

    return card.replace(
        anomaly=None,
        thresholds=card.thresholds.model_copy(update={"anomaly": None}).model_dump(),
        output_names=exported_names(("probabilities", "heatmap")),
    )


def current_band(card, recipe, run_dir: Path, reserve: float = 0.0):
    """``card`` with its classifier band calibrated by today's ``calibrate_card`` on the run's val predictions
    (what ``andon train`` would write now; a run trained by older code may hold another band), leaving its
    anomaly band alone. ``reserve``: the review share the anomaly band takes from the budget."""
    from andon.training.fit import calibrate_card
    from andon.training.rundir import RunDir

    new = calibrate_card(card, recipe.decision, RunDir(run_dir, run_dir.name), None, review_reserve=reserve)
    t = new.thresholds
    return card.replace(
        thresholds=card.thresholds.model_copy(update={"defect": t.defect, "per_class": t.per_class, "source": t.source})
    )


def band_text(card) -> str:
    b = card.thresholds.defect
    rule = (
        f"P(defect) >= {b.pass_below:.4g} rejects"
        if b.pass_below == b.reject_at
        else f"review P(defect) in [{b.pass_below:.4g}, {b.reject_at:.4g})"
    )
    return f"{rule} ({card.thresholds.source})"


def rates(card, pred: dict[str, np.ndarray], anomaly_score: np.ndarray | None = None) -> Rates:
    from andon.evaluation.metrics import decision_rates, roc_auc
    from andon.inspect.decision import DecisionPolicy
    from andon.inspect.outputs import ModelOutputs

    outputs = ModelOutputs.of(pred["probs"], anomaly_score=anomaly_score)
    verdicts = DecisionPolicy.from_card(card).decide(outputs)
    bad = np.isin(pred["y_true"], card.defect_indices)
    r = decision_rates(bad, verdicts.decisions)
    flagged = verdicts.rank > 0
    by_type = {
        t: [int(flagged[pred["type"] == t].sum()), int((pred["type"] == t).sum())]
        for t in TYPES
        if (pred["type"] == t).any()
    }
    auroc = roc_auc(bad, anomaly_score) if anomaly_score is not None else float("nan")
    return Rates(
        n=r.n,
        n_defective=r.n_defective,
        caught=r.catch_rate,
        false_reject=r.false_reject_rate,
        review=r.review_rate,
        escape=r.escape_rate,
        good_review=float((verdicts.decisions[~bad] == "review").mean()),
        flagged_by=verdicts.flagged_by(),
        caught_by_type=by_type,
        anomaly_auroc=float(auroc),
    )


def variant_recipe(recipe, v: Variant):
    return with_values(
        recipe,
        {
            "anomaly.enabled": True,
            "anomaly.trunk": v.trunk,
            "anomaly.layers": list(v.layers),
            "anomaly.bank_size": v.bank,
            "anomaly.dim": v.dim,
            "anomaly.blur_sigma": v.blur,
            "anomaly.false_alarm": v.false_alarm,
        },
    )


def fit_variant(recipe, v: Variant, data, card, model):
    """(fitted detector, card with it, {split: anomaly scores}, fit seconds, scoring seconds)."""
    from andon.training.anomaly import fit_anomaly, split_scores, with_anomaly

    started = time.perf_counter()
    fitted = fit_anomaly(variant_recipe(recipe, v), data, card, classifier=model)
    fit_seconds = time.perf_counter() - started
    started = time.perf_counter()
    scores = {split: split_scores(fitted.detector, data, split) for split in ("val", "test")}
    return fitted, with_anomaly(card, fitted), scores, fit_seconds, time.perf_counter() - started


def main_recipe(args):
    recipe = task_recipe(
        TASKS["mt2g"], epochs=args.epochs, input_size=224, runs_dir=args.runs_dir, batch_size=32, lr=3e-4, head_lr=3e-3
    )
    # stretched, as the measured runs were (the recipe default became letterbox on bench.recipes' figures)
    recipe = with_values(recipe, {"model.resize": "stretch"})
    return with_values(recipe, {"output.name": args.main_run}) if args.main_run else recipe


def is_run_default(recipe, v: Variant, card) -> bool:
    """Whether ``v`` is the detector ``andon train`` already fitted in the run (the recipe's anomaly section)."""
    spec, cfg = card.anomaly, recipe.anomaly
    return (
        spec is not None
        and cfg.trunk == v.trunk
        and tuple(spec.layers) == v.layers
        and cfg.bank_size == v.bank
        and spec.dim == v.dim
        and spec.blur_sigma == v.blur
        and cfg.false_alarm == v.false_alarm
    )


# --- parts ----------------------------------------------------------------------------------------------------


def choose(results: list[VariantResult], max_review: float = 0.10, max_false_reject: float = 0.02) -> tuple[str, str]:
    """The recommended variant on VALIDATION figures: within the review and false-reject limits, the most val
    defects caught; ties by val anomaly AUROC, then the cheaper (classifier trunk, smaller bank)."""
    ok = [r for r in results if r.val.review <= max_review and r.val.false_reject <= max_false_reject] or results
    best = max(
        ok, key=lambda r: (round(r.val.caught, 6), round(r.val.anomaly_auroc, 4), r.trunk == "classifier", -r.bank)
    )
    why = (
        f"most validation defects caught within review <= {max_review:.0%} and false rejects <= "
        f"{max_false_reject:.0%} on val ({100 * best.val.caught:.1f} % caught, {100 * best.val.review:.1f} % "
        f"review, val anomaly AUROC {100 * best.val.anomaly_auroc:.1f} %); ties broken by val AUROC, then cost"
    )
    return best.variant, why


def part_fused(args, report: Report, say=print) -> dict:
    from andon.models.rundata import load_run

    recipe = main_recipe(args)
    run_dir, seconds = ensure_trained(recipe, say)
    report.run = str(run_dir.relative_to(REPO) if run_dir.is_relative_to(REPO) else run_dir)
    report.train_seconds = seconds
    run = load_run(run_dir)
    card = current_band(plain_card(run.card), recipe, run_dir)
    data = run_data(recipe, run_dir, card)
    preds = predictions(run_dir, data)
    report.classifier = {s: rates(card, preds[s]) for s in ("val", "test")}
    report.classifier_band = band_text(card)
    say(
        f"classifier alone, test: caught {100 * report.classifier['test'].caught:.1f} %, review "
        f"{100 * report.classifier['test'].review:.1f} %"
    )
    fitted_all = {}
    report.variants = []
    for name in args.variants:
        v = VARIANTS[name]
        if is_run_default(recipe, v, run.card) and not args.refit_default:  # fitted by andon train: reuse it
            from andon.training.anomaly import ANOMALY_BAND, FittedAnomaly

            fitted = FittedAnomaly(run.anomaly, run.card.anomaly, ANOMALY_BAND, "the run's own detector")
            vcard = run.card
            scores = {split: preds[split]["anomaly_score"] for split in ("val", "test")}
            fit_s = score_s = float("nan")
        else:
            fitted, vcard, scores, fit_s, score_s = fit_variant(recipe, v, data, card, run.model)
        vcard = current_band(vcard, recipe, run_dir, v.false_alarm)
        res = VariantResult(
            variant=v.name,
            trunk=v.trunk_label,
            layers="+".join(map(str, v.layers)),
            bank=fitted.spec.bank_size,
            dim=v.dim,
            blur=v.blur,
            false_alarm=v.false_alarm,
            fit_seconds=fit_s,
            score_seconds=score_s,
            calibration=fitted.spec.calibration,
            val=rates(vcard, preds["val"], scores["val"]),
            test=rates(vcard, preds["test"], scores["test"]),
        )
        report.variants.append(res)
        fitted_all[name] = fitted
        say(
            f"{name}: fit {fit_s:.0f} s; val AUROC {100 * res.val.anomaly_auroc:.1f} %, caught "
            f"{100 * res.val.caught:.1f} %, review {100 * res.val.review:.1f} % | test AUROC "
            f"{100 * res.test.anomaly_auroc:.1f} %, caught {100 * res.test.caught:.1f} %, review "
            f"{100 * res.test.review:.1f} %, false rejects {100 * res.test.false_reject:.1f} %"
        )
        save(report, args.json)
    report.recommended, report.why = choose(report.variants)
    return {"run": run, "card": card, "data": data, "fitted": fitted_all, "recipe": recipe}


def onnx_ms(paths: list[Path], x: np.ndarray, rounds: int, threads: int) -> list[float]:
    """Median onnxruntime CPU ms per frame of each file, the files run interleaved (same machine load)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    sessions = [ort.InferenceSession(str(p), options, providers=["CPUExecutionProvider"]) for p in paths]
    names = [s.get_inputs()[0].name for s in sessions]
    times: list[list[float]] = [[] for _ in sessions]
    for r in range(rounds + 5):
        for k, (s, name) in enumerate(zip(sessions, names)):
            frame = x[(r * len(sessions) + k) % len(x)][None]
            t = time.perf_counter()
            s.run(None, {name: frame})
            if r >= 5:
                times[k].append((time.perf_counter() - t) * 1000)
    return [float(np.median(t)) for t in times]


def part_cost(args, report: Report, state: dict | None, say=print) -> None:
    from andon.models.export import export_model
    from andon.models.rundata import load_run
    from andon.training.anomaly import good_tensors

    fresh = state is not None
    if state is None:  # a separate invocation: load the run and refit the variants to time
        recipe = main_recipe(args)
        run_dir, _ = ensure_trained(recipe, say)
        run = load_run(run_dir)
        card = plain_card(run.card)
        state = {"run": run, "card": card, "data": run_data(recipe, run_dir, card), "fitted": {}, "recipe": recipe}
    run, card, data = state["run"], state["card"], state["data"]
    if fresh:  # after part fused: the recommended variant and the asked ones, fitted already
        names = list(
            dict.fromkeys(
                [n for n in (report.recommended or args.cost_variants[0], *args.cost_variants) if n in VARIANTS]
            )
        )
    else:  # on its own: only the asked variants (refitted), added to the rows already in the JSON
        names = list(args.cost_variants)
    out = args.runs_dir / "fusion-onnx"
    out.mkdir(parents=True, exist_ok=True)
    verify = np.concatenate([b.numpy() for b in good_tensors(data, "val", [card.classes.index("ok")])])[:8]
    plain_path = out / "plain.onnx"
    plain = export_model(run.model, card, plain_path, verify, anomaly=None)
    fit_seconds = {v.variant: v.fit_seconds for v in report.variants}
    report.cost = [] if fresh else [c for c in report.cost if c.variant not in names]
    pre = np.concatenate([b.numpy() for b in good_tensors(data, "val", [0, 1])])[:16]
    for name in names:
        fitted = state["fitted"].get(name)
        if fitted is None:
            fitted, _, _, fit_seconds[name], _ = fit_variant(state["recipe"], VARIANTS[name], data, card, run.model)
        from andon.training.anomaly import with_anomaly

        head_path = out / f"{name}.onnx"
        head = export_model(run.model, with_anomaly(card, fitted), head_path, verify, anomaly=fitted.detector)
        plain_ms, head_ms = onnx_ms([plain_path, head_path], pre, args.rounds, args.threads)
        row = CostRow(
            variant=name,
            trunk=VARIANTS[name].trunk_label,
            plain_ms=plain_ms,
            head_ms=head_ms,
            ratio=head_ms / plain_ms,
            plain_mb=plain.size_bytes / 1e6,
            head_mb=head.size_bytes / 1e6,
            fit_seconds=fit_seconds.get(name, float("nan")),
        )
        report.cost.append(row)
        say(f"cost {name}: {plain_ms:.1f} ms -> {head_ms:.1f} ms (x{row.ratio:.2f})")
        save(report, args.json)


def unseen_manifest(main_splits: Path, held_out: str, out: Path) -> Path:
    """mt2g's split as a manifest: ``held_out`` images dropped from train and val, kept in test. Their test rows
    are labelled as another (seen) defect type, so the remap still matches only trained classes; the type is
    recovered from the path's folder."""
    from andon.datasets.manifest import load_manifest

    stand_in = next(t for t in TYPES if t != held_out)
    rows = []
    for s in load_manifest(main_splits).samples:
        kind = s.path.parent.name
        if kind == held_out and s.split != "test":
            continue
        label = "ok" if kind == "ok" else (stand_in if kind == held_out else kind)
        rows.append((str(s.path), label, s.split))
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["path", "label", "split"])
        w.writerows(rows)
    return out


def part_unseen(args, report: Report, say=print) -> None:
    from andon.models.rundata import load_run

    base = main_recipe(args)
    main_dir = Path(base.output.runs_dir) / base.output.name
    if not (main_dir / "splits.csv").is_file():
        ensure_trained(base, say)
    variant = args.unseen_variant or report.recommended or DEFAULT_VARIANT
    report.unseen = [u for u in report.unseen if not (u.held_out in args.holdout and u.resize == args.unseen_resize)]
    for held_out in args.holdout:
        manifest = unseen_manifest(main_dir / "splits.csv", held_out, args.runs_dir / f"unseen-{held_out}.csv")
        remap = {t: "defect" for t in TYPES if t != held_out}
        recipe = with_values(
            base,
            {
                "data.path": str(manifest),
                "data.group_by": None,
                "data.remap": remap,
                "train.epochs": args.unseen_epochs,
                "anomaly.enabled": False,
                "model.resize": args.unseen_resize,
                "output.name": f"fusion-unseen-{held_out}-{args.unseen_epochs}"
                + ("" if args.unseen_resize == "stretch" else f"-{args.unseen_resize}"),
            },
        )
        run_dir, seconds = ensure_trained(recipe, say)
        if args.train_only:
            continue
        run = load_run(run_dir)
        card = current_band(plain_card(run.card), recipe, run_dir)
        data = run_data(recipe, run_dir, card)
        preds = predictions(run_dir, data)
        _, vcard, scores, _, _ = fit_variant(recipe, VARIANTS[variant], data, card, run.model)
        vcard = current_band(vcard, recipe, run_dir, VARIANTS[variant].false_alarm)
        test = preds["test"]
        alone = rates(card, test)
        fused = rates(vcard, test, scores["test"])
        val = rates(vcard, preds["val"], scores["val"])
        from andon.inspect.decision import DecisionPolicy
        from andon.inspect.outputs import ModelOutputs

        verdicts = DecisionPolicy.from_card(vcard).decide(ModelOutputs.of(test["probs"], anomaly_score=scores["test"]))
        is_type = test["type"] == held_out
        other = (test["type"] != "ok") & ~is_type
        timing = run_dir / "fusion-train.json"
        info = json.loads(timing.read_text()) if timing.is_file() else {}
        row = UnseenRow(
            held_out=held_out,
            epochs=args.unseen_epochs,
            epochs_run=int(info.get("epochs_run", -1)),
            best_epoch=int(info.get("best_epoch", -1)),
            train_seconds=seconds,
            variant=variant,
            n_type_test=int(is_type.sum()),
            caught_classifier=alone.caught_by_type[held_out][0],
            caught_fused=fused.caught_by_type[held_out][0],
            by_anomaly=int(((verdicts.rank > 0) & (verdicts.decided_by == "anomaly") & is_type).sum()),
            n_other_defects=int(other.sum()),
            caught_other=int((verdicts.rank[other] > 0).sum()),
            review=fused.review,
            false_reject=fused.false_reject,
            val_review=val.review,
            classifier_band=band_text(card),
            resize=args.unseen_resize,
        )
        report.unseen.append(row)
        say(
            f"unseen {held_out}: {row.caught_fused}/{row.n_type_test} caught fused "
            f"({row.caught_classifier} by the classifier alone), review {100 * row.review:.1f} %"
        )
        save(report, args.json)


# --- output ---------------------------------------------------------------------------------------------------


def save(report: Report, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(asdict(report), indent=2))


def load(path: Path) -> Report:
    if not path.is_file():
        return Report()
    raw = json.loads(path.read_text())
    report = Report(**{k: v for k, v in raw.items() if k not in ("classifier", "variants", "cost", "unseen")})
    report.classifier = {k: Rates(**v) for k, v in raw.get("classifier", {}).items()}
    report.variants = [
        VariantResult(**{**v, "val": Rates(**v["val"]), "test": Rates(**v["test"])}) for v in raw.get("variants", [])
    ]
    report.cost = [CostRow(**c) for c in raw.get("cost", [])]
    report.unseen = [UnseenRow(**u) for u in raw.get("unseen", [])]
    return report


def pct(x: float) -> str:
    return "-" if x is None or not np.isfinite(x) else f"{100 * x:.1f} %"


def _types(r: Rates) -> str:
    return ", ".join(f"{t} {c}/{n}" for t, (c, n) in r.caught_by_type.items())


def render(report: Report) -> str:
    lines = [
        f"Machine: {report.machine}.  ",
        f"Run: `{report.run}` (mt2g recipe, trained once"
        + (
            f"; the fit() call that finished it took {report.train_seconds / 60:.1f} min"
            if np.isfinite(report.train_seconds)
            else ""
        )
        + ").",
    ]
    if report.variants:
        c = report.classifier["test"]
        lines += [
            "",
            f"Fused decision, grouped split, test ({c.n} parts, {c.n_defective} defective), at the card's "
            f"thresholds (classifier band: {report.classifier_band}; anomaly band [0.5, 1.0) = false alarms "
            f"<= anomaly.false_alarm on the val good images). Goal: {GOAL}.",
            "",
            "| decision | trunk | layers | bank | blur | false-alarm target | val: caught / review / AUROC "
            "| **test caught** | test false rejects | test review | test escapes | good sent to review "
            "| flagged by (defect / anomaly) | test caught per type | test anomaly AUROC | fit s |",
            "|" + "---|" * 16,
        ]
        v0 = report.classifier["val"]
        lines.append(
            f"| classifier alone | - | - | - | - | - | {pct(v0.caught)} / {pct(v0.review)} / - "
            f"| **{pct(c.caught)}** | {pct(c.false_reject)} | {pct(c.review)} | {pct(c.escape)} "
            f"| {pct(c.good_review)} | {c.flagged_by.get('defect', 0)} / - | {_types(c)} | - | - |"
        )
        for r in report.variants:
            t, v = r.test, r.val
            mark = " (val rule's pick)" if r.variant == report.recommended else ""
            lines.append(
                f"| {r.variant}{mark} | {r.trunk} | {r.layers} | {r.bank} | {r.blur:g} | {pct(r.false_alarm)} "
                f"| {pct(v.caught)} / {pct(v.review)} / {pct(v.anomaly_auroc)} | **{pct(t.caught)}** "
                f"| {pct(t.false_reject)} | {pct(t.review)} | {pct(t.escape)} | {pct(t.good_review)} "
                f"| {t.flagged_by.get('defect', 0)} / {t.flagged_by.get('anomaly', 0)} | {_types(t)} "
                f"| {pct(t.anomaly_auroc)} | {r.fit_seconds:.0f} |"
            )
        lines += ["", f"Picked by the validation rule (`choose`): **{report.recommended}**: {report.why}."]
    if report.cost:
        lines += [
            "",
            "Cost: onnxruntime CPU, batch 1, fp32, the two files of the same run timed interleaved "
            "in one process (median ms per frame); what the anomaly fit adds to `andon train`: the fit (features "
            "of the train good images, coreset, val calibration) and the scores of the val and test images. "
            "Goal: ratio <= 1.5.",
            "",
            "| head | trunk | without head ms | with head ms | **ratio** | file MB without / with "
            "| anomaly fit s | + scoring val and test s |",
            "|---|---|---|---|---|---|---|---|",
        ]
        scoring = {v.variant: v.score_seconds for v in report.variants}
        for r in report.cost:
            lines.append(
                f"| {r.variant} | {r.trunk} | {r.plain_ms:.1f} | {r.head_ms:.1f} | **{r.ratio:.2f}x** "
                f"| {r.plain_mb:.1f} / {r.head_mb:.1f} | {r.fit_seconds:.0f} "
                f"| {scoring.get(r.variant, float('nan')):.0f} |"
            )
    if report.unseen:
        lines += [
            "",
            "Unseen defect type: the classifier trained without it (dropped from train and val, kept in "
            "test; the mt2g split otherwise), the anomaly head fitted and calibrated as above; caught = reject "
            "or review at the card's thresholds.",
            "",
            "| held-out type | resize | epochs (run, best) | anomaly head | type's test images | caught, classifier "
            "alone | **caught, fused** | of them by the anomaly score | other defects caught | test review "
            "| test false rejects | val review | training |",
            "|" + "---|" * 13,
        ]
        for u in sorted(report.unseen, key=lambda u: (u.resize, TYPES.index(u.held_out))):
            lines.append(
                f"| {u.held_out} | {u.resize} | {u.epochs} ({u.epochs_run}, {u.best_epoch}) | {u.variant} "
                f"| {u.n_type_test} "
                f"| {u.caught_classifier} ({pct(u.caught_classifier / max(u.n_type_test, 1))}) "
                f"| **{u.caught_fused} ({pct(u.caught_fused / max(u.n_type_test, 1))})** | {u.by_anomaly} "
                f"| {u.caught_other}/{u.n_other_defects} | {pct(u.review)} | {pct(u.false_reject)} "
                f"| {pct(u.val_review)} | {u.train_seconds / 60:.1f} min |"
            )
        for resize in sorted({u.resize for u in report.unseen}):
            missing = [t for t in TYPES if t not in {u.held_out for u in report.unseen if u.resize == resize}]
            if missing:
                lines += ["", f"Not run ({resize}): {', '.join(missing)}."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.fusion", description=__doc__.splitlines()[0])
    parser.add_argument("--parts", default="fused,cost,unseen", help="comma-separated: fused, cost, unseen")
    parser.add_argument(
        "--variants", default=",".join(SWEEP), help="anomaly variants for part fused: " + ", ".join(VARIANTS)
    )
    parser.add_argument("--epochs", type=int, default=20, help="epochs of the mt2g classifier (bench.accuracy's)")
    parser.add_argument(
        "--main-run",
        default=None,
        help="run folder name of the mt2g classifier (default bench-mt2g-224-EPOCHS); an unfinished "
        "one is resumed with --epochs",
    )
    parser.add_argument(
        "--refit-default",
        action="store_true",
        help="refit (and time) the recipe-default detector instead of reusing the run's own",
    )
    parser.add_argument("--unseen-epochs", type=int, default=8, help="epochs of each held-out-type classifier")
    parser.add_argument(
        "--unseen-resize",
        default="stretch",
        choices=("stretch", "letterbox"),
        help="model.resize of the held-out-type classifiers (the main run's split either way)",
    )
    parser.add_argument("--holdout", default=",".join(TYPES), help="defect types to hold out, one training each")
    parser.add_argument(
        "--unseen-variant",
        default=None,
        help="anomaly variant for part unseen (default: the recommended one from part fused)",
    )
    parser.add_argument(
        "--cost-variants",
        default=DEFAULT_VARIANT,
        help="variants timed besides the recommended one (default: the recipe default)",
    )
    parser.add_argument("--rounds", type=int, default=40, help="timed frames per file")
    parser.add_argument("--threads", type=int, default=2, help="onnxruntime / torch threads")
    parser.add_argument("--runs-dir", type=Path, default=REPO / "runs" / "fusion")
    parser.add_argument("--json", type=Path, default=None, help="results (default: RUNS_DIR/fusion.json)")
    parser.add_argument(
        "--train-only",
        action="store_true",
        help="part unseen: only train the held-out-type classifiers (to run beside part fused)",
    )
    parser.add_argument("--render", action="store_true", help="print the tables from the JSON and exit")
    args = parser.parse_args(argv)
    args.json = args.json or args.runs_dir / "fusion.json"
    parts = [p.strip() for p in args.parts.split(",") if p.strip()]
    args.variants = [n.strip() for n in args.variants.split(",") if n.strip()]
    args.holdout = [t.strip() for t in args.holdout.split(",") if t.strip()]
    args.cost_variants = [n.strip() for n in args.cost_variants.split(",") if n.strip()]
    bad = (
        [p for p in parts if p not in ("fused", "cost", "unseen")]
        + [n for n in args.variants + args.cost_variants if n not in VARIANTS]
        + [t for t in args.holdout if t not in TYPES]
        + ([args.unseen_variant] if args.unseen_variant and args.unseen_variant not in VARIANTS else [])
    )
    if bad:
        parser.error(f"unknown part / variant / type {bad}")
    report = load(args.json)
    if args.render:
        print(render(report))
        return 0
    if not DATA.is_dir() or not (SHARED / "weights").is_dir():
        print(f"skipped: {SHARED} with data/magnetic-tile and weights/ is needed beside the checkout")
        return 0
    import torch

    torch.set_num_threads(args.threads)
    report.machine = machine()
    report.commands.append("python -m bench.fusion " + " ".join(argv if argv is not None else sys.argv[1:]))
    state = None
    if "fused" in parts:
        state = part_fused(args, report)
        save(report, args.json)
    if "cost" in parts:
        part_cost(args, report, state)
        save(report, args.json)
    if "unseen" in parts:
        part_unseen(args, report)
        if args.train_only:
            return 0
        save(report, args.json)
    print(render(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
