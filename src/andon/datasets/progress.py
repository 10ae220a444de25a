"""Progress reporting for long scans: a rich bar on stderr, a caller's callback, or nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

#: ``True`` (rich bar on stderr), ``False``/``None`` (silent) or ``callback(done, total)``
Progress = bool | None | Callable[[int, int], None]


@contextmanager
def progress_bar(total: int, description: str, progress: Progress) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)``; with ``progress=True`` a transient rich bar shows items, rate and time left."""
    if callable(progress):
        done = 0

        def advance(n: int = 1) -> None:
            nonlocal done
            done += n
            progress(done, total)

        yield advance
        return
    if not progress:
        yield lambda n=1: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    with Bar(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(description, total=total)
        yield lambda n=1: bar.advance(task, n)
