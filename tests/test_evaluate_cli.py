"""``andon evaluate`` and ``andon thresholds`` on a small folder of generated images, checked by hand.

The data set (64x64 PNGs; the tiny model calls dark regions defects):

    ok/      five bright frames (levels 200..240)            -> pass   (label ok)
             one frame with a large dark blob                -> reject (label defect): a false reject
    defect/  two frames with larger dark blobs               -> reject (label defect)
             one bright frame (level 205)                    -> pass   (label ok): an escape
             one uniform grey frame scored P(defect) ~ 0.6   -> review (label defect)

By hand: accuracy 8/10; confusion [[5, 1], [1, 3]]; escape 1/4, false reject 1/6, review 1/10. Ranking by
P(defect): blob62 > blob60 > ok_blob > grey > ok_200 > d_205 > ok_210 > ... > ok_240, so ROC AUC = 21/24 and
average precision = (1 + 1 + 3/4 + 4/6) / 4.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from andon.cli import main
from andon.inspect import Inspector
from tiny_onnx import write_tiny_model


def grey_level_for(p_defect: float) -> int:
    m = (-math.log(p_defect / (1 - p_defect)) - 0.6) / 4
    return int(round(255 * (0.5 + 0.25 * m)))


def _frame(level: int, blob: int = 0) -> np.ndarray:
    image = np.full((64, 64, 3), level, np.uint8)
    image[:blob, :blob] = 10
    return image


def _save(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    for level in (200, 210, 220, 230, 240):
        _save(root / "ok" / f"ok_{level}.png", _frame(level))
    _save(root / "ok" / "ok_blob.png", _frame(220, 56))
    _save(root / "defect" / "d_blob60.png", _frame(220, 60))
    _save(root / "defect" / "d_blob62.png", _frame(220, 62))
    _save(root / "defect" / "d_bright205.png", _frame(205))
    _save(root / "defect" / "d_grey.png", _frame(grey_level_for(0.6)))
    return root


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return write_tiny_model(tmp_path / "tiny.onnx")


def flat(text: str) -> str:
    """Text with rich's line wrapping undone."""
    return " ".join(text.split())


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_evaluate_json_matches_hand_computed(model: Path, data_dir: Path, capsys) -> None:
    code, out, _ = run(["evaluate", str(model), str(data_dir), "--json"], capsys)
    assert code == 0
    result = json.loads(out)
    assert result["classes"] == ["ok", "defect"] and result["defect_classes"] == ["defect"]
    assert result["data"]["n"] == 10 and result["data"]["split"] is None
    metrics = result["metrics"]
    assert metrics["accuracy"] == pytest.approx(0.8)
    assert metrics["roc_auc"] == pytest.approx(21 / 24)
    assert metrics["pr_auc"] == pytest.approx((1 + 1 + 3 / 4 + 4 / 6) / 4)
    assert result["confusion"] == [[5, 1], [1, 3]]
    ok, defect = result["per_class"]
    assert (ok["precision"], ok["recall"]) == pytest.approx((5 / 6, 5 / 6))
    assert (defect["precision"], defect["recall"], defect["f1"]) == pytest.approx((3 / 4, 3 / 4, 3 / 4))
    rates = result["rates"]
    assert rates["escape_rate"] == pytest.approx(1 / 4)
    assert rates["false_reject_rate"] == pytest.approx(1 / 6)
    assert rates["review_rate"] == pytest.approx(1 / 10)
    assert (rates["n_defective"], rates["n_good"]) == (4, 6)
    assert result["decisions"] == {"pass": 6, "review": 1, "reject": 3}
    assert result["thresholds"]["defect"] == {"pass_below": 0.3, "reject_at": 0.7}
    # 4 defective parts can verify escape targets of 1/5 and above only
    feasible = [p for p in result["operating_points"] if p["error"] is None]
    assert feasible and all(p["target_escape"] >= 0.2 for p in feasible)
    assert any("at least 199 needed" in (p["error"] or "") for p in result["operating_points"])


def test_evaluate_table_and_report(model: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    report = tmp_path / "report"
    code, out, _ = run(["evaluate", str(model), str(data_dir), "--report", str(report)], capsys)
    assert code == 0
    for text in ("escape rate", "25.00%", "16.67%", "10.00%", "Trade-off", "Confusion", "0.8750"):
        assert text in flat(out)
    html = (report / "report.html").read_text()
    assert "25.00%" in html and "tradeoff.png" in html and "review band" not in html.split("<h2>")[0]
    for name in ("confusion.png", "roc.png", "pr.png", "tradeoff.png"):
        assert (report / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    saved = json.loads((report / "evaluation.json").read_text())
    assert saved["rates"]["escape_rate"] == pytest.approx(0.25)


def test_evaluate_defect_classes_option(model: Path, data_dir: Path, capsys) -> None:
    code, _, err = run(["evaluate", str(model), str(data_dir), "--json", "--defect-classes", "nope"], capsys)
    assert code == 2 and "defect classes ['nope'] are not among the classes" in err


def test_evaluate_unknown_data_class(model: Path, data_dir: Path, capsys) -> None:
    _save(data_dir / "scratch" / "s.png", _frame(20, 64))
    code, _, err = run(["evaluate", str(model), str(data_dir), "--json"], capsys)
    assert code == 2
    assert "class(es) ['scratch'] that the model does not know" in err and "--remap" in err
    code, out, _ = run(["evaluate", str(model), str(data_dir), "--json", "--remap", "scratch=defect"], capsys)
    assert code == 0 and json.loads(out)["rates"]["n_defective"] == 5


def test_evaluate_unreadable_image_is_loud(model: Path, data_dir: Path, capsys) -> None:
    (data_dir / "ok" / "broken.png").write_bytes(b"not a png at all")
    code, _, err = run(["evaluate", str(model), str(data_dir), "--json"], capsys)
    assert code == 2 and "1 image(s) cannot be read" in err and "broken.png" in err
    assert err.count("\n") == 1  # one line, no traceback


def test_evaluate_run_folder_without_training(model: Path, data_dir: Path, tmp_path: Path, capsys, monkeypatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "andon.training.predict", None)  # as if the training extras were absent
    run_dir = tmp_path / "runs" / "r1"
    run_dir.mkdir(parents=True)
    code, _, err = run(["evaluate", str(run_dir), str(data_dir), "--json"], capsys)
    assert code == 2 and "needs the training extras" in err and "andon export RUN" in err


def _manifest(tmp_path: Path, data_dir: Path) -> Path:
    """test split = the ten hand-checked images; val split = five more ok and five more defects."""
    rows = ["path,label,split"]
    for p in sorted(data_dir.rglob("*.png")):
        rows.append(f"{p.relative_to(tmp_path).as_posix()},{p.parent.name},test")
    val = tmp_path / "val"
    for i, level in enumerate((195, 215, 225, 235, 245)):
        rows.append(f"{_save(val / f'ok{i}.png', _frame(level)).relative_to(tmp_path).as_posix()},ok,val")
    for i, blob in enumerate((50, 54, 58, 61, 63)):
        rows.append(f"{_save(val / f'd{i}.png', _frame(220, blob)).relative_to(tmp_path).as_posix()},defect,val")
    path = tmp_path / "manifest.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_evaluate_calibrate_on_val(model: Path, data_dir: Path, tmp_path: Path, capsys) -> None:
    manifest = _manifest(tmp_path, data_dir)
    code, out, _ = run(
        [
            "evaluate",
            str(model),
            str(manifest),
            "--json",
            "--split",
            "test",
            "--calibrate-on",
            "val",
            "--target-escape",
            "0.2",
        ],
        capsys,
    )
    assert code == 0
    result = json.loads(out)
    assert result["data"] == {"path": str(manifest), "split": "test", "n": 10}
    inspector = Inspector.load(model)
    val_defect_scores = [
        inspector.inspect((tmp_path / "val" / f"d{i}.png").read_bytes()).defect_score for i in range(5)
    ]
    # k = floor(0.2 * (5 + 1)) = 1: pass_below is the lowest val defect score, rounded down
    expected = math.floor(min(val_defect_scores) * 1e6) / 1e6
    cal = result["calibration"]
    assert cal["thresholds"]["defect"]["pass_below"] == pytest.approx(expected, abs=2e-6)
    assert cal["thresholds"]["defect"]["reject_at"] == cal["thresholds"]["defect"]["pass_below"]
    assert cal["n"] == 10 and cal["n_defective"] == 5
    # on the test split, the calibrated band (~0.80, two-way) lets the bright and grey defects pass
    test_scores = {p.name: inspector.inspect(p.read_bytes()).defect_score for p in data_dir.rglob("*.png")}
    escapes = sum(test_scores[n] < expected for n in ("d_blob60.png", "d_blob62.png", "d_bright205.png", "d_grey.png"))
    assert result["calibrated_rates"]["escape_rate"] == pytest.approx(escapes / 4)


def test_evaluate_calibrate_on_needs_splits(model: Path, data_dir: Path, capsys) -> None:
    code, _, err = run(["evaluate", str(model), str(data_dir), "--calibrate-on", "val"], capsys)
    assert code == 2 and "the data has no splits" in err


# -- andon thresholds ------------------------------------------------------------------------------------------


def test_thresholds_show(model: Path, capsys) -> None:
    code, out, _ = run(["thresholds", str(model), "--json"], capsys)
    assert code == 0
    data = json.loads(out)
    assert data["thresholds"]["defect"] == {"pass_below": 0.3, "reject_at": 0.7}
    code, out, _ = run(["thresholds", str(model)], capsys)
    assert code == 0 and "P(defect)" in out and "0.3" in out and "0.7" in out and "source: manual" in flat(out)


def test_thresholds_set_by_hand_round_trip(model: Path, capsys) -> None:
    before = Inspector.load(model)
    code, out, _ = run(
        ["thresholds", str(model), "--pass-below", "0.2", "--reject-at", "0.6", "--class", "defect:0.1:0.5"], capsys
    )
    assert code == 0 and "content hash unchanged" in flat(out)
    after = Inspector.load(model)
    assert after.thresholds.defect.pass_below == 0.2 and after.thresholds.defect.reject_at == 0.6
    assert after.thresholds.per_class["defect"].reject_at == 0.5
    assert after.thresholds.source.startswith("manual")
    assert after.model_hash == before.model_hash
    code, _, _ = run(["thresholds", str(model), "--clear-class", "defect", "--reject-at", "0.65"], capsys)
    again = Inspector.load(model)
    assert code == 0 and again.thresholds.per_class == {} and again.thresholds.defect.pass_below == 0.2
    assert again.thresholds.defect.reject_at == 0.65
    assert not list(model.parent.glob(".*.tmp"))


def test_new_thresholds_drop_the_rates_measured_at_the_old_ones(tmp_path: Path, capsys) -> None:
    from tiny_onnx import tiny_card

    card = tiny_card(
        metrics={
            "test_accuracy": 0.9,
            "test_escape_rate": 0.01,
            "test_false_reject_rate": 0.02,
            "val_review_rate": 0.05,
        }
    )
    model = write_tiny_model(tmp_path / "rated.onnx", card)
    code, _, _ = run(["thresholds", str(model), "--reject-at", "0.6"], capsys)
    assert code == 0 and Inspector.load(model).card.metrics == {"test_accuracy": 0.9}


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--pass-below", "0.8"], "pass_below 0.8 must not exceed reject_at 0.7"),
        (["--reject-at", "1.5"], "reject_at 1.5 must be between 0 and 1"),
        (["--class", "ok:0.1:0.2"], "'ok' is not a defect class"),
        (["--class", "defect:0.1"], "is not NAME:PASS_BELOW:REJECT_AT"),
        (["--clear-class", "defect"], "there is no per-class band for 'defect'"),
    ],
)
def test_thresholds_bad_values(model: Path, capsys, args, message) -> None:
    before = model.read_bytes()
    code, _, err = run(["thresholds", str(model), *args], capsys)
    assert code == 2 and message in err
    assert model.read_bytes() == before


def test_thresholds_dry_run_writes_nothing(model: Path, capsys) -> None:
    before = model.read_bytes()
    code, out, _ = run(["thresholds", str(model), "--pass-below", "0.1", "--dry-run", "--json"], capsys)
    assert code == 0 and json.loads(out)["thresholds"]["defect"]["pass_below"] == 0.1
    assert model.read_bytes() == before


def test_thresholds_calibrate(model: Path, data_dir: Path, capsys) -> None:
    code, out, _ = run(
        [
            "thresholds",
            str(model),
            "--calibrate",
            str(data_dir),
            "--target-escape",
            "0.2",
            "--max-false-reject",
            "0.2",
            "--max-review",
            "0.5",
        ],
        capsys,
    )  # the band reviews 4 of 10
    assert code == 0, out
    inspector = Inspector.load(model)
    scores = {p.name: inspector.inspect(p.read_bytes()).defect_score for p in data_dir.rglob("*.png")}
    band = inspector.thresholds.defect
    # k = floor(0.2 * 5) = 1: the lowest defect score (the bright defect), rounded down
    assert band.pass_below == math.floor(scores["d_bright205.png"] * 1e6) / 1e6
    # 6 good parts, cap 20%: floor(0.2 * 7) - 1 = 0 may score >= reject_at: just above the worst good part
    worst_good = max(v for k, v in scores.items() if k.startswith("ok"))
    assert worst_good < band.reject_at <= worst_good + 2e-6
    assert inspector.thresholds.source.startswith("calibrated on")


def test_thresholds_calibrate_impossible(model: Path, data_dir: Path, capsys) -> None:
    before = model.read_bytes()
    code, _, err = run(["thresholds", str(model), "--calibrate", str(data_dir), "--target-escape", "0.005"], capsys)
    assert code == 2 and "too few defective parts" in err and "4 in the calibration data, at least 199 needed" in err
    assert "--budget" in err  # the way out for data with few defects
    assert model.read_bytes() == before


def test_thresholds_calibrate_budget_band(model: Path, data_dir: Path, capsys) -> None:
    """Too few defects for an escape target: --budget spends the review budget under the false-reject cap."""
    from andon.inspect import Inspector

    args = ["thresholds", str(model), "--calibrate", str(data_dir), "--budget", "--max-false-reject", "0.2"]
    code, out, err = run([*args, "--max-review", "0.5"], capsys)
    assert code == 0, err
    t = Inspector.load(model).thresholds
    assert t.source.startswith("budget band") and "not verified" in t.source
    assert t.defect.pass_below <= t.defect.reject_at
    code, _, err = run([*args, "--target-escape", "0.01"], capsys)
    assert code == 2 and "leave out --target-escape" in err


def test_thresholds_refuse_tampered_graph(model: Path, capsys) -> None:
    m = onnx.load(str(model))
    w = next(t for t in m.graph.initializer if t.name == "W")
    w.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(w) * 2, "W"))
    onnx.save(m, str(model))
    code, _, err = run(["thresholds", str(model), "--pass-below", "0.1"], capsys)
    assert code == 2 and "changed after export" in err


def test_manual_and_calibrate_exclusive(model: Path, data_dir: Path, capsys) -> None:
    code, _, err = run(["thresholds", str(model), "--pass-below", "0.1", "--calibrate", str(data_dir)], capsys)
    assert code == 2 and "not both" in err


def test_compare_active_reads_the_service_named_by_config_and_data_dir(
    model: Path, data_dir: Path, tmp_path: Path, monkeypatch, capsys
) -> None:
    """``--compare active`` takes the registry of the service that --data-dir / --config name, over ANDON_*."""
    from andon.service.domain import open_service
    from andon.service.settings import Settings

    plant = tmp_path / "plant"
    with open_service(Settings.load(None, data_dir=plant)) as service:
        entry, _ = service.registry.add_file(model)
        service.registry.promote(entry.version)
    monkeypatch.setenv("ANDON_DATA_DIR", str(tmp_path / "elsewhere"))  # a service with no models
    argv = ["evaluate", str(model), str(data_dir), "--json", "--compare", "active"]

    code, _, err = run(argv, capsys)
    assert code == 2 and f"the registry in {tmp_path / 'elsewhere' / 'models'} has no active model" in err

    code, out, err = run([*argv, "--data-dir", str(plant)], capsys)
    assert code == 0, err
    result = json.loads(out)
    assert result["compare"]["model"]["version"] == entry.version
    assert result["compare"]["model"]["hash"] == entry.content_hash
    assert {row["difference"] for row in result["side_by_side"]} <= {0.0, None}

    config = tmp_path / "service.yaml"
    config.write_text(f"data_dir: {plant}\n")
    monkeypatch.delenv("ANDON_DATA_DIR")
    code, out, err = run([*argv, "--config", str(config)], capsys)
    assert code == 0, err
    assert json.loads(out)["compare"]["model"]["version"] == entry.version
