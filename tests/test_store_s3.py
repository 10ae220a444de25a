"""Images in an S3-compatible bucket (``image_store: s3``), against a real S3 server the tests start: moto in
server mode on a free loopback port, spoken to over HTTP by boto3 exactly as MinIO or AWS would be.

The store contract is checked for both stores, built by ``make_store``; then the whole service on S3 (frames
posted, images fetched back through the API), the durability rule (the object is in the bucket before the
record is flushed; a record the database refuses leaves no object), the orphan sweep and its grace rule for
replicas sharing the bucket, and a store that is down or hangs (503 within a bound, no record)."""

from __future__ import annotations

import datetime as dt
import hashlib
import os
import re
import socket
import time

import pytest

from andon.errors import NotFoundError
from andon.service.settings import Settings
from andon.service.storage import LocalDiskStore, make_store
from s3_support import CREDS
from s3_support import admin as _admin
from s3_support import moto_server as _moto
from s3_support import new_bucket as _new_bucket
from service_support import PASS, REJECT, REVIEW, add_key, auth, client_for, count_rows, jpeg, post_frame, settings_for

PREFIX = "plant1/line3"
pytestmark = pytest.mark.usefixtures("no_local_aws_config")


@pytest.fixture
def bucket(s3_endpoint) -> str:
    return _new_bucket(s3_endpoint)


def _objects(endpoint: str, bucket: str, *, models: bool = False) -> dict[str, bytes]:
    """The bucket's objects: the images only, unless ``models`` (the registry's files, ``<prefix>/models/``)."""
    client = _admin(endpoint)
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=bucket)
    keys = [item["Key"] for page in pages for item in page.get("Contents", ())]
    keys = [k for k in keys if models or not k.startswith(f"{PREFIX}/models/")]
    return {key: client.get_object(Bucket=bucket, Key=key)["Body"].read() for key in keys}


def _named(client) -> set[str]:
    """The object names the service's records give as image or heatmap."""
    from andon.service.tables import Inspection

    with client.app.state.ctx.sessions() as session:
        rows = list(session.query(Inspection))
    return {f"{PREFIX}/{key}" for row in rows for key in (row.image_key, row.heatmap_key) if key}


def _s3_settings(tmp_path, model, endpoint, bucket, **changes) -> Settings:
    return settings_for(
        tmp_path,
        model,
        image_store="s3",
        s3_endpoint_url=endpoint,
        s3_bucket=bucket,
        s3_prefix=PREFIX,
        **CREDS,
        **changes,
    )


# ---- the store contract, for both stores ---------------------------------------------------------------------


@pytest.fixture(params=["local", "s3"])
def store(request, tmp_path):
    if request.param == "local":
        settings = Settings.load(None, data_dir=tmp_path / "data", min_free_disk_mb=0)
    else:
        endpoint = request.getfixturevalue("s3_endpoint")
        settings = _s3_settings(tmp_path, None, endpoint, _new_bucket(endpoint))
    made = make_store(settings)
    assert type(made).__name__ == {"local": "LocalDiskStore", "s3": "S3Store"}[request.param]
    yield made
    made.leave_writers()


def test_store_contract_put_get_exists_delete(store):
    key = "2026/12/03/a1.jpg"
    assert not store.exists(key)
    with pytest.raises(NotFoundError, match="not in the store"):
        store.get(key)
    store.put(key, b"first")
    assert store.exists(key) and store.get(key) == b"first"
    store.put(key, b"second, longer")  # a retry overwrites whole
    assert store.get(key) == b"second, longer"
    store.put("2026/12/03/empty.npy", b"")
    assert store.get("2026/12/03/empty.npy") == b""
    store.delete(key)
    store.delete(key)  # absent: no error
    assert not store.exists(key)
    with pytest.raises(NotFoundError):
        store.get(key)
    for bad in ("../etc/passwd", "/abs", "a//b", "", ".writers.lock", "a/../b"):
        for call, args in ((store.put, (bad, b"x")), (store.get, (bad,)), (store.exists, (bad,))):
            with pytest.raises(ValueError, match="invalid storage key"):
                call(*args)
    assert store.healthcheck() is None


def test_store_contract_stored_before_and_the_sweep_helpers(store):
    sizes = {f"2026/12/03/f{i}.jpg": i * 10 for i in range(5)}
    for key, size in sizes.items():
        store.put(key, b"x" * size)
    now = dt.datetime.now(dt.timezone.utc)
    assert dict(store.stored_before(now + dt.timedelta(minutes=1))) == sizes
    assert list(store.stored_before(now - dt.timedelta(hours=1))) == []
    assert store.remove_partial_writes(now + dt.timedelta(minutes=1)) == 0  # nothing was interrupted
    assert dict(store.stored_before(now + dt.timedelta(minutes=1))) == sizes
    free = store.free_bytes()
    assert (free is None) == (not isinstance(store, LocalDiskStore))  # S3: no free-space figure
    # alone: the local disk knows (a flock); a shared bucket never claims it (docs/reliability.md)
    assert store.join_writers(sole=True) is isinstance(store, LocalDiskStore)
    store.join_writers()
    assert dict(store.stored_before(now + dt.timedelta(minutes=1))) == sizes  # the lock file is no key


# ---- S3 specifics --------------------------------------------------------------------------------------------


def test_s3_objects_are_whole_under_the_prefix_and_listed_page_by_page(tmp_path, s3_endpoint, bucket):
    from andon.service.s3store import S3Store

    store = S3Store(
        bucket, prefix=PREFIX, endpoint_url=s3_endpoint, access_key_id="testing", secret_access_key="testing"
    )
    store.list_page_size = 2  # 5 objects: three pages
    data = {f"2026/12/03/p{i}.jpg": bytes([i]) * (1000 + i) for i in range(5)}
    for key, value in data.items():
        store.put(key, value)
    admin = _admin(s3_endpoint)
    admin.put_object(Bucket=bucket, Key="plant1/line30/other-prefix.jpg", Body=b"not ours")  # a prefix's neighbour
    admin.put_object(Bucket=bucket, Key=f"{PREFIX}/.hidden", Body=b"not a key")
    stored = _objects(s3_endpoint, bucket)
    for key, value in data.items():
        assert stored[f"{PREFIX}/{key}"] == value  # the server holds the posted bytes under <prefix>/<key>
        head = admin.head_object(Bucket=bucket, Key=f"{PREFIX}/{key}")
        assert head["ETag"].strip('"') == hashlib.md5(value).hexdigest()  # sent with its Content-MD5
    later = dt.datetime.now(dt.timezone.utc) + dt.timedelta(minutes=1)
    assert dict(store.stored_before(later)) == {k: len(v) for k, v in data.items()}


def test_s3_settings_are_checked_with_clear_errors(tmp_path):
    from andon.errors import ConfigError

    cases = {
        "s3_bucket": dict(image_store="s3"),
        "lowercase letters": dict(s3_bucket="Frames_2026"),
        "IP address": dict(s3_bucket="10.0.0.1"),
        "http(s)://host": dict(s3_endpoint_url="minio:9000"),
        "no credentials": dict(s3_endpoint_url="http://key:secret@minio:9000"),
        "together": dict(s3_secret_access_key="only-the-secret"),
        "'/'-separated": dict(s3_prefix="plant1//line3"),
        "eu-central-1": dict(s3_region="Frankfurt"),
    }
    for expected, changes in cases.items():
        with pytest.raises(ConfigError, match=re.escape(expected)) as err:
            Settings.load(None, data_dir=tmp_path, **changes)
        assert "only-the-secret" not in str(err.value)  # a refused setting never echoes the secret
    ok = Settings.load(
        None, data_dir=tmp_path, image_store="s3", s3_bucket="andon.frames-1", s3_prefix="/plant1/", **CREDS
    )
    assert ok.s3_prefix == "plant1" and "testing" not in repr(ok.s3_secret_access_key)


def test_workers_get_the_secret_through_their_environment_not_the_file(tmp_path, monkeypatch):
    from andon.cli.serve import _hand_to_workers
    from andon.service.settings import CONFIG_ENV

    monkeypatch.setenv(CONFIG_ENV, "")
    settings = Settings.load(
        None,
        data_dir=tmp_path,
        workers=2,
        image_store="s3",
        s3_bucket="frames",
        s3_access_key_id="AKIA1",
        s3_secret_access_key="s3cr3t-value",
    )
    monkeypatch.delenv("ANDON_S3_SECRET_ACCESS_KEY", raising=False)
    _hand_to_workers(settings)
    try:
        assert "s3cr3t-value" not in (tmp_path / "run" / "settings.json").read_text()
        worker = Settings.from_environment()
        assert worker.s3_secret_access_key.get_secret_value() == "s3cr3t-value"
        assert worker.s3_access_key_id == "AKIA1" and worker.image_store == "s3"
    finally:
        os.environ.pop("ANDON_S3_SECRET_ACCESS_KEY", None)


# ---- the service on S3 ---------------------------------------------------------------------------------------


def test_service_on_s3_stores_frames_before_their_records_and_serves_them(
    tmp_path, tiny_model_path, s3_endpoint, bucket
):
    from sqlalchemy import event
    from sqlalchemy.exc import OperationalError

    from andon.service.tables import Inspection

    settings = _s3_settings(tmp_path, tiny_model_path, s3_endpoint, bucket, pass_sample_rate=1.0)
    admin = _admin(s3_endpoint)
    seen: list[tuple[str, bool]] = []  # (object key, in the bucket when its record was flushed)
    refuse = {"next": False}

    with client_for(settings) as client:
        ctx = client.app.state.ctx

        @event.listens_for(ctx.sessions, "before_flush")
        def _check(session, _context, _instances):
            for row in [r for r in session.new if isinstance(r, Inspection)]:
                for key in filter(None, (row.image_key, row.heatmap_key)):
                    name = f"{PREFIX}/{key}"
                    there = admin.list_objects_v2(Bucket=bucket, Prefix=name)["KeyCount"] == 1
                    seen.append((name, there))
            if refuse["next"]:
                refuse["next"] = False
                raise OperationalError("INSERT", {}, Exception("injected: the database refuses"))

        assert client.get("/readyz").status_code == 200
        key = add_key(client, "engineer")
        frames = {v: jpeg(v, noise=i + 1) for i, v in enumerate((PASS, REVIEW, REJECT))}
        ids = {}
        for value, data in frames.items():
            r = post_frame(client, data, key=key)
            assert r.status_code == 201, r.text
            ids[value] = r.json()["id"]
        assert len(seen) >= 3 and all(there for _name, there in seen)  # objects first, then the record
        for value, inspection_id in ids.items():
            got = client.get(f"/v1/inspections/{inspection_id}/image", headers=auth(key))
            assert got.status_code == 200 and got.content == frames[value]
        stored = _objects(s3_endpoint, bucket)
        named = _named(client)
        assert count_rows(client) == 3 and set(stored) == named == {name for name, _there in seen}
        assert not settings.images_dir.exists()  # nothing on the local disk
        assert f"{PREFIX}/models/1/model.onnx" in _objects(s3_endpoint, bucket, models=True)  # the registry's file

        refuse["next"] = True  # the database refuses the next record: 503, and its object is removed again
        r = post_frame(client, jpeg(REJECT, noise=9), key=key)
        assert r.status_code == 503 and r.json()["error"] == "storage_unavailable"
        assert len(seen) > len(named) and seen[-1][1]  # it had been stored ...
        assert set(_objects(s3_endpoint, bucket)) == named  # ... and was removed with the failed record
        assert count_rows(client) == 3
        report = client.post("/v1/admin/retention", headers=auth(key)).json()
        assert report["orphans_removed"] == 0 and report["images_pruned"] == 0


def test_orphan_sweep_on_s3_spares_what_another_replica_is_committing(tmp_path, tiny_model_path, s3_endpoint, bucket):
    """Objects no record names go once older than orphan_grace_s; a fresh one (another replica between its
    PUT and its commit) stays, at start-up too: a shared bucket never lets a replica sweep as if alone."""
    from andon.service.retention import prune, sweep_at_start
    from andon.service.tables import utcnow

    settings = _s3_settings(tmp_path, tiny_model_path, s3_endpoint, bucket, pass_sample_rate=1.0, orphan_grace_s=60)
    admin = _admin(s3_endpoint)
    with client_for(settings) as client:
        ctx = client.app.state.ctx
        ids = [post_frame(client, jpeg(v, noise=i + 1)).json()["id"] for i, v in enumerate((REVIEW, REJECT))]
        named = set(_objects(s3_endpoint, bucket))
        admin.put_object(Bucket=bucket, Key=f"{PREFIX}/2026/01/02/lost.jpg", Body=b"x" * 1000)  # a crash's orphan
        admin.put_object(Bucket=bucket, Key=f"{PREFIX}/2026/01/02/committing.jpg", Body=b"y")  # another replica's
        # a replica starting now: the fresh orphan is spared (grace), whatever the store says about writers
        report, alone = sweep_at_start(ctx.sessions, ctx.store, orphan_grace_s=60)
        assert not alone and report.orphans_removed == 0
        assert len(_objects(s3_endpoint, bucket)) == len(named) + 2
        # two minutes on (the grace is over): both go, every named object stays
        later = utcnow() + dt.timedelta(minutes=2)
        report = prune(ctx.sessions, ctx.store, pass_days=None, reviewed_days=None, orphan_grace_s=60, now=later)
        assert report.orphans_removed == 2 and report.orphan_bytes == 1001
        assert set(_objects(s3_endpoint, bucket)) == named
        for inspection_id in ids:
            assert client.get(f"/v1/inspections/{inspection_id}/image").status_code == 200


def test_store_down_gives_503_and_no_record_then_recovers(tmp_path, tiny_model_path):
    server = _moto()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    bucket = _new_bucket(endpoint)
    settings = _s3_settings(tmp_path, tiny_model_path, endpoint, bucket, s3_max_attempts=1)
    try:
        with client_for(settings) as client:
            assert post_frame(client, jpeg(REJECT, noise=1)).status_code == 201
            server.stop()
            server = None
            started = time.monotonic()
            r = post_frame(client, jpeg(REJECT, noise=2))
            assert r.status_code == 503 and r.json()["error"] == "storage_unavailable"
            assert "cannot be reached" in r.json()["message"] and time.monotonic() - started < 5
            assert count_rows(client) == 1  # no record without its object
            ready = client.get("/readyz")
            assert ready.status_code == 503 and any("not reachable" in x for x in ready.json()["reasons"])
            server = _moto(port)  # back (moto keeps its buckets in the process)
            assert client.get("/readyz").status_code == 200
            assert post_frame(client, jpeg(REJECT, noise=2)).status_code == 201
            assert count_rows(client) == 2 and set(_objects(endpoint, bucket)) == _named(client)
    finally:
        if server is not None:
            server.stop()


def test_store_that_hangs_gives_503_within_the_timeouts_and_the_service_still_starts(tmp_path, tiny_model_path):
    """A server that accepts connections and never answers: start-up skips its sweep (not ready), a frame gets
    503 after about attempts x (read timeout + 1 s), never a hang, and no record. The model was registered
    while the store answered: the replica serves it from its verified local copy."""
    server = _moto()
    host, port = server.get_host_and_port()
    _admin(f"http://{host}:{port}").create_bucket(Bucket="frames")
    with client_for(_s3_settings(tmp_path, tiny_model_path, f"http://{host}:{port}", "frames")) as client:
        assert client.get("/readyz").status_code == 200
    server.stop()
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(64)
        endpoint = f"http://127.0.0.1:{silent.getsockname()[1]}"
        settings = _s3_settings(
            tmp_path, tiny_model_path, endpoint, "frames", s3_read_timeout_s=0.3, s3_connect_timeout_s=0.3
        )  # 2 attempts (the default)
        with client_for(settings) as client:
            ready = client.get("/readyz")
            assert ready.status_code == 503 and any("did not answer in time" in x for x in ready.json()["reasons"])
            started = time.monotonic()
            r = post_frame(client, jpeg(REJECT))
            took = time.monotonic() - started
            assert r.status_code == 503 and r.json()["error"] == "storage_unavailable"
            assert "did not answer in time" in r.json()["message"]
            assert took < 2 * (0.3 + 1.0) + 1.0 + 1.5, took  # the bound, and some slack for 2 shared cores
            assert count_rows(client) == 0


def test_review_export_reads_the_images_from_the_bucket(tmp_path, tiny_model_path, s3_endpoint, bucket):
    """``andon review export --config``: the CLI builds its store with make_store too, so the reviewed frames'
    images come out of the bucket the service wrote them to."""
    import yaml
    from typer.testing import CliRunner

    from andon.cli import app as cli
    from andon.service.review.verdicts import ClassInfo, record_verdict
    from andon.service.tables import Inspection

    settings = _s3_settings(tmp_path, tiny_model_path, s3_endpoint, bucket)
    frames = [jpeg(REJECT, noise=i + 1) for i in range(2)]
    with client_for(settings) as client:
        ids = [post_frame(client, data).json()["id"] for data in frames]
        with client.app.state.ctx.sessions() as session:
            for inspection_id in ids:
                info = lambda row: ClassInfo.from_scores(row.scores)  # noqa: E731
                record_verdict(session, inspection_id, verdict="confirm_defect", reviewer="olga", info_for=info)
            session.commit()
            labels = {row.id: row.label for row in session.query(Inspection)}
    assert not settings.images_dir.exists()
    config = tmp_path / "service.yaml"
    config.write_text(
        yaml.safe_dump(
            {
                "data_dir": str(settings.data_dir),
                "image_store": "s3",
                "s3_endpoint_url": s3_endpoint,
                "s3_bucket": bucket,
                "s3_prefix": PREFIX,
                **CREDS,
            }
        )
    )
    out = tmp_path / "export"
    r = CliRunner().invoke(cli, ["review", "export", str(out), "--config", str(config), "--since", "1d"])
    assert r.exit_code == 0, r.output
    assert "exported 2 frames" in r.output
    for inspection_id, data in zip(ids, frames):
        assert (out / "images" / labels[inspection_id] / f"{inspection_id}.jpg").read_bytes() == data
