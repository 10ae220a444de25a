"""What export reads from a training run folder: the best checkpoint, its model, and the run's splits.

A run folder holds ``best.pt`` (an andon checkpoint: the classifier, and the fitted anomaly detector in its
``extra`` when the card describes one) and ``splits.csv`` (the manifest of the images the run used, with their
split). An anomaly-only run has no classifier (``Run.model`` is None). Images are read through
``Preprocessor(card.preprocess)``, the one preprocessing
path, so export checks the file on exactly the tensors the service will feed it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from andon.datasets.dataset import Dataset, Sample
from andon.errors import AndonError, DatasetError, RunError
from andon.inspect.card import ModelCard
from andon.inspect.preprocess import Preprocessor
from andon.models.checkpoint import Checkpoint, load_checkpoint, model_from_checkpoint
from andon.models.classifier import Classifier
from andon.models.graph import InspectionGraph

CHECKPOINT_NAME = "best.pt"
SPLITS_NAME = "splits.csv"


@dataclass
class Run:
    path: Path
    checkpoint: Checkpoint
    model: Classifier | None
    data: Dataset
    #: the fitted good-only anomaly detector (``andon.models.anomaly.PatchCore``), when the card has one
    anomaly: object | None = None

    def graph(self) -> InspectionGraph:
        """The inspection graph of this run (what export writes), in eval mode."""
        return InspectionGraph(self.model, self.card.defect_indices, self.anomaly).eval()

    @property
    def card(self) -> ModelCard:
        return self.checkpoint.card

    def split(self, *names: str) -> tuple[str, list[Sample]]:
        """The first of ``names`` that has images, and its samples; ``RunError`` if none has any."""
        for name in names:
            samples = [s for s in self.data.samples if s.split == name]
            if samples:
                return name, samples
        raise RunError(f"{self.path / SPLITS_NAME} has no images in split(s) {', '.join(names)}")


def load_run(run_dir: str | Path) -> Run:
    """The checkpoint, model and splits of a run folder, each problem named with its file."""
    from andon.datasets.manifest import load_manifest

    run_dir = Path(run_dir).expanduser()
    if not run_dir.is_dir():
        raise RunError(
            f"run folder {run_dir} does not exist"
            if not run_dir.exists()
            else f"{run_dir} is not a run folder (it is a file); give the folder 'andon train' wrote"
        )
    ckpt = load_checkpoint(run_dir / CHECKPOINT_NAME)
    model = None if ckpt.card.anomaly_only else model_from_checkpoint(ckpt)
    anomaly = None
    if ckpt.card.anomaly is not None:
        from andon.models.anomaly_build import detector_from_checkpoint

        anomaly = detector_from_checkpoint(
            ckpt.card.anomaly, ckpt.card.preprocess, ckpt.extra, backbone=ckpt.model_name
        )
    splits = run_dir / SPLITS_NAME
    if not splits.is_file():
        raise RunError(f"run folder {run_dir} has no {SPLITS_NAME}; export needs the run's validation images")
    try:
        data = load_manifest(splits)
    except DatasetError as exc:
        raise RunError(f"{splits}: {exc}") from None
    unknown = sorted({s.label for s in data.samples} - set(ckpt.card.classes))
    if unknown:
        raise RunError(
            f"{splits} has labels {unknown} that the model does not know; its classes are {ckpt.card.classes}"
        )
    return Run(path=run_dir, checkpoint=ckpt, model=model, data=data, anomaly=anomaly)


def pick(samples: Sequence[Sample], n: int | None) -> list[Sample]:
    """Up to ``n`` samples, taken class by class in turn (so every class is represented), in a fixed order."""
    if n is None or n >= len(samples):
        return list(samples)
    by_class: dict[str, list[Sample]] = {}
    for s in sorted(samples, key=lambda s: str(s.path)):
        by_class.setdefault(s.label, []).append(s)
    queues = [list(reversed(v)) for _, v in sorted(by_class.items())]
    picked: list[Sample] = []
    while len(picked) < n:
        for q in queues:
            if q and len(picked) < n:
                picked.append(q.pop())
    return picked


def load_tensors(
    samples: Sequence[Sample],
    preprocessor: Preprocessor,
    classes: list[str],
    *,
    on_image: Callable[[], None] | None = None,
    workers: int = 4,
) -> tuple[np.ndarray, np.ndarray]:
    """Preprocessed N x 3 x H x W float32 tensors and class indices; a bad image is a ``RunError`` naming it."""
    index = {c: i for i, c in enumerate(classes)}

    def one(sample: Sample) -> np.ndarray:
        try:
            tensor = preprocessor(sample.path.read_bytes())
        except OSError as exc:
            raise RunError(f"cannot read {sample.path}: {exc.strerror or exc}") from None
        except AndonError as exc:
            raise RunError(f"{sample.path}: {exc}") from None
        if on_image is not None:
            on_image()
        return tensor

    with ThreadPoolExecutor(max_workers=workers) as pool:  # decoding releases the GIL
        tensors = list(pool.map(one, samples))
    h, w = preprocessor.input_hw
    x = np.stack(tensors) if tensors else np.zeros((0, 3, h, w), np.float32)
    y = np.array([index[s.label] for s in samples], dtype=np.int64)
    return x, y
