"""The PLC's acknowledgement of each verdict (optional, per sink: ``modbus_ack_timeout_ms``,
``opcua_ack_timeout_ms``; docs/line.md "PLC acknowledgement").

With acknowledgements on, the PLC writes the sequence number of the verdict it has taken into its block's ack
register (Modbus) or ``Ack`` variable (OPC UA). Before andon writes the next verdict into a block it waits for
the PLC to acknowledge the last one, up to the timeout; then it writes anyway and records the last one as
unacknowledged. A verdict is "acknowledged" only when the PLC wrote its sequence back.

``AckTracker`` keeps, per block, the verdict written last and not yet resolved, and the outcomes (acknowledged
or not) for the dispatcher to record (``take``): a metric, a log line for the unacknowledged, and the outbox
row's ``detail["ack"]``.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from dataclasses import dataclass

from andon.service.line.messages import Verdict
from andon.service.tables import utcnow

#: a block: ("frame", camera id) or ("part", line id)
Block = tuple[str, str]


def block_of(kind: str, line_id: str, camera_id: str | None) -> Block:
    return ("part", line_id) if kind == "part" else ("frame", camera_id or "")


@dataclass(frozen=True)
class AckOutcome:
    kind: str
    line_id: str
    camera_id: str | None
    sequence: int  # the outbox's sequence number (not wrapped to the register's width)
    acked: bool
    written_at: dt.datetime
    #: from the verdict's write to the ack (acked), or to the moment andon stopped waiting (not acked)
    waited_s: float


@dataclass
class _Waiting:
    verdict: Verdict
    wire: int  # the sequence as the PLC sees it (16-bit on Modbus)
    written: float  # time.monotonic()
    written_at: dt.datetime


class AckTracker:
    """Thread-safe: the sink's writer and (for OPC UA) the server's loop both touch it."""

    def __init__(self, timeout_ms: float) -> None:
        self.timeout_s = timeout_ms / 1000.0
        self._waiting: dict[Block, _Waiting] = {}
        self._outcomes: list[AckOutcome] = []
        self._cond = threading.Condition()

    def written(self, verdict: Verdict, wire: int) -> None:
        """``verdict`` is now in its block (as ``wire``): the PLC is to acknowledge it."""
        with self._cond:
            self._waiting[block_of(verdict.kind, verdict.line_id, verdict.camera_id)] = _Waiting(
                verdict, wire, time.monotonic(), utcnow()
            )

    def waiting_on(self, block: Block) -> int | None:
        """The sequence (as the PLC sees it) ``block`` waits to have acknowledged, or None."""
        with self._cond:
            w = self._waiting.get(block)
            return None if w is None else w.wire

    def waiting_blocks(self) -> list[tuple[Block, int]]:
        with self._cond:
            return [(b, w.wire) for b, w in self._waiting.items()]

    def acked(self, block: Block, value: int) -> bool:
        """The PLC wrote ``value`` into ``block``'s ack: True when that acknowledges the verdict waiting."""
        with self._cond:
            w = self._waiting.get(block)
            if w is None or w.wire != value:
                return False
            del self._waiting[block]
            self._outcomes.append(self._outcome(w, True))
            self._cond.notify_all()
            return True

    def expire(self, now: float | None = None) -> None:
        """Record every verdict whose timeout has passed as unacknowledged (it stops waiting)."""
        now = time.monotonic() if now is None else now
        with self._cond:
            for block, w in list(self._waiting.items()):
                if now - w.written >= self.timeout_s:
                    del self._waiting[block]
                    self._outcomes.append(self._outcome(w, False))

    def remaining(self, block: Block) -> float:
        """Seconds ``block`` may still wait for its acknowledgement (0: none waiting, or it timed out)."""
        with self._cond:
            w = self._waiting.get(block)
            return 0.0 if w is None else max(0.0, w.written + self.timeout_s - time.monotonic())

    def wait(self, block: Block, timeout: float) -> bool:
        """Wait (on the server's notification) until ``block`` has nothing waiting; True when it has not."""
        with self._cond:
            return self._cond.wait_for(lambda: block not in self._waiting, timeout)

    def take(self) -> list[AckOutcome]:
        with self._cond:
            out, self._outcomes = self._outcomes, []
            return out

    def _outcome(self, w: _Waiting, acked: bool) -> AckOutcome:
        v = w.verdict
        return AckOutcome(v.kind, v.line_id, v.camera_id, v.sequence, acked, w.written_at, time.monotonic() - w.written)
