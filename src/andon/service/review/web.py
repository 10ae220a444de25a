"""Wiring the review station into the service app, and what every page shares.

``install(app)`` adds the session authenticator (so the page's script may call the review API with its
cookie and CSRF header), the page and API routers, the static files, and security headers on every page.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from urllib.parse import urlencode

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates

from andon import __version__
from andon.inspect.card import GOOD_CLASS_NAMES
from andon.service.quality.reasons import badge as reason_badge
from andon.service.review.sessions import COOKIE, LoginThrottle, UserPrincipal, principal_for, session_authenticator

HERE = Path(__file__).parent
STATIC_URL = "/review/static"

#: pages allow only their own scripts, styles and images: no inline script, nothing from elsewhere
CSP = (
    "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; script-src 'self'; "
    "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def _local(value: dt.datetime | None, fmt: str = "%H:%M:%S") -> str:
    """Plant time: the server's local time zone (the service runs on the line's own box)."""
    return "" if value is None else value.astimezone().strftime(fmt)


def _pct(value: float | None, digits: int = 1) -> str:
    return "–" if value is None else f"{100.0 * value:.{digits}f}%"


def make_templates() -> Jinja2Templates:
    templates = Jinja2Templates(directory=str(HERE / "templates"))
    env = templates.env
    env.filters["local"] = _local
    env.filters["pct"] = _pct
    env.filters["qs"] = lambda params: urlencode({k: v for k, v in params.items() if v not in (None, "")})
    env.globals["static"] = lambda name: f"{STATIC_URL}/{name}?v={__version__}"
    env.globals["andon_version"] = __version__
    env.globals["good_names"] = GOOD_CLASS_NAMES
    env.globals["reason_badge"] = reason_badge
    return templates


def page_user(request: Request) -> UserPrincipal | None:
    ctx = request.app.state.ctx
    token = request.cookies.get(COOKIE)
    if not token:
        return None
    with ctx.sessions() as session:
        return principal_for(session, token)


def render(request: Request, name: str, context: dict, status_code: int = 200) -> HTMLResponse:
    templates: Jinja2Templates = request.app.state.review_templates
    response = templates.TemplateResponse(request, name, context, status_code=status_code)
    response.headers.update(PAGE_HEADERS)
    return response


def error_page(
    request: Request, status: int, title: str, message: str, user: UserPrincipal | None = None
) -> HTMLResponse:
    return render(request, "error.html", {"title": title, "message": message, "user": user}, status_code=status)


def install(app: FastAPI) -> None:
    """Add the review station to a service app made by ``create_app``."""
    from andon.service.review import api, dashboard_pages, pages

    ctx = app.state.ctx
    ctx.authenticators.append(session_authenticator)
    app.state.review_templates = make_templates()
    app.state.login_throttle = LoginThrottle()
    app.include_router(api.router)
    app.include_router(pages.router)
    app.include_router(dashboard_pages.router)
    app.mount(STATIC_URL, StaticFiles(directory=str(HERE / "static")), name="review-static")
