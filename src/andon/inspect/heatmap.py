"""Heatmap overlays for operators: where on the part the model saw the defect.

The model's heatmap covers its *input* (the frame after the card's resize policy), at feature resolution.
``to_image_coords`` maps it back onto the original frame: stretched, it is simply resized; letterboxed, the
padding is cut away first; centre-cropped, it covers only the central region and the borders the model never
saw get no colour. Colour: the JET map (blue = no evidence, red = strong evidence), blended with a weight
proportional to the evidence, so clean areas keep their true look and hot spots stand out.
"""

from __future__ import annotations

import numpy as np

from andon.errors import ImageDecodeError
from andon.inspect.card import PreprocessSpec
from andon.inspect.pixels import JET, encode_png, gray_to_rgb, resize


def to_image_coords(heatmap: np.ndarray, image_hw: tuple[int, int], spec: PreprocessSpec | None = None) -> np.ndarray:
    """float32 HxW heatmap over the original image; ``spec`` None means the stretch policy."""
    heat = _check_heatmap(heatmap)
    out_h, out_w = int(image_hw[0]), int(image_hw[1])
    policy = "stretch" if spec is None else spec.resize
    if policy == "stretch":
        return _upsample(heat, out_w, out_h)
    in_h, in_w = spec.input_size  # type: ignore[union-attr]
    at_input = _upsample(heat, in_w, in_h)
    if policy == "letterbox":
        scale = min(in_w / out_w, in_h / out_h)
        new_w, new_h = max(1, round(out_w * scale)), max(1, round(out_h * scale))
        top, left = (in_h - new_h) // 2, (in_w - new_w) // 2
        return _upsample(at_input[top : top + new_h, left : left + new_w], out_w, out_h)
    # center_crop: the input is the central in_h x in_w of the frame resized by `scale`
    scale = max(in_w / out_w, in_h / out_h)
    new_w, new_h = max(in_w, round(out_w * scale)), max(in_h, round(out_h * scale))
    top, left = (new_h - in_h) // 2, (new_w - in_w) // 2
    full = np.zeros((new_h, new_w), dtype=np.float32)
    full[top : top + in_h, left : left + in_w] = at_input
    return _upsample(full, out_w, out_h)


def overlay(
    image_rgb: np.ndarray, heatmap: np.ndarray, alpha: float = 0.5, *, spec: PreprocessSpec | None = None
) -> np.ndarray:
    """uint8 RGB image with the heatmap colour-mapped and blended on it (weight ``alpha * evidence``)."""
    image = _as_rgb(image_rgb)
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha {alpha} must be between 0 and 1")
    heat = to_image_coords(heatmap, image.shape[:2], spec)
    colour = colourise(heat)
    weight = (alpha * heat)[:, :, None]
    blended = image.astype(np.float32) * (1.0 - weight) + colour.astype(np.float32) * weight
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def colourise(heat: np.ndarray) -> np.ndarray:
    """uint8 RGB JET colours for a heatmap in [0, 1]."""
    levels = np.clip(np.asarray(heat, dtype=np.float32) * 255.0 + 0.5, 0, 255).astype(np.uint8)
    return JET[levels]


def heatmap_png(
    image_rgb: np.ndarray | None,
    heatmap: np.ndarray,
    alpha: float = 0.5,
    *,
    spec: PreprocessSpec | None = None,
    size: int = 256,
) -> bytes:
    """PNG bytes of ``overlay``; without an image, the colour-mapped heatmap alone, ``size`` pixels on its long side."""
    if image_rgb is None:
        heat = _check_heatmap(heatmap)
        scale = size / max(heat.shape)
        picture = colourise(_upsample(heat, max(1, round(heat.shape[1] * scale)), max(1, round(heat.shape[0] * scale))))
    else:
        picture = overlay(image_rgb, heatmap, alpha, spec=spec)
    return encode_png(picture)


def _upsample(heat: np.ndarray, width: int, height: int) -> np.ndarray:
    if heat.shape == (height, width):
        return heat.astype(np.float32, copy=False)
    out = resize(np.ascontiguousarray(heat, dtype=np.float32), width, height, "cubic")
    return np.clip(out, 0.0, 1.0)


def _check_heatmap(heatmap: np.ndarray) -> np.ndarray:
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim == 3 and heat.shape[0] == 1:
        heat = heat[0]
    if heat.ndim != 2 or heat.size == 0:
        raise ValueError(f"a heatmap is a 2-D h x w array, got shape {heat.shape}")
    return np.clip(np.nan_to_num(heat, nan=0.0), 0.0, 1.0)


def _as_rgb(image: np.ndarray) -> np.ndarray:
    if image.dtype != np.uint8:
        raise ImageDecodeError(f"overlay takes a uint8 image, got {image.dtype}")
    if image.ndim == 2:
        return gray_to_rgb(image)
    if image.ndim == 3 and image.shape[2] == 4:
        return np.ascontiguousarray(image[:, :, :3])
    if image.ndim == 3 and image.shape[2] == 3:
        return image
    raise ImageDecodeError(f"overlay takes an HxW or HxWx3 image, got shape {image.shape}")
