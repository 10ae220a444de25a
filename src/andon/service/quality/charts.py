"""Charts drawn on the server with matplotlib (Agg, no pyplot state, so it is safe in the service's threads):
the plant's colours, axes and PNG output, and the rate p-charts that the line dashboard and the shift report
both show. The dashboard's other pictures are in ``andon.service.review.charts``.
"""

from __future__ import annotations

import io
import threading

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
from matplotlib.figure import Figure

from andon.service.quality.series import RateSeries

INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"
BLUE = "#2f6fb0"
RED = "#c62828"
GREEN = "#2e7d32"
AMBER = "#e0a100"
GREY = "#9aa5b1"
LOCK = threading.Lock()  # matplotlib's font cache and text layout are not thread-safe


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=100, facecolor="white")
    FigureCanvasAgg(fig)
    return fig


def style(ax, title: str) -> None:
    ax.set_title(title, loc="left", fontsize=13, color=INK, pad=10)
    ax.grid(True, color=GRID, linewidth=0.8)
    ax.set_axisbelow(True)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    for side in ("left", "bottom"):
        ax.spines[side].set_color(MUTED)
    ax.tick_params(colors=INK, labelsize=10)


def date_axis(ax, starts=None, maxticks: int = 8) -> None:
    """Plant-time date ticks; with ``starts`` (subgroup starts) the axis spans the whole window."""
    locator = AutoDateLocator(tz=plant_tz(), minticks=3, maxticks=maxticks)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(ConciseDateFormatter(locator, tz=plant_tz()))
    if starts is not None and len(starts):
        step = starts[1] - starts[0] if len(starts) > 1 else None
        end = starts[-1] + step if step else starts[-1]
        ax.set_xlim(starts[0].astimezone(plant_tz()), end.astimezone(plant_tz()))


def plant_tz():
    import datetime as dt

    return dt.datetime.now().astimezone().tzinfo


def plant_times(values) -> np.ndarray:
    """Aware datetimes in plant time, as an object array (so boolean masks work)."""
    tz = plant_tz()
    out = np.empty(len(values), dtype=object)
    out[:] = [v.astimezone(tz) for v in values]
    return out


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", bbox_inches="tight")
    return buf.getvalue()


def empty_note(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes, color=MUTED, fontsize=12)
    ax.set_xticks([])
    ax.set_yticks([])


def rate_charts_png(rates: list[RateSeries], subgroup: str, width: float = 10, height: float = 7.2) -> bytes:
    """The rate p-charts of ``rates`` (``series.RateSeries``), for the dashboard and the shift report."""
    with LOCK:
        fig = new_figure(width, height)
        axes = fig.subplots(3, 1, sharex=True, gridspec_kw={"height_ratios": [1, 2, 2], "hspace": 0.45})
        starts = rates[0].starts
        n = rates[0].chart.n
        width = (starts[1] - starts[0]).total_seconds() / 86400 * 0.8 if len(starts) > 1 else 0.02
        x = plant_times(starts)
        axes[0].bar(x, n, width=width, align="edge", color=GREY)
        style(axes[0], f"Frames inspected per {subgroup}")
        for ax, series in zip(axes[1:], rates):
            c = series.chart
            ok = c.n > 0
            xe = plant_times(list(starts) + ([starts[-1] + (starts[1] - starts[0])] if len(starts) > 1 else []))
            ucl, lcl = np.r_[c.ucl, c.ucl[-1:]][: len(xe)], np.r_[c.lcl, c.lcl[-1:]][: len(xe)]
            ax.step(xe, 100 * ucl, where="post", color=RED, linewidth=1, linestyle="--", label="3σ limits")
            ax.step(xe, 100 * lcl, where="post", color=RED, linewidth=1, linestyle="--")
            ax.axhline(100 * c.centre, color=INK, linewidth=1, label=f"centre {100 * c.centre:.2f}%")
            mid = plant_times([s + (starts[1] - starts[0]) / 2 for s in starts] if len(starts) > 1 else starts)
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
            style(ax, f"{series.name.capitalize()} rate (p-chart)")
            ax.legend(loc="upper left", fontsize=9, frameon=False, ncol=3)
        date_axis(axes[-1], starts)
        return to_png(fig)
