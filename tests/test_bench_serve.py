"""bench.serve counts every process of a multi-worker service (master + workers), not only the master."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

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
