"""Access: every route x every role -> the expected status; open mode; keys stored hashed and revocable."""

from __future__ import annotations

import pytest

from service_support import REJECT, add_key, auth, client_for, jpeg, post_frame, settings_for

ROLES = ("none", "bad-key", "camera", "other-camera", "operator", "engineer")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """A running service with one key per role, one stored reject (part P-1) and a second model version."""
    from tiny_onnx import tiny_card, write_tiny_model

    root = tmp_path_factory.mktemp("auth")
    model = write_tiny_model(root / "m1.onnx")
    with client_for(settings_for(root, model)) as client:
        ctx = client.app.state.ctx
        ctx.registry.add_file(write_tiny_model(root / "m2.onnx", tiny_card(version="2")))
        keys = {
            "none": None,
            "bad-key": "andon_0123456789ab_not-the-secret",
            "camera": add_key(client, "camera", "cam1"),
            "other-camera": add_key(client, "camera", "cam2"),
            "operator": add_key(client, "operator"),
            "engineer": add_key(client, "engineer"),
        }
        seeded = post_frame(client, jpeg(REJECT), camera="cam1", part="P-1", key=keys["camera"])
        assert seeded.status_code == 201
        yield client, keys, seeded.json()["id"]


def _frame_files():
    return [("frame", ("a.jpg", jpeg(REJECT), "image/jpeg"))]


# route -> expected status per role (none, bad-key, camera, other-camera, operator, engineer)
POST_FRAME = (401, 401, 201, 403, 403, 201)
READ = (401, 401, 403, 403, 200, 200)
MANAGE = (401, 401, 403, 403, 403, 200)
OPEN = (200, 200, 200, 200, 200, 200)

MATRIX = [
    (
        "POST /v1/inspections",
        POST_FRAME,
        lambda c, h, i: c.post(
            "/v1/inspections",
            content=jpeg(REJECT),
            params={"camera_id": "cam1", "line_id": "L"},
            headers={**h, "Content-Type": "image/jpeg"},
        ),
    ),
    (
        "POST /v1/inspections/batch",
        POST_FRAME,
        lambda c, h, i: c.post(
            "/v1/inspections/batch", files=_frame_files(), data={"camera_id": "cam1", "line_id": "L"}, headers=h
        ),
    ),
    ("GET /v1/inspections", READ, lambda c, h, i: c.get("/v1/inspections", headers=h)),
    ("GET /v1/inspections/{id}", READ, lambda c, h, i: c.get(f"/v1/inspections/{i}", headers=h)),
    ("GET /v1/inspections/{id}/image", READ, lambda c, h, i: c.get(f"/v1/inspections/{i}/image", headers=h)),
    ("GET /v1/inspections/{id}/heatmap", READ, lambda c, h, i: c.get(f"/v1/inspections/{i}/heatmap", headers=h)),
    ("GET /v1/parts/{id}", READ, lambda c, h, i: c.get("/v1/parts/P-1", headers=h)),
    ("GET /v1/models", MANAGE, lambda c, h, i: c.get("/v1/models", headers=h)),
    (
        "POST /v1/models",
        MANAGE[:-1] + (200,),  # the active model's file again: already registered -> 200
        lambda c, h, i: c.post(
            "/v1/models",
            content=c.app.state.ctx.registry.get("1").path.read_bytes(),
            headers={**h, "Content-Type": "application/octet-stream"},
        ),
    ),
    ("POST /v1/models/{v}/promote", MANAGE, lambda c, h, i: c.post("/v1/models/1/promote", headers=h)),
    ("POST /v1/models/rollback", MANAGE[:-1] + (409,), lambda c, h, i: c.post("/v1/models/rollback", headers=h)),
    ("PUT /v1/models/shadow", MANAGE, lambda c, h, i: c.put("/v1/models/shadow", json={"version": "2"}, headers=h)),
    ("GET /v1/models/shadow", MANAGE, lambda c, h, i: c.get("/v1/models/shadow", headers=h)),
    ("DELETE /v1/models/shadow", MANAGE, lambda c, h, i: c.delete("/v1/models/shadow", headers=h)),
    (
        "POST /v1/keys",
        MANAGE[:-1] + (201,),
        lambda c, h, i: c.post("/v1/keys", json={"role": "operator", "name": "matrix"}, headers=h),
    ),
    ("GET /v1/keys", MANAGE, lambda c, h, i: c.get("/v1/keys", headers=h)),
    ("DELETE /v1/keys/{id}", MANAGE, lambda c, h, i: c.delete(f"/v1/keys/{add_key(c, 'operator')[6:18]}", headers=h)),
    ("POST /v1/admin/retention", MANAGE, lambda c, h, i: c.post("/v1/admin/retention", headers=h)),
    ("GET /livez", OPEN, lambda c, h, i: c.get("/livez", headers=h)),
    ("GET /readyz", OPEN, lambda c, h, i: c.get("/readyz", headers=h)),
    ("GET /metrics", OPEN, lambda c, h, i: c.get("/metrics", headers=h)),
]


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("route,expected,call", MATRIX, ids=[m[0] for m in MATRIX])
def test_route_role_matrix(world, route, expected, call, role):
    client, keys, inspection_id = world
    headers = auth(keys[role])
    if role == "other-camera":
        headers = auth(keys["other-camera"])  # a cam2 key; the frame routes post for cam1
    response = call(client, headers, inspection_id)
    want = expected[ROLES.index(role)]
    assert response.status_code == want, f"{route} as {role}: {response.status_code} {response.text[:200]}"
    if want >= 400:
        assert set(response.json()) == {"error", "message"}


def test_camera_key_reads_nothing_and_posts_only_for_itself(world):
    client, keys, inspection_id = world
    r = post_frame(client, jpeg(REJECT), camera="cam2", key=keys["camera"])
    assert r.status_code == 403 and "cam1" in r.json()["message"]
    assert post_frame(client, jpeg(REJECT), camera="cam2", key=keys["other-camera"]).status_code == 201
    # with camera keys configured, their camera ids are the known cameras
    r = post_frame(client, jpeg(REJECT), camera="cam-nobody", key=keys["engineer"])
    assert r.status_code == 422 and r.json()["error"] == "unknown_camera"


def test_keys_are_stored_hashed_and_revocation_takes_effect(world):
    from andon.service.tables import ApiKey

    client, keys, _ = world
    created = client.post("/v1/keys", json={"role": "camera", "camera_id": "cam7"}, headers=auth(keys["engineer"]))
    assert created.status_code == 201
    secret, key_id = created.json()["key"], created.json()["id"]
    with client.app.state.ctx.sessions() as session:
        row = session.get(ApiKey, key_id)
        assert secret.split("_", 2)[2] not in (row.secret_hash, row.salt) and len(row.secret_hash) == 64
    listed = client.get("/v1/keys", headers=auth(keys["engineer"])).json()
    assert key_id in {k["id"] for k in listed} and all("key" not in k for k in listed)
    assert post_frame(client, jpeg(REJECT), camera="cam7", key=secret).status_code == 201
    used = {k["id"]: k for k in client.get("/v1/keys", headers=auth(keys["engineer"])).json()}
    assert used[key_id]["last_used_at"] is not None
    assert client.delete(f"/v1/keys/{key_id}", headers=auth(keys["engineer"])).status_code == 200
    r = post_frame(client, jpeg(REJECT), camera="cam7", key=secret)
    assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
    assert client.post("/v1/keys", json={"role": "camera"}, headers=auth(keys["engineer"])).status_code == 400


def test_open_mode_without_keys_and_it_latches(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path)) as client:
        assert post_frame(client, jpeg(REJECT)).status_code == 201
        assert client.get("/v1/inspections").status_code == 200
        r = client.get("/v1/models")
        assert r.status_code == 401 and "engineer" in r.json()["message"]  # management is never open
        assert client.post("/v1/keys", json={"role": "engineer"}).status_code == 401
        engineer = add_key(client, "engineer")
        assert client.get("/v1/inspections").status_code == 401
        assert client.get("/v1/models", headers=auth(engineer)).status_code == 200
        client.delete(f"/v1/keys/{engineer[6:18]}", headers=auth(engineer))
        client.app.state.ctx.keys.invalidate()
        assert client.get("/v1/inspections").status_code == 401  # revoking the last key does not open it up


def test_serve_binds_loopback_without_keys(tmp_path, tiny_model_path, capsys):
    from andon.cli.serve import prepare
    from andon.service.settings import Settings

    settings = Settings.load(data_dir=tmp_path / "d", host="0.0.0.0", model=tiny_model_path)
    prepared = prepare(settings)
    assert prepared.host == "127.0.0.1" and prepared.model is None
    assert "binding to 127.0.0.1 only" in capsys.readouterr().err
    from andon.service.auth import create_key
    from andon.service.db import make_engine, session_factory

    engine = make_engine(settings.db_url)
    with session_factory(engine)() as session:
        create_key(session, role="engineer")
        session.commit()
    engine.dispose()
    assert prepare(settings).host == "0.0.0.0"


def test_the_known_cameras_are_read_off_the_event_loop(tmp_path, monkeypatch) -> None:
    """The key table's camera ids (cached for a few seconds) are read in a worker thread: a slow database (a
    PostgreSQL across the plant's network) never stalls the event loop that every request shares."""
    import asyncio

    import andon.service.auth as auth_module
    from tiny_onnx import write_tiny_model

    on_loop: list[bool] = []
    real = auth_module.list_keys

    def spy(session):
        try:
            asyncio.get_running_loop()
            on_loop.append(True)
        except RuntimeError:
            on_loop.append(False)
        return real(session)

    monkeypatch.setattr(auth_module, "list_keys", spy)
    with client_for(settings_for(tmp_path, write_tiny_model(tmp_path / "m.onnx"))) as client:
        camera = add_key(client, "camera", "cam1")  # invalidates the cache: the next frame reads the table
        engineer = add_key(client, "engineer")
        assert post_frame(client, jpeg(REJECT), camera="cam1", key=camera).status_code == 201
        client.app.state.ctx.keys.invalidate()
        refused = post_frame(client, jpeg(REJECT), camera="cam9", key=engineer)
        assert refused.status_code == 422 and refused.json()["error"] == "unknown_camera", refused.text
    assert on_loop and not any(on_loop), on_loop
