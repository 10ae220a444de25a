"""The review API: verdicts (with their history) and the queue as JSON, for the page's script and for tools.

Callers: a logged-in operator or engineer (cookie + X-CSRF-Token on changes), or an operator/engineer API
key. Camera keys may not review; anonymous callers (open mode) may read but not judge, since every verdict
must name who gave it.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from andon.errors import NotFoundError
from andon.service.auth import Principal
from andon.service.deps import CanRead, CanReview, ContextDep, SessionDep
from andon.service.errors import AuthenticationError, PermissionDeniedError
from andon.service.review import queue as q
from andon.service.review.recording import give_verdict
from andon.service.review.sessions import UserPrincipal
from andon.service.review.tables import ReviewVerdict
from andon.service.review.verdicts import history
from andon.service.schemas import InspectionOut
from andon.service.tables import Inspection

router = APIRouter(tags=["review"])


class VerdictIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    verdict: Literal["confirm_defect", "false_alarm", "cant_tell"]
    label: str | None = Field(
        None,
        max_length=128,
        description="confirm_defect: the defect type, if not the "
        "model's (re-label); false_alarm: the good class (default); cant_tell: none",
    )
    comment: str | None = Field(None, max_length=2000)
    supersedes: int | None = Field(
        None,
        description="the id of the verdict this one replaces (null for the "
        "frame's first); a mismatch means someone judged it meanwhile: 409",
    )


class VerdictOut(BaseModel):
    id: int
    inspection_id: str
    verdict: str
    label: str | None
    comment: str | None
    reviewer: str
    created_at: dt.datetime
    model_label: str
    model_decision: str
    model_score: float
    superseded_at: dt.datetime | None
    superseded_by: int | None

    @classmethod
    def from_row(cls, row: ReviewVerdict) -> VerdictOut:
        return cls(
            id=row.id,
            inspection_id=row.inspection_id,
            verdict=row.verdict,
            label=row.label,
            comment=row.comment,
            reviewer=row.reviewer,
            created_at=row.created_at,
            model_label=row.model_label,
            model_decision=row.model_decision,
            model_score=row.model_score,
            superseded_at=row.superseded_at,
            superseded_by=row.superseded_by,
        )


class VerdictRecorded(VerdictOut):
    review_status: str
    waiting: int = Field(description="flagged frames still waiting for a verdict, all lines")
    escalated: int


class QueueOut(BaseModel):
    items: list[InspectionOut]
    next_cursor: str | None
    count: int = Field(
        description="frames in this queue with these filters (with a line or camera filter: at "
        "most 1,001 per decision, read as '1,000+')"
    )
    waiting: int
    escalated: int


def reviewer_of(principal: Principal) -> tuple[str, int | None]:
    """(name for the audit trail, user id) of whoever gives a verdict; anonymous callers may not."""
    if isinstance(principal, UserPrincipal):
        return principal.name, principal.user_id
    if principal.anonymous:
        raise AuthenticationError(
            "a verdict must name who gave it: log in to the review page, or use an operator or engineer API key"
        )
    return f"key:{principal.name}", None


@router.post(
    "/v1/inspections/{inspection_id}/verdicts",
    status_code=201,
    response_model=VerdictRecorded,
    summary="Give (or change) the verdict on a flagged frame",
)
async def post_verdict(inspection_id: str, body: VerdictIn, ctx: ContextDep, principal: CanReview) -> Any:
    reviewer, user_id = reviewer_of(principal)

    def work() -> VerdictRecorded:
        with ctx.sessions() as session:
            given = give_verdict(
                ctx,
                session,
                inspection_id,
                verdict=body.verdict,
                label=body.label,
                comment=body.comment,
                reviewer=reviewer,
                user_id=user_id,
                supersedes=body.supersedes,
            )
            return VerdictRecorded(
                **VerdictOut.from_row(given.verdict).model_dump(),
                review_status=given.inspection.review_status,
                **given.counts,
            )

    return await run_in_threadpool(work)


@router.get(
    "/v1/inspections/{inspection_id}/verdicts",
    response_model=list[VerdictOut],
    summary="Every verdict on a frame, oldest first (the audit trail)",
)
def get_verdicts(inspection_id: str, session: SessionDep, _: CanRead) -> Any:
    if session.get(Inspection, inspection_id) is None:
        raise NotFoundError(f"no inspection with id {inspection_id!r}")
    return [VerdictOut.from_row(v) for v in history(session, inspection_id)]


@router.get("/v1/review/queue", response_model=QueueOut, summary="The review queue, newest first (keyset pages)")
def get_queue(
    session: SessionDep,
    ctx: ContextDep,
    _: CanRead,
    status: Annotated[Literal["waiting", "escalated", "reviewed", "audit"], Query()] = "waiting",
    decision: Annotated[Literal["all", "reject", "review"], Query()] = "all",
    line_id: Annotated[str | None, Query(max_length=64)] = None,
    camera_id: Annotated[str | None, Query(max_length=64)] = None,
    since: Annotated[dt.datetime | None, Query(description="created at or after (ISO 8601 with zone)")] = None,
    until: Annotated[dt.datetime | None, Query(description="created before (ISO 8601 with zone)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = q.PAGE_SIZE,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
) -> Any:
    f = q.QueueFilter(
        status=status, decision=decision, line_id=line_id, camera_id=camera_id, since=_aware(since), until=_aware(until)
    )
    result = q.page(session, f, cursor=q.Cursor.decode(cursor) if cursor else None, limit=limit, full=True)
    total, counts = q.totals(session, f, ctx.review.counts)
    return QueueOut(
        items=[InspectionOut.from_row(r) for r in result.items], next_cursor=result.next_cursor, count=total, **counts
    )


@router.get(
    "/v1/review/dashboard",
    summary="The line dashboard's numbers (engineers): decisions, rates, "
    "which signal flagged the flagged frames, operator agreement, drift, alerts",
)
async def get_dashboard(
    ctx: ContextDep,
    principal: CanRead,
    line_id: Annotated[str | None, Query(max_length=64)] = None,
    camera_id: Annotated[str | None, Query(max_length=64)] = None,
    window: Annotated[Literal["24h", "7d", "30d"], Query()] = "24h",
) -> Any:
    from andon.service.review import dashboard as dash
    from andon.service.review.dashboard_pages import cached_board

    if principal.role not in (None, "engineer"):
        raise PermissionDeniedError(f"the line dashboard is for engineers; a {principal.role} may not read it")
    board = await run_in_threadpool(
        cached_board, ctx, dash.DashboardQuery(line_id=line_id, camera_id=camera_id, window=window)
    )
    return board.summary()


def _aware(value: dt.datetime | None) -> dt.datetime | None:
    if value is not None and value.tzinfo is None:
        from andon.service.errors import InvalidRequestError

        raise InvalidRequestError(f"{value.isoformat()} has no time zone; add Z or +hh:mm")
    return value
