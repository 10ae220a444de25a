"""andon.inspect.pixels computes what OpenCV computed before andon's inspection path left it: the resize
definitions (area, linear, cubic), BT.601 luma, the JET colours and the focus measure, within one level of
rounding. OpenCV is installed with the [data] extra that the test suite has, so it is the reference here."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from andon.inspect import pixels
from andon.inspect.quality import centre_window, focus_measure

CV2 = {"area": cv2.INTER_AREA, "linear": cv2.INTER_LINEAR, "cubic": cv2.INTER_CUBIC}
RNG = np.random.default_rng(7)


def _noise(shape) -> np.ndarray:
    return (RNG.random(shape) * 255).astype(np.uint8)


GEOMETRIES = [
    ((256, 306), (224, 224)),  # a 5 MP frame after the JPEG decoder's 1/8 DCT scale -> the model input
    ((256, 306, 3), (224, 224)),
    ((256, 306, 4), (200, 180)),
    ((448, 448), (224, 224)),  # whole factors (area: the block mean)
    ((448, 448, 3), (224, 224)),
    ((389, 117), (224, 67)),  # a long magnetic tile, letterboxed
    ((100, 300), (224, 224)),  # growing
    ((7, 9), (224, 224)),
]


@pytest.mark.parametrize("interpolation", ["area", "linear", "cubic"])
@pytest.mark.parametrize(("shape", "out_hw"), GEOMETRIES)
def test_resize_is_opencvs_within_one_level(interpolation, shape, out_hw) -> None:
    image = _noise(shape)
    ours = pixels.resize(image, out_hw[1], out_hw[0], interpolation)
    growing = out_hw[0] > shape[0] or out_hw[1] > shape[1]
    reference = "linear" if interpolation == "area" and growing else interpolation  # as pixels.resize documents
    theirs = cv2.resize(image, out_hw[::-1], interpolation=CV2[reference])
    assert ours.shape == theirs.shape and ours.dtype == np.uint8 and ours.flags.c_contiguous
    diff = np.abs(ours.astype(int) - theirs.astype(int))
    assert diff.max() <= 1, f"{interpolation} {shape}->{out_hw}: {diff.max()} levels apart"
    assert diff.mean() < 0.2  # rounding only: most pixels are equal
    if reference == "linear":  # the 11-bit fixed point too: bit for bit
        assert diff.max() == 0


@pytest.mark.parametrize("interpolation", ["linear", "cubic"])
def test_float_heatmaps_resize_like_opencv(interpolation) -> None:
    heat = RNG.random((7, 9)).astype(np.float32)
    ours = pixels.resize(heat, 224, 200, interpolation)
    theirs = cv2.resize(heat, (224, 200), interpolation=CV2[interpolation])
    assert ours.dtype == np.float32 and np.abs(ours - theirs).max() < 1e-5


def test_a_thin_line_survives_the_area_shrink() -> None:
    """Area averages every source pixel: a one-pixel crack is kept (dimmed), never skipped between samples."""
    frame = np.full((612, 612), 200, np.uint8)
    frame[:, 301] = 0
    small = pixels.resize(frame, 224, 224, "area")
    assert small.min() < 200 - 60


def test_resize_refuses_what_it_cannot_do() -> None:
    with pytest.raises(ValueError, match="interpolation 'nearest' is not one of area, cubic, linear"):
        pixels.resize(_noise((10, 10)), 5, 5, "nearest")
    with pytest.raises(ValueError, match="cannot resize to 0x5"):
        pixels.resize(_noise((10, 10)), 0, 5)
    with pytest.raises(ValueError, match="uint8 or float32"):
        pixels.resize(np.zeros((10, 10), np.uint16), 5, 5)


def test_luma_and_jet_are_opencvs() -> None:
    rgb = _noise((120, 160, 3))
    luma = np.abs(pixels.rgb_to_gray(rgb).astype(int) - cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(int))
    assert luma.max() <= 1 and luma.mean() < 0.05
    levels = np.arange(256, dtype=np.uint8)[None]
    jet = cv2.cvtColor(cv2.applyColorMap(levels, cv2.COLORMAP_JET), cv2.COLOR_BGR2RGB)[0]
    assert np.abs(pixels.JET.astype(int) - jet.astype(int)).max() <= 1
    assert pixels.JET[0].tolist() == [0, 0, 129] and pixels.JET[255].tolist() == [129, 0, 0]  # dark blue .. dark red


def test_luma_is_the_integer_formula_for_every_rgb_value() -> None:
    """rgb_to_gray computes in float32: every one of the 2**24 colours gives the 14-bit integer formula's value
    (the grey decode of PNG/BMP/TIFF frames and the focus measure depend on it, bit for bit)."""
    levels = np.arange(256, dtype=np.uint8)
    every = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), axis=-1).reshape(4096, 4096, 3)
    c = every.astype(np.uint32)
    expected = ((c[:, :, 0] * 4899 + c[:, :, 1] * 9617 + c[:, :, 2] * 1868 + 8192) >> 14).astype(np.uint8)
    assert np.array_equal(pixels.rgb_to_gray(every), expected)
    rgba = np.concatenate([every[:64], np.full((64, 4096, 1), 7, np.uint8)], axis=2)
    assert np.array_equal(pixels.rgb_to_gray(rgba), expected[:64])  # alpha ignored


def test_focus_measure_is_the_variance_of_opencvs_laplacian() -> None:
    frame = cv2.GaussianBlur(_noise((600, 700)), (0, 0), 2)
    lap = cv2.Laplacian(centre_window(frame), cv2.CV_32F, ksize=1)
    assert focus_measure(frame) == pytest.approx(float(cv2.meanStdDev(lap)[1][0, 0]) ** 2, rel=1e-5)


@pytest.mark.parametrize("shape", [(30, 40), (30, 40, 3), (30, 40, 4)])
def test_png_and_jpeg_round_trip(shape) -> None:
    image = _noise(shape)
    back = np.asarray(Image.open(io.BytesIO(pixels.encode_png(image))))
    assert np.array_equal(back, image)
    if len(shape) == 2 or shape[2] == 3:
        jpeg = Image.open(io.BytesIO(pixels.encode_jpeg(image, quality=95)))
        assert jpeg.format == "JPEG" and jpeg.size == (40, 30)
    with pytest.raises(ValueError, match="uint8 HxW, HxWx3 or HxWx4"):
        pixels.encode_png(np.zeros((4, 4, 2), np.uint8))


def test_resize_in_threads_gives_each_call_its_own_result() -> None:
    """The passes run in per-thread scratch buffers: concurrent calls (the service's inference threads) and
    calls of other geometries in between never see each other's pixels, and a result is never a buffer."""
    from concurrent.futures import ThreadPoolExecutor

    frames = [_noise((256, 306, 3)) for _ in range(8)] + [_noise((300, 200)) for _ in range(8)]
    expected = [pixels.resize(f, 224, 224) for f in frames]
    with ThreadPoolExecutor(4) as pool:
        for _ in range(3):
            got = list(pool.map(lambda f: pixels.resize(f, 224, 224), frames))
            assert all(np.array_equal(a, b) for a, b in zip(got, expected, strict=True))
    first, second = pixels.resize(frames[0], 224, 224), pixels.resize(frames[1], 224, 224)
    assert not np.shares_memory(first, second) and np.array_equal(first, expected[0])
