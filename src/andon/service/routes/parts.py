"""/v1/parts/{part_id}: one verdict for a part seen by several cameras (or several times)."""

from __future__ import annotations

from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Path
from sqlalchemy import select

from andon.errors import NotFoundError
from andon.inspect.decision import DECISION_RANK, worst_decision
from andon.service.deps import CanRead, ContextDep, SessionDep
from andon.service.schemas import InspectionOut, PartOut
from andon.service.tables import Inspection

router = APIRouter(prefix="/v1/parts", tags=["parts"])

MAX_FRAMES = 1000


def combine(decisions: list[str], policy: str) -> str:
    """The part's decision from its frames' decisions.

    worst: the worst frame decides (one reject rejects the part) - the safe default on a line.
    majority: the most common decision; a tie goes to the worse one.
    """
    if not decisions:
        raise ValueError("a part needs at least one frame")
    if policy == "worst":
        return worst_decision(decisions)
    counts = Counter(decisions)
    return max(counts, key=lambda d: (counts[d], DECISION_RANK[d]))


@router.get("/{part_id}", response_model=PartOut, summary="The combined verdict of every frame of a part")
def get_part(part_id: Annotated[str, Path(max_length=128)], session: SessionDep, ctx: ContextDep, _: CanRead) -> Any:
    rows = list(
        session.scalars(
            select(Inspection).where(Inspection.part_id == part_id).order_by(Inspection.id).limit(MAX_FRAMES)
        )
    )
    if not rows:
        raise NotFoundError(f"no frames for part {part_id!r}")
    policy = ctx.settings.part_policy
    decisions = [r.decision for r in rows]
    return PartOut(
        part_id=part_id,
        decision=combine(decisions, policy),
        policy=policy,
        frames=len(rows),
        decisions=dict(Counter(decisions)),
        cameras=sorted({r.camera_id for r in rows}),
        lines=sorted({r.line_id for r in rows}),
        first_at=rows[0].created_at,
        last_at=rows[-1].created_at,
        inspections=[InspectionOut.from_row(r) for r in rows],
    )
