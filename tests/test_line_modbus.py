"""The Modbus TCP sink against a real pymodbus server as the PLC: the verdict block, order and nothing lost
while the PLC is down, the deadline rule, and the heartbeat the PLC's watchdog reads."""

from __future__ import annotations

import datetime as dt
import time

from andon.service.line.modbus import FLAG_LATE, decode_part_id
from andon.service.runtime import Models
from line_support import FAST_MODBUS, add_unsendable_row, wait_for
from service_support import PASS, REJECT, REVIEW, client_for, jpeg, post_frame, settings_for

P = 8  # part id registers
BLOCKS = {"cam1": 10, "cam2": 30}
HEARTBEAT = 0


def line_settings(tmp_path, model, plc, **changes):
    base = dict(
        FAST_MODBUS,
        modbus_port=plc.port,
        modbus_blocks=BLOCKS,
        modbus_heartbeat_register=HEARTBEAT,
        modbus_part_id_registers=P,
    )
    return settings_for(tmp_path, model, **{**base, **changes})


def block(plc, camera):
    return plc.read(BLOCKS[camera], 4 + P)


def sequence_writes(plc, camera):
    """The sequence numbers written to a camera's block, in the order the PLC received them."""
    return [values[0] for _, fc, address, values in plc.log() if address == BLOCKS[camera] and len(values) == 1]


def series(client, name: str) -> float | None:
    """One series' value from /metrics."""
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_each_verdict_reaches_its_cameras_block_with_the_part_id_echo_and_the_sequence_last(
    tmp_path, tiny_model_path, plc
):
    with client_for(line_settings(tmp_path, tiny_model_path, plc)) as client:
        for i, (value, camera) in enumerate([(PASS, "cam1"), (REVIEW, "cam2"), (REJECT, "cam1")]):
            r = post_frame(client, jpeg(value, noise=i), camera=camera, part=f"P-{i}")
            assert r.status_code == 201, r.text
        wait_for(lambda: len(sequence_writes(plc, "cam1")) == 2 and sequence_writes(plc, "cam2"), what="3 verdicts")
        post_frame(client, jpeg(PASS, noise=9), camera="cam3", part="P-9")  # no block: not sent to the PLC

    cam1, cam2 = block(plc, "cam1"), block(plc, "cam2")
    assert cam1[:4] == [2, 3, 0, 3] and decode_part_id(cam1[4:]) == "P-2"  # seq 2, reject, no flags, 3 chars
    assert cam2[:4] == [1, 2, 0, 3] and decode_part_id(cam2[4:]) == "P-1"  # seq 1, review
    # each block counts its own verdicts; its body is written before its sequence, every time
    assert sequence_writes(plc, "cam1") == [1, 2] and sequence_writes(plc, "cam2") == [1]
    verdict_writes = [(address, values) for _, _, address, values in plc.log() if address != HEARTBEAT]
    for (body_at, body), (seq_at, seq) in zip(verdict_writes[::2], verdict_writes[1::2]):
        assert body_at == seq_at + 1 and len(body) == 3 + P and len(seq) == 1
    assert len(verdict_writes) == 6  # cam3 has no block


def test_a_plc_that_is_down_gets_every_verdict_in_order_once_it_is_back(tmp_path, tiny_model_path, plc):
    with client_for(line_settings(tmp_path, tiny_model_path, plc)) as client:
        assert post_frame(client, jpeg(PASS), camera="cam1", part="A-0").status_code == 201
        wait_for(lambda: sequence_writes(plc, "cam1") == [1], what="the first verdict")
        plc.stop()
        parts = [f"A-{i}" for i in range(1, 8)]
        for i, part in enumerate(parts, start=1):
            r = post_frame(client, jpeg(REJECT if i % 3 == 0 else PASS, noise=i), camera="cam1", part=part)
            assert r.status_code == 201  # the camera's answer does not wait for the PLC
        worker = client.app.state.ctx.pipeline.line.workers[0]
        wait_for(lambda: worker.failing, what="the sink to notice the PLC is down")
        wait_for(
            lambda: (
                series(client, 'andon_line_outbox_pending{sink="modbus"}') == 7.0
                and series(client, 'andon_line_sink_up{sink="modbus"}') == 0.0
            ),
            what="the metrics to show the backlog",
        )
        echoes = []
        plc.writes.clear()
        plc.start()
        wait_for(lambda: 8 in sequence_writes(plc, "cam1"), what="the backlog")
        for _, _, address, values in plc.log():
            if address == BLOCKS["cam1"] + 1:
                echoes.append(decode_part_id(values[3:]))
        assert sequence_writes(plc, "cam1") == list(range(2, 9))
        assert echoes == parts  # nothing lost, nothing out of order
        wait_for(lambda: worker.failing is None, what="the sink to count as working again")
        assert series(client, 'andon_line_sink_up{sink="modbus"}') == 1.0
        assert series(client, 'andon_line_delivered_total{sink="modbus",timing="on_time"}') == 8.0


def test_a_verdict_delivered_after_the_deadline_is_a_reject_flagged_late(tmp_path, tiny_model_path, plc):
    with client_for(line_settings(tmp_path, tiny_model_path, plc, line_deadline_ms=200)) as client:
        plc.stop()
        r = post_frame(client, jpeg(PASS), camera="cam1", part="LATE-1")
        assert r.status_code == 201 and r.json()["decision"] == "pass"
        time.sleep(0.3)  # the PLC stays down past the deadline
        plc.start()
        wait_for(lambda: sequence_writes(plc, "cam1"), what="the late verdict")
        row = wait_for(lambda: delivered_row(client), what="the outbox row marked delivered")
    result, flags = block(plc, "cam1")[1:3]
    assert result == 3 and flags & FLAG_LATE  # the line rejects the part
    assert row.decision == "pass" and row.delivered_decision == "reject" and row.late  # the record keeps "pass"


def delivered_row(client):
    from andon.service.line.tables import LineOutbox

    with client.app.state.ctx.sessions() as session:
        row = session.query(LineOutbox).one()
    return row if row.delivered_at is not None else None


def heartbeat_moves(plc, periods: int = 6, period: float = 0.05) -> bool:
    before = plc.read(HEARTBEAT)[0]
    time.sleep(periods * period)
    return plc.read(HEARTBEAT)[0] != before


def test_the_heartbeat_runs_only_while_the_service_has_a_model(tmp_path, tiny_model_path, plc):
    with client_for(line_settings(tmp_path, None, plc)) as client:  # started without a model
        ctx = client.app.state.ctx
        worker = ctx.pipeline.line.workers[0]
        wait_for(lambda: worker.beats >= 3, what="3 heartbeat periods")
        assert plc.read(HEARTBEAT) == [0] and not heartbeat_moves(plc)
        ctx.runtime.bootstrap(tiny_model_path)
        ctx.runtime.sync(force=True)
        wait_for(lambda: plc.read(HEARTBEAT)[0] != 0, what="the first heartbeat")
        wait_for(lambda: heartbeat_moves(plc), what="the heartbeat to go on")
        ctx.runtime._models = Models(None, None)  # the model is gone (as after a failed load at start)
        done = worker.beats
        wait_for(lambda: worker.beats >= done + 2, what="a whole heartbeat period without the model")
        assert not heartbeat_moves(plc)
        ctx.runtime.sync(force=True)  # the registry still names it: loaded again
        wait_for(lambda: heartbeat_moves(plc), what="the heartbeat to come back")
    assert not heartbeat_moves(plc)  # the service stopped: so did the heartbeat


def test_delivered_rows_are_pruned_and_a_restart_goes_on_with_the_next_sequence(tmp_path, tiny_model_path, plc):
    from andon.service.line.tables import LineOutbox
    from andon.service.tables import utcnow

    settings = line_settings(tmp_path, tiny_model_path, plc)
    with client_for(settings) as client:
        for i in range(3):
            assert post_frame(client, jpeg(PASS, noise=i), camera="cam1", part=f"R-{i}").status_code == 201
        worker = client.app.state.ctx.pipeline.line.workers[0]
        wait_for(lambda: worker.delivered == 3, what="3 deliveries")
        plc.stop()
        assert post_frame(client, jpeg(PASS, noise=5), camera="cam1", part="R-3").status_code == 201
        assert worker.prune(utcnow() + dt.timedelta(days=1)) == 2  # the newest delivered one stays
    plc.start()
    with client_for(settings) as client:  # a restart: the undelivered verdict goes out, numbered on
        wait_for(lambda: 4 in sequence_writes(plc, "cam1"), what="the verdict left in the outbox")
        with client.app.state.ctx.sessions() as session:
            kept = [r.part_id for r in session.query(LineOutbox).order_by(LineOutbox.id)]
    assert sequence_writes(plc, "cam1") == [1, 2, 3, 4] and kept == ["R-2", "R-3"]


def test_a_row_the_plc_cannot_take_is_closed_unsent_and_does_not_stop_the_line(tmp_path, tiny_model_path, plc):

    with client_for(line_settings(tmp_path, tiny_model_path, plc)) as client:
        plc.stop()
        assert post_frame(client, jpeg(PASS), camera="cam1", part="V-1").status_code == 201
        add_unsendable_row(client, "modbus", "cam1")  # a row no sink can send (a decision with no code)
        assert post_frame(client, jpeg(REJECT, noise=1), camera="cam1", part="V-2").status_code == 201
        plc.start()
        wait_for(lambda: 2 in sequence_writes(plc, "cam1"), what="both good verdicts")
        bad = wait_for(
            lambda: next((r for r in outbox_rows(client) if r.part_id == "V-X" and r.delivered_at), None),
            what="the bad row closed",
        )
    echoes = [decode_part_id(v[3:]) for _, _, a, v in plc.log() if a == BLOCKS["cam1"] + 1]
    assert echoes == ["V-1", "V-2"] and sequence_writes(plc, "cam1") == [1, 2]  # no number skipped
    assert bad.sequence is None and bad.delivered_decision is None and "'maybe' has no result code" in bad.last_error


def outbox_rows(client):
    from andon.service.line.tables import LineOutbox

    with client.app.state.ctx.sessions() as session:
        return session.query(LineOutbox).order_by(LineOutbox.id).all()
