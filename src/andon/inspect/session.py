"""onnxruntime session options chosen for the machine the inspector runs on.

One intra-op thread per *physical* core this process may use: hyper-threads share a core's vector units, so
a second thread per core adds contention, not throughput, for convolution-heavy graphs. The count honours
the CPU affinity mask (taskset, Kubernetes cpusets) and a cgroup v2 CPU quota (docker ``--cpus``), so a
container limited to 2 CPUs on a 64-core host does not start 64 threads. Graph optimisation is at its
highest level and execution is sequential (inter-op parallelism does not help a chain of convolutions).

The intra-op threads spin between the operators of one run (waking a sleeping thread per operator would
cost more than a small convolution), but stop spinning when the run ends (``session.force_spinning_stop``).
By default onnxruntime keeps them spinning after the run, and in the inspector the next thing after a run is
decoding the next frame: a spinning thread takes a core from that decode and from every other process on
the box. On the 2-core bench machine this halved a small model's inspector throughput when the machine was
busy and cost ~9 ms of CPU per frame when it was not (``bench/inference.py``, docs/benchmarks.md);
``allow_spinning=0`` instead also frees the CPU but slows the bare forward of a small model by a third.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import onnxruntime as ort

_SYS_CPU = Path("/sys/devices/system/cpu")
_CGROUP_CPU_MAX = Path("/sys/fs/cgroup/cpu.max")


def usable_cpus() -> list[int]:
    """CPU ids this process may run on."""
    try:
        return sorted(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return list(range(os.cpu_count() or 1))


def physical_cores(cpus: list[int] | None = None) -> int:
    """Distinct physical cores among ``cpus`` (from sysfs topology); the CPU count where that is unknown."""
    cpus = usable_cpus() if cpus is None else cpus
    cores: set[tuple[str, str]] = set()
    for cpu in cpus:
        topo = _SYS_CPU / f"cpu{cpu}" / "topology"
        try:
            cores.add(((topo / "physical_package_id").read_text().strip(), (topo / "core_id").read_text().strip()))
        except OSError:
            return max(1, len(cpus))
    return max(1, len(cores))


def cgroup_cpu_limit(path: Path = _CGROUP_CPU_MAX) -> int | None:
    """CPUs allowed by a cgroup v2 quota ("200000 100000" -> 2), or None without a quota."""
    try:
        quota, period = path.read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    try:
        return max(1, math.ceil(int(quota) / int(period)))
    except (ValueError, ZeroDivisionError):
        return None


def default_threads() -> int:
    """Intra-op threads for this machine: physical cores, capped by a container CPU quota."""
    threads = physical_cores()
    limit = cgroup_cpu_limit()
    return min(threads, limit) if limit else threads


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """Options for an inference session: ``threads`` intra-op threads (default: ``default_threads()``)."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = int(threads) if threads else default_threads()
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.force_spinning_stop", "1")  # spin within a run, not after it
    opts.log_severity_level = 3  # errors only: warnings about unused initializers are noise on the line
    return opts


def create_session(model_bytes: bytes, threads: int | None = None) -> ort.InferenceSession:
    """A CPU inference session for a serialised ONNX model."""
    return ort.InferenceSession(model_bytes, sess_options=session_options(threads), providers=["CPUExecutionProvider"])
