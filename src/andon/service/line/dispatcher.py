"""The outbox and its dispatcher: verdicts to the line in order, never lost, late ones as reject.

``Line.record(session, rows, started)`` adds one outbox row per (record, sink) to the session that commits the
records (``Pipeline._persist``), so an acknowledged frame always has its rows. ``Line.notify()`` after the
commit wakes the dispatcher: one thread per sink, each delivering that sink's undelivered rows in id order.

The deadline rule: when a row's delivery starts after ``received_at + line_deadline_ms``, it goes out as
decision "reject" with ``late`` set (the record and the outbox row keep the model's decision). A sink that
fails is retried with a doubling wait (``line_retry_initial_s`` .. ``line_retry_max_s``); nothing behind the
failed row is sent before it (strict order per sink). While a sink fails, and while the service has no
model or is stopping, its heartbeat stops.

Order: on SQLite writers are serialised, so ids are committed in order. On PostgreSQL the transaction takes a
transaction-level advisory lock before its outbox rows get their ids, so a row with a smaller id can never
commit after the dispatcher has seen a larger one.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import Protocol

from sqlalchemy import func, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from andon.errors import AndonError
from andon.service.line.errors import LineValueError, SinkUnavailableError
from andon.service.line.messages import Verdict
from andon.service.line.tables import LineOutbox
from andon.service.settings import Settings
from andon.service.tables import Inspection, utcnow

log = logging.getLogger("andon.service.line")

_PG_OUTBOX_LOCK = 0x616E646F6E02  # serialises outbox inserts on PostgreSQL (commit order = id order)
BATCH = 64


class Sink(Protocol):
    name: str

    def wants(self, camera_id: str | None) -> bool: ...
    def counts_per_camera(self) -> bool: ...
    def send(self, verdict: Verdict) -> None: ...
    def heartbeat(self, ready: bool) -> None: ...
    def close(self) -> None: ...


def make_sink(name: str, settings: Settings) -> Sink:
    if name == "mqtt":
        from andon.service.line.mqtt import MqttSink

        return MqttSink(settings)
    if name == "modbus":
        from andon.service.line.modbus import ModbusSink

        return ModbusSink(settings)
    raise LineValueError(f"unknown line sink {name!r}; sinks: mqtt, modbus")


def late_verdict(row: LineOutbox, sequence: int, now: dt.datetime) -> Verdict:
    """The verdict as delivered now: the deadline rule applied."""
    late = now > row.deadline_at
    return Verdict(
        sequence=sequence,
        kind=row.kind,
        inspection_id=row.inspection_id,
        line_id=row.line_id,
        camera_id=row.camera_id,
        part_id=row.part_id,
        serial=row.serial,
        decision="reject" if late else row.decision,
        model_decision=row.decision,
        reason=row.reason,
        model_version=row.model_version,
        received_at=row.received_at,
        latency_ms=(now - row.received_at).total_seconds() * 1000.0,
        late=late,
    )


class SinkWorker:
    """One sink's thread: heartbeat every period, and the sink's outbox rows in order."""

    def __init__(self, sink: Sink, line: Line) -> None:
        self.sink = sink
        self.line = line
        self.wake = threading.Event()
        self.thread = threading.Thread(target=self._run, name=f"andon-line-{sink.name}", daemon=True)
        #: the last sequence number delivered, per counter (the sink's, or each camera's where the sink counts per
        #: camera); read from the outbox when first needed, so a restart goes on from there
        self.sequences: dict[str, int] = {}
        self.failing: str | None = None  # why the last try failed (None: the sink works)
        self.delivered = 0

    # ---- the loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        s = self.line.settings
        wait = s.line_retry_initial_s
        next_beat = 0.0
        while not self.line.stopping.is_set():
            try:
                self.wake.clear()
                rows = self._pending()
                if rows:
                    self._deliver(rows)
                if time.monotonic() >= next_beat:
                    self.sink.heartbeat(self.line.ready())
                    next_beat = time.monotonic() + s.line_heartbeat_s
                if self.failing is not None:
                    log.info("line sink %s works again", self.sink.name)
                self.failing = None
                wait = s.line_retry_initial_s
                if not rows:
                    self.wake.wait(max(0.0, next_beat - time.monotonic()))
            except (AndonError, SQLAlchemyError) as exc:
                reason = getattr(exc, "message", None) or f"database: {type(exc).__name__}"
                if reason != self.failing:
                    log.warning("line sink %s: %s; retrying (at most every %.2f s)", self.sink.name, reason, wait)
                self.failing = reason
                next_beat = 0.0  # beat again as soon as the sink is back
                self.line.stopping.wait(wait)
                wait = min(wait * 2.0, s.line_retry_max_s)
            except Exception:  # noqa: BLE001 - the worker must outlive a bug in one delivery
                log.exception("line sink %s failed", self.sink.name)
                self.failing = "internal error (the log has it)"
                self.line.stopping.wait(wait)
                wait = min(wait * 2.0, s.line_retry_max_s)
        try:
            self.sink.close()
        except Exception:  # noqa: BLE001
            log.warning("line sink %s did not close cleanly", self.sink.name)

    def _counter(self, row: LineOutbox) -> str:
        return (row.camera_id or "") if self.sink.counts_per_camera() else ""

    def _last_sequence(self, counter: str) -> int:
        query = select(func.max(LineOutbox.sequence)).where(LineOutbox.sink == self.sink.name)
        if self.sink.counts_per_camera():
            query = query.where(LineOutbox.camera_id == counter)
        with self.line.sessions() as session:
            last = session.scalar(query)
        return int(last or 0)

    def _pending(self) -> Sequence[LineOutbox]:
        with self.line.sessions() as session:
            return session.scalars(
                select(LineOutbox)
                .where(LineOutbox.sink == self.sink.name, LineOutbox.delivered_at.is_(None))
                .order_by(LineOutbox.id)
                .limit(BATCH)
            ).all()

    def _deliver(self, rows: Sequence[LineOutbox]) -> None:
        """Send ``rows`` in order; mark those sent in one transaction, also when a later one fails."""
        first = dict(self.sequences)
        sent: list[tuple[int, Verdict, dt.datetime]] = []
        try:
            for row in rows:
                if self.line.stopping.is_set():
                    break
                counter = self._counter(row)
                if counter not in self.sequences:
                    self.sequences[counter] = self._last_sequence(counter)
                now = utcnow()
                verdict = late_verdict(row, self.sequences[counter] + 1, now)
                try:
                    self.sink.send(verdict)
                except SinkUnavailableError as exc:
                    self._note_failure(row.id, exc.message)
                    raise
                self.sequences[counter] = verdict.sequence
                sent.append((row.id, verdict, now))
        finally:
            if sent:
                try:
                    self._mark(sent)
                except SQLAlchemyError:
                    self.sequences = first  # not recorded: they go again, with the same sequence numbers
                    raise
                self.delivered += len(sent)

    def _mark(self, sent: list[tuple[int, Verdict, dt.datetime]]) -> None:
        with self.line.sessions() as session:
            for row_id, verdict, at in sent:
                session.execute(
                    update(LineOutbox)
                    .where(LineOutbox.id == row_id)
                    .values(
                        delivered_at=at,
                        delivered_decision=verdict.decision,
                        late=verdict.late,
                        sequence=verdict.sequence,
                        attempts=LineOutbox.attempts + 1,
                        last_error=None,
                    )
                )
            session.commit()

    def _note_failure(self, row_id: int, message: str) -> None:
        try:
            with self.line.sessions() as session:
                session.execute(
                    update(LineOutbox)
                    .where(LineOutbox.id == row_id)
                    .values(attempts=LineOutbox.attempts + 1, last_error=message[:255])
                )
                session.commit()
        except SQLAlchemyError:
            pass  # the count is for people; the retry does not need it


class Line:
    """The outbox writer and the dispatcher threads of the configured sinks."""

    def __init__(
        self,
        settings: Settings,
        sessions: Callable[[], Session],
        ready: Callable[[], bool],
        sinks: list[Sink] | None = None,
    ) -> None:
        self.settings = settings
        self.sessions = sessions
        self._ready = ready
        self.stopping = threading.Event()
        sinks = sinks if sinks is not None else [make_sink(name, settings) for name in settings.line_sinks]
        self.workers = [SinkWorker(sink, self) for sink in sinks]
        self._started = False

    def ready(self) -> bool:
        """The heartbeat's condition: a model is active and the service is not stopping."""
        return not self.stopping.is_set() and self._ready()

    # ---- the outbox ------------------------------------------------------------------------------------
    def record(self, session: Session, rows: Sequence[Inspection], started: float) -> None:
        """Add the outbox rows of ``rows`` to ``session`` (committed with them). ``started``: the request's
        ``time.perf_counter()`` at arrival, from which the deadline counts."""
        now = utcnow()
        received = now - dt.timedelta(seconds=max(0.0, time.perf_counter() - started))
        deadline = received + dt.timedelta(milliseconds=self.settings.line_deadline_ms)
        outbox = [
            LineOutbox(
                sink=w.sink.name,
                kind="frame",
                inspection_id=row.id,
                line_id=row.line_id,
                camera_id=row.camera_id,
                part_id=row.part_id,
                serial=row.serial,
                decision=row.decision,
                reason=row.reason,
                model_version=row.model_version,
                received_at=received,
                deadline_at=deadline,
                created_at=now,
                attempts=0,
            )
            for row in rows
            for w in self.workers
            if w.sink.wants(row.camera_id)
        ]
        if not outbox:
            return
        session.flush()  # the records first (the outbox rows name them)
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_OUTBOX_LOCK})
        session.add_all(outbox)

    def notify(self) -> None:
        for w in self.workers:
            w.wake.set()

    # ---- lifespan --------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self._started:
            self._started = True
            for w in self.workers:
                w.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the heartbeats and the deliveries; what is undelivered stays in the outbox for the next start."""
        self.stopping.set()
        self.notify()
        for w in self.workers:
            if w.thread.is_alive():
                w.thread.join(timeout)

    def status(self) -> dict[str, dict]:
        return {
            w.sink.name: {"failing": w.failing, "delivered": w.delivered, "sequences": dict(w.sequences)}
            for w in self.workers
        }


def build_line(settings: Settings, sessions: Callable[[], Session], ready: Callable[[], bool]) -> Line | None:
    """The line of ``settings`` (None when no sink is configured)."""
    return Line(settings, sessions, ready) if settings.line_sinks else None
