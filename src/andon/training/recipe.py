"""The training recipe: typed sections loaded from YAML, with command-line overrides.

Defaults live in one place, ``default.yaml`` beside this module (commented, so it doubles as the reference).
A user recipe file is merged over it, then ``section.key=value`` overrides over that, and the result is
validated by pydantic models that forbid unknown keys. Every problem becomes one ``ConfigError`` line that
names the bad key or value and what is allowed.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from andon.errors import ConfigError
from andon.inspect.card import ColorMode, Interpolation, ResizePolicy

#: what early stopping and the best epoch watch; all but val_loss are better when higher; auto: see
#: ``andon.training.stopping.resolve_monitor``
Monitor = Literal["auto", "accuracy", "macro_recall", "macro_f1", "defect_recall", "roc_auc", "pr_auc", "val_loss"]

_RUN_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class _Section(BaseModel):
    # Every field is required: default.yaml gives the defaults, so they are written down exactly once.
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataSection(_Section):
    path: Path | None
    remap: dict[str, str]
    keep_source_classes: bool
    defect_classes: list[str] | None
    val_fraction: float = Field(ge=0.0, lt=1.0)
    test_fraction: float = Field(ge=0.0, lt=1.0)
    group_by: str | None
    split_seed: int

    @model_validator(mode="after")
    def _fractions(self) -> DataSection:
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ValueError(
                f"val_fraction + test_fraction = {self.val_fraction + self.test_fraction:g} "
                "leaves nothing to train on; keep it below 1"
            )
        return self


class ModelSection(_Section):
    name: str
    weights: str
    input_size: tuple[int, int]
    color_mode: ColorMode
    resize: ResizePolicy
    interpolation: Interpolation
    mean: tuple[float, float, float] | None
    std: tuple[float, float, float] | None
    dropout: float = Field(ge=0.0, lt=1.0)

    @field_validator("input_size", mode="before")
    @classmethod
    def _square(cls, v: Any) -> Any:
        return (v, v) if isinstance(v, int) else v

    @field_validator("input_size")
    @classmethod
    def _size_range(cls, v: tuple[int, int]) -> tuple[int, int]:
        if min(v) < 32 or max(v) > 2048:
            raise ValueError(f"input_size {list(v)} must be between 32 and 2048 pixels per side")
        return v

    @model_validator(mode="after")
    def _mean_std_together(self) -> ModelSection:
        if (self.mean is None) != (self.std is None):
            raise ValueError("give both mean and std, or neither (then the weights' own normalisation is used)")
        if self.std is not None and min(self.std) <= 0:
            raise ValueError(f"std {list(self.std)} must be positive")
        return self


class AffineAug(_Section):
    p: float = Field(ge=0.0, le=1.0)
    scale: float = Field(ge=0.0, lt=1.0)
    translate: float = Field(ge=0.0, le=0.5)
    rotate: float = Field(ge=0.0, le=180.0)


class BrightnessContrastAug(_Section):
    p: float = Field(ge=0.0, le=1.0)
    brightness: float = Field(ge=0.0, le=1.0)
    contrast: float = Field(ge=0.0, le=1.0)


class BlurAug(_Section):
    p: float = Field(ge=0.0, le=1.0)
    max_kernel: int = Field(ge=3, le=31)

    @field_validator("max_kernel")
    @classmethod
    def _odd(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"max_kernel {v} must be odd (3, 5, 7, ...)")
        return v


class NoiseAug(_Section):
    p: float = Field(ge=0.0, le=1.0)
    std: float = Field(ge=0.0, le=0.5)


class AugmentSection(_Section):
    hflip: float = Field(ge=0.0, le=1.0)
    vflip: float = Field(ge=0.0, le=1.0)
    rot90: float = Field(ge=0.0, le=1.0)
    affine: AffineAug
    brightness_contrast: BrightnessContrastAug
    blur: BlurAug
    noise: NoiseAug


class TrainSection(_Section):
    epochs: int = Field(ge=1, le=10_000)
    batch_size: int = Field(ge=1, le=4096)
    lr: float = Field(gt=0.0, le=1.0)
    head_lr: float | None = Field(gt=0.0, le=1.0)
    weight_decay: float = Field(ge=0.0, le=1.0)
    warmup_epochs: float = Field(ge=0.0)
    freeze_epochs: int = Field(ge=0)
    label_smoothing: float = Field(ge=0.0, lt=1.0)
    balance: Literal["sampler", "loss", "none"]
    prior_correction: bool
    patience: int = Field(ge=0)
    min_epochs: int | None = Field(ge=0)
    min_delta: float = Field(ge=0.0, lt=1.0)
    monitor: Monitor
    workers: int = Field(ge=0, le=64)
    seed: int = Field(ge=0)
    device: Literal["auto", "cpu", "cuda"]
    threads: int | None = Field(ge=1, le=256)
    precision: Literal["auto", "fp32", "bf16"]
    batchnorm: Literal["auto", "frozen", "train"]
    nproc: int = Field(ge=1, le=1024)
    backend: Literal["auto", "gloo", "nccl"]


class DecisionSection(_Section):
    """Pass / review / reject thresholds calibrated on the validation split at the end of training."""

    target_escape: float | None = Field(gt=0.0, lt=0.5)
    max_false_reject: float | None = Field(gt=0.0, lt=1.0)
    #: review budget: a band sending more of the validation parts to review is weak
    max_review: float | None = Field(ge=0.0, le=1.0)
    #: false-reject limit: a card rejecting more of the validation good parts is weak
    max_reject_good: float | None = Field(ge=0.0, le=1.0)

    @model_validator(mode="after")
    def _cap_within_limit(self) -> DecisionSection:
        if (
            self.max_false_reject is not None
            and self.max_reject_good is not None
            and self.max_false_reject > self.max_reject_good
        ):
            raise ValueError(
                f"max_false_reject {self.max_false_reject:g} is above max_reject_good "
                f"{self.max_reject_good:g}, so every calibrated model would count as weak; raise "
                "max_reject_good too (or set it to null)"
            )
        return self


class AnomalySection(_Section):
    """The good-only anomaly detector fitted after the classifier (``andon.training.anomaly``)."""

    enabled: bool
    only: bool
    trunk: str | None
    weights: str | None
    layers: list[int] | None
    dim: int = Field(ge=1, le=4096)
    bank_size: int = Field(ge=1, le=1_000_000)
    blur_sigma: float = Field(ge=0.0, le=10.0)
    false_alarm: float = Field(gt=0.0, lt=0.5)

    @model_validator(mode="after")
    def _only_needs_enabled(self) -> AnomalySection:
        if self.only and not self.enabled:
            raise ValueError("anomaly.only makes a model from the anomaly detector alone; it needs anomaly.enabled")
        return self


class OutputSection(_Section):
    runs_dir: Path
    name: str | None

    @field_validator("name")
    @classmethod
    def _safe_name(cls, v: str | None) -> str | None:
        if v is not None and not _RUN_NAME.match(v):
            raise ValueError(f"run name {v!r} must be letters, digits, '.', '_' or '-' (a folder name, no slashes)")
        return v


class Recipe(_Section):
    data: DataSection
    model: ModelSection
    augment: AugmentSection
    train: TrainSection
    decision: DecisionSection
    anomaly: AnomalySection
    output: OutputSection

    @model_validator(mode="after")
    def _rot90_square(self) -> Recipe:
        h, w = self.model.input_size
        if self.augment.rot90 > 0 and h != w:
            raise ValueError(
                f"augment.rot90 turns a {h}x{w} input into {w}x{h}; set augment.rot90=0 "
                "for non-square inputs (flips still apply)"
            )
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML-ready values (paths as strings, tuples as lists)."""
        return _plain(self.model_dump(mode="json"))

    def to_yaml(self) -> str:
        return yaml.safe_dump(self.to_dict(), sort_keys=False)

    def with_overrides(self, overrides: list[str]) -> Recipe:
        """A copy with ``section.key=value`` overrides applied and validated."""
        merged = self.to_dict()
        for item in overrides:
            _apply_override(merged, item)
        return _validate(merged, user={}, source="--set")


def default_dict() -> dict[str, Any]:
    """The defaults from ``default.yaml`` (a fresh copy)."""
    text = resources.files("andon.training").joinpath("default.yaml").read_text(encoding="utf-8")
    return _parse_yaml(text, "the built-in default recipe")


def load_recipe(
    path: str | Path | None = None, overrides: list[str] | None = None, values: Mapping[str, Any] | None = None
) -> Recipe:
    """Defaults, then the recipe file at ``path`` (if any), then ``values`` ({"section.key": typed value},
    what command-line flags give), then ``overrides`` ("section.key=value" strings, parsed as YAML)."""
    merged = default_dict()
    user: dict[str, Any] = {}
    source = "--set"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist")
        user = _parse_yaml(path.read_text(encoding="utf-8"), f"recipe {path}")
        _merge(merged, user)
        source = f"recipe {path}"
    for key, value in (values or {}).items():
        set_key(merged, key, value)
    for item in overrides or []:
        _apply_override(merged, item)
    return _validate(merged, user=user, source=source)


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a recipe dict (e.g. a run's saved ``recipe.yaml``) over the defaults, so that a run saved
    before a key existed still loads, with that key's default."""
    merged = default_dict()
    _merge(merged, data)
    return _validate(merged, user=data, source=source)


def _parse_yaml(text: str, what: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{what} is not valid YAML{where}: {problem}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(
            f"{what} must be a mapping of sections (data, model, augment, train, decision, output), "
            f"got a {type(data).__name__}"
        )
    return data


def _merge(base: dict[str, Any], update: dict[str, Any]) -> None:
    """Recursive update; a mapping replaces a mapping key by key, anything else replaces the value."""
    for key, value in update.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict) and key != "remap":
            _merge(base[key], value)
        else:
            base[key] = copy.deepcopy(value)


def _apply_override(merged: dict[str, Any], item: str) -> None:
    key, sep, raw = item.partition("=")
    key = key.strip()
    if not sep or not key or any(not part for part in key.split(".")):
        raise ConfigError(f"override {item!r} is not KEY=VALUE; write e.g. train.lr=0.0005 or model.input_size=[96,96]")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw  # a plain string that happens to contain YAML syntax, such as "a: b"
    set_key(merged, key, value)


def set_key(merged: dict[str, Any], key: str, value: Any) -> None:
    """Set ``section.key`` (or ``data.remap.<class>``) in a recipe dict; a missing section is an error."""
    parts = key.split(".")
    node = merged
    for depth, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None and depth >= 1:  # e.g. data.remap.<class>=<new>
            child = node[part] = {}
        if child is None:
            raise ConfigError(_unknown_key_message(".".join(parts[: depth + 1]), "--set", merged))
        if not isinstance(child, dict):
            raise ConfigError(f"'{'.'.join(parts[: depth + 1])}' is a value, not a section: cannot set '{key}'")
        node = child
    node[parts[-1]] = value


def _validate(merged: dict[str, Any], *, user: dict[str, Any], source: str) -> Recipe:
    try:
        return Recipe.model_validate(merged)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        where = source if _has_key(user, err["loc"]) or source == "--set" else "--set"
        if err["type"] == "extra_forbidden":
            raise ConfigError(_unknown_key_message(loc, where, merged)) from None
        shown = _get(merged, err["loc"])
        msg = err["msg"].removeprefix("Value error, ")
        target = f"'{loc}'" if loc else "the recipe"
        value = f" = {shown!r}" if shown is not _MISSING and not isinstance(shown, dict) else ""
        raise ConfigError(f"bad value for {target}{value} in {where}: {msg}") from None


def _unknown_key_message(loc: str, where: str, merged: dict[str, Any]) -> str:
    parent = loc.rpartition(".")[0]
    allowed = _allowed_keys(parent)
    scope = f"in '{parent}'" if parent else "at the top level"
    close = [k for k in allowed if _similar(k, loc.rpartition(".")[2])]
    hint = f" (did you mean '{close[0]}'?)" if close else ""
    return f"unknown recipe key '{loc}' in {where}{hint}; allowed keys {scope}: {', '.join(allowed)}"


def _allowed_keys(parent: str) -> list[str]:
    model: type[BaseModel] = Recipe
    for part in [p for p in parent.split(".") if p]:
        annotation = model.model_fields[part].annotation
        if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
            return []
        model = annotation
    return list(model.model_fields)


def _similar(a: str, b: str) -> bool:
    import difflib

    return difflib.SequenceMatcher(None, a, b).ratio() >= 0.75


_MISSING = object()


def _get(data: Any, loc: tuple) -> Any:
    for part in loc:
        if isinstance(data, dict) and part in data:
            data = data[part]
        elif isinstance(data, (list, tuple)) and isinstance(part, int) and part < len(data):
            data = data[part]
        else:
            return _MISSING
    return data


def _has_key(data: dict[str, Any], loc: tuple) -> bool:
    return _get(data, loc) is not _MISSING


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value
