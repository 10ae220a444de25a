"""Real training runs on small synthetic data: the run folder, learning, the card, resume, seeds, CLI errors."""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from rich.console import Console

from andon.cli import main
from andon.datasets.manifest import load_dataset
from andon.errors import ConfigError
from andon.models import load_checkpoint, model_info
from andon.training.fit import fit
from andon.training.recipe import Recipe
from andon.training.rundir import load_predictions, read_metrics, read_recipe

pytestmark = pytest.mark.slow

QUIET = Console(file=io.StringIO())
CLASSES = ["ok", "scratch", "spot"]


def _recipe_like(run: Path, runs_dir: Path, name: str, *changes: str) -> Recipe:
    """The recipe of ``run`` under another name and folder, with ``changes``."""
    return read_recipe(run / "recipe.yaml").with_overrides(
        [f"output.runs_dir={runs_dir}", f"output.name={name}", *changes]
    )


def _without_time(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def test_run_folder_holds_the_promised_files(trained_run):
    for name in (
        "recipe.yaml",
        "splits.csv",
        "metrics.csv",
        "best.pt",
        "last.pt",
        "predictions_val.npz",
        "predictions_test.npz",
        "report.html",
        "report.md",
    ):
        assert (trained_run / name).is_file(), name
    rows = read_metrics(trained_run / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5]
    assert [r["phase"] for r in rows] == ["head", "full", "full", "full", "full"]
    recipe = read_recipe(trained_run / "recipe.yaml")
    assert recipe.model.name == "resnet18" and recipe.output.name == "trained" and recipe.data.path.is_absolute()
    splits = load_dataset(trained_run / "splits.csv")
    assert {s.split for s in splits.samples} == {"train", "val", "test"} and len(splits) == 300


def test_training_beats_chance_by_a_wide_margin(trained_run):
    pred = load_predictions(trained_run / "predictions_test.npz")
    accuracy = float((pred["probs"].argmax(1) == pred["y_true"]).mean())
    assert len(pred["y_true"]) >= 30
    assert accuracy >= 2 / len(CLASSES), f"test accuracy {accuracy:.3f}, chance is {1 / len(CLASSES):.3f}"


def test_best_checkpoint_carries_the_card(trained_run, shapes_data):
    ckpt = load_checkpoint(trained_run / "best.pt")  # weights_only=True inside
    card = ckpt.card
    assert card.classes == CLASSES and card.defect_classes == ["scratch", "spot"]
    info = model_info("resnet18")
    assert card.preprocess.mean == pytest.approx(info.mean) and card.preprocess.std == pytest.approx(info.std)
    assert card.preprocess.input_size == (64, 64) and card.backbone == "resnet18" and card.weights == "none"
    assert card.data_fingerprint == load_dataset(shapes_data).fingerprint()
    pred = load_predictions(trained_run / "predictions_test.npz")
    assert card.metrics["test_accuracy"] == pytest.approx(float((pred["probs"].argmax(1) == pred["y_true"]).mean()))
    assert {"val_accuracy", "val_macro_recall", "test_macro_recall"} <= set(card.metrics)
    rows = read_metrics(trained_run / "metrics.csv")
    assert [r["val_monitor"] for r in rows] == [r["val_macro_recall"] for r in rows]  # monitor: macro_recall
    assert ckpt.epoch == _chosen_epoch([float(r["val_macro_recall"]) for r in rows])


def _chosen_epoch(values: list[float], min_delta: float = 0.002) -> int:
    """The epoch the stopping rule keeps: the latest within ``min_delta`` of the highest value so far."""
    best, chosen = -np.inf, 0
    for epoch, value in enumerate(values, start=1):
        if value >= best - min_delta:
            best, chosen = max(best, value), epoch
    return chosen


def _decision_rows(report_md: Path) -> dict[str, list[str]]:
    """The decisions table of report.md: folder class -> [class, images, pass, review, reject]."""
    text = report_md.read_text()
    section = text.split("## Decisions at the card's thresholds (test)")[1].split("\n## ")[0]
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("| ") and "---" not in line]
    return {cells[0].strip(): [c.strip() for c in cells[1:]] for cells in rows[1:]}


def test_the_card_and_the_report_give_the_rates_at_the_thresholds(trained_run):
    card = load_checkpoint(trained_run / "best.pt").card
    pred = load_predictions(trained_run / "predictions_test.npz")
    assert card.thresholds.per_class == {}
    score, bad, band = (
        pred["probs"][:, card.defect_indices].sum(1),
        np.isin(pred["y_true"], [1, 2]),
        card.thresholds.defect,
    )
    # the run has a good-only anomaly detector (the default): its band sends to review what the classifier passes
    assert card.anomaly is not None and card.thresholds.anomaly.reject_at == 1.0
    unusual = pred["anomaly_score"] >= card.thresholds.anomaly.pass_below
    passes = (score < band.pass_below) & ~unusual
    assert card.metrics["test_escape_rate"] == pytest.approx((passes & bad).sum() / bad.sum())
    assert card.metrics["test_false_reject_rate"] == pytest.approx(
        ((score >= band.reject_at) & ~bad).sum() / (~bad).sum()
    )
    review = ((score < band.reject_at) & ~passes).mean()
    assert card.metrics["test_review_rate"] == pytest.approx(review)
    assert {"val_escape_rate", "val_false_reject_rate"} <= set(card.metrics)
    rows = _decision_rows(trained_run / "report.md")
    assert list(rows) == CLASSES and all(rows[c][0] == c for c in CLASSES)
    for index, name in enumerate(CLASSES):
        images, passed, review_n, rejected = (int(v) for v in rows[name][1:])
        mine = pred["y_true"] == index
        assert images == mine.sum() == passed + review_n + rejected
        assert passed == (mine & passes).sum() and rejected == (mine & (score >= band.reject_at)).sum()


def test_last_checkpoint_can_continue(trained_run):
    last = load_checkpoint(trained_run / "last.pt")
    assert last.epoch == 5
    assert {"optimizer", "scheduler", "rng", "stop", "recipe"} <= set(last.extra)
    assert isinstance(last.extra["rng"]["torch"], torch.Tensor)


def test_predict_paths_matches_the_saved_predictions(trained_run):
    from andon.training.predict import predict_paths

    pred = load_predictions(trained_run / "predictions_val.npz")
    probs, card = predict_paths(trained_run, [str(p) for p in pred["paths"]])
    assert card.classes == CLASSES
    np.testing.assert_allclose(probs, pred["probs"], atol=1e-5)  # the cache path equals the serving path


def test_report_is_self_contained(trained_run):
    html = (trained_run / "report.html").read_text()
    images = re.findall(r"<img src='([^']+)'", html)
    assert {
        "plots/curves.png",
        "plots/confusion.png",
        "plots/per_class.png",
        "plots/roc.png",
        "plots/pr.png",
        "plots/mistakes.png",
    } <= set(images)
    for src in images:
        assert (trained_run / src).stat().st_size > 1000, src
    assert "http://" not in html and "https://" not in html and "<script" not in html
    markdown = (trained_run / "report.md").read_text()
    assert all(f"]({src})" in markdown for src in images)


@pytest.fixture(scope="module")
def interrupted(trained_run, tmp_path_factory):
    """The trained_run recipe in-process without loader workers, stopped after epoch 2 (as by Ctrl-C)."""
    runs = tmp_path_factory.mktemp("resume")
    recipe = _recipe_like(trained_run, runs, "again", "train.workers=0")

    def stop_after_two(epoch: int, row: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(recipe, console=QUIET, callbacks=[stop_after_two])
    return recipe, runs / "again", read_metrics(runs / "again" / "metrics.csv")


def test_same_seed_same_run(trained_run, interrupted):
    """Same recipe and machine, in-process instead of two worker processes: the same numbers."""
    _, _, rows_before_resume = interrupted
    assert len(rows_before_resume) == 2
    assert _without_time(rows_before_resume) == _without_time(read_metrics(trained_run / "metrics.csv")[:2])


def test_resume_continues_exactly_where_it_stopped(trained_run, interrupted):
    recipe, run, _ = interrupted
    cache_stamp = (run / "cache" / "images.u8").stat().st_mtime_ns
    assert load_checkpoint(run / "last.pt").epoch == 2
    fit(recipe, resume=True, console=QUIET)
    assert (run / "cache" / "images.u8").stat().st_mtime_ns == cache_stamp  # the cache was reused
    assert _without_time(read_metrics(run / "metrics.csv")) == _without_time(read_metrics(trained_run / "metrics.csv"))
    resumed, straight = load_checkpoint(run / "best.pt"), load_checkpoint(trained_run / "best.pt")
    assert resumed.epoch == straight.epoch
    assert all(torch.equal(resumed.state_dict[k], straight.state_dict[k]) for k in straight.state_dict)


def test_resume_with_more_epochs_goes_on_learning(trained_run, tmp_path):
    """A finished run continued with --epochs 6 (in another folder: run folders can move) trains one more epoch
    with a learning rate above zero: the cosine decay is stretched, not stuck at its old end."""
    import shutil

    shutil.copytree(trained_run, tmp_path / "trained", ignore=shutil.ignore_patterns("report*", "plots"))
    recipe = read_recipe(trained_run / "recipe.yaml").with_overrides(
        [f"output.runs_dir={tmp_path}", "train.epochs=6", "train.workers=0"]
    )
    fit(recipe, resume=True, console=QUIET)
    rows = read_metrics(tmp_path / "trained" / "metrics.csv")
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert _without_time(rows[:5]) == _without_time(read_metrics(trained_run / "metrics.csv"))
    before, after = load_checkpoint(trained_run / "last.pt"), load_checkpoint(tmp_path / "trained" / "last.pt")
    assert after.epoch == 6
    fixed = ("running_mean", "running_var", "num_batches_tracked", "prior_shift")  # statistics, not weights
    weights = [k for k in before.state_dict if not k.endswith(fixed)]
    moved = [k for k in weights if not torch.equal(before.state_dict[k], after.state_dict[k])]
    assert len(moved) == len(weights)  # learning rate 0 (the old schedule's end) would leave them all as they were
    assert (tmp_path / "trained" / "report.html").is_file()


def test_metrics_rows_written_before_a_column_existed_resume():
    """A run started before metrics.csv had val_monitor gets an empty cell there once resumed; resuming it again
    must read that row, not fail on float('')."""
    from andon.training.fit import _typed

    row = {"epoch": "3", "phase": "full", "val_loss": "0.25", "val_monitor": "", "lr": "0.001"}
    assert _typed(row) == {"epoch": 3, "phase": "full", "val_loss": 0.25, "lr": 0.001}


def test_resume_refuses_a_different_recipe(trained_run, interrupted):
    recipe, _, _ = interrupted
    with pytest.raises(ConfigError, match=r"model\.input_size"):
        fit(recipe.with_overrides(["model.input_size=96"]), resume=True, console=QUIET)


def test_another_seed_gives_another_run(trained_run, tmp_path):
    recipe = _recipe_like(trained_run, tmp_path, "seed1", "train.seed=1", "train.epochs=1", "train.workers=0")
    fit(recipe, console=QUIET)
    other = read_metrics(tmp_path / "seed1" / "metrics.csv")[0]
    assert other["train_loss"] != read_metrics(trained_run / "metrics.csv")[0]["train_loss"]


def test_a_flat_validation_metric_keeps_the_latest_epoch_and_does_not_stop(trained_run, tmp_path):
    """A learning rate too small to change anything (and BatchNorm statistics kept): every epoch scores the
    same, so each is a tie that goes to the later epoch, and patience 1 never fires."""
    recipe = _recipe_like(
        trained_run,
        tmp_path,
        "flat",
        "train.epochs=4",
        "train.freeze_epochs=0",
        "train.patience=1",
        "train.min_epochs=0",
        "train.lr=1e-12",
        "train.head_lr=1e-12",
        "train.batchnorm=frozen",
        "train.workers=0",
        "model.input_size=48",
    )
    result = fit(recipe, console=QUIET)
    assert (result.epochs_run, result.best_epoch) == (4, 4)
    assert load_checkpoint(tmp_path / "flat" / "best.pt").epoch == 4


def test_early_stopping_ends_the_run_and_says_so_in_last_pt(trained_run, tmp_path, monkeypatch):
    """A monitored value that only falls: epoch 1 stays the best, patience 2 counted from epoch 2 (min_epochs
    given) stops the 8-epoch run after epoch 4; metrics.csv and last.pt end there too."""
    monkeypatch.setattr("andon.training.fit._monitored", lambda row, monitor: -float(row["epoch"]))
    recipe = _recipe_like(
        trained_run,
        tmp_path,
        "falling",
        "train.epochs=8",
        "train.patience=2",
        "train.min_epochs=2",
        "train.workers=0",
        "model.input_size=48",
    )
    result = fit(recipe, console=QUIET)
    assert (result.epochs_run, result.best_epoch) == (4, 1)
    assert len(read_metrics(tmp_path / "falling" / "metrics.csv")) == 4
    last = load_checkpoint(tmp_path / "falling" / "last.pt")
    assert last.extra["stop"]["stopped"] is True and last.epoch == 4


@pytest.fixture(scope="module")
def merged_run(trained_run, tmp_path_factory):
    """The trained_run recipe with scratch and spot merged into 'defect' (learned as the two types), in-process
    without workers: interrupted after epoch 2 of 5, then resumed."""
    runs = tmp_path_factory.mktemp("merged")
    recipe = _recipe_like(
        trained_run, runs, "merged", "data.remap.scratch=defect", "data.remap.spot=defect", "train.workers=0"
    )

    def stop_after_two(epoch: int, row: dict) -> None:
        if epoch == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        fit(recipe, console=QUIET, callbacks=[stop_after_two])
    assert load_checkpoint(runs / "merged" / "last.pt").epoch == 2
    fit(recipe, resume=True, console=QUIET)  # the head of three units comes back from last.pt
    return runs / "merged"


def test_a_merge_is_learned_as_its_types_and_the_model_answers_in_merged_classes(merged_run):
    from andon.training.predict import predict_paths

    ckpt = load_checkpoint(merged_run / "best.pt")
    card = ckpt.card
    assert card.classes == ["defect", "ok"] and card.defect_classes == ["defect"]
    assert card.trained_as == {"defect": ["scratch", "spot"]} and card.training_classes == ["scratch", "spot", "ok"]
    assert ckpt.num_classes == 2 and ckpt.state_dict["head.weight"].shape[0] == 3
    assert {s.label for s in load_dataset(merged_run / "splits.csv").samples} == {"defect", "ok"}
    assert [int(r["epoch"]) for r in read_metrics(merged_run / "metrics.csv")] == [1, 2, 3, 4, 5]
    pred = load_predictions(merged_run / "predictions_test.npz")
    assert list(pred["classes"]) == ["defect", "ok"] and pred["probs"].shape[1] == 2
    accuracy = float((pred["probs"].argmax(1) == pred["y_true"]).mean())
    majority = max(np.bincount(pred["y_true"])) / len(pred["y_true"])
    assert accuracy >= majority + 0.15, f"test accuracy {accuracy:.3f}, always 'defect' gives {majority:.3f}"
    probs, _ = predict_paths(merged_run, [str(p) for p in pred["paths"]])
    np.testing.assert_allclose(probs, pred["probs"], atol=1e-5)  # the run folder rebuilds the merging head
    assert "defect = scratch + spot" in (merged_run / "report.md").read_text()
    rows = _decision_rows(merged_run / "report.md")  # the decisions by defect type, from the folder's labels
    assert list(rows) == ["scratch", "spot", "ok"] and [r[0] for r in rows.values()] == ["defect", "defect", "ok"]
    assert sum(int(r[1]) for r in rows.values()) == len(pred["y_true"])
    assert int(rows["ok"][1]) == (pred["y_true"] == 1).sum()


def test_an_ok_defect_model_is_chosen_on_how_it_ranks_defects(merged_run):
    """monitor auto: ROC AUC of P(defect) on validation for a model with one defect class and a good class."""
    from andon.evaluation.metrics import classification_report

    rows = read_metrics(merged_run / "metrics.csv")
    assert [r["val_monitor"] for r in rows] == [r["val_roc_auc"] for r in rows]
    ckpt = load_checkpoint(merged_run / "best.pt")
    assert ckpt.epoch == _chosen_epoch([float(r["val_roc_auc"]) for r in rows])
    val = load_predictions(merged_run / "predictions_val.npz")  # the best model's
    report = classification_report(val["y_true"], val["probs"], ["defect", "ok"], ["defect"])
    assert float(rows[ckpt.epoch - 1]["val_roc_auc"]) == pytest.approx(report.roc_auc, abs=1e-6)
    assert (
        "best epoch" in (merged_run / "report.md").read_text()
        and "by val roc_auc" in (merged_run / "report.md").read_text()
    )


def test_keep_source_classes_false_learns_the_merged_label(trained_run, tmp_path):
    recipe = _recipe_like(
        trained_run,
        tmp_path,
        "plain",
        "data.remap.scratch=defect",
        "data.remap.spot=defect",
        "data.keep_source_classes=false",
        "train.epochs=1",
        "train.workers=0",
        "model.input_size=48",
    )
    fit(recipe, console=QUIET)
    ckpt = load_checkpoint(tmp_path / "plain" / "best.pt")
    assert ckpt.card.classes == ["defect", "ok"] and ckpt.card.trained_as == {}
    assert ckpt.state_dict["head.weight"].shape[0] == 2


def _cli_error(capsys, *args: str) -> str:
    with pytest.raises(SystemExit) as done:
        main(["train", *args])
    assert done.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    return lines[0]


def test_cli_errors_are_one_line(capsys, shapes_data, tmp_path):
    runs = ["--runs-dir", str(tmp_path / "runs")]
    line = _cli_error(capsys, str(shapes_data), "--set", "train.lrr=0.1", *runs)
    assert "'train.lrr'" in line and "allowed keys in 'train'" in line and "batch_size" in line
    line = _cli_error(capsys, str(shapes_data), "--model", "resnet1000", *runs)
    assert "unknown model 'resnet1000'" in line and "resnet18" in line
    line = _cli_error(capsys, str(tmp_path / "no-such-folder"), *runs)
    assert "no-such-folder" in line and "does not exist" in line
    line = _cli_error(capsys, str(shapes_data), "--input-size", "big", *runs)
    assert "--input-size 'big'" in line
    line = _cli_error(capsys, "--resume", *runs)
    assert "--resume needs the name" in line
    line = _cli_error(capsys, "--resume", "--name", "nothing-here", *runs)
    assert "nothing-here" in line
    line = _cli_error(
        capsys,
        str(_with_a_type_held_out(shapes_data, tmp_path / "pits")),
        "--remap",
        "scratch=defect,pit=defect",
        *runs,
    )
    assert "'pit' (merged into 'defect') has no training images" in line
    assert "--set data.keep_source_classes=false" in line
    assert not (tmp_path / "runs").exists()  # bad input leaves no run folder behind


def _with_a_type_held_out(shapes_data: Path, out: Path) -> Path:
    """ok and scratch of shapes_data, plus a type 'pit' whose one image the split puts into test."""
    import shutil

    from andon.datasets.splits import split_score

    for name in ("ok", "scratch"):
        shutil.copytree(shapes_data / name, out / name)
    name = next(f"{i}.png" for i in range(100) if split_score(0, f"path:pit/{i}.png") < 0.15)
    (out / "pit").mkdir()
    shutil.copy(next((shapes_data / "spot").iterdir()), out / "pit" / name)
    return out
