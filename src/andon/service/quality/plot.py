"""A small drawing layer for the service's charts, with Pillow and numpy only (no matplotlib: the service's
image stays small). ``andon.service.quality.charts`` and ``andon.service.review.charts`` draw with it.

A ``Figure`` lays ``Axes`` out on a grid. An ``Axes`` records what is drawn on it in data coordinates (lines,
step lines, bars, shaded bands, markers, text) and draws it when the figure is rendered: only then are the
scales fixed, from the data and the pixels there are, and the margins sized to the tick labels, titles and
legends actually drawn (the way matplotlib autoscales and lays out tightly). Scales are linear (with "nice"
1-2-2.5-5 ticks), log (decades) or plant time (ticks on whole hours or days, depending on the span).

Everything is drawn at ``SCALE`` times the output size and downsampled with Lanczos, which anti-aliases lines,
markers and text alike. The font is Pillow's own scalable one (``ImageFont.load_default(size=...)``, Aileron,
inside Pillow: nothing to install, the same picture on every machine); it has no Greek letters or dashes, so
those are written plainly (``_PLAIN``: "σ" as "sigma", "–" as "-"). A figure shares nothing with another
(each loads its own fonts, a fraction of a millisecond), so charts render concurrently in the service's threads.
"""

from __future__ import annotations

import datetime as dt
import io
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

DPI = 100  # output pixels per inch: figure sizes are in inches, like the matplotlib charts they replace
SCALE = 2  # supersampling factor (anti-aliasing): 3 looks the same and takes twice the memory
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
#: glyphs Pillow's font lacks, written the way it can
_PLAIN = str.maketrans({"σ": "sigma", "–": "-", "—": "-", "−": "-", "×": "x", "≤": "<=", "≥": ">=", "µ": "u"})
_TIME_STEPS_H = (1, 2, 3, 4, 6, 12)
_TIME_STEPS_D = (1, 2, 3, 7, 14, 28)

Colour = tuple[int, int, int, int]

# the plant's palette (andon.service.quality.charts re-exports it)
INK = "#1f2933"
MUTED = "#7b8794"
GRID = "#e4e7eb"
BLUE = "#2f6fb0"
RED = "#c62828"
GREEN = "#2e7d32"
AMBER = "#e0a100"
GREY = "#9aa5b1"


def rgba(colour: str, alpha: float = 1.0) -> Colour:
    """``#rrggbb`` with an opacity from 0 to 1, as an RGBA tuple."""
    c = colour.lstrip("#")
    return int(c[0:2], 16), int(c[2:4], 16), int(c[4:6], 16), round(255 * alpha)


def load_font(px: int) -> ImageFont.FreeTypeFont:
    """Pillow's scalable default font at ``px`` pixels (Pillow >= 10.1), else DejaVu Sans where installed."""
    try:
        return ImageFont.load_default(size=px)
    except TypeError:  # Pillow 10.0: no size, only the bitmap font
        try:
            return ImageFont.truetype("DejaVuSans.ttf", px)
        except OSError as e:
            raise RuntimeError("the charts need Pillow >= 10.1 (pip install 'pillow>=10.1')") from e


# ---------------------------------------------------------------------------------------------- ticks


def nice_step(span: float, intervals: int) -> float:
    """The smallest of 1, 2, 2.5, 5 x 10^k that cuts ``span`` into at most ``intervals`` parts."""
    raw = span / max(1, intervals)
    if not math.isfinite(raw) or raw <= 0:
        return 1.0
    mag = 10.0 ** math.floor(math.log10(raw))
    for m in (1.0, 2.0, 2.5, 5.0, 10.0):
        if m * mag >= raw * (1 - 1e-9):
            return m * mag
    return 10.0 * mag


def linear_ticks(lo: float, hi: float, intervals: int, least: int = 3) -> tuple[np.ndarray, float]:
    """Tick values on multiples of a nice step within [lo, hi] (at least ``least`` of them where a finer
    step gives them), and the step."""
    for more in range(intervals, intervals + 8):
        step = nice_step(hi - lo, more)
        first, last = math.ceil(lo / step - 1e-9), math.floor(hi / step + 1e-9)
        if last - first + 1 >= least:
            break
    return np.arange(first, last + 1) * step, step


def format_number(value: float, step: float) -> str:
    """``value`` with as many decimals as ``step`` needs (2.5 -> one, 0.25 -> two); thousands grouped."""
    if step <= 0 or not math.isfinite(step):
        return f"{value:g}"
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    while decimals < 12 and abs(round(step, decimals) - step) > step * 1e-6:  # 2.5 -> 1, 0.25 -> 2
        decimals += 1
    value = 0.0 if abs(value) < step * 1e-9 else value
    return f"{value:,.{decimals}f}" if abs(value) >= 10_000 else f"{value:.{decimals}f}"


def log_ticks(lo: float, hi: float) -> list[tuple[float, str]]:
    """Decades within [lo, hi] (lo > 0), labelled as plain numbers (0.01, 0.1, 1, 10)."""
    k0, k1 = math.floor(math.log10(lo)), math.ceil(math.log10(hi))
    mantissas = (1,) if k1 - k0 > 2 else (1, 2, 5)  # under two decades: 1, 2, 5 of each
    out = []
    for k in range(k0, k1 + 1):
        for m in mantissas:
            v = m * 10.0**k
            if lo * (1 - 1e-9) <= v <= hi * (1 + 1e-9):
                out.append((v, f"{v:.{-k}f}" if k < 0 else f"{round(v):,}"))
    return out


def time_ticks(lo: float, hi: float, tz: dt.tzinfo, maxticks: int) -> tuple[list[tuple[float, str]], str]:
    """Ticks on whole hours (1 to 12) or days (1 to 28) of ``tz`` for the span [lo, hi] (epoch seconds), at
    most ``maxticks`` of them, and the offset text that completes their labels: the date under hour ticks
    (midnight ticks say the day), the year under day ticks."""
    span = hi - lo
    ticks: list[dt.datetime] = []
    steps = [(h * 3600, True) for h in _TIME_STEPS_H] + [(d * 86400, False) for d in _TIME_STEPS_D]
    for seconds, hourly in steps:
        if span / seconds <= maxticks + 1:  # (cheap test first: a long span has thousands of hours)
            ticks = _aligned(lo, hi, tz, seconds, hourly)
            if len(ticks) <= maxticks:
                break
    else:
        ticks = _aligned(lo, hi, tz, seconds, hourly)
    out = []
    for t in ticks:
        if hourly and (t.hour or t.minute):
            label = f"{t:%H:%M}"
        else:
            label = f"{MONTHS[t.month - 1]} {t.day}"
        out.append((t.timestamp(), label))
    end = dt.datetime.fromtimestamp(hi, tz)
    return out, f"{end:%Y-%m-%d}" if hourly else f"{end.year}"


def _aligned(lo: float, hi: float, tz: dt.tzinfo, seconds: int, hourly: bool) -> list[dt.datetime]:
    start = dt.datetime.fromtimestamp(lo, tz).replace(minute=0, second=0, microsecond=0)
    if hourly:
        start = start.replace(hour=start.hour - start.hour % (seconds // 3600))
        step = dt.timedelta(hours=seconds // 3600)
    else:
        days = seconds // 86400
        start = start.replace(hour=0)
        start -= dt.timedelta(days=(start.toordinal() - 1) % days)  # 7 days: Mondays
        step = dt.timedelta(days=days)
    out = []
    t = start
    while t.timestamp() <= hi + 1e-6:
        if t.timestamp() >= lo - 1e-6:
            out.append(t)
        t = t + step
    return out


# ---------------------------------------------------------------------------------------------- axes


class Axis:
    """One axis of an Axes: its kind (linear, log, time), limits, ticks and label."""

    def __init__(self) -> None:
        self.kind = "linear"
        self.tz: dt.tzinfo | None = None
        self.maxticks = 8
        self.fixed: tuple[float | None, float | None] = (None, None)
        self.data = [math.inf, -math.inf, math.inf]  # min, max, smallest positive
        self.custom_ticks: list[tuple[float, str]] | None = None
        self.label: str | None = None
        self.show_labels = True
        self.show_ticks = True
        self.grid = True
        # set by finalize()
        self.lo, self.hi = 0.0, 1.0
        self.ticks: list[tuple[float, str]] = []
        self.offset = ""

    def include(self, values) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        v = v[np.isfinite(v)]
        if v.size:
            positive = v[v > 0]
            self.data = [
                min(self.data[0], float(v.min())),
                max(self.data[1], float(v.max())),
                min(self.data[2], float(positive.min())) if positive.size else self.data[2],
            ]

    def finalize(self, length_px: float) -> None:
        """Limits (the data plus 5% margins where not fixed) and ticks for an axis ``length_px`` long."""
        lo, hi, lo_positive = self.data
        if self.kind == "log":
            lo, hi = (math.log10(lo_positive), math.log10(hi)) if hi >= lo_positive else (0.0, 1.0)
        elif lo > hi:  # nothing drawn
            lo, hi = 0.0, 1.0
        if hi - lo < 1e-12:
            pad = max(abs(lo) * 0.05, 0.5 if self.kind != "time" else 1800.0)
            lo, hi = lo - pad, hi + pad
        margin = 0.05 * (hi - lo)
        lo, hi = lo - margin, hi + margin
        if self.kind == "log":
            lo, hi = 10.0**lo, 10.0**hi
        flo, fhi = self.fixed
        self.lo = lo if flo is None else flo
        self.hi = hi if fhi is None else fhi
        if self.hi <= self.lo:
            self.hi = self.lo + (1.0 if self.kind != "time" else 3600.0)
        self.offset = ""
        if self.custom_ticks is not None:
            self.ticks = [t for t in self.custom_ticks if self.lo <= t[0] <= self.hi]
        elif self.kind == "time":
            self.ticks, self.offset = time_ticks(self.lo, self.hi, self.tz or dt.timezone.utc, self.maxticks)
        elif self.kind == "log":
            self.ticks = log_ticks(self.lo, self.hi)
        else:
            intervals = int(min(self.maxticks, max(2, round(length_px / (45 * SCALE)))))
            values, step = linear_ticks(self.lo, self.hi, intervals, least=3 if length_px >= 110 * SCALE else 2)
            self.ticks = [(float(v), format_number(float(v), step)) for v in values]

    def frac(self, values) -> np.ndarray:
        """Position along the axis, 0 at ``lo`` and 1 at ``hi`` (log: -inf for values <= 0)."""
        v = np.asarray(values, dtype=np.float64)
        if self.kind == "log":
            with np.errstate(divide="ignore", invalid="ignore"):
                lv = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), -np.inf)
            return (lv - math.log10(self.lo)) / (math.log10(self.hi) - math.log10(self.lo))
        return (v - self.lo) / (self.hi - self.lo)


@dataclass(frozen=True)
class Key:
    """A legend entry: ``kind`` line (optionally dashed, with a marker), ring, patch (filled or outlined)."""

    label: str
    colour: str
    kind: str = "line"
    width: float = 1.5
    dashed: bool = False
    marker: bool = False
    alpha: float = 1.0
    filled: bool = True


class Painter:
    """What an Axes' drawing operations get: where to draw and the data -> pixel transforms. Clipped to the
    plot area (lines, bars, bands: a layer the size of the plot, pasted on the figure), or not (markers and
    text, drawn on the figure itself after the layer, so a point on the edge shows whole)."""

    def __init__(self, fig: Figure, ax: Axes, draw: ImageDraw.ImageDraw | None = None) -> None:
        self.fig, self.ax = fig, ax
        left, top, right, bottom = ax.rect
        self.w, self.h = right - left, bottom - top
        self.layer = None if draw is not None else Image.new("RGBA", (self.w, self.h), (255, 255, 255, 0))
        self.draw = draw if draw is not None else ImageDraw.Draw(self.layer)
        self.origin = (0, 0) if draw is None else (left, top)

    def xy(self, x, y) -> np.ndarray:
        px = self.ax.x.frac(x) * self.w
        py = (1.0 - self.ax.y.frac(y)) * self.h
        limit = 4.0 * max(self.w, self.h)
        return np.stack(
            [np.clip(px, -limit, limit) + self.origin[0], np.clip(py, -limit, limit) + self.origin[1]], axis=-1
        )

    def px(self, pt: float) -> int:
        return self.fig.px(pt)

    def paint(self, alpha: float, shapes: Callable[[ImageDraw.ImageDraw], None]) -> None:
        """``shapes(draw)``: straight on the plot's layer when opaque; see-through, on a layer of its own that
        is then composited over what is drawn (on the clipped layer only)."""
        if alpha >= 1 or self.layer is None:
            shapes(self.draw)
            return
        own = Image.new("RGBA", (self.w, self.h), (255, 255, 255, 0))
        shapes(ImageDraw.Draw(own))
        self.layer.alpha_composite(own)


def polylines(points: np.ndarray) -> list[np.ndarray]:
    """``points`` (N, 2) cut where a coordinate is NaN."""
    ok = np.isfinite(points).all(axis=1)
    out, run = [], []
    for p, good in zip(points, ok):
        if good:
            run.append(p)
        elif run:
            out.append(np.array(run))
            run = []
    if run:
        out.append(np.array(run))
    return out


def dashes(line: np.ndarray, on: float, off: float) -> list[np.ndarray]:
    """A polyline cut into dashes ``on`` long with gaps ``off`` long (pixels), the pattern running on over
    corners."""
    out: list[np.ndarray] = []
    period, phase = on + off, 0.0
    current: list[np.ndarray] = []
    for a, b in zip(line[:-1], line[1:]):
        length = float(np.hypot(*(b - a)))
        pos = 0.0
        while pos < length - 1e-9:
            in_dash = phase < on
            room = (on - phase) if in_dash else (period - phase)
            step = min(room, length - pos)
            p0, p1 = a + (b - a) * (pos / length), a + (b - a) * ((pos + step) / length)
            if in_dash:
                if not current:
                    current.append(p0)
                current.append(p1)
            pos += step
            phase += step
            if in_dash and phase >= on - 1e-9:
                out.append(np.array(current))
                current = []
            if phase >= period - 1e-9:
                phase = 0.0
    if len(current) > 1:
        out.append(np.array(current))
    return out


def stroke(draw: ImageDraw.ImageDraw, line: np.ndarray, fill: Colour, width: int, dash=None) -> None:
    pieces = dashes(line, *dash) if dash else [line]
    for piece in pieces:
        if len(piece) >= 2:
            draw.line([tuple(p) for p in piece.tolist()], fill=fill, width=width, joint="curve")


class Axes:
    """A plot area with its axes, title and legend; its methods take data coordinates (time: datetimes)."""

    def __init__(self, fig: Figure) -> None:
        self.fig = fig
        self.x, self.y = Axis(), Axis()
        self.title_text: str | None = None
        self.keys: list[Key] = []
        self.note_text: str | None = None
        self.tick_pt = 10.0
        self.ops: list[tuple[bool, Callable[[Painter], None]]] = []  # (clipped, draw)
        self.rect = (0, 0, 1, 1)  # left, top, right, bottom in canvas pixels, set by the layout

    # --- axes

    def set_title(self, text: str) -> None:
        self.title_text = text

    def set_xlabel(self, text: str) -> None:
        self.x.label = text

    def set_ylabel(self, text: str) -> None:
        self.y.label = text

    def set_xlim(self, lo=None, hi=None) -> None:
        self.x.fixed = (_num(lo), _num(hi))

    def set_ylim(self, lo=None, hi=None) -> None:
        self.y.fixed = (_num(lo), _num(hi))

    def time_x(self, tz: dt.tzinfo, maxticks: int = 8) -> None:
        """The x axis is plant time (x values are aware datetimes)."""
        self.x.kind, self.x.tz, self.x.maxticks = "time", tz, maxticks

    def log_y(self) -> None:
        self.y.kind = "log"

    def set_yticks(self, values: Sequence[float], labels: Sequence[str]) -> None:
        self.y.custom_ticks = [(float(v), str(s)) for v, s in zip(values, labels)]

    def hide_xticklabels(self) -> None:
        self.x.show_labels = False

    def grid(self, x: bool = True, y: bool = True) -> None:
        self.x.grid, self.y.grid = x, y

    def legend(self, keys: Sequence[Key]) -> None:
        """Keys above the plot, right-aligned: beside the title where they fit, else under it."""
        self.keys = list(keys)

    def note(self, text: str, *, keep_x: bool = False) -> None:
        """An empty state: ``text`` in the middle, no ticks (but the x axis' with ``keep_x``)."""
        self.note_text = text or None
        for axis in (self.y,) if keep_x else (self.x, self.y):
            axis.show_ticks = axis.show_labels = axis.grid = False
            axis.label = None

    # --- drawing (recorded, drawn by render)

    def line(self, x, y, colour: str, width: float = 1.5, *, dashed: bool = False, marker: float = 0.0) -> None:
        """A polyline through (x, y) (NaN breaks it), with round markers ``marker`` points across."""
        x, y = _xs(x), np.array(y, dtype=np.float64)
        self.x.include(x)
        self.y.include(y)

        def op(p: Painter) -> None:
            dash = (p.px(3.7 * width), p.px(1.6 * width)) if dashed else None
            for run in polylines(p.xy(x, y)):
                stroke(p.draw, run, rgba(colour), max(1, p.px(width)), dash)

        def dots(p: Painter) -> None:
            r = p.fig.pxf(marker / 2)
            pts = p.xy(x, y)
            for cx, cy in pts[np.isfinite(pts).all(axis=1)].tolist():
                p.draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=rgba(colour))

        self.ops.append((True, op))
        if marker:
            self.ops.append((False, dots))

    def step(self, edges, values, colour: str, width: float = 1.0, *, dashed: bool = False, drop=False) -> None:
        """``values[i]`` held from ``edges[i]`` to ``edges[i + 1]`` (a histogram's outline with ``drop``: down
        to zero at both ends)."""
        e, v = _xs(edges), np.array(values, dtype=np.float64)
        xs = np.repeat(e, 2)[1:-1]
        ys = np.repeat(v, 2)
        if drop:
            xs, ys = np.r_[e[0], xs, e[-1]], np.r_[0.0, ys, 0.0]
        self.line(xs, ys, colour, width, dashed=dashed)

    def bars(self, left, width, height, colour: str, *, bottom: float = 0.0, alpha: float = 1.0) -> None:
        """Vertical bars from ``left`` to ``left + width``, ``bottom`` to ``height`` (log: from the axis)."""
        x0 = _xs(left)
        x1 = x0 + np.broadcast_to(np.asarray(_span(width), dtype=np.float64), x0.shape)
        h = np.array(height, dtype=np.float64)
        self.x.include(np.r_[x0, x1])
        self.y.include(h)
        if self.y.kind != "log":
            self.y.include([bottom])
        self._boxes(x0, x1, np.full(h.shape, bottom), h, colour, alpha)

    def hbars(self, y, left, width, height: float, colour: str) -> None:
        """Horizontal bars centred on ``y``, ``height`` thick, from ``left`` to ``left + width``."""
        yc = np.array(y, dtype=np.float64)  # copies: drawing happens later, the caller may change its arrays
        x0 = np.array(left, dtype=np.float64)
        x1 = x0 + np.asarray(width, dtype=np.float64)
        self.x.include(np.r_[x0, x1])
        self.y.include(np.r_[yc - height / 2, yc + height / 2])
        self._boxes(x0, x1, yc - height / 2, yc + height / 2, colour, 1.0)

    def _boxes(self, x0, x1, y0, y1, colour: str, alpha: float) -> None:
        def op(p: Painter) -> None:
            a, b = p.xy(x0, y0), p.xy(x1, y1)

            def shapes(draw: ImageDraw.ImageDraw) -> None:
                for (ax_, ay), (bx, by) in zip(a.tolist(), b.tolist()):
                    left, right, top, bot = min(ax_, bx), max(ax_, bx), min(ay, by), max(ay, by)
                    if right - left >= 1 and bot - top >= 1:  # (a zero count on a log axis has no height)
                        draw.rectangle([left, top, right - 1, bot - 1], fill=rgba(colour, alpha))

            p.paint(alpha, shapes)

        self.ops.append((True, op))

    def hspan(self, lo: float, hi: float, colour: str, alpha: float = 0.12) -> None:
        """A band across the plot from ``lo`` to ``hi``."""
        self.y.include([lo, hi])

        def op(p: Painter) -> None:
            top, bot = float(p.xy(0, hi)[1]), float(p.xy(0, lo)[1])
            p.paint(alpha, lambda d: d.rectangle([0, min(top, bot), p.w, max(top, bot)], fill=rgba(colour, alpha)))

        self.ops.append((True, op))

    def hline(self, y: float, colour: str, width: float = 1.0, *, dashed: bool = False) -> None:
        """A line across the plot at ``y``."""
        self.y.include([y])

        def op(p: Painter) -> None:
            py = float(p.xy(0, y)[1])
            dash = (p.px(3.7 * width), p.px(1.6 * width)) if dashed else None
            stroke(p.draw, np.array([[0.0, py], [p.w, py]]), rgba(colour), max(1, p.px(width)), dash)

        self.ops.append((True, op))

    def rings(self, x, y, colour: str, size: float = 10.0, width: float = 2.0) -> None:
        """Open circles ``size`` points across (the points that need attention)."""
        x, y = _xs(x), np.array(y, dtype=np.float64)
        self.x.include(x)
        self.y.include(y)

        def op(p: Painter) -> None:
            r = p.fig.pxf(size / 2)
            for cx, cy in p.xy(x, y).tolist():
                if math.isfinite(cx + cy):
                    p.draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=rgba(colour), width=p.px(width))

        self.ops.append((False, op))

    def text(self, x: float, y: float, text: str, colour: str, size: float = 10.0, anchor: str = "lm") -> None:
        """``text`` at data point (x, y) (Pillow anchors: "lm" = left edge, middle)."""

        def op(p: Painter) -> None:
            p.fig.write(p.draw, p.xy(x, y).tolist(), text, size, rgba(colour), anchor)

        self.ops.append((False, op))

    # --- layout and rendering

    def gutters(self) -> tuple[int, int, int, int]:
        """Pixels needed left, above, right and below the plot area for labels, title and legend."""
        f = self.fig
        tick, gap = f.px(3.5), f.px(3.5)
        left = top = right = bottom = 0
        if self.y.show_labels and self.y.ticks:
            left = tick + gap + max(f.text_width(s, self.tick_pt) for _, s in self.y.ticks)
        elif self.y.show_ticks:
            left = tick
        if self.y.label:
            left += f.line_height(10) + f.px(4)
        if self.x.show_labels and self.x.ticks:
            bottom = tick + gap + f.line_height(self.tick_pt)
            plot_w = self.rect[2] - self.rect[0]  # the first and last labels may stick out at the sides
            (first_v, first_s), (last_v, last_s) = self.x.ticks[0], self.x.ticks[-1]
            left = max(left, math.ceil(f.text_width(first_s, self.tick_pt) / 2 - self.x.frac(first_v) * plot_w))
            right = max(0, math.ceil(f.text_width(last_s, self.tick_pt) / 2 - (1 - self.x.frac(last_v)) * plot_w))
        elif self.x.show_ticks:
            bottom = tick
        if self.x.label or (self.x.offset and self.x.show_labels):
            bottom += f.px(3) + f.line_height(10 if self.x.label else self.tick_pt)
        if self.title_text:
            top = f.line_height(13) + f.px(8)
        if self.keys:
            rows = self._legend_rows()
            beside = len(rows) == 1 and self._fits_beside_title(rows[0])
            if not beside:
                top += len(rows) * f.line_height(9) + f.px(2)
        return left, top, right, bottom

    def _legend_rows(self) -> list[list[tuple[Key, int]]]:
        f = self.fig
        width = self.rect[2] - self.rect[0]
        rows: list[list[tuple[Key, int]]] = [[]]
        used = 0
        for key in self.keys:
            w = f.px(9 * 2.2) + f.px(5) + f.text_width(key.label, 9)
            if rows[-1] and used + f.px(14) + w > width:
                rows.append([])
                used = 0
            used += (f.px(14) if rows[-1] else 0) + w
            rows[-1].append((key, w))
        return rows

    def _fits_beside_title(self, row: list[tuple[Key, int]]) -> bool:
        f = self.fig
        title = f.text_width(self.title_text, 13) if self.title_text else 0
        need = title + f.px(24) + sum(w for _, w in row) + f.px(14) * (len(row) - 1)
        return need <= self.rect[2] - self.rect[0]

    def render(self, img: Image.Image, draw: ImageDraw.ImageDraw) -> None:
        f = self.fig
        left, top, right, bottom = self.rect
        w, h = right - left, bottom - top
        grid_w, tick, gap = max(1, f.px(0.8)), f.px(3.5), f.px(3.5)
        grid_c, ink, muted = rgba(GRID), rgba(INK), rgba(MUTED)
        if self.x.grid:
            for v, _ in self.x.ticks:
                px = left + float(self.x.frac(v)) * w
                draw.line([(px, top), (px, bottom)], fill=grid_c, width=grid_w)
        if self.y.grid:
            for v, _ in self.y.ticks:
                py = bottom - float(self.y.frac(v)) * h
                draw.line([(left, py), (right, py)], fill=grid_c, width=grid_w)
        painter = Painter(f, self)
        for clipped, op in self.ops:
            if clipped:
                op(painter)
        img.paste(painter.layer, (left, top), painter.layer)
        spine = max(1, f.px(0.8))
        draw.line([(left, top), (left, bottom)], fill=muted, width=spine)
        draw.line([(left, bottom), (right, bottom)], fill=muted, width=spine)
        pt = self.tick_pt
        if self.x.show_ticks:
            for v, s in self.x.ticks:
                px = left + float(self.x.frac(v)) * w
                draw.line([(px, bottom), (px, bottom + tick)], fill=ink, width=spine)
                if self.x.show_labels:
                    f.write(draw, (px, bottom + tick + gap), s, pt, ink, "ma")
        if self.y.show_ticks:
            for v, s in self.y.ticks:
                py = bottom - float(self.y.frac(v)) * h
                draw.line([(left - tick, py), (left, py)], fill=ink, width=spine)
                if self.y.show_labels:
                    f.write(draw, (left - tick - gap, py), s, pt, ink, "rm")
        below = bottom + (tick + gap + f.line_height(self.tick_pt) if self.x.show_labels else tick) + f.px(3)
        if self.x.label:
            f.write(draw, ((left + right) / 2, below), self.x.label, 10, ink, "ma")
        if self.x.offset and self.x.show_labels:
            f.write(draw, (right, below), self.x.offset, pt, ink, "ra")
        if self.y.label:
            ytick_w = max((f.text_width(s, self.tick_pt) for _, s in self.y.ticks), default=0)
            x = left - tick - gap - ytick_w - f.px(4)
            f.vertical_text(img, (x, (top + bottom) / 2), self.y.label, 10, ink)
        rows = self._legend_rows() if self.keys else []
        beside = len(rows) == 1 and self._fits_beside_title(rows[0])
        title_y = top - f.px(8) - (0 if beside or not rows else len(rows) * f.line_height(9) + f.px(2))
        if self.title_text:
            f.write(draw, (left, title_y), self.title_text, 13, ink, "ld")
        if rows:
            self._draw_legend(draw, rows, beside, title_y)
        free = Painter(f, self, draw)
        for clipped, op in self.ops:
            if not clipped:
                op(free)
        if self.note_text:
            f.write(draw, ((left + right) / 2, (top + bottom) / 2), self.note_text, 12, muted, "mm")

    def _draw_legend(self, draw: ImageDraw.ImageDraw, rows, beside: bool, title_bottom: int) -> None:
        f = self.fig
        row_h = f.line_height(9)
        if beside:
            centres = [title_bottom - f.line_height(13) / 2]
        else:
            centres = [self.rect[1] - f.px(2) - (len(rows) - i - 0.5) * row_h for i in range(len(rows))]
        for row, cy in zip(rows, centres):
            x = self.rect[2] - sum(w for _, w in row) - f.px(14) * (len(row) - 1)
            for key, w in row:
                sw = f.px(9 * 2.2)
                self._swatch(draw, key, x, cy, sw)
                f.write(draw, (x + sw + f.px(5), cy), key.label, 9, rgba(INK), "lm")
                x += w + f.px(14)

    def _swatch(self, draw: ImageDraw.ImageDraw, key: Key, x: float, cy: float, sw: int) -> None:
        f = self.fig
        colour = rgba(key.colour)
        if key.kind == "patch":
            half = f.pxf(3.5)
            box = [x, cy - half, x + sw, cy + half]
            if key.filled:
                fill = tuple(round(255 - (255 - c) * key.alpha) for c in colour[:3])  # over white
                draw.rectangle(box, fill=fill)
            else:
                draw.rectangle(box, outline=colour, width=f.px(key.width))
        elif key.kind == "ring":
            r = f.pxf(4.5)
            cx = x + sw / 2
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], outline=colour, width=f.px(key.width))
        else:
            dash = (f.px(3.7 * key.width), f.px(1.6 * key.width)) if key.dashed else None
            stroke(draw, np.array([[x, cy], [x + sw, cy]]), colour, max(1, f.px(key.width)), dash)
            if key.marker:
                r = f.pxf(2)
                draw.ellipse([x + sw / 2 - r, cy - r, x + sw / 2 + r, cy + r], fill=colour)


def _num(v) -> float | None:
    if v is None:
        return None
    return v.timestamp() if isinstance(v, dt.datetime) else float(v)


def _xs(values) -> np.ndarray:
    """x values as floats: datetimes become epoch seconds."""
    if isinstance(values, np.ndarray) and values.dtype != object:
        return values.astype(np.float64)
    return np.array([v.timestamp() if isinstance(v, dt.datetime) else float(v) for v in values], dtype=np.float64)


def _span(width):
    return width.total_seconds() if isinstance(width, dt.timedelta) else width


class Figure:
    """A picture ``width`` x ``height`` inches (``DPI`` pixels each) of axes on a grid; ``png()`` draws it."""

    def __init__(self, width: float, height: float) -> None:
        self.size = (max(1, round(width * DPI)), max(1, round(height * DPI)))
        self._fonts: dict[int, ImageFont.FreeTypeFont] = {}
        self._grid: list[list[Axes]] = []
        self._ratios: list[float] = []
        self._gaps = (0, 0)

    # --- units and text

    def px(self, pt: float) -> int:
        """Points (1/72 inch) as canvas pixels, rounded."""
        return round(self.pxf(pt))

    def pxf(self, pt: float) -> float:
        return pt * DPI / 72 * SCALE

    def font(self, pt: float) -> ImageFont.FreeTypeFont:
        size = self.px(pt)
        if size not in self._fonts:
            self._fonts[size] = load_font(size)
        return self._fonts[size]

    def write(self, draw: ImageDraw.ImageDraw, at, text: str, pt: float, fill, anchor: str = "la") -> None:
        """``text`` at ``at`` (Pillow's anchors: "la" = left, ascender; "mm" = middle, middle; ...)."""
        draw.text(tuple(at), text.translate(_PLAIN), font=self.font(pt), fill=fill, anchor=anchor)

    def text_width(self, text: str, pt: float) -> int:
        return math.ceil(self.font(pt).getlength(text.translate(_PLAIN)))

    def line_height(self, pt: float) -> int:
        ascent, descent = self.font(pt).getmetrics()
        return ascent + descent

    def vertical_text(self, img: Image.Image, at: tuple[float, float], text: str, pt: float, fill) -> None:
        """``text`` turned 90 degrees (reading upwards), its bottom edge at x = ``at[0]``, centred on y."""
        font = self.font(pt)
        w, h = self.text_width(text, pt) + 2, self.line_height(pt)
        tile = Image.new("RGBA", (w, h), (255, 255, 255, 0))
        ImageDraw.Draw(tile).text((1, 0), text.translate(_PLAIN), font=font, fill=fill, anchor="la")
        tile = tile.rotate(90, expand=True)
        img.paste(tile, (round(at[0] - tile.width), round(at[1] - tile.height / 2)), tile)

    # --- layout

    def subplots(
        self, rows: int = 1, cols: int = 1, *, height_ratios: Sequence[float] | None = None, hgap=18.0, wgap=24.0
    ) -> list[list[Axes]]:
        """A grid of axes, ``rows`` x ``cols``, row heights in ``height_ratios``; ``hgap`` and ``wgap`` points
        between the cells, besides the room each one's labels take."""
        self._grid = [[Axes(self) for _ in range(cols)] for _ in range(rows)]
        self._ratios = list(height_ratios or [1.0] * rows)
        self._gaps = (self.px(hgap), self.px(wgap))
        return self._grid

    def _layout(self) -> None:
        """Place the axes so that their labels fit: the gutters depend on the ticks, which depend on the
        room left, so place, measure and place again until the measures hold (gutters only grow after a few
        rounds, so it ends)."""
        cells = [(r, c) for r in range(len(self._grid)) for c in range(len(self._grid[0]))]
        gut = {k: (self.px(40), self.px(28), self.px(6), self.px(24)) for k in cells}
        for round_ in range(8):
            self._place(gut)
            new = {(r, c): self._grid[r][c].gutters() for r, c in cells}
            fits = all(n <= g for k in cells for n, g in zip(new[k], gut[k]))
            if new == gut or (round_ >= 3 and fits):
                break
            gut = new if round_ < 3 else {k: tuple(map(max, gut[k], new[k])) for k in cells}

    def _place(self, gut: dict[tuple[int, int], tuple[int, int, int, int]]) -> None:
        """Axes rectangles for the gutters ``gut`` (left, top, right, bottom per cell; shared along rows and
        columns, so the plots line up), and their scales for those sizes."""
        rows, cols = len(self._grid), len(self._grid[0])
        width, height = self.size[0] * SCALE, self.size[1] * SCALE
        pad = self.px(7.2)  # 0.1 inch, like matplotlib's tight bounding box
        hgap, wgap = self._gaps
        lefts = [max(gut[r, c][0] for r in range(rows)) for c in range(cols)]
        rights = [max(self.px(6), *(gut[r, c][2] for r in range(rows))) for c in range(cols)]
        tops = [max(gut[r, c][1] for c in range(cols)) for r in range(rows)]
        bottoms = [max(gut[r, c][3] for c in range(cols)) for r in range(rows)]
        plot_w = (width - 2 * pad - sum(lefts) - sum(rights) - wgap * (cols - 1)) / cols
        free_h = height - 2 * pad - sum(tops) - sum(bottoms) - hgap * (rows - 1)
        y = pad
        for r in range(rows):
            plot_h = max(self.px(10), free_h * self._ratios[r] / sum(self._ratios))
            x = pad
            for c in range(cols):
                ax = self._grid[r][c]
                x0, y0 = round(x + lefts[c]), round(y + tops[r])
                ax.rect = (x0, y0, max(x0 + self.px(10), round(x0 + plot_w)), round(y0 + plot_h))
                ax.x.finalize(ax.rect[2] - ax.rect[0])
                ax.y.finalize(ax.rect[3] - ax.rect[1])
                x += lefts[c] + plot_w + rights[c] + wgap
            y += tops[r] + plot_h + bottoms[r] + hgap

    def png(self) -> bytes:
        if not self._grid:
            self.subplots()
        self._layout()
        img = Image.new("RGB", (self.size[0] * SCALE, self.size[1] * SCALE), "white")
        draw = ImageDraw.Draw(img)
        for row in self._grid:
            for ax in row:
                ax.render(img, draw)
        if SCALE != 1:
            img = img.resize(self.size, Image.Resampling.LANCZOS)
        buf = io.BytesIO()
        img.save(buf, format="PNG")
        return buf.getvalue()
