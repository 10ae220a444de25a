"""The dashboard on a simulated day of a line: a failing lamp and a defocused lens show up as flagged
quality points and out-of-control rates, drift is measured against the model's first frames."""

from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from andon.service.db import make_engine, migrate, session_factory
from andon.service.review import dashboard as dash
from andon.service.review.charts import CHARTS
from andon.service.review.simulate import Event, LineHistory, simulate

NOW = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.timezone.utc)


@pytest.fixture(scope="module")
def board_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("dash") / "andon.db"
    engine = make_engine(f"sqlite:///{path}")
    migrate(engine)
    sessions = session_factory(engine)
    history = LineHistory(
        frames=6000,
        hours=24,
        lines=("L1",),
        cameras_per_line=2,
        seed=3,
        events=[Event("L1-cam2", 0.75, 0.875, "lamp"), Event("L1-cam1", 0.9, 1.0, "focus")],
    )
    with sessions() as s:
        simulate(s, history, now=NOW)
    yield sessions
    engine.dispose()


def test_lamp_failure_and_defocus_are_flagged(board_db):
    with board_db() as s:
        board = dash.build(s, dash.DashboardQuery(window="24h", subgroup="hour"), now=NOW)
    assert board.frames == 6000
    by = {(q.camera_id, q.signal): q for q in board.quality}
    lamp = by[("L1-cam2", "brightness")]
    # the lamp fails 18 to 21 hours into the day that ends at NOW (12:00-15:00 UTC): those hours are low
    hours = [t.astimezone(dt.timezone.utc).hour for t, out in zip(lamp.starts, lamp.out) if out]
    assert set(hours) >= {12, 13} and set(hours) <= {11, 12, 13, 14, 15}
    assert by[("L1-cam2", "contrast")].out.sum() >= 3
    blur = by[("L1-cam1", "focus")]
    assert blur.out[-2:].all() and not blur.out[:-4].any()
    assert not by[("L1-cam1", "brightness")].out.any()
    reject = next(r for r in board.rates if r.name == "reject")
    flagged_hours = {reject.starts[i].astimezone(dt.timezone.utc).hour for i in np.flatnonzero(reject.chart.out)}
    assert flagged_hours & {12, 13, 14}
    assert any("L1-cam2 brightness" in a for a in board.alerts)


def test_agreement_by_class_and_drift(board_db):
    with board_db() as s:
        board = dash.build(s, dash.DashboardQuery(window="24h"), now=NOW)
    rows = {r.model_label: r for r in board.agreement}
    # simulated operators confirm 90% of rejects and 35% of reviews: labels from rejects agree far more
    assert rows["scratch"].agreement > rows["ok"].agreement + 0.2
    assert 0.2 < rows["ok"].agreement < 0.5 and rows["ok"].relabelled == 0  # confirming an unsure one is no re-label
    assert rows["scratch"].relabelled > 0
    assert board.drift is not None and board.drift.psi is not None
    assert board.drift.reference.size == dash.REFERENCE_FRAMES
    with board_db() as s:
        tiny = dash.build(s, dash.DashboardQuery(window="24h", camera_id="nobody"), now=NOW)
    assert tiny.frames == 0 and tiny.drift is None


def test_charts_render_as_pictures(board_db):
    with board_db() as s:
        board = dash.build(s, dash.DashboardQuery(window="7d", subgroup="shift", line_id="L1"), now=NOW)
    for name, draw in CHARTS.items():
        png = draw(board)
        assert png[:4] == b"\x89PNG" and len(png) > 10_000, name


def test_subgroups_align_to_plant_time():
    since = dt.datetime(2026, 11, 25, 7, 30).astimezone()
    until = since + dt.timedelta(hours=20)
    shifts = dash.subgroup_edges(since, until, "shift")
    first = dt.datetime.fromtimestamp(shifts[0]).astimezone()
    assert first.hour == 6 and first.minute == 0 and np.all(np.diff(shifts) == 8 * 3600)
    hours = dash.subgroup_edges(since, until, "hour")
    assert dt.datetime.fromtimestamp(hours[0]).astimezone().minute == 0 and hours[-1] >= until.timestamp()
