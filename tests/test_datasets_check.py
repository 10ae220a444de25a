"""``andon data check`` on a folder with broken files, copies and a leak; exit codes; JSON; pHash behaviour."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

from andon.cli import main
from andon.datasets import assign_splits, check_dataset, load_folder
from andon.datasets.phash import detail_hash, hamming, near_pairs, phash
from andon.datasets.synth import render_sample
from andon.errors import ConfigError

SURFACES = ("brushed", "cast", "woven", "painted")


def _image(seed: int, size: int = 64) -> np.ndarray:
    image, _ = render_sample(np.random.default_rng(seed), SURFACES[seed % 4], None, size)
    return image


def _write(path: Path, image: np.ndarray, ext: str = ".png", quality: int = 95) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    params = [cv2.IMWRITE_JPEG_QUALITY, quality] if ext == ".jpg" else []
    ok, data = cv2.imencode(ext, cv2.cvtColor(image, cv2.COLOR_RGB2BGR), params)
    assert ok
    path.write_bytes(data.tobytes())
    return path


def _clean_folder(root: Path, per_class: int = 12) -> Path:
    for c, label in enumerate(("ok", "crack")):
        for i in range(per_class):
            _write(root / label / f"img_{i:02d}.png", _image(100 * c + i))
    return root


def _split_of(root: Path, rel: str) -> str:
    ds = assign_splits(load_folder(root))
    return next(s.split for s in ds.samples if ds.key(s) == rel)


def _near_copy_in_other_split(root: Path, source_rel: str) -> str:
    """A re-scaled, re-compressed copy of ``source_rel`` under a name that lands in another split."""
    source = cv2.cvtColor(cv2.imread(str(root / source_rel)), cv2.COLOR_BGR2RGB)
    copy = cv2.resize(source, (58, 58), interpolation=cv2.INTER_AREA)
    source_split = _split_of(root, source_rel)
    for i in range(100):
        rel = f"ok/copy_{i}.jpg"
        _write(root / rel, copy, ".jpg", quality=80)
        if _split_of(root, rel) != source_split and _split_of(root, source_rel) == source_split:
            return rel
        (root / rel).unlink()
    raise AssertionError("no name puts the copy in another split")


@pytest.fixture
def corrupted(tmp_path: Path) -> dict:
    root = _clean_folder(tmp_path / "data")
    good_jpeg = _write(tmp_path / "tmp.jpg", _image(7), ".jpg").read_bytes()
    (root / "ok" / "truncated.jpg").write_bytes(good_jpeg[: len(good_jpeg) // 2])
    (root / "crack" / "notes.jpg").write_text("this is not an image\n")
    shutil.copy(root / "ok" / "img_03.png", root / "crack" / "same_as_ok.png")  # identical, other label
    near = _near_copy_in_other_split(root, "ok/img_05.png")
    return {"root": root, "near": near}


def test_check_finds_unreadable_duplicates_and_leaks(corrupted: dict) -> None:
    root = corrupted["root"]
    report = check_dataset(assign_splits(load_folder(root)))
    assert report.n_images == 28 and report.n_readable == 26
    reasons = {u.path.name: u.reason for u in report.unreadable}
    assert set(reasons) == {"truncated.jpg", "notes.jpg"}
    assert "truncated JPEG" in reasons["truncated.jpg"]
    assert "not an image" in reasons["notes.jpg"]

    [dup] = report.exact_duplicates
    assert {p.name for p in dup.paths} == {"img_03.png", "same_as_ok.png"} and dup.conflicting

    leaks = [d for d in report.near_duplicates if d.leak]
    assert [(report.relative(d.a), report.relative(d.b)) for d in leaks] in (
        [("ok/img_05.png", corrupted["near"])],
        [(corrupted["near"], "ok/img_05.png")],
    )
    assert not any(d.conflicting for d in report.near_duplicates)
    assert len(report.near_duplicates) == 1  # 26 distinct textures: no false alarms

    assert not report.ok
    assert any("carry different labels" in p and "same_as_ok.png" in p for p in report.problems)
    assert any("straddle splits" in p and "img_05.png" in p for p in report.problems)
    assert any("2 unreadable file(s)" in p and "would stop training" in p for p in report.problems)
    assert sum(report.counts["ok"].values()) == 13  # 12 + the near copy; the truncated file is not counted


def test_cli_exit_codes_and_tables(corrupted: dict, capsys: pytest.CaptureFixture, monkeypatch) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that rich does not wrap the phrases checked below
    root = corrupted["root"]
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(root)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1
    for text in (
        "Classes in",
        "Unreadable files (2)",
        "truncated.jpg",
        "notes.jpg",
        "conflicting labels",
        "split leak",
        "problem(s) would spoil training",
    ):
        assert text in out, text

    # without the copies, the unreadable files are the only problem; without those, it is ready to train
    (root / "crack" / "same_as_ok.png").unlink()
    (root / corrupted["near"]).unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(root)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 1 and "1 problem(s)" in out and "2 unreadable file(s)" in out
    (root / "ok" / "truncated.jpg").unlink()
    (root / "crack" / "notes.jpg").unlink()
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(root)])
    out = capsys.readouterr().out
    assert exit_info.value.code == 0, out
    assert "OK: ready to train" in out and "problem" not in out


def test_cli_json_output(corrupted: dict, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(corrupted["root"]), "--json"])
    assert exit_info.value.code == 1
    data = json.loads(capsys.readouterr().out)
    assert data["ok"] is False and data["images"] == 28 and data["readable"] == 26
    assert sorted(u["path"] for u in data["unreadable"]) == ["crack/notes.jpg", "ok/truncated.jpg"]
    assert data["exact_duplicates"][0]["conflicting_labels"] is True
    assert [d["leak"] for d in data["near_duplicates"]] == [True]
    assert data["sizes"] == {"64x64": 25, "58x58": 1}
    assert set(data["classes"]) == {"ok", "crack"}


def test_remap_merging_the_conflict_leaves_only_the_leak(corrupted: dict) -> None:
    ds = load_folder(corrupted["root"]).remap({"crack": "ok"})
    report = check_dataset(assign_splits(ds))
    assert not any(g.conflicting for g in report.exact_duplicates)
    assert any("a classifier needs at least 2 classes" in p for p in report.problems)


def test_training_spoilers_are_problems(tmp_path: Path) -> None:
    few = _clean_folder(tmp_path / "few", per_class=12)
    for i in range(3):
        _write(few / "rare" / f"r{i}.png", _image(500 + i))
    report = check_dataset(assign_splits(load_folder(few)))
    assert any("fewer than 5 readable images: rare (3)" in p for p in report.problems)

    broken = tmp_path / "broken"
    for label in ("ok", "bad"):
        (broken / label).mkdir(parents=True)
        (broken / label / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    report = check_dataset(load_folder(broken))
    assert report.problems == ["none of the 2 files is a readable image"]


def test_empty_folder_is_a_problem_and_missing_folder_an_error(tmp_path: Path, capsys) -> None:
    (tmp_path / "empty" / "ok").mkdir(parents=True)
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(tmp_path / "empty")])
    assert exit_info.value.code == 1
    assert "no images in" in capsys.readouterr().out
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "check", str(tmp_path / "missing")])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: data set") and "does not exist" in err and "\n" not in err


def test_cli_user_errors_are_one_line_without_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nnowhere.png,ok\n")
    for args, needle in (
        (["data", "check", str(bad)], "bad.csv line 2: image 'nowhere.png' does not exist"),
        (["data", "check", str(tmp_path), "--remap", "crack"], "is not 'source=target'"),
    ):
        out = subprocess.run([sys.executable, "-m", "andon", *args], capture_output=True, text=True, timeout=120)
        assert out.returncode == 2, out.stderr
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and needle in lines[0], out.stderr
        assert "Traceback" not in out.stderr


def test_near_duplicate_distance_is_validated(corrupted: dict) -> None:
    with pytest.raises(ConfigError, match="outside 0-32"):
        check_dataset(load_folder(corrupted["root"]), near_duplicate_distance=40)
    report = check_dataset(assign_splits(load_folder(corrupted["root"])), near_duplicate_distance=None)
    assert report.near_duplicates == []


def test_phash_is_robust_to_resaving_and_tells_textures_apart() -> None:
    a = cv2.cvtColor(_image(1, 128), cv2.COLOR_RGB2GRAY)
    ok, jpg = cv2.imencode(".jpg", cv2.resize(a, (100, 100)), [cv2.IMWRITE_JPEG_QUALITY, 70])
    b = cv2.imdecode(jpg, cv2.IMREAD_GRAYSCALE)
    brighter = cv2.convertScaleAbs(a, alpha=1.1, beta=12)
    assert hamming(phash(a), phash(b)) <= 6 and hamming(detail_hash(a), detail_hash(b)) <= 24
    assert hamming(phash(a), phash(brighter)) <= 4
    others = [cv2.cvtColor(_image(s, 128), cv2.COLOR_RGB2GRAY) for s in range(20, 32)]
    assert min(hamming(detail_hash(a), detail_hash(o)) for o in others) > 32


def test_near_pairs_matches_brute_force() -> None:
    rng = np.random.default_rng(0)
    hashes = rng.integers(0, 2**63, 1500, dtype=np.uint64)
    hashes[700] = hashes[3] ^ np.uint64(0b1011)  # 3 bits apart
    hashes[1400] = hashes[1100]  # identical
    found = {(i, j): d for i, j, d in near_pairs(hashes, 3)}
    assert found == {(3, 700): 3, (1100, 1400): 0}


def test_near_duplicate_grouping_keeps_copies_in_one_split(corrupted: dict) -> None:
    root = corrupted["root"]
    ds = assign_splits(load_folder(root), group_by="near-duplicates")
    by_name = {ds.key(s): s for s in ds.samples}
    source, copy = by_name["ok/img_05.png"], by_name[corrupted["near"]]
    assert source.group == copy.group == "near:" + min("ok/img_05.png", corrupted["near"])  # first member
    assert source.split == copy.split
    identical = by_name["crack/same_as_ok.png"], by_name["ok/img_03.png"]
    assert identical[0].group == identical[1].group and identical[0].split == identical[1].split
    singles = [
        s
        for key, s in by_name.items()
        if key not in ("ok/img_05.png", corrupted["near"], "crack/same_as_ok.png", "ok/img_03.png")
    ]
    assert all(s.group is None for s in singles)  # unreadable files and unique images stand alone
    report = check_dataset(ds)
    assert not any(d.leak for d in report.near_duplicates) and not any(g.leak for g in report.exact_duplicates)


def test_aligned_look_alike_parts_are_a_warning_not_a_leak(tmp_path: Path) -> None:
    """Images of identical, aligned parts all look alike to a perceptual hash; that is no evidence of copies."""
    base = _image(3, 96)
    rng = np.random.default_rng(0)
    for i in range(60):
        part = np.clip(base.astype(np.int16) + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)
        label = "ok" if i % 2 else "dent"
        if label == "dent":
            cv2.circle(part, (int(rng.integers(20, 76)), int(rng.integers(20, 76))), 4, (60, 60, 60), -1)
        _write(tmp_path / "parts" / label / f"p{i:03d}.png", part)
    report = check_dataset(assign_splits(load_folder(tmp_path / "parts")))
    assert len(report.near_duplicates) > 100  # they do all look alike
    assert report.ok, report.problems
    assert any("most images look alike" in w for w in report.warnings)
