"""Class probabilities from a training run's ``best.pt`` (torch), for ``andon evaluate RUN DATA``.

Frames go through ``Preprocessor(card.preprocess)``, the path the service uses, so the figures of a run
folder and of its exported ONNX file differ only by the export's numerical error.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from andon.errors import AndonError, DatasetError, RunError
from andon.inspect.card import ModelCard
from andon.inspect.outputs import ModelOutputs, output_spec
from andon.inspect.preprocess import Preprocessor
from andon.models import Classifier, load_checkpoint, model_from_checkpoint


def load_run_model(run_dir: str | Path, checkpoint: str = "best.pt") -> tuple[Classifier, ModelCard]:
    """The best model of a run (or its ``checkpoint``, e.g. ``last.pt``), in eval mode on the CPU, and its card."""
    path = Path(run_dir) / checkpoint
    if not Path(run_dir).is_dir():
        raise RunError(f"run folder {run_dir} does not exist")
    ckpt = load_checkpoint(path)
    return model_from_checkpoint(ckpt), ckpt.card


@torch.inference_mode()
def predict_paths(
    run_dir: str | Path, paths: Sequence[str | Path], *, batch_size: int = 32, checkpoint: str = "best.pt"
) -> tuple[np.ndarray, ModelCard]:
    """Probabilities (N x classes, float32, in ``paths`` order) of the run's best model (or ``checkpoint``),
    and its card."""
    model, card = load_run_model(run_dir, checkpoint)
    pre = Preprocessor(card.preprocess)
    out = np.zeros((len(paths), len(card.classes)), dtype=np.float32)
    for start in range(0, len(paths), batch_size):
        chunk = paths[start : start + batch_size]
        batch = np.stack([_tensor(pre, Path(p)) for p in chunk])
        out[start : start + len(chunk)] = torch.softmax(model(torch.from_numpy(batch)), dim=1).numpy()
    return out, card


@torch.inference_mode()
def predict_outputs(
    run_dir: str | Path, paths: Sequence[str | Path], *, batch_size: int = 32
) -> tuple[ModelOutputs, ModelCard]:
    """The outputs the decision reads (``andon.inspect.outputs``: probabilities, and the anomaly score when the run
    has a detector) of the run's inspection graph for ``paths``, and its card; what its .onnx would give."""
    from andon.models.rundata import load_run

    run = load_run(run_dir)
    graph, card = run.graph(), run.card
    pre = Preprocessor(card.preprocess)
    chunks = []
    for start in range(0, len(paths), batch_size):
        batch = np.stack([_tensor(pre, Path(p)) for p in paths[start : start + batch_size]])
        chunks.append([t.numpy() for t in graph(torch.from_numpy(batch))])
    keys = [k for k in graph.output_keys if not output_spec(k).is_map]
    columns = {k: graph.output_keys.index(k) for k in keys}
    if not chunks:
        return ModelOutputs(
            {k: np.zeros((0, len(card.classes)) if k == "probabilities" else (0,), np.float32) for k in keys}
        ), card
    return ModelOutputs(
        {k: np.concatenate([c[j] for c in chunks]).astype(np.float32) for k, j in columns.items()}
    ), card


def _tensor(pre: Preprocessor, path: Path) -> np.ndarray:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc.strerror or exc}") from None
    try:
        return pre(data)
    except AndonError as exc:
        raise type(exc)(f"{path}: {exc}") from None
