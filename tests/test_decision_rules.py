"""The three-way decision policy: its edges, per-class bands, the anomaly signal, and one frame = one row."""

from __future__ import annotations

import numpy as np
import pytest

from andon.inspect import DecisionPolicy, ModelOutputs, ThresholdBand, Thresholds

CLASSES = ["ok", "scratch", "dent"]
DEFECTS = ["scratch", "dent"]
BAND = Thresholds(defect=ThresholdBand(pass_below=0.3, reject_at=0.8))


def row(scratch: float, dent: float) -> list[float]:
    return [1 - scratch - dent, scratch, dent]


def decide(thresholds: Thresholds, probs_row, classes=CLASSES, defects=DEFECTS) -> tuple[str, list[str]]:
    """One frame through the batch policy: its decision and reasons."""
    verdicts = DecisionPolicy(thresholds, classes, defects).decide(np.asarray([probs_row]))
    return verdicts.decision(0), verdicts.reasons(0)


def decide_many(thresholds: Thresholds, probs, classes=CLASSES, defects=DEFECTS) -> np.ndarray:
    return DecisionPolicy(thresholds, classes, defects).decide(np.asarray(probs)).decisions


@pytest.mark.parametrize(
    ("scratch", "dent", "expected"),
    [
        (0.10, 0.10, "pass"),
        (0.15, 0.149, "pass"),  # s = 0.299 < 0.3
        (0.15, 0.15, "review"),  # s = pass_below exactly -> review
        (0.40, 0.39, "review"),
        (0.40, 0.40, "reject"),  # s = reject_at exactly -> reject
        (0.90, 0.05, "reject"),
    ],
)
def test_defect_band(scratch: float, dent: float, expected: str) -> None:
    decision, reasons = decide(BAND, row(scratch, dent), CLASSES, DEFECTS)
    assert decision == expected
    assert reasons[0].startswith("P(defect)")


def test_defect_score_is_sum_of_defect_classes() -> None:
    # neither defect class alone reaches reject_at, their sum does
    decision, reasons = decide(BAND, row(0.45, 0.45), CLASSES, DEFECTS)
    assert decision == "reject"
    assert reasons == ["P(defect) 0.90 >= reject_at 0.80"]


def test_two_way_band_has_no_review() -> None:
    two_way = Thresholds(defect=ThresholdBand(pass_below=0.5, reject_at=0.5))
    scores = np.linspace(0, 1, 101)
    probs = np.stack([1 - scores, scores, np.zeros_like(scores)], axis=1)
    decisions = decide_many(two_way, probs, CLASSES, DEFECTS)
    assert set(decisions) == {"pass", "reject"}
    assert (decisions == np.where(scores >= 0.5, "reject", "pass")).all()


def test_per_class_band_only_stricter() -> None:
    thresholds = Thresholds(defect=BAND.defect, per_class={"dent": ThresholdBand(pass_below=0.05, reject_at=0.2)})
    # overall pass, dent above its own pass_below -> review
    decision, reasons = decide(thresholds, row(0.0, 0.1), CLASSES, DEFECTS)
    assert decision == "review"
    assert reasons[1] == "P(dent) 0.10 in review band [0.05, 0.20) (per-class band for dent)"
    # overall review, dent above its own reject_at -> reject
    assert decide(thresholds, row(0.1, 0.25), CLASSES, DEFECTS)[0] == "reject"
    # overall reject, dent low -> still reject (a per-class band never loosens)
    decision, reasons = decide(thresholds, row(0.85, 0.0), CLASSES, DEFECTS)
    assert decision == "reject" and len(reasons) == 1
    # a scratch at 0.1 is not subject to the dent band
    assert decide(thresholds, row(0.1, 0.0), CLASSES, DEFECTS)[0] == "pass"


def test_all_defect_classes_always_reject() -> None:
    classes = ["crazing", "inclusion", "patches"]
    for probs in ([0.98, 0.01, 0.01], [0.2, 0.3, 0.5]):
        decision, reasons = decide(BAND, probs, classes, classes)
        assert decision == "reject"
        assert reasons == ["P(defect) 1.00 >= reject_at 0.80"]


def test_batch_matches_one_frame_at_a_time() -> None:
    rng = np.random.default_rng(7)
    probs = rng.dirichlet([0.5, 0.5, 0.5], size=2000)
    probs[:50] = np.round(probs[:50], 1)  # include values on the thresholds
    probs[:50] /= probs[:50].sum(axis=1, keepdims=True)
    thresholds = Thresholds(
        defect=ThresholdBand(pass_below=0.3, reject_at=0.6),
        per_class={"scratch": ThresholdBand(pass_below=0.2, reject_at=0.5)},
    )
    many = decide_many(thresholds, probs, CLASSES, DEFECTS)
    single = [decide(thresholds, p, CLASSES, DEFECTS)[0] for p in probs]
    assert list(many) == single
    assert set(many) == {"pass", "review", "reject"}


def test_empty_batch() -> None:
    verdicts = DecisionPolicy(BAND, CLASSES, DEFECTS).decide(np.zeros((0, 3)))
    assert verdicts.decisions.shape == (0,)
    assert verdicts.counts() == {"pass": 0, "review": 0, "reject": 0}


ANOMALY = Thresholds(defect=BAND.defect, anomaly=ThresholdBand(pass_below=0.5, reject_at=1.0))


def test_anomaly_flags_what_the_classifier_passes_as_unknown_defect() -> None:
    probs = np.asarray([row(0.05, 0.05), row(0.05, 0.05), row(0.5, 0.4), row(0.2, 0.15)])
    anomaly = np.asarray([0.2, 0.7, 0.9, 0.6])
    verdicts = DecisionPolicy(ANOMALY, CLASSES, DEFECTS).decide(ModelOutputs.of(probs, anomaly_score=anomaly))
    assert list(verdicts.decisions) == ["pass", "review", "reject", "review"]
    assert [verdicts.reason(i) for i in range(4)] == ["pass", "unknown defect", "defect", "defect"]
    assert verdicts.reasons(1) == [
        "P(defect) 0.10 < pass_below 0.30",
        "anomaly score 0.70 in review band [0.50, 1.00): unlike the good parts, and unlike any defect the classifier "
        "knows (unknown defect)",
    ]
    # the classifier already sends frame 3 to review: the anomaly score adds nothing, and says nothing
    assert verdicts.reasons(3) == ["P(defect) 0.35 in review band [0.30, 0.80)"]
    assert verdicts.flagged_by() == {"defect": 2, "anomaly": 1}


def test_anomaly_band_only_stricter_and_needs_the_score() -> None:
    policy = DecisionPolicy(ANOMALY, CLASSES, DEFECTS)
    rng = np.random.default_rng(3)
    probs = rng.dirichlet([0.5, 0.5, 0.5], size=500)
    anomaly = rng.uniform(0, 1, size=500)
    with_anomaly = policy.decide(ModelOutputs.of(probs, anomaly_score=anomaly)).rank
    without = DecisionPolicy(BAND, CLASSES, DEFECTS).decide(probs).rank
    assert (with_anomaly >= without).all() and (with_anomaly > without).any()
    with pytest.raises(ValueError, match="anomaly_score"):
        policy.decide(probs)


def test_anomaly_only_model_decides_on_its_score() -> None:
    band = Thresholds(defect=ThresholdBand(pass_below=0.5, reject_at=1.0))
    policy = DecisionPolicy(band, ["anomaly", "ok"], ["anomaly"], anomaly_only=True)
    verdicts = policy.decide(np.asarray([[0.3, 0.7], [0.6, 0.4]]))
    assert list(verdicts.decisions) == ["pass", "review"]
    assert verdicts.reason(1) == "anomaly"
    assert verdicts.reasons(1) == ["anomaly score 0.60 in review band [0.50, 1.00)"]
