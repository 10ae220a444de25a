"""Pictures for the review page: the frame as the browser can show it, and the heatmap as a layer.

The heatmap is sent as its own RGBA PNG (JET colours, alpha proportional to the evidence) laid over the
frame in the browser, so the operator can toggle it and change its opacity without a round trip, and zoom
both together. It is mapped onto the frame's geometry by the model card's resize policy
(``andon.inspect.heatmap.to_image_coords``), so letterboxed and centre-cropped models line up too.
"""

from __future__ import annotations

import numpy as np

from andon.inspect.card import PreprocessSpec
from andon.inspect.decoding import decode
from andon.inspect.heatmap import colourise, to_image_coords
from andon.inspect.pixels import encode_png, fit
from andon.service.files import image_only

#: formats every browser shows as they are
BROWSER_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png"}
#: the heat layer's long side: the evidence map is smooth, the browser scales it up with the frame
HEAT_SIDE = 512
#: frames in other formats (BMP, TIFF) are converted to PNG at most this long side
CONVERT_SIDE = 2048


def browser_frame(data: bytes, image_format: str, max_pixels: int) -> tuple[bytes, str]:
    """(bytes, media type) the browser can display: JPEG/PNG as stored, others converted to PNG."""
    if image_format in BROWSER_FORMATS:
        return image_only(data, "this frame"), BROWSER_FORMATS[image_format]
    rgb = decode(data, target_hw=(CONVERT_SIDE, CONVERT_SIDE), max_pixels=max_pixels)
    return encode_png(fit(rgb, CONVERT_SIDE)), "image/png"


def heat_layer_png(heat: np.ndarray, frame_hw: tuple[int, int], spec: PreprocessSpec | None) -> bytes:
    """RGBA PNG with the frame's aspect ratio: JET colour, alpha = evidence (0 where the model saw nothing)."""
    h, w = frame_hw
    scale = HEAT_SIDE / max(h, w)
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    over = to_image_coords(heat, size, spec)
    rgba = np.dstack([colourise(over), np.clip(over * 255.0 + 0.5, 0, 255).astype(np.uint8)])
    return encode_png(rgba)
