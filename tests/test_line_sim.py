"""``andon line-sim`` as a subprocess, the PLC beside a real andon service (in process): as the Modbus PLC (its
registers, the ack register, the watchdog when andon stops) and as an OPC UA client of andon's server (events,
Acks written back); bad options give one line and exit 2."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from line_support import free_port, wait_for
from service_support import PASS, REJECT, client_for, jpeg, post_frame, settings_for


class Sim:
    """``python -m andon line-sim`` with a config file; its output collected line by line."""

    def __init__(self, config, *args: str) -> None:
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "andon", "line-sim", "--config", str(config), *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        import threading

        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def said(self, words: str) -> list[str]:
        return [line for line in list(self.lines) if words in line]

    def finish(self, timeout: float = 30.0) -> int:
        rc = self.proc.wait(timeout)
        self._reader.join(5)
        return rc

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


def write_config(tmp_path, **values):
    path = tmp_path / "line.yaml"
    path.write_text(json.dumps(values))  # YAML is a superset of JSON
    return path


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


def outbox_acks(client) -> list:
    from andon.service.line.tables import LineOutbox

    with client.app.state.ctx.sessions() as session:
        return [(r.part_id, (r.detail or {}).get("ack")) for r in session.query(LineOutbox).order_by(LineOutbox.id)]


def test_line_sim_as_the_modbus_plc_judges_each_verdict_acknowledges_it_and_trips_its_watchdog(
    tmp_path, tiny_model_path
):
    port = free_port()
    wiring = dict(
        line_sinks=["modbus"],
        modbus_port=port,
        modbus_blocks={"cam1": 10},
        modbus_ack_registers={"cam1": 40},
        modbus_ack_timeout_ms=2000,
        modbus_timeout_s=0.5,
        line_heartbeat_s=0.05,
        line_deadline_ms=60_000,
        line_retry_initial_s=0.02,
        line_retry_max_s=0.1,
    )
    sim = Sim(write_config(tmp_path, **wiring), "--seconds", "20", "--part-prefix", "P")
    try:
        wait_for(lambda: listening(port), what="line-sim's PLC to listen")
        with client_for(settings_for(tmp_path, tiny_model_path, **wiring)) as client:
            wait_for(lambda: sim.said("heartbeat back"), what="the PLC to see the heartbeat")
            for i, (value, part) in enumerate([(PASS, "P-1"), (REJECT, "P-2"), (PASS, "X-3")]):
                assert post_frame(client, jpeg(value, noise=i), camera="cam1", part=part).status_code == 201
            wait_for(lambda: len(sim.said("[modbus] camera cam1")) == 3, what="3 verdicts at the PLC")
            acks = wait_for(lambda: all(a for _, a in outbox_acks(client)) and outbox_acks(client), what="acks")
        wait_for(lambda: len(sim.said("watchdog")) >= 2, what="the watchdog once andon stopped")
    finally:
        sim.kill()
    verdicts = sim.said("[modbus] camera cam1")
    assert "part P-1" in verdicts[0] and "andon pass" in verdicts[0] and verdicts[0].endswith("PLC: pass")
    assert "part P-2" in verdicts[1] and "PLC: REJECT (andon rejected)" in verdicts[1]
    assert "part X-3" in verdicts[2] and "PLC: REJECT (echo mismatch)" in verdicts[2]  # not the line's part id
    assert [(p, a["acked"]) for p, a in acks] == [("P-1", True), ("P-2", True), ("X-3", True)]


def test_line_sim_as_an_opcua_client_gets_the_events_and_acknowledges_them(tmp_path, tiny_model_path):
    port = free_port()
    wiring = dict(
        line_sinks=["opcua"],
        opcua_endpoint=f"opc.tcp://127.0.0.1:{port}/andon",
        opcua_cameras=["top"],
        opcua_username="plc",
        opcua_password="s3cret",
        opcua_ack_timeout_ms=2000,
        line_heartbeat_s=0.05,
        line_deadline_ms=60_000,
        line_retry_initial_s=0.02,
        line_retry_max_s=0.2,
    )
    config = write_config(tmp_path, **wiring)
    with client_for(settings_for(tmp_path, tiny_model_path, **wiring)) as client:
        wait_for(lambda: listening(port), what="andon's OPC UA server")
        sim = Sim(config, "--seconds", "8")
        try:
            wait_for(lambda: sim.said("subscribed to"), what="line-sim to subscribe")
            for i in range(3):
                assert post_frame(client, jpeg(PASS, noise=i), camera="top", part=f"T-{i}").status_code == 201
            wait_for(lambda: len(sim.said("[opcua] camera top")) == 3, what="3 verdicts at the sim")
            acks = wait_for(lambda: all(a for _, a in outbox_acks(client)) and outbox_acks(client), what="acks")
            assert sim.finish() == 0
        finally:
            sim.kill()
    verdicts = sim.said("[opcua] camera top")
    assert [v.split("part ")[1].split()[0] for v in verdicts] == ["T-0", "T-1", "T-2"]
    assert all(" ms " in v and v.endswith("PLC: pass") for v in verdicts)  # andon's latency, judged pass
    assert [(p, a["acked"]) for p, a in acks] == [("T-0", True), ("T-1", True), ("T-2", True)]
    assert sim.said("line-sim: 3 verdicts: pass 3") and sim.said("acks 3")


@pytest.mark.parametrize(
    ("args", "words"),
    [
        (["--config", "/nonexistent/line.yaml"], "config file /nonexistent/line.yaml does not exist"),
        ([], "nothing to simulate"),
        (["--modbus"], "--modbus needs modbus_blocks"),
        (["--opcua", "--part-prefix", "a b"], "--part-prefix 'a b'"),
    ],
)
def test_bad_options_give_one_line_and_exit_2(tmp_path, args, words):
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANDON_")}
    r = subprocess.run(
        [sys.executable, "-m", "andon", "line-sim", *args], capture_output=True, text=True, env=env, timeout=60
    )
    assert r.returncode == 2 and words in r.stderr, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_a_port_that_is_taken_is_one_line_too(tmp_path):
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", 0))
    blocker.listen()
    port = blocker.getsockname()[1]
    config = write_config(tmp_path, line_sinks=["modbus"], modbus_port=port, modbus_blocks={"cam1": 10})
    t0 = time.monotonic()
    r = subprocess.run(
        [sys.executable, "-m", "andon", "line-sim", "--config", str(config), "--seconds", "5"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    blocker.close()
    assert r.returncode == 2 and "line-sim could not start" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert time.monotonic() - t0 < 5
