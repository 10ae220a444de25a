"""Defects drawn into a surface: scratch, crack, spot (pits), stain, dent. Each returns its pixel mask.

Every defect varies in position, size, orientation and contrast, and is drawn only inside its bounding box,
so a 2448x2048 frame costs no more per defect than a thumbnail. Sizes are fractions of the shorter side
``S``. Contrasts sit a little above the texture's own variation: clearly visible to a person looking for
them, but a brightness threshold does not find them (brushing marks and pores look alike at pixel level).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from andon.datasets.synth.noise import grid_noise, smoothstep


@dataclass
class Canvas:
    """A grey image being drawn on, and colour changes to apply once it is RGB (stains)."""

    grey: np.ndarray  # float32 HxW
    #: texture busyness (its std / 8 grey levels): defect contrasts scale with it, so that a dent on a
    #: coarse weave is as visible as one on smooth paint
    busy: float = 1.0
    colour: list[tuple[tuple[slice, slice], np.ndarray, np.ndarray]] = field(default_factory=list)

    @property
    def shape(self) -> tuple[int, int]:
        return self.grey.shape[:2]


def _roi(canvas: Canvas, x0: float, y0: float, x1: float, y1: float, pad: int):
    """Clipped integer box around a float box; ``None`` if it misses the image."""
    h, w = canvas.shape
    a, b = max(0, int(math.floor(x0)) - pad), min(w, int(math.ceil(x1)) + pad + 1)
    c, d = max(0, int(math.floor(y0)) - pad), min(h, int(math.ceil(y1)) + pad + 1)
    if a >= b or c >= d:
        return None
    return (slice(c, d), slice(a, b)), (a, c)


def _mask_from(layer: np.ndarray, canvas: Canvas, box, threshold: float, grow: int) -> np.ndarray:
    mask = np.zeros(canvas.shape, dtype=np.uint8)
    local = (layer > threshold).astype(np.uint8) * 255
    if grow > 0:
        local = cv2.dilate(local, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1)))
    mask[box] = local
    return mask


def _centre(rng: np.random.Generator, h: int, w: int, margin: float = 0.12) -> tuple[float, float]:
    return rng.uniform(margin, 1 - margin) * w, rng.uniform(margin, 1 - margin) * h


def scratch(rng: np.random.Generator, canvas: Canvas) -> np.ndarray:
    """A thin, gently curved line of finite length at any angle; bright (specular) or dark; ends fade out."""
    h, w = canvas.shape
    s = min(h, w)
    length = s * rng.uniform(0.2, 0.65)
    phi = rng.uniform(0, math.pi)
    cx, cy = _centre(rng, h, w)
    t = np.linspace(0.0, 1.0, 32)
    direction, normal = np.array([math.cos(phi), math.sin(phi)]), np.array([-math.sin(phi), math.cos(phi)])
    bend = length * rng.uniform(-0.1, 0.1) * (1 - (2 * t - 1) ** 2)
    points = (
        np.array([cx, cy])
        + np.outer(t - 0.5, direction) * length
        + np.outer(bend, normal)
        + rng.normal(0, s * 0.0015, (len(t), 2))
    )
    fade = np.sin(np.pi * (t[:-1] + t[1:]) / 2) ** 0.6 * rng.uniform(0.6, 1.0, len(t) - 1)
    strokes = [(points, fade)]
    if rng.random() < 0.3:  # a second, parallel stroke of the same tool
        strokes.append((points + normal * s * rng.uniform(0.015, 0.04), fade * rng.uniform(0.4, 0.8)))
    thickness = max(1, int(round(s * rng.uniform(0.005, 0.013))))
    layer, box = _draw_strokes(canvas, strokes, thickness)
    if layer is None:
        return np.zeros(canvas.shape, np.uint8)
    sign = 1.0 if rng.random() < 0.65 else -1.0
    canvas.grey[box] += sign * rng.uniform(30, 60) * canvas.busy * _thin_boost(thickness) * layer
    return _mask_from(layer, canvas, box, 0.15, grow=max(1, thickness // 2))


def _thin_boost(thickness: int) -> float:
    """One-pixel lines lose about half their peak to the lens blur; give them the contrast back."""
    return 1.6 if thickness == 1 else 1.0


def _draw_strokes(canvas: Canvas, strokes: list[tuple[np.ndarray, np.ndarray]], thickness: int):
    """Antialiased polylines (a value per segment) in one local layer over their joint box: (layer, box)."""
    every = np.concatenate([p for p, _ in strokes])
    x0, y0 = every.min(axis=0)
    x1, y1 = every.max(axis=0)
    found = _roi(canvas, x0, y0, x1, y1, 2 * thickness + 2)
    if found is None:
        return None, None
    box, origin = found
    layer = np.zeros((box[0].stop - box[0].start, box[1].stop - box[1].start), dtype=np.float32)
    for points, values in strokes:
        np.maximum(layer, _polyline(points - origin, values, thickness, layer.shape), out=layer)
    if thickness >= 3:  # large frames: a rounded groove profile, not a flat band with hard edges
        cv2.GaussianBlur(layer, (0, 0), thickness / 3.0, dst=layer)
    return layer, box


def crack(rng: np.random.Generator, canvas: Canvas) -> np.ndarray:
    """A dark, jagged, branching line: a random walk with a persistent heading."""
    h, w = canvas.shape
    s = min(h, w)
    start = np.array(_centre(rng, h, w, 0.2))
    heading = rng.uniform(0, 2 * math.pi)
    main = _walk(rng, start, heading, steps=int(rng.integers(14, 30)), step=s * rng.uniform(0.012, 0.022))
    paths = [(main, 1.0)]
    for _ in range(int(rng.integers(0, 4))):
        at = main[int(rng.integers(2, len(main) - 2))]
        branch_heading = heading + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
        paths.append((_walk(rng, at, branch_heading, int(rng.integers(4, 10)), s * 0.015), rng.uniform(0.5, 0.8)))
    strokes = [(points, strength * rng.uniform(0.7, 1.0, len(points) - 1)) for points, strength in paths]
    thickness = max(1, int(round(s * rng.uniform(0.006, 0.011))))
    layer, box = _draw_strokes(canvas, strokes, thickness)
    if layer is None:
        return np.zeros(canvas.shape, np.uint8)
    contrast = rng.uniform(30, 70) * canvas.busy * _thin_boost(thickness)
    canvas.grey[box] -= contrast * layer
    if rng.random() < 0.4:  # the lit edge of the gap
        canvas.grey[box] += 0.3 * contrast * np.roll(layer, thickness, axis=int(rng.integers(2)))
    return _mask_from(layer, canvas, box, 0.15, grow=max(1, thickness // 2))


def _walk(rng: np.random.Generator, start: np.ndarray, heading: float, steps: int, step: float) -> np.ndarray:
    points = [start]
    angle = heading
    for _ in range(steps):
        angle += rng.normal(0, 0.5) + 0.3 * (heading - angle)  # jagged, but keeps its course
        points.append(points[-1] + step * rng.uniform(0.6, 1.4) * np.array([math.cos(angle), math.sin(angle)]))
    return np.array(points)


def _polyline(points: np.ndarray, values: np.ndarray, thickness: int, shape: tuple[int, int]) -> np.ndarray:
    layer = np.zeros(shape, dtype=np.float32)
    pts = np.round(points * 16).astype(np.int32)
    for i in range(len(pts) - 1):
        cv2.line(
            layer,
            (int(pts[i, 0]), int(pts[i, 1])),
            (int(pts[i + 1, 0]), int(pts[i + 1, 1])),
            float(values[i]),
            thickness,
            cv2.LINE_AA,
            4,
        )
    return layer


def spot(rng: np.random.Generator, canvas: Canvas) -> np.ndarray:
    """Pits or spots: one to four small dark round marks, often with a bright rim on the lit side."""
    h, w = canvas.shape
    s = min(h, w)
    n = int(rng.choice([1, 1, 2, 2, 3, 4]))
    cx, cy = _centre(rng, h, w)
    spread = s * rng.uniform(0.03, 0.2)
    centres = np.array([cx, cy]) + rng.normal(0, spread, (n, 2)) * (np.arange(n)[:, None] > 0)
    radii = np.maximum(s * rng.uniform(0.022, 0.045, n), 1.5)  # below 1.5 px a pit is noise
    reach = radii.max() * 2.5
    found = _roi(
        canvas,
        centres[:, 0].min() - reach,
        centres[:, 1].min() - reach,
        centres[:, 0].max() + reach,
        centres[:, 1].max() + reach,
        1,
    )
    if found is None:
        return np.zeros(canvas.shape, np.uint8)
    box, (ox, oy) = found
    yy, xx = np.mgrid[box[0], box[1]].astype(np.float32)
    dark = np.zeros(yy.shape, np.float32)
    rim = np.zeros(yy.shape, np.float32)
    light = rng.uniform(0, 2 * math.pi)
    for (x, y), r in zip(centres, radii):
        aspect, theta = rng.uniform(0.65, 1.0), rng.uniform(0, math.pi)
        dx, dy = xx - x, yy - y
        a = (dx * math.cos(theta) + dy * math.sin(theta)) / r
        b = (-dx * math.sin(theta) + dy * math.cos(theta)) / (r * aspect)
        rho2 = a * a + b * b
        np.maximum(dark, np.exp(-rho2 * 1.4) * rng.uniform(0.7, 1.0), out=dark)
        side = np.clip((dx * math.cos(light) + dy * math.sin(light)) / r, 0, None)
        np.maximum(rim, np.exp(-((np.sqrt(rho2) - 1.1) ** 2) * 8) * side, out=rim)
    contrast = rng.uniform(45, 85) * canvas.busy
    canvas.grey[box] += contrast * (-dark + rng.uniform(0.0, 0.5) * rim)
    return _mask_from(np.maximum(dark, rim * 0.5), canvas, box, 0.25, grow=0)


def stain(rng: np.random.Generator, canvas: Canvas) -> np.ndarray:
    """A large irregular soft-edged blot: oil, coolant or corrosion; darker, tinted, sometimes ring-edged."""
    h, w = canvas.shape
    s = min(h, w)
    cx, cy = _centre(rng, h, w, 0.28)  # the blot lies (mostly) inside the frame: a stain half cut off is a guess
    radius = s * rng.uniform(0.1, 0.24)
    aspect, theta = rng.uniform(0.5, 1.0), rng.uniform(0, math.pi)
    found = _roi(canvas, cx - 1.6 * radius, cy - 1.6 * radius, cx + 1.6 * radius, cy + 1.6 * radius, 1)
    if found is None:
        return np.zeros(canvas.shape, np.uint8)
    box, _ = found
    yy, xx = np.mgrid[box[0], box[1]].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    a = (dx * math.cos(theta) + dy * math.sin(theta)) / radius
    b = (-dx * math.sin(theta) + dy * math.cos(theta)) / (radius * aspect)
    rho = np.sqrt(a * a + b * b) * (1.0 + 0.3 * grid_noise(rng, *yy.shape, cells=4))
    alpha = smoothstep((1.0 - rho) / rng.uniform(0.15, 0.5))
    alpha *= np.clip(0.75 + 0.25 * grid_noise(rng, *yy.shape, cells=6), 0.3, 1.0)  # uneven density
    ring = 4.0 * alpha * (1.0 - alpha) if rng.random() < 0.4 else 0.0
    contrast = rng.uniform(38, 60) * canvas.busy**0.5  # low frequency: fine texture hides it less
    canvas.grey[box] -= contrast * (alpha * rng.uniform(0.5, 1.0) + 0.6 * ring)
    brown = np.array([0.0, -0.04, -0.10], np.float32) * rng.uniform(0.2, 1.0)
    canvas.colour.append((box, alpha, brown))
    return _mask_from(alpha, canvas, box, 0.3, grow=0)


def dent(rng: np.random.Generator, canvas: Canvas) -> np.ndarray:
    """A shallow depression: bent texture, shaded bright on one side and dark on the other."""
    h, w = canvas.shape
    s = min(h, w)
    cx, cy = _centre(rng, h, w)
    sigma = s * rng.uniform(0.04, 0.09)
    aspect, theta = rng.uniform(0.55, 1.0), rng.uniform(0, math.pi)
    found = _roi(canvas, cx - 3.2 * sigma, cy - 3.2 * sigma, cx + 3.2 * sigma, cy + 3.2 * sigma, 1)
    if found is None:
        return np.zeros(canvas.shape, np.uint8)
    box, (ox, oy) = found
    yy, xx = np.mgrid[box[0], box[1]].astype(np.float32)
    dx, dy = xx - cx, yy - cy
    ct, st = math.cos(theta), math.sin(theta)
    a = (dx * ct + dy * st) / sigma
    b = (-dx * st + dy * ct) / (sigma * aspect)
    depth = np.exp(-0.5 * (a * a + b * b))  # 1 at the bottom of the dent
    # slope of -depth along x and y, by the chain rule through the rotated, squeezed coordinates
    ga, gb = a * depth / sigma, b * depth / (sigma * aspect)
    gx, gy = ga * ct - gb * st, ga * st + gb * ct
    light = rng.uniform(0, 2 * math.pi)
    shading = (gx * math.cos(light) + gy * math.sin(light)) * sigma  # about -0.6..0.6
    local = canvas.grey[box]
    bend = sigma * rng.uniform(0.1, 0.25)
    map_x = (xx - ox + bend * gx * sigma).astype(np.float32)
    map_y = (yy - oy + bend * gy * sigma).astype(np.float32)
    local = cv2.remap(np.ascontiguousarray(local), map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    contrast = rng.uniform(55, 85) * canvas.busy**0.5
    canvas.grey[box] = local + contrast * shading - 0.05 * contrast * depth
    return _mask_from(depth, canvas, box, 0.06, grow=0)  # out to ~2.4 sigma: the shaded rim and the bent texture


DRAWERS = {"scratch": scratch, "crack": crack, "spot": spot, "stain": stain, "dent": dent}
DEFECTS: tuple[str, ...] = tuple(DRAWERS)
