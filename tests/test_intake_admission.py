"""Admission counts memory, not only frames: huge reservations share half the budget and half the threads,
so a few huge frames are refused (503 + Retry-After) or wait while normal frames pass."""

from __future__ import annotations

import asyncio
import threading

import pytest

from andon.service.admission import Admission
from andon.service.errors import OverloadedError

MB = 1024 * 1024


def test_reservations_within_the_budget_pass_and_are_given_back():
    admission = Admission(2, 6, memory_bytes=64 * MB)
    assert admission.share == 4 * MB  # 64 MB / 2 / 8 slots
    held = [admission.reserve(3 * MB) for _ in range(10)]  # normal frames: 30 MB
    assert admission.bytes_in_flight == 30 * MB and not any(r.large for r in held)
    for r in held:
        admission.unreserve(r)
    assert admission.bytes_in_flight == 0


def test_huge_reservations_hold_at_most_half_the_budget_and_normal_ones_still_fit():
    admission = Admission(2, 6, memory_bytes=64 * MB, retry_after=7)
    huge = [admission.reserve(10 * MB, "a bomb") for _ in range(3)]  # 30 MB of the 32 MB for large ones
    assert all(r.large for r in huge)
    with pytest.raises(OverloadedError, match=r"a bomb needs 10.0 MB, 30.0 MB of 64 MB are admitted") as err:
        admission.reserve(10 * MB, "a bomb")
    assert err.value.retry_after == 7
    normal = [admission.reserve(4 * MB) for _ in range(8)]  # one normal frame per slot still fits
    assert admission.bytes_in_flight == 62 * MB
    with pytest.raises(OverloadedError, match="memory budget full"):
        admission.reserve(4 * MB)  # the whole budget is a bound too
    for r in huge + normal:
        admission.unreserve(r)
    assert admission.bytes_in_flight == 0
    assert admission.reserve(30 * MB).large  # with the bombs gone, a large frame fits again


def test_without_a_budget_memory_is_not_counted():
    admission = Admission(1, 0)
    assert admission.reserve(10**12).nbytes == 10**12 and admission.bytes_in_flight == 0


def test_large_work_holds_at_most_half_the_threads_so_normal_frames_find_one():
    async def scenario() -> list[str]:
        admission = Admission(2, 6, memory_bytes=64 * MB)
        release, entered = threading.Event(), threading.Event()
        started: list[str] = []

        def huge() -> str:
            started.append("huge")
            entered.set()
            release.wait(30)
            return "huge"

        bombs = [asyncio.create_task(admission.run(huge, large=True)) for _ in range(2)]
        assert await asyncio.to_thread(entered.wait, 30)
        try:
            # with both threads taken by huge decodes this would wait until they end; it gets the free one
            result, _ = await admission.run(lambda: started.append("normal") or "normal")
            assert result == "normal"
            seen = list(started)
        finally:
            release.set()
            await asyncio.gather(*bombs)
            admission.shutdown()
        return seen

    assert asyncio.run(scenario()) == ["huge", "normal"]  # the second huge one waited for the first
