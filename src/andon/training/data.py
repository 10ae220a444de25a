"""The run's data: folder -> remapped, split data set -> image cache -> loaders.

Pixels follow the one preprocessing path: ``Preprocessor.load`` (cached once per run), then the
augmentations on the uint8 image (training only), then ``Preprocessor.to_tensor``. Without augmentation a
training tensor is therefore exactly what ``Preprocessor(spec)(file_bytes)`` gives at serving time.

The sampler hands each position of an epoch an index and an augmentation seed derived from (run seed,
epoch), so that shuffling, weighted sampling and augmentation are the same whether the loader runs in 0 or
8 worker processes, and an epoch after ``--resume`` is the epoch the interrupted run would have seen.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress

from andon.datasets.dataset import Dataset
from andon.datasets.manifest import load_dataset, write_manifest
from andon.datasets.remap import ClassPlan, class_plan
from andon.datasets.splits import assign_splits
from andon.errors import DatasetError
from andon.inspect.card import PreprocessSpec
from andon.inspect.preprocess import Preprocessor
from andon.training.augment import Augmenter
from andon.training.cache import ImageCache, build_cache, cache_key, open_cache, single_threaded_opencv
from andon.training.optim import class_counts
from andon.training.recipe import DataSection, ModelSection
from andon.training.seeding import derive_seed

SPLIT_NAMES = ("train", "val", "test")


@dataclass
class RunData:
    """The split data set and its cached pixels; ``indices[split]`` index ``samples``, ``cache`` and the labels.

    ``dataset`` has the folder's labels; ``plan`` maps them to the model's ``classes`` (``targets``, what
    evaluation compares with) and to the head's training classes (``labels``, what the loss compares with).
    Without a merge kept apart the two label arrays are the same.
    """

    dataset: Dataset
    plan: ClassPlan
    spec: PreprocessSpec
    cache: ImageCache
    labels: np.ndarray
    targets: np.ndarray
    indices: dict[str, np.ndarray]

    @property
    def classes(self) -> list[str]:
        return self.plan.classes

    def paths(self, split: str) -> list[str]:
        return [str(self.dataset.samples[i].path) for i in self.indices[split]]


def load_split_dataset(cfg: DataSection) -> tuple[Dataset, ClassPlan]:
    """The data folder (or manifest) with every image given a split, and how its classes become the model's.

    The samples keep the folder's labels (the split and the fingerprint are those of the data on disk);
    ``ClassPlan`` applies ``data.remap``.
    """
    if cfg.path is None:
        raise DatasetError("no data given: pass the data folder (andon train DATA) or set data.path in the recipe")
    dataset = load_dataset(cfg.path)
    try:
        plan = class_plan(dataset.classes, cfg.remap, keep_sources=cfg.keep_source_classes)
    except DatasetError as exc:
        raise DatasetError(f"{cfg.path}: {exc}") from None
    return assign_splits(
        dataset, val=cfg.val_fraction, test=cfg.test_fraction, seed=cfg.split_seed, group_by=cfg.group_by
    ), plan


def check_training_classes(dataset: Dataset, plan: ClassPlan) -> None:
    """Every training class has a training image (checked before a run folder is made)."""
    train = np.array([plan.training_index(s.label) for s in dataset.samples if s.split == "train"], dtype=np.int64)
    hint = " (or train on the merged labels: --set data.keep_source_classes=false)" if plan.trained_as else ""
    class_counts(train, [plan.describe(c) for c in plan.training_classes], hint=hint)


def preprocess_spec(cfg: ModelSection, mean: Sequence[float], std: Sequence[float]) -> PreprocessSpec:
    """The spec that goes into the model card; ``mean``/``std`` are the weights' (or the recipe's override)."""
    return PreprocessSpec(
        input_size=cfg.input_size,
        color_mode=cfg.color_mode,
        resize=cfg.resize,
        interpolation=cfg.interpolation,
        mean=tuple(mean),
        std=tuple(std),
    )


def prepare_run_data(
    dataset: Dataset,
    plan: ClassPlan,
    spec: PreprocessSpec,
    run_dir: Path,
    *,
    workers: int,
    progress: Progress | None = None,
    write: bool = True,
) -> RunData:
    """Write ``RUN/splits.csv`` (with the model's class names) and fill (or reuse) the image cache of every split.

    ``write`` False (the ranks other than 0 of a run on several processes): write nothing, open the cache
    that is there.
    """
    if write:
        write_manifest(dataset.remap(plan.table), run_dir / "splits.csv")
    labels = np.array([plan.training_index(s.label) for s in dataset.samples], dtype=np.int64)
    targets = np.array([plan.class_index(s.label) for s in dataset.samples], dtype=np.int64)
    splits = np.array([s.split for s in dataset.samples])
    indices = {name: np.flatnonzero(splits == name) for name in SPLIT_NAMES}
    if len(indices["train"]) == 0 or len(indices["val"]) == 0:
        raise DatasetError(
            f"the split of {dataset.root} left {len(indices['train'])} training and "
            f"{len(indices['val'])} validation images; add images or change data.val_fraction"
        )
    paths = [s.path for s in dataset.samples]
    key = cache_key(paths, spec, dataset.fingerprint())
    if write:
        cache = fill_cache(paths, spec, run_dir / "cache", key=key, workers=workers, progress=progress)
    else:
        opened = open_cache(run_dir / "cache", key)
        if opened is None:
            raise RuntimeError(f"no complete image cache for this run in {run_dir / 'cache'} (rank 0 fills it)")
        cache = opened
    return RunData(dataset, plan, spec, cache, labels, targets, indices)


def fill_cache(
    paths: Sequence[Path], spec: PreprocessSpec, folder: Path, *, key: str, workers: int, progress: Progress | None
) -> ImageCache:
    if progress is None:
        return build_cache(paths, spec, folder, key=key, workers=workers)
    task = progress.add_task("cache images", total=len(paths), status=f"{spec.input_size[0]}x{spec.input_size[1]}")
    try:
        return build_cache(paths, spec, folder, key=key, workers=workers, advance=lambda n: progress.advance(task, n))
    finally:
        progress.stop_task(task)


class CachedImages(torch.utils.data.Dataset):
    """(tensor, label) pairs from the cache; items are indices, or (index, augmentation seed) pairs."""

    def __init__(
        self,
        cache: ImageCache,
        indices: np.ndarray,
        labels: np.ndarray,
        preprocessor: Preprocessor,
        augmenter: Augmenter | None = None,
    ) -> None:
        self.cache = cache
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.preprocessor = preprocessor
        self.augmenter = augmenter if augmenter else None

    def __len__(self) -> int:
        return len(self.indices)

    def image(self, position: int, seed: int | None = None) -> np.ndarray:
        """The uint8 image at ``position``, augmented with ``seed`` when there are augmentations."""
        image = self.cache.image(int(self.indices[position]))
        if self.augmenter is not None:
            image = self.augmenter(image, position if seed is None else seed)
        return image

    def __getitem__(self, item: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        position, seed = item if isinstance(item, tuple) else (item, None)
        tensor = self.preprocessor.to_tensor(self.image(position, seed))
        return torch.from_numpy(tensor), int(self.labels[self.indices[position]])


class EpochSampler(torch.utils.data.Sampler):
    """Shuffled (or class-balanced) positions with per-position augmentation seeds, fixed by (seed, epoch)."""

    def __init__(self, size: int, seed: int, weights: np.ndarray | None = None) -> None:
        self.size = size
        self.seed = seed
        self.weights = None if weights is None else torch.as_tensor(weights, dtype=torch.float64)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[tuple[int, int]]:
        g = torch.Generator().manual_seed(derive_seed(self.seed, self.epoch))
        if self.weights is None:
            order = torch.randperm(self.size, generator=g)
        else:
            order = torch.multinomial(self.weights, self.size, replacement=True, generator=g)
        seeds = torch.randint(0, 2**62, (self.size,), generator=g)
        return iter(zip(order.tolist(), seeds.tolist()))


def train_loader(
    dataset: CachedImages,
    sampler: torch.utils.data.Sampler,
    *,
    batch_size: int,
    workers: int,
    device: torch.device,
    seed: int,
    drop_last: bool | None = None,
) -> torch.utils.data.DataLoader:
    """``drop_last`` None: drop an incomplete last batch unless it is the only one (a sharded sampler of
    ``andon.training.distributed`` gives whole batches only and passes False)."""
    # drop_last keeps BatchNorm away from a batch of one; keep it off when one batch is all there is
    if drop_last is None:
        drop_last = len(dataset) > batch_size
    if workers > 0:
        single_threaded_opencv()  # before the loader forks its workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        persistent_workers=workers > 0,
        pin_memory=device.type == "cuda",
        prefetch_factor=4 if workers > 0 else None,
        # the loader draws its workers' base seed from this generator, not from the global one that
        # dropout uses, so starting workers does not shift the model's random stream
        generator=torch.Generator().manual_seed(seed),
    )


def eval_loader(
    dataset: CachedImages, *, batch_size: int, workers: int, device: torch.device, persistent: bool = True
) -> torch.utils.data.DataLoader:
    if workers > 0:
        single_threaded_opencv()  # before the loader forks its workers
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        persistent_workers=persistent and workers > 0,
        pin_memory=device.type == "cuda",
        generator=torch.Generator().manual_seed(0),
    )


def build_eval_dataset(
    paths: Sequence[Path | str],
    spec: PreprocessSpec,
    cache_dir: Path,
    labels: Sequence[int] | None = None,
    *,
    workers: int = 0,
) -> CachedImages:
    """Images through the training pipeline without augmentation, cached in ``cache_dir``.

    ``dataset[i][0]`` is the tensor training and evaluation feed the network; it equals
    ``Preprocessor(spec)(Path(paths[i]).read_bytes())``.
    """
    paths = [Path(p) for p in paths]
    fingerprint = ",".join(f"{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in paths)
    cache = build_cache(paths, spec, Path(cache_dir), key=cache_key(paths, spec, fingerprint), workers=workers)
    label_array = np.zeros(len(paths), np.int64) if labels is None else np.asarray(labels, np.int64)
    return CachedImages(cache, np.arange(len(paths)), label_array, Preprocessor(spec))


def split_datasets(data: RunData, augmenter: Augmenter | None) -> dict[str, CachedImages]:
    """Training images labelled with training classes (augmented); val and test with the model's classes."""
    pre = Preprocessor(data.spec)
    return {
        name: CachedImages(
            data.cache,
            data.indices[name],
            data.labels if name == "train" else data.targets,
            pre,
            augmenter if name == "train" else None,
        )
        for name in SPLIT_NAMES
    }
