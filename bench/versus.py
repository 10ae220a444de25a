"""andon serve against the endpoint a user would write, side by side in one run, and the worker curve.

    python -m bench.versus [--model FILE] [--workers 1 2] [--rounds 3] [--seconds 10] [--connections 4]
                           [--out FILE]

1. The model: ``--model``, or the default recipe's network (bench.serve.default_model: MobileNetV2 at 224x224,
   its card's threshold flagging 1 frame in 10). Frames: bench.serve's 10 synthetic 2448x2048 (5 MP) JPEGs.
2. **minimal**: FastAPI + onnxruntime in one uvicorn process, as a user would write it in twenty lines: the raw
   body, ``cv2.imdecode`` at reduced DCT scale (the largest factor that stays above the input size), resize,
   normalise, ``session.run`` on a worker thread, the probabilities as JSON. No auth, no storage, no record.
3. **andon**: ``andon serve`` with its defaults (SQLite WAL synchronous=FULL, local disk, admission control,
   metrics), a camera key per camera (``andon keys create --role camera``) on every request, every flagged
   frame stored durably with its record; once per ``--workers`` value (``andon serve --workers N``).
4. The same closed-loop client for every target, in this process: ``--connections`` keep-alive connections,
   each sending its next frame when the last is answered. Each round runs every target for ``--seconds``
   (after 2 s of warm-up), in an order that rotates from round to round, so that a neighbour's load on this
   shared machine falls on all of them alike; the median round counts.
5. Reported per target: frames/s (2xx only), p50 / p99, server CPU ms per frame (the process and its children,
   from /proc), and the ratio to minimal.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import cpu_model, free_port, wait_ready

_MINIMAL = r"""
import sys
import cv2
import numpy as np
import onnxruntime as ort
import uvicorn
from fastapi import FastAPI, Request
from starlette.concurrency import run_in_threadpool

model, port, size, mean, std = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4], sys.argv[5]
mean = np.array(mean.split(","), np.float32)
std = np.array(std.split(","), np.float32)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
name = session.get_inputs()[0].name
app = FastAPI()
REDUCED = {
    1: cv2.IMREAD_COLOR, 2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8
}


def predict(data: bytes) -> list[float]:
    buf = np.frombuffer(data, np.uint8)
    image = None
    for factor in (8, 4, 2, 1):  # the largest DCT reduction that stays at or above the input size
        image = cv2.imdecode(buf, REDUCED[factor])
        if min(image.shape[:2]) >= size or factor == 1:
            break
    image = cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)[:, :, ::-1]
    x = ((image.astype(np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None]
    return session.run(None, {name: np.ascontiguousarray(x)})[0][0].tolist()


@app.get("/livez")
def livez():
    return {"ok": True}


@app.get("/readyz")
def readyz():
    return {"ok": True}


@app.post("/infer")
async def infer(request: Request):
    data = await request.body()
    return {"probabilities": await run_in_threadpool(predict, data)}


uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning")
"""


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU of ``pid`` and every process below it (uvicorn's workers), so far."""
    tck = os.sysconf("SC_CLK_TCK")
    parents: dict[int, int] = {}
    cpu: dict[int, float] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        parents[int(entry.name)] = int(fields[1])
        cpu[int(entry.name)] = (int(fields[11]) + int(fields[12])) / tck
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += cpu.get(p, 0.0)
        todo.extend(c for c, parent in parents.items() if parent == p)
    return total


class Target:
    def __init__(self, name: str, proc: subprocess.Popen, port: int, path: str, keys: dict[str, str]) -> None:
        self.name, self.proc, self.port, self.path, self.keys = name, proc, port, path, keys

    def headers(self, camera: str) -> dict[str, str]:
        h = {"Content-Type": "image/jpeg"}
        if self.keys:
            h["Authorization"] = f"Bearer {self.keys[camera]}"
        return h

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def start_minimal(model: Path, work: Path) -> Target:
    import onnx

    from andon.inspect.onnxfile import read_card

    card = read_card(onnx.load(str(model), load_external_data=False))
    pre = card.preprocess
    port = free_port()
    log = work / "minimal.log"
    proc = subprocess.Popen(
        [sys.executable, "-c", _MINIMAL, str(model), str(port), str(pre.input_size[0])]
        + [",".join(str(v) for v in pre.mean), ",".join(str(v) for v in pre.std)],
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115 - the child holds it
        start_new_session=True,
    )
    wait_ready(proc, port, log)
    return Target("minimal", proc, port, "/infer", {})


def start_andon(model: Path, work: Path, workers: int, cameras: list[str]) -> Target:
    from bench.soak import _clean_env, camera_keys

    data = work / f"andon-w{workers}" / "data"
    data.mkdir(parents=True)
    env = _clean_env(work / "tmp")
    (work / "tmp").mkdir(exist_ok=True)
    keys = camera_keys(data, env, cameras)
    port = free_port()
    log = data.parent / "serve.log"
    proc = subprocess.Popen(
        [sys.executable, "-m", "andon", "serve", "--model", str(model), "--data-dir", str(data)]
        + ["--port", str(port), "--workers", str(workers)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115 - the child holds it
        start_new_session=True,
    )
    wait_ready(proc, port, log)
    return Target(f"andon --workers {workers}", proc, port, "/v1/inspections", keys)


def closed_loop(target: Target, frames: list[bytes], connections: int, seconds: float) -> dict:
    """``connections`` threads, each on its own keep-alive connection, post back to back for ``seconds``."""
    lat: list[list[float]] = [[] for _ in range(connections)]
    bad: list[int] = [0] * connections
    stop_at = time.perf_counter() + seconds

    def loop(k: int) -> None:
        camera = f"cam{k}"
        conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
        path = f"{target.path}?camera_id={camera}&line_id=bench" if target.keys else target.path
        headers = target.headers(camera)
        i = k
        while time.perf_counter() < stop_at:
            t0 = time.perf_counter()
            try:
                conn.request("POST", path, frames[i % len(frames)], headers)
                r = conn.getresponse()
                r.read()
                ok = 200 <= r.status < 300
            except (OSError, http.client.HTTPException):
                conn.close()
                conn = http.client.HTTPConnection("127.0.0.1", target.port, timeout=30)
                ok = False
            if ok:
                lat[k].append((time.perf_counter() - t0) * 1000.0)
            else:
                bad[k] += 1
            i += connections
        conn.close()

    cpu0, t0 = tree_cpu_seconds(target.proc.pid), time.perf_counter()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(connections)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, tree_cpu_seconds(target.proc.pid) - cpu0
    flat = [x for own in lat for x in own]
    return {
        "frames_per_s": round(len(flat) / wall, 2),
        "ok": len(flat),
        "failed": sum(bad),
        "p50_ms": round(float(np.percentile(flat, 50)), 1) if flat else None,
        "p99_ms": round(float(np.percentile(flat, 99)), 1) if flat else None,
        "server_cpu_ms_per_frame": round(cpu * 1000.0 / max(1, len(flat)), 2),
    }


def run(args: argparse.Namespace) -> dict:
    from bench.serve import default_model, synthetic_frames

    work = Path(tempfile.mkdtemp(prefix="andon-bench-versus-"))
    targets: list[Target] = []
    try:
        print("rendering 10 synthetic 2448x2048 JPEG frames ...", flush=True)
        frames = synthetic_frames()
        model = args.model or default_model(work / "default.onnx", frames)
        cameras = [f"cam{k}" for k in range(args.connections)]
        targets.append(start_minimal(model, work))
        for n in args.workers:
            targets.append(start_andon(model, work, n, cameras))
        rounds: dict[str, list[dict]] = {t.name: [] for t in targets}
        for r in range(args.rounds):
            order = targets[r % len(targets) :] + targets[: r % len(targets)]
            for t in order:
                closed_loop(t, frames, args.connections, 2.0)  # warm-up
                row = closed_loop(t, frames, args.connections, args.seconds)
                rounds[t.name].append(row)
                print(
                    f"round {r + 1} {t.name:18s} {row['frames_per_s']:7.1f} frames/s  p50 {row['p50_ms']} ms  "
                    f"p99 {row['p99_ms']} ms  server CPU {row['server_cpu_ms_per_frame']} ms/frame  "
                    f"failed {row['failed']}",
                    flush=True,
                )
    finally:
        for t in targets:
            t.stop()
        shutil.rmtree(work, ignore_errors=True)
    summary = {}
    for name, rows in rounds.items():
        fps = [row["frames_per_s"] for row in rows]
        mid = rows[fps.index(statistics.median_low(fps))]
        summary[name] = {**mid, "frames_per_s_rounds": fps}
    base = summary["minimal"]["frames_per_s"]
    for name in summary:
        summary[name]["vs_minimal"] = round(summary[name]["frames_per_s"] / base, 3) if base else None
    return {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "load_avg_1m_at_end": os.getloadavg()[0],
        "connections": args.connections,
        "seconds": args.seconds,
        "rounds": args.rounds,
        "targets": summary,
    }


def report(result: dict) -> None:
    print("\n| target | frames/s (median round) | rounds | vs minimal | p50 ms | p99 ms | server CPU ms/frame |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for name, row in result["targets"].items():
        print(
            f"| {name} | {row['frames_per_s']:.1f} | {', '.join(f'{v:.1f}' for v in row['frames_per_s_rounds'])} | "
            f"{row['vs_minimal']:.2f}x | {row['p50_ms']} | {row['p99_ms']} | {row['server_cpu_ms_per_frame']} |"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an exported .onnx (default: the default recipe's network)")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2], help="andon serve --workers values")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each target's turn per round")
    parser.add_argument("--connections", type=int, default=4, help="closed-loop connections (cameras)")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    args = parser.parse_args(argv)
    result = run(args)
    report(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
