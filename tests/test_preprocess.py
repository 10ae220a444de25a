"""The one preprocessing path: decoding, orientation, bit depth, resize policies, normalisation."""

from __future__ import annotations

import io
import zlib

import cv2
import numpy as np
import pytest
from PIL import Image

from andon.errors import ImageDecodeError, ImageTooLargeError, UnsupportedFormatError
from andon.inspect import Preprocessor, PreprocessSpec, probe
from andon.inspect.decoding import decode, reduction_for


def _encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _gradient(h: int = 60, w: int = 80) -> np.ndarray:
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 255 // (w - 1), y * 255 // (h - 1), np.full_like(x, 128)], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("fmt", ["PNG", "BMP", "TIFF"])
def test_lossless_formats_decode_to_the_same_rgb_pixels(fmt: str) -> None:
    rgb = _gradient()
    assert np.array_equal(decode(_encode(rgb, fmt)), rgb)


def test_jpeg_decodes_close_to_source() -> None:
    rgb = _gradient()
    out = decode(_encode(rgb, "JPEG", quality=95))
    assert out.shape == rgb.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - rgb).mean() < 3


def test_rgba_drops_alpha_and_grey_becomes_three_channels() -> None:
    rgb = _gradient()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 7, np.uint8)])
    assert np.array_equal(decode(_encode(rgba, "PNG")), rgb)
    grey = rgb[:, :, 0].copy()
    out = decode(_encode(grey, "PNG"))
    assert out.shape == (*grey.shape, 3) and np.array_equal(out[:, :, 1], grey)


def test_16_bit_grey_maps_by_full_range_not_by_values() -> None:
    grey16 = np.array([[0, 257, 65535, 32896]], dtype=np.uint16).repeat(4, axis=0)
    ok, png = cv2.imencode(".png", grey16)
    assert ok
    out = decode(png.tobytes(), gray=True)
    assert out.dtype == np.uint8
    assert out[0].tolist() == [0, 1, 255, 128]
    # a dark 16-bit image stays dark: nothing stretches it by looking at its maximum
    dark = np.full((4, 4), 1000, np.uint16)
    assert decode(cv2.imencode(".png", dark)[1].tobytes(), gray=True).max() == 4


def test_exif_orientation_is_applied() -> None:
    rgb = np.zeros((20, 40, 3), np.uint8)
    rgb[:, :10] = 255  # bright band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    out = decode(_encode(rgb, "JPEG", exif=exif.tobytes(), quality=95))
    assert out.shape[:2] == (40, 20)
    assert out[:10].mean() > 200 and out[-10:].mean() < 50  # the band is now on top


def test_large_jpeg_is_decoded_at_reduced_scale_never_below_the_target() -> None:
    frame = cv2.resize(_gradient(), (2448, 2048))
    data = _encode(frame, "JPEG", quality=90)
    header = probe(data)
    assert (header.width, header.height) == (2448, 2048)
    assert reduction_for(header, (224, 224)) == 8
    assert reduction_for(header, (512, 512)) == 4
    assert reduction_for(header, (600, 600)) == 2
    assert reduction_for(header, (1100, 1100)) == 1
    pixels = Preprocessor(PreprocessSpec(input_size=(224, 224))).decode(data)
    assert pixels.shape == (256, 306, 3)
    # the reduced decode is a faithful picture of the full one
    full = cv2.resize(decode(data), (224, 224), interpolation=cv2.INTER_AREA)
    fast = Preprocessor(PreprocessSpec(input_size=(224, 224))).load(data)
    assert np.abs(full.astype(int) - fast).mean() < 2.0


@pytest.mark.parametrize(
    ("data", "error", "words"),
    [
        (b"", ImageDecodeError, "empty"),
        (b"hello, I am text", ImageDecodeError, "not an image"),
        (b"GIF89a" + bytes(100), ImageDecodeError, "not an image"),
    ],
)
def test_garbage_is_refused_with_a_message(data: bytes, error: type, words: str) -> None:
    with pytest.raises(error, match=words):
        decode(data)


def test_truncated_files_are_refused() -> None:
    rgb = (np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8)
    jpeg = _encode(rgb, "JPEG")
    png = _encode(rgb, "PNG")
    with pytest.raises(ImageDecodeError, match="truncated JPEG"):
        decode(jpeg[: len(jpeg) // 2])
    with pytest.raises(ImageDecodeError, match="truncated PNG"):
        decode(png[: len(png) // 2])


def test_format_allow_list_and_pixel_cap() -> None:
    png = _encode(_gradient(), "PNG")
    with pytest.raises(UnsupportedFormatError, match="PNG is not allowed"):
        decode(png, allowed_formats=frozenset({"JPEG"}))
    with pytest.raises(ImageTooLargeError, match="4,800 pixels"):
        decode(png, max_pixels=1000)


def test_decompression_bomb_is_refused_from_the_header() -> None:
    # a PNG that declares 100,000 x 100,000 pixels in a few hundred bytes
    bomb = np.zeros((1, 1), np.uint8)
    data = bytearray(_encode(bomb, "PNG"))
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = (100_000).to_bytes(4, "big") * 2
    data[ihdr + 17 : ihdr + 21] = zlib.crc32(bytes(data[ihdr : ihdr + 17])).to_bytes(4, "big")
    with pytest.raises(ImageTooLargeError):
        probe(bytes(data))


@pytest.mark.parametrize("policy", ["stretch", "letterbox", "center_crop"])
def test_resize_policies_give_the_input_size(policy: str) -> None:
    spec = PreprocessSpec(input_size=(48, 64), resize=policy)
    out = Preprocessor(spec).load(_encode(_gradient(100, 50), "PNG"))
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8


def test_letterbox_pads_and_keeps_aspect() -> None:
    spec = PreprocessSpec(input_size=(64, 64), resize="letterbox", pad_value=0)
    white = np.full((32, 64, 3), 255, np.uint8)
    out = Preprocessor(spec).load(white)
    assert out[:16].max() == 0 and out[-16:].max() == 0 and out[16:48].min() == 255


def test_gray_mode_converts_colour_frames() -> None:
    spec = PreprocessSpec(input_size=(16, 16), color_mode="gray")
    red = np.zeros((16, 16, 3), np.uint8)
    red[..., 0] = 255
    out = Preprocessor(spec).load(red)
    assert (out[..., 0] == out[..., 1]).all() and (out[..., 1] == out[..., 2]).all()
    assert abs(int(out[0, 0, 0]) - 76) <= 1  # ITU-R BT.601 luma of pure red


def test_to_tensor_normalises_by_the_card() -> None:
    spec = PreprocessSpec(input_size=(16, 16), mean=(0.5, 0.5, 0.5), std=(0.5, 0.25, 0.5))
    image = np.tile(np.array([0, 255, 128], np.uint8), (16, 16, 1))
    tensor = Preprocessor(spec).to_tensor(image)
    assert tensor.shape == (3, 16, 16) and tensor.dtype == np.float32
    np.testing.assert_allclose(tensor[:, 0, 0], [-1.0, 2.0, (128 / 255 - 0.5) / 0.5], atol=1e-6)


def test_arrays_are_accepted_but_floats_are_not_guessed() -> None:
    pre = Preprocessor(PreprocessSpec(input_size=(16, 16)))
    assert pre(np.zeros((16, 16), np.uint8)).shape == (3, 16, 16)
    assert pre(np.zeros((16, 16, 4), np.uint8)).shape == (3, 16, 16)
    assert pre(np.zeros((16, 16), np.uint16)).shape == (3, 16, 16)
    with pytest.raises(ImageDecodeError, match="floats are ambiguous"):
        pre(np.zeros((16, 16, 3), np.float32))
    with pytest.raises(ImageDecodeError, match="not an image"):
        pre(np.zeros((16, 16, 2), np.uint8))
