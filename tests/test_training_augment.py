"""Augmentations: uint8 in, uint8 of the same size out, no colour changes, randomness fixed by the seed."""

from __future__ import annotations

import numpy as np
import pytest

from andon.training.augment import build_augmenter
from andon.training.recipe import load_recipe

ALL_ON = [
    "augment.hflip=0.5",
    "augment.vflip=0.5",
    "augment.rot90=0.5",
    "augment.affine.p=1",
    "augment.brightness_contrast.p=1",
    "augment.blur.p=1",
    "augment.noise.p=1",
    "augment.noise.std=0.05",
]


def _augmenter(overrides=ALL_ON, size=(48, 48)):
    return build_augmenter(load_recipe(overrides=[*overrides, f"model.input_size=[{size[0]},{size[1]}]"]).augment)


def _texture(shape, seed=0) -> np.ndarray:
    return np.random.default_rng(seed).integers(30, 220, shape, dtype=np.uint8)


def test_dtype_and_shape_are_kept():
    aug = _augmenter()
    image = _texture((48, 48, 3))
    for seed in range(25):
        out = aug(image.copy(), seed)
        assert out.dtype == np.uint8 and out.shape == image.shape


def test_non_square_inputs_keep_their_shape_without_rot90():
    aug = _augmenter([*ALL_ON, "augment.rot90=0"], size=(40, 64))
    image = _texture((40, 64, 3))
    assert all(aug(image.copy(), s).shape == (40, 64, 3) for s in range(10))


def test_grey_stays_grey_and_channel_order_is_kept():
    """Every photometric change acts alike on all channels: a grey part stays grey, and a reddish pixel
    stays at least as red as it is green (no hue shifts that could turn a stain into a clean part)."""
    aug = _augmenter()
    grey = np.repeat(_texture((48, 48, 1)), 3, axis=2)
    base = _texture((48, 48, 1), seed=1).astype(np.int16)
    colour = np.concatenate([base + 30, base, base - 25], axis=2).clip(0, 255).astype(np.uint8)  # R >= G >= B
    changed = 0
    for seed in range(30):
        out = aug(grey.copy(), seed)
        assert np.array_equal(out[..., 0], out[..., 1]) and np.array_equal(out[..., 1], out[..., 2])
        out = aug(colour.copy(), seed)
        assert (out[..., 0] >= out[..., 1]).all() and (out[..., 1] >= out[..., 2]).all()
        changed += not np.array_equal(out, colour)
    assert changed >= 25  # the augmentations do act


def test_same_seed_same_image_other_seed_other_image():
    aug = _augmenter()
    image = _texture((48, 48, 3))
    assert np.array_equal(aug(image.copy(), 7), aug(image.copy(), 7))
    assert not np.array_equal(aug(image.copy(), 7), aug(image.copy(), 8))


def test_transforms_draw_independently():
    """Each transform has its own random stream: with one shared seed, hflip and vflip would always agree."""
    aug = _augmenter(
        [
            "augment.hflip=0.5",
            "augment.vflip=0.5",
            "augment.rot90=0",
            "augment.affine.p=0",
            "augment.brightness_contrast.p=0",
            "augment.blur.p=0",
            "augment.noise.p=0",
        ]
    )
    image = _texture((48, 48, 3))
    kinds = set()
    for seed in range(40):
        out = aug(image.copy(), seed)
        kinds.add(
            next(
                k
                for k, ref in (("none", image), ("h", image[:, ::-1]), ("v", image[::-1]), ("hv", image[::-1, ::-1]))
                if np.array_equal(out, ref)
            )
        )
    assert kinds == {"none", "h", "v", "hv"}


def test_probability_zero_leaves_a_transform_out():
    off = [
        "augment.hflip=0",
        "augment.vflip=0",
        "augment.rot90=0",
        "augment.affine.p=0",
        "augment.brightness_contrast.p=0",
        "augment.blur.p=0",
        "augment.noise.p=0",
    ]
    aug = _augmenter(off)
    assert not aug and aug.transforms == []
    image = _texture((48, 48, 3))
    assert aug(image, 3) is image
    assert [type(t).__name__ for t in _augmenter([*off, "augment.noise.p=0.3"]).transforms] == ["GaussNoise"]


@pytest.mark.parametrize("flag", ["hflip", "vflip"])
def test_flips_are_exact_mirror_images(flag):
    others = [f"augment.{k}=0" for k in ("hflip", "vflip", "rot90")] + [
        f"augment.{k}.p=0" for k in ("affine", "brightness_contrast", "blur", "noise")
    ]
    aug = _augmenter([*others, f"augment.{flag}=1"])
    image = _texture((48, 48, 3))
    expected = image[:, ::-1] if flag == "hflip" else image[::-1]
    assert np.array_equal(aug(image.copy(), 0), expected)
