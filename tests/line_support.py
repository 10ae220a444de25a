"""Real servers for the line tests: Debian's mosquitto as the plant's broker, a pymodbus server as the PLC."""

from __future__ import annotations

import asyncio
import json
import shutil
import socket
import subprocess
import threading
import time
from pathlib import Path

import pytest

MOSQUITTO = shutil.which("mosquitto") or next(
    (p for p in ("/usr/sbin/mosquitto", "/usr/bin/mosquitto") if Path(p).exists()), None
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def add_unsendable_row(client, sink: str, camera_id: str) -> None:
    """An outbox row no sink can send (decision "maybe" has no result code), part id V-X, already due: what a
    bug or a hand-edited database would leave. The line must close it unsent and go on behind it."""
    from andon.service.line.tables import LineOutbox
    from andon.service.tables import utcnow

    now = utcnow()
    with client.app.state.ctx.sessions() as session:
        session.add(
            LineOutbox(
                sink=sink, kind="frame", line_id="L1", camera_id=camera_id, part_id="V-X", decision="maybe",
                model_version="0", received_at=now, deadline_at=now, created_at=now, attempts=0,
            )
        )  # fmt: skip
        session.commit()


def wait_for(predicate, timeout: float = 20.0, what: str = "the condition"):
    """Poll ``predicate`` until it is truthy (returns its value); fail the test after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


class Broker:
    """mosquitto on a free loopback port with a temporary config; persistent, so that a stop and start keeps
    the subscriber's session (the messages published while the test's subscriber reconnects are queued)."""

    def __init__(self, folder: Path) -> None:
        if MOSQUITTO is None:
            pytest.skip("mosquitto is not installed (make system-deps, or apt-get install mosquitto)")
        self.folder = folder
        self.port = free_port()
        folder.mkdir(parents=True, exist_ok=True)
        self.config = folder / "mosquitto.conf"
        self.config.write_text(
            f"listener {self.port} 127.0.0.1\n"
            "allow_anonymous true\n"
            "user root\n"
            "persistence true\n"
            f"persistence_location {folder}/\n"
            "log_dest stderr\n"
            "max_queued_messages 100000\n"
        )
        self.proc: subprocess.Popen | None = None
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [MOSQUITTO, "-c", str(self.config)],
            stdout=subprocess.DEVNULL,
            stderr=open(self.folder / "mosquitto.log", "ab"),  # noqa: SIM115 - the child keeps it
        )

        def listening() -> bool:
            assert self.proc is not None and self.proc.poll() is None, (self.folder / "mosquitto.log").read_text()
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(listening, 10, "mosquitto to listen")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()  # SIGTERM: mosquitto saves its persistent sessions
            self.proc.wait(10)
        self.proc = None


class Subscriber:
    """A paho client subscribed to ``topic`` with QoS 1 and a persistent session; collects messages."""

    def __init__(self, port: int, topic: str) -> None:
        import paho.mqtt.client as mqtt

        self.messages: list[tuple[str, bytes, bool]] = []
        self._lock = threading.Lock()
        subscribed = threading.Event()
        c = mqtt.Client(
            callback_api_version=mqtt.CallbackAPIVersion.VERSION2,
            client_id=f"test-sub-{port}",
            protocol=mqtt.MQTTv311,
            clean_session=False,
        )
        c.reconnect_delay_set(0.05, 0.2)

        def on_connect(client, userdata, flags, rc, props=None):
            client.subscribe(topic, qos=1)

        def on_message(client, userdata, msg):
            with self._lock:
                self.messages.append((msg.topic, msg.payload, bool(msg.retain)))

        c.on_connect = on_connect
        c.on_subscribe = lambda *a, **k: subscribed.set()
        c.on_message = on_message
        c.connect("127.0.0.1", port, keepalive=5)
        c.loop_start()
        assert subscribed.wait(10), "the test subscriber did not subscribe"
        self.client = c

    def verdicts(self) -> list[dict]:
        with self._lock:
            return [json.loads(p) for t, p, _ in self.messages if t.endswith("/verdict")]

    def on(self, topic: str) -> list[bytes]:
        with self._lock:
            return [p for t, p, _ in self.messages if t == topic]

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


class Plc:
    """A PLC double: a pymodbus TCP server in a thread, holding registers 0..REGISTERS-1, every write logged
    in order as (time.perf_counter(), function code, address, values). ``stop()``/``start()`` on the same
    port make it go down and come back with its registers."""

    REGISTERS = 256

    def __init__(self) -> None:
        self.port = free_port()
        self.writes: list[tuple[float, int, int, list[int]]] = []
        self.registers = [0] * self.REGISTERS
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server = None
        self._thread: threading.Thread | None = None
        self.start()

    async def _action(self, function_code, start_address, address, count, current, set_values):
        if set_values is not None:
            with self._lock:
                self.writes.append((time.perf_counter(), function_code, address, list(set_values)))
                for i, v in enumerate(set_values):
                    self.registers[address + i] = int(v)
        return None

    def start(self) -> None:
        from pymodbus.server import ModbusTcpServer
        from pymodbus.simulator import DataType, SimData, SimDevice

        device = SimDevice(
            id=0,
            simdata=[SimData(0, values=list(self.registers), datatype=DataType.REGISTERS)],
            action=self._action,
        )
        ready = threading.Event()
        loop = asyncio.new_event_loop()

        async def main():
            self._server = ModbusTcpServer(device, address=("127.0.0.1", self.port))
            ready.set()
            await self._server.serve_forever()

        self._loop = loop
        self._thread = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
        self._thread.start()
        assert ready.wait(10)

        def listening() -> bool:
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=0.2).close()
                return True
            except OSError:
                return False

        wait_for(listening, 10, "the PLC double to listen")

    def stop(self) -> None:
        if self._loop is not None and self._server is not None:
            asyncio.run_coroutine_threadsafe(self._server.shutdown(), self._loop).result(10)
            self._thread.join(10)
            self._loop.close()
        self._loop = self._server = None

    def read(self, address: int, count: int = 1) -> list[int]:
        with self._lock:
            return self.registers[address : address + count]

    def log(self) -> list[tuple[float, int, int, list[int]]]:
        with self._lock:
            return list(self.writes)


#: Modbus sink settings that fail over fast in tests (short timeouts, retries and heartbeat, a generous deadline)
FAST_MODBUS = dict(
    line_sinks=["modbus"],
    modbus_timeout_s=0.5,
    line_deadline_ms=60_000,
    line_heartbeat_s=0.05,
    line_retry_initial_s=0.02,
    line_retry_max_s=0.1,
)
