"""The backbone registry: ``create_model(name, num_classes, weights)``, ``list_models()``, ``model_info(name)``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from andon.errors import UnknownModelError
from andon.models.backbones import BACKBONES, BackboneSpec
from andon.models.classifier import Classifier
from andon.models.weights import LITE0_FILE, LITE0_PACKAGE, Triple, load_weights

#: feature channels of each trunk, so that model_info needs no network built
_FEATURE_CHANNELS = {
    "mobilenet_v3_small": 576,
    "mobilenet_v3_large": 960,
    "mobilenet_v2": 1280,
    "efficientnet_b0": 1280,
    "efficientnet_lite0": 1280,
    "resnet18": 512,
    "resnet50": 2048,
    "convnext_tiny": 768,
}


@dataclass(frozen=True)
class ModelInfo:
    """What a recipe needs to know about a backbone before building it."""

    name: str
    feature_channels: int
    #: (height, width) the ImageNet weights were trained at
    input_size: tuple[int, int]
    #: input normalisation of the "imagenet" weights (on pixels scaled to 0..1)
    mean: Triple
    std: Triple
    #: where weights="imagenet" comes from
    imagenet_weights: str
    #: downsampling from input to feature map (the heatmap is input_size / stride)
    stride: int = 32


def list_models() -> list[str]:
    return sorted(BACKBONES)


def _spec(name: str) -> BackboneSpec:
    try:
        return BACKBONES[name]
    except KeyError:
        raise UnknownModelError(f"unknown model '{name}'; known models: {', '.join(list_models())}") from None


def model_info(name: str) -> ModelInfo:
    spec = _spec(name)
    source = f"torchvision {spec.tv_weights}" if spec.tv_weights else f"{LITE0_PACKAGE} ({LITE0_FILE})"
    return ModelInfo(
        name=name,
        feature_channels=_FEATURE_CHANNELS[name],
        input_size=spec.input_size,
        mean=spec.mean,
        std=spec.std,
        imagenet_weights=source,
    )


def create_model(
    name: str,
    num_classes: int,
    weights: str | Path = "imagenet",
    *,
    dropout: float = 0.2,
    mean: Triple | None = None,
    std: Triple | None = None,
    progress: bool = True,
    head_groups: Sequence[int] | None = None,
) -> Classifier:
    """Build backbone ``name`` with a new linear head of ``num_classes`` and load ``weights`` onto its trunk.

    The normalisation that goes with the weights is in ``model.weights_info`` (``mean``/``std`` override it,
    for local files trained with another normalisation). ``head_groups`` gives the head one unit per training
    class, each adding its probability to the class it names (``ModelCard.head_groups``).
    """
    spec = _spec(name)
    trunk, channels = spec.build()
    model = Classifier(name, trunk, channels, num_classes, dropout=dropout, head_groups=head_groups)
    model.weights_info = load_weights(model, weights, mean=mean, std=std, progress=progress)
    return model
