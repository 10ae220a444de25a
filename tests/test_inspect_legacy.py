"""A model file exported before the output contract and the decision policy loads and decides exactly as then.

``tests/fixtures/model-3b5fab3.onnx`` was exported by andon at commit 3b5fab3 (``make_model_3b5fab3.py`` beside it
says how); ``.expected.json`` is what that andon's inspector answered for the frames in ``.frames.npy``. The file
has only the outputs of its time (probabilities, heatmap) and a per-class band.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from andon.inspect import Inspector

FIXTURES = Path(__file__).parent / "fixtures"
MODEL = FIXTURES / "model-3b5fab3.onnx"


@pytest.fixture(scope="module")
def legacy() -> tuple[Inspector, np.ndarray, list[dict]]:
    expected = json.loads(MODEL.with_suffix(".expected.json").read_text())
    return Inspector.load(MODEL), np.load(MODEL.with_suffix(".frames.npy")), expected


def test_old_file_loads_with_its_outputs_only(legacy) -> None:
    inspector, _, _ = legacy
    card = inspector.card
    assert card.output_names == {"probabilities": "probs", "heatmap": "heatmap"}
    assert card.anomaly is None and card.thresholds.anomaly is None
    assert [s.name for s in inspector.policy.signals] == ["defect", "dent"]


def test_old_file_decides_as_before(legacy) -> None:
    inspector, frames, expected = legacy
    results = inspector.inspect_batch(list(frames), heatmap=True)
    assert {e["decision"] for e in expected} == {"pass", "review", "reject"}  # the fixture exercises every outcome
    for result, old in zip(results, expected, strict=True):
        assert result.decision == old["decision"]
        assert result.label == old["label"]
        assert result.reasons == old["reasons"]
        assert result.defect_score == pytest.approx(old["defect_score"], abs=1e-6)
        assert result.scores == pytest.approx(old["scores"], abs=1e-6)
        np.testing.assert_allclose(result.heatmap, np.asarray(old["heatmap"]), atol=1e-6)
        assert result.anomaly_score is None and result.anomaly_map is None
        assert result.reason in ("pass", "defect", "dent")


def test_old_file_serves(tmp_path: Path, legacy) -> None:
    from service_support import client_for, post_frame, settings_for

    _, frames, expected = legacy
    with client_for(settings_for(tmp_path, MODEL)) as client:
        for frame, old in list(zip(frames, expected))[:6]:
            buffer = io.BytesIO()
            Image.fromarray(frame).save(buffer, format="PNG")
            response = post_frame(client, buffer.getvalue(), content_type="image/png")
            assert response.status_code in (200, 201), response.text
            body = response.json()
            assert body["decision"] == old["decision"]
            assert body["reasons"] == old["reasons"]
            assert "anomaly_score" not in body or body["anomaly_score"] is None
