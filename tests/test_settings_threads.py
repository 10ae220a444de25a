"""Threads per worker: with ``--workers N`` each process takes its share of the cores, not all of them."""

from __future__ import annotations

import pytest

from andon.service.settings import Settings


@pytest.mark.parametrize(
    "cores,workers,inference,intra",
    [(2, 1, 2, 1), (2, 2, 1, 1), (8, 1, 4, 2), (8, 2, 4, 1), (8, 4, 2, 1), (16, 2, 4, 2), (1, 4, 1, 1)],
)
def test_default_threads_split_the_cores_between_workers(monkeypatch, tmp_path, cores, workers, inference, intra):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(cores)))
    s = Settings.load(data_dir=tmp_path, workers=workers)
    assert (s.inference_threads, s.intra_op_threads) == (inference, intra)
    assert s.workers * s.inference_threads * s.intra_op_threads <= max(cores, workers)  # never oversubscribed


def test_explicit_threads_are_kept(monkeypatch, tmp_path):
    monkeypatch.setattr("os.sched_getaffinity", lambda _pid: set(range(8)))
    s = Settings.load(data_dir=tmp_path, workers=2, inference_threads=3, intra_op_threads=2)
    assert (s.inference_threads, s.intra_op_threads) == (3, 2)
