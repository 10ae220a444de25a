"""The decision: pass, review (send to an operator) or reject, and why. One policy, used everywhere.

``DecisionPolicy`` takes a whole batch of model outputs (``andon.inspect.outputs.ModelOutputs``) and gives
every frame its decision and the signal that decided it, vectorised. The inspector, the service, ``andon
evaluate``, calibration, the training report, the int8 gate, part aggregation and the shift report all call
it; nothing else compares a score with a threshold.

The signals, each with a band from the card's ``Thresholds`` (below ``pass_below`` passes, at or above
``reject_at`` rejects, in between goes to review; ``pass_below == reject_at`` is two-way):

1. ``defect``: P(defect), the summed probability of the defect classes (``defect_score``), on
   ``thresholds.defect``. For an anomaly-only model (a good-only model with no defect images, whose
   "probabilities" are the anomaly score and its complement) this is the anomaly score, named so.
2. one per entry of ``thresholds.per_class``: a defect class's own probability on its own band.
3. ``anomaly``: the good-only anomaly score (``anomaly_score`` output) on ``thresholds.anomaly``, when the
   card sets that band.

Each signal can only make the decision stricter: the decision is the strictest any signal gives, and the
signal that decided is the first (in the order above) to give it. So a per-class band catches one defect
type at a lower probability without loosening anything, and a part the classifier passes but the anomaly
score flags goes to review as an **unknown defect**: it looks like no defect the classifier learned, and
like no good part either.

When every class is a defect class (a defect-type classifier such as NEU steel, which has no "ok" class),
P(defect) = 1 for every frame and every frame is rejected. That is correct: such a model says *which*
defect a part has, not *whether* it has one; its label is the useful output.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np

from andon.inspect.card import ThresholdBand, Thresholds
from andon.inspect.outputs import ModelOutputs

Decision = Literal["pass", "review", "reject"]
DECISIONS: tuple[Decision, ...] = ("pass", "review", "reject")
#: pass < review < reject
DECISION_RANK: dict[str, int] = {d: i for i, d in enumerate(DECISIONS)}
#: the reason code of a part the classifier passes and the anomaly score flags
UNKNOWN_DEFECT = "unknown defect"


def defect_score(probs: np.ndarray, defect_indices: Sequence[int]) -> np.ndarray:
    """P(defect) per row: the sum of the defect classes' probabilities."""
    return np.asarray(probs, dtype=np.float64)[:, list(defect_indices)].sum(axis=1)


def worst_decision(decisions: Iterable[str]) -> Decision:
    """The strictest of several decisions (a part seen by several cameras); pass for none."""
    return max(decisions, key=DECISION_RANK.__getitem__, default="pass")  # type: ignore[return-value]


def band_ranks(score: np.ndarray, band: ThresholdBand) -> np.ndarray:
    """0 (pass), 1 (review) or 2 (reject) per score, for one band."""
    score = np.asarray(score, dtype=np.float64)
    return np.where(score >= band.reject_at, 2, np.where(score < band.pass_below, 0, 1)).astype(np.int64)


@dataclass(frozen=True)
class Signal:
    """One thing the decision looks at: a score per frame and its band."""

    #: "defect", a defect class's name, or "anomaly"
    name: str
    #: how reasons name the score: "P(defect)", "P(crack)", "anomaly score"
    label: str
    band: ThresholdBand
    kind: Literal["defect", "class", "anomaly"]

    def reason(self, score: float, rank: int) -> str:
        band = self.band
        if rank == 2:
            text = f"{self.label} {score:.2f} >= reject_at {band.reject_at:.2f}"
        elif rank == 0:
            text = f"{self.label} {score:.2f} < pass_below {band.pass_below:.2f}"
        else:
            text = f"{self.label} {score:.2f} in review band [{band.pass_below:.2f}, {band.reject_at:.2f})"
        if self.kind == "class":
            text += f" (per-class band for {self.name})"
        return text


@dataclass(frozen=True)
class Verdicts:
    """The decisions on one batch: per frame, the decision, the signal that decided it and every score."""

    signals: tuple[Signal, ...]
    #: signal name -> score per frame
    scores: Mapping[str, np.ndarray]
    #: signal name -> 0/1/2 per frame
    ranks: Mapping[str, np.ndarray]
    #: 0/1/2 per frame: the strictest over the signals
    rank: np.ndarray
    #: the name of the signal that decided, per frame ("defect" for a pass)
    decided_by: np.ndarray

    @property
    def decisions(self) -> np.ndarray:
        """ "pass" / "review" / "reject" per frame."""
        return np.asarray(DECISIONS, dtype="<U6")[self.rank] if len(self.rank) else np.zeros(0, dtype="<U6")

    def __len__(self) -> int:
        return len(self.rank)

    def decision(self, i: int) -> Decision:
        return DECISIONS[int(self.rank[i])]

    def reason(self, i: int) -> str:
        """The reason code of frame ``i``: "pass", the deciding signal's name, or ``UNKNOWN_DEFECT``."""
        if self.rank[i] == 0:
            return "pass"
        by = str(self.decided_by[i])
        if by == "anomaly" and "defect" in self.ranks and self.ranks["defect"][i] == 0:
            return UNKNOWN_DEFECT
        return by

    def reasons(self, i: int) -> list[str]:
        """In words an operator can read: the first signal's comparison, then each signal that made it stricter,
        e.g. ``["P(defect) 0.03 < pass_below 0.20", "anomaly score 0.71 in review band [0.50, 1.00):
        unknown defect"]``."""
        first = self.signals[0]
        out = [first.reason(float(self.scores[first.name][i]), int(self.ranks[first.name][i]))]
        running = int(self.ranks[first.name][i])
        for signal in self.signals[1:]:
            rank = int(self.ranks[signal.name][i])
            if rank > running:
                running = rank
                text = signal.reason(float(self.scores[signal.name][i]), rank)
                if signal.kind == "anomaly" and self.reason(i) == UNKNOWN_DEFECT:
                    text += f": unlike the good parts, and unlike any defect the classifier knows ({UNKNOWN_DEFECT})"
                out.append(text)
        return out

    def counts(self) -> dict[str, int]:
        """Frames per decision."""
        return {d: int((self.rank == r).sum()) for r, d in enumerate(DECISIONS)}

    def flagged_by(self) -> dict[str, int]:
        """Frames sent to review or rejected, per deciding signal (the dashboard's "flagged by")."""
        flagged = self.rank > 0
        return {s.name: int((flagged & (self.decided_by == s.name)).sum()) for s in self.signals}


class DecisionPolicy:
    """The card's thresholds as signals; ``decide(outputs)`` for a batch. Immutable, cheap to build."""

    def __init__(
        self,
        thresholds: Thresholds,
        classes: Sequence[str] | None = None,
        defect_classes: Sequence[str] | None = None,
        *,
        anomaly_only: bool = False,
    ) -> None:
        self.thresholds = thresholds
        self.classes = None if classes is None else list(classes)
        self.defect_indices = (
            None if self.classes is None or defect_classes is None else [self.classes.index(c) for c in defect_classes]
        )
        self.anomaly_only = anomaly_only
        signals = [
            Signal("anomaly", "anomaly score", thresholds.defect, "anomaly")
            if anomaly_only
            else Signal("defect", "P(defect)", thresholds.defect, "defect")
        ]
        signals += [Signal(name, f"P({name})", band, "class") for name, band in thresholds.per_class.items()]
        if thresholds.anomaly is not None and not anomaly_only:
            signals.append(Signal("anomaly", "anomaly score", thresholds.anomaly, "anomaly"))
        self.signals: tuple[Signal, ...] = tuple(signals)

    @classmethod
    def from_card(cls, card, thresholds: Thresholds | None = None) -> DecisionPolicy:  # noqa: ANN001 (ModelCard)
        """The policy of ``card`` (with other ``thresholds``, e.g. calibrated ones, when given)."""
        return cls(thresholds or card.thresholds, card.classes, card.defect_classes, anomaly_only=card.anomaly_only)

    def signal_scores(self, outputs: ModelOutputs | np.ndarray) -> dict[str, np.ndarray]:
        """Each signal's score per frame, from a batch of outputs (or bare class probabilities)."""
        if not isinstance(outputs, ModelOutputs):
            outputs = ModelOutputs.of(outputs)
        if self.classes is None or self.defect_indices is None:
            raise ValueError("this policy was built from thresholds alone; give signal scores to decide_scores")
        probs = np.asarray(outputs.probs, dtype=np.float64)
        if probs.ndim != 2 or probs.shape[1] != len(self.classes):
            raise ValueError(f"probabilities of shape {probs.shape} do not fit the {len(self.classes)} classes")
        first = self.signals[0].name
        scores = {first: defect_score(probs, self.defect_indices) if len(probs) else np.zeros(0)}
        for signal in self.signals[1:]:
            if signal.kind == "class":
                scores[signal.name] = probs[:, self.classes.index(signal.name)]
            else:
                anomaly = outputs.get("anomaly_score")
                if anomaly is None:
                    raise ValueError("the thresholds have an anomaly band but the outputs have no anomaly_score")
                scores[signal.name] = np.asarray(anomaly, dtype=np.float64).reshape(-1)
        return scores

    def decide(self, outputs: ModelOutputs | np.ndarray) -> Verdicts:
        """Decisions for a batch of outputs (or an N x K probability matrix)."""
        return self.decide_scores(self.signal_scores(outputs))

    def decide_scores(self, scores: Mapping[str, np.ndarray]) -> Verdicts:
        """Decisions from each signal's scores directly (calibration, which works on scores)."""
        missing = [s.name for s in self.signals if s.name not in scores]
        if missing:
            raise ValueError(f"no scores for the signal(s) {missing}")
        arrays = {s.name: np.asarray(scores[s.name], dtype=np.float64).reshape(-1) for s in self.signals}
        ranks = {s.name: band_ranks(arrays[s.name], s.band) for s in self.signals}
        stacked = np.stack([ranks[s.name] for s in self.signals])  # S x N
        rank = stacked.max(axis=0) if stacked.shape[1] else np.zeros(0, dtype=np.int64)
        names = np.asarray([s.name for s in self.signals])
        decided_by = names[stacked.argmax(axis=0)] if stacked.shape[1] else np.zeros(0, dtype=names.dtype)
        return Verdicts(self.signals, arrays, ranks, rank, decided_by)
