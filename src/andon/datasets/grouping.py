"""Group near-duplicate images so that a split never separates them.

Some data sets hold several pictures of one part: the magnetic-tile set images each tile under five or six
lighting settings (``exp1_..`` to ``exp6_..``), so grouping by the setting puts the same tile in train and
test. Clustering by perceptual hash finds those families (there: ~230 clusters of 2-15 images) without
knowing the naming scheme. ``assign_splits(ds, group_by="near-duplicates")`` uses this.

A cluster is named after an existing group of its members (from a manifest) or else after its first
member's path; its split is the hash of that name. Adding a near-duplicate whose path sorts first renames
the cluster and can move it: the price of finding groups from pixels rather than from names.
"""

from __future__ import annotations

from andon.datasets.dataset import Dataset, Sample
from andon.datasets.progress import Progress

NEAR_PREFIX = "near:"


def group_near_duplicates(
    ds: Dataset, *, near_duplicate_distance: int | None = None, progress: Progress = False
) -> Dataset:
    """Set ``Sample.group`` so that identical and near-duplicate images (and existing groups) share one."""
    from andon.datasets.check import DEFAULT_NEAR_DUPLICATE_DISTANCE, confirmed_pairs, scan_files

    distance = DEFAULT_NEAR_DUPLICATE_DISTANCE if near_duplicate_distance is None else near_duplicate_distance
    infos = scan_files([s.path for s in ds.samples], progress)
    edges = [(a, b) for a, b, _ in confirmed_pairs(infos, distance, include_identical=True)]
    by_group: dict[str, int] = {}
    for i, s in enumerate(ds.samples):
        if s.group is not None:
            edges.append((by_group.setdefault(s.group, i), i))
    roots = connected_components(len(ds.samples), edges)
    members: dict[int, list[int]] = {}
    for i, r in enumerate(roots):
        members.setdefault(r, []).append(i)
    names: dict[int, str | None] = {}
    for r, idx in members.items():
        given = sorted({ds.samples[i].group for i in idx if ds.samples[i].group is not None})
        if given:
            names[r] = given[0]
        elif len(idx) > 1:
            names[r] = NEAR_PREFIX + min(ds.key(ds.samples[i]) for i in idx)
        else:
            names[r] = None
    return ds.with_samples(Sample(s.path, s.label, s.split, names[roots[i]]) for i, s in enumerate(ds.samples))


def connected_components(n: int, edges: list[tuple[int, int]]) -> list[int]:
    """Union-find: the smallest member index of each node's component."""
    parent = list(range(n))

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    for a, b in edges:
        ra, rb = find(a), find(b)
        if ra != rb:
            parent[max(ra, rb)] = min(ra, rb)
    return [find(i) for i in range(n)]
