"""PatchCore-style anomaly score: ranking, localisation, coreset, ONNX parity, bad arguments.

Synthetic grey textures (smooth noise plus grain) at 64 px; a defect is a dark or bright disc. The trunk is
mobilenet_v2 with random weights (weights="none"), so nothing here needs files beside the checkout.
"""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
import torch

from andon.errors import ConfigError, DatasetError
from andon.models import create_model
from andon.models.anomaly import PatchCore, PatchFeatures, coreset_indices, fit_patchcore

SIZE = 64
CARD = (0.5, 0.5, 0.5)


def _texture(rng: np.random.Generator) -> np.ndarray:
    base = cv2.resize(rng.normal(0, 1, (8, 8)).astype(np.float32), (SIZE, SIZE), interpolation=cv2.INTER_CUBIC)
    return 128 + 20 * base + rng.normal(0, 6, (SIZE, SIZE))


def _with_defect(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int]]:
    image = _texture(rng)
    y, x = (int(v) for v in rng.integers(12, SIZE - 12, 2))
    cv2.circle(image, (x, y), 5, float(rng.choice([20, 240])), -1)
    return image, (y, x)


def _tensor(images: list[np.ndarray]) -> torch.Tensor:
    """Grey images as the classifier's input: three equal channels normalised with the card's mean/std 0.5."""
    pixels = np.clip(np.stack(images), 0, 255).astype(np.float32) / 255.0
    return torch.from_numpy((pixels[:, None].repeat(3, 1) - 0.5) / 0.5)


def _extractor(dim: int | None = 64) -> PatchFeatures:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 2, weights="none")
    return PatchFeatures(
        model.backbone,
        (3, 6),
        card_mean=CARD,
        card_std=CARD,
        trunk_mean=model.weights_info.mean,
        trunk_std=model.weights_info.std,
        dim=dim,
    )


@pytest.fixture(scope="module")
def data() -> dict[str, object]:
    rng = np.random.default_rng(0)
    good = _tensor([_texture(rng) for _ in range(30)])
    test_good = _tensor([_texture(rng) for _ in range(16)])
    defects = [_with_defect(rng) for _ in range(16)]
    return {
        "good": good,
        "test_good": test_good,
        "bad": _tensor([d[0] for d in defects]),
        "where": [d[1] for d in defects],
    }


@pytest.fixture(scope="module")
def fitted(data: dict[str, object]) -> PatchCore:
    messages: list[str] = []
    model = fit_patchcore(
        _extractor(), data["good"].split(8), bank_size=150, seed=0, blur_sigma=1.0, progress=messages.append
    )
    assert any("coreset" in m for m in messages) and any("scale" in m for m in messages)
    return model


def _auroc(bad: torch.Tensor, good: torch.Tensor) -> float:
    return float((bad[:, None] > good[None]).float().mean() + 0.5 * (bad[:, None] == good[None]).float().mean())


def test_defective_images_score_higher_than_good_ones(fitted: PatchCore, data: dict[str, object]) -> None:
    with torch.no_grad():
        good, good_map = fitted(data["test_good"])
        bad, _ = fitted(data["bad"])
    assert _auroc(bad, good) > 0.95
    assert 0.3 < float(good.median()) < 0.7, "scale makes a typical good part score about 0.5"
    assert float(good_map.min()) >= 0 and float(bad.max()) < 1
    assert good_map.shape == (16, SIZE // 4, SIZE // 4)  # block 3 of mobilenet_v2: stride 4


def test_map_peaks_where_the_defect_is(fitted: PatchCore, data: dict[str, object]) -> None:
    with torch.no_grad():
        _, maps = fitted(data["bad"])
    h, w = maps.shape[1:]
    hits = 0
    for anomaly_map, (y, x) in zip(maps, data["where"]):
        py, px = divmod(int(anomaly_map.argmax()), w)
        hits += abs((py + 0.5) * SIZE / h - y) <= 8 and abs((px + 0.5) * SIZE / w - x) <= 8
    assert hits >= 15


def test_coreset_is_distinct_deterministic_and_covers() -> None:
    generator = torch.Generator().manual_seed(1)
    clusters = torch.randn(5, 200, generator=generator) * 10
    points = (clusters[:, None] + 0.1 * torch.randn(5, 400, 200, generator=generator)).reshape(-1, 200)
    first = coreset_indices(points, 5, seed=3)
    assert torch.equal(first, coreset_indices(points, 5, seed=3))
    assert len(set(first.tolist())) == 5
    assert sorted(int(i) // 400 for i in first) == [0, 1, 2, 3, 4], "k-center takes one point per cluster"
    many = coreset_indices(points, 300, seed=0)
    assert len(set(many.tolist())) == 300
    duplicates = torch.cat([points[:3]] * 10)
    assert len(coreset_indices(duplicates, 10, seed=0)) == 3, "never picks the same point twice"


def test_reference_batches_set_the_scale(data: dict[str, object]) -> None:
    extractor = _extractor()
    model = fit_patchcore(
        extractor, data["good"].split(8), bank_size=100, seed=0, reference_batches=[data["test_good"]]
    )
    with torch.no_grad():
        score, _ = model(data["test_good"])
    assert float(score.median()) == pytest.approx(0.5, abs=1e-5)


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch(fitted: PatchCore, data: dict[str, object], batch: int) -> None:
    ort = pytest.importorskip("onnxruntime")
    example = data["bad"][:2]
    buffer = io.BytesIO()
    torch.onnx.export(
        fitted,
        (example,),
        buffer,
        dynamo=False,
        opset_version=17,
        input_names=["image"],
        output_names=["score", "anomaly_map"],
        dynamic_axes={"image": {0: "batch"}, "score": {0: "batch"}, "anomaly_map": {0: "batch"}},
    )
    session = ort.InferenceSession(buffer.getvalue(), providers=["CPUExecutionProvider"])
    x = torch.cat([data["bad"][:2], data["test_good"][:2]])[:batch]
    score, anomaly_map = session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        want_score, want_map = fitted(x)
    assert score.shape == (batch,) and anomaly_map.shape == tuple(want_map.shape)
    np.testing.assert_allclose(score, want_score.numpy(), atol=1e-4, rtol=0)
    np.testing.assert_allclose(anomaly_map, want_map.numpy(), atol=1e-4, rtol=0)


def test_bad_arguments_name_the_value(data: dict[str, object]) -> None:
    extractor = _extractor()
    with pytest.raises(ConfigError, match="bank_size 0"):
        fit_patchcore(extractor, data["good"].split(8), bank_size=0)
    with pytest.raises(DatasetError, match="no good images"):
        fit_patchcore(extractor, [], bank_size=10)
    with pytest.raises(DatasetError, match="reference"):
        fit_patchcore(extractor, data["good"].split(8), bank_size=10, reference_batches=[])
    with pytest.raises(ConfigError, match="coreset size -1"):
        coreset_indices(torch.zeros(4, 2), -1)
    model = create_model("mobilenet_v2", 2, weights="none")
    with pytest.raises(ConfigError, match=r"layers \(40,\)"):
        PatchFeatures(model.backbone, (40,), card_mean=CARD, card_std=CARD, trunk_mean=CARD, trunk_std=CARD)
    with pytest.raises(ConfigError, match="dim 0"):
        PatchFeatures(model.backbone, (3,), card_mean=CARD, card_std=CARD, trunk_mean=CARD, trunk_std=CARD, dim=0)


def test_renormalisation_feeds_the_trunk_its_own_normalisation() -> None:
    torch.manual_seed(0)
    model = create_model("mobilenet_v2", 2, weights="none").eval()
    imagenet = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    extractor = PatchFeatures(
        model.backbone, (3,), card_mean=CARD, card_std=CARD, trunk_mean=imagenet[0], trunk_std=imagenet[1], dim=None
    )
    pixels = torch.rand(2, 3, 32, 32)
    card_input = (pixels - 0.5) / 0.5
    trunk_input = (pixels - torch.tensor(imagenet[0]).view(1, 3, 1, 1)) / torch.tensor(imagenet[1]).view(1, 3, 1, 1)
    with torch.no_grad():
        want = torch.nn.functional.avg_pool2d(model.backbone.features[:4](trunk_input), 3, stride=1, padding=1)
        torch.testing.assert_close(extractor(card_input), want, atol=1e-5, rtol=1e-4)
