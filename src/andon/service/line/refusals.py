"""Frames refused with 503 (the service overloaded, or without a model) as reject verdicts on the line.

A refused frame has no record, so it would have no verdict on the line: the PLC's per-part timeout would have
to catch it. When the refused request names its line, camera and part id, ``Line.refuse`` puts a ``Refusal``
on a bounded in-memory queue (no image is read or decoded; the call never blocks and never touches the
database on the request's path), and one writer thread turns what is queued into outbox rows, in one
transaction per batch: a frame verdict "reject" with reason "overload" or "no model" and no inspection, for
every sink that takes that camera's verdicts, and the camera's report to its part verdict (a part of
``line_cameras`` with a refused camera is rejected). From there the dispatcher delivers them like any verdict:
in order, with their sequence numbers, the deadline counted from the refused request's arrival.

What the queue costs under overload is a few hundred bytes per refusal and one small transaction per batch
(a burst of refusals is one commit). When even that cannot be done, the refusal is dropped, logged and counted
(``andon_line_refusals_total{outcome="dropped"}``: the queue was full; ``"failed"``: the database did not take
the batch), and the PLC's per-part timeout rejects the part, as before. Nothing else is stored.

A later verdict for the same (line, camera, part id) in this process (the camera retried the frame after its
Retry-After) is delivered as reject too: the line was told reject for that part, and a pass behind it must
not undo that. The model's own decision stays in the record and in ``model_decision``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy.exc import SQLAlchemyError

from andon.service.db import writing

log = logging.getLogger("andon.service.line")

OVERLOAD, NO_MODEL = "overload", "no model"
BATCH = 256
#: (line, camera, part id) of refused frames remembered for their retries, newest kept
REMEMBERED = 4096


@dataclass(frozen=True)
class Refusal:
    line_id: str
    camera_id: str
    part_id: str
    serial: str | None
    #: "overload" or "no model"
    reason: str
    #: ``time.perf_counter()`` when the refused request arrived: the deadline counts from here
    started: float
    #: the active model's version when refused ("" when there is none)
    model_version: str = ""


@dataclass
class RefusedFrame:
    """What ``Line._part`` reads of a frame: a refused camera's report to its part verdict (no record)."""

    line_id: str
    camera_id: str
    part_id: str
    serial: str | None
    reason: str
    model_version: str
    decision: str = "reject"
    id: str | None = None
    product: str | None = None


class RefusalQueue:
    """Bounded, never blocking the caller: ``offer`` from the request path, one thread writes the batches."""

    def __init__(self, line, size: int) -> None:
        self.line = line
        self.size = size
        self._items: deque[Refusal] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._remembered: OrderedDict[tuple[str, str, str], str] = OrderedDict()
        self.thread = threading.Thread(target=self._run, name="andon-line-refusals", daemon=True)
        self.written = 0
        self.dropped = 0
        self.failed = 0

    # ---- the request path ------------------------------------------------------------------------------
    def offer(self, refusals: Sequence[Refusal]) -> int:
        """Queue what fits; returns how many were queued (the rest are dropped, counted and logged)."""
        if self.size == 0:
            return 0  # turned off (line_refused_queue: 0): refused frames get no verdict on the line
        with self._cv:
            for r in refusals:
                key = (r.line_id, r.camera_id, r.part_id)
                self._remembered[key] = r.reason
                self._remembered.move_to_end(key)
                if len(self._remembered) > REMEMBERED:
                    self._remembered.popitem(last=False)
            room = 0 if self._stopping else max(0, self.size - len(self._items))
            queued = list(refusals[:room])
            self._items.extend(queued)
            if queued:
                self._cv.notify()
        dropped = len(refusals) - len(queued)
        if queued:
            self.line.metrics.refusals.labels(outcome="queued").inc(len(queued))
        if dropped:
            self.dropped += dropped
            self.line.metrics.refusals.labels(outcome="dropped").inc(dropped)
            if self.dropped == dropped or self.dropped % 100 < dropped:  # the first, then every 100th
                log.warning(
                    "line: %d refused frames dropped so far (refusal queue of %d full); the PLC's per-part "
                    "timeout must reject them",
                    self.dropped,
                    self.size,
                )
        return len(queued)

    def refused_before(self, line_id: str, camera_id: str, part_id: str | None) -> str | None:
        """The reason a frame of this part was refused earlier in this process, if it was."""
        if not part_id:
            return None
        with self._cv:
            return self._remembered.get((line_id, camera_id, part_id))

    # ---- the writer --------------------------------------------------------------------------------------
    def start(self) -> None:
        if self.size > 0 and not self.thread.is_alive():
            self.thread.start()

    def stop(self, timeout: float = 2.0) -> None:
        """Write what is queued (for at most ``timeout``), then stop."""
        with self._cv:
            self._stopping = True
            self._cv.notify()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        while True:
            with self._cv:
                while not self._items and not self._stopping:
                    self._cv.wait()
                if not self._items:
                    return
                batch = [self._items.popleft() for _ in range(min(BATCH, len(self._items)))]
            self._write(batch)

    def _write(self, batch: list[Refusal]) -> None:
        t0 = time.perf_counter()
        try:
            with writing(self.line.sessions) as session:
                self.line.record_refused(session, batch)
                session.commit()
        except SQLAlchemyError as exc:
            self.failed += len(batch)
            self.line.metrics.refusals.labels(outcome="failed").inc(len(batch))
            log.warning(
                "line: %d reject verdicts of refused frames not written (database: %s); the PLC's per-part "
                "timeout must reject them",
                len(batch),
                type(exc).__name__,
            )
            return
        self.written += len(batch)
        self.line.notify()
        log.debug("line: %d refused frames queued as rejects in %.1f ms", len(batch), (time.perf_counter() - t0) * 1e3)
