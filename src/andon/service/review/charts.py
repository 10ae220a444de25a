"""The dashboard's pictures, drawn on the server with matplotlib (``andon.service.quality.charts``: the same
axes, colours and rate p-charts as the shift report). Every chart answers one question in its title and marks
what needs attention in red: points outside their control limits, a drifted score distribution, a camera
outside its usual values.
"""

from __future__ import annotations

import numpy as np

from andon.service.quality.charts import (
    AMBER,
    BLUE,
    GREEN,
    GREY,
    INK,
    LOCK,
    RED,
    date_axis,
    empty_note,
    new_figure,
    plant_times,
    rate_charts_png,
    style,
    to_png,
)
from andon.service.review.dashboard import Dashboard


def rates_png(board: Dashboard) -> bytes:
    """Volume, then reject and review rates on p-charts (3-sigma limits per subgroup size)."""
    return rate_charts_png(board.rates, board.query.subgroup)


def agreement_png(board: Dashboard) -> bytes:
    """Per model label: what operators said (confirmed, re-labelled, false alarm, can't tell)."""
    with LOCK:
        rows = board.agreement[:10]
        fig = new_figure(10, max(2.6, 0.6 * len(rows) + 1.6))
        ax = fig.subplots()
        style(ax, "Operators vs the model, by the model's label")
        if not rows:
            empty_note(ax, "no verdicts in this window")
            return to_png(fig)
        y = np.arange(len(rows))[::-1]
        parts = [
            ("confirmed", [r.confirmed - r.relabelled for r in rows], GREEN),
            ("confirmed, other defect type", [r.relabelled for r in rows], "#7cb342"),
            ("false alarm", [r.false_alarm for r in rows], AMBER),
            ("can't tell", [r.cant_tell for r in rows], GREY),
        ]
        left = np.zeros(len(rows))
        for name, values, colour in parts:
            ax.barh(y, values, left=left, color=colour, label=name, height=0.6)
            left += np.asarray(values, dtype=float)
        for yi, r, total in zip(y, rows, left):
            text = "–" if r.agreement is None else f"{100 * r.agreement:.0f}% agree"
            ax.text(total, yi, f"  {text} ({r.judged})", va="center", fontsize=10, color=INK)
        ax.set_yticks(y, [r.model_label for r in rows])
        ax.set_xlabel("frames reviewed", color=INK)
        ax.set_xlim(0, max(1.0, left.max()) * 1.3)
        ax.legend(loc="lower right", fontsize=9, frameon=False)
        return to_png(fig)


def drift_png(board: Dashboard) -> bytes:
    """The defect-score distribution now against the model's first frames, with the PSI."""
    with LOCK:
        fig = new_figure(10, 3.6)
        ax = fig.subplots()
        d = board.drift
        if d is None or d.psi is None:
            style(ax, "Score distribution (drift)")
            empty_note(ax, d.note if d is not None else "no frames in this window")
            return to_png(fig)
        colour = {"stable": GREEN, "moderate": AMBER, "major": RED}[d.level]
        style(ax, f"Defect score distribution, model {d.model_version}: PSI {d.psi:.3f} ({d.level}), KS {d.ks:.3f}")
        bins = np.linspace(0, 1, 41)
        ax.hist(
            d.reference,
            bins=bins,
            density=True,
            histtype="stepfilled",
            color=GREY,
            alpha=0.5,
            label=f"reference: first {d.reference.size} frames",
        )
        ax.hist(
            d.current,
            bins=bins,
            density=True,
            histtype="step",
            color=colour,
            linewidth=2,
            label=f"this window: {d.current.size} frames",
        )
        ax.set_yscale("log")
        ax.set_xlabel("P(defect)", color=INK)
        ax.set_ylabel("density (log)", color=INK)
        ax.legend(loc="upper center", fontsize=9, frameon=False)
        return to_png(fig)


def quality_png(board: Dashboard) -> bytes:
    """Brightness, contrast and focus per camera: subgroup medians against the camera's usual band."""
    with LOCK:
        cameras = sorted({s.camera_id for s in board.quality})
        signals = ("brightness", "contrast", "focus")
        fig = new_figure(12, max(2.8, 2.5 * len(cameras)))
        if not cameras:
            ax = fig.subplots()
            style(ax, "Frame quality")
            empty_note(ax, "no frames in this window")
            return to_png(fig)
        axes = np.atleast_2d(fig.subplots(len(cameras), 3, squeeze=False))
        fig.subplots_adjust(hspace=0.6, wspace=0.25)
        by_key = {(s.camera_id, s.signal): s for s in board.quality}
        for r, camera in enumerate(cameras):
            for c, signal in enumerate(signals):
                ax = axes[r, c]
                s = by_key.get((camera, signal))
                style(ax, f"{camera}: {signal}")
                if s is None or not np.isfinite(s.medians).any():
                    empty_note(ax, "no values")
                    continue
                x = plant_times(s.starts)
                if s.usual is not None:
                    low, high = s.usual.band()
                    ax.axhspan(low, high, color=GREEN, alpha=0.12, label="usual (±3 robust σ)")
                    ax.axhline(s.usual.median, color=GREEN, linewidth=1)
                ok = np.isfinite(s.medians)
                ax.plot(x[ok], s.medians[ok], color=BLUE, marker="o", markersize=3, linewidth=1.2)
                if s.out.any():
                    ax.plot(
                        x[s.out],
                        s.medians[s.out],
                        linestyle="none",
                        marker="o",
                        markersize=9,
                        markerfacecolor="none",
                        markeredgecolor=RED,
                        markeredgewidth=2,
                    )
                date_axis(ax, s.starts, maxticks=4)
                ax.tick_params(labelsize=8)
        return to_png(fig)


CHARTS = {"rates": rates_png, "agreement": agreement_png, "drift": drift_png, "quality": quality_png}
