"""The review station in a real browser (headless Chromium driven by Selenium) against the real service.

An operator logs in, reviews a queue of flagged parts with the keyboard only (confirm, false alarm,
confirm as another defect type, can't tell, a comment, going back to change a verdict), and the verdicts are
in the database with who and when. A camera key is refused by the pages. An engineer opens the dashboard.
Screenshots of the review page and the dashboard go to test-artifacts/.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import pytest

from review_support import PASSWORD, add_user, jpeg_bytes, live_server, post_frame, review_model, synth_image
from service_support import add_key, settings_for

ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None)
DRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and Path(p).exists()), None)

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        CHROMIUM is None or DRIVER is None,
        reason="no chromium / chromedriver binary (Debian: apt-get install chromium chromium-driver; "
        "'make system-deps' does it)",
    ),
]


@pytest.fixture
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1920,1080",
        "--force-device-scale-factor=1",
        "--lang=en-GB",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)  # Debian's driver: nothing is downloaded
    driver.set_page_load_timeout(30)
    yield driver
    driver.quit()


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


def _wait(driver, condition, timeout=10.0):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def _current(driver) -> str | None:
    """The part on screen (read in one script call: the element is replaced when the next part comes)."""
    return driver.execute_script("const p = document.querySelector('#part .part'); return p && p.dataset.id;")


def _press(driver, keys: str) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def _login(driver, url, username):
    driver.get(url + "/")
    _wait(driver, lambda d: d.find_elements("id", "username"))
    driver.find_element("id", "username").send_keys(username)
    driver.find_element("id", "password").send_keys(PASSWORD)
    driver.find_element("id", "login-button").click()


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

    _login(browser, url, "olga")
    _wait(browser, lambda d: d.find_elements("css selector", "#part .part"))
    assert _current(browser) == ids[0]
    assert browser.find_element("id", "waiting-count").text == "8"
    _wait(
        browser,
        lambda d: d.execute_script(
            "return [...document.querySelectorAll('#part img')].every(i => i.complete && i.naturalWidth > 0)"
        ),
    )
    browser.save_screenshot(str(ARTIFACTS / "review-page.png"))

    # heatmap toggle and zoom, from the keyboard
    heat = lambda: browser.find_element("css selector", "#part img.heat").value_of_css_property("opacity")  # noqa: E731
    assert float(heat()) > 0.2
    _press(browser, "h")
    assert float(heat()) == 0.0
    _press(browser, "h++")
    transform = browser.find_element("css selector", "#part .layers").get_attribute("style")
    assert "scale(2.25)" in transform
    _press(browser, "0")

    plan = [
        ("d", "confirm_defect", None),
        ("g", "false_alarm", "ok"),
        ("2", "confirm_defect", "dent"),
        ("e", "cant_tell", None),
    ]
    timings = []
    for i, (key, verdict, label) in enumerate(plan):
        assert _current(browser) == ids[i]
        start = time.perf_counter()
        _press(browser, key)
        _wait(browser, lambda d, i=i: _current(d) == ids[i + 1])
        timings.append(time.perf_counter() - start)
        got = _verdicts(ctx, ids[i])
        assert len(got) == 1 and got[0][0] == verdict and got[0][2] == "olga", got
        if label:
            assert got[0][1] == label
    assert browser.find_element("id", "waiting-count").text == "4"
    assert len(browser.find_elements("css selector", ".qitem")) == 4  # judged parts left the list

    # a comment, then the verdict: the comment travels with it
    _press(browser, "c")
    browser.switch_to.active_element.send_keys("burr on the edge")
    from selenium.webdriver.common.keys import Keys

    browser.switch_to.active_element.send_keys(Keys.ESCAPE)
    _press(browser, "d")
    _wait(browser, lambda d: _current(d) == ids[5])
    assert _verdicts(ctx, ids[4])[0][3] == "burr on the edge"

    # back to the last verdict (U) and change it: the history keeps both
    _press(browser, "u")
    _wait(browser, lambda d: _current(d) == ids[4])
    _press(browser, "g")
    _wait(browser, lambda d: _current(d) == ids[5])
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
    _wait(browser, lambda d: d.find_elements("id", "username"))


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
    _login(browser, url, "erik")
    _wait(browser, lambda d: d.find_elements("css selector", "#part .part, .empty"))
    browser.get(url + "/dashboard")
    _wait(
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
