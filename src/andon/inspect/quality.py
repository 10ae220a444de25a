"""Frame-quality signals: brightness, contrast and focus, computed on pixels the inspector already has.

A dirty lens, a failing lamp or a camera knocked out of focus changes these long before it causes escapes,
and the model's scores alone do not show it (a blurred scratch may still score as "ok"). The dashboard
compares each camera's values with its own usual ones, so the absolute scale only has to be stable per
camera and model, not comparable across cameras.

* brightness: mean grey level (0-255) of the model's input image, i.e. the whole field of view as the
  model sees it. A failing lamp lowers it, a reflection or a lamp left on raises it.
* contrast:   RMS contrast, the standard deviation of the grey levels (0-127.5) of the model's input. Dust
  or a haze on the lens, fog, over- and under-exposure all lower it.
* focus:      variance of the Laplacian of the grey *decoded* frame (before the resize to the model input,
  which would average away the fine detail that focus is about), over a centred window of at most
  ``FOCUS_WINDOW`` pixels on a side, so that it costs well under a millisecond even for large frames. The
  window is where the part usually is; a defocused lens blurs the whole frame anyway. Higher is sharper.

The JPEG decoder may have decoded a large frame at 1/2, 1/4 or 1/8 scale; the scale is fixed for a camera
(its resolution) and model (its input size), so a camera's focus values stay comparable with each other.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from andon.inspect.pixels import rgb_to_gray

#: the focus window's largest side, in decoded pixels
FOCUS_WINDOW = 512
#: names of the signals, in the order the dashboard shows them
SIGNALS: tuple[str, ...] = ("brightness", "contrast", "focus")


@dataclass(frozen=True)
class FrameQuality:
    brightness: float
    contrast: float
    focus: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def _grey(image: np.ndarray) -> np.ndarray:
    if image.ndim == 2:
        return image
    if image.ndim == 3 and image.shape[2] == 1:
        return image[:, :, 0]
    if image.ndim == 3 and image.shape[2] in (3, 4):
        return rgb_to_gray(image)
    raise ValueError(f"expected an HxW or HxWx3 image, got shape {image.shape}")


def centre_window(image: np.ndarray, size: int = FOCUS_WINDOW) -> np.ndarray:
    """The central ``size`` x ``size`` region (or the whole image when it is smaller)."""
    h, w = image.shape[:2]
    top, left = max(0, (h - size) // 2), max(0, (w - size) // 2)
    return image[top : top + size, left : left + size]


def focus_measure(pixels: np.ndarray) -> float:
    """Variance of the Laplacian (3x3 aperture) of the grey centre window: higher is sharper."""
    grey = _grey(centre_window(pixels))
    if grey.dtype != np.uint8:
        raise ValueError(f"focus_measure takes uint8 pixels, got {grey.dtype}")
    if min(grey.shape) < 3:
        return 0.0
    # the 4-neighbour Laplacian in int16 (|value| <= 1020), the border reflected without repeating the edge
    # pixel; its variance as E[x^2] - E[x]^2 (one dot product: this runs on every frame)
    g = np.pad(grey.astype(np.int16), 1, mode="reflect")
    lap = (g[:-2, 1:-1] + g[2:, 1:-1] + g[1:-1, :-2] + g[1:-1, 2:] - 4 * g[1:-1, 1:-1]).astype(np.float32).ravel()
    mean = float(lap.sum(dtype=np.float64)) / lap.size
    return max(0.0, float(np.dot(lap, lap)) / lap.size - mean * mean)


def frame_quality(decoded: np.ndarray, model_input: np.ndarray) -> FrameQuality:
    """Brightness and contrast of ``model_input`` (uint8 RGB at the model's size), focus of ``decoded``."""
    grey = _grey(model_input)
    values = grey.astype(np.float64)
    return FrameQuality(
        brightness=round(float(values.mean()), 3),
        contrast=round(float(values.std()), 3),
        focus=round(focus_measure(decoded), 3),
    )
