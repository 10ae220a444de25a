"""Fitting the good-only anomaly detector of a run (``recipe.anomaly``) and calibrating its band.

After the classifier (or instead of it, for ``anomaly.only``), ``fit_anomaly`` fits a ``PatchCore`` on the good
images of the train split, from the run's image cache (the tensors the classifier saw, without augmentation).
Its threshold is set on the good images of the validation split, to the recipe's ``false_alarm`` target with
the same rank rule as the escape target (``andon.evaluation.calibration.reject_at_for``): on new good parts the
score flags at most that share. The detector's ``scale`` is then set so that this threshold is score 0.5, so
the card's anomaly band is [0.5, 1.0): flagged parts go to review, the score alone never rejects.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from andon.errors import CalibrationError, DatasetError
from andon.evaluation.calibration import reject_at_for, required_samples
from andon.evaluation.metrics import roc_auc
from andon.inspect.card import AnomalySpec, ModelCard, ThresholdBand
from andon.inspect.outputs import exported_names
from andon.inspect.preprocess import Preprocessor
from andon.models.anomaly import PatchCore, fit_patchcore, raw_scores
from andon.models.anomaly_build import CLASSIFIER_TRUNK, build_extractor, classifier_extractor
from andon.training.data import RunData
from andon.training.recipe import Recipe

Say = Callable[[str], None]

#: blocks of each trunk whose features are read when the recipe does not say (chosen in bench/anomaly.py)
DEFAULT_LAYERS: dict[str, list[int]] = {
    "mobilenet_v2": [13, 16],  # stride 16: 14x14 patches at 224 (bench.fusion)
    "efficientnet_lite0": [3, 4],
    "efficientnet_lite1": [3, 4],
    "efficientnet_lite2": [3, 4],
    "efficientnet_b0": [3, 4],
    "mobilenet_v3_small": [3, 8],
    "mobilenet_v3_large": [6, 12],
    "resnet18": [5, 6],  # layer2 + layer3, as PatchCore on wide_resnet50
    "resnet50": [5, 6],
    "convnext_tiny": [3, 5],
}
#: the class of an anomaly-only model's flagged parts
ANOMALY_CLASS = "anomaly"
#: the band of a calibrated detector: 0.5 is the false-alarm threshold; the score alone never rejects
ANOMALY_BAND = ThresholdBand(pass_below=0.5, reject_at=1.0)


@dataclass
class FittedAnomaly:
    detector: PatchCore
    spec: AnomalySpec
    band: ThresholdBand
    #: one line for the console and the report
    summary: str


def anomaly_trunk(recipe: Recipe) -> tuple[str, str, list[int]]:
    """(trunk, weights, layers) the recipe means. ``trunk: classifier`` reads the fine-tuned classifier's own trunk
    (``CLASSIFIER_TRUNK``, weights ""); ``trunk: null`` a frozen copy of the same backbone with model.weights;
    an anomaly-only model has no classifier, so ``classifier`` means ``null`` there."""
    cfg = recipe.anomaly
    if cfg.trunk == CLASSIFIER_TRUNK and not cfg.only:
        return (
            CLASSIFIER_TRUNK,
            "",
            list(cfg.layers or DEFAULT_LAYERS.get(recipe.model.name) or _no_layers(recipe.model.name)),
        )
    own = cfg.trunk in (None, CLASSIFIER_TRUNK)
    trunk = recipe.model.name if own else cfg.trunk
    weights = cfg.weights or (recipe.model.weights if own else "imagenet")
    layers = cfg.layers or DEFAULT_LAYERS.get(trunk)
    return trunk, weights, list(layers or _no_layers(trunk))


def _no_layers(trunk: str) -> list[int]:
    from andon.errors import ConfigError

    raise ConfigError(
        f"anomaly.trunk {trunk!r} has no default layers; set anomaly.layers (block indices) or "
        f"use one of {sorted(DEFAULT_LAYERS)}"
    )


def check_anomaly(recipe: Recipe, classes: list[str]) -> None:
    """Before a run folder exists: the trunk, layers and weights of ``recipe.anomaly`` load (a second)."""
    if not recipe.anomaly.enabled:
        return
    from andon.inspect.card import PreprocessSpec

    trunk, weights, layers = anomaly_trunk(recipe)
    spec = PreprocessSpec(input_size=recipe.model.input_size)
    if trunk == CLASSIFIER_TRUNK:
        from andon.models.registry import create_model

        classifier_extractor(
            create_model(recipe.model.name, 2, "none", progress=False), layers, recipe.anomaly.dim, spec
        )
        return
    own = recipe.anomaly.trunk is None
    build_extractor(
        trunk,
        weights,
        layers,
        recipe.anomaly.dim,
        spec,
        mean=recipe.model.mean if own else None,
        std=recipe.model.std if own else None,
    )


def with_anomaly(card: ModelCard, fitted: FittedAnomaly) -> ModelCard:
    """``card`` with the fitted detector: its description, the anomaly outputs and (for a classifier) its band."""
    keys = (
        ("probabilities", "anomaly_score", "anomaly_map")
        if fitted.spec.only
        else ("probabilities", "heatmap", "anomaly_score", "anomaly_map")
    )
    thresholds = card.thresholds if fitted.spec.only else card.thresholds.model_copy(update={"anomaly": fitted.band})
    return card.replace(anomaly=fitted.spec, thresholds=thresholds.model_dump(), output_names=exported_names(keys))


def good_tensors(data: RunData, split: str, good: list[int], *, batch: int = 32) -> list[torch.Tensor]:
    """The split's good images as batches of the classifier's input tensors (from the cache, not augmented)."""
    pre = Preprocessor(data.spec)
    index = [int(i) for i in data.indices[split] if int(data.targets[i]) in good]
    tensors = [pre.to_tensor(data.cache.image(i)) for i in index]
    return [torch.from_numpy(np.stack(tensors[s : s + batch])) for s in range(0, len(tensors), batch)]


@torch.inference_mode()
def split_scores(detector: PatchCore, data: RunData, split: str, *, batch: int = 32) -> np.ndarray:
    """The anomaly score of every image of ``split``, in the split's order."""
    pre = Preprocessor(data.spec)
    index = [int(i) for i in data.indices[split]]
    out = []
    for start in range(0, len(index), batch):
        x = np.stack([pre.to_tensor(data.cache.image(i)) for i in index[start : start + batch]])
        out.append(detector(torch.from_numpy(x))[0].numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def fit_anomaly(
    recipe: Recipe, data: RunData, card: ModelCard, *, classifier: torch.nn.Module | None = None, say: Say | None = None
) -> FittedAnomaly:
    """Fit the detector on the train split's good images and calibrate its band on the val split's.

    ``classifier`` is the trained model, whose trunk ``anomaly.trunk: classifier`` reads."""
    say = say or (lambda _m: None)
    cfg = recipe.anomaly
    good = [card.classes.index(c) for c in card.good_classes]
    if not good:
        raise DatasetError(
            f"the anomaly detector learns from good parts, and none of the classes {card.classes} is "
            "one (name it ok/good/pass/normal, or set data.defect_classes); or set anomaly.enabled=false"
        )
    trunk, weights, layers = anomaly_trunk(recipe)
    if trunk == CLASSIFIER_TRUNK:
        if classifier is None:
            raise ValueError("anomaly.trunk classifier needs the trained classifier")
        extractor = classifier_extractor(
            classifier.cpu().eval(), layers, cfg.dim, card.preprocess, seed=recipe.train.seed
        )
    else:
        own = recipe.anomaly.trunk is None
        extractor = build_extractor(
            trunk,
            weights,
            layers,
            cfg.dim,
            card.preprocess,
            seed=recipe.train.seed,
            mean=recipe.model.mean if own else None,
            std=recipe.model.std if own else None,
        )
    train = good_tensors(data, "train", good)
    n_train = sum(len(b) for b in train)
    say(f"anomaly detector: {trunk} blocks {layers}, {n_train} good training images")
    detector = fit_patchcore(
        extractor, train, bank_size=cfg.bank_size, seed=recipe.train.seed, blur_sigma=cfg.blur_sigma, progress=say
    )
    val = good_tensors(data, "val", good)
    raw = raw_scores(detector, val).numpy().astype(np.float64) if val else np.zeros(0)
    threshold, how = _threshold(raw, float(detector.scale), cfg.false_alarm)
    detector.scale.fill_(threshold)  # the threshold becomes score 0.5
    spec = AnomalySpec(
        trunk=trunk,
        weights=str(weights),
        layers=layers,
        bank_size=int(detector.bank.shape[0]),
        dim=int(detector.bank.shape[1]),
        blur_sigma=cfg.blur_sigma,
        n_good=n_train,
        scale=float(threshold),
        only=cfg.only,
        calibration=how,
    )
    flagged = float((raw >= threshold).mean()) if len(raw) else float("nan")
    summary = (
        f"anomaly detector: {spec.bank_size} good patches from {n_train} images; {how}; flags "
        f"{flagged:.1%} of {len(raw)} good validation images"
    )
    say(summary)
    return FittedAnomaly(detector, spec, ANOMALY_BAND, summary)


def _threshold(raw: np.ndarray, scale: float, false_alarm: float) -> tuple[float, str]:
    """The raw-distance threshold for the false-alarm target on good validation scores, and how it was set."""
    if len(raw) == 0:
        return scale * 3.0, (
            "no good validation images: threshold at 3x the median good training score, "
            "unverified; calibrate with 'andon thresholds --calibrate'"
        )
    # the rank rule on normalised scores in [0, 1) (reject_at_for needs probabilities), mapped back to a distance
    normalised = raw / (raw + scale)
    try:
        t = reject_at_for(normalised, false_alarm, floor=0.0)
    except CalibrationError:
        top = float(raw.max()) * 1.05
        return top, (
            f"{len(raw)} good validation images are too few to verify {false_alarm:.1%} false alarms "
            f"({required_samples(false_alarm)} needed): threshold just above the highest of them"
        )
    t = min(t, 1.0 - 1e-6)
    return scale * t / (1.0 - t), f"false alarms <= {false_alarm:.1%} on {len(raw)} good validation images"


# -- a model from good parts only ---------------------------------------------------------------------------


def _good_only_warnings(metrics: dict[str, float], max_review: float | None) -> list[str]:
    """An anomaly-only model's weakness: the share of *good* parts it sends to review (on a line that runs good,
    that is the operators' load; defective parts it sends there are its purpose)."""
    false_alarms = metrics.get("val_false_alarm_rate")
    if max_review is None or false_alarms is None or false_alarms <= max_review + 1e-12:
        return []
    return [
        f"it sends {false_alarms:.1%} of the val good parts to review, above the budget of {max_review:.1%} "
        "(decision.max_review); add good images, or loosen anomaly.false_alarm or decision.max_review"
    ]


def fit_anomaly_only(recipe: Recipe, *, console=None):  # noqa: ANN001 (rich Console) -> fit.RunResult
    """``andon train DIR --anomaly-only``: a model from good parts alone, for a product with no defect images yet.

    No classifier is trained. The detector is fitted on the train split's good images and its band set on the
    val split's (``false_alarm``); defect images in the folder (any class not named like a good part) are used
    only to report figures on val and test. The card's classes are ``anomaly`` and the good class, its
    "probabilities" (P(anomaly), P(ok)) come from the anomaly score, and its defect band [0.5, 1.0) sends what
    the score flags to review: an operator's verdicts then become the first labelled defects.
    """
    from rich.console import Console

    from andon.datasets.remap import class_plan
    from andon.inspect.card import GOOD_CLASS_NAMES, Thresholds
    from andon.models.anomaly_build import checkpoint_state
    from andon.models.checkpoint import Checkpoint, save_checkpoint
    from andon.training.data import load_split_dataset, prepare_run_data, preprocess_spec
    from andon.training.fit import RunResult, threshold_rates
    from andon.training.progress import summary_table
    from andon.training.rundir import create_run, named, plan_run, save_predictions
    from andon.training.seeding import seed_everything

    console = console or Console(stderr=True)
    say = lambda m: console.print(m, markup=False, highlight=False)  # noqa: E731
    recipe = named(recipe)
    run = plan_run(recipe, resume=False)
    seed_everything(recipe.train.seed)
    dataset, _ = load_split_dataset(recipe.data)
    declared = recipe.data.defect_classes or []
    goods = [c for c in dataset.classes if c.lower() in GOOD_CLASS_NAMES and c not in declared]
    if not goods:
        raise DatasetError(
            f"--anomaly-only learns from good parts: put them in a folder named ok (or good, pass, "
            f"normal); {dataset.root} has the classes {dataset.classes}"
        )
    good = goods[0]
    table = {c: (good if c in goods else ANOMALY_CLASS) for c in dataset.classes}
    plan = class_plan(dataset.classes, table, keep_sources=False)
    trunk, weights, layers = anomaly_trunk(recipe)
    own = recipe.anomaly.trunk in (None, CLASSIFIER_TRUNK)
    from andon.models.registry import create_model

    info = create_model(
        trunk,
        2,
        weights,
        progress=False,
        mean=recipe.model.mean if own else None,
        std=recipe.model.std if own else None,
    ).weights_info
    spec = preprocess_spec(recipe.model, info.mean, info.std)
    create_run(run, recipe)  # only now: bad data, trunk names or weights leave no folder behind
    say(f"run {run.path}  (anomaly only: {trunk} blocks {layers}, from the good parts in '{good}')")
    data = prepare_run_data(dataset, plan, spec, run.path, workers=recipe.train.workers)
    classes = [ANOMALY_CLASS, good]
    now = dt.datetime.now(dt.timezone.utc)
    card = ModelCard(
        name=run.name,
        version=f"{run.name}-{now:%Y%m%dT%H%M%SZ}",
        classes=classes,
        defect_classes=[ANOMALY_CLASS],
        preprocess=spec,
        backbone=trunk,
        weights=info.source,
        data_fingerprint=dataset.fingerprint(),
        thresholds=Thresholds(defect=ANOMALY_BAND),
        anomaly=AnomalySpec(trunk=trunk, layers=layers, bank_size=1, dim=1, scale=1.0, only=True),
        output_names=exported_names(("probabilities", "anomaly_score", "anomaly_map")),
    )
    is_good = np.array([plan.classes[t] == good for t in data.targets])
    data.targets = np.where(is_good, 1, 0)  # the card's class order: anomaly, good
    fitted = fit_anomaly(recipe, data, card, say=say)
    card = card.replace(
        anomaly=fitted.spec,
        thresholds=Thresholds(defect=ANOMALY_BAND, source=f"anomaly only: {fitted.spec.calibration}"),
    )
    headlines: dict[str, dict[str, float]] = {}
    for split in ("val", "test"):
        if len(data.indices[split]) == 0:
            continue
        score = split_scores(fitted.detector, data, split)
        y_true = data.targets[data.indices[split]]
        probs = np.stack([score, 1.0 - score], axis=1)
        pred = {"y_true": y_true, "probs": probs, "anomaly_score": score}
        save_predictions(run.predictions(split), data.paths(split), y_true, probs, classes, anomaly_score=score)
        figures = {
            "anomaly_roc_auc": roc_auc(y_true == 0, score),
            **threshold_rates(card, pred),
            "false_alarm_rate": float((score[y_true == 1] >= 0.5).mean()) if (y_true == 1).any() else float("nan"),
        }
        headlines[split] = figures
        card = card.replace(
            metrics={**card.metrics, **{f"{split}_{k}": v for k, v in figures.items() if np.isfinite(v)}}
        )
    card = card.replace(threshold_warnings=_good_only_warnings(card.metrics, recipe.decision.max_review))
    for warning in card.threshold_warnings:
        console.print(f"[bold red]Weak thresholds: {warning}[/bold red]")
    save_checkpoint(run.best, Checkpoint(trunk, 2, {}, card, 0, {"anomaly": checkpoint_state(fitted.detector)}))
    console.print(
        summary_table(
            f"run {run.name}: anomaly only",
            headlines,
            ["anomaly_roc_auc", "false_alarm_rate", "escape_rate", "review_rate"],
        )
    )
    say(f"export it: andon export {run.path} --out {run.name}.onnx")
    return RunResult(run.path, 0, 0, headlines)
