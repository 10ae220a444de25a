"""CSV manifests: ``path,label[,split][,group]``, for data that is not laid out one folder per class.

Relative paths resolve against the CSV's folder, so a manifest travels with its images. Every error names
the line, because manifests are written by hand and by scripts, and both get lines wrong.
"""

from __future__ import annotations

import csv
import io
import os
from pathlib import Path

from andon.datasets.dataset import SPLITS, Dataset, Sample
from andon.datasets.folder import load_folder
from andon.errors import DatasetError
from andon.fileio import write_atomic

REQUIRED_COLUMNS = ("path", "label")
OPTIONAL_COLUMNS = ("split", "group")
_MAX_LISTED = 5


def load_manifest(csv_path: Path | str) -> Dataset:
    """Read a manifest; the data set's root is the CSV's folder."""
    csv_path = Path(csv_path).expanduser()
    if not csv_path.is_file():
        raise DatasetError(
            f"manifest {csv_path} does not exist" if not csv_path.exists() else f"manifest {csv_path} is not a file"
        )
    csv_path = csv_path.resolve()
    try:
        text = csv_path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DatasetError(f"manifest {csv_path} is not UTF-8 text (byte {exc.start}); save it as UTF-8 CSV") from None
    root = csv_path.parent
    reader = csv.reader(io.StringIO(text, newline=""))
    columns = _read_header(reader, csv_path)
    samples: list[Sample] = []
    first_line: dict[Path, int] = {}
    missing: list[tuple[int, str]] = []
    for row in reader:
        line = reader.line_num
        if not any(cell.strip() for cell in row):
            continue
        sample, raw_path = _parse_row(row, columns, line, csv_path, root)
        if sample.path in first_line:
            raise DatasetError(
                f"{csv_path.name} line {line}: {raw_path!r} is listed again "
                f"(first on line {first_line[sample.path]}); list every image once"
            )
        first_line[sample.path] = line
        if not sample.path.is_file():
            missing.append((line, raw_path))
        samples.append(sample)
    if missing:
        raise DatasetError(_missing_message(csv_path, root, missing))
    if not samples:
        raise DatasetError(f"manifest {csv_path} has a header but no rows")
    return Dataset(samples=tuple(samples), root=root)


def _read_header(reader, csv_path: Path) -> list[str]:
    allowed = (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    expected = "path,label[,split][,group]"
    for row in reader:
        if not any(cell.strip() for cell in row):
            continue
        columns = [c.strip().lower() for c in row]
        line = reader.line_num
        unknown = [c for c in columns if c not in allowed]
        if unknown:
            raise DatasetError(
                f"{csv_path.name} line {line}: unknown column(s) {', '.join(map(repr, unknown))} in "
                f"the header; the header must be {expected}"
            )
        lacking = [c for c in REQUIRED_COLUMNS if c not in columns]
        if lacking:
            raise DatasetError(
                f"{csv_path.name} line {line}: the header lacks {', '.join(lacking)}; it must be {expected}"
            )
        dupes = sorted({c for c in columns if columns.count(c) > 1})
        if dupes:
            raise DatasetError(f"{csv_path.name} line {line}: column(s) {', '.join(dupes)} appear twice in the header")
        return columns
    raise DatasetError(f"manifest {csv_path} is empty; its first line must be the header {expected}")


def _parse_row(row: list[str], columns: list[str], line: int, csv_path: Path, root: Path) -> tuple[Sample, str]:
    where = f"{csv_path.name} line {line}"
    if len(row) != len(columns):
        raise DatasetError(f"{where}: {len(row)} value(s) but the header has {len(columns)} ({','.join(columns)})")
    values = {c: v.strip() for c, v in zip(columns, row)}
    raw_path, label = values["path"], values["label"]
    if not raw_path:
        raise DatasetError(f"{where}: the path is empty")
    if not label:
        raise DatasetError(f"{where}: the label of {raw_path!r} is empty")
    split = values.get("split") or None
    if split is not None and split not in SPLITS:
        raise DatasetError(f"{where}: split {split!r} is not one of {', '.join(SPLITS)} (or empty to assign one)")
    path = Path(os.path.expanduser(raw_path))
    path = Path(os.path.normpath(path if path.is_absolute() else root / path))
    return Sample(path=path, label=label, split=split, group=values.get("group") or None), raw_path


def _missing_message(csv_path: Path, root: Path, missing: list[tuple[int, str]]) -> str:
    line, raw = missing[0]
    message = f"{csv_path.name} line {line}: image {raw!r} does not exist (relative paths start at {root})"
    if len(missing) > 1:
        more = ", ".join(str(n) for n, _ in missing[1 : 1 + _MAX_LISTED])
        extra = f" and {len(missing) - 1 - _MAX_LISTED} more" if len(missing) - 1 > _MAX_LISTED else ""
        message += f"; {len(missing) - 1} more missing, on line(s) {more}{extra}"
    return message


def load_dataset(path: Path | str, **folder_options) -> Dataset:
    """A class-folder root or a ``.csv`` manifest, whichever ``path`` is."""
    path = Path(path).expanduser()
    if path.is_dir():
        return load_folder(path, **folder_options)
    if path.suffix.lower() == ".csv":
        return load_manifest(path)
    if not path.exists():
        raise DatasetError(
            f"data set {path} does not exist; give a folder with one sub-folder per class or a .csv manifest"
        )
    raise DatasetError(f"{path} is neither a folder nor a .csv manifest")


def write_manifest(dataset: Dataset, csv_path: Path | str) -> None:
    """Write ``dataset`` as a manifest, atomically (temp file + rename).

    Paths inside the CSV's folder are written relative to it (POSIX separators), so the folder can move;
    paths outside it are written absolute. ``split`` and ``group`` columns appear when any sample has one.
    """
    csv_path = Path(csv_path).expanduser()
    if csv_path.suffix.lower() != ".csv":
        raise DatasetError(f"manifest name {csv_path.name!r} must end in .csv")
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    base = csv_path.parent.resolve()
    columns = ["path", "label"]
    columns += [c for c in OPTIONAL_COLUMNS if any(getattr(s, c) for s in dataset.samples)]
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(columns)
    for s in dataset.samples:
        row = {"path": _manifest_path(s.path, base), "label": s.label, "split": s.split or "", "group": s.group or ""}
        writer.writerow([row[c] for c in columns])
    write_atomic(csv_path, buffer.getvalue())


def _manifest_path(path: Path, base: Path) -> str:
    """``path`` relative to the CSV's (resolved) folder, or absolute: never relative to the working directory,
    which the reader of the CSV does not share (a relative or symlinked path is resolved first)."""
    resolved = Path(path).resolve()
    try:
        return resolved.relative_to(base).as_posix()
    except ValueError:
        return resolved.as_posix()
