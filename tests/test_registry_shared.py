"""The model registry shared by replicas: its state in the database, its files in the object store.

Two service instances (two apps, each with its own data folder: nothing on disk is shared) use one
PostgreSQL database (the throwaway cluster of tests/pg_server.py) and one S3 bucket (moto in server mode, as
tests/test_store_s3.py). What one changes, the other serves within ``registry_poll_s`` plus the load: an add
and a promotion, a shadow, a rollback, a line's product switch. An object changed in the bucket is refused
(its sha256 is not the registered one) and never served. Then the upgrade path: a data folder of the
file-based registry (state.json + versions/, as every plant has it today) is imported on first start, once,
into SQLite with the files left where they are, and into PostgreSQL + S3 with the files copied to the bucket.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from pathlib import Path

import pytest

from andon.errors import ModelFileError, StorageError
from s3_support import CREDS
from s3_support import admin as _admin
from service_support import REJECT, add_key, auth, client_for, jpeg, post_frame, settings_for

POLL_S = 0.2
#: the bound: one poll period, plus fetching (once per replica), verifying, loading and warming the model;
#: milliseconds for these tiny models, so the slack is for two shared CPU cores under other tests' load
LOAD_ALLOWANCE_S = 2.5
PREFIX = "plant1"
pytestmark = pytest.mark.usefixtures("no_local_aws_config")  # ~/.aws kept out


@pytest.fixture
def bucket(s3_endpoint) -> str:
    name = f"andon-{hashlib.sha1(str(time.time_ns()).encode()).hexdigest()[:12]}"
    _admin(s3_endpoint).create_bucket(Bucket=name)
    return name


def _settings(folder: Path, model: Path | None, url: str, endpoint: str, bucket: str):
    return settings_for(
        folder,
        model,
        url,
        registry_poll_s=POLL_S,
        image_store="s3",
        s3_endpoint_url=endpoint,
        s3_bucket=bucket,
        s3_prefix=PREFIX,
        **CREDS,
    )


def _models(tmp_path: Path) -> dict[str, Path]:
    from tiny_onnx import tiny_card, write_tiny_model

    return {v: write_tiny_model(tmp_path / f"tiny-{v}.onnx", tiny_card(version=v)) for v in ("1", "2", "3")}


def _until(what: str, check, bound: float) -> float:
    """Seconds until ``check()`` holds; fails past ``bound``."""
    started = time.monotonic()
    while not check():
        assert time.monotonic() - started < bound, f"{what}: not within {bound:.1f} s"
        time.sleep(0.02)
    return time.monotonic() - started


def _loaded(client, key: str) -> dict:
    body = client.get("/v1/models", headers=auth(key)).json()
    return {
        "active": (body["loaded_active"] or {}).get("version"),
        "shadow": (body["loaded_shadow"] or {}).get("version"),
        "error": body["load_error"],
    }


def test_two_replicas_share_the_registry_through_postgres_and_s3(tmp_path, postgres_server, s3_endpoint, bucket):
    models = _models(tmp_path)
    url = postgres_server.new_database()
    bound = POLL_S + LOAD_ALLOWANCE_S
    a_settings = _settings(tmp_path / "a", models["1"], url, s3_endpoint, bucket)
    b_settings = _settings(tmp_path / "b", None, url, s3_endpoint, bucket)
    with client_for(a_settings) as a, client_for(b_settings) as b:
        key = add_key(a, "engineer")  # one database: the key works on B too
        b.app.state.ctx.keys.invalidate()
        _until("B loads the model A registered at its start", lambda: _loaded(b, key)["active"] == "1", bound)
        objects = {o["Key"] for o in _admin(s3_endpoint).list_objects_v2(Bucket=bucket)["Contents"]}
        assert objects == {f"{PREFIX}/models/1/model.onnx"}  # the file in the bucket, nothing else

        # (1) added and promoted on A: served by B within the bound
        added = a.post("/v1/models", content=models["2"].read_bytes(), headers=auth(key))
        assert added.status_code == 201, added.text
        assert a.post("/v1/models/2/promote", headers=auth(key)).status_code == 200
        took = _until(
            "B serves the model promoted on A", lambda: b.get("/readyz").json()["model_version"] == "2", bound
        )
        print(f"\nB served the model promoted on A after {took:.2f} s (registry_poll_s {POLL_S})")
        judged = post_frame(b, jpeg(REJECT), key=key)
        assert judged.status_code == 201 and judged.json()["model_version"] == "2", judged.text
        assert not (b_settings.registry_dir / "versions").exists()  # B keeps no registry of its own on disk
        cached = {p.parent.name: p.read_bytes() for p in (b_settings.data_dir / "cache" / "models").glob("*/*.onnx")}
        assert cached == {v: models[v].read_bytes() for v in ("1", "2")}  # B's verified copies, byte for byte

        # (2) shadow and rollback reach B
        assert a.put("/v1/models/shadow", json={"version": "1"}, headers=auth(key)).status_code == 200
        _until("B scores with the shadow set on A", lambda: _loaded(b, key)["shadow"] == "1", bound)
        assert a.post("/v1/models/rollback", headers=auth(key)).status_code == 200
        _until(
            "B rolls back as A did",
            lambda: _loaded(b, key) == {"active": "1", "shadow": None, "error": None},
            bound,
        )
        view = b.get("/v1/models", headers=auth(key)).json()
        assert (view["active"], view["previous"], view["shadow"]) == ("1", "2", None)

        # (3) a product promoted and a line switched on A: B judges that line's frames under it
        assert a.post("/v1/models/2/promote", params={"product": "SKU-A"}, headers=auth(key)).status_code == 200
        switched = a.put("/v1/lines/L1/product", json={"product": "SKU-A"}, headers=auth(key))
        assert switched.status_code == 200 and switched.json()["changed"], switched.text
        _until("B runs SKU-A on line L1", lambda: b.app.state.ctx.products.current("L1") == "SKU-A", bound)
        on_b = b.get("/v1/lines/L1/product", headers=auth(key)).json()
        assert (on_b["product"], on_b["model_version"]) == ("SKU-A", "2")
        judged = post_frame(b, jpeg(REJECT, noise=2), key=key, line="L1")
        assert judged.status_code == 201 and judged.json()["model_version"] == "2", judged.text
        assert judged.json()["product"] == "SKU-A"
        switches = b.get("/v1/products/switches", headers=auth(key)).json()["items"]
        assert [(s["line_id"], s["to_product"]) for s in switches] == [("L1", "SKU-A")]  # recorded once

        # (4) an object changed in the bucket is refused, with a clear error, and never served
        assert a.post("/v1/models", content=models["3"].read_bytes(), headers=auth(key)).status_code == 201
        tampered = bytearray(models["3"].read_bytes())
        tampered[-200] ^= 0xFF
        _admin(s3_endpoint).put_object(Bucket=bucket, Key=f"{PREFIX}/models/3/model.onnx", Body=bytes(tampered))
        refused = b.post("/v1/models/3/promote", headers=auth(key))  # B has no copy: it fetches and checks
        assert refused.status_code == 422 and refused.json()["error"] == "bad_model_file", refused.text
        assert "does not match the registered file" in refused.json()["message"]
        assert str(b_settings.data_dir) not in refused.json()["message"]  # no server path in the answer
        assert b.get("/v1/models", headers=auth(key)).json()["active"] == "1"  # nothing changed
        # A promotes it from its own verified copy; B refuses to load the changed object and keeps serving 1
        assert a.post("/v1/models/3/promote", headers=auth(key)).status_code == 200
        _until("B reports the changed object", lambda: bool(_loaded(b, key)["error"]), bound)
        seen = _loaded(b, key)
        assert seen["active"] == "1" and "does not match the registered file" in seen["error"], seen
        assert post_frame(b, jpeg(REJECT, noise=3), key=key, line="L2").json()["model_version"] == "1"
        assert a.get("/readyz").json()["model_version"] == "3"
        # the original put back: B follows at the next change
        _admin(s3_endpoint).put_object(
            Bucket=bucket, Key=f"{PREFIX}/models/3/model.onnx", Body=models["3"].read_bytes()
        )
        assert a.put("/v1/models/shadow", json={"version": "2"}, headers=auth(key)).status_code == 200
        _until(
            "B loads the restored object",
            lambda: _loaded(b, key) == {"active": "3", "shadow": "2", "error": None},
            bound,
        )


def test_concurrent_changes_from_two_processes_are_serialised(tmp_path, postgres_server, s3_endpoint, bucket):
    """The CLI on one machine and the API on another: every change is one locked transaction (no lost update)."""
    from andon.service.domain import open_service

    models = _models(tmp_path)
    url = postgres_server.new_database()
    first = _settings(tmp_path / "x", None, url, s3_endpoint, bucket)
    second = _settings(tmp_path / "y", None, url, s3_endpoint, bucket)
    with open_service(first) as x, open_service(second) as y:
        x.registry.add_file(models["1"])
        y.registry.add_file(models["2"])
        start = x.registry.state().generation
        errors: list[BaseException] = []

        def promote_many(registry, version: str) -> None:
            try:
                for _ in range(15):
                    registry.promote(version)
                    registry.promote(version, product="SKU-A")
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [
            threading.Thread(target=promote_many, args=(x.registry, "1")),
            threading.Thread(target=promote_many, args=(y.registry, "2")),
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        assert not errors, errors
        state = y.registry.state()
        changes = [e for e in state.history if e["action"] == "promote"]
        assert state.generation == start + len(changes)  # each change counted once, none lost
        assert {state.active, state.previous} == {"1", "2"} and state.products["SKU-A"]["active"] in {"1", "2"}


def test_a_failed_add_leaves_nothing_registered(tmp_path, postgres_server, s3_endpoint, bucket, monkeypatch):
    from sqlalchemy.exc import OperationalError
    from sqlalchemy.orm import Session

    from andon.service.domain import open_service

    models = _models(tmp_path)
    settings = _settings(tmp_path / "x", None, postgres_server.new_database(), s3_endpoint, bucket)
    with open_service(settings) as service:
        registry = service.registry
        registry.state()  # migrated before the database is broken below

        def broken_commit(self):
            raise OperationalError("COMMIT", {}, Exception("injected: the database refuses"))

        monkeypatch.setattr(Session, "commit", broken_commit)
        with pytest.raises(StorageError, match="did not record the registration of model version 1"):
            registry.add_file(models["1"])
        monkeypatch.undo()
        assert registry.entries() == [] and registry.state().generation == 0
        assert "Contents" not in _admin(s3_endpoint).list_objects_v2(Bucket=bucket)  # the object went again
        entry, created = registry.add_file(models["1"])
        assert created and entry.path.read_bytes() == models["1"].read_bytes()


# ---- the upgrade path: a data folder of the file-based registry --------------------------------------------


def _old_registry_folder(root: Path, models: dict[str, Path]) -> dict:
    """What the file-based registry (before migration 0007) left in ``<data_dir>/models``: versions/<v>/model.onnx
    and info.json, and state.json (active, previous, shadow, generation, history, products, lines)."""
    import onnx

    from andon.inspect.onnxfile import content_hash

    history = []
    for i, (version, path) in enumerate(models.items()):
        data = path.read_bytes()
        folder = root / "versions" / version
        folder.mkdir(parents=True)
        (folder / "model.onnx").write_bytes(data)
        info = {
            "name": "tiny",
            "version": version,
            "content_hash": content_hash(onnx.load_from_string(data)),
            "file_sha256": hashlib.sha256(data).hexdigest(),
            "size_bytes": len(data),
            "added_at": f"2026-11-0{i + 1}T08:00:00.000+00:00",
            "source": path.name,
        }
        (folder / "info.json").write_text(json.dumps(info, indent=2))
        history.append({"at": info["added_at"], "action": "add", "version": version, "active": None, "shadow": None})
    history += [
        {"at": "2026-11-05T08:00:00.000+00:00", "action": "promote", "version": "1", "active": "1", "shadow": None},
        {"at": "2026-11-06T08:00:00.000+00:00", "action": "promote", "version": "2", "active": "2", "shadow": None},
        {"at": "2026-11-07T08:00:00.000+00:00", "action": "shadow", "version": "3", "active": "2", "shadow": "3"},
        {
            "at": "2026-11-08T08:00:00.000+00:00",
            "action": "promote",
            "version": "3",
            "active": "3",
            "shadow": "3",
            "product": "SKU-A",
        },
        {
            "at": "2026-11-09T08:00:00.000+00:00",
            "action": "select",
            "version": None,
            "active": "2",
            "shadow": "3",
            "product": "SKU-A",
            "line": "L1",
        },
    ]
    state = {
        "active": "2",
        "previous": "1",
        "shadow": "3",
        "generation": len(history),
        "history": history,
        "products": {"SKU-A": {"active": "3", "previous": None}},
        "lines": {"L1": "SKU-A"},
    }
    (root / "state.json").write_text(json.dumps(state, indent=2))
    return state


@pytest.mark.parametrize("where", ["sqlite-disk", "postgres-s3"])
def test_an_old_data_folder_is_imported_once_on_first_start(tmp_path, where, request):
    from andon.service.domain import open_service

    models = _models(tmp_path)
    if where == "sqlite-disk":
        settings = settings_for(tmp_path, models["2"], registry_poll_s=POLL_S)
    else:
        endpoint, bucket = request.getfixturevalue("s3_endpoint"), request.getfixturevalue("bucket")
        url = request.getfixturevalue("postgres_server").new_database()
        settings = _settings(tmp_path, models["2"], url, endpoint, bucket)
    old = _old_registry_folder(settings.registry_dir, models)
    files_before = {p: p.read_bytes() for p in settings.registry_dir.rglob("*") if p.is_file()}

    with client_for(settings) as client:  # the service's first start on the upgraded code
        key = add_key(client, "engineer")
        assert client.get("/readyz").json()["model_version"] == "2"
        view = client.get("/v1/models", headers=auth(key)).json()
        assert (view["active"], view["previous"], view["shadow"]) == ("2", "1", "3")
        assert view["products"] == old["products"] and view["lines"] == old["lines"]
        assert view["loaded_shadow"]["version"] == "3" and view["load_error"] is None
        assert [v["version"] for v in view["versions"]] == ["1", "2", "3"]
        assert [v["added_at"][:10] for v in view["versions"]] == ["2026-11-01", "2026-11-02", "2026-11-03"]
        on_l1 = client.get("/v1/lines/L1/product", headers=auth(key)).json()
        assert (on_l1["product"], on_l1["model_version"]) == ("SKU-A", "3")
        state = client.app.state.ctx.registry.state()
        assert state.history == old["history"] and state.generation == old["generation"]
        # the registry works on from there: a rollback, recorded after the imported history
        assert client.post("/v1/models/rollback", headers=auth(key)).json()["active"] == "1"

    # the old files are left in place, byte for byte; a second start imports nothing again
    assert {p: p.read_bytes() for p in files_before} == files_before
    with open_service(settings.model_copy(update={"model": None})) as service:
        state = service.registry.state()
        assert (state.active, state.previous) == ("1", "2") and len(state.history) == len(old["history"]) + 1
        assert service.registry.import_legacy() is False
        if where == "postgres-s3":  # the files were copied to the bucket; this replica fetches and checks them
            objects = _admin(settings.s3_endpoint_url).list_objects_v2(Bucket=settings.s3_bucket)["Contents"]
            assert {o["Key"] for o in objects} >= {f"{PREFIX}/models/{v}/model.onnx" for v in models}
            assert service.registry.get("3").path.read_bytes() == models["3"].read_bytes()
        else:  # on the local disk they are already where the store keeps them
            assert service.registry.get("3").path == settings.registry_dir / "versions" / "3" / "model.onnx"


def test_a_changed_file_on_the_local_disk_is_refused_too(tmp_path):
    from andon.service.domain import open_service

    models = _models(tmp_path)
    settings = settings_for(tmp_path, None)
    with open_service(settings) as service:
        entry, _ = service.registry.add_file(models["1"])
        path = entry.path
        path.write_bytes(models["2"].read_bytes())  # a valid model, but not the registered bytes
        with pytest.raises(ModelFileError, match="does not match the registered file"):
            _ = service.registry.get("1").path


def test_the_cli_on_another_machine_changes_what_a_running_replica_serves(
    tmp_path, postgres_server, s3_endpoint, bucket
):
    """``andon models add --promote`` with its own data folder, the same database and bucket: B follows."""
    import os
    import subprocess
    import sys

    models = _models(tmp_path)
    url = postgres_server.new_database()
    config = tmp_path / "cli.yaml"
    config.write_text(
        f"data_dir: {tmp_path / 'cli'}\ndatabase_url: {url}\nimage_store: s3\ns3_endpoint_url: {s3_endpoint}\n"
        f"s3_bucket: {bucket}\ns3_prefix: {PREFIX}\ns3_region: us-east-1\n"
    )
    env = {**os.environ, "ANDON_S3_ACCESS_KEY_ID": "testing", "ANDON_S3_SECRET_ACCESS_KEY": "testing"}
    with client_for(_settings(tmp_path / "b", models["1"], url, s3_endpoint, bucket)) as b:
        assert b.get("/readyz").json()["model_version"] == "1"
        done = subprocess.run(
            [sys.executable, "-m", "andon", "models", "add", str(models["2"]), "--promote", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert done.returncode == 0, done.stderr
        assert "active: 2 | previous: 1" in done.stdout
        _until("B serves the CLI's promotion", lambda: b.get("/readyz").json()["model_version"] == "2", POLL_S + 2.5)
        listed = subprocess.run(
            [sys.executable, "-m", "andon", "models", "list", "--config", str(config)],
            capture_output=True,
            text=True,
            timeout=120,
            env=env,
        )
        assert listed.returncode == 0 and "previous" in listed.stdout, listed.stderr
    assert not (tmp_path / "cli" / "models" / "versions").exists()  # the CLI's folder keeps no registry


def test_on_postgres_a_change_wakes_the_other_replica_at_once(tmp_path, postgres_server, s3_endpoint, bucket):
    """LISTEN/NOTIFY: with a poll of 60 s, a promotion on A is still served by B within a second or two."""
    models = _models(tmp_path)
    url = postgres_server.new_database()
    slow = dict(registry_poll_s=60.0)
    a_settings = _settings(tmp_path / "a", models["1"], url, s3_endpoint, bucket).model_copy(update=slow)
    b_settings = _settings(tmp_path / "b", None, url, s3_endpoint, bucket).model_copy(update=slow)
    with client_for(a_settings) as a, client_for(b_settings) as b:
        assert b.get("/readyz").json()["model_version"] in {None, "1"}
        key = add_key(a, "engineer")
        _until("B follows A's start", lambda: b.get("/readyz").json()["model_version"] == "1", LOAD_ALLOWANCE_S)
        assert a.post("/v1/models", content=models["2"].read_bytes(), headers=auth(key)).status_code == 201
        assert a.post("/v1/models/2/promote", headers=auth(key)).status_code == 200
        took = _until("B woken by NOTIFY", lambda: b.get("/readyz").json()["model_version"] == "2", LOAD_ALLOWANCE_S)
        print(f"\nB served A's promotion {took:.2f} s later with registry_poll_s 60 (NOTIFY)")


def test_while_the_registry_cannot_be_read_the_loaded_models_keep_serving(tmp_path):
    from sqlalchemy.exc import OperationalError

    models = _models(tmp_path)
    with client_for(settings_for(tmp_path, models["1"])) as client:
        ctx = client.app.state.ctx
        working = ctx.registry.sessions

        def down():
            raise OperationalError("SELECT", {}, Exception("injected: the database is down"))

        ctx.registry.sessions = down
        assert ctx.runtime.sync(force=True) is False
        assert ctx.runtime.snapshot().active.model_version == "1"  # still loaded, still judging
        assert "cannot read the model registry" in ctx.runtime.last_error
        with pytest.raises(StorageError, match="registry's database cannot be read"):
            ctx.registry.promote("1")
        with pytest.raises(StorageError, match="did not record the shadow"):
            ctx.registry.set_shadow(None)  # a change that reads nothing first fails at its transaction
        ctx.registry.sessions = working
        assert ctx.runtime.sync() is False and ctx.runtime.last_error is None  # read again, nothing changed
        assert ctx.runtime.snapshot().active.model_version == "1"
