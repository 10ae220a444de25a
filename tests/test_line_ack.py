"""The PLC's acknowledgement on Modbus (modbus_ack_registers): against a pymodbus PLC double that writes the
sequence it took into the block's ack register, or does not. On: a block's next verdict waits for the ack (up
to modbus_ack_timeout_ms), each outcome is counted and kept in the outbox row. Off: nothing is read or awaited."""

from __future__ import annotations

import pytest

from andon.errors import ConfigError
from line_support import FAST_MODBUS, Plc, wait_for
from service_support import PASS, REJECT, client_for, jpeg, post_frame, settings_for

BLOCK = 10  # cam1's block: registers 10..21 (8 part id registers)
ACK = 40


class AckingPlc(Plc):
    """The PLC double, and a PLC program: when cam1's sequence register is written, it writes the same value
    into the ack register (while ``acking``)."""

    acking = True

    async def _action(self, function_code, start_address, address, count, current, set_values):
        await super()._action(function_code, start_address, address, count, current, set_values)
        if set_values is not None and address == BLOCK and len(set_values) == 1 and self.acking:
            current[ACK - start_address] = int(set_values[0])
            with self._lock:
                self.registers[ACK] = int(set_values[0])
        return None


@pytest.fixture
def acking_plc():
    server = AckingPlc()
    yield server
    server.stop()


def settings(tmp_path, model, plc, **changes):
    base = dict(FAST_MODBUS, modbus_port=plc.port, modbus_blocks={"cam1": BLOCK}, line_heartbeat_s=0.05)
    return settings_for(tmp_path, model, **{**base, **changes})


def sequence_times(plc) -> list[tuple[float, int]]:
    return [(t, values[0]) for t, _, address, values in plc.log() if address == BLOCK and len(values) == 1]


def ack_rows(client):
    from andon.service.line.tables import LineOutbox

    with client.app.state.ctx.sessions() as session:
        rows = session.query(LineOutbox).order_by(LineOutbox.id).all()
    return [(r.part_id, (r.detail or {}).get("ack")) for r in rows]


def series(client, name: str) -> float | None:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def test_a_plc_that_acknowledges_gets_each_verdict_and_each_is_recorded_acknowledged(
    tmp_path, tiny_model_path, acking_plc
):
    s = settings(tmp_path, tiny_model_path, acking_plc, modbus_ack_registers={"cam1": ACK}, modbus_ack_timeout_ms=2000)
    with client_for(s) as client:
        for i in range(3):
            r = post_frame(client, jpeg(REJECT if i == 1 else PASS, noise=i), camera="cam1", part=f"K-{i}")
            assert r.status_code == 201
        wait_for(lambda: len(sequence_times(acking_plc)) == 3, what="3 verdicts")
        rows = wait_for(lambda: all(a for _, a in ack_rows(client)) and ack_rows(client), what="3 acks recorded")
        acked = series(client, 'andon_line_acks_total{outcome="acked",sink="modbus"}')
    times = sequence_times(acking_plc)
    assert [v for _, v in times] == [1, 2, 3]
    assert times[-1][0] - times[0][0] < 1.0  # acknowledged at once: nobody waited out the 2 s timeout
    assert [(p, a["acked"]) for p, a in rows] == [("K-0", True), ("K-1", True), ("K-2", True)]
    assert acked == 3.0 and acking_plc.read(ACK) == [3]


def test_a_plc_that_does_not_acknowledge_delays_the_next_verdict_by_the_timeout_and_is_recorded(
    tmp_path, tiny_model_path, acking_plc
):
    acking_plc.acking = False
    s = settings(tmp_path, tiny_model_path, acking_plc, modbus_ack_registers={"cam1": ACK}, modbus_ack_timeout_ms=300)
    with client_for(s) as client:
        for i in range(2):
            assert post_frame(client, jpeg(PASS, noise=i), camera="cam1", part=f"U-{i}").status_code == 201
        wait_for(lambda: len(sequence_times(acking_plc)) == 2, what="2 verdicts")
        rows = wait_for(lambda: all(a for _, a in ack_rows(client)) and ack_rows(client), what="2 outcomes")
        unacked = series(client, 'andon_line_acks_total{outcome="unacked",sink="modbus"}')
    (t1, _), (t2, _) = sequence_times(acking_plc)
    assert t2 - t1 >= 0.28  # verdict 2 waited for verdict 1's ack until the timeout
    assert [(p, a["acked"]) for p, a in rows] == [("U-0", False), ("U-1", False)]
    assert unacked == 2.0


def test_without_ack_registers_nothing_waits_and_nothing_is_recorded(tmp_path, tiny_model_path, acking_plc):
    acking_plc.acking = False
    with client_for(settings(tmp_path, tiny_model_path, acking_plc, modbus_ack_timeout_ms=2000)) as client:
        for i in range(3):
            assert post_frame(client, jpeg(PASS, noise=i), camera="cam1", part=f"O-{i}").status_code == 201
        wait_for(lambda: len(sequence_times(acking_plc)) == 3, what="3 verdicts")
        rows = ack_rows(client)
    times = sequence_times(acking_plc)
    assert times[-1][0] - times[0][0] < 1.5 and [a for _, a in rows] == [None, None, None]


@pytest.mark.parametrize(
    ("registers", "words"),
    [
        ({"cam1": 12}, "overlaps the block of camera 'cam1'"),
        ({"cam1": 0}, "overlaps the heartbeat register"),
        ({"cam9": 40}, "ack register for 'cam9', which has no block"),
        ({"cam1": 70000}, "registers are 0 to 65535"),
    ],
)
def test_bad_ack_registers_are_refused_naming_the_problem(tmp_path, registers, words):
    plc = type("P", (), {"port": 5020})()
    with pytest.raises(ConfigError, match=words):
        settings(tmp_path, None, plc, modbus_ack_registers=registers)
