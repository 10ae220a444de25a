"""The line dashboard page (engineers) and its chart pictures.

The numbers behind the page and its four pictures are computed once per filter and kept for a minute
(``cached_board``), so loading the page costs one read of the records, not five.
"""

from __future__ import annotations

import threading
import time

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse
from starlette.concurrency import run_in_threadpool

from andon.errors import ConfigError
from andon.service.deps import ServiceContext
from andon.service.files import file_response, safe_filename
from andon.service.review import dashboard as dash
from andon.service.review.charts import CHARTS
from andon.service.review.pages import _filters_menu, _to_login
from andon.service.review.web import error_page, page_user, render

router = APIRouter(include_in_schema=False)
CACHE_SECONDS = 60.0
_lock = threading.Lock()


def _query(request: Request) -> dash.DashboardQuery:
    p = request.query_params
    return dash.DashboardQuery(
        line_id=p.get("line") or None,
        camera_id=p.get("camera") or None,
        window=p.get("window") or "24h",
        subgroup=p.get("subgroup") or "hour",
    )


def cached_board(ctx: ServiceContext, q: dash.DashboardQuery) -> dash.Dashboard:
    cache = ctx.review.boards
    with _lock:
        hit = cache.get(q)
        if hit is not None and time.monotonic() - hit[0] < CACHE_SECONDS:
            return hit[1]
    with ctx.sessions() as session:
        board = dash.build(session, q)
    with _lock:
        if len(cache) > 32:
            cache.clear()
        cache[q] = (time.monotonic(), board)
    return board


@router.get("/dashboard", response_class=HTMLResponse)
async def dashboard(request: Request) -> Response:
    user = page_user(request)
    if user is None:
        return _to_login(request)
    if user.role != "engineer":
        return error_page(
            request,
            403,
            "Engineers only",
            f"The line dashboard is for engineers. Your account is an {user.role} account.",
            user,
        )
    try:
        q = _query(request)
    except ConfigError as exc:
        return error_page(request, 400, "Bad filter", str(exc), user)
    ctx = request.app.state.ctx
    board = await run_in_threadpool(cached_board, ctx, q)
    alarms = await run_in_threadpool(_alarms, ctx, q)
    lines, cameras = _filters_menu(ctx)
    return render(
        request,
        "dashboard.html",
        {
            "user": user,
            "board": board,
            "q": q,
            "lines": lines,
            "cameras": cameras,
            "windows": list(dash.WINDOWS),
            "subgroups": list(dash.SUBGROUPS),
            "charts": list(CHARTS),
            "alarms": alarms,
            "watching": list(ctx.settings.alarms),
        },
    )


def _alarms(ctx: ServiceContext, q: dash.DashboardQuery) -> list[dict]:
    """The active alarms (not cached: the page shows them as they are now) of the filter's line."""
    from andon.service.line.alarms import active_alarms

    with ctx.sessions() as session:
        return [a.as_dict() for a in active_alarms(session, q.line_id)]


@router.get("/dashboard/chart/{name}.png")
async def chart(request: Request, name: str) -> Response:
    user = page_user(request)
    if user is None or user.role != "engineer":
        return Response(status_code=401 if user is None else 403)
    if name not in CHARTS:
        return Response(status_code=404)
    try:
        q = _query(request)
    except ConfigError:
        return Response(status_code=400)
    ctx = request.app.state.ctx

    def draw() -> bytes:
        return CHARTS[name](cached_board(ctx, q))

    png = await run_in_threadpool(draw)
    return file_response(png, "image/png", safe_filename(f"chart-{name}", "png"), "private, max-age=60")
