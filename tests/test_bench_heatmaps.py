"""bench.heatmaps' metrics on tiny synthetic maps whose answers are derived by hand (no ../shared needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root, for the bench package

from bench.heatmaps import area_to, aupro, map_metrics, pro_curve, tied_pointing  # noqa: E402


def _two_images() -> tuple[np.ndarray, np.ndarray]:
    """A defective 10x10 image (a 2x2 region and a 6x6 region, not touching) and a good one. Pixel AUROC is
    taken on every second pixel each way (bench.anomaly.pixel_metrics): 1 and 9 pixels of the regions there."""
    masks = np.zeros((2, 10, 10), bool)
    masks[0, :2, :2] = True
    masks[0, 4:, 4:] = True
    return masks, np.ones_like(masks)


def test_perfect_map_gives_one() -> None:
    masks, valid = _two_images()
    maps = masks.astype(float)
    assert aupro(maps, masks) == pytest.approx(1.0, abs=1e-12)
    m = map_metrics(maps, masks, valid, np.array([True, False]))
    assert m["pixel_auroc"] == pytest.approx(1.0)
    assert m["aupro"] == pytest.approx(1.0, abs=1e-12)
    assert m["pointing_game"] == 1.0
    assert (m["regions"], m["pointing_images"], m["defective_images"], m["images"]) == (2, 1, 1, 2)


def test_constant_map_gives_half_the_limit() -> None:
    # One threshold only: nothing flagged (FPR 0, PRO 0), then everything (1, 1). Joined linearly, PRO = FPR,
    # so the area up to 0.3 is 0.3**2 / 2 = 0.045, and divided by 0.3 it is exactly 0.15.
    masks, valid = _two_images()
    maps = np.full(masks.shape, 0.7)
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, [0, 1, 1])
    np.testing.assert_allclose(pro, [0, 1, 1])
    assert aupro(maps, masks) == pytest.approx(0.15, abs=1e-12)
    assert aupro(maps, masks, limit=0.1) == pytest.approx(0.05, abs=1e-12)
    m = map_metrics(maps, masks, valid, np.array([True, False]))
    assert m["pixel_auroc"] == pytest.approx(0.5)


def test_inverted_map_gives_zero() -> None:
    masks, _ = _two_images()
    assert aupro(1.0 - masks, masks) == pytest.approx(0.0, abs=1e-12)


def test_regions_count_equally_whatever_their_size() -> None:
    # The 4-pixel region is found (score 1), the 36-pixel one is not (score 0, like the background): at FPR 0 the
    # PRO is already 1/2 (one of two regions, fully), then it rises linearly to 1 at FPR 1: PRO = 0.5 + 0.5 FPR.
    # Area to 0.3: 0.3 * (0.5 + 0.65) / 2 = 0.1725; / 0.3 = 0.575. Pixel AUROC: 1 in 10 defect pixels above
    # every good pixel, 9 tied with them: 0.1 + 0.9 / 2 = 0.55.
    masks, valid = _two_images()
    maps = np.zeros(masks.shape)
    maps[0, :2, :2] = 1.0
    assert aupro(maps, masks) == pytest.approx(0.575, abs=1e-12)
    m = map_metrics(maps, masks, valid, np.array([True, False]))
    assert m["pixel_auroc"] == pytest.approx(0.55, abs=1e-9)
    # the 36-pixel region found instead: the same AUPRO (regions weigh the same), a higher pixel AUROC
    other = np.zeros(masks.shape)
    other[0, 4:, 4:] = 1.0
    assert aupro(other, masks) == pytest.approx(0.575, abs=1e-12)
    assert map_metrics(other, masks, valid, np.array([True, False]))["pixel_auroc"] == pytest.approx(0.95, abs=1e-9)


def test_threshold_sweep_and_interpolation_at_the_limit() -> None:
    # 10 good pixels scored 0.1 .. 1.0 and one 2-pixel region scored 0.95 and 0.75. Highest first:
    # 1.0 -> (0.1, 0); 0.95 -> (0.1, 0.5); 0.9 -> (0.2, 0.5); 0.8 -> (0.3, 0.5); 0.75 -> (0.3, 1); then FPR grows.
    maps = np.array([[[1.0, 0.95, 0.75, 0.9], [0.8, 0.7, 0.6, 0.5], [0.4, 0.3, 0.2, 0.1]]])
    masks = np.zeros(maps.shape, bool)
    masks[0, 0, 1:3] = True
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr[:6], [0, 0.1, 0.1, 0.2, 0.3, 0.3])
    np.testing.assert_allclose(pro[:6], [0, 0, 0.5, 0.5, 0.5, 1.0])
    # area to 0.3: 0 on [0, 0.1], 0.5 * 0.2 on [0.1, 0.3], the jump at 0.3 adds nothing: 0.1 / 0.3
    assert aupro(maps, masks) == pytest.approx(1 / 3, abs=1e-12)
    # to 0.25, between two points: 0.5 * 0.15 / 0.25
    assert aupro(maps, masks, limit=0.25) == pytest.approx(0.3, abs=1e-12)
    # a monotone transform of the map changes nothing
    assert aupro(maps**3, masks) == pytest.approx(1 / 3, abs=1e-12)


def test_area_to_interpolates_the_value_at_the_limit() -> None:
    x, y = np.array([0.0, 0.0, 0.5, 1.0]), np.array([0.0, 0.2, 0.6, 1.0])
    # on [0, 0.4]: from 0.2 to 0.2 + 0.4 * 0.8 = 0.52
    assert area_to(x, y, 0.4) == pytest.approx(0.4 * (0.2 + 0.52) / 2)
    assert area_to(x, y, 0.5) == pytest.approx(0.5 * (0.2 + 0.6) / 2)
    assert area_to(x, y, 1.0) == pytest.approx(0.5 * 0.4 + 0.5 * 0.8)


def test_padding_counts_nowhere() -> None:
    masks, valid = _two_images()
    maps = masks.astype(float)
    maps[:, :, 8:] = 2.0  # letterbox bars, scored above everything
    valid[:, :, 8:] = False
    assert aupro(maps, masks, valid) == pytest.approx(1.0, abs=1e-12)
    assert aupro(maps, masks) < 1.0
    m = map_metrics(maps, masks, valid, np.array([True, False]))
    assert (m["pixel_auroc"], m["pointing_game"]) == (pytest.approx(1.0), 1.0)


def test_regions_are_eight_connected_and_per_image() -> None:
    masks = np.zeros((2, 6, 6), bool)
    masks[0, 1, 1] = masks[0, 2, 2] = True  # diagonal neighbours: one region
    masks[1, 1, 1] = True  # the same place in another image: another region
    maps = np.zeros(masks.shape)
    maps[0, 1, 1] = 1.0  # half of the first region only
    # highest first: (0, 1/2 * 1/2); then everything. PRO = 0.25 + 0.75 FPR: area to 0.3 = 0.3 * (0.25 + 0.475) / 2
    assert aupro(maps, masks) == pytest.approx((0.25 + 0.475) / 2, abs=1e-12)
    m = map_metrics(maps, masks, np.ones_like(masks), np.array([True, True]))
    assert m["regions"] == 2


def test_low_resolution_maps_are_upsampled_to_the_masks() -> None:
    # a 2x2 map hot in its top-left cell, an 8x8 mask on the top-left quadrant: bilinear upsampling keeps every
    # quadrant pixel (>= 0.625**2) above every other pixel (<= 0.375)
    masks = np.zeros((2, 8, 8), bool)
    masks[0, :4, :4] = True
    maps = np.zeros((2, 2, 2))
    maps[0, 0, 0] = 1.0
    m = map_metrics(maps, masks, np.ones_like(masks), np.array([True, False]))
    assert m["pixel_auroc"] == pytest.approx(1.0)
    assert m["aupro"] == pytest.approx(1.0, abs=1e-12)
    assert m["pointing_game"] == 1.0


def test_pointing_game_counts_defective_images_with_a_mask() -> None:
    masks = np.zeros((3, 6, 6), bool)
    masks[0, 1:3, 1:3] = True
    masks[1, 3:5, 3:5] = True  # image 2 is defective but its mask is empty: not counted
    maps = np.zeros((3, 6, 6))
    maps[0, 1, 1] = 1.0  # on the mask
    maps[1, 0, 5] = 1.0  # off it
    m = map_metrics(maps, masks, np.ones_like(masks), np.array([True, True, True]))
    assert m["pointing_images"] == 2
    assert m["pointing_game"] == 0.5


def test_no_region_or_no_good_pixel_is_nan() -> None:
    empty = np.zeros((1, 4, 4), bool)
    assert np.isnan(aupro(np.zeros((1, 4, 4)), empty))
    assert np.isnan(aupro(np.zeros((1, 4, 4)), ~empty))


def test_matches_a_plain_threshold_loop() -> None:
    # random maps with ties (rounded to 1/8) and rectangular regions: the sorted sweep equals thresholding at every
    # distinct value one by one
    rng = np.random.default_rng(0)
    maps = np.round(rng.random((3, 12, 12)) * 8) / 8
    masks = np.zeros(maps.shape, bool)
    for i, (r, c) in enumerate([(2, 3), (7, 8), (5, 1)]):
        masks[i, r : r + 3, c : c + 2 + i] = True
    masks[0, 9:, 9:] = True
    regions = [
        (i, labels == k)
        for i, m in enumerate(masks)
        for labels in [cv2.connectedComponents(m.astype(np.uint8))[1]]
        for k in range(1, labels.max() + 1)
    ]
    points = [(0.0, 0.0)]
    for t in np.unique(maps)[::-1]:
        above = maps >= t
        points.append((above[~masks].mean(), np.mean([above[i][r].mean() for i, r in regions])))
    x, y = np.array(points + [(1.0, 1.0)]).T
    assert aupro(maps, masks) == pytest.approx(area_to(x, y, 0.3) / 0.3, abs=1e-12)
    fpr, pro = pro_curve(maps, masks)
    np.testing.assert_allclose(fpr, x)
    np.testing.assert_allclose(pro, y)


def test_pointing_game_with_ties_and_tolerance() -> None:
    # a plateau at the maximum, a quarter of it on the mask: np.argmax takes its first pixel (off the mask),
    # shared ties give 1/4; every plateau pixel lies within 4 px of the mask (the farthest, (2, 2), 2 * sqrt(2));
    # within 1 px: the quarter and its 4 edge neighbours on the plateau, 8 of 16 ((3, 3) is sqrt(2) away)
    masks = np.zeros((1, 10, 10), bool)
    masks[0, 4:6, 4:6] = True
    maps = np.zeros((1, 10, 10))
    maps[0, 2:6, 2:6] = 1.0  # 16 pixels, 4 of them on the mask
    valid = np.ones_like(masks)
    on, near = tied_pointing(maps, masks, valid, tolerance=4.0)
    assert (on, near) == (pytest.approx(0.25), 1.0)
    assert tied_pointing(maps, masks, valid, tolerance=1.0) == (pytest.approx(0.25), 0.5)
    m = map_metrics(maps, masks, valid, np.array([True]), tolerance=4.0)
    assert m["pointing_game"] == 0.0
    assert (m["pointing_ties_shared"], m["pointing_within_tolerance"]) == (pytest.approx(0.25), 1.0)
    assert m["pointing_chance"] == pytest.approx(4 / 100)
    # a maximum in the padding does not count
    maps[0, 0, 0], valid[0, 0, 0] = 5.0, False
    assert tied_pointing(maps, masks, valid, tolerance=4.0) == (pytest.approx(0.25), 1.0)
