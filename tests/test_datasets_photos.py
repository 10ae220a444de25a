"""Example phone photos (``andon data photos``): determinism, layout, defects on the part only, the planted
mistakes found by the data check and nothing else, the CLI's bad-input path."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from andon.cli import main
from andon.datasets import assign_splits, check_dataset, load_folder
from andon.datasets.synth.photos import PhotosConfig, generate_photos, parse_wxh, plan, render_photo
from andon.errors import ConfigError, DatasetError

SIZE = (320, 240)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, object]:
    out = tmp_path_factory.mktemp("photos") / "p"
    return out, generate_photos(out, count=12, size=SIZE, seed=0)


def test_same_seed_same_bytes_other_seed_other_photos(photos, tmp_path: Path) -> None:
    out, _ = photos
    generate_photos(tmp_path / "b", PhotosConfig(count=12, size=SIZE, seed=0))
    generate_photos(tmp_path / "c", count=12, size=SIZE, seed=1)
    a, b, c = _files(out), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert a == b
    assert len(a) == 12 + 1 + 1  # photos, the copy, .photos.json
    jpegs = {data for name, data in a.items() if name.endswith(".jpg")}
    assert not jpegs & {data for name, data in c.items() if name.endswith(".jpg")}


def test_layout_names_and_counts(photos) -> None:
    out, result = photos
    assert result.counts == {"ok": 6, "scratch": 3, "dent": 3}
    ds = load_folder(out)
    expected = {"dent": 3, "ok": 6, "scratch": 3}
    expected[result.mistakes.duplicate[1].split("/")[0]] += 1  # the copy is an extra file in its folder
    assert ds.counts() == expected and result.n_files == 13
    originals = sorted(s.path.name for s in ds.samples if "-copy" not in s.path.name)
    assert originals == [f"IMG_{i:04d}.jpg" for i in range(1, 13)]  # one camera roll, numbered 1-12
    by_number = {int(s.path.stem[4:8]): s.label for s in ds.samples}
    labels = [by_number[i] for i in range(1, 13)]
    assert sum(labels[i] != labels[i + 1] for i in range(11)) > 2  # shuffled across the folders, not in runs
    readable = [s.path for s in ds.samples if s.path.relative_to(out).as_posix() != result.mistakes.truncated]
    assert {cv2.imread(str(p)).shape for p in readable} == {(240, 320, 3)}
    meta = json.loads((out / ".photos.json").read_text())
    assert meta["count"] == 12 and meta["size"] == [320, 240] and meta["classes"]["ok"] == 6
    assert meta["mistake_files"]["truncated"] == result.mistakes.truncated


def test_each_mistake_is_present_and_the_check_finds_exactly_them(photos) -> None:
    out, result = photos
    m = result.mistakes
    original, copy = m.duplicate
    assert copy == original.replace(".jpg", "-copy.jpg") and " " not in copy
    assert (out / copy).read_bytes() == (out / original).read_bytes()
    full = generate_photos_bytes_of(out, m.truncated)
    assert 0.45 < (out / m.truncated).stat().st_size / full < 0.55
    assert len(m.bursts) == 2 and {a.split("/")[0] == b.split("/")[0] for a, b in m.bursts} == {True}
    assert {a.split("/")[0] == "ok" for a, _ in m.bursts} == {True, False}  # a good part and a defective one
    for a, b in m.bursts:  # consecutive shots
        assert int(Path(b).stem[4:]) == int(Path(a).stem[4:]) + 1

    report = check_dataset(assign_splits(load_folder(out)))
    rel = report.relative
    assert [rel(u.path) for u in report.unreadable] == [m.truncated]
    assert "truncated JPEG" in report.unreadable[0].reason
    assert [sorted(rel(p) for p in g.paths) for g in report.exact_duplicates] == [sorted(m.duplicate)]
    assert {frozenset((rel(d.a), rel(d.b))) for d in report.near_duplicates} == {frozenset(p) for p in m.bursts}
    assert all(d.distance <= 4 for d in report.near_duplicates)
    assert not report.ok and any("unreadable" in p for p in report.problems)


def generate_photos_bytes_of(out: Path, relative: str) -> int:
    """Bytes the truncated photo had before it was cut: render it again from the plan."""
    from andon.datasets.synth.photos import encode_photo

    meta = json.loads((out / ".photos.json").read_text())
    config = PhotosConfig(count=meta["count"], size=tuple(meta["size"]), seed=meta["seed"])
    shots, _ = plan(config)
    (shot,) = [s for s in shots if s.path == relative]
    attempt = meta["reshot_scenes"].get(str(shot.scene), 0)
    return len(encode_photo(config.seed, shot, config.size, attempt=attempt))


def test_no_mistakes_gives_a_clean_check(tmp_path: Path) -> None:
    result = generate_photos(tmp_path / "p", count=20, size=SIZE, seed=0, mistakes=False)  # 5+ per class
    assert not result.mistakes.present and result.n_files == 20
    report = check_dataset(assign_splits(load_folder(tmp_path / "p")))
    assert report.ok, report.problems
    assert report.unreadable == [] and report.exact_duplicates == [] and report.near_duplicates == []
    assert sorted(p.name for p in (tmp_path / "p").rglob("*.jpg")) == [f"IMG_{i:04d}.jpg" for i in range(1, 21)]


@pytest.mark.parametrize("label", ["scratch", "dent"])
def test_defect_is_on_the_part_and_visible_at_224(label: str) -> None:
    """Same scene with and without the defect: they differ only on the mask, the mask lies on the metal, and
    the defect survives reducing the frame to 224 pixels wide."""
    for k in range(3):
        good, none = render_photo([7, k], "ok", (640, 480))
        bad, mask = render_photo([7, k], label, (640, 480))
        assert not none.any() and mask.any()
        diff = np.abs(good.astype(np.int16) - bad.astype(np.int16)).max(axis=2)
        near = cv2.dilate(mask, np.ones((9, 9), np.uint8)) > 0
        assert diff[~near].max() <= 3, (k, diff[~near].max())
        # the part is brighter than any bench: the defect pixels sit on metal, not on wood, rubber or the mat
        part = cv2.cvtColor(good, cv2.COLOR_RGB2GRAY)
        assert np.median(part[mask > 0]) > np.median(part) + 20, k
        small = [cv2.resize(im, (224, 168), interpolation=cv2.INTER_AREA).astype(np.int16) for im in (good, bad)]
        assert np.abs(small[0] - small[1]).max() > 30, k


def test_burst_shots_are_near_not_identical() -> None:
    a, _ = render_photo([3, 5], "dent", SIZE)
    b, _ = render_photo([3, 5], "dent", SIZE, shot=1)
    diff = np.abs(a.astype(np.int16) - b.astype(np.int16))
    assert diff.max() > 20  # shifted and re-exposed, with its own noise
    assert abs(float(a.mean()) - float(b.mean())) < 12


def test_the_bench_is_chosen_once_for_the_set() -> None:
    """The part is the same on every bench; what is around it is wood (warm), rubber (grey) or mat (green-blue)."""
    corner = {}
    for bench in ("wood", "rubber", "mat"):
        image, _ = render_photo([4, 2], "ok", (320, 240), bench=bench)
        corner[bench] = image[:12, :12].reshape(-1, 3).mean(axis=0)  # outside the part, which is centred
    r, g, b = corner["wood"]
    assert r > b + 15
    assert np.ptp(corner["rubber"]) < 20
    assert corner["mat"][1] > corner["mat"][0] + 4  # a green-blue cutting mat


def test_plan_classes_and_mistakes_for_odd_fractions() -> None:
    for fraction in (0.0, 0.17, 0.5, 0.9, 1.0):
        config = PhotosConfig(count=6, ok_fraction=fraction)
        shots, m = plan(config)
        assert sorted(s.number for s in shots) == list(range(1, 7))
        assert len(m.bursts) == 2 and m.duplicate and m.truncated
        involved = [p for pair in m.bursts for p in pair] + [m.duplicate[0], m.truncated]
        assert len(set(involved)) == 6
    assert PhotosConfig(count=7, ok_fraction=0.5).class_counts() == {"ok": 4, "scratch": 2, "dent": 1}


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"count": 0}, "count 0"),
        ({"count": 5}, "too few for the mistakes"),
        ({"size": "1600"}, "not WxH"),
        ({"size": "axb"}, "not WxH"),
        ({"size": (32, 32)}, "outside 64-8192"),
        ({"ok_fraction": -0.1}, "between 0 and 1"),
        ({"seed": -1}, "non-negative"),
        ({"bench": "marble"}, "bench 'marble' is not one of wood, rubber, mat"),
    ],
)
def test_config_errors_name_the_value(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        PhotosConfig(**kwargs)


def test_size_is_width_by_height() -> None:
    assert parse_wxh("1600x1200") == (1600, 1200)
    image, _ = render_photo(0, "ok", "200x100")
    assert image.shape == (100, 200, 3)
    assert PhotosConfig(count=5, mistakes=False).count == 5


def test_generate_refuses_non_empty_folder_and_replaces_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "old").mkdir(parents=True)
    with pytest.raises(DatasetError, match="is not empty"):
        generate_photos(out, count=6, size=(64, 64))
    generate_photos(out, count=6, size=(64, 64), overwrite=True, mistakes=False)
    assert not (out / "old").exists() and len(list(out.rglob("*.jpg"))) == 6
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    with pytest.raises(ConfigError, match="unknown photos setting.*colour"):
        generate_photos(tmp_path / "x", colour="red")


def test_cli_photos_and_its_bad_input(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "p"
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "photos", str(out), "--count", "8", "--size", "160x120", "--seed", "2"])
    assert exit_info.value.code == 0
    printed = capsys.readouterr().out
    assert "wrote 8 photos of 160x120 and 1 copy" in printed and "ok 4, scratch 2, dent 2" in printed
    meta = json.loads((out / ".photos.json").read_text())
    for path in [meta["mistake_files"]["truncated"], *meta["mistake_files"]["duplicate"]]:
        assert path in printed

    for argv, message in [
        (["data", "photos", str(out), "--count", "8"], "is not empty"),
        (["data", "photos", str(tmp_path / "q"), "--size", "160x"], "not WxH"),
        (["data", "photos", str(tmp_path / "q"), "--bench", "marble"], "is not one of wood, rubber, mat"),
    ]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "q").exists()

    with pytest.raises(SystemExit) as exit_info:
        main(["data", "photos", str(out), "--count", "8", "--size", "160x120", "--no-mistakes", "--force"])
    assert exit_info.value.code == 0
    assert "mistakes" not in capsys.readouterr().out and not list(out.rglob("*-copy.jpg"))
