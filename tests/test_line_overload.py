"""A frame refused with 503 (the service overloaded, or without a model) that names its part gives the line a
reject (docs/line.md, "What the line sees when something fails"): on the PLC (a real pymodbus server) and the
broker (Debian's mosquitto), without a record; bounded, and never for a camera the caller may not post for."""

from __future__ import annotations

from andon.service.line.metrics import LineMetrics
from andon.service.line.modbus import decode_part_id
from andon.service.line.refusals import OVERLOAD, Refusal, RefusalQueue
from line_support import FAST_MODBUS, Broker, Subscriber, wait_for
from service_support import PASS, add_key, client_for, count_rows, db_url, jpeg, post_frame, settings_for  # noqa: F401

P = 8
BLOCKS = {"cam1": 10, "cam2": 30}


def line_settings(tmp_path, model, plc, **changes):
    base = dict(FAST_MODBUS, modbus_port=plc.port, modbus_blocks=BLOCKS, modbus_part_id_registers=P)
    return settings_for(tmp_path, model, **{**base, **changes})


def block(plc, camera: str) -> list[int]:
    return plc.read(BLOCKS[camera], 4 + P)


def sequences(plc, address: int) -> list[int]:
    return [values[0] for _, _, at, values in plc.log() if at == address and len(values) == 1]


def fill_the_queue(client) -> int:
    """Hold every inference slot, as a burst of frames would: the next frame gets 503."""
    admission = client.app.state.ctx.admission
    assert admission.try_acquire(admission.capacity)
    return admission.capacity


def test_a_frame_refused_for_a_full_queue_gives_the_plc_a_reject_with_its_part_id(
    tmp_path,
    tiny_model_path,
    plc,
    db_url,  # noqa: F811 - SQLite and a real PostgreSQL server (the outbox lock)
):
    with client_for(line_settings(tmp_path, tiny_model_path, plc, queue_size=0, database_url=db_url)) as client:
        held = fill_the_queue(client)
        r = post_frame(client, jpeg(PASS), camera="cam1", part="P-7")
        assert r.status_code == 503 and r.json()["error"] == "overloaded"
        wait_for(lambda: sequences(plc, BLOCKS["cam1"]) == [1], what="the reject of the refused frame")
        b = block(plc, "cam1")
        assert b[:4] == [1, 3, 0, 3] and decode_part_id(b[4:]) == "P-7"  # seq 1, reject, no flags, "P-7"
        assert count_rows(client) == 0  # nothing stored but the verdict

        r = post_frame(client, jpeg(PASS), camera="cam1")  # no part id: nothing the PLC could match
        assert r.status_code == 503
        client.app.state.ctx.admission.release(held)

        # the camera retries P-7 after Retry-After: the model passes it, the line keeps the reject it was told
        assert post_frame(client, jpeg(PASS), camera="cam1", part="P-7").status_code == 201
        wait_for(lambda: sequences(plc, BLOCKS["cam1"]) == [1, 2], what="the retried frame's verdict")
        assert block(plc, "cam1")[:2] == [2, 3]
        assert post_frame(client, jpeg(PASS, noise=3), camera="cam1", part="P-8").status_code == 201
        wait_for(lambda: sequences(plc, BLOCKS["cam1"]) == [1, 2, 3], what="the next part's verdict")
        b = block(plc, "cam1")
        assert b[:2] == [3, 1] and decode_part_id(b[4:]) == "P-8"  # a new part passes
        assert client.app.state.ctx.pipeline.line.refusals.written == 1


def test_a_service_without_a_model_rejects_frames_with_a_part_id_on_mqtt_and_the_plc(tmp_path, plc):
    broker = Broker(tmp_path / "broker")
    sub = Subscriber(broker.port, "andon/#")
    settings = line_settings(tmp_path, None, plc, line_sinks=["modbus", "mqtt"], mqtt_port=broker.port)
    try:
        with client_for(settings) as client:
            r = post_frame(client, jpeg(PASS), camera="cam2", line="L1", part="Q-1", serial="SN-5")
            assert r.status_code == 503 and r.json()["error"] == "no_model"
            wait_for(lambda: sub.verdicts(), what="the MQTT reject")
            v = sub.verdicts()[0]
            assert (v["decision"], v["model_decision"], v["reason"]) == ("reject", "reject", "no model")
            assert (v["part_id"], v["serial"], v["camera_id"], v["line_id"]) == ("Q-1", "SN-5", "cam2", "L1")
            assert v["inspection_id"] is None and v["model_version"] == "" and v["sequence"] == 1
            wait_for(lambda: sequences(plc, BLOCKS["cam2"]) == [1], what="the PLC reject")
            assert block(plc, "cam2")[:2] == [1, 3]
            wait_for(lambda: sub.on("andon/status")[-1:] == [b"not ready"], what="status not ready")
    finally:
        sub.close()
        broker.stop()


def test_a_keyed_frame_refused_inside_the_pipeline_gives_a_reject_too(tmp_path, tiny_model_path, plc):
    with client_for(line_settings(tmp_path, tiny_model_path, plc, queue_size=0)) as client:
        fill_the_queue(client)  # a frame with an Idempotency-Key is looked up first, then refused for a slot
        r = post_frame(client, jpeg(PASS), camera="cam2", part="I-1", idem="frame-1")
        assert r.status_code == 503 and r.json()["error"] == "overloaded"
        wait_for(lambda: sequences(plc, BLOCKS["cam2"]) == [1], what="the reject")
        assert block(plc, "cam2")[:2] == [1, 3] and decode_part_id(block(plc, "cam2")[4:]) == "I-1"


def test_a_refused_camera_rejects_its_part_verdict(tmp_path, tiny_model_path, plc):
    settings = line_settings(
        tmp_path,
        tiny_model_path,
        plc,
        queue_size=0,
        line_cameras={"L1": ["cam1", "cam2"]},
        modbus_part_blocks={"L1": 50},
    )
    with client_for(settings) as client:
        held = fill_the_queue(client)
        assert post_frame(client, jpeg(PASS), camera="cam1", part="K-1").status_code == 503
        client.app.state.ctx.admission.release(held)
        assert post_frame(client, jpeg(PASS), camera="cam2", part="K-1").status_code == 201  # passes
        wait_for(lambda: sequences(plc, 50) == [1], what="the part verdict")
        part = plc.read(50, 4 + P)
        assert part[:3] == [1, 3, 0] and decode_part_id(part[4:]) == "K-1"  # reject, complete (no flags)


def test_a_camera_key_cannot_make_rejects_for_another_camera(tmp_path, tiny_model_path, plc):
    with client_for(line_settings(tmp_path, tiny_model_path, plc, queue_size=0)) as client:
        key = add_key(client, "camera", camera_id="cam1")
        add_key(client, "camera", camera_id="cam2")
        fill_the_queue(client)
        assert post_frame(client, jpeg(PASS), camera="cam2", part="X-1", key=key).status_code == 503
        assert post_frame(client, jpeg(PASS), camera="cam1", part="X-2", key=key).status_code == 503
        wait_for(lambda: sequences(plc, BLOCKS["cam1"]) == [1], what="the reject of cam1's own frame")
        assert sequences(plc, BLOCKS["cam2"]) == [] and decode_part_id(block(plc, "cam1")[4:]) == "X-2"


class _Line:
    """What the refusal queue needs of a line, with a database that is never reached (the writer is not started)."""

    def __init__(self) -> None:
        self.metrics = LineMetrics()

    def notify(self) -> None:
        pass


def test_the_refusal_queue_is_bounded_and_counts_what_it_drops():
    line = _Line()
    queue = RefusalQueue(line, size=2)
    refusals = [Refusal("L1", "cam1", f"P-{i}", None, OVERLOAD, 0.0) for i in range(5)]
    assert queue.offer(refusals) == 2 and queue.dropped == 3
    assert line.metrics.refusals.labels(outcome="queued")._value.get() == 2
    assert line.metrics.refusals.labels(outcome="dropped")._value.get() == 3
    # every refused part is remembered, queued or not: its retry is rejected on the line all the same
    assert queue.refused_before("L1", "cam1", "P-4") == OVERLOAD and queue.refused_before("L1", "cam2", "P-4") is None


def test_a_refusal_queue_of_size_0_is_off():
    line = _Line()
    queue = RefusalQueue(line, size=0)
    assert queue.offer([Refusal("L1", "cam1", "P-1", None, OVERLOAD, 0.0)]) == 0
    assert queue.dropped == 0 and queue.refused_before("L1", "cam1", "P-1") is None
