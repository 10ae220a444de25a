"""Bad input: one JSON error shape, the right 4xx, nothing written, the server stays up; overload gives 503."""

from __future__ import annotations

import re
import struct
import threading
import zlib

import pytest

from service_support import (
    PASS,
    REJECT,
    client_for,
    count_rows,
    jpeg,
    live_server,
    png,
    post_frame,
    settings_for,
    stored_files,
)

_LEAKS = re.compile(r"Traceback|File \"|\.py\b|/work/|site-packages|[A-Z][a-z]+(Error|Exception)\b")


def _png_header_claiming(width: int, height: int) -> bytes:
    """A valid PNG whose IHDR declares ``width`` x ``height``: a decompression bomb's header."""
    raw = bytearray(png(PASS, size=(1, 1)))
    ihdr = struct.pack(">II", width, height) + bytes(raw[24:29])
    raw[16:29] = ihdr
    raw[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(raw)


def _check_shape(response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == code
    assert body["message"] and not _LEAKS.search(body["message"]), body["message"]


@pytest.fixture
def client(tmp_path, tiny_model_path):
    with client_for(
        settings_for(
            tmp_path,
            tiny_model_path,
            max_body_bytes=64 * 1024,
            max_pixels=4_000_000,
            allowed_formats="JPEG,PNG,BMP",
            cameras=["cam1", "cam2"],
        )
    ) as c:
        yield c


def _gif() -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (8, 8)).save(buf, format="GIF")
    return buf.getvalue()


def _tiff() -> bytes:
    from io import BytesIO

    from PIL import Image

    buf = BytesIO()
    Image.new("RGB", (8, 8), (250, 250, 250)).save(buf, format="TIFF")
    return buf.getvalue()


BAD_FRAMES = [
    ("empty body", b"", 422, "bad_image"),
    ("text, not an image", b"hello, I am not a JPEG at all", 422, "bad_image"),
    ("truncated JPEG", jpeg(REJECT)[:-300], 422, "bad_image"),
    ("truncated PNG", png(REJECT, size=(64, 64))[:-40], 422, "bad_image"),
    ("JPEG header only", jpeg(REJECT)[:20], 422, "bad_image"),
    ("format not allowed (TIFF)", _tiff(), 415, "unsupported_format"),
    ("format not supported (GIF)", _gif(), 415, "unsupported_format"),
    ("decompression bomb header", _png_header_claiming(40_000, 40_000), 413, "image_too_large"),
]


@pytest.mark.parametrize("name,data,status,code", BAD_FRAMES, ids=[b[0] for b in BAD_FRAMES])
def test_bad_frames_get_4xx_and_nothing_is_written(client, name, data, status, code):
    _check_shape(post_frame(client, data, content_type="application/octet-stream"), status, code)
    _check_shape(
        client.post(
            "/v1/inspections",
            files={"frame": ("x", data, "application/octet-stream")},
            data={"camera_id": "cam1", "line_id": "L1"},
        ),
        status,
        code,
    )
    assert count_rows(client) == 0 and stored_files(client) == []
    assert post_frame(client, jpeg(REJECT)).status_code == 201  # the server is still fine


BAD_REQUESTS = [
    ("missing camera_id", dict(params={"line_id": "L1"}), 422, "invalid_request"),
    ("missing line_id", dict(params={"camera_id": "cam1"}), 422, "invalid_request"),
    ("camera id with spaces", dict(params={"camera_id": "cam 1", "line_id": "L1"}), 422, "invalid_request"),
    (
        "captured_at not a time",
        dict(params={"camera_id": "cam1", "line_id": "L1", "captured_at": "yesterday"}),
        422,
        "invalid_request",
    ),
    (
        "captured_at without zone",
        dict(params={"camera_id": "cam1", "line_id": "L1", "captured_at": "2026-11-25T08:00:00"}),
        422,
        "invalid_request",
    ),
    ("unknown camera", dict(params={"camera_id": "cam3", "line_id": "L1"}), 422, "unknown_camera"),
    (
        "JSON body",
        dict(params={"camera_id": "cam1", "line_id": "L1"}, json={"image": "abc"}),
        415,
        "unsupported_media_type",
    ),
    (
        "multipart without a file",
        dict(data={"camera_id": "cam1", "line_id": "L1"}, files={"other": ("a", b"", "text/plain")}),
        422,
        "invalid_request",
    ),
    (
        "multipart unknown field",
        dict(
            data={"camera_id": "cam1", "line_id": "L1", "colour": "red"},
            files={"frame": ("a.jpg", jpeg(PASS), "image/jpeg")},
        ),
        422,
        "invalid_request",
    ),
    (
        "multipart two frames",
        dict(
            data={"camera_id": "cam1", "line_id": "L1"},
            files=[("frame", ("a.jpg", jpeg(PASS), "image/jpeg")), ("frame", ("b.jpg", jpeg(PASS), "image/jpeg"))],
        ),
        422,
        "invalid_request",
    ),
    (
        "over-long Idempotency-Key",
        dict(params={"camera_id": "cam1", "line_id": "L1"}, headers={"Idempotency-Key": "k" * 300}),
        422,
        "invalid_request",
    ),
]


@pytest.mark.parametrize("name,kwargs,status,code", BAD_REQUESTS, ids=[b[0] for b in BAD_REQUESTS])
def test_bad_requests_get_4xx_and_nothing_is_written(client, name, kwargs, status, code):
    kwargs = dict(kwargs)
    if "json" not in kwargs and "files" not in kwargs and "data" not in kwargs:
        kwargs["content"] = jpeg(REJECT)
        kwargs.setdefault("headers", {})["Content-Type"] = "image/jpeg"
    _check_shape(client.post("/v1/inspections", **kwargs), status, code)
    assert count_rows(client) == 0 and stored_files(client) == []


def test_bodies_over_the_cap_are_refused_also_when_chunked(client):
    big = jpeg(REJECT) + b"\0" * (80 * 1024)
    _check_shape(post_frame(client, big), 413, "body_too_large")

    def chunks():  # no Content-Length: the cap must be enforced while streaming
        for _ in range(40):
            yield b"\0" * 4096

    r = client.post(
        "/v1/inspections",
        content=chunks(),
        params={"camera_id": "cam1", "line_id": "L1"},
        headers={"Content-Type": "image/jpeg"},
    )
    _check_shape(r, 413, "body_too_large")
    assert count_rows(client) == 0
    assert 'andon_rejections_total{reason="body_too_large"} 2.0' in client.get("/metrics").text


def test_batch_errors(client):
    one = ("frame", ("a.jpg", jpeg(PASS), "image/jpeg"))
    _check_shape(
        client.post(
            "/v1/inspections/batch", files=[one, one], data={"camera_id": "cam1", "line_id": "L", "meta": "[{}]"}
        ),
        422,
        "invalid_request",
    )
    _check_shape(
        client.post(
            "/v1/inspections/batch", files=[one], data={"camera_id": "cam1", "line_id": "L", "meta": "{not json"}
        ),
        422,
        "invalid_request",
    )
    _check_shape(
        client.post("/v1/inspections/batch", content=jpeg(PASS), headers={"Content-Type": "image/jpeg"}),
        415,
        "unsupported_media_type",
    )
    _check_shape(
        client.post("/v1/inspections/batch", files=[one] * 17, data={"camera_id": "cam1", "line_id": "L"}),
        422,
        "invalid_request",
    )
    _check_shape(
        client.post("/v1/inspections/batch", files=[one] * 30, data={"camera_id": "cam1", "line_id": "L"}),
        400,
        "bad_request",
    )  # the multipart parser itself stops reading past the limit
    assert count_rows(client) == 0


def test_unknown_routes_methods_and_ids(client):
    _check_shape(client.get("/v2/whatever"), 404, "not_found")
    _check_shape(client.put("/v1/inspections"), 405, "method_not_allowed")
    _check_shape(client.get("/v1/inspections/01ARZ3NDEKTSV4RRFFQ69G5FAV"), 404, "not_found")
    _check_shape(client.get("/v1/inspections", params={"limit": 0}), 422, "invalid_request")
    _check_shape(client.get("/v1/inspections", params={"decision": "maybe"}), 422, "invalid_request")


def test_overload_answers_503_with_retry_after_then_recovers(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path, inference_threads=1, queue_size=1, retry_after_s=3)) as c:
        admission = c.app.state.ctx.admission
        gate = threading.Event()
        assert admission.try_acquire(2)  # two frames admitted and stuck: the pool's one thread is held
        admission.executor.submit(gate.wait, 10)
        try:
            r = post_frame(c, jpeg(REJECT))
            _check_shape(r, 503, "overloaded")
            assert r.headers["retry-after"] == "3"
            assert "andon_queue_depth 2.0" in c.get("/metrics").text
        finally:
            gate.set()
            admission.release(2)
        assert post_frame(c, jpeg(REJECT)).status_code == 201
        assert count_rows(c) == 1


def test_database_failure_writes_nothing_and_answers_503(tmp_path, tiny_model_path):
    from sqlalchemy import text

    with client_for(settings_for(tmp_path, tiny_model_path)) as c:
        with c.app.state.ctx.engine.begin() as conn:
            conn.execute(text("ALTER TABLE inspections RENAME TO inspections_gone"))
        r = post_frame(c, jpeg(REJECT))
        _check_shape(r, 503, "storage_unavailable")
        assert stored_files(c) == []  # the image written before the failed commit was removed
        assert c.get("/livez").status_code == 200


def _raw_post(sock, length: int, body: bytes) -> bytes:
    """One POST /v1/inspections on an open socket, the body sent whole as a proxy sends it; the raw answer."""
    head = (
        f"POST /v1/inspections?camera_id=cam1&line_id=L1 HTTP/1.1\r\nHost: andon\r\nContent-Type: image/jpeg\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()
    sock.sendall(head + body)
    return _read_answer(sock)


def _read_answer(sock) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < _declared(data):
        chunk = sock.recv(65536)
        assert chunk, f"the server closed the connection before its whole answer (got {data!r})"
        data += chunk
    return data


def _declared(data: bytes) -> int:
    found = re.search(rb"(?i)content-length: (\d+)", data.partition(b"\r\n\r\n")[0])
    return int(found.group(1)) if found else 0


def test_a_413_under_twice_the_cap_keeps_the_connection_so_a_proxy_sees_no_reset(tmp_path, tiny_model_path):
    """A body sent whole (as nginx sends it) that is over the cap: the 413 arrives, the rest of the body is read
    and thrown away, and the same connection serves the next request. No reset, which a proxy would count as a
    failure of a healthy replica (deploy/nginx.conf max_fails). Twice the cap and more: Connection: close."""
    import socket
    from urllib.parse import urlsplit

    limit = 64 * 1024
    settings = settings_for(tmp_path, tiny_model_path, max_body_bytes=limit)
    with live_server(settings) as url:
        address = urlsplit(url)
        with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
            for size in (limit + 1, 2 * limit):  # twice in a row on one connection
                answer = _raw_post(sock, size, b"\xff" * size)
                assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
                assert b"body_too_large" in answer and b"connection: close" not in answer.lower()
            sock.sendall(b"GET /livez HTTP/1.1\r\nHost: andon\r\n\r\n")
            assert _read_answer(sock).startswith(b"HTTP/1.1 200 ")
        with socket.create_connection((address.hostname, address.port), timeout=10) as sock:
            size = 2 * limit + 1
            head = f"POST /v1/inspections HTTP/1.1\r\nHost: andon\r\nContent-Length: {size}\r\n\r\n".encode()
            sock.sendall(head)  # the camera waits for the answer before it sends the body
            answer = _read_answer(sock)
            assert answer.startswith(b"HTTP/1.1 413 ") and b"connection: close" in answer.lower(), answer[:300]
            assert sock.recv(1) == b""  # the server closed it: the body is not worth reading
