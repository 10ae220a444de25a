"""I/O errors and a full disk: the API never answers 2xx for a frame it could not store, leaves no partial
record or file, and works again once the fault clears; below the free-space mark the service is not ready, and
below the reserve it refuses frames (507, the one JSON error shape) while review (reading, verdicts) goes on.

Faults are injected where the bytes go: os.fdopen's writes, os.fsync of the image and of its folder,
os.replace (the image store, through andon.fileio), and SQLite's own writes and syncs (a commit) through a
VFS shim (``bench.durability.SqliteShim``).
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for the bench package

from bench.durability import ShimUnavailable, SqliteShim, hooked  # noqa: E402
from service_support import (  # noqa: E402
    REJECT,
    REVIEW,
    add_key,
    auth,
    client_for,
    count_rows,
    jpeg,
    post_frame,
    settings_for,
)

SQLITE_FULL = 13
SQLITE_IOERR_WRITE = 10 | (3 << 8)
SQLITE_IOERR_FSYNC = 10 | (4 << 8)


class Faults:
    """The fault ``self.fail`` names, at the image store's or SQLite's I/O, until it is set to None."""

    def __init__(self, images: Path, db_dir: Path) -> None:
        self.images = str(images.resolve())
        self.db_dir = str(db_dir.resolve())
        self.fail: str | None = None
        self.hits = 0

    def _image(self, path: str) -> bool:
        return path.startswith(self.images + os.sep)

    def _hit(self, name: str, code: int = errno.EIO) -> OSError:
        self.hits += 1
        return OSError(code, f"{os.strerror(code)} (injected: {name})")

    # os level (installed by the fixture)
    def fsync_hook(self, real, fd: int) -> None:
        path = _fd_path(fd)
        if path and (self._image(path) or path == self.images):
            is_dir = stat.S_ISDIR(os.fstat(fd).st_mode)
            if self.fail == "image fsync" and not is_dir:
                raise self._hit("fsync")
            if self.fail == "folder fsync" and is_dir:
                raise self._hit("folder fsync")
        return real(fd)

    def fdopen(self, real, fd, *args, **kwargs):
        fh = real(fd, *args, **kwargs)
        path = _fd_path(fd)
        if path and self._image(path) and self.fail in ("image write", "image write ENOSPC"):
            return _FailingWrites(fh, self._hit(self.fail, errno.ENOSPC if "ENOSPC" in self.fail else errno.EIO))
        return fh

    def replace(self, real, src, dst, *args, **kwargs):
        if self.fail == "image rename" and self._image(os.path.abspath(dst)):
            raise self._hit("rename")
        return real(src, dst, *args, **kwargs)

    # SQLite (the shim's observer interface)
    def sqlite_before(self, kind: str, path: str) -> int:
        if not path.startswith(self.db_dir):
            return 0
        if self.fail == "database write" and kind == "write":
            self.hits += 1
            return SQLITE_IOERR_WRITE
        if self.fail == "database full" and kind == "write":
            self.hits += 1
            return SQLITE_FULL
        if self.fail == "commit" and kind == "sync":
            self.hits += 1
            return SQLITE_IOERR_FSYNC
        return 0

    def sqlite_wrote(self, *args) -> None: ...

    def sqlite_truncated(self, *args) -> None: ...

    def sqlite_synced(self, *args) -> None: ...

    def sqlite_folder_synced(self, *args) -> None: ...

    def sqlite_deleted(self, *args) -> None: ...


class _FailingWrites:
    def __init__(self, fh, error: OSError) -> None:
        self._fh, self._error = fh, error

    def write(self, data) -> int:
        raise self._error

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self._fh.close()

    def __getattr__(self, name):
        return getattr(self._fh, name)


def _fd_path(fd: int) -> str | None:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return None


def _files(images: Path) -> set[str]:
    """Every file of the store, temp files included (the writer lock aside)."""
    if not images.exists():
        return set()
    return {p.relative_to(images).as_posix() for p in images.rglob("*") if p.is_file() and p.name != ".writers.lock"}


@pytest.fixture
def faulty(tmp_path, tiny_model_path, monkeypatch):
    try:
        SqliteShim.get()
        sqlite = True
    except ShimUnavailable as exc:  # the image store's faults still run; SQLite's need the shim
        print(f"SQLite faults not injected: {exc}")
        sqlite = False
    settings = settings_for(tmp_path, tiny_model_path, pass_sample_rate=1.0)
    faults = Faults(settings.images_dir, settings.data_dir)
    real_fdopen, real_replace = os.fdopen, os.replace
    monkeypatch.setattr(os, "fdopen", lambda fd, *a, **k: faults.fdopen(real_fdopen, fd, *a, **k))
    monkeypatch.setattr(os, "replace", lambda src, dst, *a, **k: faults.replace(real_replace, src, dst, *a, **k))
    with hooked(faults, sqlite=sqlite), client_for(settings) as client:
        yield client, faults, settings, sqlite


SQLITE_CASES = ("database write", "database full", "commit")
CASES = {
    # fault -> the answers allowed while it lasts
    "image write": {503},
    "image write ENOSPC": {507},
    "image fsync": {503},
    "image rename": {503},
    "folder fsync": {503},
    "database write": {503},
    "database full": {503},
    "commit": {503},
}


def test_injected_io_errors_answer_5xx_store_nothing_and_clear(faulty):
    client, faults, settings, sqlite = faulty
    assert post_frame(client, jpeg(REVIEW), idem="warm-up").status_code == 201  # folders exist, WAL open
    figures = []
    for n, (fault, allowed) in enumerate(CASES.items()):
        if not sqlite and fault in SQLITE_CASES:
            continue
        rows, files = count_rows(client), _files(settings.images_dir)
        faults.fail, faults.hits = fault, 0
        answers = [post_frame(client, jpeg(REJECT, noise=n * 3 + i), idem=f"{fault}-{i}") for i in range(3)]
        hits = faults.hits
        faults.fail = None
        for r in answers:
            assert r.status_code in allowed, (fault, r.status_code, r.text)
            body = r.json()
            assert set(body) == {"error", "message"} and body["error"] in (
                "storage_unavailable",
                "insufficient_storage",
            )
        assert hits > 0, f"{fault}: the fault was never reached, so the test proves nothing"
        assert count_rows(client) == rows, f"{fault}: a record was left"
        left = _files(settings.images_dir) - files
        if fault == "commit":
            # a failed commit may still reach the disk (a WAL replayed after a power cut), so its images stay
            # for the sweeps: images only, of these three frames, and the start-up sweep removes them
            frames_left = {k.split("/")[-1].split(".")[0] for k in left}
            assert len(frames_left) == 3 and all(k.endswith((".jpg", ".heatmap.npy")) for k in left), (fault, left)
            from andon.service.retention import sweep_at_start

            ctx = client.app.state.ctx
            ctx.store.leave_writers()
            report, alone = sweep_at_start(ctx.sessions, ctx.store, orphan_grace_s=settings.orphan_grace_s)
            assert alone and report.orphans_removed == len(left), (report, alone)
            left = _files(settings.images_dir) - files
        assert left == set(), f"{fault}: a file was left"
        # the fault cleared: the same frames (same keys) go in now, as new records, not replays
        again = [post_frame(client, jpeg(REJECT, noise=n * 3 + i), idem=f"{fault}-{i}") for i in range(3)]
        assert [r.status_code for r in again] == [201, 201, 201], (fault, [r.text for r in again])
        assert client.get("/readyz").status_code == 200
        for r in again:
            image = client.get(f"/v1/inspections/{r.json()['id']}/image")
            assert image.status_code == 200
        figures.append(f"{fault}: {sorted({r.status_code for r in answers})} x3 ({hits} injected), then 201 x3")
    print("\n".join(figures))


def test_disk_full_flips_readiness_first_then_refuses_frames_and_review_goes_on(tmp_path, tiny_model_path):
    settings = settings_for(tmp_path, tiny_model_path, pass_sample_rate=1.0, min_free_disk_mb=512, disk_reserve_mb=64)
    mb = 1024 * 1024
    with client_for(settings) as client:
        ctx = client.app.state.ctx
        free = {"bytes": 10_000 * mb}
        ctx.store.free_bytes = lambda: free["bytes"]  # the disk, as the store and readiness see it
        engineer, operator = add_key(client, "engineer"), add_key(client, "operator")
        flagged = post_frame(client, jpeg(REJECT), key=engineer)
        assert flagged.status_code == 201 and client.get("/readyz").status_code == 200

        free["bytes"] = 300 * mb  # under the low-water mark: not ready, and frames still go in
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "disk nearly full" in " ".join(ready.json()["reasons"])
        assert post_frame(client, jpeg(REJECT, noise=1), key=engineer).status_code == 201

        free["bytes"] = 40 * mb  # under the reserve: frames are refused, in the one error shape
        rows, files = count_rows(client), _files(settings.images_dir)
        refused = post_frame(client, jpeg(REJECT, noise=2), key=engineer)
        assert refused.status_code == 507
        assert refused.json()["error"] == "insufficient_storage" and "64 MB" in refused.json()["message"]
        assert set(refused.json()) == {"error", "message"}
        assert count_rows(client) == rows and _files(settings.images_dir) == files
        # review goes on: the record, its image, the queue, a verdict
        fid = flagged.json()["id"]
        assert client.get(f"/v1/inspections/{fid}", headers=auth(operator)).status_code == 200
        assert client.get(f"/v1/inspections/{fid}/image", headers=auth(operator)).status_code == 200
        assert client.get("/v1/review/queue", headers=auth(operator)).status_code == 200
        verdict = client.post(
            f"/v1/inspections/{fid}/verdicts", json={"verdict": "confirm_defect"}, headers=auth(operator)
        )
        assert verdict.status_code == 201 and verdict.json()["review_status"] == "reviewed"

        free["bytes"] = 10_000 * mb  # space freed: ready, frames go in again
        assert client.get("/readyz").status_code == 200
        assert post_frame(client, jpeg(REJECT, noise=2), key=engineer).status_code == 201
    print(
        "disk full: ready at 10 GB free; not ready at 300 MB (< 512), frames 201; 507 at 40 MB (< 64); review 200/201"
    )


def test_reserve_never_exceeds_the_readiness_mark(tmp_path):
    settings = settings_for(tmp_path, None, min_free_disk_mb=100, disk_reserve_mb=500)
    assert settings.disk_reserve_bytes == 100 * 1024 * 1024  # readiness flips before frames are refused
    assert settings_for(tmp_path, None, min_free_disk_mb=0).disk_reserve_bytes == 0
