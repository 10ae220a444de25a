"""Fast noise fields for surfaces: random grids upsampled by OpenCV (no per-pixel Python, no large blurs).

Scales are given in cells per image side (relative to the shorter side ``S``), so that a 2448x2048 frame
reduced to 128x128 looks like a 128x128 render: the octaves finer than the output pixel simply average out.
"""

from __future__ import annotations

import cv2
import numpy as np

#: the finest texture detail is 1/GRAIN_SIDE of the shorter side: one pixel at this size, and the same
#: relative size in larger frames (a 2048-pixel frame gets ~10-pixel grain, not pixel noise)
GRAIN_SIDE = 192


def upsample(
    rng: np.random.Generator, gh: int, gw: int, h: int, w: int, interpolation: int = cv2.INTER_CUBIC
) -> np.ndarray:
    """A ``gh x gw`` grid of unit normal values, interpolated to ``h x w``."""
    grid = rng.standard_normal((max(2, gh), max(2, gw)), dtype=np.float32)
    if (gh, gw) == (h, w):
        return grid
    return cv2.resize(grid, (w, h), interpolation=interpolation)


def grid_noise(rng: np.random.Generator, h: int, w: int, cells: float) -> np.ndarray:
    """Smooth noise with about ``cells`` features across the shorter side (cubic interpolation)."""
    s = min(h, w)
    return upsample(rng, int(round(cells * h / s)) + 1, int(round(cells * w / s)) + 1, h, w)


def grain(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Finest texture detail, at pixel scale up to ``GRAIN_SIDE`` and at that relative scale beyond."""
    pitch = min(h, w) / GRAIN_SIDE
    if pitch <= 1.0:
        return rng.standard_normal((h, w), dtype=np.float32)
    return upsample(rng, int(round(h / pitch)), int(round(w / pitch)), h, w, cv2.INTER_LINEAR) * 1.3


def fbm(rng: np.random.Generator, h: int, w: int, cells: float, octaves: int, persistence: float = 0.5) -> np.ndarray:
    """Fractal noise: octaves of ``grid_noise`` doubling in frequency, normalised to unit std.

    Octaves finer than ~1.5 pixels are skipped: they would only alias.
    """
    out = np.zeros((h, w), dtype=np.float32)
    amp = 1.0
    limit = min(min(h, w), GRAIN_SIDE) / 1.5
    for k in range(octaves):
        c = cells * 2**k
        if c > limit:
            break
        out += amp * grid_noise(rng, h, w, c)
        amp *= persistence
    std = float(out[::4, ::4].std()) or 1.0
    out *= 1.0 / std
    return out


def rotate_to(canvas: np.ndarray, angle_deg: float, h: int, w: int) -> np.ndarray:
    """Rotate a square canvas about its centre and cut out the central ``h x w`` window."""
    d = canvas.shape[0]
    m = cv2.getRotationMatrix2D((d / 2.0, d / 2.0), angle_deg, 1.0)
    m[0, 2] -= (d - w) / 2.0
    m[1, 2] -= (d - h) / 2.0
    return cv2.warpAffine(canvas, m, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)


def smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)
