"""Decode and resize every image once per run: a uint8 N x H x W x 3 memory map in ``RUN/cache/``.

Decoding a JPEG costs far more than a training step of a small network on a small image, so doing it
every epoch starves the model. The cache holds exactly ``Preprocessor.load(bytes)`` for each image (the
one preprocessing path), filled by a pool of processes that write straight into the map. Loader workers
open the map read-only and share the pages through the OS. A cache whose key (data fingerprint,
preprocessing spec, file list) matches is reused, which is what ``--resume`` does.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import cv2
import numpy as np

from andon.errors import AndonError, DatasetError
from andon.inspect.card import PreprocessSpec
from andon.inspect.preprocess import Preprocessor

_DATA = "images.u8"
_META = "meta.json"
#: below this many images a pool costs more to start than it saves
_POOL_MIN_IMAGES = 64


class ImageCache:
    """Read access to a filled cache; picklable (each process opens the map itself, lazily)."""

    def __init__(self, folder: Path, count: int, hw: tuple[int, int]) -> None:
        self.folder = Path(folder)
        self.count = count
        self.hw = (int(hw[0]), int(hw[1]))
        self._array: np.ndarray | None = None

    def __len__(self) -> int:
        return self.count

    def __getstate__(self) -> dict:
        return {"folder": self.folder, "count": self.count, "hw": self.hw, "_array": None}

    @property
    def array(self) -> np.ndarray:
        if self._array is None:
            self._array = np.memmap(self.folder / _DATA, dtype=np.uint8, mode="r", shape=(self.count, *self.hw, 3))
        return self._array

    def image(self, index: int) -> np.ndarray:
        """A writable copy of image ``index`` (uint8 HxWx3): augmentations may work in place."""
        return np.array(self.array[index])


def cache_key(paths: Sequence[Path], spec: PreprocessSpec, fingerprint: str) -> str:
    """What the cached pixels depend on: the files' contents, their order, and the preprocessing."""
    h = hashlib.sha256(b"andon-image-cache-v1\n")
    h.update(spec.model_dump_json().encode())
    h.update(fingerprint.encode())
    for p in paths:
        h.update(str(p).encode() + b"\n")
    return h.hexdigest()


def open_cache(folder: Path, key: str) -> ImageCache | None:
    """The cache in ``folder`` if it is complete and was built for ``key``, else None."""
    try:
        meta = json.loads((folder / _META).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("key") != key:
        return None
    cache = ImageCache(folder, int(meta["count"]), tuple(meta["hw"]))
    expected = cache.count * cache.hw[0] * cache.hw[1] * 3
    if not (folder / _DATA).is_file() or (folder / _DATA).stat().st_size != expected:
        return None
    return cache


def build_cache(
    paths: Sequence[Path],
    spec: PreprocessSpec,
    folder: Path,
    *,
    key: str,
    workers: int = 0,
    advance: Callable[[int], None] | None = None,
) -> ImageCache:
    """Fill (or reuse) the cache of ``paths`` in ``folder``; ``advance(n)`` reports progress."""
    cached = open_cache(folder, key)
    if cached is not None:
        if advance is not None:
            advance(len(paths))
        return cached
    folder.mkdir(parents=True, exist_ok=True)
    (folder / _META).unlink(missing_ok=True)
    h, w = spec.input_size
    tmp = folder / f"{_DATA}.tmp"
    shape = (len(paths), h, w, 3)
    if paths:
        np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape).flush()
    else:
        tmp.write_bytes(b"")
    jobs = [(i, str(p)) for i, p in enumerate(paths)]
    if workers > 0 and len(paths) >= _POOL_MIN_IMAGES:
        single_threaded_opencv()  # before forking: see its docstring
        with _fork_context().Pool(workers, initializer=_init_worker, initargs=(spec, str(tmp), shape)) as pool:
            for done in pool.imap_unordered(_fill_chunk, _chunks(jobs, 16)):
                _report(done, advance)
    else:
        _init_worker(spec, str(tmp), shape)
        for chunk in _chunks(jobs, 16):
            _report(_fill_chunk(chunk), advance)
        _close_worker()
    os.replace(tmp, folder / _DATA)
    meta_tmp = folder / f"{_META}.tmp"
    meta_tmp.write_text(json.dumps({"key": key, "count": len(paths), "hw": [h, w]}))
    os.replace(meta_tmp, folder / _META)
    return ImageCache(folder, len(paths), (h, w))


def _chunks(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _report(done: int | AndonError, advance: Callable[[int], None] | None) -> None:
    if isinstance(done, AndonError):
        raise done
    if advance is not None:
        advance(done)


# Per-process state of the fill: the preprocessor and the writable map.
_worker: dict = {}


def single_threaded_opencv() -> None:
    """Make OpenCV single-threaded in this process before forking worker processes.

    A child forked while the parent's OpenCV thread pool exists inherits the pool's locks but not its
    threads, and hangs on its first OpenCV call that configures or uses the pool (seen here: the cache's
    fillers stuck in cv2.setNumThreads after generating synthetic data in the parent). With one thread set
    in the parent first, children never touch a pool. The worker processes are the parallelism; OpenCV
    threads inside them would only oversubscribe the cores.
    """
    cv2.setNumThreads(1)


def _fork_context() -> mp.context.BaseContext:
    # fork, not spawn: spawn re-imports the caller's main module in every child, which breaks (and re-runs)
    # scripts that call fit() without an ``if __name__ == "__main__"`` guard
    return mp.get_context("fork") if "fork" in mp.get_all_start_methods() else mp.get_context()


def _init_worker(spec: PreprocessSpec, path: str, shape: tuple[int, ...]) -> None:
    _worker["pre"] = Preprocessor(spec)
    _worker["out"] = np.memmap(path, dtype=np.uint8, mode="r+", shape=shape) if shape[0] else None


def _close_worker() -> None:
    if _worker.get("out") is not None:
        _worker["out"].flush()
    _worker.clear()


def _fill_chunk(chunk: list[tuple[int, str]]) -> int | AndonError:
    """Decode and resize a chunk into the map; errors come back as values (a clear message, not a traceback)."""
    pre: Preprocessor = _worker["pre"]
    out = _worker["out"]
    for index, path in chunk:
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            return DatasetError(f"cannot read image {path}: {exc.strerror or exc}")
        try:
            out[index] = pre.load(data)
        except AndonError as exc:
            return DatasetError(f"image {path} cannot be used: {exc}")
    out.flush()
    return len(chunk)
