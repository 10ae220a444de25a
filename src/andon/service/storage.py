"""Where frame images (and their heatmaps) are kept: a small interface, the local disk by default.

``put`` returns only once the bytes are durable: on local disk it writes a temp file in the target folder,
fsyncs it, renames it over the final name (atomic on POSIX) and fsyncs the folder so that the rename itself
survives a power cut. The service calls ``put`` before it commits the record and before it answers 2xx, so a
2xx means the image and the record survive a crash. An S3-compatible store would implement the same
protocol (PUT is atomic there; ``healthcheck`` would HEAD the bucket).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Protocol, runtime_checkable

from andon.errors import NotFoundError, StorageError
from andon.fileio import fsync_dir
from andon.fileio import write_atomic as _write_atomic

_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")


@runtime_checkable
class ImageStore(Protocol):
    """Durable key -> bytes storage for frames and heatmaps."""

    def put(self, key: str, data: bytes) -> None:
        """Store ``data`` under ``key`` atomically and durably (all or nothing, on stable storage on return)."""

    def get(self, key: str) -> bytes:
        """The bytes under ``key``; ``NotFoundError`` when absent."""

    def delete(self, key: str) -> None:
        """Remove ``key`` (no error when absent)."""

    def exists(self, key: str) -> bool: ...

    def stored_before(self, cutoff: dt.datetime) -> Iterator[tuple[str, int]]:
        """(key, size in bytes) of every object last written before ``cutoff``; for the orphan sweep."""

    def remove_partial_writes(self, cutoff: dt.datetime) -> int:
        """Remove what interrupted ``put`` calls left before ``cutoff`` (temp files); returns how many. A store
        whose writes are atomic by themselves (S3 PUT) has none."""

    def healthcheck(self) -> str | None:
        """None when writable, else a one-line reason."""

    def free_bytes(self) -> int | None:
        """Free space where the images go, or None when the store cannot tell."""


class LocalDiskStore:
    """Images as files under ``root``; keys are relative paths such as ``2026/11/25/<id>.jpg``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _path(self, key: str) -> Path:
        if not _KEY.match(key) or ".." in key.split("/"):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        try:
            make_dirs_durably(path.parent)
            write_durably(path, data)
        except OSError as exc:
            raise StorageError(f"cannot store image {key}: {exc.strerror or exc}") from None

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise NotFoundError(f"image {key} is not in the store (pruned by retention, or never kept)") from None

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def stored_before(self, cutoff: dt.datetime) -> Iterator[tuple[str, int]]:
        limit = cutoff.timestamp()
        for path, stat in self._files():
            key = path.relative_to(self.root).as_posix()
            if stat.st_mtime < limit and _KEY.match(key):
                yield key, stat.st_size

    def remove_partial_writes(self, cutoff: dt.datetime) -> int:
        """Temp files of ``write_durably`` (``.<name>.<random>.tmp``) a crash left behind."""
        removed = 0
        for path, stat in list(self._files()):
            if path.name.startswith(".") and path.name.endswith(".tmp") and stat.st_mtime < cutoff.timestamp():
                path.unlink(missing_ok=True)
                removed += 1
        return removed

    def _files(self) -> Iterator[tuple[Path, os.stat_result]]:
        if not self.root.is_dir():
            return
        for folder, _dirs, names in os.walk(self.root):
            for name in names:
                path = Path(folder) / name
                try:
                    yield path, path.stat()
                except FileNotFoundError:  # deleted meanwhile (retention, a failed write's clean-up)
                    continue

    def healthcheck(self) -> str | None:
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            write_durably(self.root / ".healthcheck", b"ok")
            (self.root / ".healthcheck").unlink()
        except OSError as exc:
            return f"image store {self.root} is not writable: {exc.strerror or exc}"
        return None

    def free_bytes(self) -> int | None:
        probe = self.root if self.root.exists() else self.root.parent
        try:
            return shutil.disk_usage(probe).free
        except OSError:
            return None


def write_durably(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that after return it is complete on disk (folder entry too), or was never there."""
    _write_atomic(path, data, durable=True)


def make_dirs_durably(folder: Path) -> None:
    """``mkdir -p`` that also fsyncs each parent of a new folder, so the folder survives a crash too."""
    if folder.is_dir():
        return
    missing = []
    while not folder.exists():
        missing.append(folder)
        folder = folder.parent
    for new in reversed(missing):
        new.mkdir(exist_ok=True)
        fsync_dir(new.parent)
