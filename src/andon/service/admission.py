"""Admission control and the inference thread pool: a bounded queue in front of the CPU.

Inference is CPU-bound and onnxruntime releases the GIL, so it runs on a small dedicated thread pool (one
thread per concurrent inference), never on the event loop. At most ``workers + queue_size`` frames wait
for or are in inference at once; a frame beyond that is refused at once with 503 and Retry-After. Latency
therefore stays bounded under overload (at most a full queue ahead of any frame) and so does memory (admitted
bodies only), instead of both growing without limit. A frame gives its slot back when its inference returns:
one that waits for storage (a slow fsync, a WAL checkpoint) holds memory, counted below, not a slot.

Frames are not all the same size, so memory is counted too: ``reserve(nbytes)`` admits bytes (a body while it
is read, a frame's decoded pixels while it is inspected) against a budget, or raises ``OverloadedError``
(503 + Retry-After). Reservations over a frame's share (``budget / 2 / capacity``) together hold at most half
the budget, so a few huge frames are refused while normal frames still fit; and their inference holds at
most half the threads (``run(..., large=True)``), so normal frames still find a thread.
"""

from __future__ import annotations

import asyncio
import ctypes
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from andon.service.errors import OverloadedError

T = TypeVar("T")

_MB = 1024 * 1024
_PR_SET_NAME = 15


def name_os_thread() -> None:
    """Give the calling thread its Python name in the OS too (Linux ``prctl(PR_SET_NAME)``, 15 bytes at most), so
    that ``top -H``, ``/proc/PID/task/TID/comm`` and CPU accounting per thread can tell the inference threads from
    the rest (Python 3.11 leaves every thread the process's name there). Elsewhere it does nothing."""
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (AttributeError, OSError, TypeError):  # no prctl (macOS); no CDLL(None) (Windows)
        return
    prctl(_PR_SET_NAME, ctypes.c_char_p(threading.current_thread().name.encode()[:15]), 0, 0, 0)


@dataclass(frozen=True)
class Reservation:
    """Bytes admitted by ``Admission.reserve``; give it back to ``unreserve``."""

    nbytes: int
    large: bool


class Admission:
    def __init__(
        self,
        workers: int,
        queue_size: int,
        *,
        memory_bytes: int | None = None,
        retry_after: int = 1,
        on_depth: Callable[[int], None] | None = None,
    ) -> None:
        self.workers = workers
        self.capacity = workers + queue_size
        self.retry_after = retry_after
        self.executor = ThreadPoolExecutor(
            max_workers=workers, thread_name_prefix="andon-infer", initializer=name_os_thread
        )
        self._pending = 0
        self._lock = threading.Lock()
        self._on_depth = on_depth
        #: bytes that may be admitted at once (None: memory is not counted)
        self.memory_bytes = memory_bytes
        self._bytes = 0
        self._large_bytes = 0
        self._large_gate: asyncio.Semaphore | None = None  # made on first use, in the event loop

    @property
    def share(self) -> int:
        """A reservation up to this size is a normal frame's; larger ones share half the budget."""
        return 0 if self.memory_bytes is None else self.memory_bytes // (2 * self.capacity)

    @property
    def bytes_in_flight(self) -> int:
        return self._bytes

    def reserve(self, nbytes: int, what: str = "this frame") -> Reservation:
        """Admit ``nbytes`` of memory or raise ``OverloadedError`` (503 + Retry-After)."""
        nbytes = max(0, int(nbytes))
        if self.memory_bytes is None:
            return Reservation(nbytes, False)
        large = nbytes > self.share
        with self._lock:
            fits = self._bytes + nbytes <= self.memory_bytes
            if large:
                fits = fits and self._large_bytes + nbytes <= self.memory_bytes // 2
            if fits:
                self._bytes += nbytes
                if large:
                    self._large_bytes += nbytes
            in_flight = self._bytes
        if not fits:
            pool = f" (frames over {self.share / _MB:.1f} MB share half of it)" if large else ""
            raise OverloadedError(
                f"memory budget full: {what} needs {nbytes / _MB:.1f} MB, {in_flight / _MB:.1f} MB of "
                f"{self.memory_bytes / _MB:.0f} MB are admitted{pool}; retry in {self.retry_after} s",
                retry_after=self.retry_after,
            )
        return Reservation(nbytes, large)

    def unreserve(self, reservation: Reservation) -> None:
        if self.memory_bytes is None:
            return
        with self._lock:
            self._bytes -= reservation.nbytes
            if reservation.large:
                self._large_bytes -= reservation.nbytes

    @property
    def depth(self) -> int:
        return self._pending

    @property
    def load(self) -> float:
        return self._pending / self.capacity

    def try_acquire(self, n: int = 1) -> bool:
        n = min(n, self.capacity)  # a batch larger than the queue can still pass through an empty one
        with self._lock:
            if self._pending + n > self.capacity:
                return False
            self._pending += n
            depth = self._pending
        if self._on_depth:
            self._on_depth(depth)
        return True

    def acquire(self, n: int = 1) -> int:
        """Admit ``n`` frames or raise ``OverloadedError``; returns the weight to ``release``."""
        if not self.try_acquire(n):
            raise OverloadedError(
                f"inference queue full ({self.capacity} frames admitted); retry in {self.retry_after} s",
                retry_after=self.retry_after,
            )
        return min(n, self.capacity)

    def release(self, n: int) -> None:
        with self._lock:
            self._pending -= n
            depth = self._pending
        if self._on_depth:
            self._on_depth(depth)

    async def run(self, fn: Callable[[], T], *, large: bool = False) -> tuple[T, float]:
        """Run ``fn`` on the inference pool; returns (result, ms spent waiting for a thread).

        ``large`` (work on a large reservation): such jobs hold at most half the threads (at least one), so
        that frames within their share always find a thread free of huge decodes when there are two or more.
        """
        submitted = time.perf_counter()
        started: list[float] = []

        def job() -> T:
            started.append(time.perf_counter())
            return fn()

        if not large:
            result = await asyncio.wrap_future(self.executor.submit(job))
        else:
            if self._large_gate is None:
                self._large_gate = asyncio.Semaphore(max(1, self.workers // 2))
            async with self._large_gate:
                result = await asyncio.wrap_future(self.executor.submit(job))
        return result, (started[0] - submitted) * 1000.0

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True, cancel_futures=False)
