"""The outbox and its dispatcher: verdicts to the line in order, never lost, late ones as reject.

``Line.record(session, rows, started)`` adds one outbox row per (record, sink) to the session that commits the
records (``Pipeline._persist``), so an acknowledged frame always has its rows. For a line in ``line_cameras``
the first frame of a part id also adds the part verdict's rows, "pending"; the frame that completes the set of
cameras sets their decision (the worst). A pending part is passed over until its deadline, then delivered as
reject naming the missing cameras. ``Line.notify()`` after the
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

from sqlalchemy import delete, func, or_, select, text, update
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from andon.errors import AndonError
from andon.inspect.decision import worst_decision
from andon.service.db import writing
from andon.service.line.alarm_model import ALARM_ROW, alarm_message
from andon.service.line.errors import LineValueError, SinkUnavailableError
from andon.service.line.messages import Verdict
from andon.service.line.metrics import LineMetrics
from andon.service.line.refusals import Refusal, RefusalQueue, RefusedFrame
from andon.service.line.tables import LineOutbox
from andon.service.settings import Settings
from andon.service.tables import Inspection, utcnow

log = logging.getLogger("andon.service.line")

_PG_OUTBOX_LOCK = 0x616E646F6E02  # serialises outbox inserts on PostgreSQL (commit order = id order)
BATCH = 64
PRUNE_EVERY_S = 3600.0


class Sink(Protocol):
    name: str

    def wants(self, kind: str, line_id: str, camera_id: str | None) -> bool: ...
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
    if name == "opcua":
        from andon.service.line.opcua import OpcUaSink

        return OpcUaSink(settings)
    raise LineValueError(f"unknown line sink {name!r}; sinks: mqtt, modbus, opcua")


PENDING = "pending"


def late_verdict(row: LineOutbox, sequence: int, now: dt.datetime) -> Verdict:
    """The verdict as delivered now: the deadline rule applied (and, for a part, the missing-camera rule)."""
    late = now > row.deadline_at
    # the line was told reject for this part (a refused frame of it): a later verdict of it must not undo that
    refused = row.kind == "frame" and bool((row.detail or {}).get("refused"))
    cameras, missing = None, ()
    model_decision = row.decision
    if row.kind == "part":
        seen = (row.detail or {}).get("cameras", {})
        cameras = {c: v["decision"] for c, v in seen.items()}
        missing = tuple(c for c in (row.detail or {}).get("expected", []) if c not in seen)
        if row.decision == PENDING:
            model_decision = worst_decision(cameras.values())
    return Verdict(
        sequence=sequence,
        kind=row.kind,
        inspection_id=row.inspection_id,
        line_id=row.line_id,
        camera_id=row.camera_id,
        part_id=row.part_id,
        serial=row.serial,
        decision="reject" if late or missing or refused else row.decision,
        model_decision=model_decision,
        reason=row.reason,
        model_version=row.model_version,
        received_at=row.received_at,
        latency_ms=(now - row.received_at).total_seconds() * 1000.0,
        late=late,
        cameras=cameras,
        missing=missing,
        product=row.product,
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
        self.beats = 0  # heartbeat periods done (whether the beat was written or withheld)

    # ---- the loop --------------------------------------------------------------------------------------
    def _run(self) -> None:
        s = self.line.settings
        wait = s.line_retry_initial_s
        next_beat = 0.0
        next_prune = time.monotonic() + 60.0
        while not self.line.stopping.is_set():
            try:
                if s.line_outbox_keep_days is not None and time.monotonic() >= next_prune:
                    next_prune = time.monotonic() + PRUNE_EVERY_S
                    self.prune(utcnow() - dt.timedelta(days=s.line_outbox_keep_days))
                self.wake.clear()
                rows, due = self._pending()
                if rows:
                    self._deliver(rows)
                beat = time.monotonic() >= next_beat
                if beat:
                    self.sink.heartbeat(self.line.ready())
                    self.beats += 1
                    next_beat = time.monotonic() + s.line_heartbeat_s
                self._record_acks(check=beat)
                if self.failing is not None:
                    log.info("line sink %s works again", self.sink.name)
                self.failing = None
                self.line.metrics.up.labels(sink=self.sink.name).set(1)
                self.line.metrics.pending.labels(sink=self.sink.name).set(len(rows) if len(rows) == BATCH else 0)
                wait = s.line_retry_initial_s
                if not rows:
                    until = next_beat - time.monotonic()
                    if due is not None:  # a part still waiting for a camera: its deadline wakes us
                        until = min(until, (due - utcnow()).total_seconds() + 0.001)
                    self.wake.wait(max(0.0, until))
            except (AndonError, SQLAlchemyError) as exc:
                reason = getattr(exc, "message", None) or f"database: {type(exc).__name__}"
                m = self.line.metrics
                m.up.labels(sink=self.sink.name).set(0)
                m.failures.labels(sink=self.sink.name).inc()
                self._count_pending()
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

    def prune(self, before: dt.datetime) -> int:
        """Delete this sink's rows delivered before ``before``, except its newest delivered one (the sequence
        goes on from it after a restart). Undelivered rows are never deleted."""
        with self.line.sessions() as session:
            newest = session.scalar(
                select(func.max(LineOutbox.id)).where(
                    LineOutbox.sink == self.sink.name,
                    LineOutbox.delivered_at.is_not(None),
                    LineOutbox.sequence.is_not(None),  # a verdict's: alarm and refused rows carry no sequence
                )
            )
            if newest is None:
                return 0
            gone = session.execute(
                delete(LineOutbox).where(
                    LineOutbox.sink == self.sink.name,
                    LineOutbox.delivered_at.is_not(None),
                    LineOutbox.delivered_at < before,
                    LineOutbox.id < newest,
                )
            ).rowcount
            session.commit()
        if gone:
            log.info("line sink %s: deleted %d delivered outbox rows from before %s", self.sink.name, gone, before)
        return int(gone or 0)

    def _count_pending(self) -> None:
        try:
            with self.line.sessions() as session:
                n = session.scalar(
                    select(func.count())
                    .select_from(LineOutbox)
                    .where(LineOutbox.sink == self.sink.name, LineOutbox.delivered_at.is_(None))
                )
            self.line.metrics.pending.labels(sink=self.sink.name).set(n or 0)
        except SQLAlchemyError:
            pass  # the database is what failed; the gauge keeps its last value

    def _counter(self, row: LineOutbox) -> tuple[str, str]:
        """Which sequence a row counts in: the sink's one, or (where the sink counts per block) its camera's or,
        for a part verdict, its line's."""
        if not self.sink.counts_per_camera():
            return ("", "")
        return ("part", row.line_id) if row.kind == "part" else ("frame", row.camera_id or "")

    def _last_sequence(self, counter: tuple[str, str]) -> int:
        query = select(func.max(LineOutbox.sequence)).where(LineOutbox.sink == self.sink.name)
        kind, name = counter
        if kind == "part":
            query = query.where(LineOutbox.kind == "part", LineOutbox.line_id == name)
        elif kind == "frame":
            query = query.where(LineOutbox.kind == "frame", LineOutbox.camera_id == name)
        with self.line.sessions() as session:
            last = session.scalar(query)
        return int(last or 0)

    def _pending(self) -> tuple[Sequence[LineOutbox], dt.datetime | None]:
        """The sink's rows to deliver now, in id order (a part still waiting for a camera, before its deadline,
        is passed over: the verdicts behind it do not wait for it), and the earliest deadline of those waiting."""
        now = utcnow()
        undelivered = (LineOutbox.sink == self.sink.name, LineOutbox.delivered_at.is_(None))
        with self.line.sessions() as session:
            rows = session.scalars(
                select(LineOutbox)
                .where(*undelivered, or_(LineOutbox.decision != PENDING, LineOutbox.deadline_at <= now))
                .order_by(LineOutbox.id)
                .limit(BATCH)
            ).all()
            due = None
            if self.line.settings.line_cameras:
                due = session.scalar(
                    select(func.min(LineOutbox.deadline_at)).where(*undelivered, LineOutbox.decision == PENDING)
                )
        return rows, due

    def _deliver(self, rows: Sequence[LineOutbox]) -> None:
        """Send ``rows`` in order; mark those sent in one transaction, also when a later one fails."""
        first = dict(self.sequences)
        sent: list[tuple[int, Verdict | None, dt.datetime, str | None]] = []
        try:
            for row in rows:
                if self.line.stopping.is_set():
                    break
                if row.kind == ALARM_ROW:
                    self._deliver_alarm(row, sent)
                    continue
                counter = self._counter(row)
                if counter not in self.sequences:
                    self.sequences[counter] = self._last_sequence(counter)
                await_ack = getattr(self.sink, "await_ack", None)
                if await_ack is not None:  # the PLC acknowledges: its block's last verdict first (line/acks.py)
                    await_ack(row.kind, row.line_id, row.camera_id)
                now = utcnow()
                try:
                    verdict = late_verdict(row, self.sequences[counter] + 1, now)
                    self.sink.send(verdict)
                except SinkUnavailableError as exc:
                    self._note_failure(row.id, exc.message)
                    raise
                except LineValueError as exc:
                    # a row that can never be sent must not stop the line behind it: it is closed unsent (the
                    # PLC's per-part timeout rejects that part), with the reason, and the next one goes
                    log.error("line sink %s: outbox row %d refused, not sent: %s", self.sink.name, row.id, exc.message)
                    sent.append((row.id, None, now, exc.message))
                    self.line.metrics.delivered.labels(sink=self.sink.name, timing="refused").inc()
                    continue
                self.sequences[counter] = verdict.sequence
                sent.append((row.id, verdict, now, None))
                m = self.line.metrics
                m.delivered.labels(sink=self.sink.name, timing="late" if verdict.late else "on_time").inc()
                m.latency.labels(sink=self.sink.name).observe(verdict.latency_ms / 1000.0)
        finally:
            if sent:
                try:
                    self._mark(sent)
                except SQLAlchemyError:
                    self.sequences = first  # not recorded: they go again, with the same sequence numbers
                    raise
                self.delivered += len(sent)

    def _deliver_alarm(self, row: LineOutbox, sent: list) -> None:
        """An alarm event (``line.alarms``): to the sink's ``alarm``; no sequence number, no deadline rule."""
        now = utcnow()
        deliver = getattr(self.sink, "alarm", None)
        try:
            if deliver is None:
                raise LineValueError(f"line sink {self.sink.name} takes no alarms")
            deliver(alarm_message(row))
        except SinkUnavailableError as exc:
            self._note_failure(row.id, exc.message)
            raise
        except LineValueError as exc:
            log.error("line sink %s: alarm row %d refused, not sent: %s", self.sink.name, row.id, exc.message)
            sent.append((row.id, None, now, exc.message))
            return
        sent.append((row.id, None, now, None))

    def _record_acks(self, check: bool) -> None:
        """The PLC's acknowledgements the sink has resolved (line/acks.py; ``check``: once a heartbeat period,
        the sink looks at the acks still outstanding first): counted, the unacknowledged logged, each in its
        outbox row's ``detail["ack"]``."""
        if check and hasattr(self.sink, "check_acks"):
            self.sink.check_acks()
        take = getattr(self.sink, "take_acks", None)
        outcomes = take() if take is not None else []
        if not outcomes:
            return
        m = self.line.metrics
        for o in outcomes:
            m.acks.labels(sink=self.sink.name, outcome="acked" if o.acked else "unacked").inc()
            if o.acked:
                m.ack_latency.labels(sink=self.sink.name).observe(o.waited_s)
            else:
                where = f"line {o.line_id}" if o.kind == "part" else f"camera {o.camera_id}"
                log.warning(
                    "line sink %s: the PLC did not acknowledge verdict %d of %s within %.0f ms",
                    self.sink.name, o.sequence, where, o.waited_s * 1000.0,
                )  # fmt: skip
        with self.line.sessions() as session:
            for o in outcomes:
                query = select(LineOutbox).where(
                    LineOutbox.sink == self.sink.name, LineOutbox.kind == o.kind, LineOutbox.sequence == o.sequence
                )
                if o.kind == "part":
                    query = query.where(LineOutbox.line_id == o.line_id)
                else:
                    query = query.where(LineOutbox.camera_id == o.camera_id)
                row = session.scalars(query.order_by(LineOutbox.id.desc()).limit(1)).first()
                if row is not None:
                    ack = {"acked": o.acked, "waited_ms": round(o.waited_s * 1000.0, 3)}
                    row.detail = {**(row.detail or {}), "ack": ack}
            session.commit()

    def _mark(self, sent: list[tuple[int, Verdict | None, dt.datetime, str | None]]) -> None:
        with writing(self.line.sessions) as session:  # queued behind the frames' commits, not in the busy handler
            for row_id, verdict, at, refused in sent:
                session.execute(
                    update(LineOutbox)
                    .where(LineOutbox.id == row_id)
                    .values(
                        delivered_at=at,
                        delivered_decision=None if verdict is None else verdict.decision,
                        late=None if verdict is None else verdict.late,
                        sequence=None if verdict is None else verdict.sequence,
                        attempts=LineOutbox.attempts + 1,
                        last_error=None if refused is None else refused[:255],
                    )
                )
            session.commit()

    def _note_failure(self, row_id: int, message: str) -> None:
        try:
            with writing(self.line.sessions) as session:
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
        metrics: LineMetrics | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics or LineMetrics()
        self.sessions = sessions
        self._ready = ready
        self.stopping = threading.Event()
        sinks = sinks if sinks is not None else [make_sink(name, settings) for name in settings.line_sinks]
        self.workers = [SinkWorker(sink, self) for sink in sinks]
        self.refusals = RefusalQueue(self, settings.line_refused_queue)
        self._started = False

    def ready(self) -> bool:
        """The heartbeat's condition: a model is active and the service is not stopping."""
        return not self.stopping.is_set() and self._ready()

    # ---- the outbox ------------------------------------------------------------------------------------
    def record(self, session: Session, rows: Sequence[Inspection], started: float) -> None:
        """Add the outbox rows of ``rows`` to ``session`` (committed with them), and start or complete the part
        verdicts they belong to. ``started``: the request's ``time.perf_counter()`` at arrival, from which the
        deadline counts."""
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
                product=row.product,
                received_at=received,
                deadline_at=deadline,
                created_at=now,
                attempts=0,
                detail=self._refused_before(row),
            )
            for row in rows
            for w in self.workers
            if w.sink.wants("frame", row.line_id, row.camera_id)
        ]
        lines = self.settings.line_cameras
        parts = [r for r in rows if r.part_id and r.camera_id in lines.get(r.line_id, ())]
        if not outbox and not parts:
            return
        session.flush()  # the records first (the outbox rows name them)
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_OUTBOX_LOCK})
        session.add_all(outbox)
        for row in parts:
            self._part(session, row, received, deadline, now)

    def _part(
        self, session: Session, frame: Inspection, received: dt.datetime, deadline: dt.datetime, now: dt.datetime
    ) -> None:
        """Start the part's verdict (its first frame: the deadline counts from here) or add this camera to it;
        once every camera of the line has reported, its decision is the worst of theirs."""
        sinks = [w.sink.name for w in self.workers if w.sink.wants("part", frame.line_id, None)]
        if not sinks:
            return
        existing = session.scalars(
            select(LineOutbox).where(
                LineOutbox.kind == "part",
                LineOutbox.line_id == frame.line_id,
                LineOutbox.part_id == frame.part_id,
                LineOutbox.sink.in_(sinks),
            )
        ).all()
        if existing and all(r.delivered_at is not None for r in existing):
            log.info(
                "line %s: camera %s reported part %s after its part verdict went out; not counted",
                frame.line_id,
                frame.camera_id,
                frame.part_id,
            )
            return
        expected = list(self.settings.line_cameras[frame.line_id])
        detail = dict(existing[0].detail or {}) if existing else {"expected": expected, "cameras": {}}
        cameras = dict(detail.get("cameras", {}))
        before = cameras.get(frame.camera_id)
        if before is None or worst_decision([before["decision"], frame.decision]) != before["decision"]:
            cameras[frame.camera_id] = {
                "decision": frame.decision,
                "reason": frame.reason,
                "inspection_id": frame.id,
                "model_version": frame.model_version,
            }
        detail["cameras"] = cameras
        worst = None
        if all(c in cameras for c in detail["expected"]):
            decision = worst_decision(v["decision"] for v in cameras.values())
            worst = next(v for v in cameras.values() if v["decision"] == decision)
        for r in existing:
            if r.delivered_at is None:
                r.detail = detail
                if worst is not None:
                    r.decision, r.reason = worst["decision"], worst["reason"]
                    r.inspection_id, r.model_version = worst["inspection_id"], worst["model_version"]
        if existing:
            return
        first = worst or cameras[frame.camera_id]
        for sink in sinks:
            session.add(
                LineOutbox(
                    sink=sink,
                    kind="part",
                    inspection_id=first["inspection_id"],
                    line_id=frame.line_id,
                    camera_id=None,
                    part_id=frame.part_id,
                    serial=frame.serial,
                    decision=first["decision"] if worst is not None else PENDING,
                    reason=first["reason"] if worst is not None else None,
                    model_version=first["model_version"],
                    product=frame.product,
                    received_at=received,
                    deadline_at=deadline,
                    created_at=now,
                    attempts=0,
                    detail=detail,
                )
            )

    def serve_products(self, products) -> None:
        """Sinks that let the line switch its product (OPC UA's SelectRecipe) get ``products.select``."""
        for w in self.workers:
            if hasattr(w.sink, "select_recipe"):
                name = w.sink.name
                w.sink.select_recipe = lambda line, sku, _n=name: products.select(line, sku, source=_n).from_product

    def notify(self) -> None:
        for w in self.workers:
            w.wake.set()

    # ---- frames refused with 503 (line/refusals.py) ------------------------------------------------------
    def refuse(self, refusals: Sequence[Refusal]) -> int:
        """Queue reject verdicts for frames refused with 503 (never blocks); returns how many were queued."""
        return self.refusals.offer(refusals)

    def _refused_before(self, row: Inspection) -> dict | None:
        reason = self.refusals.refused_before(row.line_id, row.camera_id, row.part_id)
        return None if reason is None else {"refused": reason}

    def record_refused(self, session: Session, refusals: Sequence[Refusal]) -> None:
        """Add the reject verdicts of ``refusals`` to ``session``: a frame verdict per sink that takes the
        camera's, no record behind it; and the camera's report (reject) to its part verdict."""
        now = utcnow()
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_OUTBOX_LOCK})
        lines = self.settings.line_cameras
        for r in refusals:
            received = now - dt.timedelta(seconds=max(0.0, time.perf_counter() - r.started))
            deadline = received + dt.timedelta(milliseconds=self.settings.line_deadline_ms)
            for w in self.workers:
                if w.sink.wants("frame", r.line_id, r.camera_id):
                    session.add(
                        LineOutbox(
                            sink=w.sink.name,
                            kind="frame",
                            inspection_id=None,
                            line_id=r.line_id,
                            camera_id=r.camera_id,
                            part_id=r.part_id,
                            serial=r.serial,
                            decision="reject",
                            reason=r.reason,
                            model_version=r.model_version,
                            received_at=received,
                            deadline_at=deadline,
                            created_at=now,
                            attempts=0,
                            detail={"refused": r.reason},
                        )
                    )
            if r.camera_id in lines.get(r.line_id, ()):
                frame = RefusedFrame(r.line_id, r.camera_id, r.part_id, r.serial, r.reason, r.model_version)
                self._part(session, frame, received, deadline, now)  # type: ignore[arg-type]

    # ---- lifespan --------------------------------------------------------------------------------------
    def start(self) -> None:
        if not self._started:
            self._started = True
            for w in self.workers:
                w.thread.start()
            self.refusals.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the heartbeats and the deliveries; what is undelivered stays in the outbox for the next start."""
        self.refusals.stop()  # what is queued is written first: it goes out at the next start, as late rejects
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


def build_line(
    settings: Settings, sessions: Callable[[], Session], ready: Callable[[], bool], registry=None
) -> Line | None:
    """The line of ``settings`` (None when no sink is configured); its series in ``registry`` (the app's)."""
    if not settings.line_sinks:
        return None
    return Line(settings, sessions, ready, metrics=LineMetrics(registry))
