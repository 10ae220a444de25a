"""Industrial surface textures: brushed metal, cast metal, woven composite, painted panel.

Each renderer returns zero-mean texture in grey levels plus the surface's base grey level and colour tint.
The benign variation real parts show is part of the texture, in ok and defect images alike: brushing marks
along the grain, casting pores, irregular threads, orange peel. So "has a dark dot" or "has a line" is not
enough to call a defect; the network has to learn what the defects look like.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from andon.datasets.synth.noise import GRAIN_SIDE, fbm, grain, grid_noise, rotate_to, upsample


@dataclass
class Surface:
    texture: np.ndarray  # float32 HxW, zero mean, grey levels
    level: float  # base grey level (0-255)
    tint: np.ndarray  # float32 (3,), RGB multipliers near 1
    angle: float | None = None  # dominant texture direction in degrees (brushing, weave), if any


def _tint(rng: np.random.Generator, base: tuple[float, float, float], jitter: float = 0.015) -> np.ndarray:
    return np.asarray(base, dtype=np.float32) * (1.0 + rng.uniform(-jitter, jitter, 3).astype(np.float32))


def brushed(rng: np.random.Generator, h: int, w: int) -> Surface:
    """Fine parallel grain at pixel scale, wider bands, and a few long brushing marks; any orientation."""
    angle = float(rng.choice([0.0, 90.0]) + rng.normal(0, 8)) if rng.random() < 0.7 else float(rng.uniform(0, 180))
    d = int(math.ceil(math.hypot(h, w))) + 4
    s = min(h, w)
    pitch = max(1.0, s / GRAIN_SIDE)  # width of the finest grain line
    fine = upsample(rng, round(d / pitch), round(d / (s * rng.uniform(0.2, 0.6))), d, d, cv2.INTER_LINEAR)
    bands = upsample(rng, round(d / (s * rng.uniform(0.015, 0.05))), round(d / (s * rng.uniform(0.5, 1.5))), d, d)
    canvas = rng.uniform(4, 8) * fine + rng.uniform(3, 7) * bands
    _brush_marks(rng, canvas, s)
    texture = rotate_to(canvas, angle, h, w)
    texture += rng.uniform(2, 5) * fbm(rng, h, w, cells=rng.uniform(2, 4), octaves=2)
    level = rng.uniform(115, 175)
    return Surface(texture, level, _tint(rng, (0.98, 1.0, 1.03)), angle)


def _brush_marks(rng: np.random.Generator, canvas: np.ndarray, s: int) -> None:
    """Long marks along the grain, spanning the part: benign, unlike a scratch (short, any direction)."""
    d = canvas.shape[0]
    for _ in range(rng.poisson(2.5)):
        y = int(rng.uniform(0, d))
        t = max(1, int(round(s * rng.uniform(0.004, 0.010))))
        value = float(rng.choice([-1, 1]) * rng.uniform(6, 16))
        cv2.line(canvas, (0, y), (d - 1, y + int(rng.normal(0, 0.01 * d))), value, t, cv2.LINE_AA)


def cast(rng: np.random.Generator, h: int, w: int) -> Surface:
    """Sand-cast or die-cast metal: mottled roughness, sandy grain and small benign pores."""
    s = min(h, w)
    texture = rng.uniform(5, 9) * fbm(rng, h, w, cells=rng.uniform(3, 6), octaves=6, persistence=0.65)
    texture += rng.uniform(6, 11) * cv2.GaussianBlur(grain(rng, h, w), (0, 0), 0.7)
    _pores(rng, texture, s)
    level = rng.uniform(90, 150)
    return Surface(texture, level, _tint(rng, (1.02, 1.0, 0.96)))


def _pores(rng: np.random.Generator, texture: np.ndarray, s: int) -> None:
    """Tiny, faint casting pores: part of a good casting; a pit defect is larger, darker and rimmed."""
    h, w = texture.shape
    for _ in range(rng.poisson(6)):
        r = max(1, int(round(s * rng.uniform(0.003, 0.008))))
        cv2.circle(
            texture, (int(rng.uniform(0, w)), int(rng.uniform(0, h))), r, float(-rng.uniform(8, 20)), -1, cv2.LINE_AA
        )


def woven(rng: np.random.Generator, h: int, w: int) -> Surface:
    """Plain-weave fabric or composite: over/under threads, wavy and uneven, at 0 or 45 degrees."""
    s = min(h, w)
    angle = float(rng.choice([0.0, 45.0, 90.0]) + rng.normal(0, 4))
    period = s / rng.uniform(8, 15)
    th = math.radians(angle)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    wobble = 0.12 * period
    u = (x * math.cos(th) + y * math.sin(th)) / period + wobble / period * grid_noise(rng, h, w, 3)
    v = (-x * math.sin(th) + y * math.cos(th)) / period + wobble / period * grid_noise(rng, h, w, 3)
    iu, iv = np.floor(u), np.floor(v)
    fu, fv = u - iu, v - iv
    weft_on_top = ((iu + iv) % 2) == 0
    across = np.where(weft_on_top, fv, fu)  # position across the visible thread
    along = np.where(weft_on_top, fu, fv)  # position along it: it dips under at both ends
    profile = np.sqrt(np.clip(1.0 - (2.0 * across - 1.0) ** 2, 0, 1))
    dip = np.clip(np.sin(np.pi * along), 0, 1) ** 0.3
    # fibres run along the visible thread: a 1-D pattern across it, different per thread
    fibres = rng.normal(0, 1, 4096).astype(np.float32)
    fibres = cv2.GaussianBlur(fibres.reshape(1, -1), (0, 0), 0.7).ravel()
    per_thread = np.where(weft_on_top, iv * 97 + 13, iu * 89 + 7)
    fibre = fibres[((across * 9.0).astype(np.int64) + per_thread.astype(np.int64) * 9) % 4096]
    table = rng.normal(0, 1, (64, 64)).astype(np.float32)  # per-crossing brightness: uneven tension, sheen
    jitter = table[iu.astype(np.int64) % 64, iv.astype(np.int64) % 64]
    texture = rng.uniform(30, 42) * (profile * dip - 0.6) + rng.uniform(3, 6) * jitter
    texture += rng.uniform(4, 7) * fibre * profile
    texture += rng.uniform(5, 14) * np.where(weft_on_top, 1.0, -1.0) * profile  # tows reflect by orientation
    texture += rng.uniform(1.5, 3) * grain(rng, h, w)
    level = rng.uniform(70, 140)
    base = (0.96, 0.98, 1.04) if rng.random() < 0.5 else (1.05, 1.0, 0.9)  # carbon fibre or glass fibre
    return Surface(texture.astype(np.float32), level, _tint(rng, base), angle)


def painted(rng: np.random.Generator, h: int, w: int) -> Surface:
    """Powder coat or spray paint: smooth, muted colour, orange peel and gentle thickness variation."""
    texture = rng.uniform(2.5, 5) * fbm(rng, h, w, cells=rng.uniform(14, 26), octaves=3, persistence=0.5)
    texture += rng.uniform(2, 5) * fbm(rng, h, w, cells=rng.uniform(1.5, 3), octaves=2)
    texture += rng.uniform(1, 2.5) * grain(rng, h, w)
    palette = [(1.0, 1.0, 1.0), (0.97, 1.0, 1.06), (1.06, 1.02, 0.92), (0.95, 1.03, 0.98), (1.05, 0.97, 0.97)]
    level = rng.uniform(110, 190)
    return Surface(texture, level, _tint(rng, palette[rng.integers(len(palette))], 0.02))


RENDERERS = {"brushed": brushed, "cast": cast, "woven": woven, "painted": painted}
SURFACES: tuple[str, ...] = tuple(RENDERERS)
