"""``andon data check``: find what would spoil training before a training run finds it the slow way.

Every file is read once (threads: decoding releases the GIL): sha256 of the bytes finds identical copies;
the header probe and a full decode (the same decoder training uses) find files that are not images,
truncated or corrupt; a perceptual hash of the decoded pixels finds near-duplicates. A near-duplicate pair
in two splits is a leak (the test set has seen training images); with two labels it is a labelling
conflict. A broken file does not stop the check: every one is listed, with the reason.
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from andon.datasets.dataset import Dataset
from andon.datasets.folder import FolderScan
from andon.datasets.phash import detail_hash, hamming, near_pairs, phash
from andon.datasets.progress import Progress, progress_bar
from andon.datasets.report import CheckReport, DuplicateGroup, NearDuplicate, Unreadable
from andon.errors import AndonError, ConfigError
from andon.inspect.decoding import decode, probe

#: near-duplicate threshold in pHash bits of 64: re-saved, re-lit and slightly shifted copies are within 10
#: (NEU steel, magnetic tile); unrelated images of one texture are mostly 14-32 apart
DEFAULT_NEAR_DUPLICATE_DISTANCE = 10
#: a pHash pair is confirmed when its detail hashes differ in at most this many of 128 bits (see phash.py)
DETAIL_DISTANCE = 32
#: a class with fewer readable images cannot be split and learnt
MIN_IMAGES_PER_CLASS = 5
#: fewer than this per class is trainable but gives noisy metrics
FEW_IMAGES_PER_CLASS = 30
#: images smaller than this on a side hold too little detail for defects
MIN_SIDE = 32
#: largest/smallest class above this ratio deserves a class-weight or more data
IMBALANCE_RATIO = 20
_EXAMPLES = 3


@dataclass(frozen=True)
class ImageInfo:
    """One file as the check saw it; ``error`` is set when it is not a usable image."""

    sha256: str | None
    error: str | None = None
    width: int = 0
    height: int = 0
    mode: str = ""
    format: str = ""
    phash: int | None = None
    detail: int | None = None


def inspect_file(path: Path) -> ImageInfo:
    """Read, hash, probe and fully decode one file; never raises for a bad file."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return ImageInfo(None, "missing: the file does not exist")
    except OSError as exc:
        return ImageInfo(None, f"cannot read: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    try:
        header = probe(data)
        pixels = decode(data, target_hw=(64, 64), gray=True)
    except AndonError as exc:
        return ImageInfo(digest, str(exc))
    except (cv2.error, ValueError, OSError) as exc:  # decoder failures that are not ours to name
        return ImageInfo(digest, f"corrupt: {str(exc).strip().splitlines()[-1][:200]}")
    return ImageInfo(
        digest, None, header.width, header.height, header.mode, header.format, phash(pixels), detail_hash(pixels)
    )


def scan_files(paths: list[Path], progress: Progress = False) -> list[ImageInfo]:
    """``inspect_file`` over all paths, in parallel, in order."""
    workers = max(1, min(8, (os.cpu_count() or 1) * 2))
    with progress_bar(len(paths), "checking images", progress) as advance, ThreadPoolExecutor(workers) as pool:
        infos = []
        for info in pool.map(inspect_file, paths, chunksize=16):
            infos.append(info)
            advance(1)
    return infos


def check_dataset(
    ds: Dataset,
    *,
    near_duplicate_distance: int | None = DEFAULT_NEAR_DUPLICATE_DISTANCE,
    min_images_per_class: int = MIN_IMAGES_PER_CLASS,
    progress: Progress = False,
    folder_scan: FolderScan | None = None,
) -> CheckReport:
    """Check ``ds`` (with splits assigned, to find leaks) and return the findings.

    ``near_duplicate_distance``: Hamming distance (0-32 bits of 64) under which two images count as
    near-duplicates; ``None`` skips the search. ``folder_scan`` adds what the folder scan left out.
    """
    if near_duplicate_distance is not None and not 0 <= near_duplicate_distance <= 32:
        raise ConfigError(f"near-duplicate distance {near_duplicate_distance} is outside 0-32 (bits of 64)")
    samples = ds.samples
    infos = scan_files([s.path for s in samples], progress)
    good = [i for i, info in enumerate(infos) if info.error is None]
    report = CheckReport(
        root=ds.root, n_images=len(samples), counts=_counts(ds, good), near_duplicate_distance=near_duplicate_distance
    )
    for i in good:
        report.sizes[(infos[i].width, infos[i].height)] += 1
        report.modes[infos[i].mode] += 1
        report.formats[infos[i].format] += 1
    report.unreadable = [
        Unreadable(samples[i].path, samples[i].label, info.error)
        for i, info in enumerate(infos)
        if info.error is not None
    ]
    report.exact_duplicates = _exact_duplicates(ds, infos)
    uniform = False
    if near_duplicate_distance is not None and good:
        report.near_duplicates, uniform = _near_duplicates(ds, infos, good, near_duplicate_distance)
    _judge(report, ds, min_images_per_class, uniform, folder_scan)
    return report


def _counts(ds: Dataset, good: list[int]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter] = {label: Counter() for label in ds.classes}
    for i in good:
        s = ds.samples[i]
        counts[s.label][s.split or "-"] += 1
    order = ("train", "val", "test", "-")
    return {label: {s: c[s] for s in order if c[s]} for label, c in counts.items()}


def _exact_duplicates(ds: Dataset, infos: list[ImageInfo]) -> list[DuplicateGroup]:
    by_digest: dict[str, list[int]] = defaultdict(list)
    for i, info in enumerate(infos):
        if info.sha256 is not None and info.error is None:
            by_digest[info.sha256].append(i)
    groups = []
    for idx in by_digest.values():
        if len(idx) > 1:
            ss = [ds.samples[i] for i in idx]
            groups.append(
                DuplicateGroup(tuple(s.path for s in ss), tuple(s.label for s in ss), tuple(s.split for s in ss))
            )
    return groups


def confirmed_pairs(
    infos: list[ImageInfo], max_distance: int, *, include_identical: bool = False
) -> list[tuple[int, int, int]]:
    """Index pairs ``(i, j, phash distance)`` of readable images that are near-duplicates by both hashes.

    Identical files are left out unless ``include_identical`` (the exact-duplicate check reports them).
    """
    good = [i for i, info in enumerate(infos) if info.error is None]
    if not good:
        return []
    hashes = np.array([infos[i].phash for i in good], dtype=np.uint64)
    pairs = []
    for a, b, d in near_pairs(hashes, max_distance):
        ia, ib = good[a], good[b]
        if infos[ia].sha256 == infos[ib].sha256:
            if include_identical:
                pairs.append((ia, ib, d))
        elif hamming(infos[ia].detail, infos[ib].detail) <= DETAIL_DISTANCE:
            pairs.append((ia, ib, d))
    return pairs


def _near_duplicates(
    ds: Dataset, infos: list[ImageInfo], good: list[int], max_distance: int
) -> tuple[list[NearDuplicate], bool]:
    """Near-duplicate pairs (identical files excluded), and whether most images look alike.

    When one cluster of look-alikes holds most of the data set (aligned images of identical parts), the
    hash cannot tell copies from different parts, and the pairs say nothing about leaks.
    """
    from andon.datasets.grouping import connected_components

    pairs = confirmed_pairs(infos, max_distance)
    roots = connected_components(len(infos), [(a, b) for a, b, _ in pairs])
    largest = max(Counter(roots[i] for i in {x for a, b, _ in pairs for x in (a, b)}).values(), default=0)
    uniform = largest > max(20, len(good) // 2)
    found = []
    for a, b, d in sorted(pairs, key=lambda p: (p[2], p[0], p[1])):
        sa, sb = ds.samples[a], ds.samples[b]
        found.append(NearDuplicate(sa.path, sb.path, d, (sa.label, sb.label), (sa.split, sb.split)))
    return found, uniform


def _judge(report: CheckReport, ds: Dataset, min_per_class: int, uniform: bool, scan: FolderScan | None) -> None:
    problems, warnings = report.problems, report.warnings
    if scan is not None:
        _folder_warnings(report, scan)
    if report.n_images == 0:
        problems.append(f"no images in {ds.root}")
        return
    if report.n_readable == 0:
        problems.append(f"none of the {report.n_images} files is a readable image")
        return
    if report.unreadable:  # training reads every image and stops at the first it cannot decode
        problems.append(
            f"{len(report.unreadable)} unreadable file(s) (listed above) would stop training; fix or remove them"
        )
    _class_findings(report, min_per_class)
    _duplicate_findings(report)
    _near_findings(report, uniform)
    _split_findings(report)
    small = sum(n for (w, h), n in report.sizes.items() if min(w, h) < MIN_SIDE)
    if small:
        warnings.append(f"{small} image(s) smaller than {MIN_SIDE} px on a side hold little detail")


def _folder_warnings(report: CheckReport, scan: FolderScan) -> None:
    if scan.stray_images:
        report.warnings.append(
            f"{len(scan.stray_images)} image(s) directly in {report.root} are in no class "
            f"folder and were ignored (e.g. {scan.stray_images[0].name})"
        )
    if scan.empty_classes:
        report.warnings.append(f"class folder(s) without images: {', '.join(scan.empty_classes)}")


def _class_findings(report: CheckReport, min_per_class: int) -> None:
    totals = report.class_totals()
    readable = {k: v for k, v in totals.items() if v > 0}
    if len(readable) < 2:
        report.problems.append(f"a classifier needs at least 2 classes; found {', '.join(readable) or 'none'}")
    scarce = {k: v for k, v in totals.items() if v < min_per_class}
    if scarce:
        report.problems.append(
            f"class(es) with fewer than {min_per_class} readable images: "
            + ", ".join(f"{k} ({v})" for k, v in scarce.items())
        )
    few = {k: v for k, v in totals.items() if min_per_class <= v < FEW_IMAGES_PER_CLASS}
    if few:
        report.warnings.append(
            f"class(es) with fewer than {FEW_IMAGES_PER_CLASS} images give noisy metrics: "
            + ", ".join(f"{k} ({v})" for k, v in few.items())
        )
    if len(readable) >= 2 and max(readable.values()) > IMBALANCE_RATIO * min(readable.values()):
        big, small = max(readable, key=readable.get), min(readable, key=readable.get)
        report.warnings.append(f"classes are imbalanced: {big} has {readable[big]} images, {small} {readable[small]}")


def _examples(paths: list[tuple[Path, ...]], report: CheckReport) -> str:
    shown = "; ".join(" = ".join(report.relative(p) for p in group) for group in paths[:_EXAMPLES])
    return f"e.g. {shown}" + (" ..." if len(paths) > _EXAMPLES else "")


def _duplicate_findings(report: CheckReport) -> None:
    groups = report.exact_duplicates
    conflicts = [g for g in groups if g.conflicting]
    leaks = [g for g in groups if g.leak and not g.conflicting]
    redundant = [g for g in groups if not g.conflicting and not g.leak]
    if conflicts:
        report.problems.append(
            f"{len(conflicts)} identical file set(s) carry different labels: "
            + _examples([g.paths for g in conflicts], report)
        )
    if leaks:
        report.problems.append(
            f"{len(leaks)} identical file set(s) straddle splits (test images seen in "
            "training): " + _examples([g.paths for g in leaks], report)
        )
    if redundant:
        extra = sum(len(g.paths) - 1 for g in redundant)
        report.warnings.append(
            f"{extra} redundant identical copies (same class and split) weigh their image "
            "more in training: " + _examples([g.paths for g in redundant], report)
        )


def _near_findings(report: CheckReport, uniform: bool) -> None:
    pairs = report.near_duplicates
    if not pairs:
        return
    conflicts = [(p.a, p.b) for p in pairs if p.conflicting]
    leaks = [(p.a, p.b) for p in pairs if p.leak]
    d = report.near_duplicate_distance
    if uniform:
        report.warnings.append(
            f"most images look alike to the perceptual hash ({len(pairs)} pairs within {d} bits), as aligned "
            "images of identical parts do; near-duplicates cannot be told apart from different parts here"
        )
        return
    if conflicts:
        report.problems.append(
            f"{len(conflicts)} near-duplicate pair(s) (within {d} bits) carry different labels: "
            + _examples(conflicts, report)
        )
    if leaks:
        report.problems.append(
            f"{len(leaks)} near-duplicate pair(s) straddle splits, so the test set has seen training images; "
            "group them (--group-by) or remove copies: " + _examples(leaks, report)
        )
    rest = len(pairs) - len({*conflicts, *leaks})
    if rest:
        report.warnings.append(f"{rest} near-duplicate pair(s) within one class and split (within {d} bits)")


def _split_findings(report: CheckReport) -> None:
    present = {s for row in report.counts.values() for s in row if s != "-"}
    for split in ("val", "test"):
        if split not in present:
            continue
        lacking = [label for label, row in report.counts.items() if sum(row.values()) and not row.get(split)]
        if lacking:
            report.warnings.append(
                f"no {split} images for class(es) {', '.join(lacking)}: their {split} metrics will be missing"
            )
