"""Inspector.inspect on bytes and arrays: verdicts, scores, heatmaps, timings, batches, thresholds."""

from __future__ import annotations

import io
import json
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image

from andon.errors import ImageDecodeError
from andon.inspect import InspectionResult, Inspector, ThresholdBand, Thresholds
from andon.inspect.session import cgroup_cpu_limit, default_threads, physical_cores, session_options
from tiny_onnx import tiny_card, write_tiny_model


@pytest.fixture
def inspector(tiny_model_path: Path) -> Inspector:
    return Inspector.load(tiny_model_path)


def bright(h: int = 64, w: int = 64) -> np.ndarray:
    return np.full((h, w, 3), 220, np.uint8)


def with_blob(h: int = 64, w: int = 64, top: int = 0, left: int = 0, size: int = 56) -> np.ndarray:
    image = bright(h, w)
    image[top : top + size, left : left + size] = 10
    return image


def grey_level_for(p_defect: float) -> int:
    """The uniform grey level the tiny model scores at ``p_defect`` (it is sigmoid(-4m - 0.6), m the
    normalised mean)."""
    m = (-np.log(p_defect / (1 - p_defect)) - 0.6) / 4
    return int(round(255 * (0.5 + 0.25 * m)))


def png(image: np.ndarray) -> bytes:
    return cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))[1].tobytes()


def jpeg(image: np.ndarray, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=95, **kw)
    return buf.getvalue()


def test_bright_frame_passes_dark_blob_rejected(inspector: Inspector) -> None:
    ok = inspector.inspect(bright())
    bad = inspector.inspect(with_blob())
    assert (ok.label, ok.decision) == ("ok", "pass")
    assert (bad.label, bad.decision) == ("defect", "reject")
    assert ok.defect_score < 0.01 and bad.defect_score > 0.9
    assert ok.scores["defect"] == pytest.approx(ok.defect_score, abs=1e-7)
    assert sum(bad.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert bad.reasons == [f"P(defect) {bad.defect_score:.2f} >= reject_at 0.70"]
    assert ok.reasons == [f"P(defect) {ok.defect_score:.2f} < pass_below 0.30"]


def test_review_band(inspector: Inspector) -> None:
    result = inspector.inspect(np.full((32, 32, 3), grey_level_for(0.5), np.uint8))
    assert 0.3 <= result.defect_score < 0.7
    assert result.decision == "review"
    assert "in review band [0.30, 0.70)" in result.reasons[0]


@pytest.mark.parametrize("encode", [png, jpeg], ids=["png", "jpeg"])
def test_bytes_and_array_agree(inspector: Inspector, encode) -> None:
    image = with_blob()
    from_bytes = inspector.inspect(encode(image))
    from_array = inspector.inspect(image)
    assert from_bytes.decision == from_array.decision == "reject"
    assert from_bytes.defect_score == pytest.approx(from_array.defect_score, abs=0.02)
    assert from_bytes.image_size == (64, 64)


@pytest.mark.parametrize("kind", ["grey", "grey1", "rgb", "rgba", "uint16"])
def test_array_kinds(inspector: Inspector, kind: str) -> None:
    rgb = with_blob()
    grey = rgb[:, :, 0].copy()
    frame = {
        "grey": grey,
        "grey1": grey[:, :, None],
        "rgb": rgb,
        "rgba": np.dstack([rgb, np.full(grey.shape, 255, np.uint8)]),
        "uint16": rgb.astype(np.uint16) * 257,  # full-range 16-bit of the same picture
    }[kind]
    result = inspector.inspect(frame)
    reference = inspector.inspect(rgb)
    assert result.decision == "reject"
    assert result.defect_score == pytest.approx(reference.defect_score, abs=1e-6)
    assert result.image_size == (64, 64)


def test_16bit_png_bytes(inspector: Inspector) -> None:
    grey16 = with_blob()[:, :, 0].astype(np.uint16) * 257
    data = cv2.imencode(".png", grey16)[1].tobytes()
    result = inspector.inspect(data)
    assert result.decision == "reject"
    assert result.defect_score == pytest.approx(inspector.inspect(with_blob()).defect_score, abs=1e-6)


def test_reduced_jpeg_decode_reports_original_size(inspector: Inspector) -> None:
    big = cv2.resize(with_blob(), (1000, 800), interpolation=cv2.INTER_NEAREST)
    result = inspector.inspect(jpeg(big))
    assert result.image_size == (800, 1000)  # decoded at 1/8 scale, size from the header
    assert result.decision == "reject"


def test_exif_rotated_jpeg_reports_rotated_size(inspector: Inspector) -> None:
    image = Image.fromarray(cv2.resize(with_blob(), (1000, 800)))
    exif = image.getexif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    buf = io.BytesIO()
    image.save(buf, "JPEG", exif=exif)
    assert inspector.inspect(buf.getvalue()).image_size == (1000, 800)


def test_a_frame_is_probed_once(inspector: Inspector, monkeypatch) -> None:
    """The header and structure check walks every byte of the frame: the inspector does it once, in decode,
    and takes the frame's own size from that header (a second walk cost ~0.5 ms a 5 MP frame)."""
    from andon.inspect import decoding

    calls = []
    real = decoding.probe

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(decoding, "probe", counted)
    big = cv2.resize(with_blob(), (1000, 800), interpolation=cv2.INTER_NEAREST)
    assert inspector.inspect(jpeg(big)).image_size == (800, 1000)  # reduced at 1/8, the size from the one probe
    assert len(calls) == 1


def test_bad_bytes_raise(inspector: Inspector) -> None:
    with pytest.raises(ImageDecodeError, match="not an image"):
        inspector.inspect(b"definitely not an image")
    with pytest.raises(ImageDecodeError, match="floats are ambiguous"):
        inspector.inspect(np.zeros((8, 8), np.float32))


def test_batch_equals_single(inspector: Inspector) -> None:
    frames = [bright(), with_blob(), png(with_blob(size=30)), np.full((40, 50), grey_level_for(0.5), np.uint8)]
    batch = inspector.inspect_batch(frames, heatmap=True)
    for frame, got in zip(frames, batch):
        single = inspector.inspect(frame, heatmap=True)
        assert got.decision == single.decision and got.label == single.label
        assert got.defect_score == pytest.approx(single.defect_score, abs=1e-6)
        np.testing.assert_allclose(got.heatmap, single.heatmap, atol=1e-6)


def test_batch_is_one_session_call(inspector: Inspector) -> None:
    calls = []
    real = inspector._session

    class Counting:
        def run(self, names, feeds):
            calls.append(feeds["image"].shape)
            return real.run(names, feeds)

    inspector._session = Counting()
    inspector.inspect_batch([bright(), with_blob(), bright()])
    assert calls == [(3, 3, 32, 32)]


def test_batch_errors_in_place(inspector: Inspector) -> None:
    results = inspector.inspect_batch([bright(), b"junk", with_blob()], on_error="return")
    assert isinstance(results[0], InspectionResult) and results[0].decision == "pass"
    assert isinstance(results[1], ImageDecodeError)
    assert isinstance(results[2], InspectionResult) and results[2].decision == "reject"
    with pytest.raises(ImageDecodeError):
        inspector.inspect_batch([bright(), b"junk"])


def test_timings_present(inspector: Inspector) -> None:
    t = inspector.inspect(png(bright())).timings_ms
    assert set(t) == {"decode", "preprocess", "infer", "total"}
    assert all(v >= 0 for v in t.values())
    assert t["total"] == pytest.approx(t["decode"] + t["preprocess"] + t["infer"])
    assert t["decode"] > 0 and t["infer"] > 0


def test_heatmap_peaks_at_dark_blob(inspector: Inspector) -> None:
    image = bright(64, 64)
    image[40:64, 8:32] = 10  # lower left
    result = inspector.inspect(image, heatmap=True)
    heat = result.heatmap
    assert heat.shape == (8, 8) and heat.dtype == np.float32
    assert heat.min() >= 0 and heat.max() <= 1
    row, col = np.unravel_index(np.argmax(heat), heat.shape)
    assert 5 <= row <= 7 and 1 <= col <= 3
    assert heat[5:8, 1:4].mean() > 0.9 and heat[0:4, 4:8].max() < 0.1


def test_no_heatmap_unless_asked(inspector: Inspector) -> None:
    assert inspector.inspect(bright()).heatmap is None


def test_to_dict_is_json(inspector: Inspector) -> None:
    result = inspector.inspect(with_blob(), heatmap=True)
    data = json.loads(json.dumps(result.to_dict(heatmap=True)))
    assert data["decision"] == "reject" and data["label"] == "defect"
    assert data["model_hash"] == inspector.model_hash and data["model_version"] == "1"
    assert len(data["heatmap"]) == 8 and data["image_size"] == [64, 64]
    assert "heatmap" not in result.to_dict()


def test_with_thresholds(inspector: Inspector) -> None:
    frame = np.full((32, 32, 3), grey_level_for(0.5), np.uint8)
    strict = inspector.with_thresholds(Thresholds(defect=ThresholdBand(pass_below=0.2, reject_at=0.4)))
    assert strict.inspect(frame).decision == "reject"
    assert inspector.inspect(frame).decision == "review"  # the original is unchanged
    assert strict._session is inspector._session
    assert strict.model_hash == inspector.model_hash


def test_per_class_band_makes_stricter(tmp_path: Path) -> None:
    card = tiny_card(classes=("ok", "scratch", "dent"))
    inspector = Inspector.load(write_tiny_model(tmp_path / "m.onnx", card))
    frame = bright()
    frame[:20, :20] = 10
    base = inspector.inspect(frame)
    assert base.decision == "pass"
    band = ThresholdBand(pass_below=base.scores["scratch"] / 2, reject_at=0.99)
    strict = inspector.with_thresholds(
        Thresholds(defect=ThresholdBand(pass_below=0.3, reject_at=0.7), per_class={"scratch": band})
    )
    result = strict.inspect(frame)
    assert result.decision == "review"
    assert result.reasons[1].startswith("P(scratch)") and "per-class band for scratch" in result.reasons[1]


def test_with_thresholds_rejects_unknown_class(inspector: Inspector) -> None:
    from andon.errors import ModelCardError

    with pytest.raises(ModelCardError, match="not defect classes"):
        inspector.with_thresholds(Thresholds(per_class={"ok": ThresholdBand()}))


def test_predict_probs(inspector: Inspector) -> None:
    tensors = inspector.preprocessor.batch([bright(), with_blob()])
    probs = inspector.predict_probs(tensors)
    assert probs.shape == (2, 2) and probs.dtype == np.float32
    assert probs[0, 0] > 0.99 and probs[1, 1] > 0.9
    with pytest.raises(ImageDecodeError, match=r"do not fit the model input \(N, 3, 32, 32\)"):
        inspector.predict_probs(np.zeros((1, 3, 16, 16), np.float32))


def test_session_options() -> None:
    opts = session_options(3)
    assert opts.intra_op_num_threads == 3 and opts.inter_op_num_threads == 1
    assert 1 <= physical_cores() <= len(__import__("os").sched_getaffinity(0))
    assert 1 <= default_threads() <= physical_cores()


def test_cgroup_quota(tmp_path: Path) -> None:
    quota = tmp_path / "cpu.max"
    quota.write_text("150000 100000\n")
    assert cgroup_cpu_limit(quota) == 2
    quota.write_text("max 100000\n")
    assert cgroup_cpu_limit(quota) is None
    assert cgroup_cpu_limit(tmp_path / "absent") is None
