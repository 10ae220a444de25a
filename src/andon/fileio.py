"""Writing files so that a crash never leaves half of one: temp file beside the target, fsync, rename.

One implementation for everything andon writes (models, manifests, reports, run files, the service's
images and registry state). ``durable=True`` also fsyncs the folder, so that the rename itself survives a
power cut: the service relies on it before answering 2xx.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO


def write_atomic(path: str | Path, data: bytes | str, *, durable: bool = True) -> Path:
    """Write ``data`` (str as UTF-8) to ``path``: afterwards the file is complete, or was never changed."""
    with open_atomic(path, durable=durable) as fh:
        fh.write(data.encode("utf-8") if isinstance(data, str) else data)
    return Path(path)


@contextmanager
def open_atomic(path: str | Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A binary file to stream into; it replaces ``path`` when the block ends, and vanishes if it raises."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            os.fchmod(fh.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


@contextmanager
def folder_atomic(out: str | Path, *, overwrite: bool = False, error=FileExistsError) -> Iterator[Path]:
    """A staging folder beside ``out`` to write into; it becomes ``out`` when the block ends, and vanishes if it
    raises, so ``out`` appears complete or not at all. A non-empty ``out`` is refused (``error``, naming it)
    unless ``overwrite``, which replaces it only once the new one is complete; a file at ``out`` is refused."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise error(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise error(f"{out} is not empty; choose a new folder or overwrite it (--force)")
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        staging.chmod(0o777 & ~_umask())  # mkdtemp makes it private; what it holds should not be
        yield staging
        if out.is_dir() and not any(out.iterdir()):
            out.rmdir()
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            os.replace(out, old)
            os.replace(staging, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def fsync_dir(folder: str | Path) -> None:
    """Make a rename or a new entry in ``folder`` durable."""
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
