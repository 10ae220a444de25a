"""Reviewed frames out as a labelled data set that ``andon train`` and ``andon evaluate`` read.

Layout of ``OUT``::

    images/<label>/<inspection id>.<ext>   the frames as the camera sent them, one folder per class
    reviewed.csv                           path,label,split,group: every exported frame; group = the part
    provenance.csv                         where each frame came from: line, camera, part, model, verdict, ...
    export.json                            what was asked, what was exported, what was left out and why
    combined.csv                           with ``merge_with``: the original data set plus the reviewed frames

Labels are the operator's: a confirmed defect keeps its (possibly re-labelled) defect type, a false alarm
becomes the good class (``ok``), and can't-tell frames are left out. The group of a frame is its part (or
the frame itself when it has no part id), and splits are drawn per group with the data sets' own rule
(``andon.datasets.assign_splits``), so the frames of one part never straddle train and test. With
``merge_with`` the original samples keep the splits they have (a run's ``splits.csv`` fixes them all), so
the original test split stays the one the active model was measured on.

The export is written to a temporary folder beside ``OUT`` and renamed into place at the end: an
interrupted export leaves no half-written data set.
"""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from sqlalchemy import select
from sqlalchemy.orm import Session

from andon import __version__
from andon.datasets import Dataset, Sample, assign_splits, load_dataset, write_manifest
from andon.errors import DatasetError, NotFoundError
from andon.service.review.tables import CANT_TELL, ReviewVerdict
from andon.service.storage import ImageStore
from andon.service.tables import Inspection

PROVENANCE_COLUMNS = (
    "path",
    "label",
    "split",
    "group",
    "inspection_id",
    "verdict",
    "verdict_id",
    "reviewer",
    "reviewed_at",
    "comment",
    "model_label",
    "model_decision",
    "defect_score",
    "reason",
    "anomaly_score",
    "model_version",
    "model_hash",
    "line_id",
    "camera_id",
    "part_id",
    "serial",
    "inspected_at",
    "image_sha256",
)


@dataclass
class ExportReport:
    out: Path
    exported: int = 0
    labels: dict[str, int] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    skipped_cant_tell: int = 0
    skipped_no_image: int = 0
    merged_original: int = 0

    def as_dict(self) -> dict:
        return {
            "exported": self.exported,
            "labels": self.labels,
            "splits": self.splits,
            "skipped": {"cant_tell": self.skipped_cant_tell, "image_not_stored": self.skipped_no_image},
            "merged_original_samples": self.merged_original,
        }


def reviewed_rows(
    session: Session,
    since: dt.datetime | None,
    until: dt.datetime | None,
    *,
    line_id: str | None = None,
    camera_id: str | None = None,
) -> list[tuple[ReviewVerdict, Inspection]]:
    """Current verdicts given in [since, until), with their inspections, oldest first."""
    query = (
        select(ReviewVerdict, Inspection)
        .join(Inspection, Inspection.id == ReviewVerdict.inspection_id)
        .where(ReviewVerdict.superseded_at.is_(None))
        .order_by(ReviewVerdict.created_at, ReviewVerdict.id)
    )
    if since is not None:
        query = query.where(ReviewVerdict.created_at >= since)
    if until is not None:
        query = query.where(ReviewVerdict.created_at < until)
    if line_id:
        query = query.where(Inspection.line_id == line_id)
    if camera_id:
        query = query.where(Inspection.camera_id == camera_id)
    return [(v, i) for v, i in session.execute(query).all()]


def export_reviewed(
    session: Session,
    store: ImageStore,
    out: Path,
    *,
    since: dt.datetime | None = None,
    until: dt.datetime | None = None,
    line_id: str | None = None,
    camera_id: str | None = None,
    merge_with: Path | None = None,
    val: float = 0.15,
    test: float = 0.15,
    seed: int = 0,
    progress=None,
) -> ExportReport:
    """Write the reviewed frames (and, with ``merge_with``, the combined data set) to ``out``."""
    out = Path(out).expanduser().resolve()  # the CSVs name their images relative to their own folder, not the cwd
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DatasetError(f"{out} already exists and is not an empty folder; choose a new folder for the export")
    original = load_dataset(merge_with) if merge_with is not None else None
    rows = reviewed_rows(session, since, until, line_id=line_id, camera_id=camera_id)
    report = ExportReport(out=out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        samples, prov = _copy_frames(rows, store, staging, report, progress)
        if not samples:
            raise DatasetError(_nothing_message(rows, report, since, until))
        reviewed = assign_splits(
            Dataset(samples=tuple(samples), root=staging), val=val, test=test, seed=seed, group_by="manifest"
        )
        write_manifest(reviewed, staging / "reviewed.csv")
        split_of = {s.path: s.split for s in reviewed.samples}
        for p in prov:
            p["split"] = split_of[staging / p["path"]]
        report.splits = dict(Counter(s.split for s in reviewed.samples))
        _write_csv(staging / "provenance.csv", prov)
        if original is not None:
            report.merged_original = len(original)
            _write_combined(original, reviewed, staging / "combined.csv")
        _write_summary(staging / "export.json", report, since, until, line_id, camera_id, merge_with)
        _move_into_place(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return report


def _copy_frames(rows, store: ImageStore, staging: Path, report: ExportReport, progress):
    samples: list[Sample] = []
    prov: list[dict] = []
    for verdict, row in rows:
        if progress is not None:
            progress()
        if verdict.verdict == CANT_TELL or not verdict.label:
            report.skipped_cant_tell += 1
            continue
        if row.image_key is None:
            report.skipped_no_image += 1
            continue
        try:
            data = store.get(row.image_key)
        except NotFoundError:
            report.skipped_no_image += 1
            continue
        ext = os.path.splitext(row.image_key)[1] or ".img"
        rel = Path("images") / verdict.label / f"{row.id}{ext}"
        (staging / rel.parent).mkdir(parents=True, exist_ok=True)
        (staging / rel).write_bytes(data)
        group = f"part:{row.part_id}" if row.part_id else f"frame:{row.id}"
        samples.append(Sample(path=staging / rel, label=verdict.label, group=group))
        prov.append(
            {
                "path": rel.as_posix(),
                "label": verdict.label,
                "split": "",
                "group": group,
                "inspection_id": row.id,
                "verdict": verdict.verdict,
                "verdict_id": verdict.id,
                "reviewer": verdict.reviewer,
                "reviewed_at": verdict.created_at.isoformat(),
                "comment": verdict.comment or "",
                "model_label": verdict.model_label,
                "model_decision": verdict.model_decision,
                "defect_score": f"{verdict.model_score:.6f}",
                # which signal flagged it ("defect", a class band, "anomaly", "unknown defect"); empty for
                # records from before reasons were stored
                "reason": row.reason or "",
                "anomaly_score": "" if row.anomaly_score is None else f"{row.anomaly_score:.6f}",
                "model_version": row.model_version,
                "model_hash": row.model_hash,
                "line_id": row.line_id,
                "camera_id": row.camera_id,
                "part_id": row.part_id or "",
                "serial": row.serial or "",
                "inspected_at": row.created_at.isoformat(),
                "image_sha256": row.body_sha256,
            }
        )
        report.exported += 1
        report.labels[verdict.label] = report.labels.get(verdict.label, 0) + 1
    return samples, prov


def _nothing_message(rows, report: ExportReport, since, until) -> str:
    span = (
        f"between {since:%Y-%m-%d %H:%M} and {until:%Y-%m-%d %H:%M}"
        if since and until
        else f"since {since:%Y-%m-%d %H:%M}"
        if since
        else "at any time"
    )
    if not rows:
        return f"no frame was reviewed {span}; nothing to export"
    return (
        f"none of the {len(rows)} frames reviewed {span} can be exported: {report.skipped_cant_tell} can't "
        f"tell, {report.skipped_no_image} with no stored image"
    )


def _write_combined(original: Dataset, reviewed: Dataset, path: Path) -> None:
    clash = {s.path for s in original.samples} & {s.path for s in reviewed.samples}
    if clash:  # cannot happen with a fresh folder; guards against merging an export with itself
        raise DatasetError(f"{len(clash)} images are both in the original data set and in the export")
    combined = Dataset(samples=original.samples + reviewed.samples, root=path.parent)
    write_manifest(combined, path)


def _write_csv(path: Path, rows: list[dict]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.DictWriter(buffer, fieldnames=PROVENANCE_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    path.write_text(buffer.getvalue(), encoding="utf-8")


def _write_summary(path: Path, report: ExportReport, since, until, line_id, camera_id, merge_with) -> None:
    summary = {
        "andon_version": __version__,
        "exported_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "query": {
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "line_id": line_id,
            "camera_id": camera_id,
            "merge_with": str(merge_with) if merge_with else None,
        },
        **report.as_dict(),
    }
    path.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


def _move_into_place(staging: Path, out: Path) -> None:
    if out.exists():
        out.rmdir()  # an empty folder given as the target
    os.replace(staging, out)
