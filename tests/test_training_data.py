"""The training data pipeline: the cache holds exactly Preprocessor.load, tensors equal the serving path,
sampling and augmentation are fixed by (seed, epoch) whatever the number of workers."""

from __future__ import annotations

import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from andon.errors import DatasetError
from andon.inspect.card import PreprocessSpec
from andon.inspect.preprocess import Preprocessor
from andon.training.augment import build_augmenter
from andon.training.cache import build_cache, cache_key
from andon.training.data import CachedImages, EpochSampler, build_eval_dataset, train_loader
from andon.training.optim import WarmupCosine, class_counts, loss_class_weights, sample_weights
from andon.training.recipe import load_recipe


def _images(folder: Path, n: int, *, ext: str = "png", size=(50, 70)) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    paths = []
    for i in range(n):
        image = rng.integers(0, 255, (*size, 3), dtype=np.uint8)
        path = folder / f"img{i:03d}.{ext}"
        cv2.imwrite(str(path), image)
        paths.append(path)
    return paths


@pytest.mark.parametrize(
    "spec",
    [
        PreprocessSpec(input_size=(32, 32)),
        PreprocessSpec(input_size=(40, 32), resize="letterbox", mean=(0.5,) * 3, std=(0.5,) * 3),
        PreprocessSpec(input_size=(32, 48), resize="center_crop", color_mode="gray", interpolation="linear"),
    ],
)
def test_eval_tensor_equals_the_serving_preprocessor_exactly(tmp_path, spec):
    paths = _images(tmp_path / "png", 3) + _images(tmp_path / "jpg", 2, ext="jpg")
    dataset = build_eval_dataset(paths, spec, tmp_path / "cache")
    reference = Preprocessor(spec)
    for i, path in enumerate(paths):
        tensor, _ = dataset[i]
        assert tensor.dtype == torch.float32 and tuple(tensor.shape) == (3, *spec.input_size)
        assert np.array_equal(tensor.numpy(), reference(path.read_bytes()))


def test_cache_is_filled_by_worker_processes_and_reused(tmp_path):
    paths = _images(tmp_path / "img", 70)  # enough for the pool to start
    spec = PreprocessSpec(input_size=(24, 24))
    key = cache_key(paths, spec, "fingerprint-1")
    seen = []
    cache = build_cache(paths, spec, tmp_path / "cache", key=key, workers=2, advance=seen.append)
    assert sum(seen) == 70
    pre = Preprocessor(spec)
    for i in (0, 33, 69):
        assert np.array_equal(cache.image(i), pre.load(paths[i].read_bytes()))
    data_file = tmp_path / "cache" / "images.u8"
    stamp = data_file.stat().st_mtime_ns
    again = build_cache(paths, spec, tmp_path / "cache", key=key, workers=2)
    assert data_file.stat().st_mtime_ns == stamp and np.array_equal(again.image(5), cache.image(5))
    build_cache(paths, spec, tmp_path / "cache", key=cache_key(paths, spec, "fingerprint-2"), workers=0)
    assert data_file.stat().st_mtime_ns != stamp  # other data: rebuilt, not trusted


def test_a_broken_image_names_the_file(tmp_path):
    paths = _images(tmp_path / "img", 3)
    paths[1].write_bytes(b"not an image at all")
    spec = PreprocessSpec(input_size=(24, 24))
    with pytest.raises(DatasetError, match=r"img001\.png"):
        build_cache(paths, spec, tmp_path / "cache", key="k", workers=0)
    assert not (tmp_path / "cache" / "meta.json").exists()  # a failed fill is never reused


def test_sampler_is_fixed_by_seed_and_epoch():
    a, b = EpochSampler(50, seed=3), EpochSampler(50, seed=3)
    a.set_epoch(2)
    b.set_epoch(2)
    first = list(a)
    assert first == list(b)
    assert sorted(i for i, _ in first) == list(range(50))  # a permutation
    b.set_epoch(3)
    assert list(b) != first
    assert list(EpochSampler(50, seed=4)) != list(EpochSampler(50, seed=3))


def test_weighted_sampler_balances_classes():
    labels = np.array([0] * 90 + [1] * 10)
    counts = class_counts(labels, ["ok", "defect"])
    sampler = EpochSampler(len(labels), seed=0, weights=sample_weights(labels, counts))
    drawn = []
    for epoch in range(20):
        sampler.set_epoch(epoch)
        drawn.extend(labels[i] for i, _ in sampler)
    drawn = np.array(drawn)
    assert 0.45 < drawn.mean() < 0.55  # the rare class is drawn as often as the common one


def test_class_weights_and_empty_classes():
    counts = np.array([90, 10])
    weights = loss_class_weights(counts)
    assert weights[1] / weights[0] == pytest.approx(9.0)
    assert float((weights * torch.tensor(counts)).sum()) == pytest.approx(100.0)
    with pytest.raises(DatasetError, match="scratch has no training images"):
        class_counts(np.array([0, 0, 2]), ["ok", "scratch", "spot"])


def test_warmup_then_cosine_and_a_frozen_start():
    head = WarmupCosine(start=0, warmup=10, total=100)
    assert head(0) == pytest.approx(0.1) and head(9) == pytest.approx(1.0)
    assert head(10) == pytest.approx(1.0) and head(55) == pytest.approx(0.5)
    assert head(99) < 0.01 and head(150) == 0.0
    backbone = WarmupCosine(start=30, warmup=10, total=100)
    assert backbone(0) == backbone(29) == 0.0  # frozen: no learning rate at all
    assert backbone(30) == pytest.approx(0.1) and backbone(39) == pytest.approx(1.0)
    values = [head(s) for s in range(10, 100)]
    assert all(x >= y for x, y in zip(values, values[1:]))  # decays monotonically


def test_batches_do_not_depend_on_the_number_of_workers(tmp_path):
    """Augmentation seeds come from the sampler, so 0 and 2 worker processes give identical batches."""
    paths = _images(tmp_path / "img", 20, size=(32, 32))
    spec = PreprocessSpec(input_size=(32, 32))
    cache = build_cache(paths, spec, tmp_path / "cache", key="k", workers=0)
    augmenter = build_augmenter(load_recipe().augment)
    data = CachedImages(cache, np.arange(20), np.arange(20) % 2, Preprocessor(spec), augmenter)

    def epoch_batches(workers: int) -> list[torch.Tensor]:
        sampler = EpochSampler(20, seed=5)
        sampler.set_epoch(1)
        loader = train_loader(data, sampler, batch_size=8, workers=workers, device=torch.device("cpu"), seed=5)
        return [images for images, _ in loader]

    in_process, with_workers = epoch_batches(0), epoch_batches(2)
    assert len(in_process) == 2  # drop_last: 20 images, batches of 8
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers))
    plain = torch.stack([torch.from_numpy(data.preprocessor.to_tensor(cache.image(i))) for i in range(20)])
    assert not any(torch.equal(in_process[0][0], plain[i]) for i in range(20))  # it was augmented


def test_cache_files_are_not_left_half_written(tmp_path):
    paths = _images(tmp_path / "img", 4)
    build_cache(paths, PreprocessSpec(input_size=(24, 24)), tmp_path / "cache", key="k", workers=0)
    assert sorted(os.listdir(tmp_path / "cache")) == ["images.u8", "meta.json"]


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_workers_start_after_opencv_threads_ran_in_the_parent(tmp_path):
    """Synthetic data generated in this process runs OpenCV's thread pool; cache fillers and loader workers
    forked afterwards must not hang (they did, in cv2.setNumThreads, before the parent went single-threaded)."""
    from andon.datasets.synth import generate

    cv2.setNumThreads(-1)  # OpenCV's default pool, as in a fresh process
    paths = [s.path for s in generate(tmp_path / "synth", count=300, size=256).samples]
    spec = PreprocessSpec(input_size=(32, 32))
    cache = build_cache(paths, spec, tmp_path / "cache", key="k", workers=2)
    assert np.array_equal(cache.image(299), Preprocessor(spec).load(paths[299].read_bytes()))
    data = CachedImages(
        cache, np.arange(300), np.zeros(300), Preprocessor(spec), build_augmenter(load_recipe().augment)
    )
    loader = train_loader(data, EpochSampler(300, seed=0), batch_size=50, workers=2, device=torch.device("cpu"), seed=0)
    assert sum(len(y) for _, y in loader) == 300
