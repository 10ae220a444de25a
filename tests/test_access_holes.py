"""Issue 14, access and exposure: each hole the tester found, as a test that failed before its fix.

1. revoking every key (and restarting) never re-opens the service; a CLI revocation is refused at once
2. no redirect is ever built from the Host header
3. /metrics and /readyz need a credential when the service is bound beyond loopback (a monitor key suffices)
4. model-upload errors name the bad value and what is allowed: no server paths, no onnxruntime internals
"""

from __future__ import annotations

import logging

import pytest

from service_support import REJECT, add_key, auth, client_for, jpeg, post_frame, settings_for

HOSTILE = "evil.example"


def _revoke_all(settings) -> None:
    """What 'andon keys revoke' does, from another process's point of view: its own engine, no cache."""
    from andon.service.auth import list_keys, revoke_key
    from andon.service.db import make_engine, session_factory

    engine = make_engine(settings.db_url)
    try:
        with session_factory(engine)() as session:
            for row in list_keys(session):
                revoke_key(session, row.id)
            session.commit()
    finally:
        engine.dispose()


# ---- 1. open mode never comes back by itself ------------------------------------------------------------


def test_revoking_every_key_and_restarting_stays_closed(tmp_path, tiny_model_path):
    settings = settings_for(tmp_path, tiny_model_path)
    with client_for(settings) as client:
        stored = post_frame(client, jpeg(REJECT), camera="cam1")  # open mode: anonymous is fine
        assert stored.status_code == 201
        add_key(client, "engineer")
    _revoke_all(settings)
    with client_for(settings) as client:  # the restart: a fresh process state, the same database
        frame_id = stored.json()["id"]
        assert post_frame(client, jpeg(REJECT), camera="cam1").status_code == 401
        assert client.get("/v1/inspections").status_code == 401
        r = client.get(f"/v1/inspections/{frame_id}/image")
        assert r.status_code == 401 and set(r.json()) == {"error", "message"}


def test_open_mode_after_keys_only_with_the_flag_and_it_is_logged(tmp_path, tiny_model_path, caplog):
    settings = settings_for(tmp_path, tiny_model_path)
    with client_for(settings) as client:
        add_key(client, "engineer")
    _revoke_all(settings)
    caplog.set_level(logging.WARNING, logger="andon.service")
    with client_for(settings.model_copy(update={"allow_open_mode_after_keys": True})) as client:
        assert client.get("/v1/inspections").status_code == 200
        assert any("OPEN MODE after keys" in r.getMessage() for r in caplog.records)
        engineer = add_key(client, "engineer")  # an active key closes it again, flag or not
        assert client.get("/v1/inspections").status_code == 401
        assert client.get("/v1/inspections", headers=auth(engineer)).status_code == 200


def test_a_cli_revocation_is_refused_at_the_next_request(tmp_path, tiny_model_path):
    from typer.testing import CliRunner

    from andon.cli import app as cli

    settings = settings_for(tmp_path, tiny_model_path)
    with client_for(settings) as client:
        key = add_key(client, "operator")
        assert client.get("/v1/inspections", headers=auth(key)).status_code == 200  # verified once
        out = CliRunner().invoke(cli, ["keys", "revoke", key[6:18], "--data-dir", str(settings.data_dir)])
        assert out.exit_code == 0, out.output
        # no invalidate(), no waiting: the next request reads the key row again
        r = client.get("/v1/inspections", headers=auth(key))
        assert r.status_code == 401 and "revoked" in r.json()["message"]


def test_serve_with_every_key_revoked_does_not_fall_back_to_open_mode(tmp_path, tiny_model_path, capsys):
    from andon.cli.serve import prepare
    from andon.service.settings import Settings

    settings = Settings.load(data_dir=tmp_path / "d", host="0.0.0.0")
    with client_for(settings) as client:
        add_key(client, "engineer")
    _revoke_all(settings)
    prepared = prepare(settings)
    assert prepared.host == "0.0.0.0"  # closed, so safe to serve the network (nothing is open)
    assert "does not fall back to open mode" in capsys.readouterr().err
    reopened = prepare(settings.model_copy(update={"allow_open_mode_after_keys": True}))
    assert reopened.host == "127.0.0.1"  # open again by the flag: loopback only, as open mode always is


# ---- 2. the Host header never becomes a redirect -------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/keys/", "/v1/inspections/", "/v1/models/", "/dashboard/", "/metrics/"])
def test_a_hostile_host_header_is_never_reflected(tmp_path, tiny_model_path, path):
    with client_for(settings_for(tmp_path, tiny_model_path)) as client:
        engineer = add_key(client, "engineer")
        for headers in ({}, auth(engineer)):
            r = client.get(path, headers={**headers, "Host": HOSTILE}, follow_redirects=False)
            assert r.status_code == 404, (path, r.status_code, r.headers.get("location"))
            assert r.json()["error"] == "not_found"
            assert all(HOSTILE not in v for v in r.headers.values())


def test_page_redirects_are_relative_whatever_the_host(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path)) as client:
        for path in ("/", "/dashboard", "/review/part/x/verdict"):
            method = client.post if path.endswith("verdict") else client.get
            r = method(path, headers={"Host": HOSTILE}, follow_redirects=False)
            assert r.status_code == 303 and r.headers["location"].startswith("/login?next=%2F"), r.headers


# ---- 3. /metrics and /readyz beyond loopback ---------------------------------------------------------------


@pytest.mark.parametrize(
    "host,public_health,public",
    [
        ("127.0.0.1", None, True),
        ("::1", None, True),
        ("localhost", None, True),
        ("0.0.0.0", None, False),
        ("10.1.2.3", None, False),
        ("::", None, False),
        ("0.0.0.0", True, True),
        ("127.0.0.1", False, False),
    ],
)
def test_health_is_public_only_on_loopback_unless_set(host, public_health, public):
    from andon.service.auth import health_is_public
    from andon.service.settings import Settings

    assert health_is_public(Settings.load(host=host, public_health=public_health)) is public


def test_metrics_and_readyz_need_a_monitor_credential_beyond_loopback(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path, host="0.0.0.0")) as client:
        camera = add_key(client, "camera", "cam1")
        assert client.get("/livez").status_code == 200  # the orchestrator's probe stays open
        for path in ("/metrics", "/readyz"):
            r = client.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer"), path
            assert client.get(path, headers=auth(camera)).status_code == 403, path
        keys = {role: add_key(client, role) for role in ("monitor", "operator", "engineer")}
        for path in ("/metrics", "/readyz"):
            for role, key in keys.items():
                assert client.get(path, headers=auth(key)).status_code == 200, (path, role)
        # what a Prometheus scrape config with a bearer token sends; the monitor key reads nothing else
        scrape = client.get("/metrics", headers={"Authorization": f"Bearer {keys['monitor']}"})
        assert scrape.headers["content-type"].startswith("text/plain") and "andon_" in scrape.text
        assert client.get("/v1/inspections", headers=auth(keys["monitor"])).status_code == 403
        assert post_frame(client, jpeg(REJECT), key=keys["monitor"]).status_code == 403


def test_public_health_setting_opens_them_beyond_loopback(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path, host="0.0.0.0", public_health=True)) as client:
        add_key(client, "engineer")
        assert client.get("/metrics").status_code == 200 and client.get("/readyz").status_code == 200


def test_a_monitor_key_can_be_created_by_api_and_cli(tmp_path, tiny_model_path):
    from typer.testing import CliRunner

    from andon.cli import app as cli

    settings = settings_for(tmp_path, tiny_model_path, host="0.0.0.0")
    out = CliRunner().invoke(cli, ["keys", "create", "--role", "monitor", "--data-dir", str(settings.data_dir)])
    assert out.exit_code == 0, out.output
    monitor = out.output.strip().splitlines()[0]
    with client_for(settings) as client:
        assert client.get("/metrics", headers=auth(monitor)).status_code == 200
        engineer = add_key(client, "engineer")
        made = client.post("/v1/keys", json={"role": "monitor"}, headers=auth(engineer))
        assert made.status_code == 201 and made.json()["role"] == "monitor"


# ---- 4. model errors name the value, never the server ------------------------------------------------------


@pytest.fixture
def models_api(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path)) as client:
        yield client, add_key(client, "engineer"), tmp_path


def _upload(client, key, data: bytes):
    return client.post("/v1/models", content=data, headers={**auth(key), "Content-Type": "application/octet-stream"})


def _no_internals(body: dict, tmp_path) -> None:
    text = body["message"]
    assert set(body) == {"error", "message"}
    for leak in (str(tmp_path), str(tmp_path.resolve()), ".staging-", "/models/", "ONNXRuntimeError", "No Op"):
        assert leak not in text, (leak, text)


def _model_bytes(version: str = "5", *, op: str | None = None, softmax: bool = True) -> bytes:
    """The tiny model, optionally with its pooling op renamed (onnxruntime refuses it) or without its
    softmax (it loads, and the warm-up refuses it): both pass andon's own file checks."""
    from andon.inspect.onnxfile import embed_card
    from tiny_onnx import tiny_card, tiny_model

    card = tiny_card(version=version)
    model = tiny_model(card)
    for node in model.graph.node:
        if op and node.op_type == "AveragePool":
            node.op_type = op
        if not softmax and node.op_type == "Softmax":
            node.op_type = "Sigmoid"
            del node.attribute[:]
    del model.metadata_props[:]
    embed_card(model, card)  # re-signed: the content hash matches the edited graph
    return model.SerializeToString()


def test_onnxruntime_refusal_names_the_upload_not_the_server(models_api, caplog):
    client, key, tmp_path = models_api
    caplog.set_level(logging.WARNING, logger="andon.service")
    r = _upload(client, key, _model_bytes(op="AveragePoolX"))
    assert r.status_code == 422 and r.json()["error"] == "bad_model_file"
    _no_internals(r.json(), tmp_path)
    assert "upload" in r.json()["message"] and "operator" in r.json()["message"]
    assert any("No Op registered for AveragePoolX" in rec.getMessage() for rec in caplog.records)  # logged


def test_a_warm_up_refusal_names_the_upload_not_the_staging_path(models_api):
    client, key, tmp_path = models_api
    r = _upload(client, key, _model_bytes(softmax=False))
    assert r.status_code == 422 and "probability" in r.json()["message"]
    _no_internals(r.json(), tmp_path)
    assert r.json()["message"].startswith("upload:")


@pytest.mark.parametrize(
    "name", ["bad version!", "x" * 5000, "../../etc", "a\n"], ids=["space", "5000-chars", "dot-dot", "newline"]
)
def test_invalid_version_names_are_422_truncated_and_say_what_is_allowed(models_api, name):
    from tiny_onnx import tiny_card, tiny_model

    client, key, tmp_path = models_api
    answers = [
        client.post(f"/v1/models/{name}/promote", headers=auth(key)) if "/" not in name and "\n" not in name else None,
        client.put("/v1/models/shadow", json={"version": name}, headers=auth(key)),
        client.get("/v1/models/shadow", params={"version": name}, headers=auth(key)),
        _upload(client, key, tiny_model(tiny_card(version=name)).SerializeToString()) if "\n" not in name else None,
    ]
    for r in [a for a in answers if a is not None]:
        body = r.json()
        assert r.status_code == 422 and body["error"] == "invalid_request", (r.status_code, body)
        assert "letters, digits" in body["message"] and len(body["message"]) < 400
        assert ("…" in body["message"]) == (len(name) > 80)
        _no_internals(body, tmp_path)


def test_conflicts_stay_409(models_api):
    from tiny_onnx import tiny_card, tiny_model

    client, key, _ = models_api
    other = tiny_model(tiny_card(name="other")).SerializeToString()  # version 1 again, another file
    r = _upload(client, key, other)
    assert r.status_code == 409 and r.json()["error"] == "registry_error" and "already registered" in r.text
    assert client.put("/v1/models/shadow", json={"version": "1"}, headers=auth(key)).status_code == 409
    assert client.post("/v1/models/9/promote", headers=auth(key)).status_code == 404


def test_a_broken_registered_file_is_named_by_its_version(models_api):
    client, key, tmp_path = models_api
    added = _upload(client, key, _model_bytes("6"))
    assert added.status_code == 201
    path = client.app.state.ctx.registry.get("6").path
    path.write_bytes(_model_bytes("6", op="AveragePoolX"))  # replaced on disk behind the registry's back
    r = client.post("/v1/models/6/promote", headers=auth(key))
    assert r.status_code == 422 and "model version 6" in r.json()["message"], r.text
    _no_internals(r.json(), tmp_path)
    listed = client.get("/v1/models", headers=auth(key)).json()
    assert listed["active"] == "1"
    assert str(tmp_path) not in str(listed)
