"""Synthetic sample data: determinism, layout, masks where the defects are, no shortcuts, config errors."""

from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from andon.cli import main
from andon.datasets import assign_splits, check_dataset, load_folder
from andon.datasets.synth import DEFECTS, SURFACES, SynthConfig, generate, mask_path, plan, render_sample
from andon.errors import ConfigError, DatasetError


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path: Path) -> None:
    a = generate(tmp_path / "a", count=18, size=40, seed=3)
    generate(tmp_path / "b", SynthConfig(count=18, size=(40, 40), seed=3))
    generate(tmp_path / "c", count=18, size=40, seed=4)
    fa, fb, fc = _files(tmp_path / "a"), _files(tmp_path / "b"), _files(tmp_path / "c")
    assert fa == fb
    assert len(fa) == 18 + 9 + 1  # images, masks of the 9 defect images, .synth.json
    shared = set(fa) & set(fc)
    assert not any(fa[k] == fc[k] for k in shared if k.endswith(".png") and not k.startswith(".masks"))
    assert len(a) == 18


def test_layout_classes_surfaces_and_masks(synth_data: Path) -> None:
    ds = load_folder(synth_data)  # .masks and .synth.json are skipped
    assert ds.counts() == {"crack": 12, "dent": 12, "ok": 60, "scratch": 12, "spot": 12, "stain": 12}
    meta = json.loads((synth_data / ".synth.json").read_text())
    assert meta["count"] == 120 and meta["size"] == [64, 64] and meta["classes"]["ok"] == 60
    for s in ds.samples:
        surface, index = s.path.stem.split("_")
        assert surface in SURFACES and len(index) == 5
        image = cv2.imread(str(s.path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (64, 64, 3)
        if s.label == "ok":
            assert not mask_path(s.path).exists()
            continue
        mask = cv2.imread(str(mask_path(s.path)), cv2.IMREAD_UNCHANGED)
        assert mask.shape == (64, 64) and set(np.unique(mask)) <= {0, 255}
        assert 0.001 < (mask > 0).mean() < 0.35, (s.path, (mask > 0).mean())
    # every class sees every surface (so the surface says nothing about the class)
    for label in ds.classes:
        assert {s.path.stem.split("_")[0] for s in ds.samples if s.label == label} == set(SURFACES)


@pytest.mark.parametrize("defect", DEFECTS)
def test_defect_is_where_the_mask_says(defect: str) -> None:
    """Same generator state with and without the defect: the images differ only in and next to the mask."""
    for k, surface in enumerate(SURFACES):
        good, none = render_sample(np.random.default_rng([k, 1]), surface, None, 96)
        bad, mask = render_sample(np.random.default_rng([k, 1]), surface, defect, 96)
        assert not none.any()
        diff = np.abs(good.astype(np.int16) - bad.astype(np.int16)).max(axis=2)
        near = cv2.dilate(mask, np.ones((7, 7), np.uint8)) > 0
        assert diff[~near].max() <= 6, (surface, diff[~near].max())  # faint tails, below the sensor noise
        inside = diff[mask > 0]
        assert (inside > 8).mean() > 0.2 and inside.mean() > 5, (surface, inside.mean())


def test_render_sizes_and_types() -> None:
    image, mask = render_sample(np.random.default_rng(0), "woven", "crack", (40, 72))
    assert image.shape == (40, 72, 3) and image.dtype == np.uint8
    assert mask.shape == (40, 72) and mask.dtype == np.uint8 and mask.any()
    image, _ = render_sample(np.random.default_rng(0), "painted", None, 33)
    assert image.shape == (33, 33, 3)
    assert 20 < image.mean() < 235 and image.std() > 1  # an exposed image, not flat


def test_render_large_frame_shape() -> None:
    image, mask = render_sample(np.random.default_rng(1), "brushed", "scratch", (1024, 1224))
    assert image.shape == (1024, 1224, 3)
    small = cv2.resize(mask, (153, 128), interpolation=cv2.INTER_AREA)
    assert small.any()  # the defect scales with the frame: still visible at model resolution


def test_no_global_brightness_shortcut(synth_data: Path) -> None:
    """A threshold on a global statistic must not tell ok from defect: the model has to find the defect."""
    ds = load_folder(synth_data)
    is_defect = np.array([s.label != "ok" for s in ds.samples])
    grey = [cv2.imread(str(s.path), cv2.IMREAD_GRAYSCALE).astype(np.float32) for s in ds.samples]
    for name, stat in (
        ("mean", np.mean),
        ("std", np.std),
        ("min", np.min),
        ("max", np.max),
        ("p1", lambda g: np.percentile(g, 1)),
        ("p99", lambda g: np.percentile(g, 99)),
    ):
        values = np.array([stat(g) for g in grey])
        best = max(
            max(((values >= t) == is_defect).mean(), ((values >= t) != is_defect).mean()) for t in np.unique(values)
        )
        assert best < 0.72, (name, best)


def test_sample_data_passes_the_data_check(synth_data: Path) -> None:
    report = check_dataset(assign_splits(load_folder(synth_data)))
    assert report.ok, report.problems
    assert report.near_duplicates == [] and report.exact_duplicates == [] and report.unreadable == []


def test_plan_spreads_classes_and_surfaces() -> None:
    config = SynthConfig(count=103, defects=("scratch", "dent"), surfaces=("cast", "woven"), ok_fraction=0.3)
    assert config.class_counts() == {"ok": 31, "scratch": 36, "dent": 36}
    jobs = plan(config)
    assert sorted(j.index for j in jobs) == list(range(103))
    for label in ("ok", "scratch", "dent"):
        surfaces = [j.surface for j in jobs if j.label == label]
        assert abs(surfaces.count("cast") - surfaces.count("woven")) <= 1
    assert SynthConfig(count=10, ok_fraction=1.0).class_counts() == {"ok": 10}


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        ({"count": 0}, "count 0"),
        ({"size": "12x"}, "not H or HxW"),
        ({"size": 8}, "outside 16-8192"),
        ({"defects": "scratch,rust"}, "unknown defect.*'rust'"),
        ({"surfaces": ()}, "at least one surface"),
        ({"ok_fraction": 1.5}, "between 0 and 1"),
        ({"image_format": "gif"}, "'gif' is not one of png, jpg"),
        ({"defects": (), "ok_fraction": 0.5}, "at least one defect"),
        ({"seed": -1}, "non-negative"),
    ],
)
def test_config_errors_name_the_value(kwargs: dict, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        SynthConfig(**kwargs)


def test_render_errors() -> None:
    with pytest.raises(ConfigError, match="unknown surface 'wood'"):
        render_sample(np.random.default_rng(0), "wood", None, 32)
    with pytest.raises(ConfigError, match="unknown defect 'rust'"):
        render_sample(np.random.default_rng(0), "cast", "rust", 32)


def test_generate_refuses_non_empty_folder_and_replaces_with_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "out"
    (out / "old").mkdir(parents=True)
    (out / "old" / "keep.txt").write_text("x")
    with pytest.raises(DatasetError, match="is not empty"):
        generate(out, count=6, size=32)
    assert (out / "old" / "keep.txt").exists()
    ds = generate(out, count=6, size=32, overwrite=True, image_format="jpg")
    assert not (out / "old").exists()
    assert all(s.path.suffix == ".jpg" for s in ds.samples)
    assert [p.name for p in tmp_path.iterdir()] == ["out"]  # no staging folder left behind
    with pytest.raises(ConfigError, match="unknown synth setting.*colour"):
        generate(tmp_path / "x", colour="red")


def test_cli_synth(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(
            [
                "data",
                "synth",
                str(tmp_path / "s"),
                "--count",
                "12",
                "--size",
                "32x48",
                "--defects",
                "spot,stain",
                "--surfaces",
                "painted",
                "--ok-fraction",
                "0.5",
                "--seed",
                "5",
            ]
        )
    assert exit_info.value.code == 0
    assert "wrote 12 images of 32x48" in capsys.readouterr().out
    ds = load_folder(tmp_path / "s")
    assert ds.counts() == {"ok": 6, "spot": 3, "stain": 3}
    assert {s.path.stem.split("_")[0] for s in ds.samples} == {"painted"}
    with pytest.raises(SystemExit) as exit_info:
        main(["data", "synth", str(tmp_path / "s"), "--count", "3"])
    assert exit_info.value.code == 2
    assert "is not empty" in capsys.readouterr().err
