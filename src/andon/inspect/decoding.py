"""Image bytes to pixels: format and size checked from the header before any pixel is decoded.

One decoder for training, evaluation and serving. JPEGs much larger than the model input are decoded at
1/2, 1/4 or 1/8 scale by the JPEG decoder itself (DCT scaling), which is several times faster than a full
decode followed by a resize. EXIF orientation is applied. 16-bit images are mapped to 8 bits by their full
range (value * 255 / 65535), never by looking at the values.

``probe`` also walks the file's structure before any pixel is decoded, because decoders fill what is missing
with grey and say nothing: a JPEG needs a frame header, a start-of-scan and at least one bit of scan data
per 8x8 block its header declares; a PNG needs IHDR, IDAT and IEND, every chunk's CRC right, and at least
the compressed size its declared pixels need (deflate packs at most 1032:1); a BMP needs the pixel data its
header declares. ``ImageHeader.end`` is where the image ends: bytes after it (a ZIP appended to a JPEG) are
not part of the frame, and the service stores and serves only ``data[:end]``. TIFF has no end marker (its
offsets may point anywhere), so a TIFF's end is its length.

``decoded_size`` and ``decode_cost`` say, from the header, how large the decoded frame will be and how many
bytes decoding it takes, so that a caller can refuse a frame before it costs anything (the service does).
"""

from __future__ import annotations

import io
import re
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from andon.errors import ImageDecodeError, ImageTooLargeError, UnsupportedFormatError
from andon.inspect.pixels import gray_to_rgb, rgb_to_gray

#: formats andon decodes (PIL's names)
SUPPORTED_FORMATS: frozenset[str] = frozenset({"JPEG", "PNG", "BMP", "TIFF"})
#: default cap on width*height, read from the header: 100 MP (a 5 MP frame is 5,013,504 pixels)
DEFAULT_MAX_PIXELS = 100_000_000

_SIXTEEN_BIT = frozenset({"I;16", "I;16B", "I;16L", "I", "I;16N"})


@dataclass(frozen=True)
class ImageHeader:
    """What the header says, before decoding: format, size and PIL mode."""

    format: str
    width: int
    height: int
    mode: str
    #: bytes of the image itself; anything after it is trailing data (None: not known)
    end: int | None = None

    @property
    def pixels(self) -> int:
        return self.width * self.height

    @property
    def sixteen_bit(self) -> bool:
        return self.mode in _SIXTEEN_BIT or (self.format == "TIFF" and "16" in self.mode)


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
    end = _STRUCTURE[header.format](data, header) if header.format in _STRUCTURE else len(data)
    return ImageHeader(header.format, header.width, header.height, header.mode, end)


# ---- structure: what decoders would silently fill with grey ---------------------------------------------

#: frame headers (SOF0-SOF15 less DHT, JPG and DAC); arithmetic-coded and lossless ones have no block bound
_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_NO_BLOCK_BOUND = frozenset({0xC3, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF})
#: in scan data 0xFF is followed by 0x00 (stuffing), a restart marker, or more 0xFF fill bytes before a marker
_MARKER_IN_SCAN = re.compile(rb"\xff[^\x00\xd0-\xd7\xff]")


def _jpeg_end(data: bytes, header: ImageHeader) -> int:
    """Walk the JPEG's segments: frame header, scans, end of image. Returns the end marker's end."""
    n = len(data)
    pos = 2  # after SOI (PIL checked it)
    sof: tuple[int, bytes] | None = None
    scans = scan_bytes = 0
    while True:
        if pos < n and data[pos] != 0xFF:  # extraneous bytes before a marker: libjpeg skips them too
            found = data.find(b"\xff", pos)
            pos = n if found < 0 else found
        while pos < n and data[pos] == 0xFF:
            pos += 1
        if pos >= n:
            raise ImageDecodeError(
                f"truncated JPEG: {n:,} bytes end before the end-of-image marker "
                f"({scans} scan(s), {scan_bytes:,} bytes of image data read)"
            )
        marker = data[pos]
        pos += 1
        if marker == 0xD9:
            break
        if marker in (0x00, 0x01) or 0xD0 <= marker <= 0xD7:
            continue  # standalone markers (and a stray 0xFF00) carry no length
        if marker == 0xD8:
            raise ImageDecodeError(f"corrupt JPEG: a second start-of-image marker at byte {pos - 2:,}")
        if pos + 2 > n:
            raise ImageDecodeError(f"truncated JPEG: {n:,} bytes end inside the header of segment 0xFF{marker:02X}")
        seg_end = pos + int.from_bytes(data[pos : pos + 2], "big")
        if seg_end < pos + 2 or seg_end > n:
            raise ImageDecodeError(
                f"truncated JPEG: segment 0xFF{marker:02X} at byte {pos - 2:,} claims to end at byte "
                f"{seg_end:,}; the file has {n:,} bytes"
            )
        if marker in _SOF:
            sof = (marker, data[pos + 2 : seg_end])
        elif marker == 0xDA:
            if sof is None:
                raise ImageDecodeError(f"corrupt JPEG: a scan at byte {pos - 2:,} before any frame header")
            scans += 1
            m = _MARKER_IN_SCAN.search(data, seg_end)
            if m is None:
                raise ImageDecodeError(f"truncated JPEG: {n:,} bytes end inside scan {scans} (no end-of-image marker)")
            scan_bytes += m.start() - seg_end
            pos = m.start()
            continue
        pos = seg_end
    if sof is None:
        raise ImageDecodeError(f"not a JPEG image: {n:,} bytes with no frame header (SOF marker)")
    if scans == 0:
        raise ImageDecodeError(
            f"JPEG has no image data: {n:,} bytes of headers and no start-of-scan marker "
            f"(its header claims {header.width}x{header.height})"
        )
    need = _jpeg_min_scan_bytes(*sof)
    if scan_bytes < need:
        raise ImageDecodeError(
            f"JPEG holds {scan_bytes:,} bytes of image data; a {header.width}x{header.height} JPEG needs at "
            f"least {need:,} (one bit per 8x8 block): its data is missing or truncated"
        )
    return pos


def _jpeg_min_scan_bytes(marker: int, sof: bytes) -> int:
    """Huffman-coded DCT JPEGs spend at least one bit on every block of every component (its DC code)."""
    if marker in _NO_BLOCK_BOUND or len(sof) < 6:
        return 0
    height, width, count = int.from_bytes(sof[1:3], "big"), int.from_bytes(sof[3:5], "big"), sof[5]
    comps = [(sof[6 + 3 * i + 1] >> 4, sof[6 + 3 * i + 1] & 15) for i in range(count) if 6 + 3 * i + 2 < len(sof)]
    if not comps or min(min(c) for c in comps) < 1:
        return 0
    hmax, vmax = max(c[0] for c in comps), max(c[1] for c in comps)
    blocks = sum(_ceil(_ceil(width * h, hmax), 8) * _ceil(_ceil(height * v, vmax), 8) for h, v in comps)
    return blocks // 8


def _ceil(a: int, b: int) -> int:
    return -(-a // b)


_PNG_CHANNELS = {0: 1, 2: 3, 3: 1, 4: 2, 6: 4}
#: deflate's best case: a 258-byte match in 2 bits
_DEFLATE_MAX_RATIO = 1032


def _png_end(data: bytes, header: ImageHeader) -> int:
    """Walk the PNG's chunks, checking every CRC; IHDR first, some IDAT, IEND. Returns IEND's end."""
    n, view = len(data), memoryview(data)
    pos, idat, ihdr = 8, 0, None
    while True:
        if pos + 12 > n:
            raise ImageDecodeError(f"truncated PNG: {n:,} bytes end before the IEND chunk")
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = bytes(data[pos + 4 : pos + 8])
        name = kind.decode("latin-1")
        end = pos + 12 + length
        if length > 0x7FFFFFFF or end > n:
            raise ImageDecodeError(
                f"truncated PNG: chunk {name!r} at byte {pos:,} claims {length:,} bytes; the file has {n:,}"
            )
        stored = int.from_bytes(data[end - 4 : end], "big")
        computed = zlib.crc32(view[pos + 4 : end - 4])
        if stored != computed:
            raise ImageDecodeError(
                f"corrupt PNG: chunk {name!r} at byte {pos:,} has CRC 0x{stored:08x}, its data gives 0x{computed:08x}"
            )
        if ihdr is None:
            if kind != b"IHDR" or length < 13:
                raise ImageDecodeError(f"corrupt PNG: the first chunk is {name!r}, not IHDR")
            ihdr = data[pos + 8 : pos + 21]
        elif kind == b"IDAT":
            idat += length
        elif kind == b"IEND":
            break
        pos = end
    depth, colour = ihdr[8], ihdr[9]
    if idat == 0:
        raise ImageDecodeError(
            f"PNG has no image data: no IDAT chunk (its header claims {header.width}x{header.height})"
        )
    raw = header.height * (1 + _ceil(header.width * _PNG_CHANNELS.get(colour, 1) * depth, 8))
    need = raw // _DEFLATE_MAX_RATIO
    if idat < need:
        raise ImageDecodeError(
            f"PNG holds {idat:,} bytes of compressed image data; a {header.width}x{header.height} PNG needs at "
            f"least {need:,}: its data is missing or truncated"
        )
    return end


def _bmp_end(data: bytes, header: ImageHeader) -> int:
    """The pixel data offset plus the size the header declares (rows padded to 4 bytes when uncompressed)."""
    n = len(data)
    if n < 30:
        raise ImageDecodeError(f"truncated BMP: {n:,} bytes end inside its header")
    offset, dib = int.from_bytes(data[10:14], "little"), int.from_bytes(data[14:18], "little")
    if dib == 12:
        bpp, compression, size_image = int.from_bytes(data[24:26], "little"), 0, 0
    else:
        if n < 38:
            raise ImageDecodeError(f"truncated BMP: {n:,} bytes end inside its header")
        bpp = int.from_bytes(data[28:30], "little")
        compression, size_image = int.from_bytes(data[30:34], "little"), int.from_bytes(data[34:38], "little")
    if compression in (0, 3, 6):
        need = offset + (header.width * bpp + 31) // 32 * 4 * header.height
    else:  # RLE (or embedded JPEG/PNG): the header's own byte count
        need = offset + size_image if size_image else n
    if need > n:
        raise ImageDecodeError(
            f"truncated BMP: its {header.width}x{header.height} pixels need {need:,} bytes; the file has {n:,}"
        )
    return need


_STRUCTURE = {"JPEG": _jpeg_end, "PNG": _png_end, "BMP": _bmp_end}


def decoded_size(header: ImageHeader, target_hw: tuple[int, int] | None) -> tuple[int, int]:
    """(height, width) of the pixels ``decode`` makes (JPEGs at reduced DCT scale), before EXIF rotation."""
    factor = reduction_for(header, target_hw)
    return _ceil(header.height, factor), _ceil(header.width, factor)


def decode_cost(header: ImageHeader, target_hw: tuple[int, int] | None) -> int:
    """Bytes ``decode`` allocates at its peak, from the header: the decoder's 3-channel output and one
    converted copy (8-bit), or the 16-bit output, its 32-bit scaling and the 8-bit results (16-bit)."""
    h, w = decoded_size(header, target_hw)
    return h * w * (10 if header.sixteen_bit else 6)


#: pixels per byte of file below which a frame is no decompression bomb, whatever the model's size: photos of
#: parts compress far less (a 12 MP grey camera PNG holds about 2-4 pixels per byte, an 8-bit BMP 1)
DEFAULT_MAX_PIXELS_PER_BYTE = 16.0


def check_cost(
    header: ImageHeader,
    target_hw: tuple[int, int],
    max_ratio: float,
    *,
    max_pixels_per_byte: float = DEFAULT_MAX_PIXELS_PER_BYTE,
) -> None:
    """Refuse, before decoding, a decompression bomb: a frame that decodes to over ``max_ratio`` times the model
    input's pixels *and* to over ``max_pixels_per_byte`` pixels per byte of its file. A large frame that is
    large on the wire too (a 12 MP camera PNG or BMP) passes: its cost is bounded by the body cap and by the
    service's memory budget, not by the model's input size."""
    h, w = decoded_size(header, target_hw)
    limit = int(max_ratio * target_hw[0] * target_hw[1])
    size = header.end or 0
    if h * w <= limit or (size and h * w <= max_pixels_per_byte * size):
        return
    factor = reduction_for(header, target_hw)
    how = f"at 1/{factor} scale" if factor > 1 else "in full"
    per_byte = f"{h * w / size:,.0f} pixels per byte of its {size:,}-byte file" if size else "an unknown file size"
    raise ImageTooLargeError(
        f"image too large for the model: this {header.width}x{header.height} {header.format} decodes "
        f"{how} to {w}x{h} = {h * w:,} pixels, from {per_byte} (a decompression bomb); a frame may decode to at "
        f"most {max_ratio:g} x the model's {target_hw[1]}x{target_hw[0]} = {limit:,} pixels (max_decode_ratio) "
        f"unless it holds at most {max_pixels_per_byte:g} pixels per byte (max_pixels_per_byte); send a smaller "
        "frame" + ("" if header.format == "JPEG" else " or a JPEG (decoded at reduced scale)")
    )


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
    return decode_with_header(
        data, target_hw=target_hw, gray=gray, max_pixels=max_pixels, allowed_formats=allowed_formats
    )[0]


def decode_with_header(
    data: bytes,
    *,
    target_hw: tuple[int, int] | None = None,
    gray: bool = False,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    allowed_formats: frozenset[str] = SUPPORTED_FORMATS,
) -> tuple[np.ndarray, ImageHeader]:
    """``decode``, and the header it checked the bytes with: the frame's own size and format, before any
    reduced-scale decode or EXIF rotation (so that a caller needs no second ``probe`` of the same bytes)."""
    header = probe(data, max_pixels=max_pixels, allowed_formats=allowed_formats)
    factor = reduction_for(header, target_hw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            im = Image.open(io.BytesIO(data))
            if header.format == "JPEG" and (factor > 1 or gray):
                # the JPEG decoder scales the DCT by 1/factor and, for grey, gives the luma plane itself
                im.draft("L" if gray else "RGB", (header.width // factor, header.height // factor))
            if im.getexif().get(_ORIENTATION, 1) != 1:
                im = ImageOps.exif_transpose(im)
            else:
                im.load()
        except _DECODER_FAILURES as exc:  # what the decoders raise on bytes the structure check let through
            raise ImageDecodeError(
                f"corrupt {header.format}: the decoder could not read {len(data):,} bytes ({exc})"
            ) from None
    return _to_mode(to_uint8(_pixels_of(im, header)), gray), header


#: the EXIF tag that says how the camera was held
_ORIENTATION = 0x0112
_DECODER_FAILURES = (
    OSError,
    ValueError,
    SyntaxError,
    EOFError,
    IndexError,
    KeyError,
    ZeroDivisionError,
    struct.error,
    Image.DecompressionBombError,
)


def _pixels_of(im: Image.Image, header: ImageHeader) -> np.ndarray:
    """uint8 or uint16 HxW / HxWx3 / HxWx4 pixels of a loaded PIL image. Read-only: numpy wraps the one copy
    Pillow makes (a writeable array would copy it again, 0.4 ms for a 1/8-scale 5 MP frame); every step after
    decoding makes new arrays."""
    mode = im.mode
    if mode in ("L", "RGB", "RGBA"):
        return np.asarray(im)
    if mode == "LA":
        return np.asarray(im)[:, :, 0]
    if mode in _SIXTEEN_BIT or mode.startswith("I;16"):
        pixels = np.asarray(im)
        if pixels.dtype.kind == "i":  # 32-bit integer mode "I": a 16-bit image's values
            if pixels.min(initial=0) < 0 or pixels.max(initial=0) > 65535:
                raise ImageDecodeError(
                    f"{header.format} pixel values run from {pixels.min()} to {pixels.max()}; andon reads 8- and "
                    "16-bit images (0-65535)"
                )
            pixels = pixels.astype(np.uint16)
        return pixels.astype(np.uint16, copy=False)
    if mode == "F":
        raise ImageDecodeError(
            f"{header.format} with floating-point pixels is not supported; give uint8 or uint16 pixels (floats "
            "are ambiguous: scale them to 8 or 16 bits yourself)"
        )
    return np.asarray(im.convert("RGB"))  # palette, bilevel, CMYK, YCbCr, ...


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
        return image if image.ndim == 2 else rgb_to_gray(image)
    if image.ndim == 2:
        return gray_to_rgb(image)
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
