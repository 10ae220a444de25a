"""Image bytes to pixels: format and size checked from the header before any pixel is decoded.

One decoder for training, evaluation and serving. JPEGs much larger than the model input are decoded at
1/2, 1/4 or 1/8 scale by the JPEG decoder itself (DCT scaling), which is several times faster than a full
decode followed by a resize. EXIF orientation is applied. 16-bit images are mapped to 8 bits by their full
range (value * 255 / 65535), never by looking at the values.
"""

from __future__ import annotations

import io
import warnings
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError

from andon.errors import ImageDecodeError, ImageTooLargeError, UnsupportedFormatError

#: formats andon decodes (PIL's names)
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "BMP", "TIFF"})
#: default cap on width*height, read from the header: 100 MP (a 5 MP frame is 5,013,504 pixels)
DEFAULT_MAX_PIXELS = 100_000_000

_REDUCED_COLOR = {
    1: cv2.IMREAD_COLOR,
    2: cv2.IMREAD_REDUCED_COLOR_2,
    4: cv2.IMREAD_REDUCED_COLOR_4,
    8: cv2.IMREAD_REDUCED_COLOR_8,
}
_REDUCED_GRAY = {
    1: cv2.IMREAD_GRAYSCALE,
    2: cv2.IMREAD_REDUCED_GRAYSCALE_2,
    4: cv2.IMREAD_REDUCED_GRAYSCALE_4,
    8: cv2.IMREAD_REDUCED_GRAYSCALE_8,
}


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before decoding: format, size and PIL mode."""

    format: str
    width: int
    height: int
    mode: str

    @property
    def pixels(self) -> int:
        return self.width * self.height


def probe(
    data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS, allowed_formats: frozenset[str] = SUPPORTED_FORMATS
) -> ImageHeader:
    """Read format and size from the header only; refuse what is not an allowed, sane-sized image."""
    if not data:
        raise ImageDecodeError("empty image: the body has 0 bytes; send a JPEG, PNG, BMP or TIFF image")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as im:
                header = ImageHeader(
                    format=str(im.format), width=int(im.width), height=int(im.height), mode=str(im.mode)
                )
    except Image.DecompressionBombError:
        raise ImageTooLargeError(
            f"image too large: its header declares over {2 * (Image.MAX_IMAGE_PIXELS or 0):,} pixels "
            f"(a decompression bomb); the limit is {max_pixels:,}"
        ) from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError):
        raise ImageDecodeError(
            f"not an image: {len(data):,} bytes starting with {data[:8]!r} are not JPEG, PNG, BMP or TIFF"
        ) from None
    if header.format not in allowed_formats:
        raise UnsupportedFormatError(
            f"image format {header.format} is not allowed; allowed: {', '.join(sorted(allowed_formats))}"
        )
    if header.width < 1 or header.height < 1:
        raise ImageDecodeError(f"image has no pixels ({header.width}x{header.height})")
    if header.pixels > max_pixels:
        raise ImageTooLargeError(
            f"image too large: {header.width}x{header.height} = {header.pixels:,} pixels, the limit is {max_pixels:,}"
        )
    _check_complete(data, header.format)
    return header


def _check_complete(data: bytes, fmt: str) -> None:
    """Catch truncated files that decoders would silently fill with grey."""
    if fmt == "JPEG" and b"\xff\xd9" not in data[-4096:]:
        raise ImageDecodeError(f"truncated JPEG: {len(data):,} bytes with no end-of-image marker")
    if fmt == "PNG" and b"IEND" not in data[-64:]:
        raise ImageDecodeError(f"truncated PNG: {len(data):,} bytes with no IEND chunk")


def reduction_for(header: ImageHeader, target_hw: tuple[int, int] | None) -> int:
    """The largest JPEG DCT scale (1, 2, 4, 8) that keeps the image at least as large as the target.

    Both orientations are checked, so that an EXIF rotation cannot make the reduced image too small.
    """
    if target_hw is None or header.format != "JPEG":
        return 1
    need = max(target_hw)
    short = min(header.width, header.height)
    for factor in (8, 4, 2):
        if short // factor >= need:
            return factor
    return 1


def decode(
    data: bytes,
    *,
    target_hw: tuple[int, int] | None = None,
    gray: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_formats: frozenset[str] = SUPPORTED_FORMATS,
) -> np.ndarray:
    """Decode image bytes to ``uint8`` pixels: ``HxWx3`` RGB, or ``HxW`` grey when ``gray``.

    With ``target_hw`` a large JPEG is decoded at reduced scale (never below the target size).
    """
    header = probe(data, max_pixels=max_pixels, allowed_formats=allowed_formats)
    buf = np.frombuffer(data, dtype=np.uint8)
    if header.mode in ("I;16", "I;16B", "I;16L", "I", "I;16N") or (header.format == "TIFF" and "16" in header.mode):
        image = _decode_16bit(buf, header)
        return _to_mode(image, gray)
    factor = reduction_for(header, target_hw)
    flag = (_REDUCED_GRAY if gray else _REDUCED_COLOR)[factor]
    image = cv2.imdecode(buf, flag)
    if image is None:
        raise ImageDecodeError(f"corrupt {header.format}: the decoder could not read {len(data):,} bytes")
    if image.dtype != np.uint8:
        image = to_uint8(image)
    if gray:
        return image
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def _decode_16bit(buf: np.ndarray, header: ImageHeader) -> np.ndarray:
    image = cv2.imdecode(buf, cv2.IMREAD_UNCHANGED)  # keeps 16 bits; EXIF orientation is rare in 16-bit files
    if image is None:
        raise ImageDecodeError(f"corrupt 16-bit {header.format}: the decoder could not read it")
    image = to_uint8(image)
    if image.ndim == 3:
        image = cv2.cvtColor(image, cv2.COLOR_BGRA2RGB if image.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return image


def to_uint8(image: np.ndarray) -> np.ndarray:
    """Map an integer image to 8 bits by its dtype's full range (uint16: x*255/65535, rounded)."""
    if image.dtype == np.uint8:
        return image
    if image.dtype == np.uint16:
        return ((image.astype(np.uint32) * 255 + 32767) // 65535).astype(np.uint8)
    raise ImageDecodeError(
        f"pixel type {image.dtype} is not supported; give uint8 or uint16 pixels (floats are ambiguous: "
        "scale them to uint8 yourself)"
    )


def _to_mode(image: np.ndarray, gray: bool) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if gray:
        return image if image.ndim == 2 else cv2.cvtColor(image[:, :, :3], cv2.COLOR_RGB2GRAY)
    if image.ndim == 2:
        return cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    return np.ascontiguousarray(image[:, :, :3])


def from_array(array: np.ndarray, *, gray: bool = False, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Accept an already-decoded frame: ``HxW``, ``HxWx1``, ``HxWx3`` (RGB) or ``HxWx4`` (RGBA), uint8 or uint16."""
    if not isinstance(array, np.ndarray):
        raise ImageDecodeError(f"expected a numpy array or image bytes, got {type(array).__name__}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise ImageDecodeError(
            f"array of shape {array.shape} is not an image; give HxW, HxWx1, HxWx3 (RGB) or HxWx4 (RGBA)"
        )
    if array.shape[0] < 1 or array.shape[1] < 1:
        raise ImageDecodeError(f"array of shape {array.shape} has no pixels")
    if array.shape[0] * array.shape[1] > max_pixels:
        raise ImageTooLargeError(f"array of {array.shape[0]}x{array.shape[1]} pixels exceeds the limit {max_pixels:,}")
    return _to_mode(to_uint8(array), gray)
