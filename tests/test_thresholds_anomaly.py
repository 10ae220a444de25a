"""`andon thresholds` and the anomaly band: shown, set by hand, kept when other bands change, refused where it
does not apply."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from andon.cli import main
from andon.inspect import Inspector


def _run(*args: str) -> int:
    with pytest.raises(SystemExit) as done:
        main(["thresholds", *args])
    return done.value.code


@pytest.fixture()
def anomaly_model(tmp_path: Path) -> Path:
    from tiny_onnx import write_tiny_anomaly_model

    return write_tiny_anomaly_model(tmp_path / "anomaly.onnx")


def test_the_anomaly_band_is_shown_and_set_by_hand(anomaly_model: Path, capsys) -> None:
    assert _run(str(anomaly_model), "--json") == 0
    shown = json.loads(capsys.readouterr().out)["thresholds"]
    assert shown["anomaly"] == {"pass_below": 0.5, "reject_at": 1.0}
    assert _run(str(anomaly_model), "--anomaly-at", "0.7") == 0
    assert Inspector.load(anomaly_model).card.thresholds.anomaly.pass_below == 0.7
    # changing the classifier's band by hand keeps the anomaly band
    assert _run(str(anomaly_model), "--pass-below", "0.2", "--reject-at", "0.8") == 0
    thresholds = Inspector.load(anomaly_model).card.thresholds
    assert (thresholds.defect.pass_below, thresholds.defect.reject_at) == (0.2, 0.8)
    assert thresholds.anomaly.pass_below == 0.7


def test_anomaly_options_refused_where_they_do_not_apply(anomaly_model: Path, tiny_model_path: Path, capsys) -> None:
    assert _run(str(tiny_model_path), "--anomaly-at", "0.6") == 2
    assert "has no anomaly detector" in capsys.readouterr().err
    assert _run(str(anomaly_model), "--false-alarm", "0.01") == 2
    assert "add --calibrate DATA" in capsys.readouterr().err
    assert _run(str(anomaly_model), "--anomaly-at", "1.5") == 2
    assert "between 0 and 1" in capsys.readouterr().err
