"""/v1/models: the registry through the API (engineer keys only): add, list, promote, roll back, shadow.

``?product=SKU`` on promote and rollback works on that product's active/previous version (recipes per
product, ``andon.service.products``); without it, on the default, as always.

Every refusal goes through ``public()``: the answer names the version or "upload" and says what is allowed,
never a server path or onnxruntime's own text (the log keeps those). An invalid version name is a bad
request (422 invalid_request); a clash with what the registry holds is a conflict (409).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import case, func, select
from starlette.concurrency import run_in_threadpool

from andon.errors import AndonError
from andon.service.deps import CanManage, ContextDep, SessionDep
from andon.service.schemas import LoadedModel, ModelVersionOut, RegistryOut, ShadowIn, ShadowStats
from andon.service.tables import ShadowResult

router = APIRouter(prefix="/v1/models", tags=["models"])

ProductQuery = Annotated[
    str | None,
    Query(max_length=200, description="a product (SKU): its own active version, instead of the default's"),
]

_ONNX_BODY = {
    "requestBody": {
        "required": True,
        "description": "the exported .onnx file as the body",
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }
}


@contextlib.contextmanager
def public(ctx) -> Iterator[None]:
    """Registry and runtime errors as an API answer may show them (``ModelRegistry.public_error``)."""
    try:
        yield
    except AndonError as exc:
        raise ctx.registry.public_error(exc) from None


def registry_view(ctx) -> RegistryOut:
    state = ctx.registry.state()
    models = ctx.runtime.snapshot()
    versions = [
        ModelVersionOut(
            **e.to_dict(),
            active=e.version == state.active,
            previous=e.version == state.previous,
            shadow=e.version == state.shadow,
        )
        for e in ctx.registry.entries()
    ]
    return RegistryOut(
        active=state.active,
        previous=state.previous,
        shadow=state.shadow,
        generation=state.generation,
        loaded_active=_loaded(models.active),
        loaded_shadow=_loaded(models.shadow),
        load_error=ctx.registry.redact(ctx.runtime.last_error) if ctx.runtime.last_error else None,
        versions=versions,
        products=state.products,
        lines=state.lines,
    )


def _loaded(inspector) -> LoadedModel | None:
    return None if inspector is None else LoadedModel(version=inspector.model_version, hash=inspector.model_hash)


@router.get("", response_model=RegistryOut)
def list_models(ctx: ContextDep, _: CanManage) -> Any:
    with public(ctx):
        return registry_view(ctx)


@router.post(
    "",
    status_code=201,
    response_model=ModelVersionOut,
    openapi_extra=_ONNX_BODY,
    responses={200: {"model": ModelVersionOut, "description": "this file was already registered: nothing changed"}},
    summary="Add an exported model to the registry (validated and warmed up first)",
)
async def add_model(request: Request, response: Response, ctx: ContextDep, _: CanManage) -> Any:
    data = await request.body()
    with public(ctx):
        entry, created = await run_in_threadpool(
            ctx.registry.add, data, source="upload", validate=ctx.runtime.validate_file
        )
    if not created:
        response.status_code = 200
    state = ctx.registry.state()
    return ModelVersionOut(
        **entry.to_dict(),
        active=entry.version == state.active,
        previous=entry.version == state.previous,
        shadow=entry.version == state.shadow,
    )


@router.post(
    "/{version}/promote",
    response_model=RegistryOut,
    summary="Make a version active: load, validate, warm up, then switch atomically",
)
async def promote(version: str, ctx: ContextDep, _: CanManage, product: ProductQuery = None) -> Any:
    with public(ctx):
        await run_in_threadpool(lambda: ctx.runtime.promote(version, product=product))
    ctx.metrics.model_swaps.inc()
    return registry_view(ctx)


@router.post("/rollback", response_model=RegistryOut, summary="Swap back to the previous version")
async def rollback(ctx: ContextDep, _: CanManage, product: ProductQuery = None) -> Any:
    with public(ctx):
        await run_in_threadpool(lambda: ctx.runtime.rollback(product=product))
    ctx.metrics.model_swaps.inc()
    return registry_view(ctx)


@router.put("/shadow", response_model=RegistryOut, summary="Score frames with a candidate next to the active model")
async def set_shadow(body: ShadowIn, ctx: ContextDep, _: CanManage) -> Any:
    with public(ctx):
        await run_in_threadpool(ctx.runtime.set_shadow, body.version)
    return registry_view(ctx)


@router.delete("/shadow", response_model=RegistryOut, summary="Stop shadow scoring")
async def clear_shadow(ctx: ContextDep, _: CanManage) -> Any:
    with public(ctx):
        await run_in_threadpool(ctx.runtime.set_shadow, None)
    return registry_view(ctx)


@router.get(
    "/shadow",
    response_model=ShadowStats,
    summary="How often the shadow model agrees with the active one (the evidence for promoting)",
)
def shadow_stats(ctx: ContextDep, session: SessionDep, _: CanManage, version: str | None = None) -> Any:
    state = ctx.registry.state()
    version = version or state.shadow
    confusion: dict[str, dict[str, int]] = {}
    compared = agree = agree_label = 0
    if version is not None:
        with public(ctx):
            entry = ctx.registry.get(version)
        rows = session.execute(
            select(
                ShadowResult.active_decision,
                ShadowResult.decision,
                func.count(),
                func.sum(case((ShadowResult.agree_label, 1), else_=0)),
            )
            .where(ShadowResult.model_version == entry.version, ShadowResult.model_hash == entry.content_hash)
            .group_by(ShadowResult.active_decision, ShadowResult.decision)
        ).all()
        for active_decision, shadow_decision, count, labels in rows:
            confusion.setdefault(active_decision, {})[shadow_decision] = int(count)
            compared += int(count)
            agree_label += int(labels or 0)
            if active_decision == shadow_decision:
                agree += int(count)
    return ShadowStats(
        shadow=version,
        active=state.active,
        compared=compared,
        agree_decision=agree,
        disagree_decision=compared - agree,
        agree_label=agree_label,
        decision_agreement=(agree / compared) if compared else None,
        confusion=confusion,
        skipped_for_load=ctx.pipeline.shadow_skipped,
    )
