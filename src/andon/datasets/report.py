"""What ``check_dataset`` found, as data (``as_dict`` for ``--json``) and as rich tables for people."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from andon.datasets.dataset import SPLITS

_MAX_ROWS = 15


@dataclass(frozen=True)
class Unreadable:
    """A file that is not a usable image: missing, not an image, truncated, corrupt or too large."""

    path: Path
    label: str
    reason: str


@dataclass(frozen=True)
class DuplicateGroup:
    """Files with identical bytes. Different labels conflict; different splits leak."""

    paths: tuple[Path, ...]
    labels: tuple[str, ...]
    splits: tuple[str | None, ...]

    @property
    def conflicting(self) -> bool:
        return len(set(self.labels)) > 1

    @property
    def leak(self) -> bool:
        return len({s for s in self.splits if s}) > 1


@dataclass(frozen=True)
class NearDuplicate:
    """Two images whose perceptual hashes differ in ``distance`` of 64 bits: the same view, re-saved or re-lit."""

    a: Path
    b: Path
    distance: int
    labels: tuple[str, str]
    splits: tuple[str | None, str | None]

    @property
    def conflicting(self) -> bool:
        return self.labels[0] != self.labels[1]

    @property
    def leak(self) -> bool:
        return all(self.splits) and self.splits[0] != self.splits[1]


@dataclass
class CheckReport:
    """Findings of a data check. ``problems`` spoil training (exit 1); ``warnings`` deserve a look."""

    root: Path
    n_images: int
    counts: dict[str, dict[str, int]]  # class -> split ("-" when none) -> readable images
    sizes: Counter = field(default_factory=Counter)  # (width, height) -> images
    modes: Counter = field(default_factory=Counter)  # PIL mode -> images
    formats: Counter = field(default_factory=Counter)
    unreadable: list[Unreadable] = field(default_factory=list)
    exact_duplicates: list[DuplicateGroup] = field(default_factory=list)
    near_duplicates: list[NearDuplicate] = field(default_factory=list)
    near_duplicate_distance: int | None = None
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    @property
    def n_readable(self) -> int:
        return self.n_images - len(self.unreadable)

    def class_totals(self) -> dict[str, int]:
        return {label: sum(per_split.values()) for label, per_split in self.counts.items()}

    def as_dict(self) -> dict:
        """JSON-ready: paths relative to the root where possible."""
        rel = self.relative
        return {
            "root": str(self.root),
            "ok": self.ok,
            "images": self.n_images,
            "readable": self.n_readable,
            "classes": self.counts,
            "sizes": {f"{w}x{h}": n for (w, h), n in self.sizes.most_common()},
            "modes": dict(self.modes.most_common()),
            "formats": dict(self.formats.most_common()),
            "unreadable": [{"path": rel(u.path), "label": u.label, "reason": u.reason} for u in self.unreadable],
            "exact_duplicates": [
                {
                    "paths": [rel(p) for p in g.paths],
                    "labels": list(g.labels),
                    "splits": list(g.splits),
                    "conflicting_labels": g.conflicting,
                    "leak": g.leak,
                }
                for g in self.exact_duplicates
            ],
            "near_duplicate_distance": self.near_duplicate_distance,
            "near_duplicates": [
                {
                    "a": rel(d.a),
                    "b": rel(d.b),
                    "distance": d.distance,
                    "labels": list(d.labels),
                    "splits": list(d.splits),
                    "conflicting_labels": d.conflicting,
                    "leak": d.leak,
                }
                for d in self.near_duplicates
            ],
            "problems": list(self.problems),
            "warnings": list(self.warnings),
        }

    def relative(self, path: Path) -> str:
        try:
            return path.relative_to(self.root).as_posix()
        except ValueError:
            return path.as_posix()

    def __rich__(self):
        from rich.console import Group

        return Group(*self.renderables())

    def renderables(self) -> list:
        """The summary tables, in reading order; empty sections are left out."""
        parts = [self._classes_table(), self._images_table()]
        if self.unreadable:
            parts.append(self._unreadable_table())
        if self.exact_duplicates or self.near_duplicates:
            parts.append(self._duplicates_table())
        parts.append(self._verdict())
        return parts

    def _classes_table(self):
        from rich.table import Table

        splits = [s for s in (*SPLITS, "-") if any(s in row for row in self.counts.values())]
        table = Table(title=f"Classes in {self.root}", title_justify="left")
        table.add_column("class")
        for s in splits:
            table.add_column("images" if s == "-" else s, justify="right")
        if splits != ["-"]:
            table.add_column("total", justify="right")
        for label, row in self.counts.items():
            cells = [str(row.get(s, 0)) for s in splits]
            if splits != ["-"]:
                cells.append(str(sum(row.values())))
            table.add_row(label, *cells)
        return table

    def _images_table(self):
        from rich.table import Table

        table = Table(title="Images", title_justify="left", show_header=False)
        table.add_column("what")
        table.add_column("value")
        table.add_row("files", f"{self.n_images} ({self.n_readable} readable, {len(self.unreadable)} unreadable)")
        if self.sizes:
            widths = [w for w, _ in self.sizes.elements()]
            heights = [h for _, h in self.sizes.elements()]
            common = ", ".join(f"{w}x{h} ({n})" for (w, h), n in self.sizes.most_common(3))
            table.add_row(
                "sizes",
                f"{len(self.sizes)} distinct; width {min(widths)}-{max(widths)}, "
                f"height {min(heights)}-{max(heights)}; most common {common}",
            )
        if self.modes:
            table.add_row("modes", ", ".join(f"{m} ({n})" for m, n in self.modes.most_common()))
            table.add_row("formats", ", ".join(f"{m} ({n})" for m, n in self.formats.most_common()))
        return table

    def _unreadable_table(self):
        from rich.table import Table

        table = Table(title=f"Unreadable files ({len(self.unreadable)})", title_justify="left")
        table.add_column("file")
        table.add_column("why")
        for u in self.unreadable[:_MAX_ROWS]:
            table.add_row(self.relative(u.path), u.reason)
        if len(self.unreadable) > _MAX_ROWS:
            table.add_row(f"... {len(self.unreadable) - _MAX_ROWS} more (see --json)", "")
        return table

    def _duplicates_table(self):
        from rich.table import Table

        table = Table(
            title=f"Duplicates ({len(self.exact_duplicates)} identical sets, "
            f"{len(self.near_duplicates)} near-duplicate pairs)",
            title_justify="left",
        )
        for name in ("kind", "files", "labels", "splits", "finding"):
            table.add_column(name)
        rows = [("identical", g.paths, g.labels, g.splits, g.conflicting, g.leak) for g in self.exact_duplicates]
        rows += [
            (f"near (d={d.distance})", (d.a, d.b), d.labels, d.splits, d.conflicting, d.leak)
            for d in self.near_duplicates
        ]
        rows.sort(key=lambda r: (not r[4], not r[5]))  # conflicts and leaks first
        for kind, paths, labels, splits, conflicting, leak in rows[:_MAX_ROWS]:
            finding = " + ".join(x for x, on in (("conflicting labels", conflicting), ("split leak", leak)) if on)
            table.add_row(
                kind,
                "\n".join(self.relative(p) for p in paths),
                ", ".join(labels),
                ", ".join(s or "-" for s in splits),
                finding or "redundant",
            )
        if len(rows) > _MAX_ROWS:
            table.add_row("...", f"{len(rows) - _MAX_ROWS} more (see --json)", "", "", "")
        return table

    def _verdict(self):
        from rich.text import Text

        text = Text()
        for w in self.warnings:
            text.append("warning: ", style="yellow bold").append(w + "\n")
        for p in self.problems:
            text.append("problem: ", style="red bold").append(p + "\n")
        if self.ok:
            text.append("OK: ready to train", style="green bold")
        else:
            text.append(f"{len(self.problems)} problem(s) would spoil training", style="red bold")
        return text
