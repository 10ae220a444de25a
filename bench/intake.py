"""A normal camera's latency and the service's memory, alone and while decompression bombs arrive.

    python -m bench.intake [--src DIR] [--seconds 8] [--bombs 8] [--bomb-side 10000] [--out bench-intake.json]

1. The model: the tests' tiny andon model (tests/tiny_onnx.py) at a 224x224 input, so that the decode is
   what costs (as it does for a bomb); the service as ``andon serve`` runs it (uvicorn, SQLite, local disk,
   2 inference threads, default queue and limits), in its own process, with the package from ``--src``
   (default: this checkout's ``src``; give an older checkout's ``src`` to measure before a change).
2. The normal camera: one sender posting a 1280x1024 JPEG (quality 90, ~70 KB; it passes, so it is not
   stored) back to back.
3. The bombs: ``--bombs`` senders, in their own process (as other machines would be), posting a 97 KB PNG
   that decodes to 10000x10000 (100 MP: inside the 100 MP header limit) back to back (50 ms pause after a
   503). ``--bomb-side 2500``: a 6 KB PNG of 2500x2500 (6.25 MP, 38 MB decoded), just inside what
   ``max_decode_ratio`` lets through for a 224x224 model, so that the memory budget is what bounds it.
4. Phases of ``--seconds`` each: the camera alone, then the camera with the bombs. Per phase: the camera's
   p50 / p95 latency and status counts, the bombs' status counts, and the server's peak resident set
   (VmRSS sampled every 20 ms; VmHWM is the process's lifetime peak).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from pathlib import Path

import numpy as np

from bench.common import free_port, rss_kb

ROOT = Path(__file__).resolve().parents[1]

_SERVER = """
import sys
from andon.service.app import create_app
from andon.service.settings import Settings
import uvicorn
data, model, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = Settings.load(data_dir=data, model=model, min_free_disk_mb=0, inference_threads=2, intra_op_threads=1,
                  pass_sample_rate=0.0, log_level="warning")
uvicorn.run(create_app(s), host="127.0.0.1", port=port, log_level="warning")
"""


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int = 10_000, height: int = 10_000) -> bytes:
    z = zlib.compressobj(9)
    row = bytes(1 + width)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def camera_jpeg() -> bytes:
    import cv2

    rng = np.random.default_rng(0)
    base = np.add.outer(np.linspace(180, 250, 1024), np.zeros(1280)).astype(np.uint8)
    img = base[:, :, None] + rng.integers(0, 5, (1024, 1280, 3), dtype=np.uint8)
    ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
    assert ok
    return buf.tobytes()


def _post(client, url: str, data: bytes, content_type: str) -> tuple[int, float]:
    t0 = time.perf_counter()
    try:
        r = client.post(url, content=data, headers={"Content-Type": content_type}, timeout=120)
        status = r.status_code
    except Exception:  # noqa: BLE001 - a dropped connection counts as such
        status = 0
    return status, (time.perf_counter() - t0) * 1000.0


def _bomb_process(base: str, bomb: bytes, senders: int, seconds: float, results) -> None:
    import httpx

    counts: Counter = Counter()
    lock = threading.Lock()
    stop = time.perf_counter() + seconds

    def loop() -> None:
        with httpx.Client() as client:
            url = f"{base}/v1/inspections?camera_id=bomb&line_id=L1"
            while time.perf_counter() < stop:
                status, _ = _post(client, url, bomb, "image/png")
                with lock:
                    counts[status] += 1
                if status == 503:
                    time.sleep(0.05)

    threads = [threading.Thread(target=loop) for _ in range(senders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    results.put(dict(counts))


def _phase(base: str, pid: int, seconds: float, bombs: int, frame: bytes, bomb: bytes) -> dict:
    import httpx

    stop = threading.Event()
    latencies: list[float] = []
    camera: Counter = Counter()
    bombed: Counter = Counter()
    peak = [rss_kb(pid)]

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], rss_kb(pid))
            time.sleep(0.02)

    def camera_loop() -> None:
        with httpx.Client() as client:
            url = f"{base}/v1/inspections?camera_id=cam1&line_id=L1"
            while not stop.is_set():
                status, ms = _post(client, url, frame, "image/jpeg")
                camera[status] += 1
                if status == 201:
                    latencies.append(ms)

    threads = [threading.Thread(target=sample), threading.Thread(target=camera_loop)]
    senders = None
    if bombs:
        ctx = multiprocessing.get_context("fork")
        results = ctx.Queue()
        senders = ctx.Process(target=_bomb_process, args=(base, bomb, bombs, seconds, results))
        senders.start()
    for t in threads:
        t.start()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    if senders is not None:
        bombed.update(results.get(timeout=300))
        senders.join(timeout=60)
    lat = np.asarray(latencies) if latencies else np.asarray([np.nan])
    return {
        "camera_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "camera_p95_ms": round(float(np.percentile(lat, 95)), 1),
        "camera_statuses": dict(sorted(camera.items())),
        "bomb_statuses": dict(sorted(bombed.items())),
        "peak_rss_mb": round(peak[0] / 1024, 1),
    }


def run(src: Path, seconds: float, bombs: int, bomb_side: int = 10_000) -> dict:
    import httpx

    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_onnx import tiny_card, write_tiny_model

    frame, bomb = camera_jpeg(), png_bomb(bomb_side, bomb_side)
    with tempfile.TemporaryDirectory() as tmp:
        model = write_tiny_model(Path(tmp) / "tiny224.onnx", tiny_card(size=224))
        port = free_port()
        env = {**os.environ, "PYTHONPATH": str(src)}
        proc = subprocess.Popen(
            [sys.executable, "-c", _SERVER, str(Path(tmp) / "data"), str(model), str(port)], env=env, cwd=tmp
        )
        base = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the service did not become ready")
                time.sleep(0.2)
            for _ in range(20):  # warm up
                httpx.post(
                    f"{base}/v1/inspections?camera_id=cam1&line_id=L1",
                    content=frame,
                    headers={"Content-Type": "image/jpeg"},
                )
            idle = round(rss_kb(proc.pid) / 1024, 1)
            alone = _phase(base, proc.pid, seconds, 0, frame, bomb)
            attacked = _phase(base, proc.pid, seconds, bombs, frame, bomb)
            hwm = round(rss_kb(proc.pid, "VmHWM") / 1024, 1)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    return {
        "src": str(src),
        "frame_bytes": len(frame),
        "bomb_bytes": len(bomb),
        "bombs": bombs,
        "bomb_side": bomb_side,
        "seconds": seconds,
        "idle_rss_mb": idle,
        "alone": alone,
        "with_bombs": attacked,
        "lifetime_peak_rss_mb": hwm,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the andon package's parent folder")
    parser.add_argument("--seconds", type=float, default=8.0)
    parser.add_argument("--bombs", type=int, default=8)
    parser.add_argument("--bomb-side", type=int, default=10_000, help="the bomb PNG is this many pixels square")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args()
    result = run(args.src, args.seconds, args.bombs, args.bomb_side)
    print(
        f"src {result['src']}: camera frame {result['frame_bytes']:,} B, {args.bombs} senders of a "
        f"{args.bomb_side}x{args.bomb_side} PNG bomb of {result['bomb_bytes']:,} B"
    )
    print(f"idle RSS {result['idle_rss_mb']} MB")
    for name in ("alone", "with_bombs"):
        p = result[name]
        print(
            f"{name:10s} camera p50 {p['camera_p50_ms']} ms, p95 {p['camera_p95_ms']} ms, "
            f"statuses {p['camera_statuses']}; bombs {p['bomb_statuses']}; peak RSS {p['peak_rss_mb']} MB"
        )
    print(f"lifetime peak RSS (VmHWM) {result['lifetime_peak_rss_mb']} MB")
    if args.out:
        args.out.write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
