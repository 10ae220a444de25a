"""Helpers for the service tests: frames the tiny model judges predictably, apps, keys, databases."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import pytest

# grey levels the tiny model (tests/tiny_onnx.py) judges: bright passes, mid-grey is reviewed, dark rejected
PASS, REVIEW, REJECT = 255, 120, 0


def image(value: int = PASS, size: tuple[int, int] = (48, 64), noise: int = 0) -> np.ndarray:
    """uint8 RGB HxW frame of one grey level (``noise`` makes distinct frames of the same verdict)."""
    img = np.full((*size, 3), value, np.uint8)
    if noise:
        img[0, : noise % size[1]] = (value + 1) % 256 if value < 255 else 254
    return img


def jpeg(value: int = PASS, size: tuple[int, int] = (48, 64), noise: int = 0) -> bytes:
    ok, buf = cv2.imencode(".jpg", image(value, size, noise)[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return buf.tobytes()


def png(value: int = PASS, size: tuple[int, int] = (48, 64)) -> bytes:
    ok, buf = cv2.imencode(".png", image(value, size)[:, :, ::-1])
    assert ok
    return buf.tobytes()


def settings_for(tmp_path: Path, model: Path | None, db_url: str | None = None, **changes):
    from andon.service.settings import Settings

    base = dict(
        data_dir=tmp_path / "data",
        model=model,
        database_url=db_url,
        min_free_disk_mb=0,
        registry_poll_s=0.1,
        inference_threads=2,
        intra_op_threads=1,
        pass_sample_rate=0.0,
    )
    base.update(changes)
    return Settings.load(**base)


@contextlib.contextmanager
def client_for(settings) -> Iterator:
    from fastapi.testclient import TestClient

    from andon.service.app import create_app

    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client


@contextlib.contextmanager
def live_server(settings) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port, in a thread; yields its base URL."""
    import socket
    import threading
    import time

    import uvicorn

    from andon.service.app import create_app

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def add_key(client, role: str, camera_id: str | None = None) -> str:
    """Create a key directly in the app's database (as 'andon keys create' does); returns the secret."""
    from andon.service.auth import create_key

    ctx = client.app.state.ctx
    with ctx.sessions() as session:
        _, secret = create_key(session, role=role, camera_id=camera_id)
        session.commit()
    ctx.keys.invalidate()
    return secret


def auth(key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"} if key else {}


def post_frame(
    client,
    data: bytes,
    *,
    camera: str = "cam1",
    line: str = "L1",
    part: str | None = None,
    key: str | None = None,
    idem: str | None = None,
    content_type: str = "image/jpeg",
    **params,
):
    query = {"camera_id": camera, "line_id": line, **params}
    if part is not None:
        query["part_id"] = part
    headers = {"Content-Type": content_type, **auth(key)}
    if idem is not None:
        headers["Idempotency-Key"] = idem
    return client.post("/v1/inspections", content=data, params=query, headers=headers)


def count_rows(client) -> int:
    from sqlalchemy import func, select

    from andon.service.tables import Inspection

    with client.app.state.ctx.sessions() as session:
        return session.scalar(select(func.count()).select_from(Inspection))


def stored_files(client) -> list[Path]:
    root = client.app.state.ctx.settings.images_dir
    return [p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")] if root.exists() else []


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path):
    """The same test against the embedded SQLite default and a real PostgreSQL server."""
    if request.param == "sqlite":
        return None  # the default: <data_dir>/andon.db
    server = request.getfixturevalue("postgres_server")
    return server.new_database()
