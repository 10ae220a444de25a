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
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from bench.common import free_port
from bench.serve import _Connection, cpu_seconds, start_service

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


def service_cpu_ms(model: Path, frame: bytes, requests: int, connections: int, stored: bool) -> dict:
    data = Path(tempfile.mkdtemp(prefix="andon-fixed-")) / "data"
    data.mkdir()
    port = free_port()
    proc = start_service(model, data, port)
    try:
        asyncio.run(_drive(port, frame, max(100, requests // 10), connections, stored))  # warm up
        cpu0, t0 = cpu_seconds(proc.pid), time.perf_counter()
        asyncio.run(_drive(port, frame, requests, connections, stored))
        cpu1, t1 = cpu_seconds(proc.pid), time.perf_counter()
    finally:
        proc.terminate()
        proc.wait()
        shutil.rmtree(data.parent, ignore_errors=True)
    return {"cpu_ms_per_request": (cpu1 - cpu0) * 1000.0 / requests, "requests_per_s": requests / (t1 - t0)}


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
    args = parser.parse_args(argv)
    frame = small_jpeg()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, (pass_below, reject_at, stored) in CASES.items():
            model = write_model(Path(tmp) / f"{len(results)}.onnx", pass_below, reject_at)
            service = service_cpu_ms(model, frame, args.requests, args.connections, stored)
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
    if args.out:
        args.out.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
