"""Charts drawn on the server as PNG (``plot``: Pillow and numpy, no matplotlib, nothing shared between
figures, so they render concurrently in the service's threads): the plant's colours, axes and PNG output,
and the rate p-charts that the line dashboard and the shift report both show. The dashboard's other
pictures are in ``andon.service.review.charts``.
"""

from __future__ import annotations

import datetime as dt

import numpy as np

from andon.service.quality import plot
from andon.service.quality.plot import Axes, Figure, Key
from andon.service.quality.series import SUBGROUPS, RateSeries

INK = plot.INK
MUTED = plot.MUTED
GRID = plot.GRID
BLUE = plot.BLUE
RED = plot.RED
GREEN = plot.GREEN
AMBER = plot.AMBER
GREY = plot.GREY


def new_figure(width: float, height: float) -> Figure:
    """A white picture ``width`` x ``height`` inches (100 pixels each)."""
    return Figure(width, height)


def style(ax: Axes, title: str, *, tick_size: float = 10) -> None:
    """The plant's axes: a title on the left, light grid under the data, ticks and labels in ink."""
    ax.set_title(title)
    ax.tick_pt = tick_size


def date_axis(ax: Axes, starts=None, maxticks: int = 8, *, step: dt.timedelta | None = None) -> None:
    """Plant-time date ticks; with ``starts`` (subgroup starts) the axis spans the whole window (the last
    subgroup is ``step`` long where there is only one)."""
    ax.time_x(plant_tz(), maxticks)
    if starts is not None and len(starts):
        step = starts[1] - starts[0] if len(starts) > 1 else step
        end = starts[-1] + step if step else starts[-1]
        ax.set_xlim(starts[0], end)


def plant_tz():
    return dt.datetime.now().astimezone().tzinfo


def plant_times(values) -> np.ndarray:
    """Aware datetimes in plant time, as an object array (so boolean masks work)."""
    tz = plant_tz()
    out = np.empty(len(values), dtype=object)
    out[:] = [v.astimezone(tz) for v in values]
    return out


def to_png(fig: Figure) -> bytes:
    return fig.png()


def empty_note(ax: Axes, text: str) -> None:
    ax.note(text)


def subgroup_step(starts, subgroup: str) -> dt.timedelta:
    """The length of a subgroup: the gap between the first two starts, else the subgroup's nominal one."""
    if len(starts) > 1:
        return starts[1] - starts[0]
    return dt.timedelta(seconds=SUBGROUPS.get(subgroup, 3600))


def rate_charts_png(rates: list[RateSeries], subgroup: str, width: float = 10, height: float = 7.2) -> bytes:
    """The rate p-charts of ``rates`` (``series.RateSeries``), for the dashboard and the shift report:
    frames per subgroup, then each rate against its centre line and 3-sigma limits."""
    fig = new_figure(width, height)
    axes = [row[0] for row in fig.subplots(3, 1, height_ratios=[1, 2, 2], hgap=18)]
    starts = rates[0].starts
    n = rates[0].chart.n
    step = subgroup_step(starts, subgroup)
    empty = not len(starts) or not np.any(n > 0)
    style(axes[0], f"Frames inspected per {subgroup}")
    for ax in axes:
        date_axis(ax, starts, step=step)
    for ax in axes[:-1]:
        ax.hide_xticklabels()
    if empty:  # the window's time axis, and nothing on it
        axes[0].note("no frames in this window", keep_x=True)
        for ax, series in zip(axes[1:], rates):
            style(ax, f"{series.name.capitalize()} rate (p-chart)")
            ax.note("", keep_x=True)
        return to_png(fig)
    axes[0].bars(starts, step * 0.8, n, GREY)
    axes[0].set_ylim(0)
    edges = [*starts, starts[-1] + step]
    mid = np.array([s + step / 2 for s in starts], dtype=object)
    for ax, series in zip(axes[1:], rates):
        c = series.chart
        ok = c.n > 0
        style(ax, f"{series.name.capitalize()} rate (p-chart)")
        ax.step(edges, 100 * c.ucl, RED, 1.0, dashed=True)
        ax.step(edges, 100 * c.lcl, RED, 1.0, dashed=True)
        ax.hline(100 * c.centre, INK, 1.0)
        ax.line(mid[ok], 100 * c.p[ok], BLUE, 1.5, marker=4)
        keys = [
            Key("3-sigma limits", RED, width=1.0, dashed=True),
            Key(f"centre {100 * c.centre:.2f}%", INK, width=1.0),
            Key(series.name, BLUE, marker=True),
        ]
        if c.out.any():
            ax.rings(mid[c.out], 100 * c.p[c.out], RED, size=10, width=2)
            keys.append(Key(f"{c.out_of_control} outside limits", RED, kind="ring", width=2))
        ax.set_ylabel("% of frames")
        ax.set_ylim(0)
        ax.legend(keys)
    return to_png(fig)
