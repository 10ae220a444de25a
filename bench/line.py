"""The line: frame posted -> PLC register written (p50 / p99), and MQTT delivery across a broker outage.

    python -m bench.line [--frames 300] [--interval-ms 66] [--cameras 4] [--capacity-seconds 20] [--outage 30]
                         [--out bench-line.json]

1. The service as ``andon serve`` runs it (uvicorn, SQLite with synchronous=FULL, local disk, 2 inference
   threads) in its own process, with the tests' tiny model (tests/tiny_onnx.py, 224x224 input) and one
   640x480 JPEG camera; the PLC double (tests/line_support.py: a pymodbus TCP server) in another process,
   logging every write with ``time.perf_counter()`` (CLOCK_MONOTONIC: one clock for all processes).
2. PLC latency: one camera posts ``--frames`` frames, each with its own part id, ``--interval-ms`` apart (a
   camera at ~15 fps by default). Latency = from just before the POST to the write of the block's sequence
   register (the moment the PLC may read the verdict), matched on the part id echo. The HTTP answer's latency
   is given beside it. Deadline 200 ms: the count of late (rejected) verdicts is reported.
   **At capacity**: ``--cameras`` cameras (4), each with its own register block, post back to back (closed
   loop: the next frame leaves when the last is answered) for ``--capacity-seconds``: the service runs flat out
   and the same latency is measured on every acknowledged frame, with the frames/s it reached. Then the same
   cameras open loop at 0.8x that rate (each at a fixed period; latency from the scheduled send), as a line
   sized below its inspection capacity runs.
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
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from bench.common import cpu_model, free_port

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

        self.port = free_port()
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


class _PlcRun:
    """The PLC double in its own process and the service writing to it: ``blocks`` camera -> first register."""

    def __init__(self, tmp: Path, model: Path, blocks: dict[str, int], **changes) -> None:
        self.blocks = blocks
        self.parent, child = multiprocessing.Pipe()
        self.plc = multiprocessing.Process(target=_plc_process, args=(child,), daemon=True)
        self.plc.start()
        port = self.parent.recv()
        settings = _base_settings(tmp, model) | dict(
            line_sinks=["modbus"],
            modbus_port=port,
            modbus_blocks=blocks,
            modbus_part_id_registers=PART_REGS,
            line_heartbeat_s=0.5,
            **changes,
        )
        tmp.mkdir()
        self.service = _Service(tmp, settings)

    def stop(self) -> list:
        """Stop both; the PLC's write log: (time, function code, address, values)."""
        self.service.close()
        self.parent.send("stop")
        log = self.parent.recv()
        self.plc.join(10)
        return log

    def written(self, log: list) -> tuple[dict[str, float], set[str]]:
        """(part id -> when its block's sequence register was written, part ids written as late rejects)."""
        from andon.service.line.modbus import decode_part_id

        heads = {b + 1: b for b in self.blocks.values()}
        pending: dict[int, str] = {}
        written: dict[str, float] = {}
        late: set[str] = set()
        for t, _fc, address, values in log:
            if address in heads:
                part = decode_part_id(values[3:])
                pending[heads[address]] = part
                if values[1] & 1:
                    late.add(part)
            elif address in pending:
                written.setdefault(pending.pop(address), t)
        return written, late


def plc_latency(tmp: Path, model: Path, frames: int, interval_ms: float) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    run = _PlcRun(tmp / "plc", model, {"cam1": BLOCK})
    service = run.service
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
        log = run.stop()
    return {"frames": frames, "interval_ms": interval_ms, **_figures(run, log, posted, answered)}


def _figures(run: _PlcRun, log: list, posted: dict[str, float], answered: list[float]) -> dict:
    """Frame posted -> the block's sequence register written, matched on the part id echo; the HTTP answers'."""
    written, late = run.written(log)
    lat = [(written[p] - t0) * 1000.0 for p, t0 in posted.items() if p in written]
    return {
        "acknowledged": len(posted),
        "written_to_plc": len(lat),
        "missing": len(posted) - len(lat),
        "late_rejects": len(late & set(posted)),
        "plc_p50_ms": _pct(lat, 50),
        "plc_p99_ms": _pct(lat, 99),
        "plc_max_ms": round(max(lat), 1) if lat else None,
        "http_p50_ms": _pct(answered, 50),
        "http_p99_ms": _pct(answered, 99),
    }


def plc_at_capacity(tmp: Path, model: Path, cameras: int, seconds: float, rate: float | None = None) -> dict:
    """``cameras`` cameras, each with its own register block, post for ``seconds``. ``rate`` None: back to back
    (closed loop: each sends its next frame when the last is answered), the service at its capacity; else open
    loop at ``rate`` frames/s in all (each camera every ``cameras / rate`` s, latency from the scheduled send)."""
    import httpx

    sys.path.insert(0, str(ROOT / "tests"))
    names = [f"cam{k + 1}" for k in range(cameras)]
    blocks = {name: BLOCK + k * (4 + PART_REGS) for k, name in enumerate(names)}
    run = _PlcRun(tmp / ("capacity" if rate is None else f"rate-{rate:.0f}"), model, blocks, queue_size=4 * cameras)
    frame = _frame()
    posted: dict[str, float] = {}
    answered: list[float] = []
    refused = 0
    lock = threading.Lock()
    stop_at = 0.0

    def camera(name: str, warm: bool) -> None:
        nonlocal refused
        with httpx.Client(base_url=run.service.base, timeout=10) as client:
            i = 0
            period = None if rate is None else cameras / rate
            next_at = time.perf_counter() + (0.0 if period is None else period * names.index(name) / cameras)
            while time.perf_counter() < stop_at:
                part = f"{name}-{'W' if warm else 'P'}{i}"
                i += 1
                if period is not None:
                    time.sleep(max(0.0, next_at - time.perf_counter()))
                    t0, next_at = next_at, next_at + period  # from the scheduled send: a late send counts
                else:
                    t0 = time.perf_counter()
                r = client.post(
                    "/v1/inspections",
                    params={"camera_id": name, "line_id": "L1", "part_id": part},
                    content=frame,
                    headers={"Content-Type": "image/jpeg"},
                )
                with lock:
                    if warm:
                        continue
                    answered.append((time.perf_counter() - t0) * 1000.0)
                    if r.status_code == 201:
                        posted[part] = t0
                    else:
                        refused += 1

    try:
        for warm, span in ((True, 3.0), (False, seconds)):
            stop_at = time.perf_counter() + span
            threads = [threading.Thread(target=camera, args=(n, warm)) for n in names]
            t0 = time.perf_counter()
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            wall = time.perf_counter() - t0
        time.sleep(1.0)
    finally:
        log = run.stop()
    return {
        "cameras": cameras,
        "mode": "closed loop (capacity)" if rate is None else f"open loop at {rate:.1f} frames/s",
        "seconds": seconds,
        "frames_per_s": round(len(posted) / wall, 1),
        "refused": refused,
        **_figures(run, log, posted, answered),
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


def run(frames: int, interval_ms: float, outage_s: float, cameras: int, capacity_s: float) -> dict:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_onnx import tiny_card, write_tiny_model

    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        model = write_tiny_model(tmp / "tiny224.onnx", tiny_card(size=224))
        plc = plc_latency(tmp, model, frames, interval_ms)
        capacity = plc_at_capacity(tmp, model, cameras, capacity_s)
        below = plc_at_capacity(tmp, model, cameras, capacity_s, rate=0.8 * capacity["frames_per_s"])
        mqtt = broker_outage(tmp, model, outage_s, interval_ms)
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg_1m": os.getloadavg()[0],
        "plc": plc,
        "plc_at_capacity": capacity,
        "plc_at_0.8x_capacity": below,
        "mqtt_outage": mqtt,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--frames", type=int, default=300)
    parser.add_argument("--interval-ms", type=float, default=66.0, help="the camera's frame period")
    parser.add_argument("--outage", type=float, default=30.0, help="seconds the broker is down")
    parser.add_argument("--cameras", type=int, default=4, help="closed-loop cameras for the at-capacity run")
    parser.add_argument("--capacity-seconds", type=float, default=20.0, help="length of the at-capacity run")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.frames, args.interval_ms, args.outage, args.cameras, args.capacity_seconds)
    print(json.dumps(result, indent=2))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
