"""``andon export`` / ``export_run`` on a fabricated run folder, ``andon info``, and int8 quantization.

The run folder is what training writes: ``best.pt`` (an andon checkpoint) and ``splits.csv``. Its model is a
mobilenet_v3_small whose BatchNorm statistics were set on the images and whose head was fitted to them, so
its probabilities mean something (a random mobilenet outputs near-constant probabilities, which would make
parity and accuracy checks vacuous).
"""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
import torch

from andon.cli import main
from andon.errors import RunError
from andon.inspect import Inspector
from andon.inspect.card import ModelCard, PreprocessSpec, ThresholdBand, Thresholds
from andon.inspect.onnxfile import content_hash, read_card
from andon.models import Checkpoint, create_model, save_checkpoint
from andon.models.export import PROBS_TOLERANCE, export_run

CLASSES = ["dent", "ok", "scratch"]
SIZE = 64


def _part(rng: np.random.Generator, label: str) -> np.ndarray:
    """A grey textured part; scratches are dark lines, dents dark blobs."""
    img = (150 + rng.integers(0, 40, (72, 88, 1))).astype(np.uint8).repeat(3, axis=2)
    if label == "scratch":
        start = (int(rng.integers(0, 30)), int(rng.integers(0, 72)))
        end = (int(rng.integers(58, 88)), int(rng.integers(0, 72)))
        cv2.line(img, start, end, (25, 25, 25), 3)
    elif label == "dent":
        cv2.circle(
            img, (int(rng.integers(18, 70)), int(rng.integers(18, 54))), int(rng.integers(7, 12)), (55, 55, 55), -1
        )
    return np.ascontiguousarray(img)


def _fit(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> None:
    """Set BatchNorm statistics on ``x`` and fit the head on the pooled features (a cheap stand-in for training)."""
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative average
    model.train()
    with torch.no_grad():
        model(x)
    model.eval()
    with torch.no_grad():
        feats = model.features(x).mean(dim=(2, 3))
    feats_std = feats.std(0).mean().clamp_min(1e-6)
    head = torch.nn.Linear(feats.shape[1], len(CLASSES))
    opt = torch.optim.LBFGS(head.parameters(), max_iter=100)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(head(feats / feats_std), y) + 1e-3 * head.weight.square().sum()
        loss.backward()
        return loss

    opt.step(closure)
    with torch.no_grad():
        model.head.weight.copy_(head.weight / feats_std)
        model.head.bias.copy_(head.bias)


def make_run(root: Path, *, n_train: int = 30, n_val: int = 15, seed: int = 0) -> Path:
    """A run folder as training writes it: images, splits.csv, best.pt."""
    rng = np.random.default_rng(seed)
    run = root / "run"
    (run / "images").mkdir(parents=True)
    rows, tensors, labels = ["path,label,split"], [], []
    spec = PreprocessSpec(input_size=(SIZE, SIZE), resize="stretch", mean=(0.5,) * 3, std=(0.25,) * 3)
    from andon.inspect.preprocess import Preprocessor

    pre = Preprocessor(spec)
    for i in range(n_train + n_val):
        label = CLASSES[i % 3]
        image = _part(rng, label)
        name = f"images/{i:03d}_{label}.png"
        cv2.imwrite(str(run / name), cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
        split = "train" if i < n_train else "val"
        rows.append(f"{name},{label},{split}")
        if split == "train":
            tensors.append(pre(image))
            labels.append(CLASSES.index(label))
    (run / "splits.csv").write_text("\n".join(rows) + "\n")
    torch.manual_seed(seed)
    model = create_model("mobilenet_v3_small", len(CLASSES), weights="none")
    _fit(model, torch.from_numpy(np.stack(tensors)), torch.tensor(labels))
    card = ModelCard(
        name="bracket",
        version="3",
        classes=CLASSES,
        defect_classes=["dent", "scratch"],
        preprocess=spec,
        thresholds=Thresholds(defect=ThresholdBand(pass_below=0.3, reject_at=0.7), source="manual"),
        backbone="mobilenet_v3_small",
        weights="none",
        data_fingerprint="f" * 64,
        metrics={"accuracy": 0.95},
    )
    save_checkpoint(run / "best.pt", Checkpoint("mobilenet_v3_small", len(CLASSES), model.state_dict(), card, epoch=7))
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run(tmp_path_factory.mktemp("export-run"))


@pytest.fixture(scope="module")
def exported(run_dir: Path, tmp_path_factory: pytest.TempPathFactory):
    out = tmp_path_factory.mktemp("export-out") / "bracket.onnx"
    stages: list[str] = []
    report = export_run(run_dir, out, progress=stages.append)
    return report, stages


def _val_tensors(run_dir: Path, card: ModelCard) -> tuple[np.ndarray, np.ndarray]:
    from andon.inspect.preprocess import Preprocessor

    pre = Preprocessor(card.preprocess)
    rows = [line.split(",") for line in (run_dir / "splits.csv").read_text().splitlines()[1:]]
    val = [r for r in rows if r[2] == "val"]
    x = np.stack([pre((run_dir / r[0]).read_bytes()) for r in val])
    return x, np.array([CLASSES.index(r[1]) for r in val])


def test_export_writes_a_verified_self_contained_file(exported) -> None:
    report, stages = exported
    assert report.path.is_file() and report.size_bytes == report.path.stat().st_size
    assert [p.name for p in report.path.parent.iterdir()] == [report.path.name], "no temp files left behind"
    assert report.parity.probs_max_abs <= PROBS_TOLERANCE
    assert report.parity.n_images == 15 and 1 in report.parity.batch_sizes and max(report.parity.batch_sizes) > 1
    assert report.opset == 17 and report.heatmap_size == (2, 2)
    assert any("parity" in s for s in stages) and any("writing" in s for s in stages)
    model = onnx.load(str(report.path), load_external_data=False)
    assert all(t.data_location != onnx.TensorProto.EXTERNAL for t in model.graph.initializer)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]


def test_card_round_trips_through_the_file(exported, run_dir: Path) -> None:
    report, _ = exported
    model = onnx.load(str(report.path))
    card = read_card(model)
    assert card == report.card
    assert card.content_hash == content_hash(model) and len(card.content_hash) == 64
    assert card.classes == CLASSES and card.defect_classes == ["dent", "scratch"]
    assert card.preprocess.input_size == (SIZE, SIZE) and card.preprocess.mean == (0.5,) * 3
    assert card.thresholds.defect.reject_at == 0.7 and card.thresholds.source == "manual"
    assert card.backbone == "mobilenet_v3_small" and card.data_fingerprint == "f" * 64
    assert card.metrics == {"accuracy": 0.95} and card.name == "bracket" and card.version == "3"
    assert card.quantization == "fp32" and card.input_name == "image"
    assert card.output_names == {"probabilities": "probs", "heatmap": "heatmap"}


def test_graph_has_dynamic_batch_and_matches_torch_on_val_images(exported, run_dir: Path) -> None:
    import onnxruntime as ort

    from andon.models import load_checkpoint
    from andon.models.checkpoint import model_from_checkpoint

    report, _ = exported
    model = onnx.load(str(report.path))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, SIZE, SIZE]
    session = ort.InferenceSession(str(report.path), providers=["CPUExecutionProvider"])
    x, y = _val_tensors(run_dir, report.card)
    torch_model = model_from_checkpoint(load_checkpoint(run_dir / "best.pt"))
    with torch.no_grad():
        expected = torch.softmax(torch_model(torch.from_numpy(x)), dim=1).numpy()
    for batch in (x[:1], x[:3]):
        probs, heat = session.run(["probs", "heatmap"], {"image": batch})
        assert probs.shape == (len(batch), 3) and heat.shape == (len(batch), 2, 2)
        assert np.abs(probs - expected[: len(batch)]).max() <= PROBS_TOLERANCE
        assert heat.min() >= 0.0 and heat.max() <= 1.0
    assert (expected.argmax(1) == y).mean() >= 0.6, "the fixture model must be better than chance"


def test_inspector_serves_the_exported_file(exported, run_dir: Path) -> None:
    report, _ = exported
    inspector = Inspector.load(report.path)
    scratch = next((run_dir / "images").glob("*_scratch.png")).read_bytes()
    result = inspector.inspect(scratch, heatmap=True)
    assert set(result.scores) == set(CLASSES)
    assert result.heatmap is not None and result.heatmap.shape == (2, 2)
    assert result.model_hash == report.card.content_hash


def test_export_cli_and_info_cli(run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cli.onnx"
    with pytest.raises(SystemExit) as code:
        main(["export", str(run_dir), "--out", str(out), "--verify-images", "4"])
    assert code.value.code in (0, None)
    printed = capsys.readouterr().out
    assert "parity" in printed and "opset 17" in printed and out.is_file()

    with pytest.raises(SystemExit) as code:
        main(["info", str(out)])
    assert code.value.code in (0, None)
    text = capsys.readouterr().out
    for expected in (
        "dent, ok, scratch",
        "mobilenet_v3_small",
        "64x64",
        "RGB",
        "stretch",
        "mean (0.5, 0.5, 0.5)",
        "pass below 0.3, reject at 0.7",
        "fp32",
        "image float [batch, 3, 64, 64]",
        "heatmap float [batch, 2, 2]",
        "ai.onnx 17",
        "f" * 32,
    ):
        assert expected in text, expected

    with pytest.raises(SystemExit):
        main(["info", str(out), "--json"])
    info = json.loads(capsys.readouterr().out)
    assert info["card"]["classes"] == CLASSES and info["content_hash_ok"] is True
    assert info["outputs"][1] == {"name": "heatmap", "type": "float", "shape": ["batch", 2, 2]}


@pytest.mark.parametrize("bad", ["png", "checkpoint", "missing"])
def test_info_refuses_what_is_not_an_andon_model_in_one_line(
    bad: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = {
        "png": next((run_dir / "images").glob("*.png")),
        "checkpoint": run_dir / "best.pt",
        "missing": tmp_path / "absent.onnx",
    }[bad]
    with pytest.raises(SystemExit) as code:
        main(["info", str(path)])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    assert {"png": "PNG image", "checkpoint": "PyTorch checkpoint", "missing": "does not exist"}[bad] in err


def _corrupt(run: Path, how: str) -> None:
    if how == "garbage-checkpoint":
        (run / "best.pt").write_bytes(b"\x00" * 100)
    elif how == "no-checkpoint":
        (run / "best.pt").unlink()
    elif how == "no-splits":
        (run / "splits.csv").unlink()
    elif how == "wrong-weights":
        from andon.models import load_checkpoint

        ckpt = load_checkpoint(run / "best.pt")
        ckpt.state_dict = create_model("resnet18", 3, weights="none").state_dict()
        save_checkpoint(run / "best.pt", ckpt)
    elif how == "unknown-label":
        (run / "splits.csv").write_text((run / "splits.csv").read_text().replace(",ok,", ",rust,", 1))


@pytest.mark.parametrize(
    "how, message",
    [
        ("garbage-checkpoint", "cannot be read"),
        ("no-checkpoint", "does not exist"),
        ("no-splits", "has no splits.csv"),
        ("wrong-weights", "do not fit mobilenet_v3_small"),
        ("unknown-label", "'rust'"),
    ],
)
def test_export_refuses_a_corrupted_run_in_one_line(
    how: str, message: str, run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import shutil

    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    _corrupt(run, how)
    out = tmp_path / "out" / "model.onnx"
    with pytest.raises(SystemExit) as code:
        main(["export", str(run), "--out", str(out)])
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("error: ") and message in err, err
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))
    with pytest.raises(RunError):
        export_run(run, out)


def test_export_refuses_a_missing_run_folder_and_bad_out_name(tmp_path: Path, run_dir: Path) -> None:
    with pytest.raises(RunError, match="does not exist"):
        export_run(tmp_path / "nope", tmp_path / "m.onnx")
    from andon.errors import ConfigError

    with pytest.raises(ConfigError, match=r"must end in \.onnx"):
        export_run(run_dir, tmp_path / "model.bin")


@pytest.mark.slow
def test_int8_export_is_smaller_carries_its_card_and_is_judged(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "int8.onnx"
    report = export_run(run_dir, out, int8=True, max_accuracy_drop=50.0, calibration_images=12)
    q = report.int8
    assert q is not None and q.n_eval == 15 and q.calibration_images == 12
    assert out.stat().st_size == report.size_bytes < 0.5 * q.fp32_bytes
    assert 0.0 <= q.int8_accuracy <= 1.0 and q.accuracy_drop_pp == pytest.approx(
        (q.fp32_accuracy - q.int8_accuracy) * 100
    )
    assert q.fp32_ms_per_image > 0 and q.int8_ms_per_image > 0
    assert 0.0 <= q.decision_agreement <= 1.0 and 0.0 <= q.agreement <= 1.0
    model = onnx.load(str(out))
    assert sum(n.op_type == "QuantizeLinear" for n in model.graph.node) > 10
    producers = {o: n for n in model.graph.node for o in n.output}
    head = [n for n in model.graph.node if n.op_type == "Gemm"]
    assert head and all(
        producers.get(i) is None or producers[i].op_type != "DequantizeLinear" for n in head for i in n.input
    ), "the head and softmax stay fp32"
    card = read_card(model)
    assert card.quantization.startswith("int8") and card.content_hash == content_hash(model)
    assert card.metrics["int8_val_accuracy"] == pytest.approx(q.int8_accuracy)
    inspector = Inspector.load(out)
    x, y = _val_tensors(run_dir, card)
    assert (inspector.predict_probs(x).argmax(1) == y).mean() == pytest.approx(q.int8_accuracy)


@pytest.mark.slow
def test_int8_accuracy_gate_refuses_and_writes_nothing(
    run_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "gate" / "int8.onnx"
    with pytest.raises(SystemExit) as code:
        main(
            [
                "export",
                str(run_dir),
                "--out",
                str(out),
                "--int8",
                "--max-accuracy-drop",
                "-100",
                "--calibration-images",
                "6",
                "--verify-images",
                "2",
            ]
        )
    assert code.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "int8 accuracy" in err and "--max-accuracy-drop -100" in err and "no file written" in err
    assert not out.exists() and (not out.parent.exists() or not any(out.parent.iterdir()))


def test_info_flags_a_graph_changed_after_export(exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report, _ = exported
    model = onnx.load(str(report.path))
    weight = model.graph.initializer[0]
    values = onnx.numpy_helper.to_array(weight).copy()
    values.flat[0] += 1.0
    weight.CopyFrom(onnx.numpy_helper.from_array(values, weight.name))
    edited = tmp_path / "edited.onnx"
    onnx.save(model, str(edited))
    with pytest.raises(SystemExit):
        main(["info", str(edited), "--json"])
    assert json.loads(capsys.readouterr().out)["content_hash_ok"] is False
    with pytest.raises(SystemExit):
        main(["info", str(edited)])
    assert "MISMATCH" in capsys.readouterr().out
