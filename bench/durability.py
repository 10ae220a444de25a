"""Durability under crashes: kill -9 loops, power cuts and SIGTERM under load (docs/reliability.md).

Three machines, each used by a fast CI test (``tests/test_durability_*.py``) and, at length, by this bench:

* ``kill_loop``: ``andon serve`` as a real process (SQLite + local disk, a tiny model), frames posted from
  client threads, SIGKILL at random moments (during start-up too), restart, repeat; then every 2xx answer must
  be in the database with its image, the image's sha256 the posted bytes', no temp file and no orphan left
  after start-up, and ``PRAGMA integrity_check`` ok. The server processes are forked from a zygote that has
  already imported the heavy libraries (FastAPI, SQLAlchemy, onnx, OpenCV) and then run ``andon serve``'s
  own code (``andon.cli.main(["serve", ...])``): a restart costs about a second instead of five, which is
  what lets 50 kills fit in a CI minute.
* ``PowerCut`` / ``power_rounds``: a storage double that remembers what was fsynced, in the service's own
  process: a SQLite VFS shim (ctypes over the libsqlite3 Python's sqlite3 uses; it forwards to the real unix
  VFS and records each file's writes, syncs, truncations and deletes) and a hook on ``os.fsync`` (the image
  store's files and folders). At a random I/O operation the "power goes": the disk image is what was synced
  plus, at random, some of what was not (a prefix of each file's unsynced writes, an unsynced folder
  listing); the service restarts on that image and every answer acknowledged before the cut must be there.
* ``sigterm_rounds``: SIGTERM while frames are in flight; in-flight requests must finish and every 2xx be
  durable; no record may exist that no client was answered for.

    python -m bench.durability kill --kills 200
    python -m bench.durability power --rounds 40
    python -m bench.durability sigterm --rounds 10
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import hashlib
import json
import os
import random
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from bench.common import free_port

REPO = Path(__file__).resolve().parents[1]

# ---------------------------------------------------------------------------------------------------------
# frames and answers
# ---------------------------------------------------------------------------------------------------------

#: grey levels the tiny model (tests/tiny_onnx.py) passes, reviews and rejects
_LEVELS = (255, 120, 0)


def frame_pool(count: int = 48, seed: int = 0) -> list[bytes]:
    """Distinct small JPEG frames of every verdict."""
    import cv2
    import numpy as np

    rng = np.random.default_rng(seed)
    out = []
    for i in range(count):
        img = np.full((48, 64, 3), _LEVELS[i % 3], np.uint8)
        img[0, :] = rng.integers(0, 256, (64, 3), dtype=np.uint8)  # makes every frame's bytes unique
        ok, buf = cv2.imencode(".jpg", img, [cv2.IMWRITE_JPEG_QUALITY, 95])
        assert ok
        out.append(buf.tobytes())
    return out


@dataclass(frozen=True)
class Ack:
    """A 2xx answer: the record's id, the frame's Idempotency-Key and the sha256 of the posted bytes."""

    id: str
    key: str
    sha256: str
    at: float = field(default=0.0, compare=False)  # time.monotonic() when the answer arrived


@dataclass
class Tally:
    acks: list[Ack] = field(default_factory=list)
    refused: int = 0  # 4xx/5xx answers
    failed: int = 0  # no answer (connection reset, refused, timed out)
    lock: threading.Lock = field(default_factory=threading.Lock)


def post_until(
    url: str, frames: list[bytes], tally: Tally, stop: threading.Event, *, seed: int, accept: Callable[[Ack], bool]
) -> None:
    """Post frames back to back until ``stop`` or the first transport error (the server is gone)."""
    import httpx

    rng = random.Random(seed)
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.is_set():
            data = frames[rng.randrange(len(frames))]
            key = uuid.uuid4().hex
            try:
                r = client.post(
                    "/v1/inspections",
                    content=data,
                    params={"camera_id": "cam1", "line_id": "L1"},
                    headers={"Content-Type": "image/jpeg", "Idempotency-Key": key},
                )
            except httpx.HTTPError:
                with tally.lock:
                    tally.failed += 1
                return
            at = time.monotonic()
            with tally.lock:
                if 200 <= r.status_code < 300:
                    ack = Ack(r.json()["id"], key, hashlib.sha256(data).hexdigest(), at)
                    if accept(ack):
                        tally.acks.append(ack)
                else:
                    tally.refused += 1


# ---------------------------------------------------------------------------------------------------------
# what is on disk
# ---------------------------------------------------------------------------------------------------------


@dataclass
class DiskState:
    records: int
    temp_files: list[str]
    orphans: list[str]  # image files no record names
    missing_images: list[str]  # records whose image file is absent
    integrity: list[str]  # PRAGMA integrity_check findings ([] = ok)


def _db_rows(db: Path) -> dict[str, tuple[str | None, str | None, str, str | None]]:
    """id -> (image_key, heatmap_key, body_sha256, idempotency_key); runs SQLite's crash recovery if needed."""
    if not db.exists():
        return {}
    con = sqlite3.connect(db, timeout=30)
    try:
        tables = {r[0] for r in con.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if "inspections" not in tables:
            return {}
        rows = con.execute("SELECT id, image_key, heatmap_key, body_sha256, idempotency_key FROM inspections")
        return {r[0]: (r[1], r[2], r[3], r[4]) for r in rows}
    finally:
        con.close()


def _is_npy(path: Path) -> bool:
    import numpy as np

    try:
        np.load(path, allow_pickle=False)
    except (OSError, ValueError):
        return False
    return True


def integrity(db: Path) -> list[str]:
    con = sqlite3.connect(db, timeout=30)
    try:
        found = [str(r[0]) for r in con.execute("PRAGMA integrity_check")]
    finally:
        con.close()
    return [] if found == ["ok"] else found


def disk_state(data_dir: Path) -> DiskState:
    """Temp files, orphans and records without their image in ``data_dir`` (read with no service running)."""
    images = data_dir / "images"
    db = data_dir / "andon.db"
    rows = _db_rows(db)
    named = {k for image, heat, _sha, _key in rows.values() for k in (image, heat) if k}
    temp, orphans = [], []
    if images.is_dir():
        for path in images.rglob("*"):
            if not path.is_file():
                continue
            key = path.relative_to(images).as_posix()
            if path.name.endswith(".tmp") or path.name == ".healthcheck":
                temp.append(key)
            elif not path.name.startswith(".") and key not in named:
                orphans.append(key)
    missing = sorted(k for k in named if not (images / k).is_file())
    return DiskState(len(rows), sorted(temp), sorted(orphans), missing, integrity(db) if db.exists() else [])


def lost_acks(data_dir: Path, acks: list[Ack]) -> list[str]:
    """The acknowledged frames that are not in ``data_dir`` whole: no record, no image, or other bytes."""
    rows = _db_rows(data_dir / "andon.db")
    images = data_dir / "images"
    lost = []
    for ack in acks:
        row = rows.get(ack.id)
        if row is None:
            lost.append(f"{ack.id}: no record")
            continue
        image_key, heat_key, sha, key = row
        if sha != ack.sha256 or key != ack.key:
            lost.append(f"{ack.id}: the record is another frame's")
        elif not image_key or not (images / image_key).is_file():
            lost.append(f"{ack.id}: the image {image_key} is missing")
        elif hashlib.sha256((images / image_key).read_bytes()).hexdigest() != ack.sha256:
            lost.append(f"{ack.id}: the image {image_key} is not the posted bytes")
        elif heat_key and not _is_npy(images / heat_key):
            lost.append(f"{ack.id}: the heatmap {heat_key} is missing or torn")
    return lost


# ---------------------------------------------------------------------------------------------------------
# andon serve as a real process, forked from a warm zygote
# ---------------------------------------------------------------------------------------------------------

_ZYGOTE = r"""
import json, os, signal, sys
# the heavy imports, done once (onnxruntime's import leaves one idle thread behind; the children create their
# own inference sessions and thread pools, and 200 kills have not shown a fork-related hang)
import numpy, PIL.Image, PIL.ImageDraw, onnx, fastapi, sqlalchemy, alembic, uvicorn, pydantic_settings, jinja2
import prometheus_client
import andon.cli, andon.service.app
signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # children are reaped by the kernel
print("ready", flush=True)
for line in sys.stdin:
    job = json.loads(line)
    pid = os.fork()
    if pid == 0:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        os.setsid()
        try:  # die with the zygote (which ends when the bench or test that started it does)
            import ctypes
            ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
        except (OSError, AttributeError):
            pass
        fd = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.environ.update(job["env"])
        code = 0
        try:
            andon.cli.main(job["argv"])
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 1
        except BaseException:
            import traceback
            traceback.print_exc()
            code = 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    print(pid, flush=True)
"""

#: settings of the servers these benches start (ANDON_* environment: the service reads only its settings)
SERVE_ENV = {
    "ANDON_PASS_SAMPLE_RATE": "1.0",  # every frame's image is kept: every 2xx has an image to check
    "ANDON_MIN_FREE_DISK_MB": "0",
    "ANDON_INFERENCE_THREADS": "2",
    "ANDON_INTRA_OP_THREADS": "1",
    "ANDON_QUEUE_SIZE": "64",
    "ANDON_LOG_LEVEL": "warning",
    "ANDON_REGISTRY_POLL_S": "5",
}


class Zygote:
    """A Python process with the service's libraries imported, forking ``andon serve`` children on demand."""

    def __init__(self) -> None:
        env = dict(os.environ, OPENBLAS_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")])
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _ZYGOTE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env
        )
        assert self.proc.stdout is not None and self.proc.stdin is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"the zygote did not start (said {line!r})")

    def spawn(self, argv: list[str], env: dict[str, str], log: Path) -> int:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.proc.stdin.write(json.dumps({"argv": argv, "env": env, "log": str(log)}) + "\n")
        self.proc.stdin.flush()
        return int(self.proc.stdout.readline())

    def close(self) -> None:
        with contextlib.suppress(OSError):
            assert self.proc.stdin is not None
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


class Server:
    """One ``andon serve`` process (forked by ``zygote``, or exec'd when it is None) on ``port``."""

    def __init__(
        self,
        data_dir: Path,
        port: int,
        log: Path,
        *,
        model: Path | None,
        zygote: Zygote | None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        argv = ["serve", "--data-dir", str(data_dir), "--port", str(port)]
        if model is not None:
            argv += ["--model", str(model)]
        self.popen: subprocess.Popen | None = None
        settings = {**SERVE_ENV, **(env or {})}
        if zygote is not None:
            self.pid = zygote.spawn(argv, settings, log)
        else:
            with open(log, "ab") as out:
                self.popen = subprocess.Popen(
                    [sys.executable, "-m", "andon", *argv],
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=dict(os.environ, **settings),
                )
            self.pid = self.popen.pid

    def wait_ready(self, timeout: float = 120.0) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.running():
                raise RuntimeError(f"andon serve exited before it was ready:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return
            time.sleep(0.02)
        raise RuntimeError(f"andon serve was not ready within {timeout:.0f} s:\n{self.log_tail()}")

    def running(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return alive(self.pid)

    def signal(self, sig: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.pid, sig)

    def wait_gone(self, timeout: float = 60.0) -> int | None:
        """Wait until the process is gone; its exit status when this process is its parent."""
        if self.popen is not None:
            return self.popen.wait(timeout=timeout)
        deadline = time.monotonic() + timeout
        while alive(self.pid):
            if time.monotonic() > deadline:
                raise RuntimeError(f"process {self.pid} is still there {timeout:.0f} s after the signal")
            time.sleep(0.01)
        return None

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# ---------------------------------------------------------------------------------------------------------
# kill -9 loop
# ---------------------------------------------------------------------------------------------------------


@dataclass
class KillReport:
    kills: int = 0
    kills_during_startup: int = 0
    acked: int = 0
    refused: int = 0
    failed: int = 0
    records: int = 0
    #: what the kills left, found before each restart (the start-up sweep removes them)
    temp_left: int = 0
    orphans_left: int = 0
    lost: list[str] = field(default_factory=list)
    final: DiskState | None = None
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        f = self.final
        return [
            f"kill -9: {self.kills} kills ({self.kills_during_startup} during start-up) in {self.wall_s:.0f} s",
            f"  frames acknowledged (2xx): {self.acked}; refused: {self.refused}; no answer (killed): {self.failed}",
            f"  records after the loop: {self.records} (acknowledged ones lost: {len(self.lost)})",
            f"  left by the kills and swept at start-up: {self.temp_left} temp files, {self.orphans_left} orphans",
            f"  after the last start-up: {len(f.temp_files) if f else '?'} temp files, "
            f"{len(f.orphans) if f else '?'} orphans, {len(f.missing_images) if f else '?'} records without "
            f"their image; integrity_check: {'ok' if f and not f.integrity else (f.integrity if f else '?')}",
        ]


def kill_loop(
    work: Path,
    model: Path,
    *,
    kills: int,
    seed: int = 0,
    threads: int = 2,
    run_s: tuple[float, float] = (0.05, 0.5),
    startup_kill_rate: float = 0.15,
    zygote: bool = True,
    say: Callable[[str], None] = lambda s: None,
) -> KillReport:
    """Start, post, SIGKILL, repeat ``kills`` times; then start once more and check everything."""
    rng = random.Random(seed)
    frames = frame_pool(seed=seed)
    data = work / "data"
    log = work / "serve.log"
    port = free_port()
    report = KillReport()
    tally = Tally()
    started = time.monotonic()
    z = Zygote() if zygote else None
    server: Server | None = None
    try:
        for k in range(kills + 1):
            if k:
                left = disk_state(data)
                report.temp_left += len(left.temp_files)
                report.orphans_left += len(left.orphans)
            server = Server(data, port, log, model=model if k == 0 else None, zygote=z)
            if k == kills:  # the last start: no kill, the checks
                server.wait_ready()
                break
            if k > 0 and rng.random() < startup_kill_rate:
                time.sleep(rng.uniform(0.0, 0.8))  # somewhere in start-up: migration, sweep, model load
                server.signal(signal.SIGKILL)
                server.wait_gone()
                report.kills += 1
                report.kills_during_startup += 1
                if (k + 1) % 10 == 0:
                    say(f"  {k + 1} kills, {len(tally.acks)} frames acknowledged")
                continue
            server.wait_ready()
            stop = threading.Event()
            clients = [
                threading.Thread(
                    target=post_until,
                    args=(server.url, frames, tally, stop),
                    kwargs={"seed": rng.randrange(1 << 30), "accept": lambda a: True},
                    daemon=True,
                )
                for _ in range(threads)
            ]
            for c in clients:
                c.start()
            time.sleep(rng.uniform(*run_s))
            server.signal(signal.SIGKILL)
            stop.set()
            for c in clients:
                c.join(timeout=60)
            server.wait_gone()
            report.kills += 1
            if (k + 1) % 10 == 0:
                say(f"  {k + 1} kills, {len(tally.acks)} frames acknowledged")
        # the service after the last start-up: the answers through the API (a sample), then the files offline
        import httpx

        for ack in rng.sample(tally.acks, min(20, len(tally.acks))):
            image = httpx.get(f"{server.url}/v1/inspections/{ack.id}/image", timeout=30)
            if image.status_code != 200 or hashlib.sha256(image.content).hexdigest() != ack.sha256:
                report.lost.append(f"{ack.id}: GET image answered {image.status_code}")
        server.signal(signal.SIGTERM)
        server.wait_gone()
    finally:
        if server is not None and server.running():
            server.signal(signal.SIGKILL)
        if z is not None:
            z.close()
    report.final = disk_state(data)
    report.lost += lost_acks(data, tally.acks)
    report.acked, report.refused, report.failed = len(tally.acks), tally.refused, tally.failed
    report.records = report.final.records
    report.wall_s = time.monotonic() - started
    return report


# ---------------------------------------------------------------------------------------------------------
# SIGTERM under load
# ---------------------------------------------------------------------------------------------------------


@dataclass
class TermReport:
    rounds: int = 0
    acked: int = 0
    answered_after_term: int = 0  # answers that arrived after SIGTERM was sent: requests in flight at the signal
    refused: int = 0
    failed: int = 0
    exit_codes: list[int | None] = field(default_factory=list)  # None: forked by the zygote, not ours to wait
    #: rounds whose log says uvicorn ran the application's shutdown (the lifespan's end: engine disposed)
    clean_shutdowns: int = 0
    unanswered_records: list[str] = field(default_factory=list)  # records no client got a 2xx for
    lost: list[str] = field(default_factory=list)
    final: DiskState | None = None
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        return [
            f"SIGTERM under load: {self.rounds} rounds in {self.wall_s:.0f} s, {self.clean_shutdowns} shutdowns "
            f"completed (exit codes {sorted(set(self.exit_codes), key=str)})",
            f"  frames acknowledged: {self.acked}, of which answered after SIGTERM (in flight): "
            f"{self.answered_after_term}; refused: {self.refused}; no answer: {self.failed}",
            f"  acknowledged but lost: {len(self.lost)}; records without an answer: {len(self.unanswered_records)}",
        ]


def sigterm_rounds(
    work: Path,
    model: Path,
    *,
    rounds: int,
    seed: int = 0,
    threads: int = 8,
    min_acks: int = 10,
    zygote: bool = True,
    say: Callable[[str], None] = lambda s: None,
) -> TermReport:
    """Post from ``threads`` clients, SIGTERM once ``min_acks`` frames are in, let it drain; ``rounds`` times."""
    rng = random.Random(seed)
    frames = frame_pool(seed=seed)
    data = work / "data"
    log = work / "serve.log"
    port = free_port()
    report = TermReport()
    tally = Tally()
    started = time.monotonic()
    z = Zygote() if zygote else None
    server: Server | None = None
    try:
        for r in range(rounds):
            server = Server(data, port, log, model=model if r == 0 else None, zygote=z, env={"ANDON_LOG_LEVEL": "info"})
            server.wait_ready()
            stop = threading.Event()
            clients = [
                threading.Thread(
                    target=post_until,
                    args=(server.url, frames, tally, stop),
                    kwargs={"seed": rng.randrange(1 << 30), "accept": lambda a: True},
                    daemon=True,
                )
                for _ in range(threads)
            ]
            base = len(tally.acks)
            for c in clients:
                c.start()
            while len(tally.acks) < base + min_acks and any(c.is_alive() for c in clients):
                time.sleep(0.005)
            time.sleep(rng.uniform(0.0, 0.2))
            term_at = time.monotonic()
            server.signal(signal.SIGTERM)
            for c in clients:
                c.join(timeout=120)
            stop.set()
            report.exit_codes.append(server.wait_gone())
            report.answered_after_term += sum(1 for a in tally.acks[base:] if a.at > term_at)
            report.rounds += 1
            say(f"  round {r + 1}: {len(tally.acks) - base} acknowledged")
    finally:
        if server is not None and server.running():
            server.signal(signal.SIGKILL)
        if z is not None:
            z.close()
    report.clean_shutdowns = log.read_text(errors="replace").count("Application shutdown complete")
    report.final = disk_state(data)
    report.lost = lost_acks(data, tally.acks)
    answered = {a.id for a in tally.acks}
    rows = _db_rows(data / "andon.db")
    report.unanswered_records = sorted(set(rows) - answered)
    report.acked, report.refused, report.failed = len(tally.acks), tally.refused, tally.failed
    report.wall_s = time.monotonic() - started
    return report


# ---------------------------------------------------------------------------------------------------------
# power cuts: a storage double that remembers what was fsynced
# ---------------------------------------------------------------------------------------------------------


class ShimUnavailable(RuntimeError):
    """Python's sqlite3 does not use a shared libsqlite3 this process can register a VFS with."""


_c_int, _c_void_p, _c_int64 = ctypes.c_int, ctypes.c_void_p, ctypes.c_int64
_SQLITE_IOERR = 10
_OPEN_CREATE = 0x4
_DIRSYNC_KINDS = 0x800 | 0x4000 | 0x80000  # SQLITE_OPEN_MAIN_JOURNAL, SUPER_JOURNAL, WAL


class _Vfs(ctypes.Structure):
    _fields_ = [
        ("iVersion", _c_int),
        ("szOsFile", _c_int),
        ("mxPathname", _c_int),
        ("pNext", _c_void_p),
        ("zName", ctypes.c_char_p),
        ("pAppData", _c_void_p),
    ] + [
        (name, _c_void_p)
        for name in (
            "xOpen xDelete xAccess xFullPathname xDlOpen xDlError xDlSym xDlClose xRandomness xSleep "
            "xCurrentTime xGetLastError xCurrentTimeInt64 xSetSystemCall xGetSystemCall xNextSystemCall"
        ).split()
    ]


class _IoMethods(ctypes.Structure):
    _fields_ = [("iVersion", _c_int)] + [
        (name, _c_void_p)
        for name in (
            "xClose xRead xWrite xTruncate xSync xFileSize xLock xUnlock xCheckReservedLock xFileControl "
            "xSectorSize xDeviceCharacteristics xShmMap xShmLock xShmBarrier xShmUnmap xFetch xUnfetch"
        ).split()
    ]


_OPEN = ctypes.CFUNCTYPE(_c_int, _c_void_p, _c_void_p, _c_void_p, _c_int, _c_void_p)
_DELETE = ctypes.CFUNCTYPE(_c_int, _c_void_p, ctypes.c_char_p, _c_int)
_CLOSE = ctypes.CFUNCTYPE(_c_int, _c_void_p)
_WRITE = ctypes.CFUNCTYPE(_c_int, _c_void_p, _c_void_p, _c_int, _c_int64)
_TRUNCATE = ctypes.CFUNCTYPE(_c_int, _c_void_p, _c_int64)
_SYNC = ctypes.CFUNCTYPE(_c_int, _c_void_p, _c_int)


@dataclass
class _Originals:
    close: Callable
    write: Callable
    truncate: Callable
    sync: Callable


class SqliteShim:
    """A SQLite VFS that forwards every call to the default (unix) VFS and reports writes, syncs, truncations
    and deletes to ``observer`` (which may also fail an operation: return an SQLite error code from
    ``sqlite_before``). Registered once per process; ``activate`` makes it the default VFS, so every
    connection opened meanwhile (the service's engine's) goes through it."""

    NAME = b"andon-durability"
    _instance: SqliteShim | None = None

    @classmethod
    def get(cls) -> SqliteShim:
        if cls._instance is None:
            cls._instance = cls()
        return cls._instance

    def __init__(self) -> None:
        self.lib = _libsqlite3()
        self.lib.sqlite3_vfs_find.restype = _c_void_p
        self.lib.sqlite3_vfs_find.argtypes = [ctypes.c_char_p]
        self.lib.sqlite3_vfs_register.argtypes = [_c_void_p, _c_int]
        self.real_ptr = self.lib.sqlite3_vfs_find(None)
        real = _Vfs.from_address(self.real_ptr)
        self.real_open = _OPEN(real.xOpen)
        self.real_delete = _DELETE(real.xDelete)
        self.vfs = _Vfs.from_buffer_copy(ctypes.string_at(self.real_ptr, ctypes.sizeof(_Vfs)))
        self.vfs.zName = self.NAME
        self.vfs.pNext = None
        # the callbacks must outlive every connection that uses them: they are kept for the process's life
        self._cbs = {
            "open": _OPEN(self._x_open),
            "delete": _DELETE(self._x_delete),
            "close": _CLOSE(self._x_close),
            "write": _WRITE(self._x_write),
            "truncate": _TRUNCATE(self._x_truncate),
            "sync": _SYNC(self._x_sync),
        }
        self.vfs.xOpen = ctypes.cast(self._cbs["open"], _c_void_p).value
        self.vfs.xDelete = ctypes.cast(self._cbs["delete"], _c_void_p).value
        self._methods: dict[int, tuple[_IoMethods, _Originals]] = {}
        self._files: dict[int, tuple[str | None, _Originals]] = {}
        #: files whose first sync also fsyncs their folder (unix VFS: journals and WALs opened with CREATE)
        self._dirsync: set[int] = set()
        self.observer = None
        self.errors: list[str] = []
        if self.lib.sqlite3_vfs_register(ctypes.addressof(self.vfs), 0) != 0:
            raise ShimUnavailable("sqlite3_vfs_register failed")
        self._check()

    def _check(self) -> None:
        import tempfile

        with tempfile.TemporaryDirectory() as tmp:
            try:
                con = sqlite3.connect(f"file:{tmp}/probe.db?vfs={self.NAME.decode()}", uri=True)
                con.execute("CREATE TABLE t (x)")
                con.commit()
                con.close()
            except sqlite3.OperationalError as exc:
                raise ShimUnavailable(
                    f"Python's sqlite3 does not see a VFS registered in {self.lib._name} ({exc}): it is linked "
                    "statically or against another libsqlite3"
                ) from None

    def activate(self, observer) -> None:
        self.observer = observer
        self.lib.sqlite3_vfs_register(ctypes.addressof(self.vfs), 1)

    def deactivate(self) -> None:
        self.lib.sqlite3_vfs_register(self.real_ptr, 1)
        self.observer = None

    # ---- the VFS's own methods
    def _x_open(self, vfs, zname, pfile, flags, pout):
        try:
            rc = self.real_open(self.real_ptr, zname, pfile, flags, pout)
            addr = _c_void_p.from_address(pfile).value
            if rc != 0 or not addr:
                return rc
            wrapped = self._methods.get(addr)
            if wrapped is None:
                real = _IoMethods.from_address(addr)
                ours = _IoMethods.from_buffer_copy(ctypes.string_at(addr, ctypes.sizeof(_IoMethods)))
                for name in ("close", "write", "truncate", "sync"):
                    setattr(ours, f"x{name.capitalize()}", ctypes.cast(self._cbs[name], _c_void_p).value)
                originals = _Originals(
                    _CLOSE(real.xClose), _WRITE(real.xWrite), _TRUNCATE(real.xTruncate), _SYNC(real.xSync)
                )
                wrapped = self._methods[addr] = (ours, originals)
            _c_void_p.from_address(pfile).value = ctypes.addressof(wrapped[0])
            path = ctypes.string_at(zname).decode() if zname else None
            self._files[pfile] = (path, wrapped[1])
            if flags & _OPEN_CREATE and flags & _DIRSYNC_KINDS:
                self._dirsync.add(pfile)
            return rc
        except Exception as exc:  # noqa: BLE001 - never raise into C
            self.errors.append(f"open: {exc!r}")
            return _SQLITE_IOERR

    def _x_delete(self, vfs, zname, syncdir):
        try:
            path = zname.decode() if zname else ""
            obs = self.observer
            if obs is not None:
                rc = obs.sqlite_before("delete", path)
                if rc:
                    return rc
            rc = self.real_delete(self.real_ptr, zname, syncdir)
            if rc == 0 and obs is not None:
                obs.sqlite_deleted(path, bool(syncdir))
            return rc
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"delete: {exc!r}")
            return _SQLITE_IOERR

    # ---- the files' methods
    def _x_close(self, pfile):
        _path, orig = self._files.pop(pfile)
        self._dirsync.discard(pfile)
        return orig.close(pfile)

    def _x_write(self, pfile, buf, amount, offset):
        try:
            path, orig = self._files[pfile]
            obs = self.observer
            if obs is not None and path:
                rc = obs.sqlite_before("write", path)
                if rc:
                    return rc
            rc = orig.write(pfile, buf, amount, offset)
            if rc == 0 and obs is not None and path:
                obs.sqlite_wrote(path, offset, ctypes.string_at(buf, amount))
            return rc
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"write: {exc!r}")
            return _SQLITE_IOERR

    def _x_truncate(self, pfile, size):
        try:
            path, orig = self._files[pfile]
            obs = self.observer
            if obs is not None and path:
                rc = obs.sqlite_before("truncate", path)
                if rc:
                    return rc
            rc = orig.truncate(pfile, size)
            if rc == 0 and obs is not None and path:
                obs.sqlite_truncated(path, size)
            return rc
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"truncate: {exc!r}")
            return _SQLITE_IOERR

    def _x_sync(self, pfile, flags):
        try:
            path, orig = self._files[pfile]
            obs = self.observer
            if obs is not None and path:
                rc = obs.sqlite_before("sync", path)
                if rc:
                    return rc
            rc = orig.sync(pfile, flags)
            dirsync = rc == 0 and pfile in self._dirsync
            if dirsync:
                self._dirsync.discard(pfile)  # the unix VFS fsyncs the folder once, at the first sync
            if rc == 0 and obs is not None and path:
                obs.sqlite_synced(path)
                if dirsync:
                    obs.sqlite_folder_synced(os.path.dirname(path))
            return rc
        except Exception as exc:  # noqa: BLE001
            self.errors.append(f"sync: {exc!r}")
            return _SQLITE_IOERR


def _libsqlite3() -> ctypes.CDLL:
    """The libsqlite3 that Python's sqlite3 module is linked against (the same copy, already in memory)."""
    import _sqlite3  # noqa: F401 - loads the library

    for line in Path("/proc/self/maps").read_text().splitlines():
        parts = line.split()
        if len(parts) >= 6 and "libsqlite3" in os.path.basename(parts[5]):
            return ctypes.CDLL(parts[5])
    raise ShimUnavailable("no shared libsqlite3 is mapped into this process (sqlite3 is linked statically)")


@dataclass
class _SqFile:
    """One SQLite file: what is on stable storage, and what was written since its last sync."""

    durable: bytearray | None
    pending: list[tuple] = field(default_factory=list)

    @staticmethod
    def apply(content: bytearray | None, ops: list[tuple]) -> bytearray | None:
        for op in ops:
            if op[0] == "d":
                content = None
                continue
            if content is None:
                content = bytearray()
            if op[0] == "w":
                _, offset, data = op
                if len(content) < offset:
                    content.extend(bytes(offset - len(content)))
                content[offset : offset + len(data)] = data
            else:  # truncate
                size = op[1]
                if size < len(content):
                    del content[size:]
                else:
                    content.extend(bytes(size - len(content)))
        return content


#: the operations a cut can come before
KINDS = ("file fsync", "folder fsync", "sqlite write", "sqlite sync")


class PowerCut:
    """Where ``root``'s bytes would be after a power cut at the ``crash_after``-th I/O operation.

    A POSIX-like model of the page cache: a file's data is on disk as of its last fsync, a folder's entries as
    of the folder's last fsync (inode numbers tie entries to data), SQLite files as of their last xSync. At
    the cut, what was not synced is dropped, except that with probability ``keep_unsynced`` a folder's current
    entries, a file's current bytes, or a random prefix of a SQLite file's unsynced writes made it to disk
    anyway (writes reach the disk in any order before a flush). ``-shm`` files are never kept (SQLite rebuilds
    them). Operations counted: image-store fsyncs (files and folders) and SQLite writes, truncations, syncs,
    deletes; the cut comes just before the chosen one."""

    def __init__(
        self,
        root: Path,
        *,
        seed: int,
        crash_after: int | None,
        crash_kind: str | None = None,
        keep_unsynced: float = 0.0,
        db_name: str = "andon.db",
    ) -> None:
        self.root = Path(root).resolve()
        self.rng = random.Random(seed)
        self.crash_after = crash_after
        #: count only this kind of operation (one of KINDS; None: every one)
        self.crash_kind = crash_kind
        self.keep = keep_unsynced
        self.db_name = db_name
        self.lock = threading.RLock()
        self.ticks = 0
        self.where: str | None = None
        self.image: dict[str, bytes | None] | None = None  # relative path -> bytes (None: a folder)
        self.dirs: dict[int, dict[str, tuple[int, bool]]] = {}
        self.data: dict[int, bytes] = {}
        #: when each inode's durable state was taken: two fsyncs of one folder may finish out of order, and
        #: the later snapshot must win
        self.taken: dict[int, int] = {}
        self.seq = 0
        self.sq: dict[str, _SqFile] = {}
        self.root_ino = os.stat(self.root).st_ino
        cur_dirs, cur_data = self._walk()
        self.dirs, self.data = cur_dirs, cur_data  # at the start everything on disk is durable

    # ---- the model
    def _is_sqlite(self, path: str) -> bool:
        return os.path.dirname(path) == str(self.root) and os.path.basename(path).startswith(self.db_name)

    def _inside(self, path: str) -> bool:
        return path == str(self.root) or path.startswith(str(self.root) + os.sep)

    def _walk(self) -> tuple[dict[int, dict[str, tuple[int, bool]]], dict[int, bytes]]:
        dirs: dict[int, dict[str, tuple[int, bool]]] = {}
        data: dict[int, bytes] = {}
        for folder, _subdirs, names in os.walk(self.root):
            try:
                dirs[os.stat(folder).st_ino] = _listing(folder)
            except FileNotFoundError:
                continue
            for name in names:
                path = os.path.join(folder, name)
                if self._is_sqlite(path):
                    if path not in self.sq and not name.endswith("-shm"):
                        with contextlib.suppress(FileNotFoundError):
                            self.sq[path] = _SqFile(bytearray(Path(path).read_bytes()))
                    continue
                with contextlib.suppress(FileNotFoundError):
                    data[os.stat(path).st_ino] = Path(path).read_bytes()
        return dirs, data

    def _tick(self, kind: str, what: str) -> None:
        with self.lock:
            if self.image is not None or self.crash_after is None:
                return
            if self.crash_kind is not None and kind != self.crash_kind:
                return
            self.ticks += 1
            if self.ticks >= self.crash_after:
                self.cut(what)

    def cut(self, where: str = "now") -> None:
        """The power goes now: freeze the disk image (later I/O no longer counts)."""
        with self.lock:
            if self.image is not None:
                return
            self.where = where
            cur_dirs, cur_data = self._walk()
            image: dict[str, bytes | None] = {}
            self._visit(self.root_ino, "", cur_dirs, cur_data, image, set())
            for path, f in self.sq.items():
                rel = os.path.relpath(path, self.root)
                ops = f.pending
                if self.keep and ops and self.rng.random() < self.keep:
                    ops = ops[: self.rng.randint(0, len(ops))]
                else:
                    ops = []
                content = _SqFile.apply(bytearray(f.durable) if f.durable is not None else None, ops)
                if content is not None and not rel.endswith("-shm"):
                    image[rel] = bytes(content)
            self.image = image

    def _visit(self, ino: int, rel: str, cur_dirs, cur_data, image, seen: set[int]) -> None:
        if ino in seen:
            return
        seen.add(ino)
        listing = self.dirs.get(ino, {})
        if self.keep and ino in cur_dirs and self.rng.random() < self.keep:
            listing = cur_dirs[ino]
        for name, (child, is_dir) in sorted(listing.items()):
            path = f"{rel}/{name}" if rel else name
            if not rel and name.startswith(self.db_name):
                continue  # SQLite's files: their own model
            if is_dir:
                image[path] = None
                self._visit(child, path, cur_dirs, cur_data, image, seen)
                continue
            content = self.data.get(child, b"")
            if self.keep and child in cur_data and self.rng.random() < self.keep:
                content = cur_data[child]
            image[path] = content

    def materialize(self, dest: Path) -> None:
        """Write the disk as it was found after the cut to ``dest`` (a new folder)."""
        assert self.image is not None, "cut() first"
        dest.mkdir(parents=True)
        for rel, content in sorted(self.image.items()):
            target = dest / rel
            if content is None:
                target.mkdir(parents=True, exist_ok=True)
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(content)

    def accept(self, _ack: Ack) -> bool:
        """An answer counts as acknowledged only if it arrived before the cut."""
        with self.lock:
            return self.image is None

    # ---- os.fsync / os.fdatasync (the image store, the registry)
    def fsync_hook(self, real: Callable[[int], None], fd: int) -> None:
        try:
            path = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            return real(fd)
        if not self._inside(path):
            return real(fd)
        st = os.fstat(fd)
        is_dir = stat.S_ISDIR(st.st_mode)
        self._tick("folder fsync" if is_dir else "file fsync", f"fsync of {os.path.relpath(path, self.root)}")
        with self.lock:
            self.seq += 1
            seq = self.seq
            snapshot = _listing(path) if is_dir else Path(f"/proc/self/fd/{fd}").read_bytes()  # as of the call
        real(fd)
        with self.lock:
            if self.image is None and seq > self.taken.get(st.st_ino, 0):
                self.taken[st.st_ino] = seq
                if is_dir:
                    self.dirs[st.st_ino] = snapshot  # type: ignore[assignment]
                else:
                    self.data[st.st_ino] = snapshot  # type: ignore[assignment]

    # ---- the SQLite shim's observer interface
    def sqlite_before(self, kind: str, path: str) -> int:
        if self._inside(path):
            self._tick(f"sqlite {kind}", f"sqlite {kind} of {os.path.basename(path)}")
        return 0

    def _sq(self, path: str) -> _SqFile:
        f = self.sq.get(path)
        if f is None:
            f = self.sq[path] = _SqFile(None)
        return f

    def sqlite_wrote(self, path: str, offset: int, data: bytes) -> None:
        with self.lock:
            if self.image is None and self._inside(path):
                self._sq(path).pending.append(("w", offset, data))

    def sqlite_truncated(self, path: str, size: int) -> None:
        with self.lock:
            if self.image is None and self._inside(path):
                self._sq(path).pending.append(("t", size))

    def sqlite_synced(self, path: str) -> None:
        with self.lock:
            if self.image is None and self._inside(path):
                f = self._sq(path)
                f.durable = _SqFile.apply(f.durable, f.pending)
                f.pending = []

    def sqlite_folder_synced(self, folder: str) -> None:
        """The unix VFS fsynced ``folder`` (a new journal's or WAL's first sync): its entries are durable now,
        SQLite's deletes in it included."""
        with self.lock:
            if self.image is not None or not self._inside(folder):
                return
            for path, f in self.sq.items():
                if os.path.dirname(path) == folder and any(op[0] == "d" for op in f.pending):
                    last = max(i for i, op in enumerate(f.pending) if op[0] == "d")
                    f.durable, f.pending = None, f.pending[last + 1 :]
            self.seq += 1
            st = os.stat(folder)
            self.taken[st.st_ino] = self.seq
            self.dirs[st.st_ino] = _listing(folder)

    def sqlite_deleted(self, path: str, sync_dir: bool) -> None:
        with self.lock:
            if self.image is None and self._inside(path):
                f = self._sq(path)
                f.pending.append(("d",))
                if sync_dir:
                    f.durable, f.pending = None, []

    @contextlib.contextmanager
    def active(self) -> Iterator[PowerCut]:
        """Route the process's SQLite connections and fsyncs through this model meanwhile."""
        with hooked(self):
            yield self


@contextlib.contextmanager
def hooked(observer, *, sqlite: bool = True) -> Iterator[None]:
    """``observer`` sees every os.fsync / os.fdatasync (``observer.fsync_hook(real, fd)``) and, with
    ``sqlite``, every SQLite file operation (the shim as default VFS) until the block ends."""
    shim = SqliteShim.get() if sqlite else None
    real_fsync, real_fdatasync = os.fsync, os.fdatasync
    os.fsync = lambda fd: observer.fsync_hook(real_fsync, fd)  # type: ignore[assignment]
    os.fdatasync = lambda fd: observer.fsync_hook(real_fdatasync, fd)  # type: ignore[assignment]
    if shim is not None:
        shim.activate(observer)
    try:
        yield
    finally:
        if shim is not None:
            shim.deactivate()
        os.fsync, os.fdatasync = real_fsync, real_fdatasync


def _listing(folder: str) -> dict[str, tuple[int, bool]]:
    with os.scandir(folder) as entries:
        return {e.name: (e.inode(), e.is_dir(follow_symlinks=False)) for e in entries}


@contextlib.contextmanager
def serve_in_thread(settings) -> Iterator[str]:
    """The real app under uvicorn on a free loopback port, in a thread of this process; yields its URL."""
    import uvicorn

    from andon.service.app import create_app

    port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(create_app(settings), host="127.0.0.1", port=port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.01)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def service_settings(data_dir: Path, model: Path | None):
    from andon.service.settings import Settings

    return Settings.load(
        data_dir=data_dir,
        model=model,
        pass_sample_rate=1.0,
        min_free_disk_mb=0,
        inference_threads=2,
        intra_op_threads=1,
        registry_poll_s=5.0,
        log_level="warning",
    )


@dataclass
class PowerReport:
    rounds: int = 0
    acked: int = 0
    cuts_before_ready: int = 0  # cuts that came during start-up (no frame acknowledged in that round)
    where: dict[str, int] = field(default_factory=dict)  # the operation each cut came before
    lost: list[str] = field(default_factory=list)
    lost_round: int | None = None
    final: DiskState | None = None
    shim_errors: list[str] = field(default_factory=list)
    wall_s: float = 0.0

    def lines(self) -> list[str]:
        kinds = ", ".join(f"{k} {v}" for k, v in sorted(self.where.items()))
        f = self.final
        out = [
            f"power cuts: {self.rounds} rounds in {self.wall_s:.0f} s, {self.acked} frames acknowledged before "
            f"their cut, lost: {len(self.lost)}" + (f" (first in round {self.lost_round})" if self.lost else ""),
            f"  cut just before: {kinds} ({self.cuts_before_ready} during start-up)",
        ]
        if f is not None:
            out.append(
                f"  after the last start-up: {len(f.temp_files)} temp files, {len(f.orphans)} orphans, "
                f"{len(f.missing_images)} records without their image; integrity_check: "
                f"{'ok' if not f.integrity else f.integrity}"
            )
        return out


def power_rounds(
    work: Path,
    model: Path,
    *,
    rounds: int,
    seed: int = 0,
    keep_unsynced: tuple[float, ...] = (0.0, 0.5),
    frames_per_round: int = 30,
    crash_window: tuple[int, int] = (1, 60),
    threads: int = 2,
    stop_at_first_loss: bool = False,
    fresh: bool = True,
    say: Callable[[str], None] = lambda s: None,
) -> PowerReport:
    """Run the service in this process on a ``PowerCut`` disk, cut, restart on what survived, ``rounds`` times;
    every frame acknowledged before a cut must be there after it (and after every later cut)."""
    shim = SqliteShim.get()
    rng = random.Random(seed)
    frames = frame_pool(seed=seed)
    report = PowerReport()
    started = time.monotonic()
    data = work / "disk-0"
    if fresh:
        data.mkdir()  # the first round is a first start: migrations, model registration, first folders
    else:
        with serve_in_thread(service_settings(data, model)):
            pass  # an empty, migrated data folder with the model registered: the first durable state
    acks: list[Ack] = []
    for r in range(rounds):
        kind = KINDS[r % len(KINDS)]
        cut = PowerCut(
            data,
            seed=rng.randrange(1 << 30),
            crash_after=rng.randint(*crash_window),
            crash_kind=kind,
            keep_unsynced=keep_unsynced[(r // len(KINDS)) % len(keep_unsynced)],
        )
        tally = Tally()
        with cut.active():
            with serve_in_thread(service_settings(data, model)) as url:
                stop = threading.Event()
                clients = [
                    threading.Thread(
                        target=post_until,
                        args=(url, frames, tally, stop),
                        kwargs={"seed": rng.randrange(1 << 30), "accept": cut.accept},
                        daemon=True,
                    )
                    for _ in range(threads)
                ]
                ready_acks = cut.image is None
                if not ready_acks:
                    report.cuts_before_ready += 1
                for c in clients:
                    c.start()
                while cut.image is None and len(tally.acks) < frames_per_round:
                    time.sleep(0.002)
                cut.cut("the end of the round")
                stop.set()
                for c in clients:
                    c.join(timeout=60)
        where = kind if cut.where != "the end of the round" else "the end of the round"
        report.where[where] = report.where.get(where, 0) + 1
        acks += tally.acks
        previous, data = data, work / f"disk-{r + 1}"
        cut.materialize(data)
        shutil.rmtree(previous)  # the disk before this cut: its checks are done
        lost = lost_acks(data, acks)
        report.rounds += 1
        if lost and not report.lost:
            report.lost_round = r + 1
            report.lost = lost
            say(f"  round {r + 1}: cut before {cut.where}: lost {len(lost)}, e.g. {lost[0]}")
            if stop_at_first_loss:
                break
        if (r + 1) % 10 == 0:
            say(f"  {r + 1} rounds, {len(acks)} acknowledged")
    with serve_in_thread(service_settings(data, model)):
        pass  # the last start-up: its sweep
    report.final = disk_state(data)
    report.acked = len(acks)
    report.shim_errors = list(shim.errors)
    report.wall_s = time.monotonic() - started
    return report


# ---------------------------------------------------------------------------------------------------------
# the bench
# ---------------------------------------------------------------------------------------------------------


def _tiny_model(work: Path) -> Path:
    sys.path.insert(0, str(REPO / "tests"))
    from tiny_onnx import write_tiny_model

    return write_tiny_model(work / "tiny.onnx")


def main(argv: list[str] | None = None) -> int:
    import tempfile

    parser = argparse.ArgumentParser(prog="python -m bench.durability", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="what", required=True)
    kill = sub.add_parser("kill", help="kill -9 loop against andon serve")
    kill.add_argument("--kills", type=int, default=200)
    kill.add_argument("--threads", type=int, default=2)
    kill.add_argument("--exec", action="store_true", help="exec 'python -m andon serve' for every start (slow)")
    power = sub.add_parser("power", help="power cuts on the storage double")
    power.add_argument("--rounds", type=int, default=100)
    term = sub.add_parser("sigterm", help="SIGTERM under load")
    term.add_argument("--rounds", type=int, default=10)
    term.add_argument("--threads", type=int, default=8)
    for p in (kill, power, term):
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--model", type=Path, help="an exported .onnx file (default: the tests' tiny model)")
        p.add_argument("--out", type=Path, help="write the figures as JSON here")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="andon-durability-") as tmp:
        work = Path(tmp)
        model = args.model or _tiny_model(work)
        if args.what == "kill":
            report = kill_loop(
                work, model, kills=args.kills, seed=args.seed, threads=args.threads, zygote=not args.exec, say=print
            )
            ok = not report.lost and report.final is not None and not _dirty(report.final)
        elif args.what == "power":
            report = power_rounds(work, model, rounds=args.rounds, seed=args.seed, say=print)
            ok = not report.lost and report.final is not None and not _dirty(report.final)
        else:
            report = sigterm_rounds(work, model, rounds=args.rounds, seed=args.seed, threads=args.threads, say=print)
            ok = not report.lost and not report.unanswered_records and report.answered_after_term > 0
    print("\n".join(report.lines()))
    print("PASS" if ok else "FAIL")
    if args.out:
        figures = {k: v for k, v in vars(report).items() if k not in ("final",)}
        figures["final"] = vars(report.final) if report.final is not None else None
        args.out.write_text(json.dumps(figures, indent=2, default=str))
    return 0 if ok else 1


def _dirty(state: DiskState) -> bool:
    return bool(state.temp_files or state.orphans or state.missing_images or state.integrity)


if __name__ == "__main__":
    raise SystemExit(main())
