"""The alarm evaluator: the dashboard's "needs attention" figures, watched every ``alarm_interval_s``.

Each evaluation reads the frames of the last ``alarm_window_s`` (``quality.records.frames``), cut into
subgroups of ``alarm_subgroup_s`` that end now, and judges the newest subgroup with the dashboard's own code:

* ``p_chart``: the rates of ``quality.series.rate_series`` on ``quality.stats.p_chart`` limits (centre = the
  window's rate, +- ``alarm_p_chart_sigmas``), per line or per camera (``alarm_p_chart_scope``);
* ``score_drift``: ``review.dashboard.drift`` per line (PSI of the newest model version's scores in the window
  against its first frames), raised at ``alarm_drift_psi`` or above;
* ``frame_quality``: ``review.dashboard.quality_series`` per camera (subgroup medians against the camera's
  usual band), the newest subgroup's median outside median +- ``alarm_quality_sigmas`` robust sigma.

A newest subgroup with fewer than ``alarm_min_frames`` frames (or a figure the dashboard cannot compute yet:
drift needs 100 frames before and after its reference) is not judged: its alarm stays as it is. An alarm
whose line or camera has no frames in the window any more, or whose kind was turned off, is cleared.

Raises and clears are written to ``line_alarms`` with one outbox row per sink that takes alarms (kind
"alarm"), in one transaction, so the dispatcher delivers them in order with the verdicts and keeps them while
a sink is down. At start the evaluator queues one "state" row per line with an alarm register or an active
alarm, so a PLC and the broker get the current state after a restart.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from sqlalchemy import select, text
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from andon.service.line.alarm_model import (
    ALARM_ROW,
    CLEARED,
    FRAME_QUALITY,
    P_CHART,
    RAISED,
    SCORE_DRIFT,
    STATE,
    AlarmMessage,
    LineAlarm,
    alarm_key,
)
from andon.service.line.dispatcher import _PG_OUTBOX_LOCK, Line
from andon.service.line.tables import LineOutbox
from andon.service.quality import records, stats
from andon.service.quality.series import rate_series
from andon.service.review import dashboard as dash
from andon.service.settings import Settings
from andon.service.tables import utcnow

log = logging.getLogger("andon.service.line")


@dataclass
class Condition:
    """One alarm's figure in the newest subgroup: ``out`` when it is outside [low, high]."""

    kind: str
    signal: str
    line_id: str
    camera_id: str | None
    value: float
    low: float | None
    high: float | None
    out: bool
    detail: dict = field(default_factory=dict)


@dataclass
class Evaluation:
    at: dt.datetime
    frames: int
    raised: list[dict]
    cleared: list[dict]
    active: int
    ms: float


def subgroup_edges(now: dt.datetime, window_s: float, subgroup_s: float) -> np.ndarray:
    """Subgroup boundaries (epoch seconds) ending at ``now``: the newest subgroup is the last ``subgroup_s``."""
    count = max(2, int(window_s // subgroup_s))
    return now.timestamp() - subgroup_s * np.arange(count, -1, -1, dtype=np.float64)


def active_alarms(session: Session, line_id: str | None = None) -> list[LineAlarm]:
    query = select(LineAlarm).where(LineAlarm.cleared_at.is_(None))
    if line_id:
        query = query.where(LineAlarm.line_id == line_id)
    return list(session.scalars(query.order_by(LineAlarm.raised_at, LineAlarm.id)))


def recent_alarms(session: Session, limit: int, line_id: str | None = None) -> list[LineAlarm]:
    """The newest ``limit`` alarms, active or cleared, newest first."""
    query = select(LineAlarm)
    if line_id:
        query = query.where(LineAlarm.line_id == line_id)
    return list(session.scalars(query.order_by(LineAlarm.id.desc()).limit(limit)))


class AlarmEvaluator:
    def __init__(self, settings: Settings, sessions: Callable[[], Session], line: Line | None = None) -> None:
        self.settings = settings
        self.sessions = sessions
        self.line = line
        self.kinds = frozenset(settings.alarms)
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._run, name="andon-alarms", daemon=True)
        self.last: Evaluation | None = None
        self.failing: str | None = None
        self._synced = False
        self._lock = threading.Lock()  # one evaluation at a time (the thread's, or a caller's)

    # ---- lifespan ------------------------------------------------------------------------------------
    def start(self) -> None:
        """Evaluate every ``alarm_interval_s`` (also with no kind on: alarms of kinds turned off are cleared)."""
        if not self.thread.is_alive() and not self.stopping.is_set():
            self.thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self.stopping.set()
        if self.thread.is_alive():
            self.thread.join(timeout)

    def _run(self) -> None:
        while not self.stopping.is_set():
            try:
                if not self._synced:
                    self.sync()
                self.evaluate()
                if self.failing is not None:
                    log.info("alarms: evaluating again")
                self.failing = None
            except SQLAlchemyError as exc:
                reason = f"database: {type(exc).__name__}"
                if reason != self.failing:
                    log.warning("alarms: could not evaluate (%s); trying again in %.1f s", reason, self._interval)
                self.failing = reason
            except Exception:  # noqa: BLE001 - the loop must outlive a bug in one evaluation
                log.exception("alarms: evaluation failed")
                self.failing = "internal error (the log has it)"
            if not self.kinds and self._synced and self.failing is None:
                return  # nothing to watch: one pass cleared what an earlier configuration left
            self.stopping.wait(self._interval)

    @property
    def _interval(self) -> float:
        return self.settings.alarm_interval_s

    # ---- the state at start ----------------------------------------------------------------------------
    def sync(self) -> None:
        """One "state" outbox row per line with an alarm register or an active alarm (sinks that take alarms)."""
        if self.line is not None:
            with self.sessions() as session:
                active = active_alarms(session)
                lines = set(self.settings.modbus_alarm_registers) | {a.line_id for a in active}
                now = utcnow()
                for line_id in sorted(lines):
                    mine = [a.as_dict() for a in active if a.line_id == line_id]
                    self._outbox(session, AlarmMessage(STATE, line_id, now, None, mine))
                session.commit()
            self.line.notify()
        self._synced = True

    # ---- one evaluation ----------------------------------------------------------------------------------
    def evaluate(self, now: dt.datetime | None = None) -> Evaluation:
        """Judge the newest subgroup as of ``now``; raise and clear alarms (committed with their outbox rows)."""
        with self._lock:
            return self._evaluate(now)

    def _evaluate(self, now: dt.datetime | None) -> Evaluation:
        t0 = time.perf_counter()
        now = now or utcnow()
        s = self.settings
        edges = subgroup_edges(now, s.alarm_window_s, s.alarm_subgroup_s)
        since = dt.datetime.fromtimestamp(edges[0], tz=dt.timezone.utc)
        raised: list[dict] = []
        cleared: list[dict] = []
        with self.sessions() as session:
            fr = records.frames(session, since, now) if self.kinds else records.frames(session, now, now)
            conditions: dict[str, Condition | None] = {}
            scopes: set[tuple[str, str | None]] = set()
            for line_id in sorted(set(fr.line.tolist())):
                on_line = fr.where(fr.line == line_id)
                cameras = sorted(set(on_line.camera.tolist()))
                scopes.add((line_id, None))
                scopes.update((line_id, c) for c in cameras)
                if P_CHART in self.kinds:
                    if s.alarm_p_chart_scope == "line":
                        self._p_chart(conditions, on_line, edges, line_id, None)
                    else:
                        for camera in cameras:
                            self._p_chart(conditions, on_line.where(on_line.camera == camera), edges, line_id, camera)
                if SCORE_DRIFT in self.kinds:
                    self._drift(session, conditions, on_line, line_id)
                if FRAME_QUALITY in self.kinds:
                    for camera in cameras:
                        frames = on_line.where(on_line.camera == camera)
                        self._quality(session, conditions, frames, edges, line_id, camera, since)
            active = {a.key: a for a in active_alarms(session)}
            changed: list[tuple[str, LineAlarm]] = []
            for key, c in conditions.items():
                if c is None:
                    continue  # not judged: too few frames in the newest subgroup
                if c.out and key not in active:
                    row = LineAlarm(
                        key=key,
                        kind=c.kind,
                        signal=c.signal,
                        line_id=c.line_id,
                        camera_id=c.camera_id,
                        value=c.value,
                        low=c.low,
                        high=c.high,
                        detail=c.detail,
                        raised_at=now,
                    )
                    session.add(row)
                    active[key] = row
                    changed.append((RAISED, row))
                elif not c.out and key in active:
                    row = active.pop(key)
                    row.cleared_at, row.clear_value, row.clear_reason = now, c.value, "inside"
                    changed.append((CLEARED, row))
            for key, row in list(active.items()):
                if key in conditions:
                    continue
                if row.kind not in self.kinds:
                    why = "turned off"
                elif (row.line_id, row.camera_id) not in scopes:
                    why = "no frames"
                else:
                    why = "not evaluated"  # e.g. alarm_p_chart_scope changed
                del active[key]
                row.cleared_at, row.clear_reason = now, why
                changed.append((CLEARED, row))
            if changed:
                session.flush()  # the new rows' ids
                for event, row in changed:
                    line_active = [a.as_dict() for a in active.values() if a.line_id == row.line_id]
                    self._outbox(session, AlarmMessage(event, row.line_id, now, row.as_dict(), line_active))
                    (raised if event == RAISED else cleared).append(row.as_dict())
                session.commit()
                for event, row in changed:
                    if event == RAISED:
                        log.warning("alarm raised: %s", row.as_dict()["message"])
                    else:
                        where = f"camera {row.camera_id}" if row.camera_id else f"line {row.line_id}"
                        now_value = "" if row.clear_value is None else f", now {row.clear_value:.4g}"
                        log.info(
                            "alarm cleared (%s%s): %s %s on %s",
                            row.clear_reason,
                            now_value,
                            row.kind,
                            row.signal,
                            where,
                        )
        if changed and self.line is not None:
            self.line.notify()
        self.last = Evaluation(now, len(fr), raised, cleared, len(active), (time.perf_counter() - t0) * 1000.0)
        return self.last

    def _p_chart(
        self,
        out: dict[str, Condition | None],
        frames: records.Frames,
        edges: np.ndarray,
        line_id: str,
        camera_id: str | None,
    ) -> None:
        s = self.settings
        for series in rate_series(frames, edges):
            if series.name not in s.alarm_p_chart_rates:
                continue
            signal = f"{series.name}_rate"
            key = alarm_key(P_CHART, signal, line_id, camera_id)
            chart = stats.p_chart(series.chart.x, series.chart.n, sigmas=s.alarm_p_chart_sigmas)
            n = int(chart.n[-1])
            if n < s.alarm_min_frames:
                out[key] = None
                continue
            out[key] = Condition(
                P_CHART,
                signal,
                line_id,
                camera_id,
                value=float(chart.p[-1]),
                low=float(chart.lcl[-1]),
                high=float(chart.ucl[-1]),
                out=bool(chart.out[-1]),
                detail={
                    "frames": n,
                    "count": int(chart.x[-1]),
                    "centre": chart.centre,
                    "window_frames": int(chart.n.sum()),
                    "subgroup_s": s.alarm_subgroup_s,
                    "window_s": s.alarm_window_s,
                    "sigmas": s.alarm_p_chart_sigmas,
                },
            )

    def _drift(self, session: Session, out: dict[str, Condition | None], frames: records.Frames, line_id: str) -> None:
        key = alarm_key(SCORE_DRIFT, "psi", line_id, None)
        d = dash.drift(session, frames, dash.DashboardQuery(line_id=line_id))
        if d is None or d.psi is None:
            out[key] = None
            return
        limit = self.settings.alarm_drift_psi
        out[key] = Condition(
            SCORE_DRIFT,
            "psi",
            line_id,
            None,
            value=float(d.psi),
            low=None,
            high=limit,
            out=d.psi >= limit,
            detail={
                "model_version": d.model_version,
                "ks": d.ks,
                "level": d.level,
                "reference_frames": int(d.reference.size),
                "frames": int(d.current.size),
            },
        )

    def _quality(
        self,
        session: Session,
        out: dict[str, Condition | None],
        frames: records.Frames,
        edges: np.ndarray,
        line_id: str,
        camera_id: str,
        since: dt.datetime,
    ) -> None:
        s = self.settings
        newest = int((frames.t >= edges[-2]).sum())
        q = dash.DashboardQuery(line_id=line_id, camera_id=camera_id)
        for series in dash.quality_series(session, frames, edges, q, since):
            key = alarm_key(FRAME_QUALITY, series.signal, line_id, camera_id)
            median = float(series.medians[-1])
            if series.usual is None or not np.isfinite(median) or newest < s.alarm_min_frames:
                out[key] = None
                continue
            low, high = series.usual.band(s.alarm_quality_sigmas)
            out[key] = Condition(
                FRAME_QUALITY,
                series.signal,
                line_id,
                camera_id,
                value=median,
                low=float(low),
                high=float(high),
                out=not low <= median <= high,
                detail={
                    "frames": newest,
                    "usual_median": series.usual.median,
                    "usual_sigma": series.usual.sigma,
                    "baseline": series.baseline_note,
                    "sigmas": s.alarm_quality_sigmas,
                },
            )

    # ---- delivery ----------------------------------------------------------------------------------------
    def _outbox(self, session: Session, message: AlarmMessage) -> None:
        """One outbox row per sink that takes alarms for the message's line (committed with the alarm rows)."""
        if self.line is None:
            return
        camera = (message.alarm or {}).get("camera_id")
        sinks = [
            w.sink.name
            for w in self.line.workers
            if callable(getattr(w.sink, "alarm", None)) and w.sink.wants(ALARM_ROW, message.line_id, camera)
        ]
        if not sinks:
            return
        if session.get_bind().dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_OUTBOX_LOCK})
        for sink in sinks:
            session.add(
                LineOutbox(
                    sink=sink,
                    kind=ALARM_ROW,
                    inspection_id=None,
                    line_id=message.line_id,
                    camera_id=camera,
                    part_id=None,
                    serial=None,
                    decision=message.event,
                    reason=(message.alarm or {}).get("kind"),
                    model_version="",
                    received_at=message.at,
                    deadline_at=message.at,
                    created_at=message.at,
                    attempts=0,
                    detail={"alarm": message.alarm, "active": message.active},
                )
            )


def build_alarms(settings: Settings, sessions: Callable[[], Session], line: Line | None) -> AlarmEvaluator:
    return AlarmEvaluator(settings, sessions, line)
