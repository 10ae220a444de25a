"""The anomaly detector a model card describes (``ModelCard.anomaly``): built new for fitting, or rebuilt from
a checkpoint for export and evaluation.

The patch features come from a frozen pretrained trunk, an andon backbone (``andon.models.registry``), whose
own normalisation (its weights') may differ from the classifier's: ``PatchFeatures`` re-normalises the
card's input tensor, so one tensor feeds both. A checkpoint stores the fitted ``PatchCore``'s state dict
(trunk blocks, projection, bank, scale) under ``extra["anomaly"]``; rebuilding needs only the card.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from andon.errors import RunError
from andon.inspect.card import AnomalySpec, PreprocessSpec
from andon.models.anomaly import PatchCore, PatchFeatures

#: the key of the fitted detector's state in a checkpoint's ``extra``
CHECKPOINT_KEY = "anomaly"
#: ``AnomalySpec.trunk`` of a detector that reads the classifier's own trunk (``backbone`` names its architecture)
CLASSIFIER_TRUNK = "classifier"


def build_extractor(
    trunk: str,
    weights: str,
    layers: list[int],
    dim: int | None,
    spec: PreprocessSpec,
    *,
    seed: int = 0,
    mean: tuple[float, float, float] | None = None,
    std: tuple[float, float, float] | None = None,
) -> PatchFeatures:
    """A frozen ``trunk`` (with ``weights``: imagenet, none, or a .pth whose normalisation ``mean``/``std`` give)
    cut after its deepest layer used, reading tensors normalised as ``spec`` says."""
    from andon.models.registry import create_model

    model = create_model(trunk, 2, weights, progress=False, mean=mean, std=std)
    info = model.weights_info
    return PatchFeatures(
        model.backbone,
        layers,
        card_mean=spec.mean,
        card_std=spec.std,
        trunk_mean=tuple(info.mean),
        trunk_std=tuple(info.std),
        dim=dim,
        seed=seed,
    ).eval()


def classifier_extractor(
    model: nn.Module, layers: list[int], dim: int | None, spec: PreprocessSpec, *, seed: int = 0
) -> PatchFeatures:
    """Patch features from the (fine-tuned, now frozen) classifier's own trunk: shared with it in the graph."""
    return PatchFeatures(
        model.backbone,
        layers,
        card_mean=spec.mean,
        card_std=spec.std,
        trunk_mean=spec.mean,
        trunk_std=spec.std,
        dim=dim,
        seed=seed,
        shared=True,
    ).eval()


def checkpoint_state(detector: PatchCore) -> dict[str, Any]:
    """What a checkpoint keeps of a fitted detector."""
    return {"state_dict": {k: v.detach().cpu() for k, v in detector.state_dict().items()}}


def detector_from_checkpoint(
    spec: AnomalySpec, preprocess: PreprocessSpec, extra: dict[str, Any], *, backbone: str = ""
) -> PatchCore:
    """The fitted detector of a checkpoint whose card has ``spec``; ``RunError`` when it is missing or does not fit."""
    state = (extra.get(CHECKPOINT_KEY) or {}).get("state_dict")
    if state is None:
        raise RunError("the card describes an anomaly detector but the checkpoint holds none; train the run again")
    if spec.trunk == CLASSIFIER_TRUNK:
        from andon.models.registry import create_model

        extractor = classifier_extractor(
            create_model(backbone, 2, "none", progress=False), spec.layers, spec.dim, preprocess
        )
    else:
        extractor = build_extractor(spec.trunk, "none", spec.layers, spec.dim, preprocess)
    bank = state.get("bank")
    if bank is None or tuple(bank.shape) != (spec.bank_size, spec.dim):
        raise RunError(
            f"the checkpoint's anomaly bank has shape {None if bank is None else tuple(bank.shape)}, "
            f"the card says ({spec.bank_size}, {spec.dim})"
        )
    detector = PatchCore(extractor, torch.zeros(spec.bank_size, spec.dim), 1.0, blur_sigma=spec.blur_sigma)
    try:
        detector.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise RunError(
            f"the checkpoint's anomaly detector does not fit {spec.trunk} layers {spec.layers}: "
            f"{str(exc).splitlines()[0]}"
        ) from None
    return detector.eval()
