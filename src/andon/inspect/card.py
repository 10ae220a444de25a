"""The model card: everything needed to run a model, stored inside the exported ONNX file.

The card travels in the ONNX ``metadata_props`` under the key ``andon.card`` as JSON, so that copying the
``.onnx`` file is enough to deploy it. ``ModelCard`` is the only definition of that schema; training writes
it, export embeds it, the inspector and the service read it.
"""

from __future__ import annotations

import datetime as _dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from andon import __version__
from andon.errors import ModelCardError
from andon.inspect.outputs import check_output_names

CARD_METADATA_KEY = "andon.card"
CARD_SCHEMA_VERSION = 1

#: class names that mean "good part" when defect classes are not declared
GOOD_CLASS_NAMES = frozenset({"ok", "good", "pass", "normal", "free"})

ResizePolicy = Literal["stretch", "letterbox", "center_crop"]
ColorMode = Literal["rgb", "gray"]
Interpolation = Literal["area", "linear", "cubic"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PreprocessSpec(_Strict):
    """How a frame becomes the model's input tensor (float32, NCHW, RGB channel order)."""

    input_size: tuple[int, int] = Field(description="(height, width) of the model input, in pixels")
    color_mode: ColorMode = Field(
        "rgb",
        description="rgb: colour frames keep their colour; gray: every frame is converted to grey and the grey "
        "value is given to all three input channels (models trained on grey data)",
    )
    resize: ResizePolicy = Field(
        "stretch",
        description="stretch: resize to input_size ignoring aspect; letterbox: keep aspect, pad with pad_value; "
        "center_crop: resize the shorter side to fit, crop the centre",
    )
    interpolation: Interpolation = "area"
    pad_value: int = Field(0, ge=0, le=255)
    mean: tuple[float, float, float] = (0.485, 0.456, 0.406)
    std: tuple[float, float, float] = (0.229, 0.224, 0.225)

    @field_validator("input_size")
    @classmethod
    def _positive_size(cls, v: tuple[int, int]) -> tuple[int, int]:
        if v[0] < 16 or v[1] < 16 or v[0] > 4096 or v[1] > 4096:
            raise ValueError(f"input_size {v} must be between 16 and 4096 pixels on each side")
        return v

    @field_validator("std")
    @classmethod
    def _positive_std(cls, v: tuple[float, float, float]) -> tuple[float, float, float]:
        if any(s <= 0 for s in v):
            raise ValueError(f"std {v} must be positive")
        return v


class ThresholdBand(_Strict):
    """A score below ``pass_below`` passes, at or above ``reject_at`` rejects, in between goes to review.

    With ``pass_below == reject_at`` there is no review band (a two-way decision).
    """

    pass_below: float = Field(0.5, ge=0.0, le=1.0)
    reject_at: float = Field(0.5, ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _ordered(self) -> ThresholdBand:
        if self.pass_below > self.reject_at:
            raise ValueError(f"pass_below ({self.pass_below}) must not exceed reject_at ({self.reject_at})")
        return self


class Thresholds(_Strict):
    """Decision thresholds: one band on the defect probability, optional bands per defect class, and an
    optional band on the good-only anomaly score (``andon.inspect.decision`` says how they combine)."""

    defect: ThresholdBand = ThresholdBand()
    per_class: dict[str, ThresholdBand] = Field(default_factory=dict)
    #: band on the anomaly score (models with an ``anomaly_score`` output); None: the score does not decide
    anomaly: ThresholdBand | None = None
    #: how the thresholds were set ("default", "manual", or a calibration description)
    source: str = "default"


class AnomalySpec(_Strict):
    """The good-only anomaly detector inside the model file (``andon.models.anomaly``)."""

    method: str = "patchcore"
    #: the pretrained trunk the patch features come from (an andon backbone), its weights, and the indices of
    #: the trunk blocks whose features are used
    trunk: str
    weights: str = "imagenet"
    layers: list[int] = Field(default_factory=list)
    #: patches in the memory bank (coreset of the good training images' patches) and their dimension
    bank_size: int = Field(ge=1)
    dim: int = Field(ge=1)
    #: Gaussian blur of the distance map before the image score is taken (0: none)
    blur_sigma: float = Field(0.0, ge=0.0)
    #: good training images the bank was built from
    n_good: int = Field(0, ge=0)
    #: raw nearest-patch distance that maps to score 0.5 (score = d / (d + scale))
    scale: float = Field(gt=0.0)
    #: True: a model made from good parts only; its probabilities are (P(anomaly), P(ok)) from the anomaly
    #: score, and the defect band decides on that score
    only: bool = False
    #: how the anomaly band was set (the false-alarm target, the good images it was verified on)
    calibration: str = ""


class ModelCard(_Strict):
    """Everything the line needs to run a model and trust its verdicts."""

    schema_version: int = CARD_SCHEMA_VERSION
    name: str = "andon-model"
    version: str = "0"
    classes: list[str]
    defect_classes: list[str]
    preprocess: PreprocessSpec
    thresholds: Thresholds = Thresholds()
    backbone: str = "unknown"
    weights: str = "none"
    data_fingerprint: str = ""
    metrics: dict[str, float] = Field(default_factory=dict)
    #: numeric format of the exported graph: "fp32", or how it was quantized ("int8 ...", set by export)
    quantization: str = "fp32"
    andon_version: str = __version__
    created: str = Field(default_factory=lambda: _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    #: names of the ONNX graph's input and outputs
    input_name: str = "image"
    output_names: dict[str, str] = Field(default_factory=lambda: {"probabilities": "probs", "heatmap": "heatmap"})
    #: sha256 of the ONNX file with this card removed; set by export, checked by the inspector
    content_hash: str = ""
    #: classes the network learned as several source classes and whose probabilities it adds up, e.g.
    #: ``{"defect": ["blowhole", "crack"]}`` after a remap that merged defect types (``data.keep_source_classes``)
    trained_as: dict[str, list[str]] = Field(default_factory=dict)
    #: why the thresholds are weak: too many good parts rejected or too many parts sent to review, judged on
    #: the card's validation rates when training wrote it; ``andon export`` refuses such a card unless told to
    threshold_warnings: list[str] = Field(default_factory=list)
    #: the good-only anomaly detector in the graph, if any
    anomaly: AnomalySpec | None = None

    @field_validator("classes")
    @classmethod
    def _classes_unique(cls, v: list[str]) -> list[str]:
        if len(v) < 2:
            raise ValueError(f"a classifier needs at least 2 classes, got {v}")
        if len(set(v)) != len(v):
            raise ValueError(f"class names must be unique, got {v}")
        return v

    @model_validator(mode="after")
    def _defects_known(self) -> ModelCard:
        unknown = [c for c in self.defect_classes if c not in self.classes]
        if unknown:
            raise ValueError(f"defect classes {unknown} are not among the classes {self.classes}")
        if not self.defect_classes:
            raise ValueError(f"at least one class must be a defect class; classes are {self.classes}")
        bad = [c for c in self.thresholds.per_class if c not in self.defect_classes]
        if bad:
            raise ValueError(f"per-class thresholds for {bad}, which are not defect classes {self.defect_classes}")
        head_layout(self.classes, self.trained_as)
        check_output_names(self.output_names)
        if self.thresholds.anomaly is not None and "anomaly_score" not in self.output_names:
            raise ValueError("thresholds.anomaly is set but the model has no anomaly_score output")
        if self.anomaly is not None and self.anomaly.only and self.thresholds.anomaly is not None:
            raise ValueError(
                "an anomaly-only model decides on thresholds.defect (its P(anomaly)); thresholds.anomaly must be unset"
            )
        return self

    @property
    def anomaly_only(self) -> bool:
        """A model made from good parts only (``andon train --anomaly-only``)."""
        return self.anomaly is not None and self.anomaly.only

    @property
    def good_classes(self) -> list[str]:
        return [c for c in self.classes if c not in self.defect_classes]

    @property
    def defect_indices(self) -> list[int]:
        return [self.classes.index(c) for c in self.defect_classes]

    @property
    def training_classes(self) -> list[str]:
        """The classes the network's head was trained on (``classes`` unless ``trained_as`` merges some)."""
        return head_layout(self.classes, self.trained_as)[0]

    @property
    def head_groups(self) -> list[int]:
        """For each training class, the index of the class in ``classes`` it adds its probability to."""
        return head_layout(self.classes, self.trained_as)[1]

    def to_json(self) -> str:
        # fields a card does not use are left out, so andon versions from before them still read the file
        exclude: dict = {}
        if not self.trained_as:
            exclude["trained_as"] = True
        if not self.threshold_warnings:
            exclude["threshold_warnings"] = True
        if self.anomaly is None:
            exclude["anomaly"] = True
        if self.thresholds.anomaly is None:
            exclude["thresholds"] = {"anomaly"}
        return self.model_dump_json(exclude=exclude or None)

    @classmethod
    def from_json(cls, text: str) -> ModelCard:
        try:
            return cls.model_validate_json(text)
        except ValidationError as exc:
            raise ModelCardError(f"invalid model card: {_first_error(exc)}") from None

    def with_thresholds(self, thresholds: Thresholds | dict) -> ModelCard:
        """A copy deciding with ``thresholds``; the metrics measured at the old ones (``THRESHOLD_METRICS``)
        are dropped rather than left to describe a decision the card no longer makes, and so are the
        ``threshold_warnings`` about them."""
        kept = {k: v for k, v in self.metrics.items() if not k.endswith(THRESHOLD_METRICS)}
        return self.replace(thresholds=thresholds, metrics=kept, threshold_warnings=[])

    def replace(self, **changes: object) -> ModelCard:
        """A copy with ``changes`` applied and validated again."""
        data = self.model_dump()
        data.update(changes)
        try:
            return ModelCard.model_validate(data)
        except ValidationError as exc:
            raise ModelCardError(f"invalid model card: {_first_error(exc)}") from None


#: metrics (``{split}_<name>``) that hold at the card's thresholds only
THRESHOLD_METRICS = ("escape_rate", "false_reject_rate", "review_rate")


def head_layout(classes: list[str], trained_as: dict[str, list[str]]) -> tuple[list[str], list[int]]:
    """The training classes in head order and the class each one belongs to.

    Each class in ``classes`` order contributes its sources (``trained_as[c]``, in the order given) or itself:
    ``head_layout(["defect", "ok"], {"defect": ["crack", "pit"]}) == (["crack", "pit", "ok"], [0, 0, 1])``.
    """
    unknown = [c for c in trained_as if c not in classes]
    if unknown:
        raise ValueError(f"trained_as names {unknown}, which are not among the classes {classes}")
    short = [c for c, sources in trained_as.items() if len(sources) < 2]
    if short:
        raise ValueError(f"trained_as must list at least 2 source classes for each merged class; {short} have fewer")
    names: list[str] = []
    groups: list[int] = []
    for index, name in enumerate(classes):
        sources = trained_as.get(name, [name])
        names.extend(sources)
        groups.extend([index] * len(sources))
    if len(set(names)) != len(names):
        raise ValueError(f"the training classes {names} must be unique")
    return names, groups


def describe_trained_as(trained_as: dict[str, list[str]]) -> str:
    """``"defect = crack + pit"`` for reports and ``andon info``; empty when nothing was merged."""
    return "; ".join(f"{c} = {' + '.join(sources)}" for c, sources in trained_as.items())


def default_defect_classes(classes: list[str], declared: list[str] | None = None) -> list[str]:
    """The defect classes: ``declared`` if given (checked), else every class not named like a good part."""
    if declared:
        unknown = [c for c in declared if c not in classes]
        if unknown:
            raise ModelCardError(f"defect classes {unknown} are not among the classes {classes}")
        return list(declared)
    defects = [c for c in classes if c.lower() not in GOOD_CLASS_NAMES]
    if len(defects) == len(classes):
        # A pure defect-type classifier (e.g. NEU): no good class, every class is a defect type.
        return list(classes)
    return defects


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "card"
    return f"{where}: {err.get('msg', 'invalid')}"
