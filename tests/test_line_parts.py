"""Part verdicts: the worst across a line's cameras, once all have reported the part id; reject naming the
missing cameras when they have not within the deadline. Against the pymodbus PLC double."""

from __future__ import annotations

import datetime as dt
import json

from andon.service.line.dispatcher import PENDING, late_verdict
from andon.service.line.modbus import FLAG_INCOMPLETE, FLAG_LATE, decode_part_id
from andon.service.line.mqtt import verdict_topic
from andon.service.line.tables import LineOutbox
from line_support import FAST_MODBUS, wait_for
from service_support import PASS, REJECT, REVIEW, client_for, jpeg, post_frame, settings_for

P = 8
BLOCKS = {"top": 10, "side": 30}
PART_BLOCK = 50


def line_settings(tmp_path, model, plc, **changes):
    base = dict(
        FAST_MODBUS,
        modbus_port=plc.port,
        modbus_blocks=BLOCKS,
        modbus_part_blocks={"L1": PART_BLOCK},
        line_cameras={"L1": ["top", "side"]},
        modbus_part_id_registers=P,
    )
    return settings_for(tmp_path, model, **{**base, **changes})


def deliveries(plc, start: int) -> list[tuple[int, int, int, str]]:
    """(sequence, result, flags, part id) of each completed write to the block at ``start``, in order."""
    out, body = [], None
    for _, _, address, values in plc.log():
        if address == start + 1:
            body = values
        elif address == start and body is not None:
            out.append((values[0], body[0], body[1], decode_part_id(body[3:])))
            body = None
    return out


def part_rows(client, part: str) -> list[LineOutbox]:
    with client.app.state.ctx.sessions() as session:
        return session.query(LineOutbox).filter_by(kind="part", part_id=part).all()


def test_the_part_verdict_is_the_worst_of_the_lines_cameras_once_all_have_reported(tmp_path, tiny_model_path, plc):
    with client_for(line_settings(tmp_path, tiny_model_path, plc)) as client:
        for i, (camera, value, part) in enumerate(
            [("top", PASS, "P-1"), ("side", REJECT, "P-1"), ("side", PASS, "P-2"), ("top", REVIEW, "P-2")]
        ):
            assert post_frame(client, jpeg(value, noise=i), camera=camera, part=part).status_code == 201
        # a part only one camera has seen waits; the frame verdicts behind it do not
        assert post_frame(client, jpeg(PASS, noise=7), camera="top", part="P-3").status_code == 201
        assert post_frame(client, jpeg(PASS, noise=8), camera="side", part="P-4").status_code == 201
        wait_for(lambda: len(deliveries(plc, PART_BLOCK)) == 2, what="2 part verdicts")
        wait_for(lambda: [d[3] for d in deliveries(plc, BLOCKS["side"])][-1:] == ["P-4"], what="side's P-4")
        pending = part_rows(client, "P-3")
    assert deliveries(plc, PART_BLOCK) == [(1, 3, 0, "P-1"), (2, 2, 0, "P-2")]  # worst: reject, then review
    assert [d[3] for d in deliveries(plc, BLOCKS["top"])] == ["P-1", "P-2", "P-3"]
    assert len(pending) == 1 and pending[0].decision == PENDING and pending[0].delivered_at is None
    assert pending[0].detail["cameras"]["top"]["decision"] == "pass" and pending[0].detail["expected"] == [
        "top",
        "side",
    ]


def test_a_part_a_camera_missed_goes_out_as_reject_at_its_deadline_naming_the_camera(tmp_path, tiny_model_path, plc):
    with client_for(line_settings(tmp_path, tiny_model_path, plc, line_deadline_ms=300)) as client:
        assert post_frame(client, jpeg(PASS), camera="top", part="M-1").status_code == 201
        wait_for(lambda: deliveries(plc, PART_BLOCK), what="the part verdict at its deadline")
        row = wait_for(lambda: next((r for r in part_rows(client, "M-1") if r.delivered_at), None), what="marked")
        assert post_frame(client, jpeg(PASS, noise=1), camera="side", part="M-1").status_code == 201
        wait_for(lambda: deliveries(plc, BLOCKS["side"]), what="side's frame verdict")
        rows = part_rows(client, "M-1")
    (seq, result, flags, part), *more = deliveries(plc, PART_BLOCK)
    assert (seq, result, part, more) == (1, 3, "M-1", [])  # reject; the late camera does not make a second one
    assert flags & FLAG_INCOMPLETE and flags & FLAG_LATE
    assert row.delivered_decision == "reject" and row.detail["cameras"].keys() == {"top"}
    assert len(rows) == 1 and rows[0].detail["cameras"].keys() == {"top"}


def test_the_part_payload_names_its_cameras_and_the_missing_ones():
    t = dt.datetime(2026, 12, 3, 8, 0, tzinfo=dt.timezone.utc)
    row = LineOutbox(
        id=1, sink="mqtt", kind="part", inspection_id="I1", line_id="L1", camera_id=None, part_id="P-1",
        serial="S1", decision=PENDING, reason=None, model_version="3", received_at=t,
        deadline_at=t + dt.timedelta(milliseconds=200),
        detail={"expected": ["top", "side"], "cameras": {"top": {"decision": "review", "reason": "defect",
                                                                 "inspection_id": "I1", "model_version": "3"}}},
    )  # fmt: skip
    waiting = late_verdict(row, 4, t + dt.timedelta(milliseconds=250))
    body = json.loads(waiting.as_json())
    assert (body["decision"], body["model_decision"], body["late"]) == ("reject", "review", True)
    assert body["cameras"] == {"top": "review"} and body["missing_cameras"] == ["side"] and body["kind"] == "part"
    row.decision = "review"
    row.detail["cameras"]["side"] = {"decision": "pass", "reason": "pass", "inspection_id": "I2", "model_version": "3"}
    done = json.loads(late_verdict(row, 5, t + dt.timedelta(milliseconds=50)).as_json())
    assert (done["decision"], done["missing_cameras"], done["late"]) == ("review", [], False)
    # the line's part verdicts have a topic of their own, one level above its cameras'
    assert verdict_topic("plant", "L/1", None) == "plant/L%2F1/verdict"
    assert verdict_topic("plant", "L/1", "top") == "plant/L%2F1/top/verdict"
