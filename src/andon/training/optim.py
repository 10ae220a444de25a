"""AdamW with per-step warm-up and cosine decay; class balance by sampling weights or loss weights.

The head and the backbone are separate parameter groups with their own schedule: the head warms up from
the first step; the backbone stays at 0 while it is frozen and warms up from the moment it is unfrozen,
so pretrained features are not hit with the peak learning rate on the first full step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from andon.errors import DatasetError
from andon.training.recipe import TrainSection


@dataclass
class WarmupCosine:
    """LR factor at a step: 0 before ``start``, linear warm-up over ``warmup`` steps, cosine decay to ``total``.

    A callable object rather than a lambda, so that ``LambdaLR.state_dict()`` saves (and resume restores) it.
    """

    start: int
    warmup: int
    total: int

    def __call__(self, step: int) -> float:
        if step < self.start or self.total <= self.start:
            return 0.0
        t = step - self.start
        if t < self.warmup:
            return (t + 1) / self.warmup
        span = max(1, self.total - self.start - self.warmup)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (t - self.warmup) / span)))


def build_optimizer(model: nn.Module, cfg: TrainSection) -> torch.optim.AdamW:
    """Groups: backbone / head, each split into decayed weights and undecayed biases and norm scales."""
    groups = []
    for name, params, lr in (
        ("backbone", model.backbone_parameters(), cfg.lr),
        ("head", model.head_parameters(), cfg.head_lr or cfg.lr),
    ):
        params = list(params)
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        for group_params, wd in ((decay, cfg.weight_decay), (no_decay, 0.0)):
            if group_params:
                groups.append({"params": group_params, "lr": lr, "weight_decay": wd, "name": name})
    return torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainSection, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    total = cfg.epochs * steps_per_epoch
    warmup = max(1, round(cfg.warmup_epochs * steps_per_epoch)) if cfg.warmup_epochs > 0 else 0
    backbone_start = min(cfg.freeze_epochs, cfg.epochs) * steps_per_epoch
    factors = [
        WarmupCosine(backbone_start if g["name"] == "backbone" else 0, warmup, total) for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factors)


def class_counts(labels: np.ndarray, classes: list[str], *, hint: str = "") -> np.ndarray:
    """Training images per class; a class with none cannot be learned, so it is an error (``hint`` ends it)."""
    counts = np.bincount(labels, minlength=len(classes))
    empty = [c for c, n in zip(classes, counts) if n == 0]
    if empty:
        raise DatasetError(
            f"class{'es' if len(empty) > 1 else ''} {', '.join(empty)} "
            f"{'have' if len(empty) > 1 else 'has'} no training images after the split; add images "
            f"or lower val/test fractions{hint}"
        )
    return counts


def sample_weights(labels: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """Weights that make every class equally likely to be drawn."""
    return 1.0 / counts[labels]


def loss_class_weights(counts: np.ndarray) -> torch.Tensor:
    """Inverse-frequency weights, scaled so that a balanced set would get 1 for every class."""
    return torch.tensor(counts.sum() / (len(counts) * counts), dtype=torch.float32)


def build_criterion(cfg: TrainSection, counts: np.ndarray, device: torch.device) -> nn.Module:
    weight = loss_class_weights(counts).to(device) if cfg.balance == "loss" else None
    return nn.CrossEntropyLoss(weight=weight, label_smoothing=cfg.label_smoothing)
