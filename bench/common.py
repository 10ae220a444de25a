"""What the benchmarks share: the machine they ran on, and a closed-loop load of worker threads."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (``"unknown"`` where there is none)."""
    try:
        found = re.search(r"^model name\s*:\s*(.+)$", Path("/proc/cpuinfo").read_text(), re.M)
    except OSError:
        return "unknown"
    return found.group(1).strip() if found else "unknown"


@dataclass
class Sample:
    frames: int
    wall_s: float
    cpu_s: float
    latencies_ms: list[float]

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s


def closed_loop(work: Callable[[int], None], workers: int, seconds: float) -> Sample:
    """``workers`` threads call ``work(i)`` (one frame each) back to back for ``seconds``."""
    latencies: list[list[float]] = [[] for _ in range(workers)]
    stop = time.perf_counter() + seconds

    def loop(k: int) -> None:
        i, own = k, latencies[k]
        while time.perf_counter() < stop:
            t = time.perf_counter()
            work(i)
            own.append((time.perf_counter() - t) * 1000.0)
            i += workers

    t0, c0 = time.perf_counter(), time.process_time()
    threads = [threading.Thread(target=loop, args=(k,)) for k in range(workers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    flat = [x for own in latencies for x in own]
    return Sample(frames=len(flat), wall_s=wall, cpu_s=cpu, latencies_ms=flat)


def wait_ready(proc, port: int, log) -> None:
    """Wait (at most 120 s) until the service started as ``proc`` answers 200 on /readyz at ``port``; exit with
    where to look when it died or never became ready."""
    import httpx

    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None:
            raise SystemExit(f"the service exited: see {log}")
        time.sleep(0.2)
    raise SystemExit("the service did not become ready in 120 s")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (for a server the benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kb(pid: int, field: str = "VmRSS") -> int:
    """A memory field of /proc/PID/status in kB (VmRSS: resident now, VmHWM: peak); 0 when the process is gone."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return 0
