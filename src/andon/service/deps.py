"""FastAPI dependencies: the service context, database sessions, the caller and what it may do.

Routes declare what they need with these aliases::

    def list_inspections(session: SessionDep, who: Annotated[Principal, Depends(require("read"))]): ...
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Annotated

from fastapi import Depends, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker
from starlette.concurrency import run_in_threadpool

from andon.service.admission import Admission
from andon.service.auth import ANONYMOUS, KeyDirectory, Permission, Principal, health_is_public, presented_key
from andon.service.cards import CardLookup
from andon.service.errors import AuthenticationError, PermissionDeniedError
from andon.service.metrics import Metrics
from andon.service.pipeline import Pipeline
from andon.service.products import ProductSelector
from andon.service.registry import ModelRegistry
from andon.service.review.queue import CountCache
from andon.service.runtime import ModelRuntime, Models
from andon.service.settings import Settings
from andon.service.storage import ImageStore

if TYPE_CHECKING:
    from andon.service.line.alarms import AlarmEvaluator
    from andon.service.review.dashboard import Dashboard, DashboardQuery


@dataclass
class ReviewState:
    """What the review station keeps between requests, one per process (none of it is shared across workers)."""

    #: the header's waiting counts, a few seconds old at most; a verdict adjusts them (``queue.CountCache``)
    counts: CountCache = field(default_factory=CountCache)
    #: (when read, line ids, camera ids) for the filter menus, re-read after a minute; None before the first page
    menus: tuple[float, list[str], list[str]] | None = None
    #: a built dashboard per query, with when it was built (``dashboard_pages.cached_board``)
    boards: dict[DashboardQuery, tuple[float, Dashboard]] = field(default_factory=dict)


@dataclass
class ServiceContext:
    """Everything a request may need, built once by ``create_app``."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    store: ImageStore
    registry: ModelRegistry
    runtime: ModelRuntime
    admission: Admission
    metrics: Metrics
    keys: KeyDirectory
    pipeline: Pipeline
    #: the model card behind a stored record, by model hash (verdicts, heatmaps, the review pages)
    cards: CardLookup
    #: the lines' products (SKU recipes): ``ctx.products.select(line_id, sku, source="opcua")``
    products: ProductSelector
    authenticators: list[Callable[[Request, Session], Principal | None]] = field(default_factory=list)
    review: ReviewState = field(default_factory=ReviewState)
    #: the alarm evaluator (``andon.service.line.alarms``); None in contexts built without one
    alarms: AlarmEvaluator | None = None


def get_context(request: Request) -> ServiceContext:
    return request.app.state.ctx


ContextDep = Annotated[ServiceContext, Depends(get_context)]


def get_session(ctx: ContextDep) -> Iterator[Session]:
    with ctx.sessions() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]


def get_models(ctx: ContextDep) -> Models:
    """The (active, shadow) pair at the start of the request: in-flight requests keep it across swaps."""
    return ctx.runtime.snapshot()


ModelsDep = Annotated[Models, Depends(get_models)]


async def get_principal(request: Request, ctx: ContextDep) -> Principal:
    """Who is calling; anonymous only in open mode (no key was ever created).

    The authenticators run in a worker thread with their own short session (one primary-key read of the
    key), so the hot path neither blocks the event loop nor holds a database connection while it waits for
    inference. Nothing is cached: a key revoked by the API or the CLI is refused at the next request.
    """
    if presented_key(request.headers) is not None or request.cookies:
        principal = await run_in_threadpool(_authenticate, request, ctx)
        if principal is not None:
            return principal
    if await run_in_threadpool(lambda: ctx.keys.auth_required):
        raise AuthenticationError("this route needs an API key (Authorization: Bearer andon_... or X-API-Key)")
    return ANONYMOUS


def _authenticate(request: Request, ctx: ServiceContext) -> Principal | None:
    with ctx.sessions() as session:
        for authenticate in ctx.authenticators:
            principal = authenticate(request, session)
            if principal is not None:
                return principal
    return None


CurrentPrincipal = Annotated[Principal, Depends(get_principal)]


def require(permission: Permission) -> Callable[[Principal], Principal]:
    """A dependency that lets the call through only if the caller has ``permission``."""

    def check(principal: CurrentPrincipal) -> Principal:
        if principal.may(permission):
            return principal
        if principal.anonymous:
            raise AuthenticationError(
                f"{permission} routes always need an engineer API key, even when no keys "
                "are configured; create one with 'andon keys create --role engineer'"
            )
        article = "an" if str(principal.role)[:1] in "aeiou" else "a"
        kind = "key" if principal.key_id else "login"
        raise PermissionDeniedError(f"{article} {principal.role} {kind} may not {_VERB[permission]}")

    check.__name__ = f"require_{permission}"
    return check


_VERB = {
    "inspect": "post frames",
    "monitor": "read metrics or readiness",
    "read": "read inspections",
    "review": "review inspections",
    "manage": "manage models, keys or retention",
}

CanInspect = Annotated[Principal, Depends(require("inspect"))]
CanRead = Annotated[Principal, Depends(require("read"))]
CanReview = Annotated[Principal, Depends(require("review"))]
CanManage = Annotated[Principal, Depends(require("manage"))]


async def health_access(request: Request, ctx: ContextDep) -> None:
    """``/metrics`` and ``/readyz``: open when ``health_is_public(settings)``, else a monitor, operator or
    engineer credential (``andon keys create --role monitor`` for Prometheus)."""
    if health_is_public(ctx.settings):
        return
    require("monitor")(await get_principal(request, ctx))


CanMonitor = Depends(health_access)
