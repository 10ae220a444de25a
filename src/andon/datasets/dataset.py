"""The data set value: labelled image paths, their split and group, and a content fingerprint.

A ``Dataset`` is immutable: remapping classes or selecting a split returns a new one, so that a recipe can
derive its training view from the folder on disk without surprises.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from andon.errors import DatasetError

#: the split names, in the order reports list them
SPLITS: tuple[str, ...] = ("train", "val", "test")
#: file extensions (lower case, with the dot) that ``load_folder`` picks up
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff")

_FINGERPRINT_VERSION = b"andon-dataset-fingerprint-v1\n"


@dataclass(frozen=True)
class Sample:
    """One labelled image. ``path`` is absolute; ``split`` and ``group`` are ``None`` until known."""

    path: Path
    label: str
    split: str | None = None
    group: str | None = None


@dataclass(frozen=True)
class Dataset:
    """Labelled images under ``root`` (the class-folder root, or the folder holding the manifest)."""

    samples: tuple[Sample, ...]
    root: Path

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    @cached_property
    def classes(self) -> list[str]:
        """Sorted unique labels: the class order of the model's outputs."""
        return sorted({s.label for s in self.samples})

    @cached_property
    def class_index(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.classes)}

    def counts(self) -> dict[str, int]:
        """Images per class, in class order."""
        counter = Counter(s.label for s in self.samples)
        return {name: counter[name] for name in self.classes}

    def split_counts(self) -> dict[str, dict[str, int]]:
        """Images per split and class (``{"train": {"ok": 80, ...}, ...}``); unsplit samples under ``"-"``."""
        table: dict[str, dict[str, int]] = {}
        for s in self.samples:
            row = table.setdefault(s.split or "-", dict.fromkeys(self.classes, 0))
            row[s.label] += 1
        order = {name: i for i, name in enumerate((*SPLITS, "-"))}
        return dict(sorted(table.items(), key=lambda kv: order[kv[0]]))

    def key(self, sample: Sample) -> str:
        """The sample's stable identity: its path relative to ``root`` (POSIX), or absolute when outside it."""
        try:
            return sample.path.relative_to(self.root).as_posix()
        except ValueError:
            return sample.path.as_posix()

    def with_samples(self, samples) -> Dataset:
        return Dataset(samples=tuple(samples), root=self.root)

    def remap(self, mapping: dict[str, str], *, strict: bool = False) -> Dataset:
        """Rename classes: exact names first, then glob rules in order (first match wins); others keep theirs.

        ``strict`` refuses rules that match no class (what the CLI does, to catch typos); recipes applied
        to an evaluation folder that lacks a class leave it off.
        """
        from andon.datasets.remap import remap_labels

        table = remap_labels(self.classes, mapping, strict=strict)
        return self.with_samples(
            s if table[s.label] == s.label else Sample(s.path, table[s.label], s.split, s.group) for s in self.samples
        )

    def split(self, name: str) -> Dataset:
        """The samples of one split (``train``, ``val`` or ``test``); the root is kept."""
        if name not in SPLITS:
            raise DatasetError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        if not any(s.split for s in self.samples) and self.samples:
            raise DatasetError(
                f"the data set under {self.root} has no splits yet; assign them with assign_splits() "
                "or a manifest with a split column"
            )
        return self.with_samples(s for s in self.samples if s.split == name)

    def fingerprint(self) -> str:
        """sha256 over every file's contents and label, independent of file names and order.

        Two folders with the same images and labels have the same fingerprint, wherever they live; any
        changed pixel or label changes it. Splits are not part of it (they follow from the recipe).
        """
        return self._fingerprint

    @cached_property
    def _fingerprint(self) -> str:
        digests = _file_digests([s.path for s in self.samples])
        lines = sorted(f"{d}\t{s.label}\n" for d, s in zip(digests, self.samples))
        h = hashlib.sha256(_FINGERPRINT_VERSION)
        for line in lines:
            h.update(line.encode("utf-8"))
        return h.hexdigest()


def file_sha256(path: Path) -> str:
    """sha256 of a file's bytes; a missing file is a ``DatasetError`` naming it."""
    try:
        with open(path, "rb") as f:
            return hashlib.file_digest(f, "sha256").hexdigest()
    except FileNotFoundError:
        raise DatasetError(f"image {path} does not exist (was it moved or deleted after loading?)") from None
    except OSError as exc:
        raise DatasetError(f"cannot read image {path}: {exc.strerror or exc}") from None


def _file_digests(paths: list[Path]) -> list[str]:
    if len(paths) < 64:
        return [file_sha256(p) for p in paths]
    with ThreadPoolExecutor(max_workers=8) as pool:  # hashlib releases the GIL: disk and hash overlap
        return list(pool.map(file_sha256, paths))
