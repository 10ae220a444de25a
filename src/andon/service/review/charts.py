"""The dashboard's pictures, drawn on the server as PNG (``andon.service.quality.charts``: the same axes,
colours and rate p-charts as the shift report, drawn with Pillow). Every chart answers one question in its
title and marks what needs attention in red: points outside their control limits, a drifted score
distribution, a camera outside its usual values.
"""

from __future__ import annotations

import numpy as np

from andon.service.quality.charts import (
    AMBER,
    BLUE,
    GREEN,
    GREY,
    INK,
    RED,
    date_axis,
    empty_note,
    new_figure,
    plant_times,
    rate_charts_png,
    style,
    subgroup_step,
    to_png,
)
from andon.service.quality.plot import Key
from andon.service.review.dashboard import Dashboard

RELABELLED = "#7cb342"


def rates_png(board: Dashboard) -> bytes:
    """Volume, then reject and review rates on p-charts (3-sigma limits per subgroup size)."""
    return rate_charts_png(board.rates, board.query.subgroup)


def agreement_png(board: Dashboard) -> bytes:
    """Per model label: what operators said (confirmed, re-labelled, false alarm, can't tell)."""
    rows = board.agreement[:10]
    fig = new_figure(10, max(2.6, 0.6 * len(rows) + 1.6))
    ax = fig.subplots()[0][0]
    style(ax, "Operators vs the model, by the model's label")
    if not rows:
        empty_note(ax, "no verdicts in this window")
        return to_png(fig)
    y = np.arange(len(rows))[::-1]
    parts = [
        ("confirmed", [r.confirmed - r.relabelled for r in rows], GREEN),
        ("confirmed, other defect type", [r.relabelled for r in rows], RELABELLED),
        ("false alarm", [r.false_alarm for r in rows], AMBER),
        ("can't tell", [r.cant_tell for r in rows], GREY),
    ]
    left = np.zeros(len(rows))
    for _, values, colour in parts:
        ax.hbars(y, left, values, 0.6, colour)
        left += np.asarray(values, dtype=float)
    for yi, r, total in zip(y, rows, left):
        text = "–" if r.agreement is None else f"{100 * r.agreement:.0f}% agree"
        ax.text(total, yi, f"  {text} ({r.judged})", INK, 10)
    ax.set_yticks(y, [r.model_label for r in rows])
    ax.grid(x=True, y=False)
    ax.set_xlabel("frames reviewed")
    ax.set_xlim(0, max(1.0, left.max()) * 1.3)
    ax.legend([Key(name, colour, kind="patch") for name, _, colour in parts])
    return to_png(fig)


def drift_png(board: Dashboard) -> bytes:
    """The defect-score distribution now against the model's first frames, with the PSI."""
    fig = new_figure(10, 3.6)
    ax = fig.subplots()[0][0]
    d = board.drift
    if d is None or d.psi is None:
        style(ax, "Score distribution (drift)")
        empty_note(ax, d.note if d is not None else "no frames in this window")
        return to_png(fig)
    colour = {"stable": GREEN, "moderate": AMBER, "major": RED}[d.level]
    style(ax, f"Defect score distribution, model {d.model_version}: PSI {d.psi:.3f} ({d.level}), KS {d.ks:.3f}")
    bins = np.linspace(0, 1, 41)
    reference, _ = np.histogram(d.reference, bins=bins, density=True)
    current, _ = np.histogram(d.current, bins=bins, density=True)
    ax.log_y()
    ax.bars(bins[:-1], np.diff(bins), reference, GREY, alpha=0.5)
    ax.step(bins, current, colour, 2.0, drop=True)
    ax.set_xlabel("P(defect)")
    ax.set_ylabel("density (log)")
    ax.legend(
        [
            Key(f"reference: first {d.reference.size} frames", GREY, kind="patch", alpha=0.5),
            Key(f"this window: {d.current.size} frames", colour, kind="patch", filled=False, width=2),
        ]
    )
    return to_png(fig)


def quality_png(board: Dashboard) -> bytes:
    """Brightness, contrast and focus per camera: subgroup medians against the camera's usual band."""
    cameras = sorted({s.camera_id for s in board.quality})
    signals = ("brightness", "contrast", "focus")
    fig = new_figure(12, max(2.8, 2.5 * len(cameras)))
    if not cameras:
        ax = fig.subplots()[0][0]
        style(ax, "Frame quality")
        empty_note(ax, "no frames in this window")
        return to_png(fig)
    axes = fig.subplots(len(cameras), 3, hgap=16, wgap=22)
    by_key = {(s.camera_id, s.signal): s for s in board.quality}
    for r, camera in enumerate(cameras):
        for c, signal in enumerate(signals):
            ax = axes[r][c]
            s = by_key.get((camera, signal))
            style(ax, f"{camera}: {signal}", tick_size=8)
            if s is None or not np.isfinite(s.medians).any():
                empty_note(ax, "no values")
                continue
            x = plant_times(s.starts)
            if s.usual is not None:
                low, high = s.usual.band()
                ax.hspan(low, high, GREEN, alpha=0.12)
                ax.hline(s.usual.median, GREEN, 1.0)
            ok = np.isfinite(s.medians)
            ax.line(x[ok], s.medians[ok], BLUE, 1.2, marker=3)
            if s.out.any():
                ax.rings(x[s.out], s.medians[s.out], RED, size=9, width=2)
            date_axis(ax, s.starts, maxticks=5, step=subgroup_step(s.starts, board.query.subgroup))
    return to_png(fig)


CHARTS = {"rates": rates_png, "agreement": agreement_png, "drift": drift_png, "quality": quality_png}
