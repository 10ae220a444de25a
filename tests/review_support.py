"""Helpers for the review-station tests: realistic flagged frames, users, logging in, a live server."""

from __future__ import annotations

import contextlib
import re
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import cv2
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from andon.inspect.onnxfile import embed_card
from tiny_onnx import cam_nodes, class_index_initializers, tiny_card

PASSWORD = "correct horse battery"
#: Debian's chromium and its driver (make system-deps): the browser tests skip without them, nothing is downloaded
CHROMIUM = next((p for p in (shutil.which("chromium"), "/usr/bin/chromium") if p and Path(p).exists()), None)
DRIVER = next((p for p in (shutil.which("chromedriver"), "/usr/bin/chromedriver") if p and Path(p).exists()), None)
NO_BROWSER = (
    "no chromium / chromedriver binary (Debian: apt-get install chromium chromium-driver; 'make system-deps' does it)"
)
CLASSES = ("ok", "scratch", "dent")


def review_model(path: Path, *, gain: float = 16.0, version: str = "1") -> Path:
    """A small real andon model that finds dark stains, with two defect classes (so re-labelling has a
    choice): see ``stain_model``."""
    onnx.save(stain_model(gain=gain, version=version), str(path))
    return path


def stain_model(size: int = 64, gain: float = 16.0, version: str = "1") -> onnx.ModelProto:
    """An andon-contract ONNX classifier (probs + exact-CAM heatmap) whose evidence is local darkness.

    Per 4x4 cell: s = relu(-mean of the normalised channels) (0 on bright surface, about 2 on black); local
    logits ok = 2 - gain*s, scratch = gain*s - 2, dent = gain*s - 2.3; the image's logits are their mean
    (a linear head after the relu, so the heatmap is an exact class activation map). A clean bright part
    passes; a dark stain covering about a tenth of the frame is rejected; the heatmap peaks on the stain.
    """
    card = tiny_card(classes=CLASSES, size=size, name="stain", backbone="stain-detector", version=version)
    nodes = [
        helper.make_node("AveragePool", ["image"], ["feat"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Conv", ["feat", "W1"], ["dark"]),
        helper.make_node("Relu", ["dark"], ["s"]),
        helper.make_node("Conv", ["s", "W2", "B2"], ["local"]),
        *cam_nodes(),
    ]
    w1 = np.full((1, 3, 1, 1), -1.0 / 3.0, np.float32)
    w2 = np.array([-gain, gain, gain], np.float32).reshape(3, 1, 1, 1)
    b2 = np.array([2.0, -2.0, -2.3], np.float32)
    graph = helper.make_graph(
        nodes,
        "stain",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [
            helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", 3]),
            helper.make_tensor_value_info("heatmap", TensorProto.FLOAT, ["batch", size // 4, size // 4]),
        ],
        initializer=[
            numpy_helper.from_array(w1, "W1"),
            numpy_helper.from_array(w2, "W2"),
            numpy_helper.from_array(b2, "B2"),
            *class_index_initializers(card),
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="andon-tests")
    model.ir_version = 8
    onnx.checker.check_model(model)
    embed_card(model, card)
    return model


def synth_image(inspector, seed: int, decision: str, size: tuple[int, int] = (300, 400)) -> np.ndarray:
    """A rendered industrial surface, brightly lit, with a dark stain whose darkness (found by bisection)
    makes ``inspector`` (a ``stain_model``) decide ``decision``: P(defect) 0.05 pass, 0.5 review, 0.9 reject.
    """
    from andon.datasets.synth import render_sample

    rng = np.random.default_rng(seed)
    surface = ("brushed", "painted", "cast")[seed % 3]
    image, _ = render_sample(rng, surface, None, size)
    base = np.clip(image.astype(np.float32) * (190.0 / max(1.0, float(image.mean()))), 0, 255)
    target = {"pass": 0.05, "review": 0.5, "reject": 0.9}[decision]
    h, w = size
    yy, xx = np.mgrid[0:h, 0:w]
    cy, cx = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w
    angle = rng.uniform(0, np.pi)
    u = (yy - cy) * np.cos(angle) + (xx - cx) * np.sin(angle)
    v = -(yy - cy) * np.sin(angle) + (xx - cx) * np.cos(angle)

    ih, iw = inspector.card.preprocess.input_size

    def small(img: np.ndarray) -> np.ndarray:  # the search runs at the model's input size: fast
        return cv2.resize(img, (iw, ih), interpolation=cv2.INTER_AREA)

    def score(img: np.ndarray) -> float:
        return inspector.inspect(np.clip(img, 0, 255).astype(np.uint8)).defect_score

    if score(base) >= target:
        return base.astype(np.uint8)
    base_small = small(base)
    for radius in (0.12, 0.17, 0.24, 0.33):
        r = radius * min(h, w)
        blob = np.clip(1.6 - np.hypot(u / r, v / (0.55 * r)), 0.0, 1.0).astype(np.float32)
        blob_small = small(blob)[:, :, None]
        lo, hi = 0.0, 1.0  # how much light the stain lets through
        for _ in range(22):
            mid = (lo + hi) / 2
            if score(base_small * (1.0 - blob_small * (1.0 - mid))) > target:
                lo = mid
            else:
                hi = mid
        stained = np.clip(base * (1.0 - blob[:, :, None] * (1.0 - (lo + hi) / 2)), 0, 255)
        if abs(score(stained) - target) < 0.03:
            return stained.astype(np.uint8)
    raise ValueError(f"could not make a {decision} frame of size {size}")


def jpeg_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, 92])
    assert ok
    return buf.tobytes()


def add_user(ctx, username: str, role: str = "operator", password: str = PASSWORD) -> None:
    from andon.service.review.accounts import create_user

    with ctx.sessions() as session:
        create_user(session, username, role, password)
        session.commit()


def login(client, username: str, password: str = PASSWORD):
    """Log in through the form (login CSRF included); returns the response of the form post."""
    form = client.get("/login")
    token = re.search(r'name="csrf_token" value="([^"]+)"', form.text).group(1)
    return client.post(
        "/login",
        data={"username": username, "password": password, "csrf_token": token, "next": "/"},
        follow_redirects=False,
    )


def page_csrf(html: str) -> str:
    return re.search(r'data-csrf="([^"]+)"', html).group(1)


def post_frame(client, data: bytes, *, camera: str, line: str = "L1", part: str | None = None, key=None):
    params = {"camera_id": camera, "line_id": line, **({"part_id": part} if part else {})}
    headers = {"Content-Type": "image/jpeg", **({"Authorization": f"Bearer {key}"} if key else {})}
    r = client.post("/v1/inspections", content=data, params=params, headers=headers)
    assert r.status_code == 201, r.text
    return r.json()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(app) -> Iterator[str]:
    """The real service over HTTP (uvicorn in a thread) on a free loopback port; yields its base URL."""
    import uvicorn

    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not thread.is_alive():
            raise RuntimeError("the service did not start")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=15)


@contextlib.contextmanager
def chromium(width: int = 1920, height: int = 1080) -> Iterator:
    """Headless Chromium driven by Selenium (Debian's binary and driver); yields the WebDriver."""
    import pytest

    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install -e '.[dev]')")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        f"--window-size={width},{height}",
        "--force-device-scale-factor=1",
        "--lang=en-GB",
    ):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()


def wait_for(driver, condition, timeout: float = 10.0):
    """Poll ``condition(driver)`` until it is truthy (Selenium's WebDriverWait); returns its value."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout, poll_frequency=0.05).until(lambda d: condition(d))


def browser_login(driver, url: str, username: str, password: str = PASSWORD) -> None:
    """Log in through the review station's login form."""
    driver.get(url + "/")
    wait_for(driver, lambda d: d.find_elements("id", "username"))
    driver.find_element("id", "username").send_keys(username)
    driver.find_element("id", "password").send_keys(password)
    driver.find_element("id", "login-button").click()


def press(driver, keys: str) -> None:
    """Type keys at the page (the review station is driven from the keyboard)."""
    from selenium.webdriver.common.action_chains import ActionChains

    ActionChains(driver).send_keys(keys).perform()


def part_on_screen(driver) -> str | None:
    """The id of the part on the review page (one script call: the element is replaced when the next comes)."""
    return driver.execute_script("const p = document.querySelector('#part .part'); return p && p.dataset.id;")


def images_loaded(driver) -> bool:
    return driver.execute_script(
        "return [...document.querySelectorAll('#part img')].every(i => i.complete && i.naturalWidth > 0)"
    )
