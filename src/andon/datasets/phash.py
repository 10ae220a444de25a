"""Perceptual hashes to find near-duplicate images: re-saved, re-scaled, re-lit or slightly shifted copies.

``phash``: the image is reduced to 32x32 grey, transformed with a 2-D DCT, and the 8x8 lowest frequencies are
compared with their median: 64 bits that survive JPEG re-encoding, resizing and brightness changes. Two
images whose hashes differ in few bits (Hamming distance) look alike. The pair search is an exact, blockwise
all-pairs popcount: ~2,000 images take milliseconds, 20,000 about a second.

Low frequencies alone are fooled by images of one product under one light: different magnetic tiles with
the same illumination fall within 8 bits. ``detail_hash`` (128 bits from the next DCT band of a 64x64
reduction) confirms a pair: copies of one view stay within ~25 bits, different parts land near 64. Measured
on NEU steel and magnetic tile, requiring both keeps the same-part pairs and drops the look-alikes.
"""

from __future__ import annotations

import cv2
import numpy as np

HASH_SIZE = 8
_DCT_SIZE = 32
_BLOCK = 1024


def phash(gray: np.ndarray) -> int:
    """64-bit perceptual hash of a grey (HxW) or RGB (HxWx3) uint8 image."""
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (_DCT_SIZE, _DCT_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    low = cv2.dct(small)[:HASH_SIZE, :HASH_SIZE].ravel()
    bits = low > np.median(low[1:])  # the DC term is the mean brightness: leave it out of the threshold
    return int(np.packbits(bits).view(">u8")[0])


def detail_hash(gray: np.ndarray) -> int:
    """128-bit hash of the mid-frequency band (DCT rows 0-7 x columns 8-15, and the transpose) of a 64x64 reduction."""
    if gray.ndim == 3:
        gray = cv2.cvtColor(gray, cv2.COLOR_RGB2GRAY)
    small = cv2.resize(gray, (2 * _DCT_SIZE, 2 * _DCT_SIZE), interpolation=cv2.INTER_AREA).astype(np.float32)
    coeffs = cv2.dct(small)
    band = np.concatenate(
        [coeffs[:HASH_SIZE, HASH_SIZE : 2 * HASH_SIZE].ravel(), coeffs[HASH_SIZE : 2 * HASH_SIZE, :HASH_SIZE].ravel()]
    )
    return int.from_bytes(np.packbits(band > np.median(band)).tobytes(), "big")


def hamming(a: int, b: int) -> int:
    return (a ^ b).bit_count()


def near_pairs(hashes: np.ndarray, max_distance: int) -> list[tuple[int, int, int]]:
    """All index pairs ``(i, j, distance)`` with ``i < j`` whose hashes differ in at most ``max_distance`` bits."""
    hashes = np.asarray(hashes, dtype=np.uint64)
    n = len(hashes)
    found: list[tuple[int, int, int]] = []
    for start in range(0, n, _BLOCK):
        block = hashes[start : start + _BLOCK]
        rest = hashes[start:]
        dist = np.bitwise_count(block[:, None] ^ rest[None, :])
        rows, cols = np.nonzero(dist <= max_distance)
        keep = cols > rows  # upper triangle: each pair once, no self-pairs
        for r, c in zip(rows[keep], cols[keep]):
            found.append((start + int(r), start + int(c), int(dist[r, c])))
    return found
