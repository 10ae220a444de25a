"""Recording verdicts: append-only history, the inspection's review status, optimistic concurrency.

A verdict on a frame that already has one is a *change*: the new row is appended and the old one is marked
superseded (its content is never edited), so the audit trail shows every verdict, who gave it and when. The
client says which verdict it is replacing (``supersedes``: None for the first); if someone else judged the
frame in the meantime the call fails with a conflict instead of silently overwriting their verdict (two
operators on the same queue, or a double key press).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import select
from sqlalchemy.orm import Session

from andon.errors import AndonError, ConfigError, NotFoundError
from andon.inspect.card import GOOD_CLASS_NAMES
from andon.service.review.tables import CANT_TELL, CONFIRM_DEFECT, FALSE_ALARM, VERDICTS, ReviewVerdict
from andon.service.tables import REVIEW_ESCALATED, REVIEW_REVIEWED, Inspection, utcnow

#: the label a false alarm gets when the model has no single good class (as the issue's data layout says)
DEFAULT_GOOD_LABEL = "ok"
MAX_COMMENT = 2000


class VerdictConflictError(AndonError):
    """The frame was judged by someone else since the caller loaded it."""

    code = "verdict_conflict"
    http_status = 409


@dataclass(frozen=True)
class ClassInfo:
    """The model's classes for one inspection: what a confirmed defect may be re-labelled to."""

    classes: tuple[str, ...]
    defect_classes: tuple[str, ...]
    good_label: str

    @classmethod
    def from_scores(cls, scores: dict[str, float], card=None) -> ClassInfo:
        classes = tuple(card.classes) if card is not None else tuple(scores)
        if card is not None:
            defects, goods = tuple(card.defect_classes), tuple(card.good_classes)
        else:
            goods = tuple(c for c in classes if c.lower() in GOOD_CLASS_NAMES)
            defects = tuple(c for c in classes if c not in goods)
        return cls(classes, defects or classes, goods[0] if len(goods) == 1 else DEFAULT_GOOD_LABEL)

    def default_defect(self, row: Inspection) -> str:
        """The model's own defect label; when its top class is a good one (flagged by the summed defect
        probability), the most probable defect class."""
        if row.label in self.defect_classes:
            return row.label
        return max(self.defect_classes, key=lambda c: float(row.scores.get(c, 0.0)))


def resolve_label(verdict: str, label: str | None, row: Inspection, info: ClassInfo) -> str | None:
    if verdict == CONFIRM_DEFECT:
        if not label:
            return info.default_defect(row)
        if label not in info.defect_classes:
            raise ConfigError(
                f"defect type {label!r} is not one of the model's defect classes {', '.join(info.defect_classes)}"
            )
        return label
    if verdict == FALSE_ALARM:
        if label and label != info.good_label:
            raise ConfigError(f"a false alarm is labelled {info.good_label!r}, not {label!r}")
        return info.good_label
    if label:
        raise ConfigError("a can't-tell verdict has no label")
    return None


def current_verdict(session: Session, inspection_id: str) -> ReviewVerdict | None:
    return session.scalars(
        select(ReviewVerdict)
        .where(ReviewVerdict.inspection_id == inspection_id, ReviewVerdict.superseded_at.is_(None))
        .order_by(ReviewVerdict.id.desc())
        .limit(1)
    ).first()


def history(session: Session, inspection_id: str) -> list[ReviewVerdict]:
    """Every verdict on the frame, oldest first."""
    return list(
        session.scalars(
            select(ReviewVerdict).where(ReviewVerdict.inspection_id == inspection_id).order_by(ReviewVerdict.id)
        )
    )


def record_verdict(
    session: Session,
    inspection_id: str,
    *,
    verdict: str,
    reviewer: str,
    info_for,
    label: str | None = None,
    comment: str | None = None,
    user_id: int | None = None,
    supersedes: int | None = None,
    check_supersedes: bool = True,
) -> ReviewVerdict:
    """Append a verdict and set the frame's review status; commits. ``info_for(row)`` gives its ClassInfo."""
    if verdict not in VERDICTS:
        raise ConfigError(f"verdict {verdict!r} is not one of {', '.join(VERDICTS)}")
    comment = (comment or "").strip() or None
    if comment is not None and len(comment) > MAX_COMMENT:
        raise ConfigError(f"the comment has {len(comment)} characters; at most {MAX_COMMENT}")
    row = session.get(Inspection, inspection_id, with_for_update=True)
    if row is None:
        raise NotFoundError(f"no inspection with id {inspection_id!r}")
    if row.image_key is None and row.decision == "pass":
        raise ConfigError(f"inspection {inspection_id} is a pass whose image was not kept; nothing to review")
    label = resolve_label(verdict, label, row, info_for(row))
    now = utcnow()
    previous = current_verdict(session, inspection_id)
    if check_supersedes and (previous.id if previous else None) != supersedes:
        raise VerdictConflictError(_conflict_message(previous, supersedes))
    new = ReviewVerdict(
        inspection_id=inspection_id,
        verdict=verdict,
        label=label,
        comment=comment,
        user_id=user_id,
        reviewer=reviewer,
        created_at=now,
        model_label=row.label,
        model_decision=row.decision,
        model_score=float(row.defect_score),
    )
    session.add(new)
    session.flush()
    if previous is not None:
        previous.superseded_at = now
        previous.superseded_by = new.id
    row.review_status = REVIEW_ESCALATED if verdict == CANT_TELL else REVIEW_REVIEWED
    session.commit()
    return new


def _conflict_message(previous: ReviewVerdict | None, supersedes: int | None) -> str:
    if previous is None:
        return f"verdict {supersedes} is not this frame's current verdict (it has none); reload the part"
    return (
        f"this frame was judged meanwhile: {previous.verdict.replace('_', ' ')} by {previous.reviewer} at "
        f"{previous.created_at:%H:%M:%S} UTC (verdict {previous.id}); reload the part to change it"
    )
