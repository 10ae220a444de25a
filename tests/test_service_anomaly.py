"""Models with a good-only anomaly detector through the service (SQLite + PostgreSQL): the verdict's reason
and anomaly score in the answer and the stored record, the anomaly map stored where the anomaly score flagged
the frame, the reason on the review page, the dashboard's "flagged by signal"; and old records after the
0003 migration."""

from __future__ import annotations

import datetime as dt
import re

import cv2
import numpy as np
import pytest

from andon.inspect.inspector import Inspector
from review_support import add_user, login
from service_support import REJECT, add_key, auth, client_for, db_url, jpeg, post_frame, settings_for  # noqa: F401
from tiny_onnx import write_tiny_anomaly_model

SIZE = (48, 64)


def frame(kind: str) -> np.ndarray:
    """``grey``: a clean bright part; ``patch``: the same with a yellow patch in its top-left quarter (the
    classifier, which sees darkness, passes it; the anomaly detector, which sees colour, flags it)."""
    img = np.full((*SIZE, 3), 255, np.uint8)
    if kind == "patch":
        img[: SIZE[0] // 2, : SIZE[1] // 2, 2] = 0  # RGB: blue off = yellow
    return img


def png(img: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", img[:, :, ::-1])
    assert ok
    return buf.tobytes()


@pytest.fixture
def anomaly_model(tmp_path):
    return write_tiny_anomaly_model(tmp_path / "tiny-anomaly.onnx")


@pytest.fixture
def client(tmp_path, anomaly_model, db_url):  # noqa: F811
    with client_for(settings_for(tmp_path, anomaly_model, db_url)) as c:
        add_user(c.app.state.ctx, "olga", "operator")
        add_user(c.app.state.ctx, "erik", "engineer")
        yield c


def _row(client, inspection_id: str):
    from andon.service.tables import Inspection

    with client.app.state.ctx.sessions() as session:
        return session.get(Inspection, inspection_id)


def _stored_map(client, row) -> np.ndarray:
    from andon.service.pipeline import decode_heatmap

    return decode_heatmap(client.app.state.ctx.store.get(row.heatmap_key))


def test_unknown_defect_is_reviewed_with_its_reason_score_and_anomaly_map(client, anomaly_model):
    expected = Inspector.load(anomaly_model).inspect(frame("patch"), heatmap=True)
    assert expected.reason == "unknown defect" and expected.anomaly_map is not None

    r = post_frame(client, png(frame("patch")), content_type="image/png", part="P-1", heatmap="true")
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["decision"] == "review" and body["reason"] == "unknown defect"
    assert body["defect_score"] < 0.3  # the classifier passed it
    assert body["anomaly_score"] == pytest.approx(expected.anomaly_score, abs=1e-5) and body["anomaly_score"] > 0.5
    assert any("unknown defect" in text for text in body["reasons"])
    # the answer's map is the anomaly map: it peaks on the patch (top-left), not the flat class heatmap
    grid = np.array(body["heatmap"])
    assert grid == pytest.approx(expected.anomaly_map, abs=1e-3)
    assert grid[:3, :3].min() > 0.5 and grid[5:, 5:].max() < 0.1

    row = _row(client, body["id"])
    assert row.reason == "unknown defect" and row.anomaly_score == pytest.approx(body["anomaly_score"])
    assert row.review_status == "unreviewed" and row.heatmap_key is not None
    stored = _stored_map(client, row)
    assert stored == pytest.approx(expected.anomaly_map, abs=2e-3)  # float16 on disk
    assert not np.allclose(stored, expected.heatmap, atol=0.1)

    again = client.get(f"/v1/inspections/{body['id']}").json()
    assert again["reason"] == "unknown defect" and again["anomaly_score"] == pytest.approx(body["anomaly_score"])


def test_classifier_decisions_keep_their_reason_and_carry_the_anomaly_score(client):
    passed = post_frame(client, png(frame("grey")), content_type="image/png").json()
    assert passed["decision"] == "pass" and passed["reason"] == "pass"
    assert passed["anomaly_score"] == pytest.approx(0.0, abs=1e-6)
    rejected = post_frame(client, jpeg(REJECT)).json()
    assert rejected["decision"] == "reject" and rejected["reason"] == "defect"
    row = _row(client, rejected["id"])
    assert row.reason == "defect" and row.anomaly_score is not None
    # a frame the classifier flagged shows the class heatmap (where it sees the defect)
    expected = Inspector.load(client.app.state.ctx.settings.model).inspect(jpeg(REJECT), heatmap=True)
    assert _stored_map(client, row) == pytest.approx(expected.heatmap, abs=2e-3)


def test_review_page_shows_the_reason_and_the_anomaly_score(client):
    unknown = post_frame(client, png(frame("patch")), content_type="image/png").json()["id"]
    rejected = post_frame(client, jpeg(REJECT)).json()["id"]
    assert login(client, "olga").status_code == 303

    page = client.get("/")
    assert page.status_code == 200
    queue = page.text.split('<ol class="queue-list">', 1)[1].split("</ol>", 1)[0]
    items = dict(re.findall(r'data-id="([0-9A-Z]{26})">(.*?)</li>', queue, re.DOTALL))
    assert set(items) == {unknown, rejected}
    assert re.search(r'class="reason reason-unknown"[^>]*>unknown defect<', items[unknown])
    assert "a 0.89" in items[unknown]  # the anomaly score beside P(defect)
    assert "reason-unknown" not in items[rejected]

    part = client.get(f"/review/part/{unknown}").text
    assert re.search(r'Flagged by <span class="reason reason-unknown"[^>]*>unknown defect</span>', part)
    assert re.search(r"anomaly score <strong>0\.89</strong>", part)
    assert "Anomaly map <kbd>H</kbd>" in part  # the layer is the anomaly map
    assert client.get(f"/review/heat/{unknown}.png").status_code == 200

    other = client.get(f"/review/part/{rejected}").text
    assert re.search(r'Flagged by <span class="reason reason-classifier"[^>]*>classifier</span>', other)
    assert "Heatmap <kbd>H</kbd>" in other

    api = client.get("/v1/review/queue").json()
    assert {i["id"]: i["reason"] for i in api["items"]} == {unknown: "unknown defect", rejected: "defect"}


def test_dashboard_counts_flagged_frames_by_signal(client):
    post_frame(client, png(frame("patch")), content_type="image/png")
    post_frame(client, png(frame("patch")), content_type="image/png", noise=1, idem="second")
    post_frame(client, jpeg(REJECT))
    post_frame(client, png(frame("grey")), content_type="image/png")

    key = add_key(client, "engineer")
    summary = client.get("/v1/review/dashboard", headers=auth(key)).json()
    assert summary["frames"] == 4 and summary["flagged"] == 3
    by = summary["flagged_by"]
    assert by["anomaly"]["frames"] == 2 and by["anomaly"]["share"] == pytest.approx(2 / 3)
    assert by["anomaly"]["detail"] == {"unknown defect": 2}
    assert by["classifier"]["frames"] == 1 and by["classifier"]["share"] == pytest.approx(1 / 3)
    assert "per_class" not in by and "not_recorded" not in by
    operator = add_key(client, "operator")
    assert client.get("/v1/review/dashboard", headers=auth(operator)).status_code == 403

    assert login(client, "erik").status_code == 303
    page = client.get("/dashboard").text
    assert "Flagged by signal" in page
    row = re.search(r'<tr data-signal="anomaly">(.*?)</tr>', page, re.DOTALL).group(1)
    assert "<td>2</td>" in row and "66.7%" in row
    sub = re.search(r'<tr class="sub" data-signal="anomaly" data-detail="unknown defect">(.*?)</tr>', page, re.DOTALL)
    assert sub and "of which unknown defect" in sub.group(1)


def test_anomaly_only_model_stores_its_anomaly_map(tmp_path):
    model = write_tiny_anomaly_model(tmp_path / "only.onnx", anomaly_only=True)
    assert "heatmap" not in Inspector.load(model).card.output_names
    with client_for(settings_for(tmp_path, model)) as c:
        body = post_frame(c, png(frame("patch")), content_type="image/png", heatmap="true").json()
        assert body["decision"] == "review" and body["reason"] == "anomaly"
        assert body["heatmap_available"] and np.array(body["heatmap"])[:3, :3].min() > 0.5
        assert _stored_map(c, _row(c, body["id"]))[:3, :3].min() > 0.5


def test_a_model_without_anomaly_outputs_answers_as_before(tmp_path, tiny_model_path):
    with client_for(settings_for(tmp_path, tiny_model_path)) as c:
        body = post_frame(c, jpeg(REJECT)).json()
        assert body["decision"] == "reject" and body["reason"] == "defect" and body["anomaly_score"] is None
        assert body["heatmap_available"]
        row = _row(c, body["id"])
        assert row.reason == "defect" and row.anomaly_score is None


def _database_url(tmp_path, db_url) -> str:  # noqa: F811
    return db_url or f"sqlite:///{tmp_path / 'data' / 'andon.db'}"


def test_upgrading_from_0002_keeps_old_records_readable(tmp_path, tiny_model_path, db_url):  # noqa: F811
    import sqlalchemy as sa

    from andon.service.db import make_engine, migrate

    url = _database_url(tmp_path, db_url)
    engine = make_engine(url)
    migrate(engine, "0002")
    old = "01JDQ0000000000000000OLD01"
    from andon.service.tables import UTCDateTime

    typed = {"created_at": UTCDateTime(), "scores": sa.JSON(), "reasons": sa.JSON(), "timings_ms": sa.JSON()}
    values = {
        "id": old,
        "created_at": dt.datetime(2026, 11, 25, 8, 0, tzinfo=dt.timezone.utc),
        "line_id": "L1",
        "camera_id": "cam1",
        "label": "defect",
        "decision": "review",
        "defect_score": 0.5,
        "scores": {"ok": 0.5, "defect": 0.5},
        "reasons": ["P(defect) 0.50 in review band [0.30, 0.70)"],
        "model_version": "0",
        "model_hash": "0" * 64,
        "image_format": "JPEG",
        "image_width": 64,
        "image_height": 48,
        "image_bytes": 100,
        "body_sha256": "0" * 64,
        "review_status": "unreviewed",
        "timings_ms": {},
    }
    inspections = sa.table("inspections", *(sa.column(k, typed.get(k)) for k in values))  # the 0002 columns
    with engine.begin() as conn:
        conn.execute(inspections.insert().values(**values))
    migrate(engine)  # 0002 -> head
    with engine.connect() as conn:
        version = conn.execute(sa.text("SELECT version_num FROM alembic_version")).scalar()
        columns = {c["name"] for c in sa.inspect(conn).get_columns("inspections")}
    engine.dispose()
    from alembic.script import ScriptDirectory

    from andon.service.db import alembic_config

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert version == head and {"reason", "anomaly_score"} <= columns

    with client_for(settings_for(tmp_path, tiny_model_path, url)) as c:
        from andon.service.tables import Inspection

        with c.app.state.ctx.sessions() as session:
            row = session.get(Inspection, old)
            assert row.reason is None and row.anomaly_score is None and row.decision == "review"
        body = c.get(f"/v1/inspections/{old}").json()
        assert body["decision"] == "review" and body["reason"] is None and body["anomaly_score"] is None
        assert [i["id"] for i in c.get("/v1/review/queue").json()["items"]] == [old]
        # the page reads an old record's reason as its decision
        add_user(c.app.state.ctx, "olga", "operator")
        assert login(c, "olga").status_code == 303
        part = c.get(f"/review/part/{old}").text
        assert re.search(r'Flagged by <span class="reason reason-decision"[^>]*>review</span>', part)
        assert "unknown defect" not in c.get("/").text
