"""``create_app(settings)``: the FastAPI application, everything wired once.

The lifespan migrates the database (Alembic ``upgrade head``), registers ``--model`` if given, loads and
warms up the registry's active (and shadow) model, and starts two background loops: the registry poller
(model swaps made by the CLI or another worker) and retention. Shutdown waits for in-flight inference.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool

from andon import __version__
from andon.service import errors, memory, openapi
from andon.service.admission import Admission
from andon.service.auth import KeyDirectory, api_key_authenticator
from andon.service.cards import CardLookup
from andon.service.db import migrate
from andon.service.deps import ServiceContext
from andon.service.domain import ServiceData
from andon.service.line import build_line
from andon.service.line.alarms import build_alarms
from andon.service.metrics import Metrics
from andon.service.middleware import BodyLimit, RequestMetrics
from andon.service.pipeline import Pipeline
from andon.service.products import ProductSelector
from andon.service.retention import prune, sweep_at_start
from andon.service.review.web import install as install_review_station
from andon.service.routes import alarms as alarm_routes
from andon.service.routes import health, inspections, keys, models, parts, products
from andon.service.runtime import ModelRuntime
from andon.service.settings import Settings

log = logging.getLogger("andon.service")

DESCRIPTION = """Line cameras post frames; the service answers pass / review / reject and durably stores what
operators must review. Errors are always `{"error": code, "message": text}`. Credentials: `Authorization:
Bearer andon_...` (or `X-API-Key`); roles camera (post for its own camera id), operator (read, review),
engineer (models, keys)."""


def build_context(settings: Settings) -> ServiceContext:
    """Every long-lived object of the service, without side effects (no migration, no model load)."""
    data = ServiceData(settings, pool_size=max(8, settings.inference_threads + settings.queue_size // 2), migrate=False)
    engine, sessions, store, registry = data.engine, data.sessions, data.store, data.registry
    metrics = Metrics()
    runtime = ModelRuntime(registry, settings)
    runtime.on_swap.append(
        lambda m: metrics.set_active_model(
            m.active.model_version if m.active else None, m.active.model_hash if m.active else None
        )
    )
    runtime.on_swap.append(lambda m: memory.trim())
    admission = Admission(
        settings.inference_threads,
        settings.queue_size,
        memory_bytes=settings.memory_budget_mb * 1024 * 1024,
        retry_after=settings.retry_after_s,
        on_depth=metrics.queue_depth.set,
    )
    metrics.queue_capacity.set(admission.capacity)
    keydir = KeyDirectory(sessions, allow_open_after_keys=settings.allow_open_mode_after_keys)
    pipeline = Pipeline(settings, runtime, admission, store, sessions, metrics, keydir)
    pipeline.line = build_line(settings, sessions, lambda: runtime.ready, metrics.registry)  # None: no line sinks
    products = ProductSelector(runtime, sessions)
    if pipeline.line is not None:
        pipeline.line.serve_products(products)  # OPC UA's SelectRecipe (docs/line.md, "OPC UA")
    return ServiceContext(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=store,
        registry=registry,
        runtime=runtime,
        admission=admission,
        metrics=metrics,
        keys=keydir,
        pipeline=pipeline,
        cards=CardLookup(runtime, registry),
        alarms=build_alarms(settings, sessions, pipeline.line),
        products=products,
        authenticators=[api_key_authenticator],
    )


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings.load()
    ctx = build_context(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await run_in_threadpool(start, ctx)
        line = ctx.pipeline.line
        if line is not None:
            line.start()  # the outbox dispatcher and the heartbeat (docs/line.md)
        if ctx.alarms is not None:
            ctx.alarms.start()  # the alarms (docs/line.md, "Alarms"), every alarm_interval_s
        tasks = [asyncio.create_task(_poll_registry(ctx)), asyncio.create_task(_retention_loop(ctx))]
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await run_in_threadpool(ctx.admission.shutdown)
            if ctx.alarms is not None:
                await run_in_threadpool(ctx.alarms.stop)
            if line is not None:
                await run_in_threadpool(line.stop)  # the heartbeat stops; undelivered rows wait in the outbox
            ctx.engine.dispose()
            ctx.store.leave_writers()

    # redirect_slashes=False: Starlette's trailing-slash redirect builds an absolute Location from the Host
    # header (Host: evil.example -> 307 http://evil.example/v1/keys); without it such a path is a 404 in the
    # one error shape, and the service never builds a URL from what the client says its host is.
    app = FastAPI(
        title="andon", version=__version__, description=DESCRIPTION, lifespan=lifespan, redirect_slashes=False
    )
    app.state.ctx = ctx
    app.state.metrics = ctx.metrics
    errors.install(app)
    for router in (inspections.router, parts.router, models.router, products.router, keys.router, health.router):
        app.include_router(router)
    app.include_router(alarm_routes.router)
    install_review_station(app)
    openapi.install(app)
    app.add_middleware(
        BodyLimit,
        limit_for=_limits(settings),
        on_reject=lambda: ctx.metrics.rejections.labels(reason="body_too_large").inc(),
    )
    app.add_middleware(RequestMetrics, metrics=ctx.metrics)
    return app


def create_app_from_environment() -> FastAPI:
    """uvicorn factory for worker processes (``andon serve --workers N``): settings from ANDON_CONFIG + env."""
    return create_app(Settings.from_environment())


def start(ctx: ServiceContext) -> None:
    """Migrate, register ``--model``, load the active model. A broken model leaves the service up, not ready."""
    migrate(ctx.engine)
    # what a crash left (temp files, images whose record never committed); docs/reliability.md has the rule
    sweep_at_start(ctx.sessions, ctx.store, orphan_grace_s=ctx.settings.orphan_grace_s)
    ctx.keys.check_start()
    if ctx.settings.model is not None:
        ctx.runtime.bootstrap(ctx.settings.model)
    ctx.runtime.sync(force=True)
    ctx.metrics.set_active_model(*_active(ctx))
    memory.trim()
    if ctx.runtime.snapshot().active is None:
        log.warning(
            "no active model: %s",
            ctx.runtime.last_error
            or "the registry is empty; 'andon models add FILE' then 'andon models promote VERSION'",
        )


def _active(ctx: ServiceContext) -> tuple[str | None, str | None]:
    active = ctx.runtime.snapshot().active
    return (active.model_version, active.model_hash) if active else (None, None)


def _limits(settings: Settings):
    def limit_for(path: str) -> int:
        if path == "/v1/models":
            return settings.max_model_bytes
        if path == "/v1/inspections/batch":
            return settings.max_batch_bytes
        return settings.max_body_bytes

    return limit_for


async def _poll_registry(ctx: ServiceContext) -> None:
    """Follow the registry (swaps made elsewhere) every registry_poll_s, and at once when PostgreSQL announces a
    change (``ModelRegistry.listen``); trim the heap every half minute while at it."""
    loop = asyncio.get_running_loop()
    last_trim = loop.time()
    woken = asyncio.Event()
    try:
        listener = await run_in_threadpool(ctx.registry.listen, lambda: loop.call_soon_threadsafe(woken.set))
    except Exception:  # noqa: BLE001 - the database is away: the poll alone
        log.warning("registry: no LISTEN for changes; polling every %s s", ctx.settings.registry_poll_s)
        listener = None
    try:
        await _follow_registry(ctx, woken, last_trim)
    finally:
        if listener is not None:
            await run_in_threadpool(listener.stop)


async def _follow_registry(ctx: ServiceContext, woken: asyncio.Event, last_trim: float) -> None:
    while True:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(woken.wait(), ctx.settings.registry_poll_s)
        woken.clear()
        try:
            if await run_in_threadpool(ctx.runtime.sync):
                ctx.metrics.model_swaps.inc()
        except Exception:  # noqa: BLE001 - the poller must survive a bad state file
            log.exception("registry poll failed")
        if asyncio.get_running_loop().time() - last_trim > 30.0:
            await run_in_threadpool(memory.trim)
            last_trim = asyncio.get_running_loop().time()


async def _retention_loop(ctx: ServiceContext) -> None:
    s = ctx.settings
    while True:
        await asyncio.sleep(s.retention_interval_s)
        try:
            await run_in_threadpool(
                prune,
                ctx.sessions,
                ctx.store,
                pass_days=s.retention_pass_days,
                reviewed_days=s.retention_reviewed_days,
                orphan_grace_s=s.orphan_grace_s,
            )
        except Exception:  # noqa: BLE001
            log.exception("retention run failed")
