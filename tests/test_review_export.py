"""The feedback loop's export: operators' labels, what is left out, provenance, part-grouped splits, the
combined manifest that keeps the original splits, atomic output, and the CLI."""

from __future__ import annotations

import csv
import datetime as dt
import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from andon.cli import app as cli
from andon.datasets import load_dataset
from andon.errors import DatasetError
from andon.service.db import make_engine, migrate, session_factory
from andon.service.review.export import export_reviewed
from andon.service.review.verdicts import ClassInfo, record_verdict
from andon.service.storage import LocalDiskStore
from andon.service.tables import REVIEW_UNREVIEWED, Inspection, new_id

T0 = dt.datetime(2026, 11, 25, 6, 0, tzinfo=dt.timezone.utc)


def _frame(i: int, part: str | None, decision: str = "reject", label: str = "scratch") -> Inspection:
    return Inspection(
        id=new_id(),
        created_at=T0 + dt.timedelta(minutes=i),
        line_id="L1",
        camera_id=f"cam{i % 2}",
        part_id=part,
        serial=None,
        label=label,
        decision=decision,
        defect_score=0.8,
        scores={"ok": 0.2, "scratch": 0.5, "dent": 0.3},
        reasons=[],
        # even frames: the classifier's defect band; odd ones: passed by it, flagged by the anomaly score
        reason="defect" if i % 2 == 0 else "unknown defect",
        anomaly_score=None if i % 2 == 0 else 0.5 + i / 100,
        model_version="7",
        model_hash="a" * 64,
        image_format="JPEG",
        image_width=64,
        image_height=48,
        image_bytes=4,
        body_sha256=f"{i:064d}",
        image_key=f"2026/11/25/f{i}.jpg",
        review_status=REVIEW_UNREVIEWED,
        timings_ms={},
    )


@pytest.fixture
def reviewed(tmp_path):
    """A data dir with 12 judged frames (6 parts x 2 cameras) plus the awkward cases."""
    data = tmp_path / "data"
    engine = make_engine(f"sqlite:///{data / 'andon.db'}")
    migrate(engine)
    sessions = session_factory(engine)
    store = LocalDiskStore(data / "images")
    info = lambda row: ClassInfo.from_scores(row.scores)  # noqa: E731
    with sessions() as s:
        rows = [_frame(i, f"P{i // 2}") for i in range(12)] + [_frame(20, "PX"), _frame(21, None), _frame(22, "PY")]
        for r in rows:
            store.put(r.image_key, f"jpeg-{r.id}".encode())
            s.add(r)
        s.commit()
        for i, r in enumerate(rows[:12]):
            verdict = "false_alarm" if i % 3 == 0 else "confirm_defect"
            record_verdict(
                s, r.id, verdict=verdict, label="dent" if i % 3 == 1 else None, reviewer="olga", info_for=info
            )
        record_verdict(s, rows[12].id, verdict="cant_tell", reviewer="olga", info_for=info)  # left out
        v = record_verdict(s, rows[13].id, verdict="confirm_defect", reviewer="olga", info_for=info)
        record_verdict(s, rows[13].id, verdict="false_alarm", reviewer="erik", supersedes=v.id, info_for=info)
        record_verdict(s, rows[14].id, verdict="confirm_defect", reviewer="olga", info_for=info)
        store.delete(rows[14].image_key)  # pruned meanwhile: counted, left out
        s.commit()
    yield data, sessions, store, rows
    engine.dispose()


def test_export_writes_the_operators_labels_with_provenance(reviewed, tmp_path):
    data, sessions, store, rows = reviewed
    out = tmp_path / "export"
    with sessions() as s:
        report = export_reviewed(s, store, out)
    assert report.exported == 13 and report.skipped_cant_tell == 1 and report.skipped_no_image == 1
    # i % 3 == 0 -> false alarm (ok); 1 -> re-labelled dent; 2 -> the model's scratch; rows[13]: changed to ok
    assert report.labels == {"ok": 5, "dent": 4, "scratch": 4}
    ds = load_dataset(out / "reviewed.csv")
    assert len(ds) == 13 and set(ds.classes) == {"ok", "dent", "scratch"}
    assert load_dataset(out / "images").counts() == {"dent": 4, "ok": 5, "scratch": 4}  # class folders too
    by_path = {s.path.name: s for s in ds.samples}
    first = by_path[f"{rows[0].id}.jpg"]
    assert (
        first.label == "ok"
        and (out / "images" / "ok" / f"{rows[0].id}.jpg").read_bytes() == f"jpeg-{rows[0].id}".encode()
    )
    # frames of a part never straddle splits
    splits_by_group: dict[str, set[str]] = {}
    for sample in ds.samples:
        splits_by_group.setdefault(sample.group, set()).add(sample.split)
    assert all(len(v) == 1 for v in splits_by_group.values()) and len(splits_by_group) == 7
    with open(out / "provenance.csv", newline="") as fh:
        prov = {r["inspection_id"]: r for r in csv.DictReader(fh)}
    assert prov[rows[13].id]["reviewer"] == "erik" and prov[rows[13].id]["verdict"] == "false_alarm"
    assert prov[rows[1].id]["model_label"] == "scratch" and prov[rows[1].id]["label"] == "dent"
    assert prov[rows[1].id]["model_version"] == "7" and prov[rows[1].id]["part_id"] == "P0"
    assert (prov[rows[0].id]["reason"], prov[rows[0].id]["anomaly_score"]) == ("defect", "")
    assert (prov[rows[1].id]["reason"], prov[rows[1].id]["anomaly_score"]) == ("unknown defect", "0.510000")
    assert prov[rows[13].id]["group"] == f"frame:{rows[13].id}"  # no part id: the frame is its own group
    summary = json.loads((out / "export.json").read_text())
    assert summary["skipped"] == {"cant_tell": 1, "image_not_stored": 1} and summary["exported"] == 13


def test_since_filters_by_verdict_time_and_empty_exports_are_refused(reviewed, tmp_path):
    _, sessions, store, _ = reviewed
    future = dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)
    with sessions() as s, pytest.raises(DatasetError, match="no frame was reviewed since"):
        export_reviewed(s, store, tmp_path / "none", since=future)
    assert not (tmp_path / "none").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".none.")]  # no staging left behind


def test_existing_folders_are_not_overwritten(reviewed, tmp_path):
    _, sessions, store, _ = reviewed
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with sessions() as s, pytest.raises(DatasetError, match="already exists"):
        export_reviewed(s, store, out)
    assert (out / "keep.txt").read_text() == "mine"


def test_combined_manifest_keeps_the_original_splits(reviewed, tmp_path):
    _, sessions, store, _ = reviewed
    original = tmp_path / "orig"
    lines = ["path,label,split"]
    for cls in ("ok", "scratch"):
        for i in range(4):
            (original / cls).mkdir(parents=True, exist_ok=True)
            (original / cls / f"{i}.png").write_bytes(b"png")
            lines.append(f"{cls}/{i}.png,{cls},{('train', 'train', 'val', 'test')[i]}")
    (original / "splits.csv").write_text("\n".join(lines) + "\n")
    out = tmp_path / "export"
    with sessions() as s:
        report = export_reviewed(s, store, out, merge_with=original / "splits.csv")
    combined = load_dataset(out / "combined.csv")
    assert report.merged_original == 8 and len(combined) == 8 + 13
    kept = {s.path: s.split for s in combined.samples if s.path.parent.parent == original}
    assert sorted(kept.values()) == ["test", "test", "train", "train", "train", "train", "val", "val"]
    assert {s.split for s in combined.samples} <= {"train", "val", "test"}
    # what 'andon train OUT/combined.csv --set data.group_by=manifest' does with it: nothing moves, and
    # every part stays in one split
    from andon.datasets import assign_splits

    trained_on = assign_splits(combined, group_by="manifest")
    assert [s.split for s in trained_on.samples] == [s.split for s in combined.samples]
    parts: dict[str, set[str]] = {}
    for sample in trained_on.samples:
        if sample.group:
            parts.setdefault(sample.group, set()).add(sample.split)
    assert parts and all(len(v) == 1 for v in parts.values())


def test_relative_out_through_a_symlink_gives_csvs_that_load(reviewed, tmp_path, monkeypatch):
    """As the tutorial runs it: `andon review export reviewed/ --merge-with runs/x/splits.csv` in a project
    folder reached through a symbolic link. Every image the CSVs name exists, from any working directory."""
    _, sessions, store, _ = reviewed
    real = tmp_path / "real-project"
    (real / "photos" / "ok").mkdir(parents=True)
    (real / "photos" / "ok" / "a.png").write_bytes(b"png")
    (real / "photos" / "splits.csv").write_text("path,label,split\nok/a.png,ok,train\n")
    (tmp_path / "project").symlink_to(real)
    monkeypatch.chdir(tmp_path / "project")
    with sessions() as s:
        export_reviewed(s, store, Path("reviewed"), merge_with=Path("photos/splits.csv"))
    monkeypatch.chdir(tmp_path)
    for name in ("reviewed.csv", "combined.csv"):
        loaded = load_dataset(real / "reviewed" / name)
        assert loaded.samples and all(sample.path.is_file() for sample in loaded.samples), name
    assert not any(p.name.startswith(".reviewed.") for p in real.iterdir())  # no staging folder left


def test_cli_exports_and_reports(reviewed, tmp_path):
    data, _, _, _ = reviewed
    out = tmp_path / "cli-export"
    r = CliRunner().invoke(cli, ["review", "export", str(out), "--data-dir", str(data), "--since", "30d"])
    assert r.exit_code == 0, r.output
    assert "exported 13 frames" in r.output and (out / "reviewed.csv").is_file()
    r = CliRunner().invoke(
        cli, ["review", "export", str(tmp_path / "x"), "--data-dir", str(data), "--since", "yesterday"]
    )
    assert r.exit_code != 0 and "is not a time" in str(r.exception or r.output)
