"""What flagged a frame: the stored reason code (``Inspection.reason``) as the review page and the dashboard
show it.

The reason code is the decision policy's (``andon.inspect.decision``): "pass", the signal that decided
("defect": P(defect) on the defect band; a defect class name: that class's own band; "anomaly": the good-only
anomaly score) or "unknown defect" (the classifier passed the part and the anomaly score flagged it). Records
from before the reason was stored have none; they read as their decision.

The dashboard groups flagged frames by signal: ``classifier`` (the defect band), ``per_class`` (a class's own
band), ``anomaly`` (the anomaly band, unknown defects included: the anomaly score decided them too) and
``not_recorded`` (older records).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from andon.inspect.decision import UNKNOWN_DEFECT

CLASSIFIER, PER_CLASS, ANOMALY, NOT_RECORDED = "classifier", "per_class", "anomaly", "not_recorded"
#: the dashboard's rows, in order
SIGNALS: tuple[str, ...] = (CLASSIFIER, PER_CLASS, ANOMALY, NOT_RECORDED)
SIGNAL_TITLES = {
    CLASSIFIER: "classifier (P(defect))",
    PER_CLASS: "per-class band",
    ANOMALY: "anomaly score",
    NOT_RECORDED: "not recorded (older records)",
}


def signal_of(reason: str | None) -> str | None:
    """The signal group of a flagged frame's reason code; None for a pass."""
    if reason is None or reason == "":
        return NOT_RECORDED
    if reason == "pass":
        return None
    if reason == "defect":
        return CLASSIFIER
    if reason in ("anomaly", UNKNOWN_DEFECT):
        return ANOMALY
    return PER_CLASS


@dataclass(frozen=True)
class Badge:
    text: str
    #: css class: reason-classifier, reason-class, reason-anomaly, reason-unknown, reason-decision
    kind: str
    title: str


def badge(reason: str | None, decision: str) -> Badge:
    """How the page names what decided: "unknown defect", "anomaly", "<class> band", "classifier"; a record
    without a reason shows its decision."""
    if not reason:
        return Badge(decision, "reason-decision", "recorded before the reason was stored")
    if reason == UNKNOWN_DEFECT:
        return Badge(
            UNKNOWN_DEFECT,
            "reason-unknown",
            "the classifier passed it; the anomaly score flagged it: "
            "unlike the good parts and unlike any defect the classifier knows",
        )
    if reason == "anomaly":
        return Badge("anomaly", "reason-anomaly", "the good-only anomaly score decided")
    if reason == "defect":
        return Badge("classifier", "reason-classifier", "P(defect) on the defect band decided")
    if reason == "pass":
        return Badge("pass", "reason-decision", "every signal passed it")
    return Badge(reason, "reason-class", f"the per-class band of {reason} decided")


def stored_map_name(
    reason: str | None, anomaly_score: float | None, output_names: Mapping[str, str] | None = None
) -> str:
    """What the stored map of a frame is (as ``InspectionResult.display_map`` chose it): "anomaly map" for a
    frame the anomaly score flagged or a model without a class heatmap, else "heatmap". ``output_names`` is
    the model card's, when the model is still known."""
    if output_names is not None:
        if "anomaly_map" not in output_names:
            return "heatmap"
        if "heatmap" not in output_names:
            return "anomaly map"
    elif anomaly_score is None:
        return "heatmap"
    return "anomaly map" if reason in ("anomaly", UNKNOWN_DEFECT) else "heatmap"
