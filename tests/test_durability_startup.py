"""The start-up sweep: what a crash left (temp files of interrupted writes, images whose record never
committed) is removed when the service starts, whatever its age, if no other process writes to the store; with
another writer running, only what is older than orphan_grace_s goes (an image written just before its record
commits is not an orphan). docs/reliability.md has the rule."""

from __future__ import annotations

import fcntl
import os
import time

from andon.service.retention import sweep_at_start
from andon.service.storage import WRITERS_LOCK, LocalDiskStore
from service_support import REJECT, REVIEW, client_for, jpeg, post_frame, settings_for


def _plant(images, names):
    """Files a crash would leave, stamped ``age_s`` seconds ago."""
    for name, age_s in names.items():
        path = images / "2026" / "01" / "02" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"left by a crash")
        stamp = time.time() - age_s
        os.utime(path, (stamp, stamp))
    return {name: images / "2026" / "01" / "02" / name for name in names}


def _kept(planted):
    return sorted(name for name, path in planted.items() if path.exists())


def test_alone_at_start_up_every_leftover_goes_whatever_its_age(tmp_path, tiny_model_path):
    settings = settings_for(tmp_path, tiny_model_path, pass_sample_rate=1.0, orphan_grace_s=3600)
    with client_for(settings) as client:
        ids = [post_frame(client, jpeg(v, noise=i)).json()["id"] for i, v in enumerate((REVIEW, REJECT))]
    images = settings.images_dir
    named = sorted(p for p in images.rglob("*") if p.is_file() and not p.name.startswith("."))
    planted = _plant(
        images,
        {
            "fresh-orphan.jpg": 1,  # written a second before the crash: no grace at start-up
            "old-orphan.jpg": 7200,
            ".fresh.jpg.a1b2.tmp": 1,
            ".healthcheck": 1,
        },
    )
    with client_for(settings) as client:  # the restart
        for inspection_id in ids:
            assert client.get(f"/v1/inspections/{inspection_id}/image").status_code == 200
    assert _kept(planted) == []
    assert all(p.exists() for p in named) and len(named) >= 2  # images that records name stay
    assert (images / WRITERS_LOCK).exists()  # the lock file is never swept


def test_with_another_writer_running_fresh_files_are_spared(tmp_path):
    """A second worker (or a rolling restart) starts while another process serves: that process may be
    between an image and its record, so the start-up sweep falls back to the retention rule."""
    from andon.service.db import make_engine, migrate, session_factory

    root = tmp_path / "images"
    other = LocalDiskStore(root)
    assert other.join_writers(sole=True)  # the running process
    other.join_writers()  # ... now serving (shared)
    planted = _plant(root, {"being-committed.jpg": 1, "old-orphan.jpg": 7200, ".new.jpg.x.tmp": 1, ".old.tmp": 9000})
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    migrate(engine)
    store = LocalDiskStore(root)
    report, alone = sweep_at_start(session_factory(engine), store, orphan_grace_s=3600)
    assert not alone
    assert _kept(planted) == [".new.jpg.x.tmp", "being-committed.jpg"]
    assert report.orphans_removed == 2
    other.leave_writers()
    store.leave_writers()
    # the other process is gone (exit, or kill -9: the kernel drops its lock): the next start-up is alone
    report, alone = sweep_at_start(session_factory(engine), LocalDiskStore(root), orphan_grace_s=3600)
    assert alone and _kept(planted) == []
    engine.dispose()


def test_writer_lock_is_shared_by_serving_processes_and_exclusive_for_the_sweep(tmp_path):
    root = tmp_path / "images"
    first, second = LocalDiskStore(root), LocalDiskStore(root)
    assert first.join_writers(sole=True)  # nobody else: sweeps alone
    first.join_writers()  # done sweeping: shared
    assert not second.join_writers(sole=True)  # first serves: second joins it, shared
    fd = os.open(root / WRITERS_LOCK, os.O_RDWR)  # a third start-up, while both serve
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            taken = False
        except BlockingIOError:
            taken = True
        assert taken
        first.leave_writers()
        second.leave_writers()
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody serves any more: free (raises if not)
    finally:
        os.close(fd)


def test_orphan_sweep_off_keeps_orphans_but_not_temp_files(tmp_path):
    from andon.service.db import make_engine, migrate, session_factory

    root = tmp_path / "images"
    planted = _plant(root, {"orphan.jpg": 9000, ".x.jpg.y.tmp": 1})
    engine = make_engine(f"sqlite:///{tmp_path / 'a.db'}")
    migrate(engine)
    store = LocalDiskStore(root)
    _report, alone = sweep_at_start(session_factory(engine), store, orphan_grace_s=None)
    assert alone and _kept(planted) == ["orphan.jpg"]
    store.leave_writers()
    engine.dispose()
