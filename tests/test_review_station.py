"""The review station through HTTP: logins and sessions, CSRF, camera keys refused, verdicts with history
and conflicts, escalation, re-labelling, the part page, pictures and the engineers-only dashboard."""

from __future__ import annotations

import re

import pytest

from andon.inspect.inspector import Inspector
from review_support import PASSWORD, add_user, jpeg_bytes, login, page_csrf, post_frame, review_model, synth_image
from service_support import add_key, auth, client_for, settings_for


@pytest.fixture
def station(tmp_path):
    """A service with the stain model, six flagged frames of three parts seen by two cameras, two users."""
    model = review_model(tmp_path / "stain.onnx")
    inspector = Inspector.load(model)
    with client_for(settings_for(tmp_path, model)) as client:
        ids = []
        for i in range(3):
            for cam in ("cam1", "cam2"):
                data = jpeg_bytes(
                    synth_image(inspector, 10 * i + (cam == "cam2"), ("review", "reject")[i % 2], (120, 160))
                )
                ids.append(post_frame(client, data, camera=cam, part=f"P-{i}")["id"])
        add_user(client.app.state.ctx, "olga", "operator")
        add_user(client.app.state.ctx, "erik", "engineer")
        client.ids = ids
        yield client


def _logged_in(client, name="olga"):
    assert login(client, name).status_code == 303
    return page_csrf(client.get("/").text)


def test_pages_need_a_login_and_never_accept_api_keys(station):
    c = station
    r = c.get("/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/login?next=%2F"
    camera_key = add_key(c, "camera", "cam1")
    for key in (camera_key, add_key(c, "engineer")):
        r = c.get("/", headers=auth(key), follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].startswith("/login")
        assert c.get(f"/review/part/{c.ids[0]}", headers=auth(key)).status_code == 401
        assert c.get(f"/review/frame/{c.ids[0]}", headers=auth(key)).status_code == 401
        assert c.get("/dashboard", headers=auth(key), follow_redirects=False).status_code == 303
    # and a camera key may not give verdicts through the API either
    r = c.post(f"/v1/inspections/{c.ids[0]}/verdicts", json={"verdict": "false_alarm"}, headers=auth(camera_key))
    assert r.status_code == 403


def test_login_cookie_flags_wrong_password_and_logout(station, tmp_path):
    c = station
    assert login(c, "olga", "not the password").status_code == 401
    assert login(c, "nobody", PASSWORD).status_code == 401
    r = login(c, "olga")
    cookie = r.headers["set-cookie"]
    assert (
        "andon_session=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie.replace("Strict", "strict")
    )
    assert "Secure" not in cookie  # plain HTTP on loopback; cookie_secure=always sets it
    page = c.get("/")
    assert page.status_code == 200 and 'id="waiting-count">6<' in page.text
    assert "default-src 'self'" in page.headers["content-security-policy"]
    csrf = page_csrf(page.text)
    assert c.post("/logout", data={"csrf_token": "wrong"}).status_code == 403
    assert c.post("/logout", data={"csrf_token": csrf}, follow_redirects=False).status_code == 303
    assert c.get("/", follow_redirects=False).status_code == 303  # the session row is ended


def test_login_form_needs_its_csrf_token_and_failed_logins_are_throttled(station):
    c = station
    c.get("/login")
    r = c.post("/login", data={"username": "olga", "password": PASSWORD, "csrf_token": "forged"})
    assert r.status_code == 403
    for _ in range(5):
        assert login(c, "olga", "guess").status_code == 401
    r = login(c, "olga")  # even the right password waits out the lock
    assert r.status_code == 429 and "Try again" in r.text


def test_secure_cookie_when_configured(tmp_path):
    with client_for(settings_for(tmp_path, None, cookie_secure="always")) as c:
        add_user(c.app.state.ctx, "olga")
        assert "Secure" in login(c, "olga").headers["set-cookie"]


def test_disabled_user_is_logged_out_at_once(station):
    from andon.service.review.accounts import disable_user

    c = station
    _logged_in(c)
    with c.app.state.ctx.sessions() as s:
        disable_user(s, "olga")
        s.commit()
    assert c.get("/", follow_redirects=False).status_code == 303
    assert login(c, "olga").status_code == 401


def test_verdicts_need_the_csrf_token_and_keep_their_history(station):
    c = station
    csrf = _logged_in(c)
    target = c.ids[1]
    url = f"/v1/inspections/{target}/verdicts"
    assert c.post(url, json={"verdict": "confirm_defect"}).status_code == 403  # no token
    assert c.post(url, json={"verdict": "confirm_defect"}, headers={"X-CSRF-Token": "x" * 43}).status_code == 403
    first = c.post(url, json={"verdict": "confirm_defect", "label": "dent"}, headers={"X-CSRF-Token": csrf})
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["label"] == "dent" and body["reviewer"] == "olga" and body["review_status"] == "reviewed"
    assert body["waiting"] == 5
    # a second verdict that does not name the one it replaces is a conflict (someone else was faster)
    clash = c.post(url, json={"verdict": "false_alarm"}, headers={"X-CSRF-Token": csrf})
    assert clash.status_code == 409 and "olga" in clash.json()["message"]
    change = c.post(
        url,
        json={"verdict": "false_alarm", "supersedes": body["id"], "comment": "oil, wiped off"},
        headers={"X-CSRF-Token": csrf},
    )
    assert change.status_code == 201 and change.json()["label"] == "ok"
    history = c.get(url).json()
    assert [(v["verdict"], v["label"]) for v in history] == [("confirm_defect", "dent"), ("false_alarm", "ok")]
    assert history[0]["superseded_by"] == history[1]["id"] and history[1]["superseded_at"] is None
    assert c.get(f"/v1/inspections/{target}").json()["review_status"] == "reviewed"


def test_cant_tell_escalates_and_labels_are_checked(station):
    c = station
    csrf = _logged_in(c)
    h = {"X-CSRF-Token": csrf}
    url = f"/v1/inspections/{c.ids[0]}/verdicts"
    bad = c.post(url, json={"verdict": "confirm_defect", "label": "rust"}, headers=h)
    assert bad.status_code == 400 and "scratch, dent" in bad.json()["message"]
    assert c.post(url, json={"verdict": "false_alarm", "label": "dent"}, headers=h).status_code == 400
    r = c.post(url, json={"verdict": "cant_tell", "comment": "glare"}, headers=h)
    assert r.status_code == 201 and r.json()["review_status"] == "escalated" and r.json()["escalated"] == 1
    queue = c.get("/v1/review/queue", params={"status": "escalated"}).json()
    assert [i["id"] for i in queue["items"]] == [c.ids[0]]
    assert c.get("/?status=escalated").text.count('class="qitem') == 1


def test_operator_and_engineer_keys_may_review_anonymous_may_not(tmp_path, station):
    c = station
    key = add_key(c, "operator")
    r = c.post(f"/v1/inspections/{c.ids[2]}/verdicts", json={"verdict": "confirm_defect"}, headers=auth(key))
    assert r.status_code == 201 and r.json()["reviewer"].startswith("key:")
    with client_for(settings_for(tmp_path / "open", review_model(tmp_path / "m2.onnx"))) as open_mode:
        assert (
            open_mode.post(
                "/v1/inspections/01K00000000000000000000000/verdicts", json={"verdict": "false_alarm"}
            ).status_code
            == 401
        )


def test_review_page_shows_the_part_its_other_cameras_and_the_next_one(station):
    c = station
    _logged_in(c)
    page = c.get("/").text
    newest = c.ids[-1]  # P-2 from cam2
    assert f'data-id="{newest}" data-next="{c.ids[-2]}"' in page
    assert "Other frames of part P-2" in page and f'data-id="{c.ids[-2]}" class="sibling"' in page
    assert "Confirm defect" in page and "False alarm" in page and "escalate" in page.lower()
    fragment = c.get(f"/review/part/{c.ids[-2]}", params={"camera": "cam1"})
    assert fragment.status_code == 200 and "<html" not in fragment.text
    # with the cam1 filter, the part after P-2/cam1 is P-1/cam1
    assert f'data-next="{c.ids[2]}"' in fragment.text
    frame = c.get(f"/review/frame/{newest}")
    assert frame.status_code == 200 and frame.headers["content-type"] == "image/jpeg"
    heat = c.get(f"/review/heat/{newest}.png")
    assert heat.status_code == 200 and heat.content[:4] == b"\x89PNG"
    import cv2
    import numpy as np

    layer = cv2.imdecode(np.frombuffer(heat.content, np.uint8), cv2.IMREAD_UNCHANGED)
    assert layer.shape[2] == 4 and layer.shape[1] / layer.shape[0] == pytest.approx(160 / 120, rel=0.02)
    assert layer[:, :, 3].max() > 200 and layer[:, :, 3].min() < 40  # opaque on the stain, clear elsewhere


def test_form_fallback_records_the_verdict_and_moves_on(station):
    c = station
    csrf = _logged_in(c)
    target = c.ids[-1]
    r = c.post(
        f"/review/part/{target}/verdict",
        data={"csrf_token": csrf, "verdict": "confirm_defect", "label": "scratch", "supersedes": ""},
        follow_redirects=False,
    )
    assert r.status_code == 303 and f"item={c.ids[-2]}" in r.headers["location"]
    assert c.get(f"/v1/inspections/{target}/verdicts").json()[0]["label"] == "scratch"
    assert (
        c.post(f"/review/part/{target}/verdict", data={"csrf_token": "no", "verdict": "false_alarm"}).status_code == 403
    )


def test_dashboard_is_for_engineers(station):
    c = station
    _logged_in(c, "olga")
    assert c.get("/dashboard").status_code == 403
    assert c.get("/dashboard/chart/rates.png").status_code == 403
    c.cookies.clear()
    _logged_in(c, "erik")
    page = c.get("/dashboard")
    assert page.status_code == 200 and "frames inspected" in page.text
    for name in ("rates", "agreement", "drift", "quality"):
        r = c.get(f"/dashboard/chart/{name}.png", params={"window": "24h"})
        assert r.status_code == 200 and r.content[:4] == b"\x89PNG", name
    assert c.get("/dashboard", params={"window": "1y"}).status_code == 400


def test_quality_signals_are_stored_with_each_frame(station):
    from andon.service.tables import Inspection

    with station.app.state.ctx.sessions() as s:
        row = s.get(Inspection, station.ids[0])
    assert 20 < row.brightness < 250 and row.contrast > 1 and row.focus > 0


def test_open_redirects_are_refused(station):
    c = station
    form = c.get("/login", params={"next": "//evil.example/"})
    assert 'name="next" value="/"' in form.text
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    r = c.post(
        "/login",
        data={"username": "olga", "password": PASSWORD, "csrf_token": token, "next": "https://evil.example/"},
        follow_redirects=False,
    )
    assert r.headers["location"] == "/"
