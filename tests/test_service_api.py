"""The API's happy paths, idempotent retries, batches, part verdicts, listing and the schema (SQLite + PostgreSQL)."""

from __future__ import annotations

import datetime as dt

import cv2
import numpy as np
import pytest

from service_support import (
    PASS,
    REJECT,
    REVIEW,
    client_for,
    count_rows,
    db_url,  # noqa: F401  (a fixture: the tests below run on SQLite and PostgreSQL)
    jpeg,
    png,
    post_frame,
    settings_for,
    stored_files,
)


@pytest.fixture
def client(tmp_path, tiny_model_path, db_url):  # noqa: F811
    with client_for(settings_for(tmp_path, tiny_model_path, db_url)) as c:
        yield c


def test_migrated_schema_equals_the_orm_metadata(client):
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext

    from andon.service.tables import Base

    with client.app.state.ctx.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []


def test_one_frame_gets_a_verdict_and_a_durable_record(client):
    r = post_frame(
        client,
        jpeg(REJECT),
        camera="cam1",
        line="L1",
        part="P-1",
        serial="SN9",
        captured_at="2026-11-25T08:00:00+01:00",
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["decision"] == "reject" and body["label"] == "defect"
    assert body["scores"]["defect"] == pytest.approx(body["defect_score"]) and body["defect_score"] > 0.9
    assert body["model_version"] == "1" and len(body["model_hash"]) == 64
    assert {"decode", "preprocess", "infer", "queue", "storage", "total"} <= set(body["timings_ms"])
    assert body["image_size"] == [48, 64] and body["image_format"] == "JPEG"
    assert body["captured_at"].startswith("2026-11-25T07:00:00")  # normalised to UTC
    assert body["image_stored"] and body["heatmap_available"] and body["review_status"] == "unreviewed"
    assert r.headers["location"] == f"/v1/inspections/{body['id']}"
    again = client.get(r.headers["location"]).json()
    assert {k: again[k] for k in ("decision", "label", "model_hash", "part_id", "serial")} == {
        k: body[k] for k in ("decision", "label", "model_hash", "part_id", "serial")
    }
    image = client.get(f"/v1/inspections/{body['id']}/image")
    assert image.status_code == 200 and image.headers["content-type"] == "image/jpeg"
    assert image.content == jpeg(REJECT)


def test_passes_are_not_stored_unless_sampled(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path / "a", tiny_model_path, pass_sample_rate=0.0)) as c:
        body = post_frame(c, jpeg(PASS)).json()
        assert body["decision"] == "pass" and not body["image_stored"] and body["review_status"] == "not_required"
        assert c.get(f"/v1/inspections/{body['id']}/image").json()["error"] == "not_found"
        assert stored_files(c) == []
    with client_for(settings_for(tmp_path / "b", tiny_model_path, pass_sample_rate=1.0)) as c:
        body = post_frame(c, jpeg(PASS)).json()
        assert body["image_stored"] and c.get(f"/v1/inspections/{body['id']}/image").content == jpeg(PASS)


def test_multipart_frame_and_optional_heatmap(client):
    r = client.post(
        "/v1/inspections",
        params={"heatmap": "true"},
        files={"frame": ("f.png", png(REVIEW), "image/png")},
        data={"camera_id": "cam2", "line_id": "L2", "part_id": "P-2"},
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["decision"] == "review" and body["camera_id"] == "cam2" and body["image_format"] == "PNG"
    heat = np.asarray(body["heatmap"])
    assert heat.shape == (8, 8) and 0.0 <= heat.min() <= heat.max() <= 1.0
    overlay = client.get(f"/v1/inspections/{body['id']}/heatmap")
    assert overlay.headers["content-type"] == "image/png"
    picture = cv2.imdecode(np.frombuffer(overlay.content, np.uint8), cv2.IMREAD_COLOR)
    assert picture.shape[:2] == (48, 64)  # the heatmap is drawn over the frame, at the frame's size
    assert "heatmap" not in post_frame(client, jpeg(PASS)).json()


def test_idempotent_retry_gets_the_same_answer_and_no_duplicate(client):
    first = post_frame(client, jpeg(REJECT), idem="frame-0001")
    files_after_first = len(stored_files(client))
    retry = post_frame(client, jpeg(REJECT), idem="frame-0001")
    assert first.status_code == retry.status_code == 201
    assert retry.json() == first.json()
    assert retry.headers["idempotent-replayed"] == "true"
    assert count_rows(client) == 1 and len(stored_files(client)) == files_after_first
    other_bytes = post_frame(client, jpeg(REJECT, noise=5), idem="frame-0001")
    assert other_bytes.status_code == 422 and other_bytes.json()["error"] == "idempotency_key_reused"
    assert count_rows(client) == 1
    # keys are per camera: another camera may use the same key for its own frame
    assert post_frame(client, jpeg(REJECT), camera="cam2", idem="frame-0001").status_code == 201
    assert count_rows(client) == 2


def test_batch_is_one_transaction_with_per_frame_metadata(client):
    import json

    frames = [("frame", (f"{i}.jpg", jpeg(v), "image/jpeg")) for i, v in enumerate((PASS, REVIEW, REJECT))]
    meta = [{"camera_id": "top"}, {"camera_id": "side"}, {"camera_id": "bottom", "part_id": "P-other"}]
    r = client.post(
        "/v1/inspections/batch",
        files=frames,
        headers={"Idempotency-Key": "batch-7"},
        data={"line_id": "L1", "part_id": "P-7", "meta": json.dumps(meta)},
    )
    assert r.status_code == 201, r.text
    items = r.json()["items"]
    assert [i["decision"] for i in items] == ["pass", "review", "reject"]
    assert [i["camera_id"] for i in items] == ["top", "side", "bottom"]
    assert [i["part_id"] for i in items] == ["P-7", "P-7", "P-other"]
    again = client.post(
        "/v1/inspections/batch",
        files=frames,
        headers={"Idempotency-Key": "batch-7"},
        data={"line_id": "L1", "part_id": "P-7", "meta": json.dumps(meta)},
    )
    assert again.json()["items"] == items and count_rows(client) == 3
    bad = [*frames[:2], ("frame", ("x.jpg", jpeg(PASS)[:200], "image/jpeg"))]
    r = client.post("/v1/inspections/batch", files=bad, data={"line_id": "L1", "camera_id": "c"})
    assert r.status_code == 422 and r.json()["error"] == "bad_image" and "frame 2" in r.json()["message"]
    assert count_rows(client) == 3  # nothing of the bad batch was written


def test_part_verdict_combines_cameras_worst_wins(client):
    for camera, value in (("top", PASS), ("side", REVIEW), ("bottom", PASS)):
        assert post_frame(client, jpeg(value), camera=camera, part="P-42").status_code == 201
    part = client.get("/v1/parts/P-42").json()
    assert part["decision"] == "review" and part["policy"] == "worst" and part["frames"] == 3
    assert part["cameras"] == ["bottom", "side", "top"] and part["decisions"] == {"pass": 2, "review": 1}
    post_frame(client, jpeg(REJECT), camera="end", part="P-42")
    assert client.get("/v1/parts/P-42").json()["decision"] == "reject"
    assert client.get("/v1/parts/nope").status_code == 404


def test_part_policy_majority_is_configurable(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path, part_policy="majority")) as c:
        for camera, value in (("a", PASS), ("b", PASS), ("c", REJECT)):
            post_frame(c, jpeg(value), camera=camera, part="P-1")
        assert c.get("/v1/parts/P-1").json()["decision"] == "pass"
        post_frame(c, jpeg(REJECT), camera="d", part="P-1")  # 2 pass, 2 reject: a tie goes to the worse
        assert c.get("/v1/parts/P-1").json()["decision"] == "reject"


def test_listing_filters_and_pages(client):
    for i, (camera, line, value) in enumerate(
        [("c1", "L1", PASS), ("c1", "L1", REJECT), ("c2", "L1", REVIEW), ("c2", "L2", REJECT), ("c3", "L2", PASS)]
    ):
        assert post_frame(client, jpeg(value, noise=i), camera=camera, line=line).status_code == 201
    everything = client.get("/v1/inspections").json()
    assert len(everything["items"]) == 5 and everything["next_cursor"] is None
    ids = [i["id"] for i in everything["items"]]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert {i["camera_id"] for i in client.get("/v1/inspections", params={"line_id": "L2"}).json()["items"]} == {
        "c2",
        "c3",
    }
    flagged = client.get("/v1/inspections", params=[("decision", "reject"), ("decision", "review")]).json()
    assert sorted(i["decision"] for i in flagged["items"]) == ["reject", "reject", "review"]
    queue = client.get("/v1/inspections", params={"review_status": "unreviewed", "camera_id": "c2"}).json()
    assert len(queue["items"]) == 2
    page1 = client.get("/v1/inspections", params={"limit": 2}).json()
    page2 = client.get("/v1/inspections", params={"limit": 2, "cursor": page1["next_cursor"]}).json()
    page3 = client.get("/v1/inspections", params={"limit": 2, "cursor": page2["next_cursor"]}).json()
    assert [i["id"] for i in page1["items"] + page2["items"] + page3["items"]] == ids
    assert page3["next_cursor"] is None
    future = (dt.datetime.now(dt.timezone.utc) + dt.timedelta(hours=1)).isoformat()
    assert client.get("/v1/inspections", params={"since": future}).json()["items"] == []
    assert len(client.get("/v1/inspections", params={"until": future}).json()["items"]) == 5
    assert client.get("/v1/inspections", params={"since": "2026-01-01T00:00:00"}).status_code == 422


def test_health_docs_and_metrics(client):
    assert client.get("/livez").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["model_version"] == "1"
    assert "/v1/inspections" in client.get("/openapi.json").json()["paths"]
    assert client.get("/docs").status_code == 200
    post_frame(client, jpeg(REJECT), camera="cam9", line="L9")
    post_frame(client, b"junk")
    text = client.get("/metrics").text
    assert 'andon_decisions_total{camera_id="cam9",decision="reject",line_id="L9"} 1.0' in text
    assert 'andon_http_requests_total{method="POST",route="/v1/inspections",status="201"} 1.0' in text
    assert 'andon_rejections_total{reason="bad_image"} 1.0' in text
    assert 'andon_active_model_info{hash="' in text and 'version="1"} 1.0' in text
    for stage in ("queue", "decode", "infer", "storage"):
        assert f'andon_stage_seconds_count{{stage="{stage}"}} 1.0' in text
    assert "andon_queue_depth 0.0" in text
