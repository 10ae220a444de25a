"""The small benchmarks run end to end at a toy size and measure what their docs say (figures: docs/benchmarks.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest


def test_fixed_cost_measures_both_cases(tmp_path: Path) -> None:
    from bench.fixed_cost import main

    out = tmp_path / "fixed.json"
    perf = shutil.which("perf") is not None  # Debian's linux-perf; without it the rest is still checked
    # the bench itself checks every answer: 201, and image_stored as the case says (it exits otherwise)
    main(["--requests", "100", "--connections", "2", "--out", str(out), *(["--perf"] if perf else [])])
    results = json.loads(out.read_text())
    assert set(results) == {"nothing stored", "every frame stored"}
    for name, r in results.items():
        assert r["requests_per_s"] > 0, (name, r)
        assert r["in_process_cpu_ms_per_frame"] > 0, (name, r)
        # a request through HTTP, auth, intake and the record costs more than the inspection alone
        assert r["fixed_cpu_ms"] > 0, (name, r)
        assert r["cpu_ms_per_request"] == pytest.approx(r["in_process_cpu_ms_per_frame"] + r["fixed_cpu_ms"])
        # the threads' split adds up to the process's CPU (both read from /proc, in clock ticks: 0.1 ms a
        # request at 100 requests; threads that ended in between are the slack)
        by_thread = sum(v["ms"] for v in r["threads_cpu_ms_per_request"].values())
        assert by_thread == pytest.approx(r["cpu_ms_per_request"], abs=0.5), r
        assert r["threads_cpu_ms_per_request"]["event loop"]["ms"] > 0, r
        if perf:
            shares = r["event_loop_by_binary_pct"]
            # the event loop runs Python (uvicorn, Starlette, FastAPI, the routes): the interpreter is in it
            assert any("python" in name for name in shares), shares  # libpython3.x.so, or a static python3.x
            assert 90.0 <= sum(shares.values()) <= 100.5, shares


def test_perf_shares_reads_perf_reports_dso_table() -> None:
    from bench.fixed_cost import perf_shares

    report = """# Samples: 2K of event 'cpu-clock:ppp'
#
    57.00%  libpython3.11.so.1.0
    23.62%  [kernel.kallsyms]
     3.31%  loop.cpython-311-x86_64-linux-gnu.so
"""
    assert perf_shares(report) == {
        "libpython3.11.so.1.0": 57.0,
        "[kernel.kallsyms]": 23.62,
        "loop.cpython-311-x86_64-linux-gnu.so": 3.31,
    }


def test_pixels_andon_matches_opencv_within_one_grey_level() -> None:
    pytest.importorskip("cv2", reason="bench.pixels compares against OpenCV: the [data] extra")
    from bench.pixels import run

    rows = run(rounds=1, say=lambda *_: None)
    assert [r["geometry"] for r in rows] == [
        "224 gray stretch",
        "224 gray letterbox",
        "224 rgb stretch",
        "224 rgb letterbox",
    ]
    for r in rows:
        assert r["max_tensor_diff_levels"] <= 1.0, r  # docs/benchmarks.md: at most one grey level
        for side in ("andon", "opencv"):
            assert all(v > 0 for v in r[side].values()), r
        assert r["ratio"] > 0, r
