"""Graceful shutdown under load: ``andon serve`` gets SIGTERM while client threads have frames in flight. The
requests in flight finish (answers arrive after the signal), the application's shutdown runs to its end (uvicorn
logs it; the process then exits by the signal it got, as uvicorn re-raises it), every 2xx is in the
database with its image after the restart, and no record exists that no client was answered for (a request
cut off after its commit would leave one).

The long version is ``python -m bench.durability sigterm --rounds 10``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for the bench package

from bench.durability import sigterm_rounds  # noqa: E402

pytestmark = pytest.mark.slow


def test_sigterm_lets_in_flight_frames_finish_and_every_2xx_is_durable(tmp_path, tiny_model_path):
    report = sigterm_rounds(tmp_path, tiny_model_path, rounds=3, seed=14, threads=8, say=print)
    print("\n".join(report.lines()))
    assert report.rounds == 3 and report.clean_shutdowns == 3
    assert report.answered_after_term > 0  # requests were in flight at the signal, and were answered
    assert report.lost == []
    assert report.unanswered_records == []
    final = report.final
    assert final.temp_files == [] and final.orphans == [] and final.missing_images == [] and final.integrity == []
