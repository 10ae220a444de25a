"""/v1/alarms: the line's active alarms and the latest raised and cleared ones (docs/line.md, "Alarms")."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from andon.service.deps import CanRead, ContextDep, SessionDep
from andon.service.line.alarms import active_alarms, recent_alarms

router = APIRouter(prefix="/v1/alarms", tags=["line"])


@router.get("", summary="Active alarms (p-chart, score drift, frame quality) and the latest raised or cleared ones")
def list_alarms(
    session: SessionDep,
    ctx: ContextDep,
    _: CanRead,
    line_id: Annotated[str | None, Query(max_length=64)] = None,
    recent: Annotated[int, Query(ge=0, le=500, description="how many of the latest alarms, active or not")] = 20,
) -> Any:
    evaluator = ctx.alarms
    last = evaluator.last if evaluator is not None else None
    return {
        "watching": list(ctx.settings.alarms),
        "evaluated_at": None if last is None else last.at.isoformat().replace("+00:00", "Z"),
        "failing": None if evaluator is None else evaluator.failing,
        "active": [a.as_dict() for a in active_alarms(session, line_id)],
        "recent": [a.as_dict() for a in recent_alarms(session, recent, line_id)] if recent else [],
    }
