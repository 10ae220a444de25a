"""The service commands: keys, settings files, and camera-sim posting to a real HTTP server on loopback."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from andon.cli import app
from service_support import REJECT, client_for, jpeg, settings_for

runner = CliRunner()


def test_keys_create_list_revoke(tmp_path):
    data = ["--data-dir", str(tmp_path / "d")]
    created = runner.invoke(app, ["keys", "create", "--role", "camera", "--camera-id", "cam4", *data])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[0]
    assert secret.startswith("andon_")
    key_id = secret.split("_")[1]
    listed = runner.invoke(app, ["keys", "list", *data])
    assert key_id in listed.output and "cam4" in listed.output and secret.split("_", 2)[2] not in listed.output
    assert runner.invoke(app, ["keys", "revoke", key_id, *data]).exit_code == 0
    assert key_id not in runner.invoke(app, ["keys", "list", *data]).output
    assert key_id in runner.invoke(app, ["keys", "list", "--all", *data]).output
    from andon.errors import ConfigError, NotFoundError

    bad = runner.invoke(app, ["keys", "create", "--role", "camera", *data])  # main() prints these as one line
    assert isinstance(bad.exception, ConfigError) and "camera id" in str(bad.exception)
    assert isinstance(runner.invoke(app, ["keys", "revoke", "nope", *data]).exception, NotFoundError)


def test_settings_from_file_env_and_flags(tmp_path, monkeypatch):
    from andon.errors import ConfigError
    from andon.service.settings import Settings

    config = tmp_path / "andon.yaml"
    config.write_text("port: 9001\nqueue_size: 5\ncameras: [a, b]\nallowed_formats: [jpg, png]\n")
    monkeypatch.setenv("ANDON_QUEUE_SIZE", "7")
    s = Settings.load(config, port=None, data_dir=tmp_path)
    assert (s.port, s.queue_size, s.cameras, s.allowed_formats) == (9001, 7, ["a", "b"], {"JPEG", "PNG"})
    assert Settings.load(config, queue_size=9).queue_size == 9  # flags beat the environment
    config.write_text("colour: red\n")
    with pytest.raises(ConfigError, match="colour"):
        Settings.load(config)
    with pytest.raises(ConfigError, match="does not exist"):
        Settings.load(tmp_path / "missing.yaml")


@pytest.fixture
def live_server(tmp_path, tiny_model_path):
    """The real app under uvicorn on a loopback port, in a thread."""
    from service_support import live_server

    with live_server(settings_for(tmp_path, tiny_model_path)) as url:
        yield url, tmp_path


def test_camera_sim_posts_folder_images_and_synthetic_frames(live_server, tmp_path):
    import httpx

    url, _ = live_server
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "a.jpg").write_bytes(jpeg(REJECT))
    (frames / "b.jpg").write_bytes(jpeg(255))
    out = runner.invoke(
        app,
        [
            "camera-sim",
            str(frames),
            "--fps",
            "40",
            "--count",
            "4",
            "--url",
            url,
            "--camera-id",
            "sim1",
            "--line-id",
            "L7",
            "--part-prefix",
            "P",
        ],
    )
    assert out.exit_code == 0, out.output
    assert "4 frames in" in out.output and "reject 2" in out.output and "pass 2" in out.output
    out = runner.invoke(
        app,
        [
            "camera-sim",
            "--fps",
            "40",
            "--count",
            "3",
            "--url",
            url,
            "--size",
            "96x64",
            "--camera-id",
            "sim2",
            "--quiet",
        ],
    )
    assert out.exit_code == 0 and "3 frames in" in out.output, out.output
    listed = httpx.get(f"{url}/v1/inspections", params={"limit": 100}).json()["items"]
    assert sorted(i["camera_id"] for i in listed) == ["sim1"] * 4 + ["sim2"] * 3
    assert {i["part_id"] for i in listed if i["camera_id"] == "sim1"} == {"P-0", "P-1", "P-2", "P-3"}
    assert {tuple(i["image_size"]) for i in listed if i["camera_id"] == "sim2"} == {(64, 96)}


def test_api_docs_describe_both_body_forms(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path)) as client:
        spec = client.get("/openapi.json").json()
    post = spec["paths"]["/v1/inspections"]["post"]
    assert {"image/jpeg", "multipart/form-data"} <= set(post["requestBody"]["content"])
    assert {"/v1/parts/{part_id}", "/v1/models/{version}/promote", "/v1/keys", "/livez", "/readyz", "/metrics"} <= set(
        spec["paths"]
    )
