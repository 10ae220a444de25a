"""One synthetic inspection image: surface, lighting, an optional defect, optics and sensor.

    texture (surfaces.py) -> level and contrast -> illumination (gradient, vignetting, specular band)
    -> defect (defects.py, with its mask) -> lens blur -> colour tint -> sensor noise -> uint8 RGB

Textures are rendered at no more than 2x their finest detail (384 pixels on the short side) and scaled up;
defects are drawn at full size inside their bounding box; the rest is a handful of whole-image OpenCV/numpy
operations. So a 2448x2048 frame renders in a fraction of a second and a 128x128 one in a few milliseconds.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from andon.datasets.synth.defects import DEFECTS, DRAWERS, Canvas
from andon.datasets.synth.noise import GRAIN_SIDE
from andon.datasets.synth.surfaces import RENDERERS, SURFACES, Surface
from andon.errors import ConfigError

_LIGHT_GRID = 24


def parse_size(size) -> tuple[int, int]:
    """``128``, ``(128, 160)``, ``"128"`` or ``"128x160"`` (height x width) as ``(h, w)``."""
    if isinstance(size, str):
        parts = size.lower().replace(" ", "").split("x")
        try:
            size = tuple(int(p) for p in parts)
        except ValueError:
            raise ConfigError(f"size {size!r} is not H or HxW in pixels, e.g. 128 or 96x128") from None
    if isinstance(size, int):
        size = (size, size)
    if not (isinstance(size, (tuple, list)) and len(size) in (1, 2) and all(isinstance(v, int) for v in size)):
        raise ConfigError(f"size {size!r} is not H or HxW in pixels, e.g. 128 or 96x128")
    h, w = (size[0], size[0]) if len(size) == 1 else size
    if not (16 <= h <= 8192 and 16 <= w <= 8192):
        raise ConfigError(f"size {h}x{w} is outside 16-8192 pixels per side")
    return int(h), int(w)


def render_sample(
    rng: np.random.Generator, surface: str, defect: str | None, size=(128, 128)
) -> tuple[np.ndarray, np.ndarray]:
    """Render one image: ``(uint8 HxWx3 RGB, uint8 HxW mask)``; the mask is 255 on the defect, all 0 for ok.

    ``defect=None`` gives a good part. ``size`` is ``H`` or ``(H, W)``. Generators in the same state give
    the same part with and without the defect: the images differ only in and right around the mask.
    """
    if surface not in RENDERERS:
        raise ConfigError(f"unknown surface {surface!r}; surfaces are {', '.join(SURFACES)}")
    if defect is not None and defect not in DRAWERS:
        raise ConfigError(f"unknown defect {defect!r}; defects are {', '.join(DEFECTS)} (or None for ok)")
    h, w = parse_size(size)
    # three independent streams: the same rng state renders the same part, light and camera with or
    # without the defect, so an ok image and its defective twin differ only around the mask
    part_rng, defect_rng, camera_rng = rng.spawn(3)
    surf = RENDERERS[surface](part_rng, *_working_size(h, w))
    grey = surf.texture
    if grey.shape != (h, w):  # textures hold no detail finer than 1/GRAIN_SIDE of the short side
        grey = cv2.resize(grey, (w, h), interpolation=cv2.INTER_CUBIC)
    busy = float(grey[::4, ::4].std()) / 8.0
    gain = part_rng.uniform(0.75, 1.25)
    grey *= gain
    grey += surf.level
    grey *= illumination(part_rng, h, w, surf)
    canvas = Canvas(grey, busy=min(2.0, max(0.85, busy * gain)))
    mask = DRAWERS[defect](defect_rng, canvas) if defect else np.zeros((h, w), np.uint8)
    cv2.GaussianBlur(grey, (0, 0), camera_rng.uniform(0.3, 0.7), dst=grey)
    rgb = grey[:, :, None] * surf.tint
    for box, alpha, factor in canvas.colour:
        rgb[box] *= 1.0 + alpha[:, :, None] * factor
    noise = camera_rng.standard_normal((h, w), dtype=np.float32)
    noise *= camera_rng.uniform(1.2, 3.0)
    rgb += noise[:, :, None]
    np.clip(rgb, 0, 255, out=rgb)
    return rgb.astype(np.uint8), mask


def _working_size(h: int, w: int) -> tuple[int, int]:
    """Texture resolution: the output size, or smaller for large frames (2x the finest texture detail)."""
    scale = min(1.0, 2 * GRAIN_SIDE / min(h, w))
    return max(1, round(h * scale)), max(1, round(w * scale))


def illumination(rng: np.random.Generator, h: int, w: int, surf: Surface) -> np.ndarray:
    """Multiplicative light field near 1: gradient, vignetting, a soft hot spot, a specular band on metal."""
    gy, gx = np.mgrid[0:_LIGHT_GRID, 0:_LIGHT_GRID].astype(np.float32) / (_LIGHT_GRID - 1) - 0.5
    phi = rng.uniform(0, 2 * math.pi)
    field = 1.0 + rng.uniform(0.0, 0.35) * (gx * math.cos(phi) + gy * math.sin(phi))
    field -= rng.uniform(0.0, 0.5) * (gx * gx + gy * gy)
    hx, hy = rng.uniform(-0.5, 0.5, 2)
    field += rng.uniform(0.0, 0.12) * np.exp(-((gx - hx) ** 2 + (gy - hy) ** 2) / (2 * rng.uniform(0.1, 0.3) ** 2))
    if surf.angle is not None and rng.random() < 0.6:  # anisotropic reflection across the grain
        th = math.radians(surf.angle)
        across = gx * math.cos(th) + gy * math.sin(th) - rng.uniform(-0.4, 0.4)
        field += rng.uniform(0.05, 0.25) * np.exp(-(across**2) / (2 * rng.uniform(0.08, 0.25) ** 2))
    return cv2.resize(field, (w, h), interpolation=cv2.INTER_CUBIC)
