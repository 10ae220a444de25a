"""kill -9 loop: ``andon serve`` (a real process: SQLite + local disk, a tiny model) is SIGKILLed at random
moments, during start-up too, while client threads post frames, and restarted, 50 times. Afterwards every 2xx
answer is in the database with its image and the image's sha256 is the posted bytes'; no temp file and no
orphan is left after the last start-up; no record lacks its image; PRAGMA integrity_check is ok.

The long version is ``python -m bench.durability kill --kills 200`` (docs/reliability.md has its figures).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for the bench package

from bench.durability import kill_loop  # noqa: E402

pytestmark = pytest.mark.slow


def test_every_acknowledged_frame_survives_50_kill_9(tmp_path, tiny_model_path):
    report = kill_loop(tmp_path, tiny_model_path, kills=50, seed=14, say=print)
    print("\n".join(report.lines()))
    assert report.kills == 50
    assert report.acked > 0  # frames were acknowledged between the kills (else the loop proves nothing)
    assert report.lost == []
    final = report.final
    assert final is not None
    assert final.temp_files == [] and final.orphans == []
    assert final.missing_images == []  # the image is written before its record: no record without it
    assert final.integrity == []
