"""One training epoch and one evaluation pass (torchvision references style: plain functions)."""

from __future__ import annotations

import time
from collections.abc import Callable

import numpy as np
import torch
from rich.progress import Progress
from torch import nn

from andon.models.classifier import Classifier
from andon.training.progress import set_status, track


def train_one_epoch(
    model: Classifier,
    loader: torch.utils.data.DataLoader,
    criterion: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    device: torch.device,
    epoch: int,
    progress: Progress | None = None,
    *,
    autocast_dtype: torch.dtype | None = None,
    frozen_bn: bool = False,
    net: nn.Module | None = None,
    all_sum: Callable[[list[torch.Tensor]], object] | None = None,
) -> dict[str, float]:
    """Train for one pass over ``loader``, stepping the scheduler every batch.

    With ``autocast_dtype`` (torch.bfloat16) the forward pass runs under autocast; the weights, the
    optimizer state and the gradients stay fp32. With ``frozen_bn`` the BatchNorm layers normalise with their
    stored statistics (eval mode) while everything else trains.

    The loss and the accuracy are on the training classes (``Classifier.training_logits``): the defect
    types of a model that merges them into one class. Returns the mean training loss, the training accuracy
    (on augmented images), the learning rate at the end and the wall time, including any time spent waiting
    for data.

    ``net`` is what computes the training logits when it is not ``model.training_logits``: the DDP wrapper of
    a run on several processes (``andon.training.distributed``), which averages the gradients over them;
    ``all_sum`` then sums the loss, correct and seen counts over the processes, so the figures are the
    whole step's.
    """
    model.train()
    if frozen_bn:
        for module in model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
    start = time.perf_counter()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.int64, device=device)
    seen = 0
    for (images, labels), task in track(loader, progress, f"epoch {epoch}", len(loader)):
        images = images.to(device, non_blocking=True, memory_format=_memory_format(model))
        labels = labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=autocast_dtype or torch.bfloat16, enabled=autocast_dtype is not None):
            # one logit per training class (see Classifier)
            logits = model.training_logits(images) if net is None else net(images)
            loss = criterion(logits.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        loss_sum += loss.detach().double() * len(labels)
        correct += (logits.detach().argmax(1) == labels).sum()
        seen += len(labels)
        if progress is not None:
            set_status(progress, task, f"loss {loss_sum.item() / seen:.4f}  acc {correct.item() / seen:.1%}")
    if all_sum is not None:
        total = torch.tensor(seen, dtype=torch.int64, device=device)
        all_sum([loss_sum, correct, total])
        seen = int(total.item())
    if seen == 0:
        raise RuntimeError("the training loader yielded no batch")
    return {
        "train_loss": loss_sum.item() / seen,
        "train_accuracy": correct.item() / seen,
        "lr": max(group["lr"] for group in optimizer.param_groups),
        "train_seconds": time.perf_counter() - start,
    }


@torch.inference_mode()
def evaluate(
    model: nn.Module,
    loader: torch.utils.data.DataLoader,
    device: torch.device,
    progress: Progress | None = None,
    description: str = "evaluate",
) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities for every image of ``loader``, in loader order: (y_true, probs)."""
    model.eval()
    labels_out: list[np.ndarray] = []
    probs_out: list[np.ndarray] = []
    for (images, labels), _task in track(loader, progress, description, len(loader)):
        logits = model(images.to(device, non_blocking=True, memory_format=_memory_format(model)))
        probs_out.append(torch.softmax(logits.float(), dim=1).cpu().numpy())
        labels_out.append(labels.numpy())
    if not probs_out:
        return np.zeros(0, dtype=np.int64), np.zeros((0, 0), dtype=np.float32)
    return np.concatenate(labels_out).astype(np.int64), np.concatenate(probs_out)


def _memory_format(model: nn.Module) -> torch.memory_format:
    """channels_last when the model's first weight is (see ``fit.prepare``), else contiguous."""
    weight = next((p for p in model.parameters() if p.dim() == 4), None)
    if weight is not None and weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def cross_entropy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the true class (the plain validation loss, no smoothing or weights)."""
    if len(y_true) == 0:
        return float("nan")
    p = np.clip(probs[np.arange(len(y_true)), y_true].astype(np.float64), 1e-12, 1.0)
    return float(-np.log(p).mean())
