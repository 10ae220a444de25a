"""Power loss: the service runs in this process on a storage double that remembers what was fsynced (a SQLite
VFS shim and a hook on os.fsync, ``bench.durability.PowerCut``); at a random I/O operation the power goes, the
disk keeps what was synced (and, every other round, some of what was not), the service restarts on it.
Every frame acknowledged before a cut must survive it and every later one.

The test is sensitive: the same rounds with the store's folder fsync removed, or with SQLite's
``synchronous=NORMAL`` instead of FULL, must lose acknowledged frames, and do.

The long version is ``python -m bench.durability power --rounds 100``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for the bench package

from bench.durability import ShimUnavailable, SqliteShim, power_rounds  # noqa: E402

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def shim():
    try:
        return SqliteShim.get()
    except ShimUnavailable as exc:
        pytest.skip(str(exc))


def _no_folder_fsync(monkeypatch):
    """The image store's put without the fsync of the folder after the rename."""
    from andon.fileio import write_atomic
    from andon.service import storage

    monkeypatch.setattr(storage, "write_durably", lambda path, data: write_atomic(path, data, durable=False))


def _synchronous_normal(monkeypatch):
    from andon.service import db

    pragmas = tuple(p.replace("synchronous=FULL", "synchronous=NORMAL") for p in db.SQLITE_PRAGMAS)
    assert pragmas != db.SQLITE_PRAGMAS
    monkeypatch.setattr(db, "SQLITE_PRAGMAS", pragmas)


VARIANTS = {"as shipped": None, "no folder fsync": _no_folder_fsync, "synchronous=NORMAL": _synchronous_normal}


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_acknowledged_frames_survive_power_cuts(variant, shim, tmp_path, tiny_model_path, monkeypatch):
    broken = VARIANTS[variant]
    if broken is not None:
        broken(monkeypatch)
    report = power_rounds(
        tmp_path, tiny_model_path, rounds=12 if broken is None else 6, seed=14, stop_at_first_loss=broken is not None
    )
    print(f"[{variant}]", "\n".join(report.lines()))
    assert report.shim_errors == []
    assert report.acked > 0
    if broken is None:
        assert report.lost == []
        final = report.final
        assert final.temp_files == [] and final.orphans == [] and final.missing_images == []
        assert final.integrity == []
    else:
        assert report.lost, f"{variant}: no acknowledged frame was lost, so the test cannot see this fault"


def test_a_failed_commit_then_a_power_cut_leaves_no_record_without_its_image(shim, tmp_path, tiny_model_path):
    import httpx

    from bench.durability import PowerCut, disk_state, frame_pool, serve_in_thread, service_settings

    class FailOneCommit(PowerCut):
        armed = False

        def sqlite_before(self, kind, path):
            if self.armed and kind == "sync" and path.endswith("-wal"):
                self.armed = False
                return 10 | (4 << 8)  # SQLITE_IOERR_FSYNC
            return super().sqlite_before(kind, path)

    data = tmp_path / "disk"
    with serve_in_thread(service_settings(data, tiny_model_path)):
        pass
    cut = FailOneCommit(data, seed=0, crash_after=None, keep_unsynced=1.0)
    frames = frame_pool(count=3)
    with cut.active(), serve_in_thread(service_settings(data, tiny_model_path)) as url:
        post = {"params": {"camera_id": "cam1", "line_id": "L1"}, "headers": {"Content-Type": "image/jpeg"}}
        assert httpx.post(f"{url}/v1/inspections", content=frames[1], **post).status_code == 201
        cut.armed = True
        assert httpx.post(f"{url}/v1/inspections", content=frames[2], **post).status_code == 503
        cut.rng.random = lambda: 0.0  # every unsynced write reached the disk before the cut
        cut.rng.randint = lambda a, b: b
        cut.cut("right after the failed commit")
    cut.materialize(tmp_path / "after")
    assert disk_state(tmp_path / "after").missing_images == []
