"""The one checkpoint dict (torchvision references style) shared by training (save, resume) and export.

    {"format": "andon-checkpoint-1", "model_name": str, "num_classes": int, "state_dict": {...},
     "card": ModelCard JSON, "epoch": int, "extra": {optimizer, scheduler, rng states, ...}}

Files are written atomically (temp file, fsync, rename) so a crash never leaves half a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from andon.errors import RunError
from andon.fileio import open_atomic
from andon.inspect.card import ModelCard

if TYPE_CHECKING:
    from andon.models.classifier import Classifier

CHECKPOINT_FORMAT = "andon-checkpoint-1"


@dataclass
class Checkpoint:
    model_name: str
    num_classes: int
    state_dict: dict[str, torch.Tensor]
    card: ModelCard
    epoch: int = 0
    extra: dict[str, Any] = field(default_factory=dict)


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "model_name": ckpt.model_name,
        "num_classes": ckpt.num_classes,
        "state_dict": ckpt.state_dict,
        "card": ckpt.card.to_json(),
        "epoch": ckpt.epoch,
        "extra": ckpt.extra,
    }
    with open_atomic(path) as fh:
        torch.save(payload, fh)
    return path


def load_checkpoint(path: str | Path, *, with_extra: bool = True) -> Checkpoint:
    """Load a checkpoint written by ``save_checkpoint`` (``weights_only=True``: no pickled code runs)."""
    path = Path(path)
    if not path.is_file():
        raise RunError(f"checkpoint {path} does not exist; train a model first with 'andon train'")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # corrupt or foreign file
        raise RunError(f"checkpoint {path} cannot be read ({type(exc).__name__}); is it an andon checkpoint?") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RunError(f"{path} is not an andon checkpoint (expected format '{CHECKPOINT_FORMAT}')")
    lacking = [k for k in ("model_name", "num_classes", "state_dict", "card") if k not in payload]
    if lacking:
        raise RunError(f"checkpoint {path} lacks {', '.join(lacking)}; it is damaged or from another tool")
    return Checkpoint(
        model_name=payload["model_name"],
        num_classes=int(payload["num_classes"]),
        state_dict=payload["state_dict"],
        card=ModelCard.from_json(payload["card"]),
        epoch=int(payload.get("epoch", 0)),
        extra=payload.get("extra", {}) if with_extra else {},
    )


def model_from_checkpoint(ckpt: Checkpoint) -> Classifier:
    """The trained ``Classifier`` of a checkpoint (eval mode); ``RunError`` when its weights do not fit."""
    from andon.models.registry import create_model

    model = create_model(
        ckpt.model_name, ckpt.num_classes, weights="none", progress=False, head_groups=ckpt.card.head_groups
    )
    expected, given = model.state_dict(), ckpt.state_dict
    problems = {
        "missing": [k for k in expected if k not in given and k not in model.OPTIONAL_STATE],
        "unexpected": [k for k in given if k not in expected],
        "wrong shape": [k for k, v in expected.items() if k in given and tuple(given[k].shape) != tuple(v.shape)],
    }
    if any(problems.values()):
        parts = [
            f"{name} {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}" for name, keys in problems.items() if keys
        ]
        trained = f" trained as {model.head_units}" if model.merged else ""
        raise RunError(
            f"the checkpoint's weights do not fit {ckpt.model_name} with {ckpt.num_classes} classes"
            f"{trained}: " + "; ".join(parts)
        )
    model.load_state_dict(given, strict=True)
    return model.eval()
