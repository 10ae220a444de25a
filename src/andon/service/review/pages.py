"""The operator's pages: login, the review page (queue + one part at a time), fragments, pictures.

Everything here authenticates with the login cookie only: an API key, whatever its role, never opens a
page. The review page is rendered whole on the server; the script (``static/review.js``) then swaps in the
next part's fragment (``/review/part/{id}``), prefetched with its pictures while the operator looks at the
current one, so that after a verdict the next part appears at once. Without the script the buttons still
work as plain forms.
"""

from __future__ import annotations

import secrets
from typing import Any
from urllib.parse import quote, urlencode

from fastapi import APIRouter, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from sqlalchemy import select
from starlette.concurrency import run_in_threadpool

from andon.errors import AndonError, ConfigError, NotFoundError
from andon.service.deps import ServiceContext
from andon.service.files import file_response, safe_filename
from andon.service.heatmaps import stored_heatmap
from andon.service.quality.reasons import stored_map_name
from andon.service.review import queue as q
from andon.service.review.accounts import authenticate
from andon.service.review.images import browser_frame, heat_layer_png
from andon.service.review.recording import give_verdict
from andon.service.review.sessions import (
    COOKIE,
    CSRF_FIELD,
    LOGIN_CSRF_COOKIE,
    cookie_secure,
    csrf_ok,
    end_session,
    start_session,
)
from andon.service.review.tables import VERDICTS
from andon.service.review.verdicts import history
from andon.service.review.web import error_page, page_user, render
from andon.service.tables import Inspection

router = APIRouter(include_in_schema=False)

MAX_SIBLINGS = 12
_LOGIN_COOKIE_AGE = 3600


# ---- login ---------------------------------------------------------------------------------------------


def _safe_next(target: str | None) -> str:
    """Only local paths: never an open redirect to another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


@router.get("/login", response_class=HTMLResponse)
def login_form(request: Request, next: str = "/") -> Response:
    if page_user(request) is not None:
        return RedirectResponse(_safe_next(next), status_code=303)
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", {"next": _safe_next(next), "csrf": token, "error": None})
    _set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=_LOGIN_COOKIE_AGE)
    return response


@router.post("/login", response_class=HTMLResponse)
async def login(request: Request) -> Response:
    form = await request.form(max_files=0, max_fields=8)
    username = str(form.get("username", "")).strip()[:64]
    password = str(form.get("password", ""))[:1024]
    target = _safe_next(str(form.get("next", "/")))
    if not csrf_ok(request.cookies.get(LOGIN_CSRF_COOKIE, ""), str(form.get(CSRF_FIELD, ""))):
        return _login_error(request, target, 403, "The login form expired. Please try again.")
    throttle = request.app.state.login_throttle
    client = request.client.host if request.client else "?"
    keys = (f"user:{username.lower()}", f"addr:{client}")
    wait = throttle.wait_seconds(*keys)
    if wait:
        return _login_error(request, target, 429, f"Too many failed logins. Try again in {wait} s.")
    ctx = request.app.state.ctx

    def check() -> str | None:
        with ctx.sessions() as session:
            user = authenticate(session, username, password)
            if user is None:
                return None
            token = start_session(session, user, ctx.settings.session_hours)
            session.commit()
            return token

    token = await run_in_threadpool(check)
    if token is None:
        throttle.failed(*keys)
        return _login_error(request, target, 401, "Wrong username or password, or the account is disabled.")
    throttle.succeeded(*keys)
    response = RedirectResponse(target, status_code=303)
    _set_cookie(request, response, COOKIE, token, max_age=int(ctx.settings.session_hours * 3600))
    response.delete_cookie(LOGIN_CSRF_COOKIE, path="/")
    return response


def _login_error(request: Request, target: str, status: int, message: str) -> Response:
    token = secrets.token_urlsafe(24)
    response = render(request, "login.html", {"next": target, "csrf": token, "error": message}, status_code=status)
    _set_cookie(request, response, LOGIN_CSRF_COOKIE, token, max_age=_LOGIN_COOKIE_AGE)
    return response


def _set_cookie(request: Request, response: Response, name: str, value: str, *, max_age: int) -> None:
    secure = cookie_secure(request.app.state.ctx.settings.cookie_secure, request.url.scheme)
    response.set_cookie(name, value, max_age=max_age, path="/", httponly=True, samesite="strict", secure=secure)


@router.post("/logout")
async def logout(request: Request) -> Response:
    user = page_user(request)
    form = await request.form(max_files=0, max_fields=4)
    if user is not None:
        if not csrf_ok(user.csrf_token, str(form.get(CSRF_FIELD, ""))):
            return error_page(
                request, 403, "Not logged out", "The page was out of date; reload it and try again.", user
            )
        ctx = request.app.state.ctx
        with ctx.sessions() as session:
            end_session(session, request.cookies.get(COOKIE, ""))
            session.commit()
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(COOKIE, path="/")
    return response


def _to_login(request: Request) -> Response:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


# ---- the review page -----------------------------------------------------------------------------------


def queue_filter(request: Request) -> q.QueueFilter:
    p = request.query_params
    return q.QueueFilter(
        status=p.get("status") or "waiting",
        decision=p.get("decision") or "all",
        line_id=p.get("line") or None,
        camera_id=p.get("camera") or None,
        window=p.get("window") or "all",
    )


def _filters_menu(ctx: ServiceContext) -> tuple[list[str], list[str]]:
    """Line and camera ids for the menus, refreshed at most once a minute."""
    import time

    cached = ctx.review.menus
    if cached is None or time.monotonic() - cached[0] > 60:
        with ctx.sessions() as session:
            cached = (time.monotonic(), *q.lines_and_cameras(session))
        ctx.review.menus = cached
    return cached[1], cached[2]


@router.get("/", response_class=HTMLResponse)
def review_page(request: Request, item: str | None = None, cursor: str | None = None) -> Response:
    user = page_user(request)
    if user is None:
        return _to_login(request)
    ctx = request.app.state.ctx
    try:
        f = queue_filter(request)
        at = q.Cursor.decode(cursor) if cursor else None
    except ConfigError as exc:
        return error_page(request, 400, "Bad filter", str(exc), user)
    lines, cameras = _filters_menu(ctx)
    with ctx.sessions() as session:
        result = q.page(session, f, cursor=at)
        total, counts = q.totals(session, f, ctx.review.counts)
        current = session.get(Inspection, item) if item else (result.items[0] if result.items else None)
        part = part_context(session, ctx, current, f) if current is not None else None
    if item and current is None:
        return error_page(request, 404, "Not found", f"There is no inspection {item}.", user)
    return render(
        request,
        "review.html",
        {
            "user": user,
            "filter": f,
            "page": result,
            "counts": counts,
            "part": part,
            "total": total,
            "cap": q.COUNT_CAP,
            "lines": lines,
            "cameras": cameras,
            "cursor": cursor,
            "statuses": list(q.STATUSES),
            "windows": list(q.WINDOWS),
            "current_id": current.id if current is not None else None,
        },
    )


@router.get("/review/queue", response_class=HTMLResponse)
def queue_fragment(request: Request, cursor: str | None = None, current: str | None = None) -> Response:
    user = page_user(request)
    if user is None:
        return _fragment_login()
    ctx = request.app.state.ctx
    try:
        f = queue_filter(request)
        at = q.Cursor.decode(cursor) if cursor else None
    except ConfigError as exc:
        return HTMLResponse(str(exc), status_code=400)
    with ctx.sessions() as session:
        result = q.page(session, f, cursor=at)
        total, counts = q.totals(session, f, ctx.review.counts)
    return render(
        request,
        "_queue.html",
        {
            "user": user,
            "filter": f,
            "page": result,
            "counts": counts,
            "total": total,
            "cap": q.COUNT_CAP,
            "cursor": cursor,
            "current_id": current,
        },
    )


@router.get("/review/counts")
def counts(request: Request) -> Response:
    user = page_user(request)
    if user is None:
        return JSONResponse({"error": "unauthorized", "message": "log in"}, status_code=401)
    ctx = request.app.state.ctx
    with ctx.sessions() as session:
        return JSONResponse(ctx.review.counts.get(session), headers={"Cache-Control": "no-store"})


@router.get("/review/part/{inspection_id}", response_class=HTMLResponse)
def part_fragment(request: Request, inspection_id: str) -> Response:
    """One part, ready to swap into the page: what the script prefetches as "next"."""
    user = page_user(request)
    if user is None:
        return _fragment_login()
    ctx = request.app.state.ctx
    try:
        f = queue_filter(request)
    except ConfigError as exc:
        return HTMLResponse(str(exc), status_code=400)
    with ctx.sessions() as session:
        row = session.get(Inspection, inspection_id)
        if row is None:
            return HTMLResponse(f"no inspection {inspection_id}", status_code=404)
        part = part_context(session, ctx, row, f)
    return render(request, "_part.html", {"user": user, "part": part, "filter": f})


def _fragment_login() -> Response:
    return JSONResponse({"error": "unauthorized", "message": "the login expired; reload the page"}, status_code=401)


def part_context(session, ctx, row: Inspection, f: q.QueueFilter) -> dict[str, Any]:
    """What the part view shows, and which part comes next in this queue."""
    # queue rows load only the listed columns: the part on screen needs all of them
    row = session.scalars(
        select(Inspection).where(Inspection.id == row.id).execution_options(populate_existing=True)
    ).one()
    info = ctx.cards.classes(row)
    verdicts = history(session, row.id)
    current = next((v for v in reversed(verdicts) if v.superseded_at is None), None)
    siblings: list[Inspection] = []
    if row.part_id:
        siblings = list(
            session.scalars(
                select(Inspection)
                .where(Inspection.part_id == row.part_id, Inspection.id != row.id)
                .order_by(Inspection.camera_id, Inspection.id)
                .limit(MAX_SIBLINGS)
            )
        )
    nxt = q.next_after(session, f, row)
    scores = sorted(row.scores.items(), key=lambda kv: -kv[1])
    card = ctx.cards.card(row.model_hash)
    map_name = stored_map_name(row.reason, row.anomaly_score, card.output_names if card is not None else None)
    return {
        "row": row,
        "info": info,
        "verdicts": verdicts,
        "current": current,
        "siblings": siblings,
        "next_id": nxt.id if nxt is not None else None,
        "scores": scores[:8],
        "map_name": map_name,
        "default_defect": info.default_defect(row),
        "params": f.params(),
        "reviewable": row.image_key is not None or row.decision != "pass",
    }


@router.post("/review/part/{inspection_id}/verdict")
async def verdict_form(request: Request, inspection_id: str) -> Response:
    """The no-script path: a plain form post, answered with the next part."""
    user = page_user(request)
    if user is None:
        return _to_login(request)
    form = await request.form(max_files=0, max_fields=16)
    if not csrf_ok(user.csrf_token, str(form.get(CSRF_FIELD, ""))):
        return error_page(request, 403, "Not saved", "The page was out of date (CSRF check); reload it.", user)
    ctx = request.app.state.ctx
    verdict = str(form.get("verdict", ""))
    if verdict not in VERDICTS:
        return error_page(request, 400, "Not saved", f"Unknown verdict {verdict!r}.", user)
    supersedes = str(form.get("supersedes", "") or "")
    try:
        f = queue_filter(request)
        with ctx.sessions() as session:
            label = str(form.get("label", "")) or None if verdict == "confirm_defect" else None
            given = give_verdict(
                ctx,
                session,
                inspection_id,
                verdict=verdict,
                label=label,
                comment=str(form.get("comment", "")) or None,
                reviewer=user.name,
                user_id=user.user_id,
                supersedes=int(supersedes) if supersedes.isdigit() else None,
            )
            nxt = q.next_after(session, f, given.inspection)
    except (AndonError, ValueError) as exc:
        status = getattr(exc, "http_status", 400)
        return error_page(request, status, "Not saved", str(exc), user)
    params = {**f.params(), **({"item": nxt.id} if nxt is not None else {})}
    return RedirectResponse("/?" + urlencode(params), status_code=303)


# ---- pictures ------------------------------------------------------------------------------------------


def _image_row(request: Request, inspection_id: str) -> tuple[Any, Inspection] | Response:
    if page_user(request) is None:
        return Response(status_code=401)
    ctx = request.app.state.ctx
    with ctx.sessions() as session:
        row = session.get(Inspection, inspection_id)
    if row is None:
        return Response(status_code=404)
    return ctx, row


@router.get("/review/frame/{inspection_id}")
def frame(request: Request, inspection_id: str) -> Response:
    found = _image_row(request, inspection_id)
    if isinstance(found, Response):
        return found
    ctx, row = found
    if row.image_key is None:
        return Response(status_code=404)
    try:
        data, media = browser_frame(ctx.store.get(row.image_key), row.image_format, ctx.settings.max_pixels)
    except (NotFoundError, AndonError):
        return Response(status_code=404)
    return file_response(data, media, safe_filename(row.id, media.split("/")[-1]), "private, max-age=86400, immutable")


@router.get("/review/heat/{inspection_id}.png")
def heat(request: Request, inspection_id: str) -> Response:
    found = _image_row(request, inspection_id)
    if isinstance(found, Response):
        return found
    ctx, row = found
    try:
        grid, spec = stored_heatmap(ctx, row)
    except NotFoundError:
        return Response(status_code=404)
    png = heat_layer_png(grid, (row.image_height, row.image_width), spec)
    return file_response(png, "image/png", safe_filename(f"{row.id}-heat", "png"), "private, max-age=86400, immutable")
