"""The MQTT sink against Debian's mosquitto: verdicts arrive with the part id on the line's topics; a broker
that goes down and comes back gets every verdict, in order; late ones as reject. Skipped without mosquitto."""

from __future__ import annotations

import time

import pytest

from andon.service.line.tables import LineOutbox
from line_support import Broker, Subscriber, wait_for
from service_support import PASS, REJECT, REVIEW, client_for, jpeg, post_frame, settings_for


@pytest.fixture
def broker(tmp_path):
    b = Broker(tmp_path / "mosquitto")
    yield b
    b.stop()


@pytest.fixture
def subscriber(broker):
    s = Subscriber(broker.port, "plant/#")
    yield s
    s.close()


def line_settings(tmp_path, model, broker, **changes):
    base = dict(
        line_sinks=["mqtt"],
        mqtt_port=broker.port,
        mqtt_topic_prefix="plant",
        mqtt_timeout_s=1.0,
        line_deadline_ms=60_000,
        line_heartbeat_s=0.1,
        line_retry_initial_s=0.02,
        line_retry_max_s=0.2,
    )
    base.update(changes)
    return settings_for(tmp_path, model, **base)


def test_verdicts_arrive_on_the_cameras_topic_with_the_part_id(tmp_path, tiny_model_path, broker, subscriber):
    frames = [(PASS, "cam1", "P-1", "SN1"), (REVIEW, "cam2", "P-1", None), (REJECT, "cam1", "P-2", "SN2")]
    with client_for(line_settings(tmp_path, tiny_model_path, broker)) as client:
        ids = []
        for i, (value, camera, part, serial) in enumerate(frames):
            extra = {"serial": serial} if serial else {}
            r = post_frame(client, jpeg(value, noise=i), camera=camera, line="L/1", part=part, **extra)
            assert r.status_code == 201, r.text
            ids.append(r.json()["id"])
        got = wait_for(lambda: len(subscriber.verdicts()) >= 3 and subscriber.verdicts(), what="3 verdicts")
        wait_for(lambda: b"ready" in subscriber.on("plant/status"), what="the status")
        model_version = client.app.state.ctx.runtime.snapshot().active.model_version
    topics = [t for t, _, _ in subscriber.messages if t.endswith("/verdict")]
    assert topics == ["plant/L%2F1/cam1/verdict", "plant/L%2F1/cam2/verdict", "plant/L%2F1/cam1/verdict"]
    assert [(v["part_id"], v["serial"], v["camera_id"], v["line_id"]) for v in got] == [
        ("P-1", "SN1", "cam1", "L/1"),
        ("P-1", None, "cam2", "L/1"),
        ("P-2", "SN2", "cam1", "L/1"),
    ]
    assert [v["decision"] for v in got] == ["pass", "review", "reject"] == [v["model_decision"] for v in got]
    assert [v["sequence"] for v in got] == [1, 2, 3] and [v["inspection_id"] for v in got] == ids
    assert all(v["late"] is False and v["latency_ms"] >= 0 and v["model_version"] == model_version for v in got)
    assert all(v["reason"] for v in got) and got[0]["received_at"].endswith("Z")
    # the service said goodbye on its status topic (retained, so a late subscriber reads it too)
    wait_for(lambda: subscriber.on("plant/status")[-1:] == [b"offline"], what="the offline status")


def all_delivered(client) -> list[LineOutbox] | None:
    with client.app.state.ctx.sessions() as session:
        rows = session.query(LineOutbox).order_by(LineOutbox.id).all()
    return rows if all(r.delivered_at is not None for r in rows) else None


def test_a_broker_outage_loses_nothing_and_keeps_the_order_late_verdicts_go_out_as_reject(
    tmp_path, tiny_model_path, broker, subscriber
):
    settings = line_settings(tmp_path, tiny_model_path, broker, line_deadline_ms=300)
    with client_for(settings) as client:
        assert post_frame(client, jpeg(PASS), part="B-0").status_code == 201
        wait_for(lambda: subscriber.verdicts(), what="the first verdict")
        broker.stop()
        parts = [f"B-{i}" for i in range(1, 11)]
        for i, part in enumerate(parts, start=1):
            r = post_frame(client, jpeg(REJECT if i % 4 == 0 else PASS, noise=i), part=part)
            assert r.status_code == 201, r.text  # acknowledged while the broker is down
        worker = client.app.state.ctx.pipeline.line.workers[0]
        wait_for(lambda: worker.failing, what="the sink to notice the broker is gone")
        time.sleep(0.4)  # the outage outlasts the deadline of every frame posted during it
        broker.start()
        wait_for(lambda: len({v["sequence"] for v in subscriber.verdicts()}) == 11, what="the backlog", timeout=30)
        rows = wait_for(lambda: all_delivered(client), what="the outbox rows marked delivered")
    got = subscriber.verdicts()
    sequences = [v["sequence"] for v in got]
    assert sequences == sorted(sequences) and set(sequences) == set(range(1, 12))  # in order; a repeat is a resend
    first = {}
    for v in got:
        first.setdefault(v["sequence"], v)
    late = [first[n] for n in range(2, 12)]
    assert [v["part_id"] for v in late] == parts
    assert all(v["late"] and v["decision"] == "reject" for v in late)
    assert [v["model_decision"] for v in late] == ["reject" if i % 4 == 0 else "pass" for i in range(1, 11)]
    # the outbox: every row delivered once, the record's decision kept
    assert len(rows) == 11
    assert [r.sequence for r in rows] == list(range(1, 12)) and all(r.late for r in rows[1:])
    assert [r.decision for r in rows[1:]] == [v["model_decision"] for v in late]
