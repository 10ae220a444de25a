"""Giving a verdict, the one way both the JSON route (``POST /v1/inspections/{id}/verdicts``) and the review
page's form do it: record it with the classes of the model that made the record (``ctx.cards``), then move
the header's waiting counts by the frame's change of status (``ctx.review.counts``).
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.orm import Session

from andon.service.deps import ServiceContext
from andon.service.review.tables import ReviewVerdict
from andon.service.review.verdicts import record_verdict
from andon.service.tables import Inspection


@dataclass(frozen=True)
class VerdictGiven:
    verdict: ReviewVerdict
    #: the frame after the verdict (its new review status)
    inspection: Inspection
    #: the header's waiting counts after it
    counts: dict[str, int]


def give_verdict(
    ctx: ServiceContext,
    session: Session,
    inspection_id: str,
    *,
    verdict: str,
    label: str | None,
    comment: str | None,
    reviewer: str,
    user_id: int | None,
    supersedes: int | None,
) -> VerdictGiven:
    """Record the verdict (commits; ``record_verdict``'s errors for an unknown frame, verdict or label)."""
    target = session.get(Inspection, inspection_id)
    before = target.review_status if target is not None else None
    row = record_verdict(
        session,
        inspection_id,
        verdict=verdict,
        label=label,
        comment=comment,
        reviewer=reviewer,
        user_id=user_id,
        supersedes=supersedes,
        info_for=ctx.cards.classes,
    )
    inspection = session.get(Inspection, inspection_id)
    counts = ctx.review.counts.changed(session, inspection.decision, before, inspection.review_status)
    return VerdictGiven(row, inspection, counts)
