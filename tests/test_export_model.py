"""``export_model``: the graph contract (image -> probs, heatmap), the heatmap's definition, and the parity gate."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from andon.cli import main
from andon.errors import ConfigError, ExportError
from andon.inspect.card import ModelCard, PreprocessSpec
from andon.inspect.onnxfile import read_card
from andon.models import Classifier, create_model
from andon.models.export import PROBS_TOLERANCE, export_model

SIZE = 64


def _card(classes: list[str], defects: list[str]) -> ModelCard:
    return ModelCard(
        classes=classes,
        defect_classes=defects,
        preprocess=PreprocessSpec(input_size=(SIZE, SIZE)),
        backbone="mobilenet_v3_small",
    )


def _model(num_classes: int, seed: int = 0, head_groups: list[int] | None = None) -> Classifier:
    """A random mobilenet_v3_small made informative: BatchNorm statistics set on random inputs (at torchvision's
    initial statistics its features vanish), a strong head, logits centred so probabilities are not saturated."""
    torch.manual_seed(seed)
    model = create_model("mobilenet_v3_small", num_classes, weights="none", head_groups=head_groups)
    calibration = torch.from_numpy(_inputs(16, seed=99))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    with torch.no_grad():
        model.train()(calibration)
        model.eval()
        nn.init.normal_(model.head.weight, std=0.3)
        model.head.bias -= model.head_logits(model.features(calibration)).mean(0)
    return model


def _inputs(n: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(0, 1, (n, 3, SIZE, SIZE)).astype(np.float32)


def _outputs(path: Path, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    probs, heat = session.run(["probs", "heatmap"], {"image": x})
    return probs, heat


def _local_logits(model: Classifier, x: np.ndarray) -> torch.Tensor:
    with torch.no_grad():
        return model.local_logits(model.features(torch.from_numpy(x))).double()


def test_heatmap_is_local_defect_log_odds(tmp_path: Path) -> None:
    """heatmap = sigmoid(logsumexp over defect classes - logsumexp over good classes) of per-location logits."""
    classes, defects = ["ok", "crack", "good", "stain"], ["crack", "stain"]
    model = _model(4)
    card = _card(classes, defects).replace(metrics={"roc_auc": 0.97}, data_fingerprint="abc")
    report = export_model(model, card, tmp_path / "sub" / "m.onnx", _inputs(5))
    assert report.parity.probs_max_abs <= PROBS_TOLERANCE
    loaded = read_card(onnx.load(str(report.path)))
    assert loaded == report.card and loaded.metrics == {"roc_auc": 0.97} and loaded.data_fingerprint == "abc"
    assert loaded.content_hash and loaded.created >= card.created
    for n in (1, 7):
        probs, heat = _outputs(report.path, _inputs(n, seed=n))
        assert probs.shape == (n, 4) and heat.shape == (n, 2, 2)
        np.testing.assert_allclose(probs.sum(1), 1.0, atol=1e-5)
    x = _inputs(3, seed=1)
    probs, heat = _outputs(report.path, x)
    local = _local_logits(model, x)
    expected = torch.sigmoid(local[:, [1, 3]].logsumexp(1) - local[:, [0, 2]].logsumexp(1)).numpy()
    assert heat.shape == (3, 2, 2)
    np.testing.assert_allclose(heat, expected, atol=1e-4)
    # the probabilities are the softmax of the mean of the same per-location logits (the CAM is exact)
    np.testing.assert_allclose(probs, torch.softmax(local.mean(dim=(2, 3)), 1).numpy(), atol=1e-5)
    assert 0.05 < float(heat.std()), "a heatmap that does not vary would make this test vacuous"


def test_heatmap_without_good_classes_shows_the_predicted_class(tmp_path: Path) -> None:
    """All classes defects (NEU-like): the heatmap is the per-location probability of the predicted class."""
    classes = ["crazing", "inclusion", "patches"]
    model = _model(3, seed=2)
    x = _inputs(8, seed=3)
    report = export_model(model, _card(classes, classes), tmp_path / "neu.onnx", _inputs(4))
    probs, heat = _outputs(report.path, x)
    local = torch.softmax(_local_logits(model, x), dim=1).numpy()
    predicted = probs.argmax(1)
    assert len(set(predicted.tolist())) > 1, "the check needs images predicted as different classes"
    expected = np.stack([local[i, predicted[i]] for i in range(len(x))])
    np.testing.assert_allclose(heat, expected, atol=1e-4)


def test_merged_classes_add_up_their_sources_in_probabilities_and_heatmap(tmp_path: Path, capsys) -> None:
    """A head trained on defect types (crack, pit, stain) of a model whose classes are defect / ok."""
    card = _card(["defect", "ok"], ["defect"]).replace(trained_as={"defect": ["crack", "pit", "stain"]})
    assert card.head_groups == [0, 0, 0, 1]
    model = _model(2, seed=4, head_groups=card.head_groups)
    x = _inputs(6, seed=5)
    with torch.no_grad():
        head = model.head_logits(model.features(torch.from_numpy(x))).double()
        assert model.training_logits(torch.from_numpy(x)).shape == (6, 4) and model(torch.from_numpy(x)).shape == (6, 2)
        merged = torch.softmax(model(torch.from_numpy(x)).double(), 1).numpy()
    fine = torch.softmax(head, 1).numpy()
    expected = np.stack([fine[:, :3].sum(1), fine[:, 3]], axis=1)
    np.testing.assert_allclose(merged, expected, atol=1e-6)
    assert np.abs(expected[:, 0] - fine[:, :3].max(1)).max() > 0.05, (
        "the types' probabilities must be spread: otherwise summing them and taking the largest would agree"
    )

    report = export_model(model, card, tmp_path / "merged.onnx", _inputs(4))
    assert report.card.trained_as == {"defect": ["crack", "pit", "stain"]}
    probs, heat = _outputs(report.path, x)
    np.testing.assert_allclose(probs, expected, atol=1e-5)
    local = torch.softmax(_local_logits(model, x), dim=1).numpy()  # N x 4 head units x h x w
    np.testing.assert_allclose(heat, local[:, :3].sum(1), atol=1e-4)
    with pytest.raises(SystemExit) as done:
        main(["info", str(report.path)])
    assert done.value.code in (0, None) and "defect = crack + pit + stain" in capsys.readouterr().out


def test_merged_logits_are_stable_for_large_logits() -> None:
    model = _model(2, head_groups=[0, 0, 1])
    z = torch.tensor([[800.0, 790.0, -5.0], [-900.0, -905.0, 0.0]])
    merged = torch.softmax(model.merge(z).double(), 1)
    expected = torch.softmax(z.double(), 1)
    np.testing.assert_allclose(merged[:, 0].numpy(), expected[:, :2].sum(1).numpy(), atol=1e-12)
    assert torch.isfinite(model.merge(z)).all()


def test_head_groups_must_cover_the_classes_in_order() -> None:
    for groups in ([0, 0], [0, 2, 1], [1, 0, 0]):
        with pytest.raises(ConfigError, match="must name every class 0..1, in order"):
            create_model("resnet18", 2, weights="none", head_groups=groups)
    model = create_model("resnet18", 2, weights="none", head_groups=[0, 1, 1])
    assert model.head.out_features == 3 and model.merged and "head_units=3" in repr(model)
    with pytest.raises(ConfigError, match=r"class counts \[5.0, 5.0\] must be 3 positive numbers"):
        model.set_training_prior([5, 5])
    with pytest.raises(ExportError, match=r"training classes \['ok', 'defect'\] do not match the model's head of 3"):
        export_model(model, _card(["ok", "defect"], ["defect"]), Path("/nonexistent/m.onnx"), _inputs(1))


class _Noisy(nn.Module):
    """A trunk that is not deterministic: torch and onnxruntime draw different noise, so parity must fail."""

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.inner(x)
        return feats + 0.2 * (torch.rand_like(feats[:, :, :1, :1]) - 0.5)


def test_parity_failure_refuses_with_the_figure_and_writes_nothing(tmp_path: Path) -> None:
    base = _model(2)
    noisy = Classifier("mobilenet_v3_small", _Noisy(base.backbone), base.feature_channels, 2)
    noisy.head.load_state_dict(base.head.state_dict())
    out = tmp_path / "out" / "noisy.onnx"
    with pytest.raises(ExportError, match=r"differ in probabilities by up to \d\.\d+(e-\d+)? \(tolerance 0\.0001\)"):
        export_model(noisy.eval(), _card(["ok", "defect"], ["defect"]), out, _inputs(4))
    assert not out.exists()
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_inconsistent_inputs_are_refused(tmp_path: Path) -> None:
    model = _model(2)
    with pytest.raises(ExportError, match="3 classes"):
        export_model(model, _card(["ok", "a", "b"], ["a"]), tmp_path / "m.onnx", _inputs(2))
    with pytest.raises(ExportError, match=r"do not fit the card's input \(N, 3, 64, 64\)"):
        export_model(model, _card(["ok", "a"], ["a"]), tmp_path / "m.onnx", np.zeros((2, 3, 32, 32), np.float32))
    with pytest.raises(ExportError, match="at least one verification image"):
        export_model(model, _card(["ok", "a"], ["a"]), tmp_path / "m.onnx", np.zeros((0, 3, SIZE, SIZE), np.float32))
    with pytest.raises(ConfigError, match="opset 16"):
        export_model(model, _card(["ok", "a"], ["a"]), tmp_path / "m.onnx", _inputs(1), opset=16)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.slow
def test_dynamo_exporter_gives_the_same_contract(tmp_path: Path) -> None:
    model = _model(2)
    report = export_model(
        model, _card(["ok", "defect"], ["defect"]), tmp_path / "dynamo.onnx", _inputs(3), opset=18, exporter="dynamo"
    )
    assert report.opset == 18 and report.parity.probs_max_abs <= PROBS_TOLERANCE
    probs, heat = _outputs(report.path, _inputs(5))
    assert probs.shape == (5, 2) and heat.shape == (5, 2, 2)
    with pytest.raises(ConfigError, match="opset 18 or newer"):
        export_model(
            model, _card(["ok", "defect"], ["defect"]), tmp_path / "d17.onnx", _inputs(1), opset=17, exporter="dynamo"
        )
