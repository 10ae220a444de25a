"""Training recipe: defaults from default.yaml, file and override precedence, one-line errors for bad keys."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from andon.errors import ConfigError, RunError
from andon.training.recipe import Recipe, default_dict, load_recipe, recipe_from_dict
from andon.training.rundir import check_resumable, named, plan_run


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return path


def test_defaults_come_from_default_yaml_and_cover_every_field():
    recipe = load_recipe()
    assert recipe.to_dict() == _plain_defaults()
    assert recipe.model.mean is None and recipe.model.std is None  # the weights' own normalisation
    assert recipe.train.balance == "sampler" and recipe.train.monitor == "auto"


def _plain_defaults() -> dict:
    d = default_dict()
    d["model"]["input_size"] = list(d["model"]["input_size"])
    return d


def test_file_then_flag_values_then_overrides(tmp_path):
    path = _write(tmp_path, "model:\n  name: resnet18\n  input_size: 96\ntrain:\n  epochs: 3\n  lr: 1e-4\n")
    recipe = load_recipe(path, ["train.epochs=7", "data.remap.crack=defect"], values={"model.weights": "none"})
    assert recipe.model.name == "resnet18"
    assert recipe.model.input_size == (96, 96)  # a single number is a square
    assert recipe.model.weights == "none"
    assert recipe.train.epochs == 7  # --set wins over the file
    assert recipe.train.lr == pytest.approx(1e-4)  # "1e-4" (a YAML string) is still a float
    assert recipe.data.remap == {"crack": "defect"}
    assert recipe.train.batch_size == load_recipe().train.batch_size  # untouched keys keep their defaults


def test_remap_in_a_file_replaces_rather_than_merges(tmp_path):
    path = _write(tmp_path, "data:\n  remap: {'*': defect, ok: ok}\n")
    assert list(load_recipe(path).data.remap.items()) == [("*", "defect"), ("ok", "ok")]


def test_unknown_key_in_file_names_the_key_and_the_allowed_keys(tmp_path):
    path = _write(tmp_path, "train:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as err:
        load_recipe(path)
    message = str(err.value)
    assert "\n" not in message
    assert "'train.lrr'" in message and str(path) in message
    assert "did you mean 'lr'" in message
    for key in ("epochs", "batch_size", "lr", "weight_decay", "label_smoothing", "balance", "seed"):
        assert key in message


def test_unknown_nested_and_top_level_keys(tmp_path):
    with pytest.raises(
        ConfigError,
        match=r"'augment\.affine\.shear'.*allowed keys in 'augment\.affine': "
        r"p, scale, translate, rotate",
    ):
        load_recipe(overrides=["augment.affine.shear=3"])
    with pytest.raises(
        ConfigError,
        match=r"unknown recipe key 'optimizer'.*top level: data, model, augment, "
        r"train, decision, anomaly, output",
    ):
        load_recipe(_write(tmp_path, "optimizer: adam\n"))


def test_yaml_syntax_error_gives_the_line(tmp_path):
    path = _write(tmp_path, "train:\n  epochs: 3\n  lr: [0.1\nmodel:\n  name: x\n")
    with pytest.raises(ConfigError, match=r"not valid YAML at line \d+, column \d+"):
        load_recipe(path)


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("train.epochs=0", "'train.epochs' = 0"),
        ("train.epochs=many", "'train.epochs' = 'many'"),
        ("train.balance=oversample", "'train.balance'"),
        ("model.color_mode=hsv", "'model.color_mode'"),
        ("augment.blur.max_kernel=4", "must be odd"),
        ("output.name=../escape", "folder name"),
        ("train", "not KEY=VALUE"),
        ("train.lr.peak=1", "'train.lr' is a value, not a section"),
    ],
)
def test_bad_values_are_one_line_errors_naming_the_key(override, fragment):
    with pytest.raises(ConfigError) as err:
        load_recipe(overrides=[override])
    assert fragment in str(err.value)
    assert "\n" not in str(err.value)


def test_cross_field_rules():
    with pytest.raises(ConfigError, match="leaves nothing to train on"):
        load_recipe(overrides=["data.val_fraction=0.5", "data.test_fraction=0.5"])
    with pytest.raises(ConfigError, match="give both mean and std"):
        load_recipe(overrides=["model.mean=[0.5,0.5,0.5]"])
    with pytest.raises(ConfigError, match="rot90"):
        load_recipe(overrides=["model.input_size=[96,128]"])
    assert load_recipe(overrides=["model.input_size=[96,128]", "augment.rot90=0"]).model.input_size == (96, 128)


def test_yaml_round_trip_is_exact():
    recipe = load_recipe(
        overrides=[
            "data.path=/data/x",
            "model.mean=[0.5,0.5,0.5]",
            "model.std=[0.5,0.5,0.5]",
            "data.remap.a=b",
            "output.name=run1",
        ]
    )
    again = recipe_from_dict(yaml.safe_load(recipe.to_yaml()))
    assert again == recipe
    assert isinstance(again, Recipe)


def test_named_fills_the_run_name_and_absolute_data_path():
    recipe = named(load_recipe(values={"data.path": "some/data", "model.name": "resnet18"}))
    assert recipe.data.path.is_absolute()
    assert recipe.output.name.startswith("data-resnet18-")


def test_resume_allows_more_epochs_but_not_another_model():
    saved = load_recipe(overrides=["train.epochs=3", "output.name=r"])
    check_resumable(saved, saved.with_overrides(["train.epochs=5", "train.workers=0"]))
    with pytest.raises(ConfigError, match=r"model\.name.*changed"):
        check_resumable(saved, saved.with_overrides(["model.name=resnet18"]))


def test_plan_run_checks_without_creating_anything(tmp_path):
    recipe = load_recipe(values={"output.runs_dir": str(tmp_path / "runs"), "output.name": "r1"})
    run = plan_run(recipe, resume=False)
    assert run.path == tmp_path / "runs" / "r1" and not run.path.exists()
    with pytest.raises(RunError, match="cannot resume"):
        plan_run(recipe, resume=True)
    run.path.mkdir(parents=True)
    run.last.write_bytes(b"x")
    with pytest.raises(RunError, match="already exists; continue it with --resume"):
        plan_run(recipe, resume=False)
    with pytest.raises(ConfigError, match="--resume needs the name"):
        plan_run(recipe.with_overrides(["output.name=null"]), resume=True)


def test_a_run_saved_before_a_key_existed_still_loads():
    saved = load_recipe(overrides=["output.name=old"]).to_dict()
    del saved["train"]["label_smoothing"]  # as if recipe.yaml predates the key
    assert recipe_from_dict(saved).train.label_smoothing == load_recipe().train.label_smoothing
    saved["train"]["no_such_key"] = 1
    with pytest.raises(ConfigError, match="'train.no_such_key'"):
        recipe_from_dict(saved, source="runs/old/recipe.yaml")
