"""The operators' queue: flagged frames waiting for a verdict, newest first, with keyset paging.

Every query walks the index ``ix_inspections_queue (decision, review_status, created_at)`` in order: one
indexed range per decision (``review`` and ``reject`` separately, merged here), each stopping after a page,
so a page costs the same with 100 or 100,000 records. Paging is by keyset (created_at, id), never OFFSET,
which would re-read every skipped row. Line and camera filters are checked on the rows the index yields.

Views (``status``):
* ``waiting``   review and reject decisions nobody has judged yet (``unreviewed``);
* ``escalated`` frames an operator could not tell: the engineers' queue;
* ``reviewed``  judged frames, newest first, to look back at or change a verdict;
* ``audit``     passed frames whose image was sampled: reviewing them measures escapes.
"""

from __future__ import annotations

import datetime as dt
import heapq
from dataclasses import dataclass, replace

from sqlalchemy import and_, func, not_, select, text
from sqlalchemy.orm import Session, load_only

from andon.errors import ConfigError
from andon.service.review.tables import AUDIT_CONDITION
from andon.service.tables import (
    REVIEW_ESCALATED,
    REVIEW_NOT_REQUIRED,
    REVIEW_REVIEWED,
    REVIEW_UNREVIEWED,
    Inspection,
    utcnow,
)

STATUSES: dict[str, str] = {
    "waiting": REVIEW_UNREVIEWED,
    "escalated": REVIEW_ESCALATED,
    "reviewed": REVIEW_REVIEWED,
    "audit": REVIEW_NOT_REQUIRED,
}
FLAGGED: tuple[str, ...] = ("reject", "review")
WINDOWS: dict[str, dt.timedelta | None] = {
    "1h": dt.timedelta(hours=1),
    "8h": dt.timedelta(hours=8),
    "24h": dt.timedelta(hours=24),
    "7d": dt.timedelta(days=7),
    "all": None,
}
PAGE_SIZE = 50


@dataclass(frozen=True)
class QueueFilter:
    status: str = "waiting"
    decision: str = "all"  # all | reject | review (audit: always pass)
    line_id: str | None = None
    camera_id: str | None = None
    window: str = "all"
    since: dt.datetime | None = None
    until: dt.datetime | None = None

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise ConfigError(f"queue {self.status!r} is not one of {', '.join(STATUSES)}")
        if self.decision not in ("all", *FLAGGED):
            raise ConfigError(f"decision {self.decision!r} is not one of all, {', '.join(FLAGGED)}")
        if self.window not in WINDOWS:
            raise ConfigError(f"time window {self.window!r} is not one of {', '.join(WINDOWS)}")

    @property
    def decisions(self) -> tuple[str, ...]:
        if self.status == "audit":
            return ("pass",)
        return FLAGGED if self.decision == "all" else (self.decision,)

    def bounds(self, now: dt.datetime | None = None) -> tuple[dt.datetime | None, dt.datetime | None]:
        since = self.since
        span = WINDOWS[self.window]
        if span is not None:
            start = (now or utcnow()) - span
            since = start if since is None else max(since, start)
        return since, self.until

    def params(self) -> dict[str, str]:
        """The filter as query parameters (for links), leaving out defaults."""
        out = {
            "status": self.status,
            "decision": self.decision,
            "line": self.line_id or "",
            "camera": self.camera_id or "",
            "window": self.window,
        }
        defaults = {"status": "waiting", "decision": "all", "line": "", "camera": "", "window": "all"}
        return {k: v for k, v in out.items() if v != defaults[k]}

    def with_(self, **changes: object) -> QueueFilter:
        return replace(self, **changes)


@dataclass(frozen=True)
class Cursor:
    created_at: dt.datetime
    id: str

    def encode(self) -> str:
        return f"{int(self.created_at.timestamp() * 1_000_000)}.{self.id}"

    @classmethod
    def decode(cls, text: str) -> Cursor:
        try:
            micros, _, ident = text.partition(".")
            if len(ident) != 26 or not ident.isalnum():
                raise ValueError(ident)
            at = dt.datetime.fromtimestamp(int(micros) / 1_000_000, tz=dt.timezone.utc)
        except (ValueError, OverflowError, OSError):
            raise ConfigError(f"cursor {text[:60]!r} is not one this service gave out") from None
        return cls(at, ident)

    @classmethod
    def of(cls, row: Inspection) -> Cursor:
        return cls(row.created_at, row.id)


@dataclass
class QueuePage:
    items: list[Inspection]
    next_cursor: str | None


#: what a queue row shows; the other columns (scores, timings) load only for the part on screen
LIST_COLUMNS = (
    Inspection.id,
    Inspection.created_at,
    Inspection.line_id,
    Inspection.camera_id,
    Inspection.part_id,
    Inspection.label,
    Inspection.decision,
    Inspection.defect_score,
    Inspection.review_status,
    Inspection.image_key,
    Inspection.reason,
    Inspection.anomaly_score,
)


def _conditions(f: QueueFilter, decision: str, now: dt.datetime | None) -> list:
    conds = [Inspection.decision == decision, Inspection.review_status == STATUSES[f.status]]
    if f.status == "audit":
        conds.append(text(AUDIT_CONDITION))  # the partial index's own condition: a short range
    if f.line_id:
        conds.append(Inspection.line_id == f.line_id)
    if f.camera_id:
        conds.append(Inspection.camera_id == f.camera_id)
    since, until = f.bounds(now)
    if since is not None:
        conds.append(Inspection.created_at >= since)
    if until is not None:
        conds.append(Inspection.created_at < until)
    return conds


def _base(f: QueueFilter, decision: str, now: dt.datetime | None, *, full: bool = False):
    query = select(Inspection).where(*_conditions(f, decision, now))
    return query if full else query.options(load_only(*LIST_COLUMNS))


def _older_than(query, cursor: Cursor):
    # a plain range on the indexed column, plus the tie-break on id for rows of the same instant
    return query.where(
        Inspection.created_at <= cursor.created_at,
        not_(and_(Inspection.created_at == cursor.created_at, Inspection.id >= cursor.id)),
    )


def _newer_than(query, cursor: Cursor):
    return query.where(
        Inspection.created_at >= cursor.created_at,
        not_(and_(Inspection.created_at == cursor.created_at, Inspection.id <= cursor.id)),
    )


def page(
    session: Session,
    f: QueueFilter,
    *,
    cursor: Cursor | None = None,
    limit: int = PAGE_SIZE,
    now: dt.datetime | None = None,
    full: bool = False,
) -> QueuePage:
    """Up to ``limit`` frames of the queue, newest first, older than ``cursor``; ``full`` loads every column
    (the JSON API), otherwise only what a queue row shows."""
    runs = []
    for decision in f.decisions:
        query = _base(f, decision, now, full=full)
        if cursor is not None:
            query = _older_than(query, cursor)
        query = query.order_by(Inspection.created_at.desc(), Inspection.id.desc()).limit(limit + 1)
        runs.append(list(session.scalars(query)))
    merged = list(heapq.merge(*runs, key=lambda r: (r.created_at, r.id), reverse=True))[: limit + 1]
    more = len(merged) > limit
    items = merged[:limit]
    return QueuePage(items, Cursor.of(items[-1]).encode() if more and items else None)


def neighbour(
    session: Session, f: QueueFilter, row: Inspection, *, older: bool = True, exclude: frozenset[str] = frozenset()
) -> Inspection | None:
    """The next frame to show after ``row``: the next older one in the queue (or newer with ``older=False``)."""
    best: Inspection | None = None
    at = Cursor.of(row)
    for decision in f.decisions:
        query = _base(f, decision, None)
        if older:
            query = _older_than(query, at).order_by(Inspection.created_at.desc(), Inspection.id.desc())
        else:
            query = _newer_than(query, at).order_by(Inspection.created_at.asc(), Inspection.id.asc())
        if exclude:
            query = query.where(Inspection.id.not_in(exclude))
        candidate = session.scalars(query.limit(1)).first()
        if candidate is None:
            continue
        key = (candidate.created_at, candidate.id)
        if best is None or (key > (best.created_at, best.id) if older else key < (best.created_at, best.id)):
            best = candidate
    return best


def next_after(session: Session, f: QueueFilter, row: Inspection) -> Inspection | None:
    """What the operator sees after judging ``row``: the next older frame, or, at the end of the queue, the
    newest one still waiting (new frames keep arriving at the top)."""
    older = neighbour(session, f, row, older=True)
    if older is not None:
        return older
    first = page(session, f, limit=2).items
    return next((r for r in first if r.id != row.id), None)


#: a count filtered by line or camera stops here ("1,000+"): it reads rows, not just the index, and
#: nobody needs the exact size of a four-figure backlog of one camera
COUNT_CAP = 1_000


def count(session: Session, f: QueueFilter, now: dt.datetime | None = None, *, cap: int = COUNT_CAP) -> int:
    """How many frames the filter's queue holds, at most ``cap + 1`` per decision (more than ``cap``: show
    "cap+"). Without line/camera filters the count reads only the index and is never capped."""
    total = 0
    for decision in f.decisions:
        conds = _conditions(f, decision, now)
        if f.line_id or f.camera_id:
            inner = select(Inspection.id).where(*conds).limit(cap + 1).subquery()
            query = select(func.count()).select_from(inner)
        else:
            query = select(func.count()).select_from(Inspection).where(*conds)
        total += int(session.scalar(query) or 0)
    return total


def waiting_counts(session: Session) -> dict[str, int]:
    """Frames waiting per queue (all lines): the numbers the header always shows."""
    rows = session.execute(
        select(Inspection.review_status, func.count())
        .where(Inspection.decision.in_(FLAGGED), Inspection.review_status.in_((REVIEW_UNREVIEWED, REVIEW_ESCALATED)))
        .group_by(Inspection.review_status)
    ).all()
    found = dict(rows)
    return {"waiting": int(found.get(REVIEW_UNREVIEWED, 0)), "escalated": int(found.get(REVIEW_ESCALATED, 0))}


def lines_and_cameras(session: Session) -> tuple[list[str], list[str]]:
    """Known line and camera ids, for the filter menus (index-only scans)."""
    lines = [r for (r,) in session.execute(select(Inspection.line_id).distinct().order_by(Inspection.line_id))]
    cameras = [r for (r,) in session.execute(select(Inspection.camera_id).distinct().order_by(Inspection.camera_id))]
    return lines, cameras


class CountCache:
    """The header's waiting counts, shared by the requests of a few seconds.

    Counting reads one index entry per waiting frame: nothing with a normal queue, tens of milliseconds with
    a backlog of 100,000. A page shows counts at most ``ttl`` seconds old; a verdict's answer carries fresh
    ones (and refreshes the cache).
    """

    def __init__(self, ttl: float = 2.0) -> None:
        self.ttl = ttl
        self._at = -1e9
        self._counts: dict[str, int] = {}

    def get(self, session: Session) -> dict[str, int]:
        import time

        if time.monotonic() - self._at > self.ttl:
            self.put(waiting_counts(session))
        return dict(self._counts)

    def put(self, counts: dict[str, int]) -> None:
        import time

        self._counts, self._at = dict(counts), time.monotonic()

    def changed(self, session: Session, decision: str, before: str, after: str) -> dict[str, int]:
        """The counts after this process moved a frame from status ``before`` to ``after``: the cached ones
        adjusted by that move (other processes' changes show within ``ttl``), or a fresh count."""
        import time

        if time.monotonic() - self._at > self.ttl:
            self.put(waiting_counts(session))
        elif decision in FLAGGED:
            keys = {REVIEW_UNREVIEWED: "waiting", REVIEW_ESCALATED: "escalated"}
            for status, delta in ((before, -1), (after, 1)):
                if status in keys:
                    self._counts[keys[status]] = max(0, self._counts.get(keys[status], 0) + delta)
        return dict(self._counts)


def totals(session: Session, f: QueueFilter, cache: CountCache | None = None) -> tuple[int, dict[str, int]]:
    """(frames in this view, the header's waiting counts), counting the unfiltered queues only once."""
    counts = cache.get(session) if cache is not None else waiting_counts(session)
    plain = (
        f.decision == "all"
        and not f.line_id
        and not f.camera_id
        and f.since is None
        and f.until is None
        and f.window == "all"
    )
    if plain and f.status in counts:
        return counts[f.status], counts
    return count(session, f), counts
