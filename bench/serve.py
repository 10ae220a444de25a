"""Service capacity against the in-process limit, on this machine.

    python -m bench.serve [--model FILE] [--seconds 8] [--workers 1 2] [--out bench-serve.json]

1. The model: ``--model``, or the default recipe's network (MobileNetV2, 224x224, 2 classes; ImageNet trunk
   from ../shared/weights when present) with an untrained head - the same graph and cost as a trained one. Its card's
   threshold is set so that 1 frame
   in 10 is flagged (and therefore stored durably, with fsync), as on a line with a few percent flagged.
2. Frames: 10 synthetic 2448x2048 (5 MP) JPEGs, quality 90 (~0.8 MB each).
3. In-process limit: ``Inspector.inspect`` in a loop on the same frames, no HTTP: with one thread per core
   (one onnxruntime thread each) and with one thread (onnxruntime on all cores); the better is the limit.
4. Service: ``andon serve`` in its own process with its defaults (SQLite WAL synchronous=FULL, local disk),
   once per ``--workers`` value (uvicorn worker processes, each its share of the cores), driven by a separate
   open-loop load generator process: requests leave at a fixed arrival rate whether or
   not earlier answers came back. The rate steps up until the accepted p99 exceeds 250 ms or more than 1 %
   of frames are refused; capacity is the highest accepted frames/s with p99 <= 250 ms.
5. The time split comes from the server's own per-frame timings (queue, decode, preprocess, infer, storage);
   "http" is the client latency minus the server's total. RSS is the peak resident set of the service's
   processes together (the master and its workers); CPU per frame counts all of them too.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import closed_loop, free_port, rss_kb, wait_ready

P99_BUDGET_MS = 250.0
MAX_REFUSED = 0.01
FRAME_HW = (2048, 2448)


# ---- model and frames --------------------------------------------------------------------------------


def default_model(out: Path, frames: list[bytes]) -> Path:
    """The default recipe's network, exported; thresholds flag the highest-scoring 1 frame in 10."""
    import onnx
    import torch

    from andon.inspect.card import ModelCard, PreprocessSpec, ThresholdBand, Thresholds
    from andon.inspect.inspector import Inspector
    from andon.inspect.onnxfile import embed_card, read_card
    from andon.models import create_model
    from andon.models.export import export_model

    torch.manual_seed(0)
    shared = Path(__file__).resolve().parents[1].parent / "shared" / "weights" / "mobilenet_v2-imagenet.pth"
    model = create_model("mobilenet_v2", 2, weights=str(shared) if shared.is_file() else "none", progress=False)
    if not shared.is_file():  # a fresh trunk's zero-initialised BN scales make every feature ~0: wake them up
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                torch.nn.init.ones_(module.weight)
    torch.nn.init.normal_(model.head.weight, std=1.0)  # an untrained head, but scores that differ per frame
    info = model.weights_info
    card = ModelCard(
        name="bench-default",
        version="bench",
        classes=["ok", "defect"],
        defect_classes=["defect"],
        preprocess=PreprocessSpec(input_size=(224, 224), mean=info.mean, std=info.std),
        backbone="mobilenet_v2",
        weights="none",
    )
    rng = np.random.default_rng(0)
    export_model(model, card, out, rng.standard_normal((2, 3, 224, 224)).astype(np.float32))
    scores = sorted(Inspector.load(out).inspect(f).defect_score for f in frames)
    if scores[-1] - scores[-2] < 1e-6:  # a cut between equal scores would flag every frame, not 1 in 10
        raise SystemExit(
            f"the bench model gives the frames equal scores ({scores[-1]:.4f}): no threshold flags 1 in 10; "
            f"put the ImageNet weights at {shared} or pass --model"
        )
    cut = float((scores[-1] + scores[-2]) / 2)
    graph = onnx.load(str(out))
    embed_card(
        graph,
        read_card(graph).replace(
            thresholds=Thresholds(defect=ThresholdBand(pass_below=cut, reject_at=cut), source="bench").model_dump()
        ),
    )
    onnx.save(graph, str(out))
    return out


def synthetic_frames(n: int = 10) -> list[bytes]:
    import cv2

    from andon.datasets.synth.render import render_sample

    rng = np.random.default_rng(7)
    out = []
    for i in range(n):
        defect = "scratch" if i == n - 1 else None
        image, _ = render_sample(rng, ("brushed", "cast", "painted", "woven")[i % 4], defect, FRAME_HW)
        ok, buf = cv2.imencode(".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
        out.append(buf.tobytes())
    return out


# ---- in-process limit ---------------------------------------------------------------------------------


def in_process_limit(model: Path, frames: list[bytes], seconds: float) -> dict:
    from andon.inspect.inspector import Inspector

    cores = len(os.sched_getaffinity(0))
    results: dict[str, float] = {}
    splits: dict[str, dict] = {}
    cpu_ms: dict[str, float] = {}
    for threads, intra in ((cores, 1), (1, cores)):
        inspector = Inspector.load(model, threads=intra)
        lock = threading.Lock()
        timings: list[dict] = []

        def work(i: int, inspector=inspector, lock=lock, timings=timings) -> None:
            result = inspector.inspect(frames[i % len(frames)])
            with lock:
                timings.append(result.timings_ms)

        sample = closed_loop(work, threads, seconds)
        name = f"{threads} threads x {intra} ort"
        results[name] = sample.fps
        cpu_ms[name] = sample.cpu_s * 1000.0 / max(1, sample.frames)
        splits[name] = {k: float(np.mean([t[k] for t in timings])) for k in ("decode", "preprocess", "infer")}
    best = max(results, key=results.get)
    return {
        "fps": results[best],
        "config": best,
        "all": results,
        "split_ms": splits[best],
        "cpu_ms_per_frame": cpu_ms[best],
    }


# ---- service and load generator ------------------------------------------------------------------------


def start_service(model: Path, data_dir: Path, port: int, workers: int = 1) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANDON_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "andon",
            "serve",
            "--model",
            str(model),
            "--data-dir",
            str(data_dir),
            "--port",
            str(port),
            "--workers",
            str(workers),
        ],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(data_dir.parent / "serve.log", "w"),
        start_new_session=True,
    )
    wait_ready(proc, port, data_dir.parent / "serve.log")
    return proc


def _stat_fields(pid: int) -> list[str]:
    """/proc/PID/stat after the command name: fields[2] is the process group, [11] and [12] utime and stime."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def group_pids(pgid: int) -> list[int]:
    """Every live process of process group ``pgid`` (the service started in its own session: master + workers)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if int(_stat_fields(int(entry.name))[2]) == pgid:
                    pids.append(int(entry.name))
            except (OSError, IndexError, ValueError):
                continue
    return pids


class RssSampler(threading.Thread):
    """Peak of the summed resident sets of the service's processes, sampled every 0.1 s."""

    def __init__(self, pgid: int) -> None:
        super().__init__(daemon=True)
        self.pgid, self.peak_kb, self.stop = pgid, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            self.peak_kb = max(self.peak_kb, sum(rss_kb(pid) for pid in group_pids(self.pgid)))
            time.sleep(0.1)


def cpu_seconds(pgid: int) -> float:
    """User + system CPU time so far of every live process in group ``pgid`` (all their threads)."""
    total = 0
    for pid in group_pids(pgid):
        try:
            fields = _stat_fields(pid)
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


#: how ``thread_cpu`` groups a service's threads (the inference pool names its threads in the OS)
THREAD_ROLES = ("inference", "event loop", "other")


def _thread_role(pid: int, tid: int) -> str:
    if tid == pid:
        return "event loop"  # uvicorn runs the event loop on each process's main thread
    try:
        comm = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
    except OSError:
        return "other"
    return "inference" if comm.startswith("andon-infer") else "other"


def thread_cpu(pgid: int) -> dict[str, tuple[float, float]]:
    """User + system and system-only CPU seconds so far of the service's threads, by role: ``inference`` (the
    ``andon-infer`` pool), ``event loop`` (each process's main thread: uvicorn, Starlette, FastAPI, the
    middleware) and ``other``: every other thread, live or ended (anyio's worker threads, which run auth,
    intake, the record's commit and the flagged frames' files, and which anyio retires after 10 s idle). The
    ``other`` row is the process's total (``/proc/PID/stat`` counts ended threads too) less the named roles, so
    a thread that ended between two readings still counts."""
    tick = os.sysconf("SC_CLK_TCK")
    totals = {role: [0, 0] for role in THREAD_ROLES}
    for pid in group_pids(pgid):
        try:
            tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        named = [0, 0]
        for tid in tids:
            role = _thread_role(pid, tid)
            if role == "other":
                continue
            try:
                fields = Path(f"/proc/{pid}/task/{tid}/stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            spent, kernel = int(fields[11]) + int(fields[12]), int(fields[12])
            totals[role][0] += spent
            totals[role][1] += kernel
            named[0] += spent
            named[1] += kernel
        try:
            process = _stat_fields(pid)  # after the threads: the total holds at least what they had spent
        except OSError:
            continue
        totals["other"][0] += int(process[11]) + int(process[12]) - named[0]
        totals["other"][1] += int(process[12]) - named[1]
    return {role: (all_ / tick, kernel / tick) for role, (all_, kernel) in totals.items()}


def per_frame_by_thread(before: dict, after: dict, frames: int) -> dict[str, dict[str, float]]:
    """``thread_cpu`` readings around a step -> ms of CPU a frame per role, all and in the kernel."""
    n = max(1, frames)
    return {
        role: {
            "ms": (after[role][0] - before[role][0]) * 1000.0 / n,
            "kernel_ms": (after[role][1] - before[role][1]) * 1000.0 / n,
        }
        for role in THREAD_ROLES
    }


def run_load(url: str, frames_dir: Path, rate: float, seconds: float) -> dict:
    """One open-loop step, in a separate process (the load generator must not share the service's GIL)."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.serve", "--loadgen", url, str(frames_dir), str(rate), str(seconds)],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(out.stdout)


class _Connection:
    """One keep-alive HTTP/1.1 connection on raw asyncio streams: a load generator that costs the shared
    CPU as little as possible (an HTTP client library costs several times more per request)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = (
            f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\nContent-Type: image/jpeg\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        self.writer.write(head)
        self.writer.write(body)
        await self.writer.drain()
        status_line = await self.reader.readline()
        length, close = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
            elif name.strip().lower() == "connection" and "close" in value.lower():
                close = True
        payload = await self.reader.readexactly(length)
        if close:
            self.writer.close()
            self.writer = None
        return int(status_line.split()[1]), payload


async def _loadgen(url: str, frames: list[bytes], rate: float, seconds: float) -> dict:
    from urllib.parse import urlsplit

    parts = urlsplit(url)
    n = max(1, int(rate * seconds))
    results: list[tuple[int, float, dict | None]] = []
    errors: list[str] = []
    idle: list[_Connection] = []

    async def one(i: int) -> None:
        conn = idle.pop() if idle else _Connection(parts.hostname, parts.port)
        path = f"/v1/inspections?camera_id=cam{i % 4}&line_id=bench"
        t0 = time.perf_counter()
        try:
            status, payload = await conn.post(path, frames[i % len(frames)])
        except (OSError, asyncio.IncompleteReadError, ValueError) as exc:
            results.append((0, (time.perf_counter() - t0) * 1000.0, None))
            errors.append(repr(exc)[:200])
            return
        ms = (time.perf_counter() - t0) * 1000.0
        idle.append(conn)
        timings = json.loads(payload)["timings_ms"] if status == 201 else None
        if status != 201 and len(errors) < 3:
            errors.append(payload[:300].decode("utf-8", "replace"))
        results.append((status, ms, timings))

    start = time.perf_counter()
    tasks = []
    for i in range(n):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(i)))
    await asyncio.gather(*tasks)
    wall = time.perf_counter() - start
    usage = resource.getrusage(resource.RUSAGE_SELF)
    loadgen_cpu_ms = (usage.ru_utime + usage.ru_stime) * 1000.0 / n
    accepted = [(ms, t) for status, ms, t in results if status == 201]
    lat = np.array([ms for ms, _ in accepted]) if accepted else np.array([np.inf])
    split = {}
    if accepted:
        for stage in ("queue", "decode", "preprocess", "infer", "storage", "total"):
            split[stage] = float(np.mean([t.get(stage, 0.0) for _, t in accepted]))
        split["http"] = float(np.mean([ms - t["total"] for ms, t in accepted]))
    statuses: dict[str, int] = {}
    for status, _, _ in results:
        statuses[str(status)] = statuses.get(str(status), 0) + 1
    return {
        "rate": rate,
        "sent": n,
        "accepted": len(accepted),
        "accepted_fps": len(accepted) / wall,
        "refused": n - len(accepted),
        "statuses": statuses,
        "p50_ms": float(np.percentile(lat, 50)),
        "p99_ms": float(np.percentile(lat, 99)),
        "split_ms": split,
        "errors": errors,
        "loadgen_cpu_ms_per_frame": loadgen_cpu_ms,
    }


def _passes(step: dict) -> bool:
    return step["p99_ms"] <= P99_BUDGET_MS and step["refused"] <= MAX_REFUSED * step["sent"]


def sweep(url: str, pid: int, frames_dir: Path, start_rate: float, seconds: float) -> list[dict]:
    """Step the offered rate up by 10 % and stop after two failing steps in a row (one can be a neighbour's
    spike); while no step has passed yet, a failing step sends the rate down by 30 % instead."""
    steps: list[dict] = []
    rate = start_rate
    while len(steps) < 16:
        cpu0, threads0 = cpu_seconds(pid), thread_cpu(pid)
        step = run_load(url, frames_dir, rate, seconds)
        step["service_cpu_ms_per_frame"] = (cpu_seconds(pid) - cpu0) * 1000.0 / max(1, step["accepted"])
        step["threads_cpu_ms_per_frame"] = per_frame_by_thread(threads0, thread_cpu(pid), step["accepted"])
        steps.append(step)
        print(
            f"  {rate:6.1f} fps offered: {step['accepted_fps']:6.1f} accepted, p50 {step['p50_ms']:6.1f} ms, "
            f"p99 {step['p99_ms']:7.1f} ms, refused {step['refused']}, service CPU "
            f"{step['service_cpu_ms_per_frame']:.1f} ms/frame",
            flush=True,
        )
        if not any(_passes(st) for st in steps):
            rate *= 0.7 if not _passes(step) else 1.10
            continue
        if len(steps) >= 2 and not _passes(steps[-1]) and not _passes(steps[-2]):
            break
        rate *= 1.10
    return steps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, help="an exported .onnx (default: the default recipe's network)")
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each load step")
    parser.add_argument(
        "--workers", type=int, nargs="+", default=[1], help="andon serve --workers values, each swept in turn"
    )
    parser.add_argument("--out", type=Path, help="write the results as JSON here")
    parser.add_argument("--loadgen", nargs=4, metavar=("URL", "FRAMES", "RATE", "SECONDS"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        url, folder, rate, seconds = args.loadgen
        frames = [p.read_bytes() for p in sorted(Path(folder).glob("*.jpg"))]
        print(json.dumps(asyncio.run(_loadgen(url, frames, float(rate), float(seconds)))))
        return

    work = Path(tempfile.mkdtemp(prefix="andon-bench-serve-"))
    try:
        print("rendering 10 synthetic 2448x2048 JPEG frames ...", flush=True)
        frames = synthetic_frames()
        frames_dir = work / "frames"
        frames_dir.mkdir()
        for i, data in enumerate(frames):
            (frames_dir / f"{i:02d}.jpg").write_bytes(data)
        model = args.model or default_model(work / "default.onnx", frames)
        print(f"model {model.name}; in-process limit ...", flush=True)
        limit = in_process_limit(model, frames, seconds=args.seconds)
        print(
            f"  in-process: {limit['fps']:.1f} frames/s ({limit['config']}; all: "
            f"{ {k: round(v, 1) for k, v in limit['all'].items()} })",
            flush=True,
        )
        results = []
        for workers in args.workers:
            port = free_port()
            proc = start_service(model, work / f"data-{workers}", port, workers)
            rss = RssSampler(proc.pid)
            rss.start()
            try:
                print(f"service --workers {workers}, open-loop load steps:", flush=True)
                start_rate = max(1.0, 0.5 * limit["fps"])
                steps = sweep(f"http://127.0.0.1:{port}", proc.pid, frames_dir, start_rate, args.seconds)
            finally:
                rss.stop.set()
                os.killpg(proc.pid, signal.SIGTERM)
                proc.wait(timeout=30)
            results.append(report(limit, steps, rss.peak_kb, workers))
        if args.out:
            args.out.write_text(json.dumps(results[0] if len(results) == 1 else results, indent=2))
    finally:
        shutil.rmtree(work, ignore_errors=True)


def report(limit: dict, steps: list[dict], rss_kb: int, workers: int = 1) -> dict:
    ok = [s for s in steps if _passes(s)]
    best = max(ok, key=lambda s: s["accepted_fps"]) if ok else None
    capacity = best["accepted_fps"] if best else 0.0
    result = {
        "cpu_cores": len(os.sched_getaffinity(0)),
        "workers": workers,
        "frame": f"{FRAME_HW[1]}x{FRAME_HW[0]} JPEG q90",
        "in_process_fps": limit["fps"],
        "in_process_config": limit["config"],
        "in_process_split_ms": limit["split_ms"],
        "capacity_fps": capacity,
        "ratio": capacity / limit["fps"],
        "rss_mb": rss_kb / 1024,
        "in_process_cpu_ms_per_frame": limit["cpu_ms_per_frame"],
        "at_capacity": best,
        "steps": steps,
    }
    print(f"\n| metric (andon serve --workers {workers}) | value |\n| --- | --- |")
    print(f"| in-process limit ({limit['config']}) | {limit['fps']:.1f} frames/s |")
    print(
        "| in-process time split (mean ms) | " + ", ".join(f"{k} {v:.1f}" for k, v in limit["split_ms"].items()) + " |"
    )
    print(
        f"| service capacity (accepted p99 <= {P99_BUDGET_MS:.0f} ms) | {capacity:.1f} frames/s "
        f"({result['ratio']:.2f}x the in-process limit) |"
    )
    if best:
        print(f"| latency at capacity | p50 {best['p50_ms']:.1f} ms, p99 {best['p99_ms']:.1f} ms |")
        split = ", ".join(f"{k} {v:.1f}" for k, v in best["split_ms"].items())
        print(f"| time split at capacity (mean ms) | {split} |")
    service_cpu = float(np.median([s["service_cpu_ms_per_frame"] for s in steps]))
    print(
        f"| CPU per frame: in-process / service / load generator | {limit['cpu_ms_per_frame']:.1f} / "
        f"{service_cpu:.1f} / {np.median([s['loadgen_cpu_ms_per_frame'] for s in steps]):.1f} ms "
        f"(in-process / service = {limit['cpu_ms_per_frame'] / service_cpu:.2f}) |"
    )
    if best and "threads_cpu_ms_per_frame" in best:
        by_thread = best["threads_cpu_ms_per_frame"].items()
        parts = ", ".join(f"{role} {v['ms']:.1f} (kernel {v['kernel_ms']:.1f})" for role, v in by_thread)
        print(f"| service CPU per frame by thread at capacity (ms) | {parts} |")
    print(f"| service peak RSS (all its processes) | {rss_kb / 1024:.0f} MB |")
    return result


if __name__ == "__main__":
    main()
