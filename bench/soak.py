"""Soak: ``andon serve`` at 70 % of its measured capacity, with 5 % malformed traffic, for half an hour.

    python -m bench.soak [--minutes 30] [--window 300] [--load 0.7] [--malformed 0.05] [--out FILE]

1. The service: ``andon serve`` in its own process (SQLite WAL ``synchronous=FULL``, local-disk image store,
   its defaults otherwise: 2 inference threads on 2 cores, pass sample rate 0.01, so flagged frames and 1 %
   of passed ones are stored), with the tests' tiny andon model (tests/tiny_onnx.py) at a 224x224 input as
   bench/intake.py uses it, so that the HTTP stack, the decode, the database and the store are what cost.
   As in a deployment, each camera has its own camera key (``andon keys create --role camera``) and posts
   with it (``Authorization: Bearer``) and an Idempotency-Key; the server's TMPDIR is a folder of the run.
2. Frames: 20 1280x1024 JPEGs (q90, 65-70 KB) from 4 cameras: 18 pass, 1 review, 1 reject; each request's
   bytes are unique (a JPEG comment with its Idempotency-Key), as real frames are.
3. Capacity: a short closed loop (bench.common.closed_loop, 4 threads, one keep-alive connection each, good
   frames back to back) after a warm-up; capacity = accepted frames/s.
4. Soak: a separate open-loop load generator process (raw HTTP/1.1 on asyncio) sends at ``--load`` x
   capacity, requests leaving at fixed intervals whether or not earlier answers came back (latency counts
   from the scheduled send time). ``--malformed`` of them are, in turn: truncated JPEGs, headers-only JPEGs
   (no scan data), random bytes, a JPEG under a wrong content type, 97 KB PNG bombs (10000x10000), bodies
   over the cap (declared by Content-Length, or chunked), bad multipart (no boundary, cut off, no file).
5. Every ``--window`` seconds (default 300): the server's VmRSS, open fds and threads (/proc/PID), p50 / p99 of good
   frames answered in the window, counts per status (good frames, and malformed per kind), 5xx, database
   rows and stored files.
6. At the end: RSS slope (MB per hour, least squares over the windows; also without the first window, the
   warm-up), fd growth, p99 per window, the 5xx total (must be 0), every 2xx answer in the database (a
   flagged one with its image file), no temp file in the store or the server's TMPDIR (while it runs and
   after SIGTERM), no orphan file, ``PRAGMA quick_check``. A markdown table on stdout; JSON under runs/.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import http.client
import json
import os
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from bench.common import closed_loop, cpu_model, free_port, wait_ready
from bench.intake import png_bomb

ROOT = Path(__file__).resolve().parents[1]
CAMERAS = 4
FRAME_HW = (1024, 1280)
#: per 20 frames: index 0 is rejected, index 1 goes to review, the rest pass (10 % flagged)
POOL = 20
MALFORMED_KINDS = (
    "truncated_jpeg",
    "headers_only_jpeg",
    "random_bytes",
    "wrong_content_type",
    "png_bomb",
    "oversized_body",
    "bad_multipart",
)
BODY_CAP = 25 * 1024 * 1024  # the service's default max_body_bytes
REQUEST_TIMEOUT_S = 60.0
#: an idle connection is not reused after this long (uvicorn closes keep-alive connections idle for 5 s, and
#: a request sent as it does so gets no answer: a client-side race, not the service's)
KEEPALIVE_S = 4.0


# ---- frames, model, service --------------------------------------------------------------------------


def camera_frames(n: int = POOL) -> list[bytes]:
    """1280x1024 JPEGs of a bright gradient: the tiny model passes them; darker ones go to review / reject."""
    import cv2

    rng = np.random.default_rng(0)
    base = np.add.outer(np.linspace(180, 250, FRAME_HW[0]), np.zeros(FRAME_HW[1]))
    out = []
    for i in range(n):
        scale = 0.3 if i == 0 else 0.5 if i == 1 else 1.0
        noise = rng.integers(0, 5, (*FRAME_HW, 3))
        img = (base[:, :, None] * scale + noise).clip(0, 255).astype(np.uint8)
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 90])
        assert ok
        out.append(buf.tobytes())
    return out


def unique(jpeg: bytes, tag: bytes) -> bytes:
    """The frame with a JPEG comment segment holding ``tag`` after its SOI: the same picture, other bytes, as
    every real frame is (the pass sample is chosen by the body's sha256, so repeated bytes would skew it)."""
    return jpeg[:2] + b"\xff\xfe" + (2 + len(tag)).to_bytes(2, "big") + tag + jpeg[2:]


def tiny_model(path: Path) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    from tiny_onnx import tiny_card, write_tiny_model

    return write_tiny_model(path, tiny_card(size=224))


def _clean_env(tmpdir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ANDON_")}
    env["TMPDIR"] = str(tmpdir)
    return env


def camera_keys(data_dir: Path, env: dict[str, str], cameras: list[str] | None = None) -> dict[str, str]:
    """camera id -> a camera key, made as an installer would (``andon keys create``); cameras cam0.. by default."""
    keys = {}
    for camera in cameras if cameras is not None else [f"cam{c}" for c in range(CAMERAS)]:
        out = subprocess.run(
            [sys.executable, "-m", "andon", "keys", "create", "--role", "camera", "--camera-id", camera]
            + ["--data-dir", str(data_dir)],
            capture_output=True,
            text=True,
            check=True,
            env=env,
        ).stdout
        keys[camera] = next(w for w in out.split() if w.startswith("andon_"))
    return keys


def start_service(model: Path, data_dir: Path, port: int, env: dict[str, str], log: Path) -> subprocess.Popen:
    proc = subprocess.Popen(
        [sys.executable, "-m", "andon", "serve", "--model", str(model), "--data-dir", str(data_dir)]
        + ["--port", str(port)],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=open(log, "w"),  # noqa: SIM115 - the child holds it
        start_new_session=True,
    )
    wait_ready(proc, port, log)
    return proc


# ---- what the server process holds -------------------------------------------------------------------


def proc_state(pid: int) -> dict:
    status = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        status[name] = value.split()
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    links = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            links.append(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:
            pass  # closed meanwhile
    return {
        "rss_mb": round(int(status["VmRSS"][0]) / 1024, 1),
        "hwm_mb": round(int(status["VmHWM"][0]) / 1024, 1),
        "fds": len(links),
        "fds_sockets": sum(link.startswith("socket:") for link in links),
        "db_connections": sum(link.endswith("andon.db") for link in links),
        "fds_other": dict(Counter(k for k in links if not k.startswith("socket:")).most_common(30)),
        "threads": int(status["Threads"][0]),
        "cpu_s": round((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), 1),
    }


def _is_temp(name: str) -> bool:
    return (name.startswith(".") and name.endswith(".tmp")) or name == ".healthcheck"


def store_state(data_dir: Path, tmpdir: Path) -> dict:
    """Database rows and stored files (a reader beside the running service: SQLite WAL allows it)."""
    files = temp = 0
    for _root, _dirs, names in os.walk(data_dir / "images"):
        for name in names:
            if _is_temp(name):
                temp += 1
            elif not name.startswith("."):
                files += 1
    rows = stored = flagged = 0
    db = data_dir / "andon.db"
    if db.exists():
        con = sqlite3.connect(db, timeout=30)
        try:
            rows, stored, flagged = con.execute(
                "SELECT count(*), count(image_key), coalesce(sum(decision != 'pass'), 0) FROM inspections"
            ).fetchone()
        finally:
            con.close()
    tmp_files = [os.path.join(r, n) for r, _d, names in os.walk(tmpdir) for n in names]
    return {
        "db_rows": rows,
        "db_images": stored,
        "db_flagged": flagged,
        "stored_files": files,
        "store_temp_files": temp,
        "tmpdir_files": len(tmp_files),
        "tmpdir_names": sorted(os.path.relpath(f, tmpdir) for f in tmp_files)[:100],
    }


def final_check(data_dir: Path, acks: list[dict]) -> dict:
    """Every 2xx answer in the database (a flagged one with its image), orphans, quick_check."""
    images = data_dir / "images"
    con = sqlite3.connect(data_dir / "andon.db", timeout=30)
    try:
        rows = {
            r[0]: r[1:]
            for r in con.execute("SELECT id, decision, image_key, heatmap_key, idempotency_key FROM inspections")
        }
        check = [r[0] for r in con.execute("PRAGMA quick_check")]
    finally:
        con.close()
    missing, wrong, flagged_no_image, image_missing = [], [], [], []
    for ack in acks:
        row = rows.get(ack["id"])
        if row is None:
            missing.append(ack["id"])
            continue
        decision, image_key, heat_key, key = row
        if decision != ack["decision"] or (ack.get("key") and key != ack["key"]):
            wrong.append(ack["id"])
        if decision != "pass" and not image_key:
            flagged_no_image.append(ack["id"])
        for k in (image_key, heat_key):
            if k and not (images / k).is_file():
                image_missing.append(f"{ack['id']}: {k}")
    named = {k for _d, image, heat, _k in rows.values() for k in (image, heat) if k}
    orphans, temp = [], []
    for path in images.rglob("*") if images.is_dir() else ():
        if path.is_file():
            key = path.relative_to(images).as_posix()
            if _is_temp(path.name):
                temp.append(key)
            elif not path.name.startswith(".") and key not in named:
                orphans.append(key)
    acked = {a["id"] for a in acks}
    flagged = [image for d, image, _h, _k in rows.values() if d != "pass"]
    passed = [image for d, image, _h, _k in rows.values() if d == "pass"]
    return {
        "stored_flagged": [sum(1 for i in flagged if i), len(flagged)],
        "stored_passed": [sum(1 for i in passed if i), len(passed)],
        "acks_2xx": len(acks),
        "db_rows": len(rows),
        "acks_missing_in_db": missing[:20],
        "acks_missing_count": len(missing),
        "acks_other_record": wrong[:20],
        "flagged_without_image": flagged_no_image[:20],
        "image_files_missing": image_missing[:20],
        "rows_nobody_was_answered_for": len(set(rows) - acked),
        "orphan_files": orphans[:20],
        "orphan_count": len(orphans),
        "store_temp_files": temp,
        "quick_check": check,
    }


# ---- capacity: a short closed loop ---------------------------------------------------------------------


def capacity(url: str, frames: list[bytes], keys: dict[str, str], seconds: float) -> tuple[dict, list[dict]]:
    parts = urlsplit(url)
    local = threading.local()
    statuses: Counter = Counter()
    acks: list[dict] = []
    lock = threading.Lock()

    def work(i: int) -> None:
        conn = getattr(local, "conn", None)
        if conn is None:
            conn = local.conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=REQUEST_TIMEOUT_S)
        camera = f"cam{i % CAMERAS}"
        key = uuid.uuid4().hex
        headers = {"Content-Type": "image/jpeg", "Authorization": f"Bearer {keys[camera]}", "Idempotency-Key": key}
        try:
            body = unique(frames[i % POOL], key.encode())
            conn.request("POST", f"/v1/inspections?camera_id={camera}&line_id=capacity", body, headers)
            r = conn.getresponse()
            payload = r.read()
            status = r.status
        except (OSError, http.client.HTTPException):
            conn.close()
            local.conn = None
            status, payload = 0, b""
        with lock:
            statuses[status] += 1
            if 200 <= status < 300:
                body = json.loads(payload)
                acks.append({"id": body["id"], "decision": body["decision"], "key": key})

    closed_loop(work, CAMERAS, 3.0)  # warm-up
    warm = sum(statuses.values())
    statuses.clear()
    sample = closed_loop(work, CAMERAS, seconds)
    accepted = sum(n for s, n in statuses.items() if 200 <= s < 300)
    lat = np.asarray(sample.latencies_ms)
    return {
        "workers": CAMERAS,
        "seconds": round(sample.wall_s, 1),
        "warmup_frames": warm,
        "frames": sample.frames,
        "statuses": {str(k): v for k, v in sorted(statuses.items())},
        "fps": round(accepted / sample.wall_s, 1),
        "p50_ms": round(float(np.percentile(lat, 50)), 1),
        "p99_ms": round(float(np.percentile(lat, 99)), 1),
    }, acks


# ---- the open-loop load generator (its own process) -----------------------------------------------------


class _Conn:
    """One HTTP/1.1 keep-alive connection on raw asyncio streams (cheap on the shared CPU)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.usable = True
        self.idle_since = 0.0

    def close(self) -> None:
        self.usable = False
        if self.writer is not None:
            self.writer.close()
            self.writer = None

    async def _response(self) -> tuple[int, bytes]:
        assert self.reader is not None
        status_line = await self.reader.readline()
        if not status_line:
            raise ConnectionResetError("closed before an answer")
        length, chunked = 0, False
        while True:
            line = await self.reader.readline()
            if line in (b"\r\n", b""):
                break
            name, _, value = line.decode("latin-1").partition(":")
            name = name.strip().lower()
            if name == "content-length":
                length = int(value)
            elif name == "connection" and "close" in value.lower():
                self.usable = False
            elif name == "transfer-encoding" and "chunked" in value.lower():
                chunked = True
        if chunked:
            payload = b""
            while True:
                size = int((await self.reader.readline()).split(b";")[0], 16)
                payload += await self.reader.readexactly(size + 2)
                if size == 0:
                    break
        else:
            payload = await self.reader.readexactly(length)
        return int(status_line.split()[1]), payload

    async def post(self, path: str, headers: dict[str, str], body: bytes | None, stream=None) -> tuple[int, bytes]:
        """POST ``body``; or, with ``stream`` (an iterable of byte chunks), send those while watching for an
        early answer (a 413 before the body is read) and stop sending when it comes."""
        if self.writer is None:
            self.reader, self.writer = await asyncio.open_connection(self.host, self.port)
        head = f"POST {path} HTTP/1.1\r\nHost: {self.host}\r\n"
        if body is not None:
            headers = {**headers, "Content-Length": str(len(body))}
        head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
        self.writer.write(head.encode())
        if stream is None:
            self.writer.write(body or b"")
            await self.writer.drain()
            answer = await self._response()
        else:
            reading = asyncio.ensure_future(self._response())
            await asyncio.wait([reading], timeout=0.2)  # a cap declared by Content-Length is answered at once
            try:
                for chunk in stream:
                    if reading.done():
                        break
                    self.writer.write(chunk)
                    await self.writer.drain()
            except OSError:
                pass  # the server closed its end after answering; the answer is what counts
            answer = await reading
        if not self.usable:
            self.close()
        return answer


def _headers_only(jpeg: bytes) -> bytes:
    """A JPEG's headers up to and including its start-of-scan header, then end-of-image: no scan data."""
    sos = jpeg.index(b"\xff\xda")
    length = int.from_bytes(jpeg[sos + 2 : sos + 4], "big")
    return jpeg[: sos + 2 + length] + b"\xff\xd9"


def _multipart(boundary: str, parts: list[tuple[str, str | None, bytes]]) -> bytes:
    out = b""
    for name, filename, data in parts:
        disp = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        out += f"--{boundary}\r\nContent-Disposition: {disp}\r\n".encode()
        if filename:
            out += b"Content-Type: image/jpeg\r\n"
        out += b"\r\n" + data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


class Malformed:
    """The n-th malformed request of a kind: (headers, body, stream); variants alternate within a kind."""

    def __init__(self, frames: list[bytes], seed: int) -> None:
        self.rng = random.Random(seed)
        self.frames = frames
        self.bomb = png_bomb(10_000, 10_000)
        self.filler = bytes(256 * 1024)
        self.seen: Counter = Counter()

    def make(self, kind: str) -> tuple[str, dict[str, str], bytes | None, object]:
        n = self.seen[kind]
        self.seen[kind] += 1
        frame = self.frames[self.rng.randrange(len(self.frames))]
        jpeg = {"Content-Type": "image/jpeg"}
        if kind == "truncated_jpeg":
            return kind, jpeg, frame[: self.rng.randrange(200, len(frame) - 2)], None
        if kind == "headers_only_jpeg":
            return kind, jpeg, _headers_only(frame), None
        if kind == "random_bytes":
            return kind, jpeg, self.rng.randbytes(self.rng.randrange(1, 200_000)), None
        if kind == "wrong_content_type":
            ctype = ("text/plain", "application/json", "video/mp4")[n % 3]
            return kind, {"Content-Type": ctype}, frame, None
        if kind == "png_bomb":
            return kind, {"Content-Type": "image/png"}, self.bomb, None
        if kind == "oversized_body":
            total = BODY_CAP + len(self.filler)
            chunks = [self.filler] * (total // len(self.filler))
            if n % 2 == 0:  # declared: the cap says no before the body is read
                return f"{kind}/declared", {**jpeg, "Content-Length": str(total)}, None, iter(chunks)
            framed = (f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
            tail = iter([b"0\r\n\r\n"])
            stream = (c for part in (framed, tail) for c in part)
            return f"{kind}/chunked", {**jpeg, "Transfer-Encoding": "chunked"}, None, stream
        if kind == "bad_multipart":
            variant = n % 4
            if variant == 0:  # no boundary parameter
                return f"{kind}/no_boundary", {"Content-Type": "multipart/form-data"}, frame, None
            boundary = uuid.uuid4().hex
            ctype = {"Content-Type": f"multipart/form-data; boundary={boundary}"}
            whole = _multipart(boundary, [("camera_id", None, b"x"), ("frame", "f.jpg", frame)])
            if variant == 1:  # cut off inside the file part
                return f"{kind}/cut_off", ctype, whole[: len(whole) // 2], None
            if variant == 2:  # fields but no file
                return f"{kind}/no_file", ctype, _multipart(boundary, [("line_id", None, b"L1")]), None
            return f"{kind}/garbage", ctype, self.rng.randbytes(4096), None
        raise ValueError(kind)


def _window() -> dict:
    return {
        "sent": 0,
        "good": Counter(),
        "good_ms": [],
        "server_ms": [],
        "malformed": {},
        "errors": [],
        "max_lag_ms": 0.0,
    }


def _summary(index: int, w: dict, t0: float, t1: float) -> dict:
    lat = np.asarray(w["good_ms"]) if w["good_ms"] else np.asarray([np.nan])
    statuses: Counter = Counter(w["good"])
    for counts in w["malformed"].values():
        statuses.update(counts)
    return {
        "window": index,
        "t0_s": round(t0, 1),
        "t1_s": round(t1, 1),
        "sent": w["sent"],
        "good_statuses": {str(k): v for k, v in sorted(w["good"].items(), key=lambda kv: str(kv[0]))},
        "good_2xx": sum(v for k, v in w["good"].items() if isinstance(k, int) and 200 <= k < 300),
        "good_p50_ms": round(float(np.percentile(lat, 50)), 1),
        "good_p99_ms": round(float(np.percentile(lat, 99)), 1),
        "malformed": {
            k: {str(s): n for s, n in sorted(v.items(), key=lambda kv: str(kv[0]))} for k, v in w["malformed"].items()
        },
        "statuses": {str(k): v for k, v in sorted(statuses.items(), key=lambda kv: str(kv[0]))},
        "5xx": sum(v for k, v in statuses.items() if isinstance(k, int) and k >= 500),
        "no_answer": sum(v for k, v in statuses.items() if not isinstance(k, int) or k == 0),
        "errors": w["errors"][:5],
        "max_send_lag_ms": round(w["max_lag_ms"], 1),
        # the server's own per-frame timings of the good frames (p99 per stage): where a slow window's time went
        "server_p99_ms": {
            stage: round(float(np.percentile([t.get(stage, 0.0) for t in w["server_ms"]], 99)), 1)
            for stage in ("queue", "decode", "preprocess", "infer", "storage", "total")
        }
        if w["server_ms"]
        else {},
    }


async def _loadgen(cfg: dict) -> None:
    parts = urlsplit(cfg["url"])
    frames = [Path(p).read_bytes() for p in cfg["frames"]]
    keys: dict[str, str] = cfg["keys"]
    rate, duration, window_s = cfg["rate"], cfg["seconds"], cfg["window"]
    rng = random.Random(cfg["seed"])
    malformed = Malformed(frames, cfg["seed"] + 1)
    acks: list[dict] = []
    idle: list[_Conn] = []
    windows = max(1, round(duration / window_s))
    current = _window()
    n = int(rate * duration)
    start = time.perf_counter()
    m_index = 0

    async def one(i: int, due: float) -> None:
        nonlocal m_index
        camera = f"cam{i % CAMERAS}"
        auth = {"Authorization": f"Bearer {keys[camera]}"}
        kind, stream = "good", None
        if rng.random() < cfg["malformed"]:
            kind, headers, body, stream = malformed.make(MALFORMED_KINDS[m_index % len(MALFORMED_KINDS)])
            m_index += 1
            headers = {**headers, **auth}
        else:
            key = uuid.uuid4().hex
            body = unique(frames[i % POOL], key.encode())
            headers = {"Content-Type": "image/jpeg", "Idempotency-Key": key, **auth}
        conn = None
        while idle and stream is None and conn is None:
            conn = idle.pop()
            if time.perf_counter() - conn.idle_since > KEEPALIVE_S:  # the server may be closing it just now
                conn.close()
                conn = None
        reused = conn is not None
        conn = conn or _Conn(parts.hostname, parts.port)
        if stream is not None:
            conn.usable = False  # never reused after a body the server may stop reading
        try:
            status, payload = await asyncio.wait_for(
                conn.post(f"/v1/inspections?camera_id={camera}&line_id=L1", headers, body, stream), REQUEST_TIMEOUT_S
            )
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            conn.close()
            status, payload = ("timeout" if isinstance(exc, asyncio.TimeoutError) else 0), b""
            current["errors"].append(f"{kind}: {exc!r} ({'a reused' if reused else 'a new'} connection)"[:200])
        ms = (time.perf_counter() - due) * 1000.0
        if conn.usable:
            conn.idle_since = time.perf_counter()
            idle.append(conn)
        w = current
        if kind == "good":
            w["good"][status] += 1
            if isinstance(status, int) and 200 <= status < 300:
                w["good_ms"].append(ms)
        else:
            w["malformed"].setdefault(kind, Counter())[status] += 1
        if isinstance(status, int) and status >= 500 and len(w["errors"]) < 20:
            w["errors"].append(f"{kind} {status}: {payload[:200].decode('utf-8', 'replace')}")
        if isinstance(status, int) and 200 <= status < 300:
            out = json.loads(payload)
            if kind == "good":
                w["server_ms"].append(out.get("timings_ms", {}))
            acks.append(
                {"id": out["id"], "decision": out["decision"], "key": headers.get("Idempotency-Key"), "kind": kind}
            )

    async def ticker() -> None:
        nonlocal current
        for k in range(1, windows):
            await asyncio.sleep(max(0.0, start + k * window_s - time.perf_counter()))
            done, current = current, _window()
            print(json.dumps(_summary(k - 1, done, (k - 1) * window_s, time.perf_counter() - start)), flush=True)

    tick = asyncio.create_task(ticker())
    tasks: set[asyncio.Task] = set()
    for i in range(n):
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        current["sent"] += 1
        current["max_lag_ms"] = max(current["max_lag_ms"], -delay * 1000.0)
        task = asyncio.create_task(one(i, due))
        tasks.add(task)
        task.add_done_callback(tasks.discard)
    await tick
    while tasks:
        await asyncio.gather(*list(tasks))
    for conn in idle:
        conn.close()
    Path(cfg["acks"]).write_text(json.dumps(acks))
    print(json.dumps(_summary(windows - 1, current, (windows - 1) * window_s, time.perf_counter() - start)), flush=True)


# ---- the run -----------------------------------------------------------------------------------------------


def _slope(t_h: list[float], mb: list[float]) -> float | None:
    if len(t_h) < 2:
        return None
    return round(float(np.polyfit(np.asarray(t_h), np.asarray(mb), 1)[0]), 1)


def run(args: argparse.Namespace) -> dict:
    work = Path(tempfile.mkdtemp(prefix="andon-bench-soak-"))
    data_dir, tmpdir = work / "data", work / "tmp"
    tmpdir.mkdir()
    env = _clean_env(tmpdir)
    try:
        frames = camera_frames()
        frame_paths = []
        for i, data in enumerate(frames):
            frame_paths.append(work / f"frame{i:02d}.jpg")
            frame_paths[-1].write_bytes(data)
        model = tiny_model(work / "tiny224.onnx")
        (work / "cli-tmp").mkdir()
        keys = camera_keys(data_dir, _clean_env(work / "cli-tmp"))  # the server's TMPDIR holds only its own
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        proc = start_service(model, data_dir, port, env, work / "serve.log")
        try:
            cap, acks = capacity(url, frames, keys, args.capacity_seconds)
            print(
                f"capacity (closed loop, {cap['workers']} connections, {cap['seconds']} s): {cap['fps']} frames/s, "
                f"p50 {cap['p50_ms']} ms, p99 {cap['p99_ms']} ms, statuses {cap['statuses']}",
                flush=True,
            )
            if cap["fps"] <= 0:
                raise SystemExit("no frame was accepted in the closed loop")
            rate = round(args.load * cap["fps"], 2)
            seconds = args.minutes * 60.0
            cfg = {
                "url": url,
                "frames": [str(p) for p in frame_paths],
                "keys": keys,
                "rate": rate,
                "seconds": seconds,
                "window": args.window,
                "malformed": args.malformed,
                "seed": args.seed,
                "acks": str(work / "acks.json"),
            }
            (work / "loadgen.json").write_text(json.dumps(cfg))
            print(
                f"soak: {rate} requests/s ({args.load:.0%} of capacity, {args.malformed:.0%} malformed) for "
                f"{args.minutes:g} min, a window every {args.window:g} s",
                flush=True,
            )
            time.sleep(1.0)  # the closed loop's connections close
            baseline = {"t_s": 0.0, **proc_state(proc.pid), **store_state(data_dir, tmpdir)}
            gen = subprocess.Popen(
                [sys.executable, "-m", "bench.soak", "--loadgen", str(work / "loadgen.json")],
                stdout=subprocess.PIPE,
                text=True,
                cwd=ROOT,
            )
            windows = []
            assert gen.stdout is not None
            cpu0 = baseline["cpu_s"]
            for line in gen.stdout:
                w = json.loads(line)
                w.update(proc_state(proc.pid))
                w.update(store_state(data_dir, tmpdir))
                w["server_cpu_ms_per_request"] = round((w["cpu_s"] - cpu0) * 1000.0 / max(1, w["sent"]), 2)
                w["load_avg_1m"] = round(os.getloadavg()[0], 2)
                cpu0 = w["cpu_s"]
                windows.append(w)
                print(
                    f"  window {w['window']} ({w['t1_s'] / 60:.1f} min): sent {w['sent']}, good p50 "
                    f"{w['good_p50_ms']} / p99 {w['good_p99_ms']} ms, statuses {w['statuses']}, 5xx {w['5xx']}, "
                    f"RSS {w['rss_mb']} MB, fds {w['fds']}, threads {w['threads']}, rows {w['db_rows']}, "
                    f"files {w['stored_files']}, server CPU {w['server_cpu_ms_per_request']} ms/request, "
                    f"load {w['load_avg_1m']}; server p99 ms {w['server_p99_ms']}",
                    flush=True,
                )
            if gen.wait() != 0:
                raise SystemExit("the load generator failed")
            acks += json.loads((work / "acks.json").read_text())
            time.sleep(1.0)  # the answers' follow-up jobs
            running = store_state(data_dir, tmpdir)
            end_state = proc_state(proc.pid)
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            exit_code = proc.wait(timeout=60)
        check = final_check(data_dir, acks)
        after = store_state(data_dir, tmpdir)
        log_tail = (work / "serve.log").read_text()[-4000:]
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)

    t_h = [w["t1_s"] / 3600.0 for w in windows]
    rss = [w["rss_mb"] for w in windows]
    statuses: Counter = Counter()
    malformed: dict[str, Counter] = {}
    for w in windows:
        statuses.update(w["statuses"])
        for kind, counts in w["malformed"].items():
            malformed.setdefault(kind, Counter()).update(counts)
    fivexx = sum(w["5xx"] for w in windows)
    pre = set(baseline["tmpdir_names"])
    return {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": {"cpu": cpu_model(), "cores": len(os.sched_getaffinity(0)), "load_avg": os.getloadavg()},
        "minutes": args.minutes,
        "window_s": args.window,
        "load": args.load,
        "malformed_fraction": args.malformed,
        "frame": f"{FRAME_HW[1]}x{FRAME_HW[0]} JPEG q90, {len(frames[2]):,} B",
        "capacity": cap,
        "rate": rate,
        "baseline": baseline,
        "windows": windows,
        "summary": {
            "rss_slope_mb_per_h": _slope(t_h, rss),
            "rss_slope_after_first_window_mb_per_h": _slope(t_h[1:], rss[1:]) if len(t_h) > 2 else None,
            "rss_first_last_mb": [rss[0], rss[-1]] if rss else None,
            "rss_peak_mb": end_state["hwm_mb"],
            # open fds and threads idle (no client connection) before the soak and after it, once drained
            "fds_before_after": [baseline["fds"], end_state["fds"]],
            "fd_growth": end_state["fds"] - baseline["fds"],
            "socket_fds_before_after": [baseline["fds_sockets"], end_state["fds_sockets"]],
            "fds_under_load_first_last_window": [windows[0]["fds"], windows[-2]["fds"]] if len(windows) > 1 else None,
            "db_connections_before_after": [baseline["db_connections"], end_state["db_connections"]],
            "threads_before_after": [baseline["threads"], end_state["threads"]],
            "fds_other_after": end_state["fds_other"],
            "p99_per_window_ms": [w["good_p99_ms"] for w in windows],
            "statuses": {k: v for k, v in sorted(statuses.items())},
            "malformed": {k: dict(sorted(v.items())) for k, v in sorted(malformed.items())},
            "5xx": fivexx,
            "5xx_by_status": {k: v for k, v in sorted(statuses.items()) if k.isdigit() and int(k) >= 500},
            "5xx_answers": sorted({e.split(": ", 1)[1] for w in windows for e in w["errors"] if " 5" in e[:40]})[:10],
            "no_answer": sum(w["no_answer"] for w in windows),
            # in the server's TMPDIR, files there before the soak (onnxruntime's import writes .ses) are not counted
            "temp_files_running": running["store_temp_files"] + len(set(running["tmpdir_names"]) - pre),
            "temp_files_after_sigterm": after["store_temp_files"] + len(set(after["tmpdir_names"]) - pre),
            "tmpdir_before_soak": sorted(pre),
            "tmpdir_names_after_sigterm": after["tmpdir_names"],
            "server_exit_code": exit_code,
            **check,
        },
        "server_log_tail": log_tail,
    }


def report(result: dict) -> str:
    s = result["summary"]
    lines = [
        f"Capacity (closed loop, {result['capacity']['workers']} connections): {result['capacity']['fps']} frames/s; "
        f"soak at {result['rate']} requests/s ({result['load']:.0%}), {result['malformed_fraction']:.0%} malformed, "
        f"{result['minutes']:g} min.",
        "",
        "| window | end (min) | sent | good 2xx | good p50 ms | good p99 ms | other statuses | 5xx | RSS MB "
        "| fds (sockets) | threads | DB rows | stored files | server CPU ms/request | load avg |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for w in result["windows"]:
        other = ", ".join(f"{k}: {v}" for k, v in w["statuses"].items() if not k.startswith("2"))
        lines.append(
            f"| {w['window']} | {w['t1_s'] / 60:.1f} | {w['sent']} | {w['good_2xx']} | {w['good_p50_ms']} | "
            f"{w['good_p99_ms']} | {other} | {w['5xx']} | {w['rss_mb']} | {w['fds']} ({w['fds_sockets']}) | "
            f"{w['threads']} | "
            f"{w['db_rows']} | {w['stored_files']} | {w['server_cpu_ms_per_request']} | {w['load_avg_1m']} |"
        )
    by5 = f"({', '.join(f'{k}: {v}' for k, v in s['5xx_by_status'].items())})" if s["5xx_by_status"] else ""
    mal = "; ".join(f"{k} {dict(v)}" for k, v in s["malformed"].items())
    lines += [
        "",
        "| check | value |",
        "| --- | --- |",
        f"| RSS slope (least squares over the windows) | {s['rss_slope_mb_per_h']} MB/h "
        f"(without the first window: {s['rss_slope_after_first_window_mb_per_h']} MB/h); "
        f"{s['rss_first_last_mb'][0]} -> {s['rss_first_last_mb'][1]} MB, peak {s['rss_peak_mb']} MB |",
        f"| open fds, idle before -> after the soak | {' -> '.join(map(str, s['fds_before_after']))} "
        f"({s['fd_growth']:+d}; sockets {' -> '.join(map(str, s['socket_fds_before_after']))}, SQLite connections "
        f"{' -> '.join(map(str, s['db_connections_before_after']))}); threads "
        f"{' -> '.join(map(str, s['threads_before_after']))}; under load, first -> last full window: "
        f"{' -> '.join(map(str, s['fds_under_load_first_last_window'] or []))} |",
        f"| good-frame p99 per window | {', '.join(f'{p:g}' for p in s['p99_per_window_ms'])} ms |",
        f"| 5xx | {' '.join(str(x) for x in (s['5xx'], by5, '; '.join(s['5xx_answers'])) if x != '')} |",
        f"| no answer (reset / timeout) | {s['no_answer']} |",
        f"| 2xx answers in the database | {s['acks_2xx'] - s['acks_missing_count']} of {s['acks_2xx']} "
        f"(other record: {len(s['acks_other_record'])}; flagged without image: {len(s['flagged_without_image'])}; "
        f"image files missing: {len(s['image_files_missing'])}; rows nobody was answered for: "
        f"{s['rows_nobody_was_answered_for']}) |",
        f"| images stored: flagged / passed records | {s['stored_flagged'][0]} of {s['stored_flagged'][1]} / "
        f"{s['stored_passed'][0]} of {s['stored_passed'][1]} (pass sample rate 0.01) |",
        f"| temp files left (running / after SIGTERM) | {s['temp_files_running']} / {s['temp_files_after_sigterm']} "
        f"(in the store and the server's TMPDIR; there before the soak: {', '.join(s['tmpdir_before_soak']) or '-'}) |",
        f"| orphan files; quick_check | {s['orphan_count']}; {', '.join(s['quick_check'])} |",
        f"| malformed requests by kind: statuses | {mal} |",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--window", type=float, default=300.0, help="seconds per recorded window")
    parser.add_argument("--load", type=float, default=0.7, help="offered rate as a fraction of measured capacity")
    parser.add_argument("--malformed", type=float, default=0.05, help="fraction of requests that are malformed")
    parser.add_argument("--capacity-seconds", type=float, default=20.0, help="length of the closed loop")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="JSON result (default runs/soak-<UTC time>.json)")
    parser.add_argument("--keep", action="store_true", help="keep the work folder (data, logs)")
    parser.add_argument("--loadgen", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.loadgen:
        asyncio.run(_loadgen(json.loads(args.loadgen.read_text())))
        return
    result = run(args)
    table = report(result)
    print("\n" + table)
    out = args.out or ROOT / "runs" / f"soak-{dt.datetime.now(dt.UTC):%Y%m%d-%H%M%S}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2, default=str))
    print(f"\nwrote {out}")
    s = result["summary"]
    if s["5xx"] or s["acks_missing_count"] or s["temp_files_after_sigterm"] or s["flagged_without_image"]:
        sys.exit(1)


if __name__ == "__main__":
    main()
