"""Progress bars with live loss and accuracy, and the run's summary table (rich)."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.table import Table

T = TypeVar("T")


def make_progress(console: Console | None = None) -> Progress:
    """One bar per phase (cache, epoch, validation), with a free text field for live figures."""
    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[status]}"),
        console=console,
        transient=False,
    )


def track(items: Iterable[T], progress: Progress | None, description: str, total: int) -> Iterator[tuple[T, object]]:
    """Iterate ``items`` with a bar; yields (item, task id) so the caller can update the status text."""
    if progress is None:
        for item in items:
            yield item, None
        return
    task = progress.add_task(description, total=total, status="")
    try:
        for item in items:
            yield item, task
            progress.advance(task)
    finally:
        # finished bars go: a long run would otherwise stack two per epoch, taller than the terminal (the
        # caller prints a summary line per epoch instead)
        progress.remove_task(task)  # type: ignore[arg-type]


def set_status(progress: Progress | None, task: object, text: str) -> None:
    if progress is not None and task is not None:
        progress.update(task, status=text)  # type: ignore[arg-type]


def summary_table(title: str, rows: dict[str, dict[str, float]], columns: list[str]) -> Table:
    """A table of headline numbers: one row per split (val, test), one column per metric."""
    table = Table(title=title)
    table.add_column("split")
    for col in columns:
        table.add_column(col, justify="right")
    for split, values in rows.items():
        table.add_row(split, *(_fmt(values.get(col, float("nan"))) for col in columns))
    return table


def _fmt(value: float) -> str:
    return "-" if value != value else f"{value:.4f}"
