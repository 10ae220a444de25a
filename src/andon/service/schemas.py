"""Request and response bodies of the API (what /docs shows)."""

from __future__ import annotations

import datetime as dt
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from andon.service.tables import Inspection

_ID = r"^[A-Za-z0-9][A-Za-z0-9._:/-]*$"

DecisionName = Literal["pass", "review", "reject"]
#: a product (SKU) id: as a model version (andon.service.registry.check_product)
_PRODUCT = r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,63}$"


class FrameMeta(BaseModel):
    """Where a frame comes from. Sent as query parameters with a raw image body, or as multipart fields."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    camera_id: str = Field(min_length=1, max_length=64, pattern=_ID)
    line_id: str = Field(min_length=1, max_length=64, pattern=_ID)
    part_id: str | None = Field(None, min_length=1, max_length=128, pattern=_ID)
    serial: str | None = Field(None, min_length=1, max_length=128)
    captured_at: dt.datetime | None = Field(None, description="capture time (ISO 8601 with a time zone)")
    product: str | None = Field(
        None,
        min_length=1,
        max_length=64,
        pattern=_PRODUCT,
        description="the product (SKU) to judge the frame as; default: the line's selected product, else the default",
    )

    @field_validator("captured_at")
    @classmethod
    def _utc(cls, v: dt.datetime | None) -> dt.datetime | None:
        if v is None:
            return None
        if v.tzinfo is None:
            raise ValueError(f"{v.isoformat()} has no time zone; add Z or +hh:mm")
        return v.astimezone(dt.timezone.utc)


class InspectionOut(BaseModel):
    id: str
    created_at: dt.datetime
    captured_at: dt.datetime | None
    line_id: str
    camera_id: str
    part_id: str | None
    serial: str | None
    label: str
    decision: DecisionName
    defect_score: float
    scores: dict[str, float]
    reason: str | None = Field(
        description="the decision's reason code: 'pass', the signal that decided ('defect', "
        "a defect class with its own band, 'anomaly') or 'unknown defect' (the classifier "
        "passed the part, the good-only anomaly score flagged it); null for records from "
        "before the reason was stored"
    )
    anomaly_score: float | None = Field(description="the good-only anomaly score (models with an anomaly detector)")
    reasons: list[str]
    model_version: str
    model_hash: str
    product: str | None = Field(None, description="the product (SKU) it was judged under; null: the default product")
    image_size: tuple[int, int] = Field(description="(height, width) of the frame")
    image_format: str
    image_stored: bool
    heatmap_available: bool
    review_status: str
    timings_ms: dict[str, float]
    heatmap: list[list[float]] | None = Field(
        None, description="only with ?heatmap=true", exclude_if=lambda v: v is None
    )

    @classmethod
    def from_row(cls, row: Inspection, heatmap: list[list[float]] | None = None) -> InspectionOut:
        return cls(
            id=row.id,
            created_at=row.created_at,
            captured_at=row.captured_at,
            line_id=row.line_id,
            camera_id=row.camera_id,
            part_id=row.part_id,
            serial=row.serial,
            label=row.label,
            decision=row.decision,
            defect_score=row.defect_score,
            scores=row.scores,
            reason=row.reason,
            anomaly_score=row.anomaly_score,
            reasons=row.reasons,
            model_version=row.model_version,
            model_hash=row.model_hash,
            product=row.product,
            image_size=(row.image_height, row.image_width),
            image_format=row.image_format,
            image_stored=row.image_key is not None,
            heatmap_available=row.heatmap_key is not None,
            review_status=row.review_status,
            timings_ms=row.timings_ms,
            heatmap=heatmap,
        )


class InspectionPage(BaseModel):
    items: list[InspectionOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next (older) page; null at the end")


class BatchOut(BaseModel):
    items: list[InspectionOut]


class PartOut(BaseModel):
    part_id: str
    decision: DecisionName
    policy: str
    frames: int
    decisions: dict[str, int]
    cameras: list[str]
    lines: list[str]
    first_at: dt.datetime
    last_at: dt.datetime
    inspections: list[InspectionOut]


class ModelVersionOut(BaseModel):
    version: str
    name: str
    content_hash: str
    file_sha256: str
    size_bytes: int
    added_at: str
    source: str
    active: bool
    previous: bool
    shadow: bool


class LoadedModel(BaseModel):
    version: str
    hash: str


class RegistryOut(BaseModel):
    active: str | None
    previous: str | None
    shadow: str | None
    generation: int
    loaded_active: LoadedModel | None
    loaded_shadow: LoadedModel | None
    load_error: str | None
    versions: list[ModelVersionOut]
    products: dict[str, dict[str, str | None]] = Field(
        default_factory=dict, description="product (SKU) -> its active and previous version"
    )
    lines: dict[str, str] = Field(default_factory=dict, description="line -> the product it runs now")


class ShadowIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str


class ShadowStats(BaseModel):
    shadow: str | None
    active: str | None
    compared: int
    agree_decision: int
    disagree_decision: int
    agree_label: int
    decision_agreement: float | None
    confusion: dict[str, dict[str, int]] = Field(description="active decision -> shadow decision -> frames")
    skipped_for_load: int


class KeyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: Literal["camera", "monitor", "operator", "engineer"]
    camera_id: str | None = Field(None, min_length=1, max_length=64, pattern=_ID)
    name: str | None = Field(None, max_length=128)


class KeyOut(BaseModel):
    id: str
    name: str
    role: str
    camera_id: str | None
    created_at: dt.datetime
    last_used_at: dt.datetime | None = None
    revoked_at: dt.datetime | None


class KeyCreated(KeyOut):
    key: str = Field(description="the secret key; shown only now")


class RetentionOut(BaseModel):
    images_pruned: int
    bytes_freed: int
    #: stored files no record named (left by a crash between image and record), deleted
    orphans_removed: int = 0
    orphan_bytes: int = 0


class ProductOut(BaseModel):
    product: str
    active: str | None
    previous: str | None
    loaded: LoadedModel | None = Field(description="the model this process judges the product's frames with")
    lines: list[str] = Field(description="the lines that run this product now")


class ProductsOut(BaseModel):
    products: list[ProductOut]
    default: str | None = Field(description="the default product's active version (frames of lines without one)")
    lines: dict[str, str] = Field(description="line -> the product it runs (lines not named run the default)")


class LineProductIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    product: str | None = Field(description="a product with a model promoted for it, or null for the default")


class ProductSwitchOut(BaseModel):
    id: int
    at: dt.datetime = Field(description="when it took effect in the process that made it")
    line_id: str
    from_product: str | None
    to_product: str | None
    source: str
    actor: str | None
    generation: int


class LineProductOut(BaseModel):
    line_id: str
    product: str | None = Field(description="the product the line runs now; null: the default")
    model_version: str | None = Field(description="the version its frames are judged with")
    changed: bool | None = Field(None, description="PUT: whether this call switched the product")
    switch: ProductSwitchOut | None = Field(None, description="PUT: the recorded switch, when there was one")


class ProductSwitchPage(BaseModel):
    items: list[ProductSwitchOut]
