"""Deterministic train/val/test splits that stay put when images are added.

Each unit (an image, or a group of images when grouping) gets a score ``u`` in [0, 1) from
``sha256(seed, key)``, where the key is the image's path relative to the data root, or the group name.
``u < test`` is test, ``u < test + val`` is val, the rest is train. The split of an image depends only on its
own key, so adding images never moves existing ones, and renaming the folder that holds the data set
changes nothing. The hash is uniform, so every class gets val/test shares close to the fractions asked
for (binomial noise: a class of n images has about ``n * test +- sqrt(n * test)`` test images).

What is guaranteed:
- Same images, seed and fractions: the same splits, on any machine.
- Adding images never moves an existing image, except in one case below (tiny strata).
- Grouping: every image of a group (a part, a module, an acquisition setting) lands in the same split.
- Splits given by a manifest are kept; new images of a group that already has a split join that split.
- Small classes: a stratum (a class; with grouping, the groups whose majority class it is) with at least 3
  units gets at least one val, one test and one train unit. When the hash alone leaves a split empty, the
  unit whose score is nearest to that split's band is moved there. This is the only case where adding
  images can move an existing one: once the class is large enough for the hash to fill the split itself,
  the moved unit goes back to its hash split. No rule can do better: a split that depends on each image
  alone can have at most two train images in total if every 3-image class must get a val and a test image.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections import Counter, defaultdict

from andon.datasets.dataset import Dataset, Sample
from andon.errors import ConfigError, DatasetError

#: ``group_by`` value that groups identical and near-duplicate images (andon.datasets.grouping)
NEAR_DUPLICATES = "near-duplicates"
#: classes (strata) with at least this many units get one val, one test and one train unit
MIN_UNITS_FOR_ALL_SPLITS = 3


def check_fractions(val: float, test: float) -> None:
    """Refuse fractions that cannot split: each in [0, 1), together below 1."""
    for name, value in (("val", val), ("test", test)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{name} fraction {value!r} is not a number; give a fraction like 0.15")
        if not 0.0 <= value < 1.0:
            raise ConfigError(f"{name} fraction {value} is outside [0, 1); give a fraction like 0.15")
    if val + test >= 1.0:
        raise ConfigError(f"val {val} + test {test} = {val + test:g} leaves no training data; keep the sum below 1")


def split_score(seed: int, key: str) -> float:
    """The unit's position in [0, 1): the first 64 bits of sha256(seed, key)."""
    digest = hashlib.sha256(f"andon-split\x1f{seed}\x1f{key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_for_score(u: float, val: float, test: float) -> str:
    if u < test:
        return "test"
    if u < test + val:
        return "val"
    return "train"


def group_of(name: str, pattern: re.Pattern[str]) -> str | None:
    """The group a file name belongs to: the regex's first group, or its whole match; ``None`` if no match."""
    m = pattern.search(name)
    if m is None:
        return None
    if pattern.groups and m.group(1) is not None:
        return m.group(1)
    return m.group(0)


def compile_group_regex(group_by: str) -> re.Pattern[str]:
    try:
        return re.compile(group_by)
    except re.error as exc:
        raise ConfigError(f"--group-by {group_by!r} is not a valid regular expression: {exc}") from None


def assign_splits(
    ds: Dataset, *, val: float = 0.15, test: float = 0.15, seed: int = 0, group_by: str | None = None
) -> Dataset:
    """Give every sample without a split one of train/val/test (see the module docstring for guarantees).

    ``group_by``: ``None`` (each image alone), ``"manifest"`` (``Sample.group``; images without one stand
    alone), ``"near-duplicates"`` (identical and look-alike images, plus manifest groups, found from the
    pixels: reads every image) or a regex applied to the file name whose first group (or whole match)
    names the group, e.g. ``r"part(\\d+)_"``. The group is recorded in ``Sample.group``.
    """
    check_fractions(val, test)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ConfigError(f"split seed {seed!r} must be an integer")
    samples = _with_groups(ds, group_by)
    units = [_unit_key(ds, s, grouped=group_by is not None) for s in samples]
    members: dict[str, list[int]] = defaultdict(list)
    for i, unit in enumerate(units):
        members[unit].append(i)
    given = _given_splits(samples, members)
    chosen: dict[str, str] = dict(given)
    scores = {unit: split_score(seed, unit) for unit in members if unit not in given}
    for unit, u in scores.items():
        chosen[unit] = split_for_score(u, val, test)
    _ensure_every_split(members, samples, chosen, scores, val, test)
    out = [s if s.split else Sample(s.path, s.label, chosen[units[i]], s.group) for i, s in enumerate(samples)]
    return ds.with_samples(out)


def _with_groups(ds: Dataset, group_by: str | None) -> list[Sample]:
    if group_by is None or group_by == "manifest":
        return list(ds.samples)
    if group_by == NEAR_DUPLICATES:
        from andon.datasets.grouping import group_near_duplicates

        return list(group_near_duplicates(ds).samples)
    pattern = compile_group_regex(group_by)
    out, unmatched = [], []
    for s in ds.samples:
        group = group_of(s.path.name, pattern)
        if group is None:
            unmatched.append(s.path.name)
        out.append(Sample(s.path, s.label, s.split, group))
    if unmatched:
        shown = ", ".join(unmatched[:3]) + (f" and {len(unmatched) - 3} more" if len(unmatched) > 3 else "")
        raise DatasetError(
            f"--group-by {group_by!r} matches no group in {len(unmatched)} file name(s): {shown}; "
            "every file name must contain the group"
        )
    return out


def _unit_key(ds: Dataset, s: Sample, *, grouped: bool) -> str:
    if grouped and s.group is not None:
        return f"group:{s.group}"
    return f"path:{ds.key(s)}"


def _given_splits(samples: list[Sample], members: dict[str, list[int]]) -> dict[str, str]:
    """Splits the manifest already fixed, per unit; a group given two different splits is an error."""
    given: dict[str, str] = {}
    for unit, idx in members.items():
        splits = {samples[i].split for i in idx if samples[i].split}
        if len(splits) > 1:
            where = ", ".join(f"{samples[i].path.name} ({samples[i].split})" for i in idx if samples[i].split)
            raise DatasetError(
                f"{unit.removeprefix('group:')!r} has images in {' and '.join(sorted(splits))}, "
                f"so it would leak between splits: {where[:300]}; give the whole group one split"
            )
        if splits:
            given[unit] = splits.pop()
    return given


def _ensure_every_split(
    members: dict[str, list[int]],
    samples: list[Sample],
    chosen: dict[str, str],
    scores: dict[str, float],
    val: float,
    test: float,
) -> None:
    """In each stratum of >= 3 units, move the hash-assigned unit nearest to an empty split's band into it."""
    bands = {"test": (0.0, test), "val": (test, test + val), "train": (test + val, 1.0)}
    required = [name for name in ("test", "val", "train") if bands[name][1] > bands[name][0]]
    strata: dict[str, list[str]] = defaultdict(list)
    for unit, idx in members.items():
        labels = Counter(samples[i].label for i in idx)
        strata[min(labels, key=lambda lab: (-labels[lab], lab))].append(unit)
    for units in strata.values():
        if len(units) < MIN_UNITS_FOR_ALL_SPLITS:
            continue
        counts = Counter(chosen[u] for u in units)
        for target in required:
            if counts[target]:
                continue
            lo, hi = bands[target]
            donors = [u for u in units if u in scores and counts[chosen[u]] >= 2]
            if not donors:
                continue
            best = min(donors, key=lambda u: (max(lo - scores[u], scores[u] - hi, 0.0), u))
            counts[chosen[best]] -= 1
            counts[target] += 1
            chosen[best] = target
