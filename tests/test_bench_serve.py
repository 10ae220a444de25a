"""bench.serve counts every process of a multi-worker service (master + workers), not only the master."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.serve import cpu_seconds, group_pids

#: a master that starts one busy child and then idles, as uvicorn's master does with its workers
MASTER = (
    "import subprocess, sys, time; "
    "subprocess.Popen([sys.executable, '-c', 'import time\\nt = time.time()\\nwhile time.time() - t < 30: pass']); "
    "time.sleep(30)"
)


def test_group_cpu_and_pids_include_the_workers() -> None:
    proc = subprocess.Popen([sys.executable, "-c", MASTER], start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while len(group_pids(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = group_pids(proc.pid)
        assert proc.pid in pids and len(pids) == 2, pids
        child = next(p for p in pids if p != proc.pid)
        start = cpu_seconds(proc.pid)
        time.sleep(1.0)
        spent = cpu_seconds(proc.pid) - start
        # the master sleeps: nearly all of the group's CPU is the child's busy loop
        assert spent >= 0.5, f"group CPU {spent:.2f} s in 1 s of a busy child {child}"
        assert os.getpid() not in pids  # our own process group is not the service's
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


#: a service-like process: one inference-pool thread (named as the service names them) and one plain thread busy,
#: the main thread asleep
ROLES = (
    "import threading, time\n"
    "from concurrent.futures import ThreadPoolExecutor\n"
    "from andon.service.admission import name_os_thread\n"
    "def spin():\n"
    "    t = time.time()\n"
    "    while time.time() - t < 30: pass\n"
    "pool = ThreadPoolExecutor(1, thread_name_prefix='andon-infer', initializer=name_os_thread)\n"
    "pool.submit(spin)\n"
    "threading.Thread(target=spin, daemon=True).start()\n"
    "time.sleep(30)\n"
)


def test_thread_cpu_tells_inference_from_the_event_loop_and_the_rest() -> None:
    from bench.serve import per_frame_by_thread, thread_cpu

    proc = subprocess.Popen([sys.executable, "-c", ROLES], start_new_session=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:  # until both busy threads run (the import takes a moment)
            first = thread_cpu(proc.pid)
            if first["inference"][0] > 0.05 and first["other"][0] > 0.05:
                break
            time.sleep(0.05)
        time.sleep(1.5)
        split = per_frame_by_thread(first, thread_cpu(proc.pid), frames=1000)
        # ms per "frame" over 1000 frames = seconds in the window: each busy thread got a share of the 1.5 s
        assert split["inference"]["ms"] >= 0.3, split
        assert split["other"]["ms"] >= 0.3, split
        assert split["event loop"]["ms"] <= 0.1, split  # the sleeping main thread
        assert all(0.0 <= v["kernel_ms"] <= v["ms"] for v in split.values()), split
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


#: a thread that spins for a second and ends while the main thread sleeps (anyio retires idle workers so)
ENDED = (
    "import threading, time\n"
    "def spin():\n"
    "    t = time.time()\n"
    "    while time.time() - t < 0.6: pass\n"
    "time.sleep(0.3)\n"
    "threading.Thread(target=spin).start()\n"
    "time.sleep(30)\n"
)


def test_thread_cpu_keeps_the_time_of_a_thread_that_ended() -> None:
    from bench.serve import per_frame_by_thread, thread_cpu

    proc = subprocess.Popen([sys.executable, "-c", ENDED], start_new_session=True)
    try:
        time.sleep(0.1)
        before = thread_cpu(proc.pid)
        time.sleep(1.4)  # the thread has run and ended
        assert len(list(Path(f"/proc/{proc.pid}/task").iterdir())) == 1
        split = per_frame_by_thread(before, thread_cpu(proc.pid), frames=1000)
        assert split["other"]["ms"] >= 0.3, split  # its 0.6 s of CPU, though the thread is gone
        assert split["event loop"]["ms"] <= 0.1, split
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
