"""Shift calendars: named shifts of the day in plant time, e.g. ``A=06:00-14:00,B=14:00-22:00,C=22:00-06:00``.

A shift that ends at or before its start crosses midnight: its date is the day it starts on.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from andon.errors import ConfigError

DEFAULT_SHIFTS = "A=06:00-14:00,B=14:00-22:00,C=22:00-06:00"
_ITEM = re.compile(r"^\s*([A-Za-z0-9_-]{1,16})\s*=\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*$")


@dataclass(frozen=True)
class ShiftDef:
    name: str
    start: dt.time
    end: dt.time

    @property
    def duration(self) -> dt.timedelta:
        start = dt.datetime.combine(dt.date(2000, 1, 1), self.start)
        end = dt.datetime.combine(dt.date(2000, 1, 1), self.end)
        if end <= start:
            end += dt.timedelta(days=1)
        return end - start


@dataclass(frozen=True)
class Shift:
    name: str
    day: dt.date
    start: dt.datetime  # aware, plant time
    end: dt.datetime

    @property
    def label(self) -> str:
        return f"{self.day.isoformat()} shift {self.name}"


def parse_shifts(text: str) -> list[ShiftDef]:
    out = []
    for item in text.split(","):
        m = _ITEM.match(item)
        if not m:
            raise ConfigError(f"shift {item.strip()!r} is not NAME=HH:MM-HH:MM; e.g. {DEFAULT_SHIFTS}")
        h1, m1, h2, m2 = (int(g) for g in m.groups()[1:])
        if h1 > 23 or h2 > 23 or m1 > 59 or m2 > 59:
            raise ConfigError(f"shift {item.strip()!r} has a time outside 00:00-23:59")
        out.append(ShiftDef(m.group(1), dt.time(h1, m1), dt.time(h2, m2)))
    names = [s.name for s in out]
    if len(set(names)) != len(names):
        raise ConfigError(f"shift names must be unique, got {names}")
    return out


def _local(day: dt.date, at: dt.time) -> dt.datetime:
    return dt.datetime.combine(day, at).astimezone()  # the machine's zone is the plant's


def on(day: dt.date, definition: ShiftDef) -> Shift:
    start = _local(day, definition.start)
    end = (dt.datetime.combine(day, definition.start) + definition.duration).astimezone()
    return Shift(definition.name, day, start, end)


def resolve(spec: str, definitions: list[ShiftDef], now: dt.datetime | None = None) -> Shift:
    """'2026-11-25/A', 'last' (the latest finished shift) or 'current'."""
    now = (now or dt.datetime.now(dt.timezone.utc)).astimezone()
    by_name = {d.name: d for d in definitions}
    if spec in ("last", "current"):
        candidates = [on(now.date() + dt.timedelta(days=k), d) for k in (-2, -1, 0) for d in definitions]
        if spec == "current":
            found = [s for s in candidates if s.start <= now < s.end]
        else:
            found = [s for s in candidates if s.end <= now]
        if not found:
            raise ConfigError(
                f"no shift is {spec} at {now:%Y-%m-%d %H:%M}; shifts are {', '.join(d.name for d in definitions)}"
            )
        return max(found, key=lambda s: s.start)
    day_text, _, name = spec.partition("/")
    if name not in by_name:
        raise ConfigError(
            f"--shift {spec!r}: give DATE/NAME with NAME one of {', '.join(by_name)} "
            "(e.g. 2026-11-25/A), or 'last' or 'current'"
        )
    try:
        day = dt.date.fromisoformat(day_text)
    except ValueError:
        raise ConfigError(f"--shift {spec!r}: {day_text!r} is not a date (YYYY-MM-DD)") from None
    return on(day, by_name[name])
