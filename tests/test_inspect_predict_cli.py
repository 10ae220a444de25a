"""``andon predict``: table, JSON lines and CSV are parseable; bad images are per-line; overlays are written."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from andon.cli import main


def _save(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(path), image)
    return path


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    _save(root / "good.png", np.full((64, 64, 3), 220, np.uint8))
    bad = np.full((64, 96, 3), 220, np.uint8)
    bad[8:64, 0:72] = 10
    _save(root / "line2" / "bad.jpg", bad)
    (root / "notes.txt").write_text("not an image, and not picked up from a folder")
    return root


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        main(argv)
        code = 0
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else 0
    out = capsys.readouterr()
    return code, out.out, out.err


def test_jsonl(tiny_model_path: Path, images: Path, capsys) -> None:
    code, out, err = run(["predict", str(tiny_model_path), str(images), "--format", "jsonl"], capsys)
    assert code == 0
    records = [json.loads(line) for line in out.splitlines()]
    by_name = {Path(r["path"]).name: r for r in records}
    assert set(by_name) == {"good.png", "bad.jpg"}
    assert by_name["good.png"]["decision"] == "pass" and by_name["good.png"]["label"] == "ok"
    assert by_name["bad.jpg"]["decision"] == "reject" and by_name["bad.jpg"]["image_size"] == [64, 96]
    assert set(by_name["bad.jpg"]["timings_ms"]) == {"decode", "preprocess", "infer", "total"}
    assert "2 image(s): 1 pass, 0 review, 1 reject, 0 failed" in err


def test_csv(tiny_model_path: Path, images: Path, capsys) -> None:
    code, out, _ = run(
        [
            "predict",
            str(tiny_model_path),
            str(images / "good.png"),
            str(images / "line2"),
            "--format",
            "csv",
            "--batch",
            "1",
        ],
        capsys,
    )
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert [Path(r["path"]).name for r in rows] == ["good.png", "bad.jpg"]
    assert list(rows[0]) == ["path", "decision", "label", "defect_score", "p_ok", "p_defect", "heatmap", "error"]
    for r in rows:
        assert float(r["p_ok"]) + float(r["p_defect"]) == pytest.approx(1.0, abs=1e-5)
        assert float(r["defect_score"]) == pytest.approx(float(r["p_defect"]), abs=1e-6)
        assert r["error"] == ""
    assert [r["decision"] for r in rows] == ["pass", "reject"]


def test_table(tiny_model_path: Path, images: Path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # long temporary paths stay on one line
    code, out, _ = run(["predict", str(tiny_model_path), str(images)], capsys)
    assert code == 0
    assert "good.png" in out and "bad.jpg" in out and "pass" in out and "reject" in out
    assert "2 image(s): 1 pass, 0 review, 1 reject, 0 failed" in " ".join(out.split())


def test_unreadable_images_are_per_line(tiny_model_path: Path, images: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    missing = tmp_path / "missing.png"
    code, out, err = run(
        [
            "predict",
            str(tiny_model_path),
            str(broken),
            str(images / "good.png"),
            str(missing),
            str(images / "notes.txt"),
            "--format",
            "jsonl",
        ],
        capsys,
    )
    assert code == 1  # some failed
    records = [json.loads(line) for line in out.splitlines()]
    assert [Path(r["path"]).name for r in records] == ["broken.png", "good.png", "missing.png", "notes.txt"]
    assert "error" in records[0] and records[1]["decision"] == "pass"
    assert "does not exist" in records[2]["error"] and "not an image" in records[3]["error"]
    assert "1 pass, 0 review, 0 reject, 3 failed" in err


def test_unreadable_in_table_and_csv(tiny_model_path: Path, tmp_path: Path, capsys) -> None:
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"garbage")
    code, out, _ = run(["predict", str(tiny_model_path), str(broken)], capsys)
    assert code == 1 and "error" in out and "not an image" in " ".join(out.split())
    code, out, _ = run(["predict", str(tiny_model_path), str(broken), "--format", "csv"], capsys)
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 1 and rows[0]["decision"] == "" and "not an image" in rows[0]["error"]


def test_heatmap_overlays(tiny_model_path: Path, images: Path, tmp_path: Path, capsys) -> None:
    out_dir = tmp_path / "heat"
    code, out, _ = run(
        ["predict", str(tiny_model_path), str(images), "--format", "jsonl", "--heatmaps", str(out_dir)], capsys
    )
    assert code == 0
    records = {Path(r["path"]).name: r for r in map(json.loads, out.splitlines())}
    bad_overlay = Path(records["bad.jpg"]["heatmap"])
    assert bad_overlay == out_dir / "images" / "line2" / "bad.heatmap.png"
    assert (out_dir / "images" / "good.heatmap.png").is_file()
    overlay = cv2.imread(str(bad_overlay))
    assert overlay.shape == (64, 96, 3)  # the original frame's size
    original = cv2.imread(str(images / "line2" / "bad.jpg"))
    change = np.abs(overlay.astype(int) - original.astype(int)).sum(axis=2)
    assert change[20:60, 10:60].mean() > 5 * change[0:4, 80:96].mean() + 1  # coloured where the blob is


def test_bad_model_is_fatal(tmp_path: Path, images: Path, capsys) -> None:
    model = tmp_path / "model.onnx"
    model.write_text("hello")
    code, _, err = run(["predict", str(model), str(images)], capsys)
    assert code == 2 and "is a text file" in err
