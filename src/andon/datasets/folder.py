"""Folder-per-class data sets: ``root/<class>/**/<image>``.

Hidden entries (``.masks``, ``.DS_Store``) and folders starting with ``_`` (``_rejected``, ``_unsorted``) are
skipped, so masks, notes and parked images can live beside the classes without becoming one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from andon.datasets.dataset import IMAGE_EXTENSIONS, Dataset, Sample
from andon.errors import DatasetError


@dataclass(frozen=True)
class FolderScan:
    """What a class-folder scan found, including what it left out (for ``andon data check``)."""

    samples: tuple[Sample, ...]
    stray_images: tuple[Path, ...]  # images directly in root, in no class folder
    empty_classes: tuple[str, ...]  # class folders with no image


def _normalise_extensions(extensions) -> frozenset[str]:
    if isinstance(extensions, str):
        extensions = [extensions]
    exts = frozenset(e.lower() if e.startswith(".") else f".{e.lower()}" for e in extensions)
    if not exts:
        raise DatasetError(f"no image extensions given; the defaults are {', '.join(IMAGE_EXTENSIONS)}")
    return exts


def _skipped(name: str) -> bool:
    return name.startswith((".", "_"))


def _images_below(class_dir: Path, exts: frozenset[str]) -> list[Path]:
    found = []
    seen_dirs: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(class_dir, followlinks=True):
        st = os.stat(dirpath)
        if (st.st_dev, st.st_ino) in seen_dirs:  # a symlink loop
            dirnames[:] = []
            continue
        seen_dirs.add((st.st_dev, st.st_ino))
        dirnames[:] = sorted(d for d in dirnames if not _skipped(d))
        base = Path(dirpath)
        found.extend(base / f for f in filenames if not f.startswith(".") and os.path.splitext(f)[1].lower() in exts)
    return found


def scan_folder(root: Path | str, extensions=IMAGE_EXTENSIONS) -> FolderScan:
    """Find the labelled images under ``root``; a missing or non-folder root is a ``DatasetError``."""
    root = Path(root).expanduser()
    if not root.exists():
        raise DatasetError(f"data folder {root} does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root} is not a folder; give a folder with one sub-folder per class, or a .csv manifest")
    root = root.resolve()
    exts = _normalise_extensions(extensions)
    samples: list[Sample] = []
    empty: list[str] = []
    stray: list[Path] = []
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if _skipped(entry.name):
            continue
        if entry.is_dir():
            images = _images_below(Path(entry.path), exts)
            if not images:
                empty.append(entry.name)
            samples.extend(Sample(path=p, label=entry.name) for p in images)
        elif os.path.splitext(entry.name)[1].lower() in exts:
            stray.append(Path(entry.path))
    samples.sort(key=lambda s: s.path.relative_to(root).as_posix())
    return FolderScan(samples=tuple(samples), stray_images=tuple(stray), empty_classes=tuple(empty))


def load_folder(root: Path | str, extensions=IMAGE_EXTENSIONS, *, allow_empty: bool = False) -> Dataset:
    """Load ``root/<class>/**/*.{jpg,jpeg,png,bmp,tif,tiff}``; the class is the first folder below ``root``.

    A folder without any image is a ``DatasetError`` (unless ``allow_empty``: ``andon data check`` reports
    it instead) whose message says what was found instead.
    """
    scan = scan_folder(root, extensions)
    root_path = Path(root).expanduser().resolve()
    if not scan.samples and not allow_empty:
        raise DatasetError(no_images_message(root_path, scan, extensions))
    return Dataset(samples=scan.samples, root=root_path)


def no_images_message(root: Path, scan: FolderScan, extensions=IMAGE_EXTENSIONS) -> str:
    exts = ", ".join(sorted(e.lstrip(".") for e in _normalise_extensions(extensions)))
    message = f"no images in {root}: expected {root}/<class>/<image> with extension {exts}"
    if scan.stray_images:
        message += (
            f"; found {len(scan.stray_images)} image(s) directly in {root} - put them in one sub-folder per class"
        )
    elif scan.empty_classes:
        message += f"; the class folder(s) {', '.join(scan.empty_classes[:5])} hold no image"
    return message
