"""Storage: durable atomic writes, readiness (storage, disk, model), retention never prunes unreviewed frames."""

from __future__ import annotations

import datetime as dt
import shutil

import pytest

from andon.service.storage import LocalDiskStore, write_durably
from service_support import PASS, REJECT, REVIEW, add_key, auth, client_for, count_rows, jpeg, post_frame, settings_for


def test_write_durably_is_all_or_nothing(tmp_path):
    target = tmp_path / "a.bin"
    write_durably(target, b"first")
    write_durably(target, b"second")
    assert target.read_bytes() == b"second" and [p.name for p in tmp_path.iterdir()] == ["a.bin"]
    (tmp_path / "dir").mkdir()
    with pytest.raises(OSError):
        write_durably(tmp_path / "dir", b"cannot replace a folder")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.bin", "dir"]  # no temp file left behind


def test_local_store_keys_and_healthcheck(tmp_path):
    from andon.errors import NotFoundError

    store = LocalDiskStore(tmp_path / "images")
    store.put("2026/11/25/x.jpg", b"jpeg")
    assert store.exists("2026/11/25/x.jpg") and store.get("2026/11/25/x.jpg") == b"jpeg"
    store.delete("2026/11/25/x.jpg")
    with pytest.raises(NotFoundError):
        store.get("2026/11/25/x.jpg")
    for bad in ("../etc/passwd", "/abs", "a//b", ""):
        with pytest.raises(ValueError):
            store.put(bad, b"x")
    assert store.healthcheck() is None and store.free_bytes() > 0


def test_readiness_flips_when_storage_is_not_writable(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path)) as client:
        images = client.app.state.ctx.settings.images_dir
        assert client.get("/readyz").status_code == 200
        shutil.rmtree(images, ignore_errors=True)
        images.write_bytes(b"a file where the image folder should be")  # not writable, even for root
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.headers["retry-after"]
        assert any("not writable" in reason for reason in ready.json()["reasons"])
        r = post_frame(client, jpeg(REJECT))
        assert r.status_code == 503 and r.json()["error"] == "storage_unavailable"
        assert count_rows(client) == 0  # no record without its image
        images.unlink()
        assert client.get("/readyz").status_code == 200
        assert post_frame(client, jpeg(REJECT)).status_code == 201


def test_readiness_needs_free_disk_and_a_model(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path / "a", tiny_model_path, min_free_disk_mb=10**9)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "disk nearly full" in " ".join(ready.json()["reasons"])
    with client_for(settings_for(tmp_path / "b", None)) as client:
        ready = client.get("/readyz")
        assert ready.status_code == 503 and "no active model" in " ".join(ready.json()["reasons"])
        assert client.get("/livez").status_code == 200  # alive, just not ready
        r = post_frame(client, jpeg(PASS))
        assert r.status_code == 503 and r.json()["error"] == "no_model"


def test_retention_prunes_old_passes_and_reviewed_never_unreviewed(tmp_path, tiny_model_path):
    from sqlalchemy import update

    from andon.service.tables import Inspection

    settings = settings_for(
        tmp_path, tiny_model_path, pass_sample_rate=1.0, retention_pass_days=7, retention_reviewed_days=30
    )
    with client_for(settings) as client:
        key = add_key(client, "engineer")
        ids = {
            name: post_frame(client, jpeg(value, noise=i), key=key).json()["id"]
            for i, (name, value) in enumerate(
                [
                    ("old_pass", PASS),
                    ("old_reviewed", REJECT),
                    ("old_unreviewed", REVIEW),
                    ("new_pass", PASS),
                    ("recently_reviewed", REJECT),
                ]
            )
        }
        now = dt.datetime.now(dt.timezone.utc)
        ctx = client.app.state.ctx
        with ctx.sessions() as session:
            for name, age_days, status in (
                ("old_pass", 8, None),
                ("old_reviewed", 31, "reviewed"),
                ("old_unreviewed", 400, None),
                ("recently_reviewed", 10, "reviewed"),
            ):
                values = {"created_at": now - dt.timedelta(days=age_days)}
                if status:
                    values["review_status"] = status
                session.execute(update(Inspection).where(Inspection.id == ids[name]).values(**values))
            session.commit()
        report = client.post("/v1/admin/retention", headers=auth(key)).json()
        assert report["images_pruned"] == 2 and report["bytes_freed"] > 0
        for name in ("old_pass", "old_reviewed"):
            r = client.get(f"/v1/inspections/{ids[name]}/image", headers=auth(key))
            assert r.status_code == 404 and "pruned" in r.json()["message"]
            record = client.get(f"/v1/inspections/{ids[name]}", headers=auth(key)).json()
            assert not record["image_stored"] and not record["heatmap_available"]  # the record itself stays
        for name in ("old_unreviewed", "new_pass", "recently_reviewed"):
            assert client.get(f"/v1/inspections/{ids[name]}/image", headers=auth(key)).status_code == 200
        assert client.post("/v1/admin/retention", headers=auth(key)).json()["images_pruned"] == 0


def test_retention_sweeps_images_no_record_names_and_only_those(tmp_path, tiny_model_path):
    """A crash between the image write and the record commit leaves a file no record names (and a crash mid-
    write a temp file): retention removes them once older than orphan_grace_s; named images, the review queue's
    included, and fresh files (a record may be committing right now) stay."""
    import os
    import time

    settings = settings_for(tmp_path, tiny_model_path, pass_sample_rate=1.0, orphan_grace_s=3600)
    with client_for(settings) as client:
        key = add_key(client, "engineer")
        ids = [
            post_frame(client, jpeg(value, noise=i), key=key).json()["id"]
            for i, value in enumerate((PASS, REVIEW, REJECT))
        ]
        images = client.app.state.ctx.settings.images_dir
        named = sorted(p for p in images.rglob("*") if p.is_file())
        assert len(named) >= 3
        old = time.time() - 2 * 3600
        orphan = images / "2026" / "01" / "02" / "lost.jpg"
        orphan.parent.mkdir(parents=True)
        orphan.write_bytes(b"x" * 1000)
        partial = images / "2026" / "01" / "02" / ".lost2.jpg.k3j4.tmp"
        partial.write_bytes(b"half")
        fresh = images / "2026" / "01" / "02" / "committing.jpg"
        fresh.write_bytes(b"y")
        for path in [*named, orphan, partial]:  # everything old except the fresh file
            os.utime(path, (old, old))
        report = client.post("/v1/admin/retention", headers=auth(key)).json()
        assert report["orphans_removed"] == 2 and report["orphan_bytes"] == 1000 and report["images_pruned"] == 0
        assert not orphan.exists() and not partial.exists() and fresh.exists()
        assert all(p.exists() for p in named)
        for inspection_id in ids:
            assert client.get(f"/v1/inspections/{inspection_id}/image", headers=auth(key)).status_code == 200
        assert client.post("/v1/admin/retention", headers=auth(key)).json()["orphans_removed"] == 0
