"""The service's fixed cost per request: what a frame costs through ``andon serve`` beyond the inspection.

    python -m bench.fixed_cost [--requests 2000] [--connections 4] [--out bench-fixed-cost.json]

``bench.serve``'s ratio (service / in-process limit) is set by this fixed cost: the closer the inspection's
own cost gets to it, the lower the ratio. This bench measures it alone, where the inspection is cheap:

1. The model: the tests' tiny andon model (tests/tiny_onnx.py, 32x32 input); the frame: one 64x64 JPEG.
2. Two cases: its thresholds pass every frame (nothing is stored: HTTP, auth, intake, decision and the
   record), and flag every frame (each one is also stored durably: image + heatmap, fsync).
3. Per case: ``andon serve`` with its defaults (SQLite, local disk, 2 inference threads) in its own process,
   driven closed-loop by ``--connections`` keep-alive connections from this process (bench.serve's raw
   HTTP/1.1 client). **CPU per request** is the service's process CPU time per answered request.
4. The same frame through ``Inspector.inspect`` in this process: CPU per frame. The difference is the fixed
   cost the service adds to every frame.

``--frame 5mp`` posts one of bench.serve's synthetic 2448x2048 JPEGs instead (the body's transfer and copies,
sha256 and the structure walk at a camera's size; the tiny model still decodes at a 1/8 DCT scale).
``--perf`` also samples the service's event-loop thread (its main thread) with Linux ``perf record`` during
the measured requests of each case and prints where its CPU goes by binary: the interpreter (Python code:
uvicorn, Starlette, FastAPI, andon's routes), the kernel (socket copies, waking worker threads), libc
(memory copies), uvloop, pydantic-core, httptools.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import free_port
from bench.serve import _Connection, cpu_seconds, per_frame_by_thread, start_service, thread_cpu

ROOT = Path(__file__).resolve().parents[1]
#: case -> (pass_below, reject_at, whether the service must store the frame)
CASES = {"nothing stored": (0.999, 0.9999, False), "every frame stored": (0.0, 0.0, True)}


def small_jpeg() -> bytes:
    from PIL import Image

    rng = np.random.default_rng(0)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def write_model(path: Path, pass_below: float, reject_at: float) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from andon.inspect.card import ThresholdBand, Thresholds
    from tiny_onnx import tiny_card, write_tiny_model

    band = ThresholdBand(pass_below=pass_below, reject_at=reject_at)
    return write_tiny_model(path, tiny_card(thresholds=Thresholds(defect=band, source="manual")))


async def _drive(port: int, frame: bytes, requests: int, connections: int, stored: bool) -> None:
    left = requests

    async def sender(conn: _Connection) -> None:
        nonlocal left
        while left > 0:
            left -= 1
            status, body = await conn.post("/v1/inspections?camera_id=bench&line_id=bench", frame)
            if status != 201:
                raise SystemExit(f"the service answered {status}: {body[:200]!r}")
            if json.loads(body)["image_stored"] != stored:  # the case measures what it says it measures
                raise SystemExit(f"image_stored should be {stored} in this case; the service answered {body[:200]!r}")

    await asyncio.gather(*(sender(_Connection("127.0.0.1", port)) for _ in range(connections)))


#: a line of ``perf report --sort dso``: "  57.00%  libpython3.11.so.1.0"
_DSO_LINE = re.compile(r"^\s*([\d.]+)%\s+(\S+)\s*$")


def perf_shares(report: str) -> dict[str, float]:
    """``perf report --sort dso --stdio`` output -> {binary: % of the samples}, largest first."""
    shares = {}
    for line in report.splitlines():
        m = _DSO_LINE.match(line)
        if m:
            shares[m.group(2)] = float(m.group(1))
    return dict(sorted(shares.items(), key=lambda kv: -kv[1]))


def service_cpu_ms(
    model: Path, frame: bytes, requests: int, connections: int, stored: bool, perf: bool = False
) -> dict:
    data = Path(tempfile.mkdtemp(prefix="andon-fixed-")) / "data"
    data.mkdir()
    port = free_port()
    proc = start_service(model, data, port)
    recorder, perf_file = None, data.parent / "loop.perf"
    try:
        asyncio.run(_drive(port, frame, max(100, requests // 10), connections, stored))  # warm up
        if perf:  # the main thread (tid = pid) runs the event loop
            command = ["perf", "record", "-q", "-F", "999", "-t", str(proc.pid), "-o", str(perf_file)]
            recorder = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            time.sleep(0.5)  # perf attaches
        cpu0, threads0, t0 = cpu_seconds(proc.pid), thread_cpu(proc.pid), time.perf_counter()
        asyncio.run(_drive(port, frame, requests, connections, stored))
        cpu1, threads1, t1 = cpu_seconds(proc.pid), thread_cpu(proc.pid), time.perf_counter()
        result = {
            "cpu_ms_per_request": (cpu1 - cpu0) * 1000.0 / requests,
            "requests_per_s": requests / (t1 - t0),
            "threads_cpu_ms_per_request": per_frame_by_thread(threads0, threads1, requests),
        }
        if recorder is not None:
            recorder.send_signal(signal.SIGINT)
            _, err = recorder.communicate(timeout=60)
            if recorder.returncode not in (0, -signal.SIGINT) or not perf_file.is_file():
                raise SystemExit(f"perf record failed (rc {recorder.returncode}): {err.strip()[:300]}")
            report = subprocess.run(
                ["perf", "report", "-i", str(perf_file), "--sort", "dso", "--no-children", "--stdio", "-q"],
                capture_output=True,
                text=True,
                check=True,
            ).stdout
            result["event_loop_by_binary_pct"] = perf_shares(report)
    finally:
        if recorder is not None and recorder.poll() is None:
            recorder.kill()
        proc.terminate()
        proc.wait()
        shutil.rmtree(data.parent, ignore_errors=True)
    return result


def in_process_cpu_ms(model: Path, frame: bytes, frames: int) -> float:
    from andon.inspect.inspector import Inspector

    inspector = Inspector.load(model)
    for _ in range(100):
        inspector.inspect(frame)
    started = time.process_time()
    for _ in range(frames):
        inspector.inspect(frame)
    return (time.process_time() - started) * 1000.0 / frames


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=2000, help="answered requests per case")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive connections sending at once")
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument(
        "--frame", choices=("64px", "5mp"), default="64px", help="the posted JPEG: 64x64, or a 5 MP camera frame"
    )
    parser.add_argument(
        "--perf", action="store_true", help="sample the event-loop thread with Linux perf (perf on PATH)"
    )
    args = parser.parse_args(argv)
    if args.perf and shutil.which("perf") is None:
        parser.error("--perf needs Linux perf on PATH (Debian: apt-get install linux-perf)")
    if args.frame == "5mp":
        from bench.serve import synthetic_frames

        frame = synthetic_frames(1)[0]
    else:
        frame = small_jpeg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (pass_below, reject_at, stored) in CASES.items():
            model = write_model(Path(tmp) / f"{len(results)}.onnx", pass_below, reject_at)
            service = service_cpu_ms(model, frame, args.requests, args.connections, stored, perf=args.perf)
            inspect_ms = in_process_cpu_ms(model, frame, args.requests)
            results[name] = {
                **service,
                "in_process_cpu_ms_per_frame": inspect_ms,
                "fixed_cpu_ms": service["cpu_ms_per_request"] - inspect_ms,
            }
            print(
                f"{name}: service {service['cpu_ms_per_request']:.2f} ms CPU a request "
                f"({service['requests_per_s']:.0f} requests/s), in-process {inspect_ms:.2f} ms a frame, "
                f"fixed cost {results[name]['fixed_cpu_ms']:.2f} ms",
                flush=True,
            )
            by_thread = service["threads_cpu_ms_per_request"].items()
            print("  by thread: " + ", ".join(f"{k} {v['ms']:.2f} ms" for k, v in by_thread), flush=True)
            if "event_loop_by_binary_pct" in service:
                top = list(service["event_loop_by_binary_pct"].items())[:6]
                print("  event-loop thread by binary: " + ", ".join(f"{k} {v:.1f} %" for k, v in top), flush=True)
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
