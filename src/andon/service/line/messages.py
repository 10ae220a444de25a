"""What a sink is given: one verdict, as the line sees it (after the deadline rule)."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass

from andon.service.line.errors import LineValueError

#: the result codes the PLC reads (docs/line.md): 0 is never written, so a zeroed register is never a pass
RESULT_CODES: dict[str, int] = {"pass": 1, "review": 2, "reject": 3}


def result_code(decision: str) -> int:
    try:
        return RESULT_CODES[decision]
    except KeyError:
        raise LineValueError(
            f"decision {decision!r} has no result code; the line knows {', '.join(RESULT_CODES)}"
        ) from None


@dataclass(frozen=True)
class Verdict:
    """One delivery. ``decision`` is what the line must do (reject when ``late``); ``model_decision`` is the
    model's, as recorded."""

    sequence: int
    kind: str
    inspection_id: str | None
    line_id: str
    camera_id: str | None
    part_id: str | None
    serial: str | None
    decision: str
    model_decision: str
    reason: str | None
    model_version: str
    received_at: dt.datetime
    latency_ms: float
    late: bool
    #: a part verdict's cameras and their decisions (None for a frame verdict)
    cameras: dict[str, str] | None = None
    #: a part verdict's cameras that had not reported by the deadline (the decision is then reject)
    missing: tuple[str, ...] = ()
    #: the product (SKU) the verdict was judged under; None: the default product
    product: str | None = None

    def __post_init__(self) -> None:
        result_code(self.decision)
        result_code(self.model_decision)
        if self.late and self.decision != "reject":
            raise LineValueError(f"a late verdict is delivered as reject, not {self.decision!r}")
        if self.missing and self.decision != "reject":
            raise LineValueError(f"a part verdict with cameras missing is delivered as reject, not {self.decision!r}")
        for decision in (self.cameras or {}).values():
            result_code(decision)
        if not isinstance(self.sequence, int) or self.sequence < 1:
            raise LineValueError(f"sequence numbers start at 1; got {self.sequence!r}")

    def as_json(self) -> bytes:
        """The MQTT payload (docs/line.md lists the fields)."""
        body = {
            "sequence": self.sequence,
            "kind": self.kind,
            "inspection_id": self.inspection_id,
            "line_id": self.line_id,
            "camera_id": self.camera_id,
            "part_id": self.part_id,
            "serial": self.serial,
            "decision": self.decision,
            "model_decision": self.model_decision,
            "reason": self.reason,
            "model_version": self.model_version,
            "product": self.product,
            "received_at": self.received_at.isoformat().replace("+00:00", "Z"),
            "latency_ms": round(self.latency_ms, 3),
            "late": self.late,
        }
        if self.kind == "part":
            body["cameras"] = dict(self.cameras or {})
            body["missing_cameras"] = list(self.missing)
        return json.dumps(body, separators=(",", ":")).encode()
