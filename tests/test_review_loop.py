"""The feedback loop end to end: frames inspected by the service, judged by an operator, exported as a data
set, and a candidate model compared with the active one on it, side by side."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from andon.cli import app as cli
from andon.inspect.inspector import Inspector
from review_support import jpeg_bytes, post_frame, review_model, synth_image
from service_support import add_key, auth, client_for, settings_for


def test_verdicts_become_data_and_a_candidate_is_compared_with_the_active_model(tmp_path, monkeypatch):
    active = review_model(tmp_path / "active.onnx")
    inspector = Inspector.load(active)
    settings = settings_for(tmp_path, active)
    with client_for(settings) as c:
        key = add_key(c, "operator")
        camera = add_key(c, "camera", "cam1")
        for i in range(8):
            data = jpeg_bytes(synth_image(inspector, 40 + i, ("review", "reject")[i % 2], (96, 128)))
            row = post_frame(c, data, camera="cam1", part=f"Q{i}", key=camera)
            # the operator: rejects are real scratches, reviews are false alarms (a stain that wipes off)
            verdict = {"verdict": "confirm_defect"} if i % 2 else {"verdict": "false_alarm"}
            r = c.post(f"/v1/inspections/{row['id']}/verdicts", json=verdict, headers=auth(key))
            assert r.status_code == 201, r.text
    out = tmp_path / "reviewed"
    r = CliRunner().invoke(cli, ["review", "export", str(out), "--data-dir", str(settings.data_dir)])
    assert r.exit_code == 0, r.output
    assert sorted(p.parent.name for p in (out / "images").rglob("*.jpg")).count("ok") == 4

    # a candidate that is less eager to flag stains, against the service's active model
    candidate = review_model(tmp_path / "candidate.onnx", gain=8.0, version="2")
    monkeypatch.setenv("ANDON_DATA_DIR", str(settings.data_dir))
    r = CliRunner().invoke(cli, ["evaluate", str(candidate), str(out / "images"), "--compare", "active", "--json"])
    assert r.exit_code == 0, r.output
    body = json.loads(r.output[r.output.index("{") :])
    assert body["model"]["version"] == "2" and body["compare"]["model"]["version"] == "1"
    rows = {row["figure"]: row for row in body["side_by_side"]}
    assert body["data"]["n"] == 8 and body["compare"]["data"]["n"] == 8
    # the active model sent the 4 good parts (false alarms) to review and rejected the 4 scratches
    assert rows["review rate"]["other"] == 0.5 and rows["escape rate"]["other"] == 0.0
    assert rows["accuracy"]["other"] == 1.0
    # the candidate, with half the gain, no longer names the scratches: it is worse, and the table says so
    assert rows["defect recall"]["candidate"] < rows["defect recall"]["other"]
    assert rows["defect recall"]["candidate_better"] is False
    text = CliRunner().invoke(cli, ["evaluate", str(candidate), str(out / "images"), "--compare", str(active)])
    assert text.exit_code == 0 and "Side by side" in text.output
