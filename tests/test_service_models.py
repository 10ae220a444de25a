"""Model registry, promotion and rollback (API and CLI), atomic swap under load, shadow scoring."""

from __future__ import annotations

import threading
import time

import pytest

from andon.errors import ModelFileError, NotFoundError, RegistryError
from service_support import PASS, REJECT, REVIEW, add_key, auth, client_for, jpeg, post_frame, settings_for


def _strict_model(path):
    """Version 2: the same network with a stricter card: what v1 reviews (P(defect) ~0.47), v2 rejects."""
    from andon.inspect.card import ThresholdBand, Thresholds
    from tiny_onnx import tiny_card, write_tiny_model

    card = tiny_card(
        version="2",
        thresholds=Thresholds(defect=ThresholdBand(pass_below=0.05, reject_at=0.4), source="manual").model_dump(),
    )
    return write_tiny_model(path, card)


@pytest.fixture
def service(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path, inference_threads=2, queue_size=64)) as client:
        yield client, add_key(client, "engineer"), _strict_model(tmp_path / "v2.onnx")


def _upload(client, key, path):
    return client.post(
        "/v1/models", content=path.read_bytes(), headers={**auth(key), "Content-Type": "application/octet-stream"}
    )


def test_add_promote_rollback_through_the_api(service):
    client, key, v2 = service
    assert client.get("/readyz").json()["model_version"] == "1"
    added = _upload(client, key, v2)
    assert added.status_code == 201 and added.json()["version"] == "2" and not added.json()["active"]
    assert _upload(client, key, v2).status_code == 200  # same file again: no-op
    promoted = client.post("/v1/models/2/promote", headers=auth(key)).json()
    assert (promoted["active"], promoted["previous"]) == ("2", "1")
    assert promoted["loaded_active"]["version"] == "2"
    body = post_frame(client, jpeg(REVIEW, noise=3), key=key).json()
    assert (body["model_version"], body["decision"]) == ("2", "reject")
    rolled = client.post("/v1/models/rollback", headers=auth(key)).json()
    assert (rolled["active"], rolled["previous"]) == ("1", "2")
    body = post_frame(client, jpeg(REVIEW, noise=4), key=key).json()
    assert (body["model_version"], body["decision"]) == ("1", "review")
    listed = client.get("/v1/models", headers=auth(key)).json()
    assert [v["version"] for v in listed["versions"]] == ["1", "2"] and listed["versions"][0]["active"]


def test_broken_models_are_refused_and_nothing_changes(service):
    client, key, v2 = service
    before = client.get("/v1/models", headers=auth(key)).json()
    for junk, code in (
        (b"", "bad_model_file"),
        (b"not onnx at all" * 10, "bad_model_file"),
        (jpeg(PASS), "bad_model_file"),
    ):
        r = _upload(client, key, _write(v2.parent / "junk.onnx", junk))
        assert r.status_code == 422 and r.json()["error"] == code, r.text
    tampered = bytearray(v2.read_bytes())
    tampered[-200] ^= 0xFF  # a flipped weight byte: the content hash no longer matches the card
    r = _upload(client, key, _write(v2.parent / "tampered.onnx", bytes(tampered)))
    assert r.status_code == 422
    assert client.post("/v1/models/9/promote", headers=auth(key)).status_code == 404
    assert client.post("/v1/models/rollback", headers=auth(key)).status_code == 409
    assert client.get("/v1/models", headers=auth(key)).json() == before
    assert not list((client.app.state.ctx.registry.root).glob(".staging-*"))


def _write(path, data):
    path.write_bytes(data)
    return path


def test_atomic_swap_under_concurrent_requests(service):
    """Frames keep flowing while the active model flips 1 -> 2 -> 1 -> 2: no failed request, and every
    record names the model whose thresholds produced its verdict (v1 reviews this frame, v2 rejects it)."""
    client, key, v2 = service
    assert _upload(client, key, v2).status_code == 201
    statuses: list[int] = []
    records: list[dict] = []
    lock = threading.Lock()
    stop = threading.Event()

    def camera(n: int) -> None:
        i = 0
        while not stop.is_set() and i < 60:
            r = post_frame(client, jpeg(REVIEW, noise=n * 100 + i), camera=f"cam{n}", key=key)
            with lock:
                statuses.append(r.status_code)
                if r.status_code == 201:
                    records.append(r.json())
            i += 1

    threads = [threading.Thread(target=camera, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    for action in ("/v1/models/2/promote", "/v1/models/rollback", "/v1/models/2/promote"):
        time.sleep(0.15)
        assert client.post(action, headers=auth(key)).status_code == 200
    time.sleep(0.15)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    assert statuses and set(statuses) == {201}, f"failed requests: {[s for s in statuses if s != 201]}"
    seen = {(r["model_version"], r["decision"]) for r in records}
    assert seen == {("1", "review"), ("2", "reject")}, seen
    ids = [r["id"] for r in records]
    stored = client.get("/v1/inspections", params={"limit": 500}, headers=auth(key)).json()["items"]
    by_id = {s["id"]: s for s in stored}
    assert all(by_id[i]["model_version"] == r["model_version"] for i, r in zip(ids, records))


def test_shadow_scores_the_same_frames_without_changing_verdicts(service):
    client, key, v2 = service
    _upload(client, key, v2)
    assert client.put("/v1/models/shadow", json={"version": "2"}, headers=auth(key)).json()["shadow"] == "2"
    verdicts = [post_frame(client, jpeg(v), key=key).json()["decision"] for v in (PASS, REVIEW, REJECT)]
    assert verdicts == ["pass", "review", "reject"]  # the active model (v1) decided
    stats = client.get("/v1/models/shadow", headers=auth(key)).json()
    assert stats["compared"] == 3 and stats["agree_decision"] == 2 and stats["disagree_decision"] == 1
    assert stats["confusion"] == {"pass": {"pass": 1}, "review": {"reject": 1}, "reject": {"reject": 1}}
    assert stats["decision_agreement"] == pytest.approx(2 / 3)
    assert 'andon_shadow_comparisons_total{outcome="disagree",shadow_version="2"} 1.0' in client.get("/metrics").text
    assert client.put("/v1/models/shadow", json={"version": "1"}, headers=auth(key)).status_code == 409
    assert client.delete("/v1/models/shadow", headers=auth(key)).json()["shadow"] is None


def test_cli_promotion_reaches_the_running_service(service):
    from typer.testing import CliRunner

    from andon.cli import app

    client, key, v2 = service
    data_dir = str(client.app.state.ctx.settings.data_dir)
    runner = CliRunner()
    out = runner.invoke(app, ["models", "add", str(v2), "--data-dir", data_dir])
    assert out.exit_code == 0 and "added: version 2" in out.output
    out = runner.invoke(app, ["models", "promote", "2", "--data-dir", data_dir])
    assert out.exit_code == 0 and "active: 2 | previous: 1" in out.output
    deadline = time.monotonic() + 10
    while client.get("/readyz").json()["model_version"] != "2":
        assert time.monotonic() < deadline, "the service did not pick up the promotion"
        time.sleep(0.05)
    assert "2  " in runner.invoke(app, ["models", "list", "--data-dir", data_dir]).output
    out = runner.invoke(app, ["models", "rollback", "--data-dir", data_dir])
    assert "active: 1 | previous: 2" in out.output
    out = runner.invoke(app, ["models", "promote", "7", "--data-dir", data_dir])
    assert out.exit_code != 0


def test_cli_takes_a_model_name_registered_once_for_its_version(service, tmp_path, capsys):
    """`andon models promote flange-v2`: the run's name stands for its one version (no time stamp to copy)."""
    from typer.testing import CliRunner

    from andon.cli import app
    from tiny_onnx import tiny_card, write_tiny_model

    client, key, v2 = service
    data_dir = str(client.app.state.ctx.settings.data_dir)
    runner = CliRunner()
    named = write_tiny_model(tmp_path / "f.onnx", tiny_card(name="flange-v2", version="flange-v2-20261206T101500Z"))
    assert runner.invoke(app, ["models", "add", str(named), "--data-dir", data_dir]).exit_code == 0
    out = runner.invoke(app, ["models", "shadow", "flange-v2", "--data-dir", data_dir])
    assert out.exit_code == 0 and "shadow: flange-v2-20261206T101500Z" in out.output, out.output
    out = runner.invoke(app, ["models", "promote", "flange-v2", "--data-dir", data_dir])
    assert out.exit_code == 0 and "active: flange-v2-20261206T101500Z | previous: 1" in out.output, out.output
    # two versions of one name: which one is meant is not guessed
    assert runner.invoke(app, ["models", "add", str(v2), "--data-dir", data_dir]).exit_code == 0  # named tiny, as v1
    from andon.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["models", "promote", "tiny", "--data-dir", data_dir])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "2 registered versions are named 'tiny' (1, 2); give the version" in err
    assert "Traceback" not in err


def test_registry_rules(tmp_path, tiny_model_path):
    from andon.service.domain import ServiceData
    from andon.service.settings import Settings

    reg = ServiceData(Settings.load(None, data_dir=tmp_path)).registry  # in the database, files on the disk
    with pytest.raises(RegistryError, match="nothing to roll back"):
        reg.rollback()
    entry, created = reg.add_file(tiny_model_path)
    assert created and entry.version == "1" and entry.path.read_bytes() == tiny_model_path.read_bytes()
    assert reg.add_file(tiny_model_path) == (entry, False)
    from tiny_onnx import tiny_card, write_tiny_model

    other = write_tiny_model(tmp_path / "other.onnx", tiny_card(name="other"))  # version 1, different file
    with pytest.raises(RegistryError, match="already registered"):
        reg.add_file(other)
    with pytest.raises(NotFoundError):
        reg.promote("2")
    with pytest.raises(ModelFileError):
        reg.add(b"\x08\x07garbage", source="garbage.onnx")
    reg.promote("1")
    with pytest.raises(RegistryError, match="active model"):
        reg.set_shadow("1")
    state = reg.state()
    assert (state.active, state.previous, state.shadow) == ("1", None, None) and state.history[-1][
        "action"
    ] == "promote"
    v3 = write_tiny_model(tmp_path / "v3.onnx", tiny_card(version="3"))

    def refuse(path):
        raise ModelFileError(f"{path.name} does not warm up")

    with pytest.raises(ModelFileError, match="does not warm up"):
        reg.add_file(v3, validate=refuse)
    assert [e.version for e in reg.entries()] == ["1"] and not list(reg.root.glob(".staging-*"))
