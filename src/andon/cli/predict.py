"""``andon predict MODEL IMAGES...|DIR``: verdicts for image files, as a table, JSON lines or CSV.

An image that cannot be read is reported on its own line and does not stop the others; the exit code is 1
when any image failed, 0 when all were inspected (2 is for errors that stop everything, like a bad model).
"""

from __future__ import annotations

import csv
import enum
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import typer


class Format(str, enum.Enum):
    table = "table"
    jsonl = "jsonl"
    csv = "csv"


def register(app: typer.Typer) -> None:
    app.command("predict", no_args_is_help=True)(predict)


def predict(
    model: Path = typer.Argument(..., help="An exported andon .onnx file."),
    inputs: list[Path] = typer.Argument(..., help="Image files and/or folders (searched recursively)."),
    fmt: Format = typer.Option(Format.table, "--format", "-f", help="Output: a table, JSON lines or CSV."),
    heatmaps: Path | None = typer.Option(None, "--heatmaps", help="Write a heatmap overlay PNG per image here."),
    batch: int = typer.Option(16, "--batch", min=1, help="Images per onnxruntime call."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="onnxruntime threads (default: physical cores)."),
) -> None:
    """Inspect images and print pass / review / reject for each, with the label and P(defect)."""
    from andon.inspect.inspector import Inspector

    inspector = Inspector.load(model, threads=threads)
    items = list(expand_inputs(inputs))
    writer = _Writer(fmt, inspector.card.classes)
    from andon.datasets.progress import progress_bar

    with progress_bar(len(items), "inspecting", fmt == Format.table and sys.stderr.isatty()) as advance:
        for start in range(0, len(items), batch):
            for row in inspect_items(inspector, items[start : start + batch], heatmaps):
                writer.add(row)
            advance(min(batch, len(items) - start))
    writer.finish()
    if writer.failed:
        raise typer.Exit(code=1)


@dataclass
class Item:
    """One input: the file, and the name its heatmap gets (relative to the folder it was found in)."""

    path: Path
    name: str
    error: str | None = None


def expand_inputs(inputs: list[Path]) -> Iterator[Item]:
    """Files as given; folders recursively (image extensions only, hidden entries skipped), sorted."""
    from andon.datasets.dataset import IMAGE_EXTENSIONS

    for path in inputs:
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
            )
            if not found:
                yield Item(path, path.name, f"no images ({', '.join(IMAGE_EXTENSIONS)}) in folder {path}")
            for p in found:
                yield Item(p, (Path(path.name) / p.relative_to(path)).as_posix())
        elif path.exists():
            yield Item(path, path.name)
        else:
            yield Item(path, path.name, f"{path} does not exist")


@dataclass
class Row:
    path: str
    result: object | None = None
    error: str | None = None
    heatmap: str | None = None


def inspect_items(inspector, items: list[Item], heatmap_dir: Path | None) -> list[Row]:
    """Verdicts for a batch of files, one onnxruntime call; failures become rows with their error."""
    from andon.errors import AndonError

    frames, rows, slots = [], [], []
    for item in items:
        row = Row(str(item.path), error=item.error)
        rows.append(row)
        if item.error:
            continue
        try:
            frames.append(item.path.read_bytes())
            slots.append((row, item))
        except OSError as exc:
            row.error = f"cannot read {item.path}: {exc.strerror or exc}"
    results = inspector.inspect_batch(frames, heatmap=heatmap_dir is not None, on_error="return") if frames else []
    for (row, item), frame, result in zip(slots, frames, results):
        if isinstance(result, AndonError):
            row.error = str(result)
            continue
        row.result = result
        if heatmap_dir is not None:
            row.heatmap = str(write_overlay(inspector, frame, result, heatmap_dir, item.name))
    return rows


def write_overlay(inspector, frame: bytes, result, out_dir: Path, name: str) -> Path:
    """The heatmap over the full-resolution frame, as ``out_dir/<name>.heatmap.png`` (written atomically)."""
    from andon.inspect import decoding
    from andon.inspect.heatmap import heatmap_png

    image = decoding.decode(
        frame, max_pixels=inspector.preprocessor.max_pixels, allowed_formats=inspector.preprocessor.allowed_formats
    )
    png = heatmap_png(image, result.heatmap, spec=inspector.card.preprocess)
    out = out_dir / Path(name).with_suffix(".heatmap.png")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_bytes(png)
    tmp.replace(out)
    return out


class _Writer:
    """Streams JSON lines / CSV as rows arrive; collects the table and prints it at the end."""

    def __init__(self, fmt: Format, classes: list[str]) -> None:
        self.fmt, self.classes = fmt, classes
        self.rows: list[Row] = []
        self.failed = 0
        self.counts = {"pass": 0, "review": 0, "reject": 0}
        if fmt == Format.csv:
            self._csv = csv.writer(sys.stdout, lineterminator="\n")
            self._csv.writerow(
                ["path", "decision", "label", "defect_score", *(f"p_{c}" for c in classes), "heatmap", "error"]
            )

    def add(self, row: Row) -> None:
        if row.error:
            self.failed += 1
        else:
            self.counts[row.result.decision] += 1
        if self.fmt == Format.jsonl:
            sys.stdout.write(json.dumps(self._record(row)) + "\n")
            sys.stdout.flush()
        elif self.fmt == Format.csv:
            r = row.result
            self._csv.writerow(
                [
                    row.path,
                    r.decision if r else "",
                    r.label if r else "",
                    f"{r.defect_score:.6f}" if r else "",
                    *((f"{r.scores[c]:.6f}" if r else "") for c in self.classes),
                    row.heatmap or "",
                    row.error or "",
                ]
            )
            sys.stdout.flush()
        else:
            self.rows.append(row)

    def _record(self, row: Row) -> dict:
        if row.error:
            return {"path": row.path, "error": row.error}
        out = {"path": row.path, **row.result.to_dict()}
        if row.heatmap:
            out["heatmap"] = row.heatmap
        return out

    def finish(self) -> None:
        summary = (
            f"{sum(self.counts.values()) + self.failed} image(s): {self.counts['pass']} pass, "
            f"{self.counts['review']} review, "
            f"{self.counts['reject']} reject, {self.failed} failed"
        )
        if self.fmt != Format.table:
            typer.echo(summary, err=True)
            return
        from rich.console import Console

        console = Console()
        console.print(self._table())
        console.print(summary)

    def _table(self):
        from rich.markup import escape
        from rich.table import Table

        table = Table()
        for col, justify in (
            ("image", "left"),
            ("decision", "left"),
            ("label", "left"),
            ("P(defect)", "right"),
            ("why", "left"),
        ):
            table.add_column(col, justify=justify, overflow="fold")
        colour = {"pass": "green", "review": "yellow", "reject": "red"}
        for row in self.rows:
            r = row.result
            if r is None:
                table.add_row(escape(row.path), "[bold magenta]error[/]", "", "", escape(row.error or ""))
                continue
            table.add_row(
                escape(row.path),
                f"[bold {colour[r.decision]}]{r.decision}[/]",
                escape(r.label),
                f"{r.defect_score:.4f}",
                escape("; ".join(r.reasons)),
            )
        return table
