"""Class remapping: parsing, exact-before-glob precedence, first glob wins, strictness; the training plan."""

from __future__ import annotations

from pathlib import Path

import pytest

from andon.datasets import Dataset, Sample, parse_remap
from andon.datasets.remap import class_plan, remap_labels
from andon.errors import ConfigError, DatasetError


def _ds(labels: list[str]) -> Dataset:
    root = Path("/data")
    return Dataset(
        samples=tuple(
            Sample(root / lab / f"{i}.png", lab, "train" if i % 2 else None, f"g{i}") for i, lab in enumerate(labels)
        ),
        root=root,
    )


def test_parse_keeps_order_and_strips_spaces() -> None:
    assert parse_remap(" crack = defect , blowhole=defect,") == {"crack": "defect", "blowhole": "defect"}
    assert list(parse_remap("*=defect,ok=ok")) == ["*", "ok"]


@pytest.mark.parametrize(
    ("text", "pattern"),
    [
        ("", "empty remap"),
        ("crack", "'crack' is not 'source=target'"),
        ("crack=", "'crack=' is not 'source=target'"),
        ("=defect", "is not 'source=target'"),
        ("crack=def*", "target 'def\\*' is not a valid class name"),
        ("crack=.hidden", "not a valid class name"),
        ("crack=a/b", "not a valid class name"),
        ("crack=defect,crack=scratch", "'crack' appears twice with targets 'defect' and 'scratch'"),
    ],
)
def test_parse_errors_name_the_rule(text: str, pattern: str) -> None:
    with pytest.raises(ConfigError, match=pattern):
        parse_remap(text)


def test_exact_names_win_over_globs_regardless_of_order() -> None:
    ds = _ds(["ok", "crack", "blowhole", "ok"]).remap(parse_remap("*=defect,ok=ok"))
    assert [s.label for s in ds.samples] == ["ok", "defect", "defect", "ok"]
    assert ds.classes == ["defect", "ok"]
    assert ds.counts() == {"defect": 2, "ok": 2}


def test_first_matching_glob_wins_and_unmatched_classes_keep_their_name() -> None:
    table = remap_labels(
        ["crack_small", "crack_big", "scratch", "ok"], {"crack_b*": "major", "crack_*": "minor", "*_big": "never"}
    )
    assert table == {"crack_small": "minor", "crack_big": "major", "scratch": "scratch", "ok": "ok"}


def test_remap_keeps_path_split_and_group() -> None:
    before = _ds(["crack", "ok"])
    after = before.remap({"crack": "defect"})
    assert [(s.path, s.split, s.group) for s in after.samples] == [(s.path, s.split, s.group) for s in before.samples]
    assert after.samples[1] is before.samples[1]  # untouched samples are reused
    assert after.root == before.root


def test_strict_refuses_rules_that_match_no_class() -> None:
    ds = _ds(["crack", "ok"])
    with pytest.raises(ConfigError, match=r"remap rules 'crak', 'x\*' match no class; classes are: crack, ok"):
        ds.remap({"crak": "defect", "x*": "y", "ok": "ok"}, strict=True)
    assert ds.remap({"crak": "defect"}).classes == ["crack", "ok"]  # lenient by default (evaluation folders)


def test_mapping_from_a_recipe_is_validated() -> None:
    with pytest.raises(ConfigError, match="must be a mapping"):
        _ds(["ok"]).remap(["ok=defect"])  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="non-empty name"):
        _ds(["ok"]).remap({"ok": ""})


MAGNETIC_TILE = ["blowhole", "break", "crack", "fray", "ok", "uneven"]


def test_a_merge_is_learned_as_its_source_classes() -> None:
    plan = class_plan(MAGNETIC_TILE, parse_remap("*=defect,ok=ok"))
    assert plan.classes == ["defect", "ok"]
    assert plan.trained_as == {"defect": ["blowhole", "break", "crack", "fray", "uneven"]}
    # head order: each class in card order, its sources in place of it
    assert plan.training_classes == ["blowhole", "break", "crack", "fray", "uneven", "ok"]
    assert plan.head_groups == [0, 0, 0, 0, 0, 1]
    assert [plan.training_index(c) for c in MAGNETIC_TILE] == [0, 1, 2, 3, 5, 4]
    assert [plan.class_index(c) for c in MAGNETIC_TILE] == [0, 0, 0, 0, 1, 0]
    assert plan.describe("fray") == "'fray' (merged into 'defect')" and plan.describe("ok") == "'ok'"


def test_keep_sources_off_learns_the_merged_labels() -> None:
    plan = class_plan(MAGNETIC_TILE, parse_remap("*=defect,ok=ok"), keep_sources=False)
    assert plan.classes == plan.training_classes == ["defect", "ok"] and plan.trained_as == {}
    assert [plan.training_index(c) for c in MAGNETIC_TILE] == [0, 0, 0, 0, 1, 0]


def test_renames_without_a_merge_train_the_renamed_classes() -> None:
    plan = class_plan(["x", "y", "z"], {"x": "y", "y": "x"})  # a swap: the head follows the new names
    assert plan.trained_as == {} and plan.training_classes == ["x", "y", "z"]
    assert [plan.training_index(c) for c in ("x", "y", "z")] == [1, 0, 2]
    assert class_plan(["ok", "crack"], {}).training_classes == ["crack", "ok"]


def test_a_plan_that_cannot_be_trained_says_why() -> None:
    with pytest.raises(DatasetError, match=r"become only \['defect'\] after the remap; a classifier needs at least 2"):
        class_plan(["crack", "pit"], {"*": "defect"})
    with pytest.raises(DatasetError, match=r"there is only the class \['ok'\]"):
        class_plan(["ok"], {})
    # a source class named like another model class cannot have a head unit of its own
    with pytest.raises(DatasetError, match="cannot keep its source classes apart.*keep_source_classes=false"):
        class_plan(["crack", "good", "ok"], {"ok": "defect", "crack": "defect", "good": "ok"})
    plan = class_plan(["crack", "good", "ok"], {"ok": "defect", "crack": "defect", "good": "ok"}, keep_sources=False)
    assert plan.classes == ["defect", "ok"]
    with pytest.raises(ConfigError, match="'crak' match no class"):
        class_plan(["crack", "ok"], {"crak": "defect"})
