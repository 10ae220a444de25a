"""Retention: prune images of old passes and of reviewed frames; never of unreviewed flagged frames.

Records stay (they are small and they are the audit trail); only the image and heatmap files go, and the
record says when (``image_pruned_at``). The rule is in the query: a row qualifies only if its review status
is ``not_required`` (a pass) or ``reviewed``, so an ``unreviewed`` frame is never touched whatever its age.

The same run sweeps orphans: the service stores a frame's image before it commits the record, so a crash
(or a database that refused the record and a clean-up that failed too) can leave an image no record names.
Files older than ``orphan_grace_s`` that no record names are deleted, with the temp files of interrupted
writes. The grace period keeps the sweep away from frames whose record is being committed right now.

At start-up (``sweep_at_start``) the rule is sharper. An image written just before its record commits is an
orphan only if its writer is gone, so the sweep asks the store whether this process is its only writer
(``ImageStore.join_writers(sole=True)``: a flock that every serving process holds, and that kill -9 drops).
When it is, nothing can be between an image and its record, and every temp file and every file no record
names is removed whatever its age. When another process is serving (a second worker, a rolling restart), the
start-up sweep keeps the retention rule: only files older than ``orphan_grace_s``. ``orphan_grace_s: None``
turns the orphan sweep off at start-up too (temp files still go when the process is alone).

An S3 bucket shared by replicas never answers "alone" (``S3Store.join_writers``): its start-up sweep always
keeps the grace rule, so it never deletes another replica's just-written object whose record is about to
commit. A store that cannot be reached at start-up (``StorageError``) skips the sweep; the service starts,
not ready, and retention sweeps once the store is back.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import and_, or_, select
from sqlalchemy.orm import Session

from andon.errors import StorageError
from andon.service.storage import ImageStore
from andon.service.tables import REVIEW_NOT_REQUIRED, REVIEW_REVIEWED, Inspection, utcnow

log = logging.getLogger("andon.service")
_CHUNK = 500
#: "whatever its age" (a file stamped in the future by a clock that jumped back included)
_ANY_AGE = dt.timedelta(days=3650)


@dataclass
class PruneReport:
    images_pruned: int = 0
    bytes_freed: int = 0
    #: stored files no record names (and temp files of interrupted writes), removed by the sweep
    orphans_removed: int = 0
    orphan_bytes: int = 0


def prune(
    sessions: Callable[[], Session],
    store: ImageStore,
    *,
    pass_days: float | None,
    reviewed_days: float | None,
    orphan_grace_s: float | None = 3600.0,
    now: dt.datetime | None = None,
) -> PruneReport:
    """Delete the images the policy lets go, then the orphans older than ``orphan_grace_s`` (None: no sweep);
    returns how many and how many bytes (posted sizes for pruned frames, file sizes for orphans)."""
    now = now or utcnow()
    report = _prune_policy(sessions, store, pass_days=pass_days, reviewed_days=reviewed_days, now=now)
    if orphan_grace_s is not None:
        sweep_orphans(sessions, store, cutoff=now - dt.timedelta(seconds=orphan_grace_s), report=report)
    return report


def sweep_at_start(
    sessions: Callable[[], Session],
    store: ImageStore,
    *,
    orphan_grace_s: float | None,
    now: dt.datetime | None = None,
) -> tuple[PruneReport, bool]:
    """The start-up sweep: join the store's writers and remove what crashed writes left; returns the report
    and whether this process was the store's only writer (then nothing is spared for its age).

    Call it before the process stores anything; it holds the store's writer lock (shared) on return, until
    ``store.leave_writers()``."""
    now = now or utcnow()
    alone = store.join_writers(sole=True)
    report = PruneReport()
    try:
        if alone and orphan_grace_s is None:
            report.orphans_removed += store.remove_partial_writes(now + _ANY_AGE)
        elif alone:
            sweep_orphans(sessions, store, cutoff=now + _ANY_AGE, report=report, when="start-up")
        elif orphan_grace_s is not None:
            cutoff = now - dt.timedelta(seconds=orphan_grace_s)
            sweep_orphans(sessions, store, cutoff=cutoff, report=report, when="start-up")
    except StorageError as exc:  # an object store that is down: serve (not ready, 503s) rather than crash-loop
        log.warning("start-up sweep skipped: %s; retention sweeps orphans later", exc)
    finally:
        if alone:
            store.join_writers()  # exclusive -> shared: other processes may start writing now
    return report, alone


def sweep_orphans(
    sessions: Callable[[], Session],
    store: ImageStore,
    *,
    cutoff: dt.datetime,
    report: PruneReport,
    when: str = "retention",
) -> PruneReport:
    """Delete stored files written before ``cutoff`` that no record names as its image or heatmap."""
    report.orphans_removed += store.remove_partial_writes(cutoff)
    batch: list[tuple[str, int]] = []
    for item in store.stored_before(cutoff):
        batch.append(item)
        if len(batch) == _CHUNK:
            _remove_unnamed(sessions, store, batch, report)
            batch = []
    if batch:
        _remove_unnamed(sessions, store, batch, report)
    if report.orphans_removed:
        log.warning(
            "%s: removed %d stored files that no record names (left by a crash or a failed write)",
            when,
            report.orphans_removed,
        )
    return report


def _remove_unnamed(
    sessions: Callable[[], Session], store: ImageStore, batch: list[tuple[str, int]], report: PruneReport
) -> None:
    keys = [key for key, _size in batch]
    with sessions() as session:
        named = set(session.scalars(select(Inspection.image_key).where(Inspection.image_key.in_(keys))))
        named |= set(session.scalars(select(Inspection.heatmap_key).where(Inspection.heatmap_key.in_(keys))))
    for key, size in batch:
        if key not in named:
            store.delete(key)
            report.orphans_removed += 1
            report.orphan_bytes += size


def _prune_policy(
    sessions: Callable[[], Session],
    store: ImageStore,
    *,
    pass_days: float | None,
    reviewed_days: float | None,
    now: dt.datetime,
) -> PruneReport:
    rules = []
    if pass_days is not None:
        rules.append(
            and_(
                Inspection.review_status == REVIEW_NOT_REQUIRED,
                Inspection.created_at < now - dt.timedelta(days=pass_days),
            )
        )
    if reviewed_days is not None:
        rules.append(
            and_(
                Inspection.review_status == REVIEW_REVIEWED,
                Inspection.created_at < now - dt.timedelta(days=reviewed_days),
            )
        )
    report = PruneReport()
    if not rules:
        return report
    while True:
        with sessions() as session:
            rows = list(
                session.scalars(
                    select(Inspection)
                    .where(Inspection.image_key.is_not(None), or_(*rules))
                    .order_by(Inspection.id)
                    .limit(_CHUNK)
                )
            )
            if not rows:
                return report
            for row in rows:
                for key in (row.image_key, row.heatmap_key):
                    if key:
                        store.delete(key)
                report.images_pruned += 1
                report.bytes_freed += row.image_bytes
                row.image_key = None
                row.heatmap_key = None
                row.image_pruned_at = now
            session.commit()
        log.info("retention: pruned %d images so far", report.images_pruned)
