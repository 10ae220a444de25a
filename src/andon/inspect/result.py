"""What an inspection returns: one typed, immutable record per frame."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from andon.inspect.decision import UNKNOWN_DEFECT, Decision


@dataclass(frozen=True)
class InspectionResult:
    """The verdict on one frame, with what is needed to trust and trace it.

    ``heatmap`` is the classifier's defect evidence and ``anomaly_map`` the good-only anomaly score per location,
    both at feature resolution (float32 h x w in [0, 1]) and only computed when asked for (``display_map`` is
    the one that shows why the frame was flagged). ``reason`` is the decision's reason code: "pass", the signal
    that decided ("defect", a defect class, "anomaly"), or "unknown defect" (the classifier passed the part and
    the anomaly score flagged it); ``reasons`` says the same in words. ``image_size`` is the frame's own (height,
    width), read from the image header
    when the decoder used a reduced scale, so it always describes the original frame. ``timings_ms`` holds
    decode, preprocess (resize + normalise), infer and total in milliseconds; for a frame inspected in a batch,
    infer is the batch's single onnxruntime call divided by the number of frames.
    """

    label: str
    scores: dict[str, float]
    defect_score: float
    decision: Decision
    reasons: list[str]
    heatmap: np.ndarray | None
    model_version: str
    model_hash: str
    timings_ms: dict[str, float]
    image_size: tuple[int, int]
    #: frame-quality signals (brightness, contrast, focus; ``andon.inspect.quality``), None when not computed
    quality: dict[str, float] | None = None
    reason: str = ""
    #: the good-only anomaly score, for models that have one
    anomaly_score: float | None = None
    anomaly_map: np.ndarray | None = None

    @property
    def display_map(self) -> np.ndarray | None:
        """The map that shows where the problem is: the anomaly map for a frame the anomaly score flagged (or a
        model without a class heatmap), else the class heatmap."""
        if self.anomaly_map is not None and (self.reason in ("anomaly", UNKNOWN_DEFECT) or self.heatmap is None):
            return self.anomaly_map
        return self.heatmap

    def to_dict(self, *, heatmap: bool = False) -> dict:
        """JSON-ready: plain floats, lists; the heatmap (a nested list) only when ``heatmap`` is true."""
        out: dict[str, object] = {
            "label": self.label,
            "decision": self.decision,
            "defect_score": float(self.defect_score),
            "scores": {k: float(v) for k, v in self.scores.items()},
            "reason": self.reason,
            "reasons": list(self.reasons),
            "model_version": self.model_version,
            "model_hash": self.model_hash,
            "timings_ms": {k: round(float(v), 3) for k, v in self.timings_ms.items()},
            "image_size": [int(self.image_size[0]), int(self.image_size[1])],
        }
        if self.anomaly_score is not None:
            out["anomaly_score"] = float(self.anomaly_score)
        if self.quality is not None:
            out["quality"] = {k: float(v) for k, v in self.quality.items()}
        if heatmap and self.display_map is not None:
            out["heatmap"] = np.round(self.display_map.astype(np.float64), 4).tolist()
        return out
