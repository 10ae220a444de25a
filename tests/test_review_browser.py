"""The review station in a real browser (headless Chromium driven by Selenium) against the real service.

An operator logs in, reviews a queue of flagged parts with the keyboard only (confirm, false alarm,
confirm as another defect type, can't tell, a comment, going back to change a verdict), and the verdicts are
in the database with who and when. A camera key is refused by the pages. An engineer opens the dashboard.
Screenshots of the review page and the dashboard go to test-artifacts/.
"""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest

from review_support import (
    CHROMIUM,
    DRIVER,
    NO_BROWSER,
    add_user,
    browser_login,
    chromium,
    images_loaded,
    jpeg_bytes,
    live_server,
    part_on_screen,
    post_frame,
    press,
    review_model,
    synth_image,
    wait_for,
)
from service_support import add_key, settings_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

pytestmark = [pytest.mark.slow, pytest.mark.skipif(CHROMIUM is None or DRIVER is None, reason=NO_BROWSER)]


@pytest.fixture
def browser():
    with chromium() as driver:
        yield driver


@pytest.fixture
def service(tmp_path):
    from andon.inspect.inspector import Inspector
    from andon.service.app import create_app

    model = review_model(tmp_path / "stain.onnx")
    app = create_app(settings_for(tmp_path, model))
    inspector = Inspector.load(model)
    with live_server(app) as url:
        ctx = app.state.ctx
        with httpx.Client(base_url=url, timeout=30) as http:
            http.app = app
            keys = {cam: add_key(http, "camera", cam) for cam in ("cam1", "cam2")}
            ids = []
            for i in range(4):  # four parts, each seen by two cameras; oldest first
                for cam in ("cam1", "cam2"):
                    frame = synth_image(
                        inspector, 7 * i + (cam == "cam2"), ("reject", "review")[(i + (cam == "cam2")) % 2], (480, 640)
                    )
                    ids.append(
                        post_frame(http, jpeg_bytes(frame), camera=cam, line="L1", part=f"P-10{i}", key=keys[cam])["id"]
                    )
            add_user(ctx, "olga", "operator")
            add_user(ctx, "erik", "engineer")
            yield url, http, ctx, keys, ids[::-1]  # newest first, as the queue shows them


def _verdicts(ctx, inspection_id):
    from andon.service.review.verdicts import history

    with ctx.sessions() as s:
        return [(v.verdict, v.label, v.reviewer, v.comment, v.superseded_at is None) for v in history(s, inspection_id)]


def test_operator_reviews_a_queue_with_the_keyboard(browser, service):
    url, http, ctx, keys, ids = service
    ARTIFACTS.mkdir(exist_ok=True)

    # a camera key opens nothing: the page sends it to the login, the review API refuses it
    r = http.get("/", headers={"Authorization": f"Bearer {keys['cam1']}"}, follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"].startswith("/login")
    r = http.post(
        f"/v1/inspections/{ids[0]}/verdicts",
        json={"verdict": "false_alarm"},
        headers={"Authorization": f"Bearer {keys['cam1']}"},
    )
    assert r.status_code == 403

    browser_login(browser, url, "olga")
    wait_for(browser, lambda d: d.find_elements("css selector", "#part .part"))
    assert part_on_screen(browser) == ids[0]
    assert browser.find_element("id", "waiting-count").text == "8"
    wait_for(browser, images_loaded)
    browser.save_screenshot(str(ARTIFACTS / "review-page.png"))

    # heatmap toggle and zoom, from the keyboard
    heat = lambda: browser.find_element("css selector", "#part img.heat").value_of_css_property("opacity")  # noqa: E731
    assert float(heat()) > 0.2
    press(browser, "h")
    assert float(heat()) == 0.0
    press(browser, "h++")
    transform = browser.find_element("css selector", "#part .layers").get_attribute("style")
    assert "scale(2.25)" in transform
    press(browser, "0")

    plan = [
        ("d", "confirm_defect", None),
        ("g", "false_alarm", "ok"),
        ("2", "confirm_defect", "dent"),
        ("e", "cant_tell", None),
    ]
    timings = []
    for i, (key, verdict, label) in enumerate(plan):
        assert part_on_screen(browser) == ids[i]
        start = time.perf_counter()
        press(browser, key)
        wait_for(browser, lambda d, i=i: part_on_screen(d) == ids[i + 1])
        timings.append(time.perf_counter() - start)
        got = _verdicts(ctx, ids[i])
        assert len(got) == 1 and got[0][0] == verdict and got[0][2] == "olga", got
        if label:
            assert got[0][1] == label
    assert browser.find_element("id", "waiting-count").text == "4"
    assert len(browser.find_elements("css selector", ".qitem")) == 4  # judged parts left the list

    # a comment, then the verdict: the comment travels with it
    press(browser, "c")
    browser.switch_to.active_element.send_keys("burr on the edge")
    from selenium.webdriver.common.keys import Keys

    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    press(browser, "d")
    wait_for(browser, lambda d: part_on_screen(d) == ids[5])
    assert _verdicts(ctx, ids[4])[0][3] == "burr on the edge"

    # back to the last verdict (U) and change it: the history keeps both
    press(browser, "u")
    wait_for(browser, lambda d: part_on_screen(d) == ids[4])
    press(browser, "g")
    wait_for(browser, lambda d: part_on_screen(d) == ids[5])
    history = _verdicts(ctx, ids[4])
    assert [(v[0], v[4]) for v in history] == [("confirm_defect", False), ("false_alarm", True)]

    with ctx.sessions() as s:
        from andon.service.tables import Inspection

        statuses = [s.get(Inspection, i).review_status for i in ids[:5]]
    assert statuses == ["reviewed", "reviewed", "reviewed", "escalated", "reviewed"]
    assert max(timings) < 5.0  # generous: a verdict and the next part on a busy 2-core CI box
    browser.save_screenshot(str(ARTIFACTS / "review-page-after.png"))

    # the dashboard is for engineers
    browser.get(url + "/dashboard")
    assert "Engineers only" in browser.page_source
    browser.find_element("css selector", "form[action='/logout'] button").click()
    wait_for(browser, lambda d: d.find_elements("id", "username"))


def test_engineer_sees_the_dashboard(browser, service):
    url, http, ctx, keys, ids = service
    from andon.service.review.simulate import Event, LineHistory, simulate

    with ctx.sessions() as s:  # a day of a line, with a lamp failing on one camera in the afternoon
        simulate(
            s,
            LineHistory(
                frames=4000,
                hours=24,
                lines=("L1",),
                cameras_per_line=2,
                seed=5,
                events=[Event("L1-cam2", 0.7, 0.8, "lamp"), Event("L1-cam1", 0.9, 1.0, "focus")],
            ),
        )
    ARTIFACTS.mkdir(exist_ok=True)
    browser_login(browser, url, "erik")
    wait_for(browser, lambda d: d.find_elements("css selector", "#part .part, .empty"))
    browser.get(url + "/dashboard")
    wait_for(
        browser,
        lambda d: d.execute_script(
            "const imgs = [...document.querySelectorAll('.chart img')];"
            "imgs.forEach(i => i.loading = 'eager');"
            "return imgs.length === 4 && imgs.every(i => i.complete && i.naturalWidth > 0)"
        ),
        timeout=60,
    )
    text = browser.find_element("css selector", "#attention").text  # not the line's alarms above it
    assert "L1-cam2 brightness" in text
    height = browser.execute_script("return document.body.scrollHeight")
    browser.set_window_size(1600, min(height + 40, 6000))
    browser.save_screenshot(str(ARTIFACTS / "dashboard.png"))
