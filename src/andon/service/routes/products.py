"""Recipes per product over the API: the products and the lines' selections (read), a line's product switched
(engineers, as the model routes), and the recorded switches (``andon.service.products``).

    GET  /v1/products                    each product's active/previous version and the lines running it
    GET  /v1/products/switches           the recorded switches, newest first (?line_id=, ?limit=)
    GET  /v1/lines/{line_id}/product     what the line runs now
    PUT  /v1/lines/{line_id}/product     {"product": "SKU-A"} or {"product": null} (the default)
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from andon.service.auth import Principal
from andon.service.deps import CanManage, CanRead, ContextDep
from andon.service.registry import check_line
from andon.service.schemas import (
    LineProductIn,
    LineProductOut,
    LoadedModel,
    ProductOut,
    ProductsOut,
    ProductSwitchOut,
    ProductSwitchPage,
)
from andon.service.tables import ProductSwitch

router = APIRouter(tags=["products"])


@router.get("/v1/products", response_model=ProductsOut, summary="Products (SKU recipes) and the lines running them")
def list_products(ctx: ContextDep, _: CanRead) -> Any:
    state = ctx.registry.state()
    loaded = ctx.runtime.snapshot().products
    products = [
        ProductOut(
            product=sku,
            active=p.get("active"),
            previous=p.get("previous"),
            loaded=None
            if sku not in loaded
            else LoadedModel(version=loaded[sku].model_version, hash=loaded[sku].model_hash),
            lines=sorted(line for line, chosen in state.lines.items() if chosen == sku),
        )
        for sku, p in sorted(state.products.items())
    ]
    return ProductsOut(products=products, default=state.active, lines=state.lines)


@router.get("/v1/products/switches", response_model=ProductSwitchPage, summary="Recorded product switches")
def list_switches(
    ctx: ContextDep,
    _: CanRead,
    line_id: Annotated[str | None, Query(max_length=64)] = None,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
) -> Any:
    rows = ctx.products.switches(line_id=line_id, limit=limit)
    return ProductSwitchPage(items=[_switch(r) for r in rows])


@router.get("/v1/lines/{line_id}/product", response_model=LineProductOut, summary="The product a line runs now")
def get_line_product(line_id: str, ctx: ContextDep, _: CanRead) -> Any:
    check_line(line_id)
    return _line(ctx, line_id)


@router.put(
    "/v1/lines/{line_id}/product",
    response_model=LineProductOut,
    summary="Switch a line's product: atomic (every frame is judged wholly under one product) and recorded",
)
async def put_line_product(line_id: str, body: LineProductIn, ctx: ContextDep, who: CanManage) -> Any:
    switch = await run_in_threadpool(
        lambda: ctx.products.select(line_id, body.product, source="api", actor=_actor(who))
    )
    out = _line(ctx, line_id)
    out.changed = switch.changed
    out.switch = None if switch.record is None else _switch(switch.record)
    return out


def _line(ctx, line_id: str) -> LineProductOut:
    models = ctx.runtime.snapshot()
    product = models.lines.get(line_id)
    inspector = models.active if product is None else models.products.get(product)
    return LineProductOut(
        line_id=line_id, product=product, model_version=None if inspector is None else inspector.model_version
    )


def _switch(row: ProductSwitch) -> ProductSwitchOut:
    return ProductSwitchOut(
        id=row.id,
        at=row.at,
        line_id=row.line_id,
        from_product=row.from_product,
        to_product=row.to_product,
        source=row.source,
        actor=row.actor,
        generation=row.generation,
    )


def _actor(who: Principal) -> str | None:
    if who.key_id:
        return f"key {who.key_id}"
    return None if who.anonymous else f"{who.role} {who.name}"
