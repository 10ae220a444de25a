"""Frame intake, decoder side: files with no image, polyglots, bad CRCs and bombs are told apart from real
camera frames by ``decoding.probe`` from their structure, before any pixel is decoded.

The crafted files here are also used by tests/test_intake_service.py and tests/test_intake_corpus.py.
"""

from __future__ import annotations

import functools
import io
import struct
import zipfile
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from andon.errors import ImageDecodeError, ImageTooLargeError
from andon.inspect.decoding import decode, probe

# ---- crafted files -------------------------------------------------------------------------------------


def cv2_jpeg(image: np.ndarray, *flags: int) -> bytes:
    ok, buf = cv2.imencode(".jpg", image[:, :, ::-1] if image.ndim == 3 else image, list(flags))
    assert ok
    return buf.tobytes()


def pil_jpeg(image: np.ndarray, **options) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG", **options)
    return buf.getvalue()


def textured(size: tuple[int, int] = (480, 640), seed: int = 0) -> np.ndarray:
    """A camera-like frame: a smooth gradient with noise (so that its JPEG has real scan data)."""
    rng = np.random.default_rng(seed)
    h, w = size
    base = np.add.outer(np.linspace(40, 200, h), np.linspace(0, 30, w)).astype(np.uint8)
    return base[:, :, None] + rng.integers(0, 24, (h, w, 3), dtype=np.uint8)


@functools.cache
def camera_jpegs() -> dict[str, bytes]:
    """JPEGs as real cameras and libraries write them: baseline, progressive, restart markers, EXIF
    (orientation and a thumbnail), optimised Huffman tables, 4:4:4, grey, odd sizes, padding after EOI."""
    img = textured()
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90
    exif[0x010F] = "ACME industrial camera"
    thumb = pil_jpeg(textured((60, 80), seed=1), quality=70)
    app1 = b"Exif\x00\x00" + exif.tobytes()[6:] if exif.tobytes().startswith(b"Exif") else b"Exif\x00\x00"
    base = cv2_jpeg(img)
    return {
        "cv2 baseline": base,
        "cv2 progressive": cv2_jpeg(img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1),
        "cv2 restart markers": cv2_jpeg(img, cv2.IMWRITE_JPEG_RST_INTERVAL, 2),
        "cv2 progressive + restart": cv2_jpeg(img, cv2.IMWRITE_JPEG_PROGRESSIVE, 1, cv2.IMWRITE_JPEG_RST_INTERVAL, 1),
        "cv2 optimised": cv2_jpeg(img, cv2.IMWRITE_JPEG_OPTIMIZE, 1),
        "cv2 grey": cv2_jpeg(img[:, :, 0]),
        "pil 4:4:4 quality 98": pil_jpeg(img, quality=98, subsampling=0),
        "pil progressive optimised": pil_jpeg(img, progressive=True, optimize=True),
        "pil EXIF orientation": pil_jpeg(img, exif=exif.tobytes()),
        "EXIF with a JPEG thumbnail inside APP1": base[:2]
        + b"\xff\xe1"
        + struct.pack(">H", 2 + len(app1) + len(thumb))
        + app1
        + thumb
        + base[2:],
        "odd size 481x643": cv2_jpeg(textured((481, 643))),
        "flat frame, quality 50": cv2_jpeg(np.full((480, 640, 3), 200, np.uint8), cv2.IMWRITE_JPEG_QUALITY, 50),
        "fill bytes before the end marker": base[:-2] + b"\xff\xff\xff\xd9",
    }


def headers_only_jpeg(data: bytes | None = None) -> bytes:
    """A JPEG's headers (tables, frame header) and its end marker: no scan, no image."""
    data = data or cv2_jpeg(textured((48, 64)))
    return data[: data.index(b"\xff\xda")] + b"\xff\xd9"


def jpeg_claiming(width: int, height: int) -> bytes:
    """A small JPEG whose frame header says ``width`` x ``height``, with a scan of a few bytes."""
    data = cv2_jpeg(textured((48, 64)))
    sof = data.index(b"\xff\xc0")
    patched = data[: sof + 5] + struct.pack(">HH", height, width) + data[sof + 9 :]
    sos = patched.index(b"\xff\xda")
    sos_end = sos + 2 + int.from_bytes(patched[sos + 2 : sos + 4], "big")
    return patched[:sos_end] + b"\x12\x34\x56\x78" + b"\xff\xd9"


def tiny_zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("payload.html", "<script>alert(1)</script>")
    return buf.getvalue()


def png_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image[:, :, ::-1] if image.ndim == 3 else image)
    assert ok
    return buf.tobytes()


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))


def png_bomb(width: int, height: int) -> bytes:
    """A valid 8-bit grey PNG of zeros: deflate packs it about 1000:1 (10000x10000 is ~97 KB)."""
    z = zlib.compressobj(9)
    row = bytes(1 + width)
    body = b"".join(z.compress(row) for _ in range(height)) + z.flush()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", body) + _chunk(b"IEND", b"")


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose IHDR says ``width`` x ``height`` (valid CRCs) with the IDAT of an 8x8 image."""
    small = png_bytes(textured((8, 8)))
    idat = small.index(b"IDAT") - 4
    length = int.from_bytes(small[idat : idat + 4], "big")
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + small[idat : idat + 12 + length] + _chunk(b"IEND", b"")


def bad_iend_crc(data: bytes) -> bytes:
    return data[:-4] + bytes(b ^ 0xFF for b in data[-4:])


def bmp_bytes(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".bmp", image[:, :, ::-1])
    assert ok
    return buf.tobytes()


# ---- real frames still pass ------------------------------------------------------------------------------


@pytest.mark.parametrize("name", list(camera_jpegs()))
def test_camera_jpegs_pass_and_end_at_their_end_marker(name):
    data = camera_jpegs()[name]
    header = probe(data)
    assert header.format == "JPEG" and header.end == len(data)
    assert decode(data).shape[:2] in ((481, 643), (480, 640), (640, 480))


def test_pngs_and_bmps_pass_and_end_where_they_end():
    for data in (
        png_bytes(textured()),
        png_bytes(textured()[:, :, 0]),
        png_bytes(textured((9, 7))),
        bmp_bytes(textured()),
    ):
        assert probe(data).end == len(data)
    sixteen = cv2.imencode(".png", (textured()[:, :, 0].astype(np.uint16) * 257))[1].tobytes()
    header = probe(sixteen)
    assert header.sixteen_bit and header.end == len(sixteen)


# ---- files with no image -------------------------------------------------------------------------------


def test_a_jpeg_of_headers_only_is_refused():
    data = headers_only_jpeg()
    assert 500 < len(data) < 700
    with pytest.raises(ImageDecodeError, match="no image data.*no start-of-scan"):
        probe(data)


def test_a_small_jpeg_claiming_10000x10000_is_refused():
    data = jpeg_claiming(10_000, 10_000)
    assert len(data) < 700
    with pytest.raises(ImageDecodeError, match=r"holds 4 bytes of image data; a 10000x10000 JPEG needs at least"):
        probe(data)


def test_a_png_claiming_more_pixels_than_its_data_can_hold_is_refused():
    with pytest.raises(ImageDecodeError, match="a 4000x4000 PNG needs at least"):
        probe(png_claiming(4000, 4000))


@pytest.mark.parametrize("cut", [10, 100, 1000])
def test_truncated_files_are_refused(cut):
    for data in (cv2_jpeg(textured()), png_bytes(textured()), bmp_bytes(textured())):
        with pytest.raises(ImageDecodeError, match="truncated|corrupt"):
            probe(data[:-cut])


# ---- polyglots and corrupt chunks ----------------------------------------------------------------------


def test_trailing_data_is_not_part_of_the_image():
    payload = tiny_zip()
    for image in (cv2_jpeg(textured()), png_bytes(textured()), bmp_bytes(textured())):
        header = probe(image + payload)
        assert header.end == len(image)
    camera = camera_jpegs()["cv2 progressive + restart"]
    assert probe(camera + b"\x00" * 512).end == len(camera)  # padding after EOI, as some cameras write


def test_a_png_with_a_bad_crc_is_refused():
    data = png_bytes(textured())
    with pytest.raises(ImageDecodeError, match="chunk 'IEND' .* has CRC"):
        probe(bad_iend_crc(data))
    idat = data.index(b"IDAT")
    flipped = data[: idat + 10] + bytes([data[idat + 10] ^ 1]) + data[idat + 11 :]
    with pytest.raises(ImageDecodeError, match="chunk 'IDAT' .* has CRC"):
        probe(flipped)


# ---- cost: what a frame may cost is bounded by what the model needs ------------------------------------


def test_decoded_size_and_cost_follow_the_dct_reduction():
    from andon.inspect.decoding import decode_cost, decoded_size

    big_jpeg = probe(cv2_jpeg(textured((2048, 2448))))
    assert decoded_size(big_jpeg, (224, 224)) == (256, 306)  # 1/8: the short side stays >= 224
    assert decode(cv2_jpeg(textured((2048, 2448))), target_hw=(224, 224)).shape[:2] == (256, 306)
    assert decode_cost(big_jpeg, (224, 224)) == 256 * 306 * 6
    big_png = probe(png_bomb(2448, 2048))
    assert decoded_size(big_png, (224, 224)) == (2048, 2448)  # PNG cannot be reduced
    assert decode_cost(big_png, (224, 224)) == 2048 * 2448 * 6


def test_a_png_bomb_is_refused_before_decoding_while_a_jpeg_of_its_size_decodes_reduced():
    from andon.inspect.decoding import check_cost

    bomb = png_bomb(3000, 3000)
    assert len(bomb) < 20_000
    header = probe(bomb)  # a valid file within the 100 MP header limit...
    with pytest.raises(ImageTooLargeError, match=r"decodes in full to 3000x3000 = 9,000,000 pixels.*max_decode_ratio"):
        check_cost(header, (224, 224), 128)  # ...but 9 MP is 179x what a 224x224 model takes
    check_cost(probe(png_bomb(2448, 2048)), (224, 224), 128)  # a 5 MP camera PNG: 99.9x, fine
    check_cost(probe(cv2_jpeg(textured((3000, 3000)))), (224, 224), 3)  # a JPEG decodes at 1/8: 375x375


def test_a_large_frame_that_is_large_on_the_wire_is_no_bomb():
    """A 12 MP camera PNG (about 3 pixels per byte) or BMP passes for a 224x224 model; the same pixels from a
    97 KB file (1,000 pixels per byte) do not."""
    from andon.inspect.decoding import ImageHeader, check_cost

    check_cost(ImageHeader("PNG", 4000, 3000, "L", end=4_000_000), (224, 224), 128)
    check_cost(ImageHeader("BMP", 4000, 3000, "L", end=12_001_078), (224, 224), 128)
    with pytest.raises(ImageTooLargeError, match=r"1,031 pixels per byte of its 97,000-byte file.*max_pixels_per_byte"):
        check_cost(ImageHeader("PNG", 10000, 10000, "L", end=97_000), (224, 224), 128)
    with pytest.raises(ImageTooLargeError):  # a tighter setting refuses the camera PNG too
        check_cost(ImageHeader("PNG", 4000, 3000, "L", end=4_000_000), (224, 224), 128, max_pixels_per_byte=2)
