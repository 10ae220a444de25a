"""/v1/inspections: post frames (one, or a batch), list and read records, their images and heatmaps.

Intake order: the Content-Encoding is checked (only identity: a frame is sent as it is, 415 otherwise); a
frame without an Idempotency-Key takes an inference slot at once (503 when the queue is full, before its
body is read); the body's declared size is reserved in the memory budget while it is read; then the
pipeline looks up a retried key (a replay needs no slot), takes the missing slots, checks and reserves the
decoded frame (``Pipeline.process``).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import time
from collections.abc import Iterator
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, BackgroundTasks, Header, Query, Request, Response
from pydantic import ValidationError
from sqlalchemy import select
from starlette.datastructures import FormData, UploadFile

from andon.errors import NotFoundError
from andon.inspect.decoding import decode
from andon.inspect.heatmap import heatmap_png
from andon.inspect.pixels import fit
from andon.service.deps import CanInspect, CanRead, ContextDep, SessionDep
from andon.service.errors import (
    InvalidRequestError,
    OverloadedError,
    UnsupportedMediaTypeError,
    describe_validation,
)
from andon.service.files import file_response, image_only, safe_filename
from andon.service.heatmaps import stored_heatmap
from andon.service.pipeline import IncomingFrame, run_after
from andon.service.schemas import BatchOut, DecisionName, FrameMeta, InspectionOut, InspectionPage
from andon.service.tables import REVIEW_STATUSES, Inspection

router = APIRouter(prefix="/v1/inspections", tags=["inspections"])

_FILE_FIELDS = ("frame", "file", "image")
_META_FIELDS = ("camera_id", "line_id", "part_id", "serial", "captured_at", "product")
_MEDIA = {"JPEG": "image/jpeg", "PNG": "image/png", "BMP": "image/bmp", "TIFF": "image/tiff"}

_BINARY = {"schema": {"type": "string", "format": "binary"}}
_SINGLE_BODY = {
    "requestBody": {
        "required": True,
        "description": "the frame: the raw image as the body (metadata "
        "as query parameters), or multipart with a file field 'frame' plus the metadata fields",
        "content": {
            "image/jpeg": _BINARY,
            "image/png": _BINARY,
            "image/bmp": _BINARY,
            "image/tiff": _BINARY,
            "application/octet-stream": _BINARY,
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["frame", "camera_id", "line_id"],
                    "properties": {
                        "frame": {"type": "string", "format": "binary"},
                        **{k: {"type": "string"} for k in _META_FIELDS},
                    },
                }
            },
        },
    }
}
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "multipart: repeated file field 'frame'; shared "
        "metadata fields; optional 'meta', a JSON list with one object per frame (camera_id, line_id, "
        "part_id, serial, captured_at, product, idempotency_key) overriding the shared fields",
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["frame"],
                    "properties": {
                        "frame": {"type": "array", "items": {"type": "string", "format": "binary"}},
                        "meta": {"type": "string"},
                        **{k: {"type": "string"} for k in _META_FIELDS},
                    },
                }
            }
        },
    }
}

IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,  # an empty key would name every keyless retry alike: refused (422), not stored
        max_length=255,
        description="a camera retrying the same frame with the same key gets the same answer and no duplicate record",
    ),
]


@router.post("", status_code=201, response_model=InspectionOut, openapi_extra=_SINGLE_BODY, summary="Inspect one frame")
async def create_inspection(
    request: Request,
    response: Response,
    ctx: ContextDep,
    principal: CanInspect,
    background: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
    camera_id: Annotated[str | None, Query(max_length=64)] = None,
    line_id: Annotated[str | None, Query(max_length=64)] = None,
    part_id: Annotated[str | None, Query(max_length=128)] = None,
    serial: Annotated[str | None, Query(max_length=128)] = None,
    captured_at: Annotated[str | None, Query(max_length=64, description="ISO 8601 with a time zone")] = None,
    heatmap: Annotated[bool, Query(description="include the heatmap grid in the answer")] = False,
    product: Annotated[
        str | None,
        Query(max_length=64, description="the product (SKU) to judge as; default: the line's selected product"),
    ] = None,
) -> Any:
    started = time.perf_counter()
    query = {
        "camera_id": camera_id,
        "line_id": line_id,
        "part_id": part_id,
        "serial": serial,
        "captured_at": captured_at,
        "product": product,
    }
    _check_encoding(request)
    with _reject_on_line_if_refused(ctx, principal, query, started):
        weight = 0 if idempotency_key else ctx.admission.acquire(1)  # a retry is looked up before it takes a slot
    try:
        with _reject_on_line_if_refused(ctx, principal, query, started):
            body = ctx.admission.reserve(_declared(request, ctx.settings.max_body_bytes), "the request body")
        try:
            data, fields = await _read_single(request)
            frame = IncomingFrame(data, _meta({**query, **fields}), idempotency_key)
            held, weight = weight, 0  # the pipeline gives the slot back once inference is over
            outcome = await ctx.pipeline.process([frame], principal, heatmap=heatmap, started=started, admitted=held)
        finally:
            ctx.admission.unreserve(body)
    finally:
        if weight:
            ctx.admission.release(weight)
    item = outcome.items[0]
    response.headers["Location"] = f"/v1/inspections/{item.id}"
    if outcome.replayed[0]:
        response.headers["Idempotent-Replayed"] = "true"
    if outcome.after:
        background.add_task(run_after, outcome.after)
    return item


@router.post(
    "/batch",
    status_code=201,
    response_model=BatchOut,
    openapi_extra=_BATCH_BODY,
    summary="Inspect several frames (a line PC); all or nothing",
)
async def create_batch(
    request: Request,
    ctx: ContextDep,
    principal: CanInspect,
    background: BackgroundTasks,
    idempotency_key: IdempotencyKey = None,
    heatmap: Annotated[bool, Query()] = False,
) -> Any:
    started = time.perf_counter()
    _check_encoding(request)
    weight = 0 if idempotency_key else ctx.admission.acquire(1)  # the rest are taken after the key lookup
    try:
        body = ctx.admission.reserve(_declared(request, ctx.settings.max_batch_bytes), "the request body")
        try:
            frames = await _read_batch(request, ctx.settings.max_batch_frames, idempotency_key)
            held, weight = weight, 0  # the pipeline gives the slot back once inference is over
            outcome = await ctx.pipeline.process(frames, principal, heatmap=heatmap, started=started, admitted=held)
        finally:
            ctx.admission.unreserve(body)
    finally:
        if weight:
            ctx.admission.release(weight)
    if outcome.after:
        background.add_task(run_after, outcome.after)
    return BatchOut(items=outcome.items)


@router.get("", response_model=InspectionPage, summary="List inspections, newest first")
def list_inspections(
    session: SessionDep,
    _: CanRead,
    line_id: Annotated[str | None, Query(max_length=64)] = None,
    camera_id: Annotated[str | None, Query(max_length=64)] = None,
    part_id: Annotated[str | None, Query(max_length=128)] = None,
    decision: Annotated[list[DecisionName] | None, Query(description="repeatable")] = None,
    review_status: Annotated[list[str] | None, Query(description=f"repeatable: {', '.join(REVIEW_STATUSES)}")] = None,
    model_version: Annotated[str | None, Query(max_length=128)] = None,
    product: Annotated[str | None, Query(max_length=64, description="the product (SKU) judged under")] = None,
    since: Annotated[dt.datetime | None, Query(description="created at or after (ISO 8601)")] = None,
    until: Annotated[dt.datetime | None, Query(description="created before (ISO 8601)")] = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=26, pattern=r"^[0-9A-Z]{26}$")] = None,
) -> Any:
    query = select(Inspection).order_by(Inspection.id.desc()).limit(limit + 1)
    for column, value in (
        (Inspection.line_id, line_id),
        (Inspection.camera_id, camera_id),
        (Inspection.part_id, part_id),
        (Inspection.model_version, model_version),
        (Inspection.product, product),
    ):
        if value is not None:
            query = query.where(column == value)
    if decision:
        query = query.where(Inspection.decision.in_(decision))
    if review_status:
        query = query.where(Inspection.review_status.in_(review_status))
    if since is not None:
        query = query.where(Inspection.created_at >= _aware(since, "since"))
    if until is not None:
        query = query.where(Inspection.created_at < _aware(until, "until"))
    if cursor is not None:
        query = query.where(Inspection.id < cursor)
    rows = list(session.scalars(query))
    more = len(rows) > limit
    rows = rows[:limit]
    return InspectionPage(
        items=[InspectionOut.from_row(r) for r in rows], next_cursor=rows[-1].id if more and rows else None
    )


@router.get("/{inspection_id}", response_model=InspectionOut)
def get_inspection(
    inspection_id: str, session: SessionDep, ctx: ContextDep, _: CanRead, heatmap: Annotated[bool, Query()] = False
) -> Any:
    row = _get(session, inspection_id)
    grid = None
    if heatmap and row.heatmap_key:
        arr = ctx.pipeline.load_heatmap(row.heatmap_key)
        grid = None if arr is None else np.round(arr.astype(np.float64), 4).tolist()
    return InspectionOut.from_row(row, grid)


@router.get(
    "/{inspection_id}/image",
    response_class=Response,
    responses={
        200: {
            "content": {m: {} for m in _MEDIA.values()},
            "description": "the frame as posted, up to its end (bytes after the image's end are never stored)",
        }
    },
)
def get_image(inspection_id: str, session: SessionDep, ctx: ContextDep, _: CanRead) -> Response:
    row = _get(session, inspection_id)
    if row.image_key is None:
        raise NotFoundError(
            f"inspection {inspection_id} has no stored image ("
            f"{'pruned by retention' if row.image_pruned_at else 'passes are only sampled'})"
        )
    data = image_only(ctx.store.get(row.image_key), f"inspection {inspection_id}")
    return file_response(
        data,
        _MEDIA.get(row.image_format, "application/octet-stream"),
        safe_filename(row.id, row.image_format),
        "private, max-age=86400, immutable",
    )


@router.get(
    "/{inspection_id}/heatmap",
    response_class=Response,
    responses={200: {"content": {"image/png": {}}, "description": "heatmap over the frame (PNG)"}},
)
def get_heatmap(
    inspection_id: str,
    session: SessionDep,
    ctx: ContextDep,
    _: CanRead,
    overlay: Annotated[bool, Query(description="blend over the frame; false: heatmap alone")] = True,
    max_side: Annotated[int, Query(ge=64, le=4096)] = 1024,
    alpha: Annotated[float, Query(ge=0.0, le=1.0)] = 0.5,
) -> Response:
    row = _get(session, inspection_id)
    heat, spec = stored_heatmap(ctx, row)
    image = None
    if overlay and row.image_key is not None:
        image = fit(
            decode(ctx.store.get(row.image_key), target_hw=(max_side, max_side), max_pixels=ctx.settings.max_pixels),
            max_side,
        )
    png = heatmap_png(image, heat, alpha, spec=spec, size=max_side)
    return file_response(png, "image/png", safe_filename(f"{row.id}-heatmap", "png"), "private, max-age=3600")


# ---- helpers -------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _reject_on_line_if_refused(ctx, principal, query: dict[str, Any], started: float) -> Iterator[None]:
    """A 503 before the body is read (queue or memory budget full): the line still gets a reject for the
    frame the query names (``Pipeline.refuse_query``; docs/line.md)."""
    try:
        yield
    except OverloadedError as exc:
        ctx.pipeline.refuse_query(principal, query, exc, started)
        raise


def _get(session, inspection_id: str) -> Inspection:
    row = session.get(Inspection, inspection_id)
    if row is None:
        raise NotFoundError(f"no inspection with id {inspection_id!r}")
    return row


def _aware(value: dt.datetime, name: str) -> dt.datetime:
    if value.tzinfo is None:
        raise InvalidRequestError(f"{name} {value.isoformat()} has no time zone; add Z or +hh:mm")
    return value


def _meta(values: dict[str, Any]) -> FrameMeta:
    values = {k: v for k, v in values.items() if v not in (None, "")}
    try:
        meta = FrameMeta.model_validate(values)
    except ValidationError as exc:
        raise InvalidRequestError(describe_validation(exc.errors())) from None
    return meta


def _check_encoding(request: Request) -> None:
    """Frames are sent as they are: JPEG and PNG are compressed already, and a compressed body would be
    inflated before any limit could see its size. 415 for any Content-Encoding but identity."""
    values = [v.strip().lower() for v in request.headers.getlist("content-encoding") for v in v.split(",")]
    refused = sorted({v[:32] for v in values if v and v != "identity"})[:4]
    if refused:
        raise UnsupportedMediaTypeError(
            f"Content-Encoding {', '.join(refused)} is not accepted; send the image bytes as they are "
            "(accepted: identity, or no Content-Encoding)"
        )


def _declared(request: Request, cap: int) -> int:
    """The body's size for the memory budget: its Content-Length, or the cap when it is chunked."""
    try:
        return min(max(0, int(request.headers.get("content-length", cap))), cap)
    except ValueError:
        return cap


def _media_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _read_single(request: Request) -> tuple[bytes, dict[str, str]]:
    """The frame bytes and the metadata fields sent with them (multipart), or the raw body."""
    media = _media_type(request)
    if media == "multipart/form-data":
        form = await request.form(max_files=2, max_fields=16, max_part_size=64 * 1024)
        try:
            files = _files(form)
            if len(files) != 1:
                raise InvalidRequestError(
                    f"multipart body needs exactly one file field 'frame', got {len(files)}; "
                    "several frames go to /v1/inspections/batch"
                )
            return await files[0].read(), _fields(form, _META_FIELDS)
        finally:
            await form.close()
    if media and not (media.startswith("image/") or media == "application/octet-stream"):
        raise UnsupportedMediaTypeError(
            f"content type {media} is not accepted; send the image as the body "
            "(image/jpeg, image/png, ...) or as multipart/form-data"
        )
    return await request.body(), {}


async def _read_batch(request: Request, max_frames: int, idempotency_key: str | None) -> list[IncomingFrame]:
    if _media_type(request) != "multipart/form-data":
        raise UnsupportedMediaTypeError("a batch is multipart/form-data with one file field 'frame' per frame")
    form = await request.form(max_files=max_frames + 1, max_fields=16, max_part_size=256 * 1024)
    try:
        files = _files(form)
        if not files:
            raise InvalidRequestError("the batch has no file field 'frame'")
        if len(files) > max_frames:
            raise InvalidRequestError(f"a batch has at most {max_frames} frames; split it into several requests")
        shared = _fields(form, (*_META_FIELDS, "meta"))
        per_frame = _per_frame_meta(shared.pop("meta", None), len(files))
        frames = []
        for i, (upload, own) in enumerate(zip(files, per_frame)):
            key = own.pop("idempotency_key", None) or (f"{idempotency_key}#{i}" if idempotency_key else None)
            frames.append(IncomingFrame(await upload.read(), _meta({**shared, **own}), key))
        return frames
    finally:
        await form.close()


def _files(form: FormData) -> list[UploadFile]:
    files = [v for k, v in form.multi_items() if isinstance(v, UploadFile)]
    wrong = sorted({k for k, v in form.multi_items() if isinstance(v, UploadFile) and k not in _FILE_FIELDS})
    if wrong:
        raise InvalidRequestError(f"file fields {wrong} are not known; name the file field 'frame'")
    return files


def _fields(form: FormData, allowed: tuple[str, ...]) -> dict[str, str]:
    out: dict[str, str] = {}
    for key, value in form.multi_items():
        if isinstance(value, UploadFile):
            continue
        if key not in allowed:
            raise InvalidRequestError(f"unknown field {key!r}; allowed: {', '.join(allowed)}")
        out[key] = value
    return out


def _per_frame_meta(raw: str | None, count: int) -> list[dict[str, Any]]:
    if raw is None:
        return [{} for _ in range(count)]
    try:
        items = json.loads(raw)
    except ValueError:
        raise InvalidRequestError("field 'meta' is not JSON; send a list of objects, one per frame") from None
    if not isinstance(items, list) or len(items) != count or not all(isinstance(i, dict) for i in items):
        raise InvalidRequestError(f"field 'meta' must be a JSON list of {count} objects (one per frame)")
    allowed = {*_META_FIELDS, "idempotency_key"}
    for i, item in enumerate(items):
        unknown = sorted(set(item) - allowed)
        if unknown:
            raise InvalidRequestError(f"meta[{i}] has unknown keys {unknown}; allowed: {sorted(allowed)}")
        key = item.get("idempotency_key")
        if key is not None and (not isinstance(key, str) or not 0 < len(key) <= 255):
            raise InvalidRequestError(f"meta[{i}].idempotency_key must be a string of 1 to 255 characters")
    return [dict(i) for i in items]
