"""The model's outputs, declared once: what each one is called, its shape, what it means.

Every part of andon that touches a model output reads this table instead of naming outputs itself:
export (graph names, dynamic axes, the parity check), the card (``output_names`` may only name outputs
declared here), the inspector (signature check at load, warm-up, which outputs a call runs), the inspection
result, the stored record and offline evaluation (``ModelOutputs``).

Adding an output is one entry here (``OutputSpec``), the graph that computes it (``andon.models.graph``) and
whatever reads it (a decision signal in ``andon.inspect.decision``, say). Files exported before an output
existed simply lack it in their card's ``output_names`` and behave as before.

Shapes, with N the dynamic batch and K the card's classes:

- ``probabilities`` [N, K]: softmax over the card's classes. Required; everything else is optional.
- ``heatmap`` [N, h, w] in [0, 1]: where the classifier sees defect evidence (class activation map).
- ``anomaly_score`` [N] in [0, 1): how unlike the good training parts the image is (good-only model; 0.5 is
  as unusual as the good part at the calibrated false-alarm rate, see ``andon.models.anomaly``).
- ``anomaly_map`` [N, h, w] in [0, 1): the same per location (at feature resolution).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from andon.errors import ModelCardError


@dataclass(frozen=True)
class OutputSpec:
    """One model output."""

    #: the key in the card's ``output_names`` and in ``ModelOutputs``
    key: str
    #: the graph's output name when andon exports it
    graph_name: str
    #: dimensions, batch first ("N"), "K" for the card's classes, "h"/"w" for a map
    dims: tuple[str, ...]
    meaning: str
    #: a map for display: computed only when asked for (it costs a copy per frame), clipped to [0, 1]
    is_map: bool = False
    #: torch vs onnxruntime tolerance at export (maps are shown as 8-bit colour: one level)
    tolerance: float = 1e-4

    @property
    def rank(self) -> int:
        return len(self.dims)


PROBABILITIES = OutputSpec("probabilities", "probs", ("N", "K"), "softmax over the card's classes")
HEATMAP = OutputSpec(
    "heatmap",
    "heatmap",
    ("N", "h", "w"),
    "where the classifier sees defect evidence: the local P(defect), class activation map",
    is_map=True,
    tolerance=1 / 255,
)
ANOMALY_SCORE = OutputSpec(
    "anomaly_score",
    "anomaly_score",
    ("N",),
    "how unlike the good training parts the image is, in [0, 1); 0.5 = the calibrated false-alarm limit",
)
ANOMALY_MAP = OutputSpec(
    "anomaly_map",
    "anomaly_map",
    ("N", "h", "w"),
    "the anomaly score per location (nearest good patch), in [0, 1)",
    is_map=True,
    tolerance=1 / 255,
)

#: every output andon knows, in graph order
OUTPUTS: tuple[OutputSpec, ...] = (PROBABILITIES, HEATMAP, ANOMALY_SCORE, ANOMALY_MAP)
_BY_KEY = {o.key: o for o in OUTPUTS}
REQUIRED = ("probabilities",)


def output_spec(key: str) -> OutputSpec:
    try:
        return _BY_KEY[key]
    except KeyError:
        raise ModelCardError(
            f"unknown model output {key!r}; andon knows {sorted(_BY_KEY)} (a file from a newer andon? upgrade andon)"
        ) from None


def check_output_names(names: Mapping[str, str]) -> None:
    """A card's ``output_names``: known keys, the required ones present, distinct graph names."""
    for key in names:
        output_spec(key)
    missing = [k for k in REQUIRED if k not in names]
    if missing:
        raise ValueError(f"output_names must name the {missing} output(s); got {dict(names)}")
    if len(set(names.values())) != len(names):
        raise ValueError(f"output_names must give each output its own graph name; got {dict(names)}")


def exported_names(keys: Iterable[str]) -> dict[str, str]:
    """``output_names`` for a graph andon exports with these outputs, in the declared order."""
    wanted = set(keys)
    return {o.key: o.graph_name for o in OUTPUTS if o.key in wanted}


@dataclass(frozen=True)
class ModelOutputs:
    """One batch of model outputs by key (``probabilities`` always; others when the model has and ran them).

    Maps are clipped to [0, 1] and everything is float32, whatever the runtime returned.
    """

    values: Mapping[str, np.ndarray]

    def __post_init__(self) -> None:
        if "probabilities" not in self.values:
            raise ValueError("model outputs need 'probabilities'")

    @classmethod
    def from_run(cls, keys: Iterable[str], arrays: Iterable[np.ndarray]) -> ModelOutputs:
        out = {}
        for key, array in zip(keys, arrays):
            array = np.asarray(array, dtype=np.float32)
            out[key] = np.clip(array, 0.0, 1.0) if output_spec(key).is_map else array
        return cls(out)

    @classmethod
    def of(cls, probs: np.ndarray, **others: np.ndarray | None) -> ModelOutputs:
        """From arrays already in hand (evaluation of saved predictions, tests)."""
        values = {"probabilities": np.asarray(probs)}
        values.update({k: np.asarray(v) for k, v in others.items() if v is not None})
        for key in values:
            output_spec(key)
        return cls(values)

    @classmethod
    def from_predictions(cls, pred: Mapping[str, np.ndarray]) -> ModelOutputs:
        """From a training run's saved predictions (``probs``, and ``anomaly_score`` when it has one)."""
        return cls.of(pred["probs"], anomaly_score=pred.get("anomaly_score"))

    @property
    def probs(self) -> np.ndarray:
        return self.values["probabilities"]

    def get(self, key: str) -> np.ndarray | None:
        return self.values.get(key)

    def __len__(self) -> int:
        return len(self.probs)

    def take(self, index: slice | np.ndarray | list[int]) -> ModelOutputs:
        """The outputs of some frames (a slice or indices)."""
        return ModelOutputs({k: v[index] for k, v in self.values.items()})
