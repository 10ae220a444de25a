"""The dashboard's pictures, drawn on the server with matplotlib (Agg, no pyplot state, so it is safe in
the service's threads). Every chart answers one question in its title and marks what needs attention in
red: points outside their control limits, a drifted score distribution, a camera outside its usual values.
"""

from __future__ import annotations

import io
import threading

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from andon.service.review.dashboard import Dashboard

INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"
BLUE = "#2f6fb0"
RED = "#c62828"
GREEN = "#2e7d32"
AMBER = "#e0a100"
GREY = "#9aa5b1"
_LOCK = threading.Lock()  # matplotlib's font cache and text layout are not thread-safe


def _figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def _style(ax, title: str) -> None:
    ax.set_title(title, loc="left", fontsize=13, color=INK, pad=10)
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(MUTED)
    ax.tick_params(colors=INK, labelsize=10)


def _dates(ax, starts=None, maxticks: int = 8) -> None:
    """Plant-time date ticks; with ``starts`` (subgroup starts) the axis spans the whole window."""
    locator = AutoDateLocator(tz=_tz(), minticks=3, maxticks=maxticks)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=_tz()))
    if starts is not None and len(starts):
        step = starts[1] - starts[0] if len(starts) > 1 else None
        ax.set_xlim(starts[0].astimezone(_tz()), (starts[-1] + step if step else starts[-1]).astimezone(_tz()))


def _tz():
    import datetime as dt

    return dt.datetime.now().astimezone().tzinfo


def _times(values) -> np.ndarray:
    """Aware datetimes in plant time, as an object array (so boolean masks work)."""
    tz = _tz()
    out = np.empty(len(values), dtype=object)
    out[:] = [v.astimezone(tz) for v in values]
    return out


def _png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def _empty(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=MUTED, fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def rates_png(board: Dashboard) -> bytes:
    """Volume, then reject and review rates on p-charts (3-sigma limits per subgroup size)."""
    return rate_charts_png(board.rates, board.query.subgroup)


def rate_charts_png(rates: list, subgroup: str, width: float = 10, height: float = 7.2) -> bytes:
    """The rate p-charts of ``rates`` (``dashboard.RateSeries``), for the dashboard and the shift report."""
    with _LOCK:
        fig = _figure(width, height)
        axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2, 2], "hspace": 0.45})
        starts = rates[0].starts
        n = rates[0].chart.n
        width = (starts[1] - starts[0]).total_seconds() / 86400 * 0.8 if len(starts) > 1 else 0.02
        x = _times(starts)
        axes[0].bar(x, n, width=width, align="edge", color=GREY)
        _style(axes[0], f"Frames inspected per {subgroup}")
        for ax, series in zip(axes[1:], rates):
            c = series.chart
            ok = c.n > 0
            xe = _times(list(starts) + ([starts[-1] + (starts[1] - starts[0])] if len(starts) > 1 else []))
            ucl, lcl = np.r_[c.ucl, c.ucl[-1:]][: len(xe)], np.r_[c.lcl, c.lcl[-1:]][: len(xe)]
            ax.step(xe, 100 * ucl, where="post", color=RED, linewidth=1, linestyle="--", label="3σ limits")
            ax.step(xe, 100 * lcl, where="post", color=RED, linewidth=1, linestyle="--")
            ax.axhline(100 * c.centre, color=INK, linewidth=1, label=f"centre {100 * c.centre:.2f}%")
            mid = _times([s + (starts[1] - starts[0]) / 2 for s in starts] if len(starts) > 1 else starts)
            ax.plot(mid[ok], 100 * c.p[ok], color=BLUE, marker="o", markersize=4, linewidth=1.5, label=series.name)
            if c.out.any():
                ax.plot(
                    mid[c.out],
                    100 * c.p[c.out],
                    linestyle="none",
                    marker="o",
                    markersize=10,
                    markerfacecolor="none",
                    markeredgecolor=RED,
                    markeredgewidth=2,
                    label=f"{c.out_of_control} outside limits",
                )
            ax.set_ylabel("% of frames", color=INK)
            ax.set_ylim(bottom=0)
            _style(ax, f"{series.name.capitalize()} rate (p-chart)")
            ax.legend(loc="upper left", fontsize=9, frameon=False, ncol=3)
        _dates(axes[-1], starts)
        return _png(fig)


def agreement_png(board: Dashboard) -> bytes:
    """Per model label: what operators said (confirmed, re-labelled, false alarm, can't tell)."""
    with _LOCK:
        rows = board.agreement[:10]
        fig = _figure(10, max(2.6, 0.6 * len(rows) + 1.6))
        ax = fig.subplots()
        _style(ax, "Operators vs the model, by the model's label")
        if not rows:
            _empty(ax, "no verdicts in this window")
            return _png(fig)
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
        return _png(fig)


def drift_png(board: Dashboard) -> bytes:
    """The defect-score distribution now against the model's first frames, with the PSI."""
    with _LOCK:
        fig = _figure(10, 3.6)
        ax = fig.subplots()
        d = board.drift
        if d is None or d.psi is None:
            _style(ax, "Score distribution (drift)")
            _empty(ax, d.note if d is not None else "no frames in this window")
            return _png(fig)
        colour = {"stable": GREEN, "moderate": AMBER, "major": RED}[d.level]
        _style(ax, f"Defect score distribution, model {d.model_version}: PSI {d.psi:.3f} ({d.level}), KS {d.ks:.3f}")
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
        return _png(fig)


def quality_png(board: Dashboard) -> bytes:
    """Brightness, contrast and focus per camera: subgroup medians against the camera's usual band."""
    with _LOCK:
        cameras = sorted({s.camera_id for s in board.quality})
        signals = ("brightness", "contrast", "focus")
        fig = _figure(12, max(2.8, 2.5 * len(cameras)))
        if not cameras:
            ax = fig.subplots()
            _style(ax, "Frame quality")
            _empty(ax, "no frames in this window")
            return _png(fig)
        axes = np.atleast_2d(fig.subplots(len(cameras), 3, squeeze=False))
        fig.subplots_adjust(hspace=0.6, wspace=0.25)
        by_key = {(s.camera_id, s.signal): s for s in board.quality}
        for r, camera in enumerate(cameras):
            for c, signal in enumerate(signals):
                ax = axes[r, c]
                s = by_key.get((camera, signal))
                _style(ax, f"{camera}: {signal}")
                if s is None or not np.isfinite(s.medians).any():
                    _empty(ax, "no values")
                    continue
                x = _times(s.starts)
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
                _dates(ax, s.starts, maxticks=4)
                ax.tick_params(labelsize=8)
        return _png(fig)


CHARTS = {"rates": rates_png, "agreement": agreement_png, "drift": drift_png, "quality": quality_png}
