"""Heatmap overlays land on the right part of the original frame, whatever the resize policy."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from andon.inspect.card import PreprocessSpec
from andon.inspect.heatmap import heatmap_png, overlay, to_image_coords


def hot_cell(h: int = 8, w: int = 8, row: int = 0, col: int = 0) -> np.ndarray:
    heat = np.zeros((h, w), np.float32)
    heat[row, col] = 1.0
    return heat


def centroid(heat: np.ndarray) -> tuple[float, float]:
    ys, xs = np.indices(heat.shape)
    total = heat.sum()
    return float((ys * heat).sum() / total), float((xs * heat).sum() / total)


def test_stretch_maps_cell_to_region() -> None:
    heat = to_image_coords(hot_cell(row=0, col=7), (400, 800))
    assert heat.shape == (400, 800) and heat.dtype == np.float32
    cy, cx = centroid(heat)
    assert cy < 60 and cx > 700  # top right


def test_letterbox_drops_padding() -> None:
    spec = PreprocessSpec(input_size=(64, 64), resize="letterbox")
    # a 2:1 frame letterboxed into 64x64 occupies rows 16..48; the heatmap's top rows are padding
    heat = np.zeros((8, 8), np.float32)
    heat[2, 0] = 1.0  # first content row, left edge
    mapped = to_image_coords(heat, (100, 200), spec)
    cy, cx = centroid(mapped)
    assert cy < 30 and cx < 30
    pad_only = np.zeros((8, 8), np.float32)
    pad_only[0, :] = 1.0  # only padding is hot
    assert to_image_coords(pad_only, (100, 200), spec).max() < 0.2


def test_center_crop_leaves_unseen_borders_cold() -> None:
    spec = PreprocessSpec(input_size=(64, 64), resize="center_crop")
    mapped = to_image_coords(np.ones((8, 8), np.float32), (100, 200), spec)
    assert mapped[:, :40].max() < 0.05 and mapped[:, -40:].max() < 0.05  # the cropped-away sides
    assert mapped[:, 60:140].min() > 0.95


def test_overlay_blends_by_evidence() -> None:
    image = np.full((50, 60, 3), 128, np.uint8)
    out = overlay(image, hot_cell(4, 4, 3, 3), alpha=0.6)
    assert out.shape == image.shape and out.dtype == np.uint8
    assert np.abs(out[45:, 50:].astype(int) - 128).sum() > 0  # coloured at the hot corner
    assert (out[:10, :10] == 128).all()  # untouched where there is no evidence
    assert (overlay(image, hot_cell(4, 4, 3, 3), alpha=0.0) == image).all()


def test_overlay_accepts_grey_and_rgba() -> None:
    assert overlay(np.zeros((20, 30), np.uint8), hot_cell()).shape == (20, 30, 3)
    assert overlay(np.zeros((20, 30, 4), np.uint8), hot_cell()).shape == (20, 30, 3)
    with pytest.raises(ValueError, match="alpha"):
        overlay(np.zeros((20, 30, 3), np.uint8), hot_cell(), alpha=2)
    with pytest.raises(ValueError, match="2-D"):
        overlay(np.zeros((20, 30, 3), np.uint8), np.zeros((2, 3, 4)))


def test_heatmap_png() -> None:
    data = heatmap_png(np.full((40, 50, 3), 200, np.uint8), hot_cell())
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    assert decoded.shape == (40, 50, 3)
    alone = cv2.imdecode(np.frombuffer(heatmap_png(None, hot_cell(4, 8)), np.uint8), cv2.IMREAD_COLOR)
    assert alone.shape == (128, 256, 3)
