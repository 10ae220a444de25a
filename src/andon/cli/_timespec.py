"""Times on the command line: ISO dates and datetimes (plant time unless a zone is given) or "7d"/"12h" ago.

Not a command group (no ``register``): shared by ``andon review`` and ``andon report``.
"""

from __future__ import annotations

import datetime as dt
import re

from andon.errors import ConfigError

_RELATIVE = re.compile(r"^(\d+(?:\.\d+)?)\s*([mhdw])$")
_UNITS = {"m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_time(text: str | None, *, name: str, now: dt.datetime | None = None) -> dt.datetime | None:
    """An aware UTC datetime from '2026-11-25', '2026-11-25T06:00', '2026-11-25T06:00+01:00' or '7d' (ago)."""
    if text is None or text == "":
        return None
    now = now or dt.datetime.now(dt.timezone.utc)
    m = _RELATIVE.match(text.strip().lower())
    if m:
        return now - dt.timedelta(seconds=float(m.group(1)) * _UNITS[m.group(2)])
    try:
        value = dt.datetime.fromisoformat(text.strip())
    except ValueError:
        raise ConfigError(
            f"{name} {text!r} is not a time; give an ISO date or time such as 2026-11-25 or "
            "2026-11-25T06:00 (plant time unless a zone is given), or an age such as 12h or 7d"
        ) from None
    if value.tzinfo is None:
        value = value.astimezone()  # plant time: the machine's local zone
    return value.astimezone(dt.timezone.utc)
