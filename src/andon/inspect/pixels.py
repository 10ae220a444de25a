"""Pixel operations of the inspection path, on numpy and Pillow only (the service installs no OpenCV).

Each function here is defined by what it computes, not by the library behind it:

* ``resize``: ``area`` (the mean of the source area each output pixel covers, for shrinking), ``linear`` and
  ``cubic`` (bilinear, Keys' bicubic; pixel-centre sampling, replicated border), the same definitions as
  OpenCV's INTER_AREA / INTER_LINEAR / INTER_CUBIC, so models trained before andon left OpenCV see the same
  inputs: uint8 ``linear`` bit for bit (its 11-bit fixed point), ``area`` and ``cubic`` within one grey level
  of rounding on a few pixels in a thousand (``tests/test_pixels.py`` checks it against OpenCV).
* ``rgb_to_gray``: ITU-R BT.601 luma, Y = 0.299 R + 0.587 G + 0.114 B (14-bit fixed point, rounded), the
  luma a JPEG decoder gives for a grey decode, so a frame is the same grey however it was made grey.
* ``JET``: the blue -> cyan -> yellow -> red colour map of the operators' heatmaps, 256 entries.
* ``encode_png``: lossless, zlib level 1 (fast: heatmaps and converted frames are written on the hot path).
"""

from __future__ import annotations

import io
import threading
from functools import lru_cache

import numpy as np
from PIL import Image

INTERPOLATIONS: frozenset[str] = frozenset({"area", "linear", "cubic"})
#: the bicubic kernel's free parameter (Keys' a; -0.75 as in OpenCV and most camera SDKs)
_CUBIC_A = -0.75


def resize(pixels: np.ndarray, width: int, height: int, interpolation: str = "area") -> np.ndarray:
    """``pixels`` (uint8 HxW, HxWxC, or float32) resized to ``height`` x ``width``, one axis after the other.

    ``area``: each output pixel is the mean of the source area it covers (fractional pixels weighted by how
    much of them it covers), for shrinking; growing with it falls back to ``linear``. ``linear``: bilinear
    between the two nearest source pixels, ``cubic``: Keys' bicubic (a = -0.75) over the four nearest; both
    sample at pixel centres (``(x + 0.5) * scale - 0.5``), replicate the border and do not widen when
    shrinking. uint8 results are rounded to the nearest level; float32 stays float32.
    """
    if interpolation not in INTERPOLATIONS:
        raise ValueError(f"interpolation {interpolation!r} is not one of {', '.join(sorted(INTERPOLATIONS))}")
    if width < 1 or height < 1:
        raise ValueError(f"cannot resize to {width}x{height}: both sides must be at least 1 pixel")
    if pixels.dtype not in (np.uint8, np.float32) or pixels.ndim not in (2, 3) or 0 in pixels.shape:
        raise ValueError(f"resize takes uint8 or float32 HxW or HxWxC pixels, got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    if (h, w) == (height, width):
        return pixels
    if interpolation == "area" and (width > w or height > h):
        interpolation = "linear"  # an area mean only shrinks: growing with it would repeat pixels
    if interpolation == "area" and h % height == 0 and w % width == 0 and pixels.dtype == np.uint8:
        return _block_mean(pixels, h // height, w // width)
    if interpolation == "linear" and pixels.dtype == np.uint8:
        return _linear_u8(pixels, width, height)
    channels = 1 if pixels.ndim == 2 else pixels.shape[2]
    # two passes over a (rows x interleaved columns) float32 plane, in this thread's scratch buffers: fresh
    # temporaries of this size come from mmap and cost more in page faults than the arithmetic
    plane = _scratch("source", (h, w * channels))
    np.copyto(plane, pixels.reshape(h, w * channels), casting="unsafe")
    if height != h:
        plane = _weighted_take(plane, *_taps(interpolation, h, height), axis=0, name="rows")
    if width != w:
        plane = _weighted_take(plane, *_taps(interpolation, w, width, channels), axis=1, name="columns")
    out = np.empty((height, width, *pixels.shape[2:]), dtype=pixels.dtype)
    if pixels.dtype == np.uint8:
        np.rint(plane, out=plane)
        np.clip(plane, 0, 255, out=plane)
    np.copyto(out.reshape(height, width * channels), plane, casting="unsafe")
    return out


def _block_mean(pixels: np.ndarray, fy: int, fx: int) -> np.ndarray:
    """Shrinking by whole factors: the mean of each fy x fx block, rounded half up (Pillow's ``reduce``)."""
    if pixels.ndim == 3 and pixels.shape[2] not in (3, 4):
        return np.dstack([_block_mean(np.ascontiguousarray(pixels[:, :, c]), fy, fx) for c in range(pixels.shape[2])])
    return np.array(Image.fromarray(np.ascontiguousarray(pixels)).reduce((fx, fy)))


def _linear_u8(pixels: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bilinear on uint8 in 11-bit fixed point, bit for bit OpenCV's INTER_LINEAR: weights rounded to 1/2048,
    each row's columns first (exact integers), then the rows, rescaled as its vector path does."""
    cols0, cols1, a0, a1 = _linear_fixed(pixels.shape[1], width, clamp_weights=True)
    rows0, rows1, b0, b1 = _linear_fixed(pixels.shape[0], height, clamp_weights=False)
    extra = (1,) * (pixels.ndim - 2)
    x = pixels.astype(np.int32)
    across = x[:, cols0] * a0.reshape(1, -1, *extra) + x[:, cols1] * a1.reshape(1, -1, *extra)
    b0, b1 = b0.reshape(-1, 1, *extra), b1.reshape(-1, 1, *extra)
    out = ((((across[rows0] >> 4) * b0) >> 16) + (((across[rows1] >> 4) * b1) >> 16) + 2) >> 2
    return np.ascontiguousarray(np.clip(out, 0, 255).astype(np.uint8))


@lru_cache(maxsize=128)
def _linear_fixed(n_in: int, n_out: int, *, clamp_weights: bool) -> tuple[np.ndarray, ...]:
    """(first index, second index, first weight, second weight) of one axis, weights in 1/2048. Along a row
    a sample outside the edge pixels' centres takes the edge pixel; along a column the weights stay as they
    are and only the indices are clamped (so the edge rows' two weights can sum to 2047 or 2049)."""
    frac = ((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5).astype(np.float32)
    first = np.floor(frac).astype(np.int64)
    frac = (frac - first).astype(np.float32)
    if clamp_weights:
        outside = (first < 0) | (first >= n_in - 1)
        frac[outside] = 0.0  # and both clipped indices below name the edge pixel
    w0 = np.rint((np.float32(1.0) - frac) * 2048).astype(np.int32)
    w1 = np.rint(frac * 2048).astype(np.int32)
    result = (np.clip(first, 0, n_in - 1), np.clip(first + 1, 0, n_in - 1), w0, w1)
    for array in result:
        array.flags.writeable = False
    return result


def _weighted_take(plane: np.ndarray, index: np.ndarray, weight: np.ndarray, *, axis: int, name: str) -> np.ndarray:
    """Along ``axis`` of a 2-D plane: output line i = sum over taps j of weight[i, j] * line index[i, j]."""
    shape = (len(index), plane.shape[1]) if axis == 0 else (plane.shape[0], len(index))
    out, term = _scratch(name, shape), _scratch(name + " term", shape)
    scale = (slice(None), None) if axis == 0 else (None, slice(None))
    np.take(plane, index[:, 0], axis=axis, out=out, mode="clip")
    out *= weight[:, 0][scale]
    for j in range(1, index.shape[1]):
        np.take(plane, index[:, j], axis=axis, out=term, mode="clip")
        term *= weight[:, j][scale]
        out += term
    return out


_SCRATCH = threading.local()
#: the largest buffer a thread keeps (a 1/8-scale 5 MP frame's plane is under 1 MB); a larger one, from a large
#: PNG say, is allocated for the call only, so that no thread holds tens of MB outside the memory budget
_SCRATCH_MAX_BYTES = 4 << 20


def _scratch(name: str, shape: tuple[int, int]) -> np.ndarray:
    """This thread's float32 buffer ``name`` of ``shape`` (kept while the shape stays: a line's frames share one)."""
    if shape[0] * shape[1] * 4 > _SCRATCH_MAX_BYTES:
        return np.empty(shape, dtype=np.float32)
    buffers = _SCRATCH.__dict__.setdefault("buffers", {})
    buffer = buffers.get(name)
    if buffer is None or buffer.shape != shape:
        buffer = buffers[name] = np.empty(shape, dtype=np.float32)
    return buffer


@lru_cache(maxsize=128)
def _taps(interpolation: str, n_in: int, n_out: int, channels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(source indices, weights), each n_out x taps, of one axis; cached: a line's frames share a geometry.

    With ``channels`` the taps index a row of interleaved channels (``W * channels`` long): output entry
    ``i * channels + c`` reads entries ``index * channels + c``, so a row pass does the columns of all channels.
    """
    if channels:
        index, weight = _taps(interpolation, n_in, n_out)
        wide = (index[:, None, :] * channels + np.arange(channels)[None, :, None]).reshape(-1, index.shape[1])
        weight = np.repeat(weight, channels, axis=0)
        wide.flags.writeable = weight.flags.writeable = False
        return wide, weight
    scale = n_in / n_out
    dst = np.arange(n_out, dtype=np.float64)
    if interpolation == "area":
        start, end = dst * scale, (dst + 1) * scale
        index = np.floor(start).astype(np.int64)[:, None] + np.arange(int(np.ceil(scale)) + 1)[None, :]
        weight = np.clip(np.minimum(end[:, None], index + 1) - np.maximum(start[:, None], index), 0, None) / scale
    else:
        src = (dst + 0.5) * scale - 0.5
        base = np.floor(src)
        frac = src - base
        base = base.astype(np.int64)
        if interpolation == "linear":
            at_edge = (base < 0) | (base >= n_in - 1)  # outside the centres of the edge pixels: the edge pixel
            frac[at_edge] = 0.0
            base = np.clip(base, 0, n_in - 1)
            index = np.stack([base, base + 1], axis=1)
            weight = np.stack([1.0 - frac, frac], axis=1)
        else:
            index = base[:, None] + np.arange(-1, 3)[None, :]
            weight = _cubic(index - src[:, None])
    used = weight.any(axis=0)
    index, weight = np.clip(index[:, used], 0, n_in - 1), weight[:, used].astype(np.float32)
    index.flags.writeable = weight.flags.writeable = False
    return index, weight


def _cubic(x: np.ndarray) -> np.ndarray:
    x = np.abs(x)
    a = _CUBIC_A
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = ((a * x - 5 * a) * x + 8 * a) * x - 4 * a
    return np.where(x <= 1, near, np.where(x < 2, far, 0.0))


def fit(image: np.ndarray, side: int) -> np.ndarray:
    """``image`` shrunk (area) so that its long side is at most ``side``; smaller images as they are."""
    h, w = image.shape[:2]
    scale = side / max(h, w)
    if scale >= 1:
        return image
    return resize(image, max(1, round(w * scale)), max(1, round(h * scale)), "area")


def pad(image: np.ndarray, top: int, bottom: int, left: int, right: int, value: int) -> np.ndarray:
    """``image`` inside a border of constant ``value`` (every channel)."""
    h, w = image.shape[:2]
    out = np.full((h + top + bottom, w + left + right, *image.shape[2:]), value, dtype=image.dtype)
    out[top : top + h, left : left + w] = image
    return out


#: OpenCV's 14-bit fixed-point luma weights (R, G, B), as float32 for one matrix-vector product
_LUMA = np.array([4899, 9617, 1868], dtype=np.float32)


def rgb_to_gray(rgb: np.ndarray) -> np.ndarray:
    """uint8 HxW luma of a uint8 HxWx3 (or HxWx4: alpha ignored) RGB image: ``(4899 R + 9617 G + 1868 B +
    8192) >> 14``, bit for bit. In float32 the sum is exact (it stays below 2**24) and so is the scaling by a
    power of two, so truncation gives the integer formula's result; this runs on every frame (the focus
    measure) at a third of the integer version's cost (tests/test_pixels.py checks every RGB value)."""
    y = rgb[:, :, :3].astype(np.float32) @ _LUMA
    y += 8192.0
    y *= 1.0 / 16384.0
    return y.astype(np.uint8)


def gray_to_rgb(gray: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 with the grey plane in every channel."""
    return np.repeat(gray[:, :, None], 3, axis=2)


def _jet() -> np.ndarray:
    # piecewise linear in eighths: blue from half to full by 1/8, then green rises (1/8-3/8), blue falls and
    # red rises (3/8-5/8), green falls (5/8-7/8), red falls to half (7/8-1); sampled at the levels' centres
    x = (np.arange(256) + 0.5) / 256.0
    r = np.interp(x, [0, 3 / 8, 5 / 8, 7 / 8, 1], [0, 0, 1, 1, 0.5])
    g = np.interp(x, [0, 1 / 8, 3 / 8, 5 / 8, 7 / 8, 1], [0, 0, 1, 1, 0, 0])
    b = np.interp(x, [0, 1 / 8, 3 / 8, 5 / 8, 1], [0.5, 1, 1, 0, 0])
    table = np.clip(np.stack([r, g, b], axis=1) * 255.0, 0, 255).astype(np.uint8)
    table.flags.writeable = False
    return table


#: 256 x 3 uint8 RGB: level -> colour
JET = _jet()


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG bytes of uint8 HxW (grey), HxWx3 (RGB) or HxWx4 (RGBA) pixels."""
    if pixels.dtype != np.uint8 or not (pixels.ndim == 2 or (pixels.ndim == 3 and pixels.shape[2] in (3, 4))):
        raise ValueError(f"encode_png takes uint8 HxW, HxWx3 or HxWx4 pixels, got {pixels.dtype} {pixels.shape}")
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels)).save(out, format="PNG", compress_level=1)
    return out.getvalue()


def encode_jpeg(rgb: np.ndarray, quality: int = 90) -> bytes:
    """JPEG bytes of uint8 HxWx3 RGB (or HxW grey) pixels."""
    out = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb)).save(out, format="JPEG", quality=quality)
    return out.getvalue()
