"""Fitting the good-only anomaly detector of a run (``recipe.anomaly``) and calibrating its band.

After the classifier (or instead of it, for ``anomaly.only``), ``fit_anomaly`` fits a ``PatchCore`` on the good
images of the train split, from the run's image cache (the tensors the classifier saw, without augmentation).
Its threshold is set on the good images of the validation split, to the recipe's ``false_alarm`` target with
the same rank rule as the escape target (``andon.evaluation.calibration.reject_at_for``): on new good parts the
score flags at most that share. The detector's ``scale`` is then set so that this threshold is score 0.5, so
the card's anomaly band is [0.5, 1.0): flagged parts go to review, the score alone never rejects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from andon.errors import CalibrationError, DatasetError
from andon.evaluation.calibration import reject_at_for, required_samples
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
    "mobilenet_v2": [6, 13],
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
        return CLASSIFIER_TRUNK, "", list(cfg.layers or DEFAULT_LAYERS.get(recipe.model.name) or _no_layers(recipe.model.name))
    own = cfg.trunk in (None, CLASSIFIER_TRUNK)
    trunk = recipe.model.name if own else cfg.trunk
    weights = cfg.weights or (recipe.model.weights if own else "imagenet")
    layers = cfg.layers or DEFAULT_LAYERS.get(trunk)
    return trunk, weights, list(layers or _no_layers(trunk))


def _no_layers(trunk: str) -> list[int]:
    from andon.errors import ConfigError

    raise ConfigError(f"anomaly.trunk {trunk!r} has no default layers; set anomaly.layers (block indices) or "
                      f"use one of {sorted(DEFAULT_LAYERS)}")


def check_anomaly(recipe: Recipe, classes: list[str]) -> None:
    """Before a run folder exists: the trunk, layers and weights of ``recipe.anomaly`` load (a second)."""
    if not recipe.anomaly.enabled:
        return
    from andon.inspect.card import PreprocessSpec

    trunk, weights, layers = anomaly_trunk(recipe)
    spec = PreprocessSpec(input_size=recipe.model.input_size)
    if trunk == CLASSIFIER_TRUNK:
        from andon.models.registry import create_model

        classifier_extractor(create_model(recipe.model.name, 2, "none", progress=False), layers, recipe.anomaly.dim,
                             spec)
        return
    own = recipe.anomaly.trunk is None
    build_extractor(trunk, weights, layers, recipe.anomaly.dim, spec, mean=recipe.model.mean if own else None,
                    std=recipe.model.std if own else None)


def with_anomaly(card: ModelCard, fitted: FittedAnomaly) -> ModelCard:
    """``card`` with the fitted detector: its description, the anomaly outputs and (for a classifier) its band."""
    keys = ("probabilities", "anomaly_score", "anomaly_map") if fitted.spec.only else \
        ("probabilities", "heatmap", "anomaly_score", "anomaly_map")
    thresholds = card.thresholds if fitted.spec.only else card.thresholds.model_copy(update={"anomaly": fitted.band})
    return card.replace(anomaly=fitted.spec, thresholds=thresholds.model_dump(), output_names=exported_names(keys))


def good_tensors(data: RunData, split: str, good: list[int], *, batch: int = 32) -> list[torch.Tensor]:
    """The split's good images as batches of the classifier's input tensors (from the cache, not augmented)."""
    pre = Preprocessor(data.spec)
    index = [int(i) for i in data.indices[split] if int(data.targets[i]) in good]
    tensors = [pre.to_tensor(data.cache.image(i)) for i in index]
    return [torch.from_numpy(np.stack(tensors[s:s + batch])) for s in range(0, len(tensors), batch)]


@torch.inference_mode()
def split_scores(detector: PatchCore, data: RunData, split: str, *, batch: int = 32) -> np.ndarray:
    """The anomaly score of every image of ``split``, in the split's order."""
    pre = Preprocessor(data.spec)
    index = [int(i) for i in data.indices[split]]
    out = []
    for start in range(0, len(index), batch):
        x = np.stack([pre.to_tensor(data.cache.image(i)) for i in index[start:start + batch]])
        out.append(detector(torch.from_numpy(x))[0].numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def fit_anomaly(recipe: Recipe, data: RunData, card: ModelCard, *, classifier: torch.nn.Module | None = None,
                say: Say | None = None) -> FittedAnomaly:
    """Fit the detector on the train split's good images and calibrate its band on the val split's.

    ``classifier`` is the trained model, whose trunk ``anomaly.trunk: classifier`` reads."""
    say = say or (lambda _m: None)
    cfg = recipe.anomaly
    good = [card.classes.index(c) for c in card.good_classes]
    if not good:
        raise DatasetError(f"the anomaly detector learns from good parts, and none of the classes {card.classes} is "
                           "one (name it ok/good/pass/normal, or set data.defect_classes); or set anomaly.enabled=false")
    trunk, weights, layers = anomaly_trunk(recipe)
    if trunk == CLASSIFIER_TRUNK:
        if classifier is None:
            raise ValueError("anomaly.trunk classifier needs the trained classifier")
        extractor = classifier_extractor(classifier.cpu().eval(), layers, cfg.dim, card.preprocess,
                                         seed=recipe.train.seed)
    else:
        own = recipe.anomaly.trunk is None
        extractor = build_extractor(trunk, weights, layers, cfg.dim, card.preprocess, seed=recipe.train.seed,
                                    mean=recipe.model.mean if own else None, std=recipe.model.std if own else None)
    train = good_tensors(data, "train", good)
    n_train = sum(len(b) for b in train)
    say(f"anomaly detector: {trunk} blocks {layers}, {n_train} good training images")
    detector = fit_patchcore(extractor, train, bank_size=cfg.bank_size, seed=recipe.train.seed,
                             blur_sigma=cfg.blur_sigma, progress=say)
    val = good_tensors(data, "val", good)
    raw = raw_scores(detector, val).numpy().astype(np.float64) if val else np.zeros(0)
    threshold, how = _threshold(raw, float(detector.scale), cfg.false_alarm)
    detector.scale.fill_(threshold)  # the threshold becomes score 0.5
    spec = AnomalySpec(trunk=trunk, weights=str(weights), layers=layers, bank_size=int(detector.bank.shape[0]),
                       dim=int(detector.bank.shape[1]), blur_sigma=cfg.blur_sigma, n_good=n_train,
                       scale=float(threshold), only=cfg.only, calibration=how)
    flagged = float((raw >= threshold).mean()) if len(raw) else float("nan")
    summary = (f"anomaly detector: {spec.bank_size} good patches from {n_train} images; {how}; flags "
               f"{flagged:.1%} of {len(raw)} good validation images")
    say(summary)
    return FittedAnomaly(detector, spec, ANOMALY_BAND, summary)


def _threshold(raw: np.ndarray, scale: float, false_alarm: float) -> tuple[float, str]:
    """The raw-distance threshold for the false-alarm target on good validation scores, and how it was set."""
    if len(raw) == 0:
        return scale * 3.0, ("no good validation images: threshold at 3x the median good training score, "
                             "unverified; calibrate with 'andon thresholds --calibrate'")
    # the rank rule on normalised scores in [0, 1) (reject_at_for needs probabilities), mapped back to a distance
    normalised = raw / (raw + scale)
    try:
        t = reject_at_for(normalised, false_alarm, floor=0.0)
    except CalibrationError:
        top = float(raw.max()) * 1.05
        return top, (f"{len(raw)} good validation images are too few to verify {false_alarm:.1%} false alarms "
                     f"({required_samples(false_alarm)} needed): threshold just above the highest of them")
    t = min(t, 1.0 - 1e-6)
    return scale * t / (1.0 - t), f"false alarms <= {false_alarm:.1%} on {len(raw)} good validation images"
