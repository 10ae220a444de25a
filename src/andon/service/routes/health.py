"""/livez, /readyz and /metrics: for the orchestrator and Prometheus.

``/livez`` never needs a credential. ``/metrics`` (camera and line labels) and ``/readyz`` (model version,
queue depth) need a monitor, operator or engineer key unless ``health_is_public(settings)``: the
``public_health`` setting, by default true only when the service is bound to loopback.
"""

from __future__ import annotations

import logging
import os
import shutil
from typing import Any

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from andon.service.db import check_writable, sqlite_folder
from andon.service.deps import CanManage, CanMonitor, ContextDep
from andon.service.retention import prune
from andon.service.schemas import RetentionOut

router = APIRouter(tags=["health"])
log = logging.getLogger("andon.service")


@router.get("/livez", summary="The process is up (nothing else is checked)")
async def livez() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    summary="Model loaded and warm, storage writable, disk above the low-water mark",
    responses={503: {"description": "not ready; 'reasons' says why"}},
    dependencies=[CanMonitor],
)
async def readyz(ctx: ContextDep) -> Any:
    reasons = [ctx.registry.redact(r) for r in await run_in_threadpool(readiness_problems, ctx)]
    models = ctx.runtime.snapshot()
    body = {
        "status": "ready" if not reasons else "not ready",
        "reasons": reasons,
        "model_version": models.active.model_version if models.active else None,
        "shadow_version": models.shadow.model_version if models.shadow else None,
        "queue_depth": ctx.admission.depth,
        "queue_capacity": ctx.admission.capacity,
    }
    if reasons:
        return JSONResponse(body, status_code=503, headers={"Retry-After": "5"})
    return body


def readiness_problems(ctx) -> list[str]:
    reasons = []
    if ctx.runtime.snapshot().active is None:
        reasons.append(ctx.runtime.last_error or "no active model (add one and promote it)")
    problem = ctx.store.healthcheck()
    if problem:
        reasons.append(problem)
    try:
        check_writable(ctx.engine)
    except Exception as exc:  # noqa: BLE001 - any driver error means not ready
        log.warning("readiness: database check failed: %s", exc)
        reasons.append("database unreachable (the service log has the driver's message)")
    free = ctx.store.free_bytes()
    low = ctx.settings.min_free_disk_mb * 1024 * 1024
    if free is not None and free < low:
        reasons.append(
            f"disk nearly full: {free // (1024 * 1024)} MB free, the low-water mark is "
            f"{ctx.settings.min_free_disk_mb} MB"
        )
    # the SQLite file on a disk of its own: its free space counts too (commits fail on a full disk)
    folder = sqlite_folder(ctx.engine)
    if folder is not None and low > 0:
        try:
            images = ctx.store.root if ctx.store.root.exists() else ctx.store.root.parent
            if os.stat(folder).st_dev != os.stat(images).st_dev:
                db_free = shutil.disk_usage(folder).free
                if db_free < low:
                    reasons.append(
                        f"database disk nearly full: {db_free // (1024 * 1024)} MB free in {folder}, the "
                        f"low-water mark is {ctx.settings.min_free_disk_mb} MB"
                    )
        except (OSError, AttributeError):  # no local root (another store), or the folder is gone
            pass
    return reasons


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, dependencies=[CanMonitor])
def metrics(ctx: ContextDep) -> Response:
    return Response(ctx.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")


@router.post(
    "/v1/admin/retention",
    response_model=RetentionOut,
    tags=["admin"],
    summary="Run the retention policy now (it also runs periodically)",
)
async def run_retention(ctx: ContextDep, _: CanManage) -> Any:
    s = ctx.settings
    report = await run_in_threadpool(
        prune,
        ctx.sessions,
        ctx.store,
        pass_days=s.retention_pass_days,
        reviewed_days=s.retention_reviewed_days,
        orphan_grace_s=s.orphan_grace_s,
    )
    return RetentionOut(
        images_pruned=report.images_pruned,
        bytes_freed=report.bytes_freed,
        orphans_removed=report.orphans_removed,
        orphan_bytes=report.orphan_bytes,
    )
