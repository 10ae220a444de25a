"""The access matrix: every route of the app x every kind of credential -> the expected status class.

The routes come from ``app.routes`` (flattened), so a route added without a rule here fails
``test_every_route_has_a_rule``. Each rule names a policy: a row of expected outcomes, one per credential kind:

    none, bad-key, revoked-key (an engineer's, revoked), camera-own (a cam1 key posting for cam1),
    camera-other (a cam2 key posting for cam1), monitor, operator, engineer (API keys),
    cookie-operator, cookie-engineer (review-station login sessions, with their CSRF token),
    open-mode (no credential, against a service in which no key was ever created)

Outcomes: ``ok`` (2xx, or a redirect that is not to the login page), ``401``, ``403``, ``login`` (303 to
``/login?next=...``). The service runs as bound beyond loopback (``host=0.0.0.0``: /metrics and /readyz
protected); open mode runs on loopback, as ``andon serve`` forces. Every request carries a hostile Host
header, and no answer may reflect it. Then path tricks, against the real server (uvicorn) over a socket.

    python -m pytest -q -s tests/test_access_matrix.py     # prints the matrix size and the cells run
"""

from __future__ import annotations

import http.client
import json
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlparse

import pytest

from service_support import REJECT, client_for, jpeg, live_server, settings_for

HOSTILE = "evil.example"
PASSWORD = "matrix-password-1"
COLUMNS = (
    "none",
    "bad-key",
    "revoked-key",
    "camera-own",
    "camera-other",
    "monitor",
    "operator",
    "engineer",
    "cookie-operator",
    "cookie-engineer",
    "open-mode",
)
OK, LOGIN, U, F = "ok", "login", "401", "403"


def _row(**cells: str) -> tuple[str, ...]:
    row = tuple(cells[c.replace("-", "_")] for c in COLUMNS)
    assert len(row) == len(COLUMNS)
    return row


_NO_KEY = dict(none=U, bad_key=U, revoked_key=U)
POLICIES: dict[str, tuple[str, ...]] = {
    # no credential needed, whatever is presented
    "public": (OK,) * len(COLUMNS),
    # post frames: camera keys for their own camera, engineers
    "inspect": _row(
        **_NO_KEY,
        camera_own=OK,
        camera_other=F,
        monitor=F,
        operator=F,
        engineer=OK,
        cookie_operator=F,
        cookie_engineer=OK,
        open_mode=OK,
    ),
    # read inspections, images, parts, queue: operators and engineers
    "read": _row(
        **_NO_KEY,
        camera_own=F,
        camera_other=F,
        monitor=F,
        operator=OK,
        engineer=OK,
        cookie_operator=OK,
        cookie_engineer=OK,
        open_mode=OK,
    ),
    # give a verdict: it must name who gave it, so never anonymous, not even in open mode
    "review": _row(
        **_NO_KEY,
        camera_own=F,
        camera_other=F,
        monitor=F,
        operator=OK,
        engineer=OK,
        cookie_operator=OK,
        cookie_engineer=OK,
        open_mode=U,
    ),
    # the dashboard's numbers: engineers
    "engineer-read": _row(
        **_NO_KEY,
        camera_own=F,
        camera_other=F,
        monitor=F,
        operator=F,
        engineer=OK,
        cookie_operator=F,
        cookie_engineer=OK,
        open_mode=OK,
    ),
    # models, keys, retention: engineers, never open
    "manage": _row(
        **_NO_KEY,
        camera_own=F,
        camera_other=F,
        monitor=F,
        operator=F,
        engineer=OK,
        cookie_operator=F,
        cookie_engineer=OK,
        open_mode=U,
    ),
    # /metrics, /readyz beyond loopback: monitor, operator, engineer (public on loopback: open mode)
    "monitor": _row(
        **_NO_KEY,
        camera_own=F,
        camera_other=F,
        monitor=OK,
        operator=OK,
        engineer=OK,
        cookie_operator=OK,
        cookie_engineer=OK,
        open_mode=OK,
    ),
    # pages: the login cookie only (an API key never opens a page, open mode or not)
    "page": (LOGIN,) * 8 + (OK, OK, LOGIN),
    "fragment": (U,) * 8 + (OK, OK, U),
    "engineer-page": (LOGIN,) * 8 + (F, OK, LOGIN),
    "engineer-fragment": (U,) * 8 + (F, OK, U),
}


# ---- the two services and the credentials ---------------------------------------------------------------


@dataclass
class Cred:
    name: str
    key: str | None = None
    user: str | None = None
    token: str | None = None
    csrf: str = ""

    def headers(self, unsafe: bool) -> dict[str, str]:
        from andon.service.review.sessions import COOKIE

        h = {"Host": HOSTILE}
        if self.key:
            h["Authorization"] = f"Bearer {self.key}"
        if self.token:
            h["Cookie"] = f"{COOKIE}={self.token}"
            if unsafe:
                h["X-CSRF-Token"] = self.csrf  # what the page's script sends
        return h


@dataclass
class World:
    client: object
    open_mode: bool
    frame_id: str = ""
    creds: dict[str, Cred] = field(default_factory=dict)

    @property
    def ctx(self):
        return self.client.app.state.ctx

    def request(self, method: str, path: str, cred: Cred, **kw):
        self.client.cookies.clear()  # the credential under test is the only one sent
        unsafe = method not in ("GET", "HEAD")
        headers = {**cred.headers(unsafe), **kw.pop("headers", {})}
        r = self.client.request(method, path, headers=headers, follow_redirects=False, **kw)
        self.client.cookies.clear()
        return r

    def login(self, username: str) -> tuple[str, str]:
        """A fresh login session through the form; returns (cookie token, CSRF token)."""
        from andon.service.review.sessions import COOKIE, principal_for

        self.client.cookies.clear()
        form = self.client.get("/login")
        token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
        r = self.client.post(
            "/login",
            data={"username": username, "password": PASSWORD, "csrf_token": token, "next": "/"},
            follow_redirects=False,
        )
        assert r.status_code == 303, r.text
        session_token = self.client.cookies.get(COOKIE)
        self.client.cookies.clear()
        with self.ctx.sessions() as session:
            return session_token, principal_for(session, session_token).csrf_token

    def flagged_frame(self) -> str:
        """A fresh reject (stored, image kept): something to give a verdict on."""
        engineer = self.creds.get("engineer")
        headers = {"Content-Type": "image/jpeg", **({"Authorization": f"Bearer {engineer.key}"} if engineer else {})}
        r = self.client.post(
            "/v1/inspections",
            content=jpeg(REJECT),
            params={"camera_id": "cam1", "line_id": "L1", "part_id": "P-1"},
            headers=headers,
        )
        assert r.status_code == 201, r.text
        return r.json()["id"]

    def fresh_key_id(self) -> str:
        if self.open_mode:
            return "0123456789ab"  # creating one would end open mode; the route refuses before looking
        from andon.service.auth import create_key

        with self.ctx.sessions() as session:
            row, _ = create_key(session, role="operator", name="to-revoke")
            session.commit()
        return row.id


def _users(ctx) -> None:
    from andon.service.review.accounts import create_user

    with ctx.sessions() as session:
        create_user(session, "op", "operator", PASSWORD)
        create_user(session, "eng", "engineer", PASSWORD)
        session.commit()


def _second_model(ctx, root) -> None:
    from tiny_onnx import tiny_card, write_tiny_model

    ctx.registry.add_file(write_tiny_model(root / "m2.onnx", tiny_card(version="2")))


@pytest.fixture(scope="module")
def worlds(tmp_path_factory):
    from andon.service.auth import create_key, revoke_key
    from tiny_onnx import write_tiny_model

    root = tmp_path_factory.mktemp("matrix")
    model = write_tiny_model(root / "m1.onnx")
    cells = [0]  # cells run by test_access_matrix_row
    with (
        client_for(settings_for(root / "closed", model, host="0.0.0.0")) as closed_client,
        client_for(settings_for(root / "open", model)) as open_client,
    ):
        closed = World(closed_client, open_mode=False)
        ctx = closed.ctx
        with ctx.sessions() as session:
            keys = {}
            for name, role, camera in (
                ("camera-own", "camera", "cam1"),
                ("camera-other", "camera", "cam2"),
                ("monitor", "monitor", None),
                ("operator", "operator", None),
                ("engineer", "engineer", None),
                ("revoked-key", "engineer", None),
            ):
                row, keys[name] = create_key(session, role=role, camera_id=camera)
                if name == "revoked-key":
                    revoke_key(session, row.id)
            session.commit()
        _users(ctx)
        _second_model(ctx, root)
        closed.creds = {
            "none": Cred("none"),
            "bad-key": Cred("bad-key", key="andon_0123456789ab_not-the-secret"),
            **{name: Cred(name, key=key) for name, key in keys.items()},
        }
        for name, user in (("cookie-operator", "op"), ("cookie-engineer", "eng")):
            token, csrf = closed.login(user)
            closed.creds[name] = Cred(name, user=user, token=token, csrf=csrf)
        closed.frame_id = closed.flagged_frame()

        opened = World(open_client, open_mode=True)
        _users(opened.ctx)  # accounts do not end open mode; keys do
        _second_model(opened.ctx, root / "open")
        opened.creds = {"open-mode": Cred("open-mode")}
        opened.frame_id = opened.flagged_frame()
        with opened.ctx.sessions() as session:
            from andon.service.auth import any_key_ever

            assert not any_key_ever(session)
        yield closed, opened, cells
    print(f"\naccess matrix: {cells[0]} cells run")


# ---- what each route is called with ----------------------------------------------------------------------

Call = Callable[[World, Cred], object]


def _get(path: str) -> Call:
    return lambda w, c: w.request("GET", path.format(id=w.frame_id), c)


def _post_frame(w: World, c: Cred):
    return w.request(
        "POST",
        "/v1/inspections",
        c,
        content=jpeg(REJECT),
        params={"camera_id": "cam1", "line_id": "L1"},
        headers={"Content-Type": "image/jpeg"},
    )


def _post_batch(w: World, c: Cred):
    files = [("frame", ("a.jpg", jpeg(REJECT), "image/jpeg"))]
    return w.request("POST", "/v1/inspections/batch", c, files=files, data={"camera_id": "cam1", "line_id": "L1"})


def _upload_active(w: World, c: Cred):
    data = w.ctx.registry.get("1").path.read_bytes()
    return w.request("POST", "/v1/models", c, content=data, headers={"Content-Type": "application/octet-stream"})


def _rollback(w: World, c: Cred):
    w.ctx.runtime.promote("2")  # so that there is a previous version to roll back to
    return w.request("POST", "/v1/models/rollback", c)


def _shadow(w: World, c: Cred):
    w.ctx.runtime.promote("1")  # the shadow must be another version than the active one
    return w.request("PUT", "/v1/models/shadow", c, json={"version": "2"})


def _line_product(w: World, c: Cred):
    """Flip line L9 between product SKU-M (model 2) and the default: each allowed call is a real switch."""
    w.ctx.runtime.promote("2", product="SKU-M")
    product = "SKU-M" if w.ctx.products.current("L9") is None else None
    return w.request("PUT", "/v1/lines/L9/product", c, json={"product": product})


def _verdict(w: World, c: Cred):
    frame = w.flagged_frame()
    return w.request("POST", f"/v1/inspections/{frame}/verdicts", c, json={"verdict": "confirm_defect"})


def _page_verdict(w: World, c: Cred):
    frame = w.flagged_frame()
    data = {"verdict": "confirm_defect", "csrf_token": c.csrf}
    return w.request("POST", f"/review/part/{frame}/verdict", c, data=data)


def _login_post(w: World, c: Cred):
    from andon.service.review.sessions import LOGIN_CSRF_COOKIE

    w.client.cookies.clear()
    form = w.client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    cookie = f"{LOGIN_CSRF_COOKIE}={form.cookies.get(LOGIN_CSRF_COOKIE)}"
    if c.token:
        cookie += "; " + c.headers(True)["Cookie"]
    data = {"username": "op", "password": PASSWORD, "csrf_token": token, "next": "/"}
    return w.request("POST", "/login", Cred(c.name, key=c.key), data=data, headers={"Cookie": cookie})


def _logout(w: World, c: Cred):
    if c.user:  # logging out ends the session: use a throwaway one of the same user
        token, csrf = w.login(c.user)
        c = Cred(c.name, user=c.user, token=token, csrf=csrf)
    return w.request("POST", "/logout", c, data={"csrf_token": c.csrf})


def _static(w: World, c: Cred):
    return w.request("GET", "/review/static/andon.css", c)


RULES: dict[str, tuple[str, Call]] = {
    "GET /openapi.json": ("public", _get("/openapi.json")),
    "GET /docs": ("public", _get("/docs")),
    "GET /docs/oauth2-redirect": ("public", _get("/docs/oauth2-redirect")),
    "GET /redoc": ("public", _get("/redoc")),
    "POST /v1/inspections": ("inspect", _post_frame),
    "POST /v1/inspections/batch": ("inspect", _post_batch),
    "GET /v1/inspections": ("read", _get("/v1/inspections")),
    "GET /v1/inspections/{inspection_id}": ("read", _get("/v1/inspections/{id}")),
    "GET /v1/inspections/{inspection_id}/image": ("read", _get("/v1/inspections/{id}/image")),
    "GET /v1/inspections/{inspection_id}/heatmap": ("read", _get("/v1/inspections/{id}/heatmap")),
    "GET /v1/parts/{part_id}": ("read", _get("/v1/parts/P-1")),
    "GET /v1/alarms": ("read", _get("/v1/alarms")),
    "GET /v1/models": ("manage", _get("/v1/models")),
    "POST /v1/models": ("manage", _upload_active),
    "POST /v1/models/{version}/promote": ("manage", lambda w, c: w.request("POST", "/v1/models/1/promote", c)),
    "POST /v1/models/rollback": ("manage", _rollback),
    "PUT /v1/models/shadow": ("manage", _shadow),
    "DELETE /v1/models/shadow": ("manage", lambda w, c: w.request("DELETE", "/v1/models/shadow", c)),
    "GET /v1/models/shadow": ("manage", _get("/v1/models/shadow")),
    "GET /v1/products": ("read", _get("/v1/products")),
    "GET /v1/products/switches": ("read", _get("/v1/products/switches")),
    "GET /v1/lines/{line_id}/product": ("read", _get("/v1/lines/L9/product")),
    "PUT /v1/lines/{line_id}/product": ("manage", _line_product),
    "POST /v1/keys": ("manage", lambda w, c: w.request("POST", "/v1/keys", c, json={"role": "operator"})),
    "GET /v1/keys": ("manage", _get("/v1/keys")),
    "DELETE /v1/keys/{key_id}": ("manage", lambda w, c: w.request("DELETE", f"/v1/keys/{w.fresh_key_id()}", c)),
    "GET /livez": ("public", _get("/livez")),
    "GET /readyz": ("monitor", _get("/readyz")),
    "GET /metrics": ("monitor", _get("/metrics")),
    "POST /v1/admin/retention": ("manage", lambda w, c: w.request("POST", "/v1/admin/retention", c)),
    "POST /v1/inspections/{inspection_id}/verdicts": ("review", _verdict),
    "GET /v1/inspections/{inspection_id}/verdicts": ("read", _get("/v1/inspections/{id}/verdicts")),
    "GET /v1/review/queue": ("read", _get("/v1/review/queue")),
    "GET /v1/review/dashboard": ("engineer-read", _get("/v1/review/dashboard")),
    "GET /login": ("public", _get("/login")),
    "POST /login": ("public", _login_post),
    "POST /logout": ("public", _logout),
    "GET /": ("page", _get("/")),
    "GET /review/queue": ("fragment", _get("/review/queue")),
    "GET /review/counts": ("fragment", _get("/review/counts")),
    "GET /review/part/{inspection_id}": ("fragment", _get("/review/part/{id}")),
    "POST /review/part/{inspection_id}/verdict": ("page", _page_verdict),
    "GET /review/frame/{inspection_id}": ("fragment", _get("/review/frame/{id}")),
    "GET /review/heat/{inspection_id}.png": ("fragment", _get("/review/heat/{id}.png")),
    "GET /dashboard": ("engineer-page", _get("/dashboard")),
    "GET /dashboard/chart/{name}.png": ("engineer-fragment", _get("/dashboard/chart/rates.png")),
    "GET /review/static/{path}": ("public", _static),
}


def app_routes(app) -> set[str]:
    """'METHOD PATH' of every route the app serves (HEAD aside), included routers and mounts flattened."""
    try:
        from fastapi.routing import iter_route_contexts  # FastAPI >= 0.16x: routers are included lazily
    except ImportError:  # older FastAPI: app.routes is already flat
        contexts = list(app.routes)
    else:
        contexts = list(iter_route_contexts(app.routes))
    out = set()
    for route in contexts:
        methods = getattr(route, "methods", None)
        if not methods:  # a Mount (the static files)
            out.add(f"GET {route.path}/{{path}}")
            continue
        out.update(f"{m} {route.path}" for m in methods if m != "HEAD")
    return out


def test_every_route_has_a_rule(tmp_path):
    from andon.service.app import create_app
    from andon.service.settings import Settings

    routes = app_routes(create_app(Settings.load(data_dir=tmp_path)))
    assert not routes - set(RULES), f"routes without an access rule: {sorted(routes - set(RULES))}"
    assert not set(RULES) - routes, f"rules for routes that no longer exist: {sorted(set(RULES) - routes)}"
    assert all(policy in POLICIES for policy, _ in RULES.values())
    print(f"\naccess matrix: {len(RULES)} routes x {len(COLUMNS)} credential kinds = {len(RULES) * len(COLUMNS)} cells")


def outcome(r) -> str:
    if r.status_code in (401, 403):
        return str(r.status_code)
    location = r.headers.get("location", "")
    if r.status_code == 303 and location.startswith("/login?next="):
        return LOGIN
    if 200 <= r.status_code < 400:
        return OK
    return f"other {r.status_code}"


@pytest.mark.parametrize("route", list(RULES))
def test_access_matrix_row(worlds, route):
    closed, opened, cells = worlds
    policy, call = RULES[route]
    wrong = []
    for column, want in zip(COLUMNS, POLICIES[policy], strict=True):
        world = opened if column == "open-mode" else closed
        r = call(world, world.creds[column])
        cells[0] += 1
        got = outcome(r)
        if got != want:
            wrong.append(f"{column}: want {want}, got {r.status_code} {r.text[:120]!r}")
        location = r.headers.get("location")
        assert location is None or (location.startswith("/") and not location.startswith("//")), (column, location)
        assert all(HOSTILE not in value for value in r.headers.values()), (column, dict(r.headers))
        is_api = route.split()[1].startswith(("/v1/", "/metrics", "/readyz"))
        if is_api and r.status_code >= 400:
            assert set(r.json()) == {"error", "message"}, (column, r.text[:200])
    assert not wrong, f"{route} ({policy}):\n  " + "\n  ".join(wrong)


def test_a_cookie_without_its_csrf_token_changes_nothing(worlds):
    closed, _, _ = worlds
    cookie = closed.creds["cookie-engineer"]
    no_csrf = Cred("cookie-no-csrf", token=cookie.token, csrf="wrong")
    frame = closed.flagged_frame()
    for method, path, kw in (
        ("POST", f"/v1/inspections/{frame}/verdicts", {"json": {"verdict": "confirm_defect"}}),
        ("POST", "/v1/keys", {"json": {"role": "engineer"}}),
        ("POST", "/v1/models/1/promote", {}),
        ("POST", f"/review/part/{frame}/verdict", {"data": {"verdict": "confirm_defect", "csrf_token": "wrong"}}),
    ):
        r = closed.request(method, path, no_csrf, **kw)
        assert r.status_code == 403, (path, r.status_code, r.text[:200])


# ---- path tricks, over a socket to the real server ----------------------------------------------------------

TRICKS = [
    "/v1/inspections/../keys",
    "/v1/inspections/%2e%2e/keys",
    "/v1/models/../keys",
    "//v1/keys",
    "/v1//keys",
    "/v1/./keys",
    "/v1%2Fkeys",
    "/v1/keys%2F",
    "/v1/keys/",
    "/v1/keys/.",
    "/V1/keys",
    "/v1/KEYS",
    "/v1/Keys",
    "/metrics/",
    "/METRICS",
    "/readyz/",
    "/v1/inspections/",
    "/v1/inspections%2F",
    "/review/static/../templates/login.html",
    "/review/static/%2e%2e/templates/login.html",
    "/review/static/..%2Ftemplates/login.html",
    "/review/static/%2E%2E%2F%2E%2E%2Fauth.py",
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from andon.service.auth import create_key
    from tiny_onnx import write_tiny_model

    root = tmp_path_factory.mktemp("tricks")
    settings = settings_for(root, write_tiny_model(root / "m.onnx"), host="0.0.0.0")
    with live_server(settings) as url:
        from andon.service.db import make_engine, session_factory

        engine = make_engine(settings.db_url)
        keys = {"none": None}
        with session_factory(engine)() as session:
            for role, camera in (("camera", "cam1"), ("operator", None), ("engineer", None)):
                keys[role] = create_key(session, role=role, camera_id=camera)[1]
            session.commit()
        engine.dispose()
        yield urlparse(url), keys


def _raw(base, path: str, key: str | None):
    """One request with the path exactly as written (no client-side normalisation)."""
    conn = http.client.HTTPConnection(base.hostname, base.port, timeout=30)
    headers = {"Host": HOSTILE, **({"Authorization": f"Bearer {key}"} if key else {})}
    conn.putrequest("GET", path, skip_host=True, skip_accept_encoding=True)
    for name, value in headers.items():
        conn.putheader(name, value)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read()
    conn.close()
    return r.status, dict(r.getheaders()), body


@pytest.mark.parametrize("path", TRICKS)
def test_path_tricks_reach_nothing_they_should_not(server, path):
    base, keys = server
    for who, key in keys.items():
        status, headers, body = _raw(base, path, key)
        lowered = {k.lower(): v for k, v in headers.items()}
        assert "location" not in lowered, (path, who, status, lowered.get("location"))
        assert all(HOSTILE not in v for v in headers.values()), (path, who)
        if who == "engineer":
            # an engineer may read /v1/keys; a trick may only ever reach what its plain path would
            assert status in (200, 404, 405), (path, who, status, body[:200])
        else:  # 405: the path names a route of another method (DELETE /v1/keys/{key_id}); nothing is run
            assert status in (401, 403, 404, 405), (path, who, status, body[:200])
        if status >= 400:
            assert set(json.loads(body)) == {"error", "message"}, (path, who, body[:200])
        assert b"secret_hash" not in body and b"def " not in body
