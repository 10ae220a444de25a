"""The line: frame posted -> PLC register written (p50 / p99), and MQTT delivery across a broker outage.

    python -m bench.line [--frames 300] [--interval-ms 50] [--outage 30] [--out bench-line.json]

1. The service as ``andon serve`` runs it (uvicorn, SQLite with synchronous=FULL, local disk, 2 inference
   threads) in its own process, with the tests' tiny model (tests/tiny_onnx.py, 224x224 input) and one
   640x480 JPEG camera; the PLC double (tests/line_support.py: a pymodbus TCP server) in another process,
   logging every write with ``time.perf_counter()`` (CLOCK_MONOTONIC: one clock for all processes).
2. PLC latency: one camera posts ``--frames`` frames, each with its own part id, ``--interval-ms`` apart (a
   camera at ~15 fps by default). Latency = from just before the POST to the write of the block's sequence
   register (the moment the PLC may read the verdict), matched on the part id echo. The HTTP answer's latency
   is given beside it. Deadline 200 ms: the count of late (rejected) verdicts is reported.
3. Broker outage: Debian's mosquitto; the service's MQTT sink; a subscriber with a persistent session. The
   camera posts every ``--interval-ms`` for 5 s, the broker is stopped for ``--outage`` s while the camera
   goes on, then started again; the camera goes on for 5 s more. Reported: frames acknowledged, verdicts
   received (distinct sequence numbers), lost (acknowledged part ids never received), repeats, late rejects,
   and how long the backlog (what was acknowledged before the broker came back) took to arrive after it did.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import cpu_model

ROOT = Path(__file__).resolve().parents[1]
BLOCK = 10
PART_REGS = 8

_SERVER = """
import json, sys
from andon.service.app import create_app
from andon.service.settings import Settings
import uvicorn
s = Settings.load(**json.loads(sys.argv[1]))
uvicorn.run(create_app(s), host="127.0.0.1", port=int(sys.argv[2]), log_level="warning")
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _frame() -> bytes:
    import cv2
    import numpy as np

    img = np.full((480, 640, 3), 255, np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def _plc_process(conn) -> None:
    sys.path.insert(0, str(ROOT / "tests"))
    from line_support import Plc

    plc = Plc()
    conn.send(plc.port)
    conn.recv()  # "stop"
    log = plc.log()
    plc.stop()
    conn.send(log)


class _Service:
    def __init__(self, tmp: Path, settings: dict) -> None:
        import httpx

        self.port = _free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, json.dumps(settings), str(self.port)], env=env, cwd=tmp
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                if httpx.get(f"{self.base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError("the service did not become ready")
            time.sleep(0.2)
        self.client = httpx.Client(base_url=self.base, timeout=10)

    def post(self, frame: bytes, part: str) -> int:
        r = self.client.post(
            "/v1/inspections",
            params={"camera_id": "cam1", "line_id": "L1", "part_id": part},
            content=frame,
            headers={"Content-Type": "image/jpeg"},
        )
        return r.status_code

    def close(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=30)


def _pct(values: list[float], q: float) -> float:
    return round(statistics.quantiles(values, n=100, method="inclusive")[q - 1], 1) if len(values) > 1 else 0.0


def _base_settings(tmp: Path, model: Path) -> dict:
    return dict(
        data_dir=str(tmp / "data"),
        model=str(model),
        min_free_disk_mb=0,
        inference_threads=2,
        intra_op_threads=1,
        pass_sample_rate=0.0,
        log_level="warning",
        line_deadline_ms=200,
    )


def plc_latency(tmp: Path, model: Path, frames: int, interval_ms: float) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from andon.service.line.modbus import decode_part_id

    parent, child = multiprocessing.Pipe()
    plc = multiprocessing.Process(target=_plc_process, args=(child,), daemon=True)
    plc.start()
    port = parent.recv()
    settings = _base_settings(tmp / "plc", model) | dict(
        line_sinks=["modbus"],
        modbus_port=port,
        modbus_blocks={"cam1": BLOCK},
        modbus_part_id_registers=PART_REGS,
        line_heartbeat_s=0.5,
    )
    (tmp / "plc").mkdir()
    service = _Service(tmp / "plc", settings)
    frame = _frame()
    posted: dict[str, float] = {}
    answered: list[float] = []
    try:
        for i in range(20):  # warm up (these go to the PLC too; not counted)
            service.post(frame, f"W-{i}")
        for i in range(frames):
            part = f"F-{i}"
            t0 = time.perf_counter()
            status = service.post(frame, part)
            answered.append((time.perf_counter() - t0) * 1000.0)
            if status == 201:
                posted[part] = t0
            time.sleep(max(0.0, interval_ms / 1000.0 - (time.perf_counter() - t0)))
        time.sleep(1.0)
    finally:
        service.close()
        parent.send("stop")
        log = parent.recv()
        plc.join(10)
    written: dict[str, float] = {}
    pending = None
    late = 0
    for t, _fc, address, values in log:
        if address == BLOCK + 1:
            pending = decode_part_id(values[3:])
            late += bool(values[1] & 1) and pending in posted
        elif address == BLOCK and pending is not None:
            written.setdefault(pending, t)
            pending = None
    lat = [(written[p] - t0) * 1000.0 for p, t0 in posted.items() if p in written]
    return {
        "frames": frames,
        "interval_ms": interval_ms,
        "acknowledged": len(posted),
        "written_to_plc": len(lat),
        "missing": len(posted) - len(lat),
        "late_rejects": late,
        "plc_p50_ms": _pct(lat, 50),
        "plc_p99_ms": _pct(lat, 99),
        "plc_max_ms": round(max(lat), 1) if lat else None,
        "http_p50_ms": _pct(answered, 50),
        "http_p99_ms": _pct(answered, 99),
    }


def broker_outage(tmp: Path, model: Path, outage_s: float, interval_ms: float) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from line_support import Broker, Subscriber

    broker = Broker(tmp / "mosquitto")
    sub = Subscriber(broker.port, "plant/#")
    (tmp / "mqtt").mkdir()
    settings = _base_settings(tmp / "mqtt", model) | dict(
        line_sinks=["mqtt"], mqtt_port=broker.port, mqtt_topic_prefix="plant", line_retry_max_s=1.0
    )
    service = _Service(tmp / "mqtt", settings)
    frame = _frame()
    acked: list[str] = []
    n = 0

    def camera(seconds: float) -> None:
        nonlocal n
        stop = time.perf_counter() + seconds
        while time.perf_counter() < stop:
            t0 = time.perf_counter()
            part = f"O-{n}"
            n += 1
            if service.post(frame, part) == 201:
                acked.append(part)
            time.sleep(max(0.0, interval_ms / 1000.0 - (time.perf_counter() - t0)))

    try:
        camera(5.0)
        broker.stop()
        during_start = len(acked)
        camera(outage_s)
        during = len(acked) - during_start
        backlog = set(acked)
        broker.start()
        back = time.perf_counter()
        after = threading.Thread(target=camera, args=(5.0,))  # the camera goes on while the backlog drains
        after.start()
        drained = None
        deadline = back + 120
        while time.perf_counter() < deadline:
            if backlog <= {v["part_id"] for v in sub.verdicts()}:
                drained = time.perf_counter() - back
                break
            time.sleep(0.02)
        after.join()
        while time.perf_counter() < deadline and not set(acked) <= {v["part_id"] for v in sub.verdicts()}:
            time.sleep(0.05)
    finally:
        service.close()
        sub.close()
        broker.stop()
    verdicts = sub.verdicts()
    sequences = [v["sequence"] for v in verdicts]
    first: dict[int, dict] = {}
    for v in verdicts:
        first.setdefault(v["sequence"], v)
    received = {v["part_id"] for v in verdicts}
    return {
        "outage_s": outage_s,
        "acknowledged": len(acked),
        "acknowledged_during_outage": during,
        "received_distinct": len(first),
        "lost": len(set(acked) - received),
        "repeats": len(sequences) - len(first),
        "in_order": sequences == sorted(sequences),
        "late_rejects": sum(1 for v in first.values() if v["late"]),
        "drain_s_after_broker_back": None if drained is None else round(drained, 2),
    }


def run(frames: int, interval_ms: float, outage_s: float) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_onnx import tiny_card, write_tiny_model

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = write_tiny_model(tmp / "tiny224.onnx", tiny_card(size=224))
        plc = plc_latency(tmp, model, frames, interval_ms)
        mqtt = broker_outage(tmp, model, outage_s, interval_ms)
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "plc": plc, "mqtt_outage": mqtt}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, default=66.0, help="the camera's frame period")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the broker is down")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.frames, args.interval_ms, args.outage)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
