"""Where frame images (and their heatmaps) are kept: a small interface, the local disk by default.

``put`` returns only once the bytes are durable: on local disk it writes a temp file in the target folder,
fsyncs it, renames it over the final name (atomic on POSIX) and fsyncs the folder so that the rename itself
survives a power cut. The service calls ``put`` before it commits the record and before it answers 2xx, so a
2xx means the image and the record survive a crash. ``andon.service.s3store.S3Store`` implements the same
protocol on an S3-compatible bucket (PUT is atomic there; ``healthcheck`` HEADs the bucket). ``make_store``
builds the one the settings name (``image_store: local|s3``): every caller gets its store there.

Free space: ``put`` refuses a write that would leave less than ``reserve_bytes`` free (``DiskFullError``,
507), and a write the disk itself refuses (ENOSPC, EDQUOT) is the same error, so the last megabytes stay for
the database (review verdicts) and a frame is never half stored.

Writers: every serving process holds ``<root>/.writers.lock`` shared (``join_writers``). A process that gets
it exclusively (``join_writers(sole=True)`` answers True) knows no other process is writing to the store at
that moment: no ``put`` is between its image and its record, so the start-up sweep may remove every temp file
and every image no record names, whatever its age (``retention.sweep_at_start``). The lock is a ``flock``:
the kernel drops it when a process dies, kill -9 included; it holds between processes of one host (and on
filesystems whose flock spans hosts).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import os
import re
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from andon.errors import DiskFullError, NotFoundError, StorageError
from andon.fileio import fsync_dir
from andon.fileio import write_atomic as _write_atomic

if TYPE_CHECKING:
    from andon.service.settings import Settings

#: the model registry's files in a shared store: ``models/<version>/model.onnx`` (``make_model_store``)
MODELS_PREFIX = "models"
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*(/[A-Za-z0-9][A-Za-z0-9._-]*)*$")
_MB = 1024 * 1024
#: the flock every serving process holds shared (never a key: keys start with a letter or digit)
WRITERS_LOCK = ".writers.lock"
#: ``healthcheck``'s probe file; one left behind means a process died between its write and its unlink
_PROBE = ".healthcheck"
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def valid_key(key: str) -> bool:
    """A store key: relative, '/'-separated names of letters, digits, '.', '_' and '-', each starting with a
    letter or digit (so never '..', and never a dot file such as the writers' lock)."""
    return bool(_KEY.match(key)) and ".." not in key.split("/")


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

    def join_writers(self, *, sole: bool = False) -> bool:
        """Count this process among the store's writers until ``leave_writers`` (or its end). With ``sole``,
        first try to be the only one: True when no other process writes to the store now (and none can start
        until this one calls ``join_writers()`` again). A store that cannot tell answers False."""

    def leave_writers(self) -> None: ...


class LocalDiskStore:
    """Images as files under ``root``; keys are relative paths such as ``2026/11/25/<id>.jpg``."""

    def __init__(self, root: Path, *, reserve_bytes: int = 0) -> None:
        self.root = Path(root)
        #: ``put`` refuses a write that would leave less than this free (0: only the disk itself refuses)
        self.reserve_bytes = reserve_bytes
        self._lock_fd: int | None = None

    def _path(self, key: str) -> Path:
        if not valid_key(key):
            raise ValueError(f"invalid storage key {key!r}")
        return self.root / key

    def path(self, key: str) -> Path:
        """The file that holds ``key`` (it may not exist): what the model registry hands onnxruntime."""
        return self._path(key)

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        self._check_room(len(data))
        existed = path.exists()
        try:
            make_dirs_durably(path.parent)
            write_durably(path, data)
        except OSError as exc:
            if not existed:  # the rename may have happened before the folder's fsync failed: all or nothing
                with contextlib.suppress(OSError):
                    path.unlink(missing_ok=True)
            if exc.errno in _DISK_FULL:
                raise DiskFullError(
                    f"image store {self.root} is full ({exc.strerror}): frames are refused until space is freed "
                    "(retention, or a larger disk)"
                ) from None
            raise StorageError(f"cannot store image {key}: {exc.strerror or exc}") from None

    def _check_room(self, size: int) -> None:
        if self.reserve_bytes <= 0:
            return
        free = self.free_bytes()
        if free is not None and free - size < self.reserve_bytes:
            raise DiskFullError(
                f"image store {self.root} has {free // _MB} MB free, below the {self.reserve_bytes // _MB} MB "
                "kept for the database (disk_reserve_mb): frames are refused until space is freed (retention, "
                "or a larger disk); review keeps working"
            )

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
        """Temp files of ``write_durably`` (``.<name>.<random>.tmp``) and ``healthcheck`` probes a crash left
        behind, last written before ``cutoff``."""
        removed = 0
        for path, stat in list(self._files()):
            leftover = (path.name.startswith(".") and path.name.endswith(".tmp")) or path.name == _PROBE
            if leftover and stat.st_mtime < cutoff.timestamp():
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
            make_dirs_durably(self.root)  # a folder made here must survive a crash too: put relies on it
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

    def join_writers(self, *, sole: bool = False) -> bool:
        if self._lock_fd is None:
            make_dirs_durably(self.root)
            self._lock_fd = os.open(self.root / WRITERS_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        if sole:
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return True
            except BlockingIOError:
                pass  # another process writes: join it
        fcntl.flock(self._lock_fd, fcntl.LOCK_SH)  # waits while a starting process sweeps alone
        return False

    def leave_writers(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # closing the descriptor drops the flock
            self._lock_fd = None


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


def make_store(settings: Settings) -> ImageStore:
    """The image store ``settings`` name: the local disk under ``<data_dir>/images`` (the default), or an
    S3-compatible bucket (``image_store: s3``; needs the ``[s3]`` extra)."""
    if settings.image_store == "s3":
        from andon.service.s3store import S3Store

        return S3Store.from_settings(settings)
    return LocalDiskStore(settings.images_dir, reserve_bytes=settings.disk_reserve_bytes)


def make_model_store(settings: Settings) -> tuple[ImageStore, str]:
    """Where the model registry keeps its files, and the key prefix of a version's folder in it: the bucket
    of ``image_store: s3`` under ``models/`` (``models/<version>/model.onnx``, shared by every replica), else
    the local disk in today's layout (``<data_dir>/models/versions/<version>/model.onnx``)."""
    if settings.image_store == "s3":
        from andon.service.s3store import S3Store

        return S3Store.from_settings(settings, kind="model"), MODELS_PREFIX
    return LocalDiskStore(settings.registry_dir, reserve_bytes=settings.disk_reserve_bytes), "versions"
