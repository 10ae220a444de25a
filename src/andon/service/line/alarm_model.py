"""Alarms: what they are, how they are stored and what a sink is given (docs/line.md, "Alarms").

An alarm is a condition the line dashboard already shows as "needs attention", watched continuously by
``andon.service.line.alarms.AlarmEvaluator``:

* ``p_chart``: the reject (or review) rate of the newest subgroup is outside its p-chart limits;
* ``score_drift``: the PSI of the model's defect scores against its first frames is at or above the limit;
* ``frame_quality``: a camera's median brightness, contrast or focus is outside its usual band.

Each raise and each clear is a row change in ``line_alarms`` (one row per occurrence: ``raised_at``, then
``cleared_at``), committed with one outbox row per sink that takes alarms, so that the sinks get the events in
order and none is lost while a sink is down. ``AlarmMessage`` is what the dispatcher hands a sink's
``alarm(message)``: the event and the line's active alarms after it.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field

from sqlalchemy import JSON, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from andon.service.tables import Base, UTCDateTime

P_CHART, SCORE_DRIFT, FRAME_QUALITY = "p_chart", "score_drift", "frame_quality"
#: the kinds, in the order of their bit in a line's Modbus alarm register (bit 0 = p_chart)
KINDS: tuple[str, ...] = (P_CHART, SCORE_DRIFT, FRAME_QUALITY)
BITS: dict[str, int] = {kind: 1 << i for i, kind in enumerate(KINDS)}

#: outbox rows of alarms: kind "alarm", decision one of these
ALARM_ROW = "alarm"
RAISED, CLEARED, STATE = "raised", "cleared", "state"


class LineAlarm(Base):
    """One occurrence of an alarm: raised at ``raised_at`` with ``value`` outside [``low``, ``high``], cleared at
    ``cleared_at`` (None while active) with ``clear_value`` (None when it cleared because its scope had no frames
    in the window any more, or its kind was turned off)."""

    __tablename__ = "line_alarms"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    #: kind:signal:line:camera, one active row per key at most
    key: Mapped[str] = mapped_column(String(200))
    kind: Mapped[str] = mapped_column(String(16))
    #: reject_rate / review_rate (p_chart), psi (score_drift), brightness / contrast / focus (frame_quality)
    signal: Mapped[str] = mapped_column(String(16))
    line_id: Mapped[str] = mapped_column(String(64))
    #: the camera for a camera's alarm; None for the line's
    camera_id: Mapped[str | None] = mapped_column(String(64))
    value: Mapped[float] = mapped_column(Float)
    low: Mapped[float | None] = mapped_column(Float)
    high: Mapped[float | None] = mapped_column(Float)
    #: the figures behind it (subgroup size, centre line, model version, the band's baseline ...)
    detail: Mapped[dict | None] = mapped_column(JSON)
    raised_at: Mapped[dt.datetime] = mapped_column(UTCDateTime())
    cleared_at: Mapped[dt.datetime | None] = mapped_column(UTCDateTime())
    clear_value: Mapped[float | None] = mapped_column(Float)
    #: why it cleared: "inside" (back within its limits), "no frames", "turned off"
    clear_reason: Mapped[str | None] = mapped_column(String(32))

    __table_args__ = (Index("ix_line_alarms_active", "cleared_at", "key"),)

    def as_dict(self) -> dict:
        return {
            "id": self.id,
            "kind": self.kind,
            "signal": self.signal,
            "scope": "camera" if self.camera_id else "line",
            "line_id": self.line_id,
            "camera_id": self.camera_id,
            "value": self.value,
            "low": self.low,
            "high": self.high,
            "raised_at": _iso(self.raised_at),
            "cleared_at": _iso(self.cleared_at),
            "clear_value": self.clear_value,
            "clear_reason": self.clear_reason,
            "detail": dict(self.detail or {}),
            "message": describe(self.kind, self.signal, self.camera_id, self.value, self.low, self.high),
        }


def alarm_key(kind: str, signal: str, line_id: str, camera_id: str | None) -> str:
    return f"{kind}:{signal}:{line_id}:{camera_id or ''}"


def describe(kind: str, signal: str, camera_id: str | None, value: float, low: float | None, high: float | None) -> str:
    """One line for people (the dashboard, the MQTT payload)."""
    where = f"camera {camera_id}" if camera_id else "the line"
    if kind == P_CHART:
        rate = signal.replace("_rate", "")
        return (
            f"{rate} rate {100 * value:.1f}% on {where} is outside its p-chart limits "
            f"{100 * (low or 0.0):.1f}%-{100 * (high or 0.0):.1f}%"
        )
    if kind == SCORE_DRIFT:
        return f"score drift on {where}: PSI {value:.3f} is at or above {high if high is not None else 0:.3f}"
    return f"{signal} {value:.1f} on {where} is outside its usual {low or 0.0:.1f}-{high or 0.0:.1f}"


def line_bits(active: list[dict]) -> int:
    """The Modbus alarm register's value for a line's active alarms (a bit per kind)."""
    bits = 0
    for alarm in active:
        bits |= BITS.get(alarm.get("kind", ""), 0)
    return bits


def _iso(value: dt.datetime | None) -> str | None:
    return None if value is None else value.isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class AlarmMessage:
    """One alarm delivery: ``event`` raised / cleared (``alarm`` is the alarm) or state (the line's alarms as
    they are, sent at start), and ``active``: the line's active alarms after the event."""

    event: str
    line_id: str
    at: dt.datetime
    alarm: dict | None = None
    active: list[dict] = field(default_factory=list)

    @property
    def bits(self) -> int:
        return line_bits(self.active)

    def state_json(self) -> bytes:
        """The retained ``<prefix>/<line>/alarm`` payload."""
        body = {"line_id": self.line_id, "at": _iso(self.at), "bits": self.bits, "active": self.active}
        return json.dumps(body, separators=(",", ":")).encode()

    def event_json(self) -> bytes:
        """The ``<prefix>/<line>/alarm/event`` payload."""
        body = {"event": self.event, "line_id": self.line_id, "at": _iso(self.at), "alarm": self.alarm}
        return json.dumps(body, separators=(",", ":")).encode()


def alarm_message(row) -> AlarmMessage:
    """What the dispatcher gives a sink's ``alarm`` for an outbox row (``LineOutbox``) of kind "alarm"."""
    detail = row.detail or {}
    return AlarmMessage(row.decision, row.line_id, row.received_at, detail.get("alarm"), list(detail.get("active", [])))
