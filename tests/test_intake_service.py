"""Frame intake, service side: refused files store nothing, polyglots are stored and served as the image
only, stored files are sent with nosniff and a generated name, compressed bodies are 415, bombs are bounded
by the model's input size and by the memory budget, and replays of stored frames never wait for a slot."""

from __future__ import annotations

import gzip
import threading

import pytest

from service_support import REJECT, client_for, count_rows, jpeg, png, post_frame, settings_for, stored_files
from test_intake_decoding import (
    bad_iend_crc,
    camera_jpegs,
    headers_only_jpeg,
    jpeg_claiming,
    png_bomb,
    png_claiming,
    tiny_zip,
)


@pytest.fixture
def client(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path)) as c:
        yield c


def _error(response, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "message"} and body["error"] == code
    return body["message"]


def _both_ways(client, data: bytes, **headers):
    """The frame as a raw body and as a multipart upload."""
    raw = post_frame(client, data, content_type="application/octet-stream")
    form = client.post(
        "/v1/inspections",
        files={"frame": ("x.jpg", data, "image/jpeg")},
        data={"camera_id": "cam1", "line_id": "L1"},
        headers=headers,
    )
    return raw, form


# ---- 2. frames with no image ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,data,says",
    [
        ("headers and an end marker only", headers_only_jpeg(), "no start-of-scan"),
        ("631-byte JPEG claiming 10000x10000", jpeg_claiming(10_000, 10_000), "10000x10000 JPEG needs at least"),
        ("PNG claiming 4000x4000 with 8x8 data", png_claiming(4000, 4000), "4000x4000 PNG needs at least"),
    ],
    ids=["headers only", "claims 10000x10000", "PNG claims 4000x4000"],
)
def test_frames_with_no_image_get_422_and_are_not_stored(client, name, data, says):
    for response in _both_ways(client, data):
        assert says in _error(response, 422, "bad_image")
    assert count_rows(client) == 0 and stored_files(client) == []
    queue = client.get("/v1/inspections", params={"review_status": "unreviewed"}).json()["items"]
    assert queue == []


@pytest.mark.parametrize("name", list(camera_jpegs()))
def test_real_camera_jpegs_still_get_a_verdict(client, name):
    assert post_frame(client, camera_jpegs()[name]).status_code == 201


# ---- 3. polyglots: only the image is stored and served -------------------------------------------------


def test_a_jpeg_with_a_zip_appended_is_stored_and_served_without_the_zip(client):
    image = jpeg(REJECT)
    for response in _both_ways(client, image + tiny_zip()):
        assert response.status_code == 201, response.text
        body = response.json()
        assert body["image_stored"]
        served = client.get(f"/v1/inspections/{body['id']}/image")
        assert served.status_code == 200 and served.content == image and b"PK" not in served.content
        assert served.headers["content-type"] == "image/jpeg"
        assert served.headers["x-content-type-options"] == "nosniff"
        assert served.headers["content-disposition"] == f'inline; filename="{body["id"]}.jpg"'
    assert all(b"PK\x03\x04" not in p.read_bytes() for p in stored_files(client))


def test_a_retry_of_the_same_polyglot_is_a_replay(client):
    data = jpeg(REJECT) + tiny_zip()
    first = post_frame(client, data, idem="k1")
    again = post_frame(client, data, idem="k1")
    assert first.status_code == again.status_code == 201
    assert again.headers.get("idempotent-replayed") == "true" and again.json()["id"] == first.json()["id"]


def test_files_stored_before_the_checks_are_served_cut_or_not_at_all(client):
    from sqlalchemy import select

    from andon.service.tables import Inspection

    body = post_frame(client, jpeg(REJECT)).json()
    ctx = client.app.state.ctx
    with ctx.sessions() as session:
        key = session.scalar(select(Inspection.image_key).where(Inspection.id == body["id"]))
    url = f"/v1/inspections/{body['id']}/image"
    ctx.store.put(key, jpeg(REJECT) + tiny_zip())  # a polyglot stored verbatim by an older andon
    assert client.get(url).content == jpeg(REJECT)
    ctx.store.put(key, headers_only_jpeg())  # a frame with no image, stored by an older andon
    assert "not a valid image" in _error(client.get(url), 404, "not_found")


def test_every_stored_file_response_has_nosniff_and_a_generated_name(client):
    from review_support import add_user, login

    body = post_frame(client, jpeg(REJECT)).json()
    rid = body["id"]
    add_user(client.app.state.ctx, "olga", role="engineer")
    login(client, "olga")
    for url, name in [
        (f"/v1/inspections/{rid}/image", f"{rid}.jpg"),
        (f"/v1/inspections/{rid}/heatmap", f"{rid}-heatmap.png"),
        (f"/review/frame/{rid}", f"{rid}.jpeg"),
        (f"/review/heat/{rid}.png", f"{rid}-heat.png"),
        ("/dashboard/chart/rates.png", "chart-rates.png"),
    ]:
        r = client.get(url)
        assert r.status_code == 200, (url, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("image/")
        assert r.headers["x-content-type-options"] == "nosniff", url
        assert r.headers["content-disposition"] == f'inline; filename="{name}"', url


# ---- 4. corrupt PNGs and compressed bodies -------------------------------------------------------------


def test_a_png_with_a_bad_iend_crc_is_422(client):
    for response in _both_ways(client, bad_iend_crc(png(REJECT))):
        assert "chunk 'IEND'" in _error(response, 422, "bad_image")
    assert count_rows(client) == 0 and stored_files(client) == []


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "br", "identity, gzip"])
def test_a_content_encoding_other_than_identity_is_415(client, encoding):
    for body in (jpeg(REJECT), gzip.compress(jpeg(REJECT))):
        r = client.post(
            "/v1/inspections",
            content=body,
            params={"camera_id": "cam1", "line_id": "L1"},
            headers={"Content-Type": "image/jpeg", "Content-Encoding": encoding},
        )
        assert "Content-Encoding" in _error(r, 415, "unsupported_media_type")
    batch = client.post(
        "/v1/inspections/batch",
        files=[("frame", ("a.jpg", jpeg(REJECT), "image/jpeg"))],
        data={"camera_id": "cam1", "line_id": "L1"},
        headers={"Content-Encoding": encoding},
    )
    _error(batch, 415, "unsupported_media_type")
    assert count_rows(client) == 0
    labelled = client.post(
        "/v1/inspections",
        content=jpeg(REJECT),
        params={"camera_id": "cam1", "line_id": "L1"},
        headers={"Content-Type": "image/jpeg", "Content-Encoding": "identity"},
    )
    assert labelled.status_code == 201


# ---- 1. bombs: bounded by the model, memory counted in admission ---------------------------------------


def test_a_png_bomb_within_the_pixel_limit_is_413_before_decoding(client):
    bomb = png_bomb(2000, 2000)  # 4 MP of zeros in ~4 KB; the tiny model takes 32x32
    for response in _both_ways(client, bomb):
        message = _error(response, 413, "image_too_large")
        assert "2000x2000" in message and "max_decode_ratio" in message
    assert count_rows(client) == 0 and stored_files(client) == []
    # the same size as a JPEG decodes at 1/8 scale: 250x250 = 61x the model's pixels, under the default 128x
    from test_intake_decoding import cv2_jpeg, textured

    assert post_frame(client, cv2_jpeg(textured((2000, 2000)))).status_code == 201


def test_the_memory_budget_refuses_huge_frames_while_normal_ones_pass(tmp_path, tiny_model_path):
    settings = settings_for(tmp_path, tiny_model_path, memory_budget_mb=16, retry_after_s=3)
    with client_for(settings) as c:
        admission = c.app.state.ctx.admission
        share = admission.share  # 16 MB / 2 / (2 threads + 16 queued) = 466 KB
        assert share == 16 * 1024 * 1024 // (2 * 18)
        huge = png(REJECT, size=(300, 300))  # decodes to 540 KB > its share: a large frame
        held = [admission.reserve(4 * 1024 * 1024, "a held bomb") for _ in range(2)]  # half the budget
        try:
            refused = post_frame(c, huge, content_type="image/png")
            assert "memory budget full" in _error(refused, 503, "overloaded")
            assert refused.headers["retry-after"] == "3"
            for i in range(5):
                assert post_frame(c, jpeg(REJECT, noise=i)).status_code == 201  # normal frames pass
        finally:
            for r in held:
                admission.unreserve(r)
        assert post_frame(c, huge, content_type="image/png").status_code == 201  # the bombs gone, it fits
        assert admission.bytes_in_flight == 0


# ---- 5. replays of stored frames do not wait for a slot ------------------------------------------------


def test_replays_of_stored_frames_get_their_answer_while_the_queue_is_full(client):
    stored = post_frame(client, jpeg(REJECT), idem="frame-7")
    assert stored.status_code == 201
    admission = client.app.state.ctx.admission
    assert admission.try_acquire(admission.capacity)  # every slot taken: new frames must get 503
    try:
        assert _error(post_frame(client, jpeg(REJECT, noise=1)), 503, "overloaded")
        assert _error(post_frame(client, jpeg(REJECT, noise=2), idem="new-key"), 503, "overloaded")
        answers: list = []

        def retry() -> None:
            answers.append(post_frame(client, jpeg(REJECT), idem="frame-7"))

        threads = [threading.Thread(target=retry) for _ in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert [r.status_code for r in answers] == [201] * 20
        assert {r.json()["id"] for r in answers} == {stored.json()["id"]}
        assert all(r.headers["idempotent-replayed"] == "true" for r in answers)
        conflict = post_frame(client, jpeg(REJECT, noise=3), idem="frame-7")  # same key, other bytes
        _error(conflict, 422, "idempotency_key_reused")
        batch = client.post(
            "/v1/inspections/batch",
            files=[("frame", ("a.jpg", jpeg(REJECT), "image/jpeg"))],
            data={"camera_id": "cam1", "line_id": "L1", "meta": '[{"idempotency_key": "frame-7"}]'},
            headers={"Idempotency-Key": "b"},
        )
        assert batch.status_code == 201 and batch.json()["items"][0]["id"] == stored.json()["id"]
    finally:
        admission.release(admission.capacity)
    assert admission.depth == 0 and admission.bytes_in_flight == 0
    assert count_rows(client) == 1


# ---- 6. storage that stalls does not refuse frames while inference is idle -------------------------------


def test_a_stalled_store_does_not_hold_an_inference_slot(tmp_path, tiny_model_path):
    """One inference slot (1 thread, queue 0). A flagged frame whose image write stalls (a slow fsync, a WAL
    checkpoint) must not make the next frame 503 "queue full": its inference is over. The slot counts frames
    waiting for or in inference; what waits for storage is bounded by the memory budget."""
    settings = settings_for(tmp_path, tiny_model_path, inference_threads=1, queue_size=0)
    with client_for(settings) as c:
        ctx = c.app.state.ctx
        store = ctx.pipeline.store
        entered, go_on = threading.Event(), threading.Event()
        real_put = store.put

        def stalled_put(key: str, data: bytes) -> None:
            entered.set()
            assert go_on.wait(30), "the test never let the store go on"
            real_put(key, data)

        store.put = stalled_put
        first: list = []
        sender = threading.Thread(target=lambda: first.append(post_frame(c, jpeg(REJECT), idem="stalled")))
        sender.start()
        try:
            assert entered.wait(30), "the flagged frame never reached the store"
            assert ctx.admission.depth == 0  # inference is over: the stalled frame holds no slot
            store.put = real_put
            second = post_frame(c, jpeg(REJECT, noise=1), idem="next")
            assert second.status_code == 201, second.text  # before: 503 "inference queue full (1 frames admitted)"
        finally:
            go_on.set()
            sender.join(30)
        assert first and first[0].status_code == 201, first
        assert ctx.admission.depth == 0 and ctx.admission.bytes_in_flight == 0
        assert count_rows(c) == 2


def test_an_empty_idempotency_key_is_refused_not_stored(client):
    """Found by tests/test_access_fuzz.py: an empty key was stored as a key, so the second frame sent with one
    collided with the first and got 503 after three attempts."""
    for noise in (1, 2):
        r = post_frame(client, jpeg(REJECT, noise=noise), idem="")
        assert "Idempotency-Key" in _error(r, 422, "invalid_request")
    assert count_rows(client) == 0
    assert post_frame(client, jpeg(REJECT, noise=3), idem="k-1").status_code == 201
