"""Hash splits: deterministic, stratified, stable when images are added, grouped, small classes covered."""

from __future__ import annotations

import math
from collections import Counter
from pathlib import Path

import pytest

from andon.datasets import SPLITS, Dataset, Sample, assign_splits
from andon.errors import ConfigError, DatasetError

ROOT = Path("/data")


def _ds(per_class: dict[str, int], *, start: int = 0, name: str = "img_{i:05d}.png") -> Dataset:
    samples = [
        Sample(ROOT / label / name.format(i=i), label)
        for label, n in per_class.items()
        for i in range(start, start + n)
    ]
    return Dataset(samples=tuple(samples), root=ROOT)


def _splits(ds: Dataset) -> dict[Path, str]:
    return {s.path: s.split for s in ds.samples}


def test_every_sample_gets_a_split_deterministically() -> None:
    ds = _ds({"ok": 200, "crack": 50})
    a, b = assign_splits(ds), assign_splits(ds)
    assert a.samples == b.samples
    assert {s.split for s in a.samples} == set(SPLITS)
    assert [s.path for s in a.samples] == [s.path for s in ds.samples]  # order kept
    assert _splits(assign_splits(ds, seed=1)) != _splits(a)


def test_stratified_per_class_close_to_the_fractions() -> None:
    ds = assign_splits(_ds({"ok": 1000, "crack": 400, "dent": 400}), val=0.2, test=0.1)
    for label, n in ds.counts().items():
        got = Counter(s.split for s in ds.samples if s.label == label)
        for split, frac in (("val", 0.2), ("test", 0.1)):
            # binomial: 4 standard deviations is a bound this fixed data set keeps with room to spare
            assert abs(got[split] - n * frac) <= 4 * math.sqrt(n * frac * (1 - frac)), (label, split, got)
            assert abs(got[split] / n - frac) < 0.05


def test_adding_images_never_moves_existing_ones() -> None:
    old = assign_splits(_ds({"ok": 120, "crack": 40}))
    grown = assign_splits(
        Dataset(
            samples=_ds({"ok": 120, "crack": 40}).samples
            + _ds({"ok": 80, "crack": 30, "dent": 25}, start=1000).samples,
            root=ROOT,
        )
    )
    new_splits = _splits(grown)
    assert all(new_splits[path] == split for path, split in _splits(old).items())


def test_splits_do_not_depend_on_where_the_data_set_lives() -> None:
    here = assign_splits(_ds({"ok": 50}))
    moved = Dataset(
        samples=tuple(Sample(Path("/mnt/copy") / s.path.relative_to(ROOT), s.label) for s in _ds({"ok": 50}).samples),
        root=Path("/mnt/copy"),
    )
    assert [s.split for s in assign_splits(moved).samples] == [s.split for s in here.samples]


@pytest.mark.parametrize("n", [3, 4, 5, 6])
def test_small_classes_get_one_val_one_test_and_train(n: int) -> None:
    for seed in range(40):
        ds = assign_splits(_ds({"ok": 60, "rare": n}), seed=seed)
        got = Counter(s.split for s in ds.samples if s.label == "rare")
        assert got["train"] >= 1 and got["val"] >= 1 and got["test"] >= 1, (seed, got)


def test_two_image_class_is_left_to_the_hash() -> None:
    ds = assign_splits(_ds({"ok": 30, "rare": 2}))
    assert len([s for s in ds.samples if s.label == "rare" and s.split]) == 2


def test_zero_test_fraction_gives_no_test_split() -> None:
    ds = assign_splits(_ds({"ok": 100, "rare": 3}), val=0.2, test=0.0)
    assert {s.split for s in ds.samples} == {"train", "val"}


def test_group_regex_keeps_each_group_in_one_split() -> None:
    samples = [
        Sample(ROOT / label / f"exp{k}_num_{i}.jpg", label)
        for label, n in (("ok", 300), ("crack", 60))
        for i in range(n)
        for k in [i % 7]
    ]
    ds = assign_splits(Dataset(samples=tuple(samples), root=ROOT), group_by=r"exp(\d+)")
    by_group: dict[str, set[str]] = {}
    for s in ds.samples:
        by_group.setdefault(s.group, set()).add(s.split)
    assert set(by_group) == {str(k) for k in range(7)}  # the regex's first group names the group
    assert all(len(splits) == 1 for splits in by_group.values())
    # 7 groups in the 'ok' stratum: at least one in each split
    assert {next(iter(v)) for v in by_group.values()} == set(SPLITS)


def test_group_regex_without_capture_uses_the_whole_match() -> None:
    samples = tuple(Sample(ROOT / "ok" / f"part-{i // 3}-view{i % 3}.png", "ok") for i in range(30))
    ds = assign_splits(Dataset(samples=samples, root=ROOT), group_by=r"part-\d+")
    assert {s.group for s in ds.samples} == {f"part-{k}" for k in range(10)}
    for k in range(10):
        assert len({s.split for s in ds.samples if s.group == f"part-{k}"}) == 1


def test_group_regex_errors() -> None:
    ds = Dataset(samples=(Sample(ROOT / "ok" / "exp1_a.png", "ok"), Sample(ROOT / "ok" / "b.png", "ok")), root=ROOT)
    with pytest.raises(DatasetError, match=r"matches no group in 1 file name\(s\): b.png"):
        assign_splits(ds, group_by=r"exp(\d+)")
    with pytest.raises(ConfigError, match="not a valid regular expression"):
        assign_splits(ds, group_by=r"exp(\d+")


def test_manifest_splits_are_kept_and_groups_follow_them() -> None:
    given = [
        Sample(ROOT / "ok" / f"{i}.png", "ok", "test" if i < 5 else None, "partA" if i < 8 else None) for i in range(40)
    ]
    ds = assign_splits(Dataset(samples=tuple(given), root=ROOT), group_by="manifest")
    assert [s.split for s in ds.samples[:8]] == ["test"] * 8  # new images of partA join its split
    assert all(s.split in SPLITS for s in ds.samples)
    ungrouped = assign_splits(Dataset(samples=tuple(given), root=ROOT))
    assert [s.split for s in ungrouped.samples[:5]] == ["test"] * 5  # given splits are never changed


def test_a_group_given_two_splits_is_a_leak_error() -> None:
    samples = (Sample(ROOT / "ok" / "a.png", "ok", "train", "p1"), Sample(ROOT / "ok" / "b.png", "ok", "test", "p1"))
    with pytest.raises(DatasetError, match=r"'p1' has images in test and train"):
        assign_splits(Dataset(samples=samples, root=ROOT), group_by="manifest")


@pytest.mark.parametrize(
    ("val", "test", "pattern"),
    [
        (-0.1, 0.1, "val fraction -0.1 is outside"),
        (0.1, 1.0, "test fraction 1.0 is outside"),
        (0.6, 0.5, "leaves no training data"),
        (float("nan"), 0.1, "not a number"),
        (True, 0.1, "not a number"),
        ("0.1", 0.1, "not a number"),
    ],
)
def test_bad_fractions_are_config_errors(val, test, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        assign_splits(_ds({"ok": 5}), val=val, test=test)


def test_split_selects_and_refuses_unknown_or_missing_splits() -> None:
    ds = assign_splits(_ds({"ok": 50, "crack": 20}))
    parts = [ds.split(name) for name in SPLITS]
    assert sum(len(p) for p in parts) == len(ds)
    assert all(s.split == "val" for s in ds.split("val").samples)
    with pytest.raises(DatasetError, match="unknown split 'valid'"):
        ds.split("valid")
    with pytest.raises(DatasetError, match="has no splits yet"):
        _ds({"ok": 3}).split("train")
    assert ds.split_counts()["train"]["ok"] == sum(1 for s in ds.samples if s.split == "train" and s.label == "ok")
