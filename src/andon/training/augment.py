"""Augmentations for inspection images (albumentations), applied to the cached uint8 image.

Geometry (flips, 90-degree turns, a small affine) and photometry that treats every channel alike
(brightness/contrast, blur, noise): nothing shifts hue or saturation, so a discoloured part stays
discoloured and a grey part stays grey. The image keeps its dtype (uint8) and size, so that
``Preprocessor.to_tensor`` takes it unchanged.

Randomness is drawn per sample from a seed the sampler hands out (see ``andon.training.data``), and each
transform gets its own stream: the result depends on (run seed, epoch, position), not on which worker
process ran it or how many there are. That is what makes runs repeatable and ``--resume`` exact.
"""

from __future__ import annotations

import os

# albumentations asks PyPI for a newer version on import; andon runs offline on line computers, where that
# is a 2-second timeout and an outbound request nobody asked for.
os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")

import albumentations as A  # noqa: E402
import cv2  # noqa: E402
import numpy as np  # noqa: E402

from andon.training.recipe import AugmentSection  # noqa: E402


class Augmenter:
    """A picklable augmentation pipeline whose randomness comes from a per-sample seed."""

    def __init__(self, transforms: list[A.BasicTransform]) -> None:
        self.transforms = transforms
        self._pipeline = A.Compose(transforms) if transforms else None

    def __bool__(self) -> bool:
        return self._pipeline is not None

    def __call__(self, image: np.ndarray, seed: int) -> np.ndarray:
        if self._pipeline is None:
            return image
        states = np.random.SeedSequence(seed).generate_state(len(self.transforms), dtype=np.uint64)
        for transform, state in zip(self.transforms, states):
            transform.set_random_seed(int(state))
        return self._pipeline(image=image)["image"]


def build_augmenter(cfg: AugmentSection) -> Augmenter:
    """The recipe's augmentations, in a fixed order; those with probability 0 are left out."""
    candidates: list[A.BasicTransform] = [
        A.HorizontalFlip(p=cfg.hflip),
        A.VerticalFlip(p=cfg.vflip),
        A.RandomRotate90(p=cfg.rot90),
        A.Affine(
            scale=(1.0 - cfg.affine.scale, 1.0 + cfg.affine.scale),
            translate_percent=(-cfg.affine.translate, cfg.affine.translate),
            rotate=(-cfg.affine.rotate, cfg.affine.rotate),
            interpolation=cv2.INTER_LINEAR,
            border_mode=cv2.BORDER_REFLECT_101,  # black corners would look like a defect
            p=cfg.affine.p,
        ),
        A.RandomBrightnessContrast(
            brightness_limit=cfg.brightness_contrast.brightness,
            contrast_limit=cfg.brightness_contrast.contrast,
            brightness_by_max=True,
            p=cfg.brightness_contrast.p,
        ),
        A.GaussianBlur(blur_limit=(3, cfg.blur.max_kernel), sigma_limit=(0.1, 0.3 * cfg.blur.max_kernel), p=cfg.blur.p),
        A.GaussNoise(std_range=(0.0, cfg.noise.std), per_channel=False, p=cfg.noise.p),
    ]
    return Augmenter([t for t in candidates if t.p > 0])
