"""The service draws its charts without matplotlib (Pillow and numpy: ``andon.service.quality.plot``), so its
image can leave matplotlib out. A subprocess with matplotlib blocked imports the app and the shift report,
serves the dashboard's pictures through the app, draws every chart and the shift report's chart; the PNGs
are then checked here: size, mode, and the series' colours in them. The drawing layer's ticks are checked
on their own."""

from __future__ import annotations

import datetime as dt
import io
import json
import subprocess
import sys
import textwrap
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from andon.service.quality import plot
from andon.service.quality.charts import AMBER, BLUE, GREEN, GREY, INK, MUTED, RED

TESTS = Path(__file__).resolve().parent

SCRIPT = textwrap.dedent(
    """
    import importlib.abc, sys

    class NoMatplotlib(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "matplotlib" or name.startswith("matplotlib."):
                raise ImportError(f"matplotlib is blocked in this test ({name})")
            return None

    sys.meta_path.insert(0, NoMatplotlib())
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        pass
    else:
        raise SystemExit("the blocker let matplotlib in")

    import datetime as dt, json, re, base64
    from pathlib import Path

    import andon.service.app  # noqa: F401
    import andon.reports.render
    from andon.reports.shift import build as build_report
    from andon.service.quality.charts import rate_charts_png
    from andon.service.review import dashboard as dash
    from andon.service.review.charts import CHARTS
    from andon.service.review.simulate import Event, LineHistory, simulate

    out = Path(sys.argv[1])
    sys.path.insert(0, sys.argv[2])  # the tests' helpers
    from review_support import add_user, login
    from service_support import client_for, settings_for

    now = dt.datetime.now(dt.timezone.utc).replace(microsecond=0)
    facts = {}
    with client_for(settings_for(out / "service", None)) as client:
        ctx = client.app.state.ctx
        history = LineHistory(
            frames=3000, hours=24, lines=("L1",), cameras_per_line=2, seed=3,
            events=[Event("L1-cam2", 0.75, 0.875, "lamp"), Event("L1-cam1", 0.9, 1.0, "focus")],
        )
        with ctx.sessions() as s:
            simulate(s, history, now=now)
        # the app serves every chart (in its worker threads)
        add_user(ctx, "erik", "engineer")
        assert login(client, "erik").status_code == 303
        for name in CHARTS:
            r = client.get(f"/dashboard/chart/{name}.png", params={"window": "24h"})
            assert r.status_code == 200 and r.headers["content-type"] == "image/png", (name, r.status_code)
            (out / f"served-{name}.png").write_bytes(r.content)
        # every chart function, on the simulated day and on a window with nothing in it
        for label, q in {
            "day": dash.DashboardQuery(window="24h", subgroup="hour"),
            "empty": dash.DashboardQuery(window="24h", camera_id="nobody"),
        }.items():
            with ctx.sessions() as s:
                board = dash.build(s, q, now=now)
            facts[label] = {
                "frames": board.frames,
                "agreement_rows": len(board.agreement[:10]),
                "cameras": len({q.camera_id for q in board.quality}),
                "quality_out": bool(any(q.out.any() for q in board.quality)),
                "rates_out": bool(any(r.chart.out.any() for r in board.rates)),
                "drift": board.drift is not None and board.drift.psi is not None,
            }
            for name, draw in CHARTS.items():
                (out / f"{label}-{name}.png").write_bytes(draw(board))
            (out / f"{label}-rate_charts.png").write_bytes(rate_charts_png(board.rates, "hour", width=9, height=6))
        # the shift report, as 'andon report' writes it
        with ctx.sessions() as s:
            report = build_report(s, now - dt.timedelta(hours=8), now)
        html = andon.reports.render.to_html(report)
        chart = re.search(r'src="data:image/png;base64,([^"]+)"', html).group(1)
        (out / "report.png").write_bytes(base64.b64decode(chart))
    facts["matplotlib"] = sorted(m for m in sys.modules if m.startswith("matplotlib"))
    print(json.dumps(facts))
    """
)


def near(img: Image.Image, colour: str, tol: int = 24) -> int:
    """Pixels within ``tol`` (per channel) of ``colour``."""
    a = np.asarray(img.convert("RGB"), dtype=np.int16)
    c = np.array(plot.rgba(colour)[:3], dtype=np.int16)
    return int((np.abs(a - c).max(axis=-1) <= tol).sum())


def note_pixels(img: Image.Image) -> int:
    """Muted grey pixels in the middle third of the picture, not counting rows that are one grey line (axes)."""
    a = np.asarray(img.convert("RGB"), dtype=np.int16)
    w = a.shape[1]
    middle = a[:, w // 3 : 2 * w // 3]
    muted = np.abs(middle - np.array(plot.rgba(MUTED)[:3], dtype=np.int16)).max(axis=-1) <= 8
    rows = muted.sum(axis=1)
    return int(rows[rows < 0.5 * middle.shape[1]].sum())


def over_white(colour: str, alpha: float) -> str:
    r, g, b, _ = plot.rgba(colour)
    return "#" + "".join(f"{round(255 - (255 - v) * alpha):02x}" for v in (r, g, b))


def opened(path: Path, size: tuple[int, int]) -> Image.Image:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path.name
    img = Image.open(io.BytesIO(data))
    img.load()
    assert img.format == "PNG" and img.mode == "RGB" and img.size == size, (path.name, img.mode, img.size)
    ink = near(img, INK, 40)
    assert ink > 150, f"{path.name}: no title or labels ({ink} ink pixels)"
    return img


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    out = tmp_path_factory.mktemp("charts")
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(out), str(TESTS)], capture_output=True, text=True, timeout=300
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    facts = json.loads(run.stdout.strip().splitlines()[-1])
    return out, facts


def test_service_imports_and_serves_charts_without_matplotlib(drawn):
    out, facts = drawn
    assert facts["matplotlib"] == []
    day = facts["day"]
    assert day["frames"] == 3000 and day["drift"] and day["cameras"] == 2 and day["agreement_rows"] >= 2
    rates = opened(out / "served-rates.png", (1000, 720))
    assert near(rates, BLUE) > 500 and near(rates, RED) > 300 and near(rates, GREY, 8) > 20_000
    opened(out / "served-agreement.png", (1000, round(100 * max(2.6, 0.6 * day["agreement_rows"] + 1.6))))
    opened(out / "served-drift.png", (1000, 360))
    opened(out / "served-quality.png", (1200, 500))


def test_every_chart_draws_its_series(drawn):
    out, facts = drawn
    day = facts["day"]
    rates = opened(out / "day-rates.png", (1000, 720))
    # frames per hour in grey bars, both rates in blue, their limits (and any point outside them) in red
    assert near(rates, GREY, 8) > 20_000 and near(rates, BLUE) > 1000 and near(rates, RED) > 500
    agreement = opened(out / "day-agreement.png", (1000, round(100 * max(2.6, 0.6 * day["agreement_rows"] + 1.6))))
    assert near(agreement, GREEN, 8) > 5000 and near(agreement, AMBER, 8) > 5000 and near(agreement, GREY, 8) > 300
    drift = opened(out / "day-drift.png", (1000, 360))
    assert near(drift, over_white(GREY, 0.5), 8) > 5000  # the reference, half see-through
    assert max(near(drift, c) for c in (GREEN, AMBER, RED)) > 1500  # this window's outline, coloured by level
    quality = opened(out / "day-quality.png", (1200, 500))
    assert near(quality, BLUE) > 1500 and near(quality, over_white(GREEN, 0.12), 6) > 50_000  # medians, usual band
    assert (near(quality, RED) > 100) == day["quality_out"]  # rings round the points outside the band
    assert near(opened(out / "day-rate_charts.png", (900, 600)), BLUE) > 500
    for name in ("rates", "agreement", "drift", "quality"):
        assert note_pixels(Image.open(out / f"day-{name}.png")) < 100, name  # data, not an empty state
    # the shift report's chart (the last 8 hours), as embedded in its HTML
    report = opened(out / "report.png", (900, 600))
    assert near(report, BLUE) > 300 and near(report, RED) > 200 and near(report, GREY, 8) > 10_000


def test_empty_windows_say_so(drawn):
    out, facts = drawn
    assert facts["empty"]["frames"] == 0 and facts["empty"]["cameras"] == 0
    sizes = {"rates": (1000, 720), "agreement": (1000, 260), "drift": (1000, 360), "quality": (1200, 280)}
    for name, size in sizes.items():
        img = opened(out / f"empty-{name}.png", size)
        assert near(img, BLUE) == 0 and near(img, RED) == 0, name  # no series, nothing flagged
        assert note_pixels(img) > 100, name  # "no frames in this window" (or verdicts), in muted grey


# ---------------------------------------------------------------------------------------------- the layer


def test_nice_linear_ticks():
    values, step = plot.linear_ticks(0, 7.7, 4)
    assert step == 2 and list(values) == [0, 2, 4, 6]
    values, step = plot.linear_ticks(0, 14.9, 6)
    assert step == 2.5 and [plot.format_number(v, step) for v in values] == [
        "0.0",
        "2.5",
        "5.0",
        "7.5",
        "10.0",
        "12.5",
    ]
    values, step = plot.linear_ticks(0, 165, 8)
    assert step == 25 and plot.format_number(values[1], step) == "25"  # no decimals for a whole step
    values, _ = plot.linear_ticks(30.4, 37.6, 2)  # a short span still gets three ticks
    assert len(values) >= 3
    assert plot.format_number(12000, 2000) == "12,000" and plot.format_number(-1e-17, 0.5) == "0.0"
    assert [label for _, label in plot.log_ticks(0.005, 30)] == ["0.01", "0.1", "1", "10"]


def test_time_ticks_follow_the_span():
    tz = dt.timezone(dt.timedelta(hours=1))
    start = dt.datetime(2026, 11, 24, 18, 0, tzinfo=tz)
    day, offset = plot.time_ticks(start.timestamp(), (start + dt.timedelta(hours=24)).timestamp(), tz, 8)
    labels = [label for _, label in day]
    assert labels == ["20:00", "Nov 25", "04:00", "08:00", "12:00", "16:00"] and offset == "2026-11-25"
    shift, _ = plot.time_ticks(start.timestamp(), (start + dt.timedelta(hours=8)).timestamp(), tz, 8)
    assert [label for _, label in shift] == ["18:00", "20:00", "22:00", "Nov 25", "02:00"]
    week, offset = plot.time_ticks(start.timestamp(), (start + dt.timedelta(days=7)).timestamp(), tz, 8)
    assert [label for _, label in week] == [f"Nov {d}" for d in range(25, 31)] + ["Dec 1"] and offset == "2026"
    month, _ = plot.time_ticks(start.timestamp(), (start + dt.timedelta(days=30)).timestamp(), tz, 8)
    assert len(month) <= 8 and all(dt.datetime.fromtimestamp(t, tz).weekday() == 0 for t, _ in month)  # Mondays


def test_dashed_line_keeps_its_pattern():
    pieces = plot.dashes(np.array([[0.0, 0.0], [10.0, 0.0], [10.0, 10.0]]), 3.0, 2.0)
    lengths = [float(np.sum(np.hypot(*np.diff(p, axis=0).T))) for p in pieces]
    assert all(abs(length - 3.0) < 1e-9 for length in lengths[:-1]) and len(pieces) == 4


def test_charts_render_alike_in_threads():
    """Nothing is shared between figures: eight threads at once draw the same bytes as one thread alone."""
    from andon.service.quality import stats
    from andon.service.quality.charts import rate_charts_png
    from andon.service.quality.series import RateSeries

    rng = np.random.default_rng(1)
    n = rng.integers(150, 300, 48)
    starts = [dt.datetime(2026, 11, 1, tzinfo=dt.timezone.utc) + dt.timedelta(hours=i) for i in range(48)]
    rates = [
        RateSeries(k, starts, stats.p_chart(rng.binomial(n, p), n)) for k, p in (("reject", 0.03), ("review", 0.07))
    ]
    alone = rate_charts_png(rates, "hour")
    with ThreadPoolExecutor(8) as pool:
        together = list(pool.map(lambda _: rate_charts_png(rates, "hour"), range(16)))
    assert set(together) == {alone}
    assert Image.open(io.BytesIO(alone)).size == (1000, 720)
