"""albumentations pipelines built from params: paired image + mask transforms for chest X-rays.

Only transforms that keep an X-ray plausible: small rotations, scale and shift, brightness/contrast/gamma.
No vertical flips (a chest film is never upside down); horizontal flips are a param, off by default, because
they swap the heart side.
"""
from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2

from lungseg.config import AugmentConfig


def build_augmentations(config: AugmentConfig) -> A.Compose:
    """Training transform for (image uint8 (H, W), mask uint8 soft (H, W)); size-agnostic."""
    return A.Compose(
        [
            A.Affine(
                scale=(1 - config.scale_limit, 1 + config.scale_limit),
                translate_percent=(-config.shift_limit, config.shift_limit),
                rotate=(-config.rotate_limit, config.rotate_limit),
                interpolation=cv2.INTER_LINEAR,
                # Masks are soft (lung fraction per pixel), so they are interpolated like the image.
                mask_interpolation=cv2.INTER_LINEAR,
                border_mode=cv2.BORDER_CONSTANT,
                fill=0,
                fill_mask=0,
                p=config.affine_p,
            ),
            A.RandomBrightnessContrast(
                brightness_limit=config.brightness_limit,
                contrast_limit=config.contrast_limit,
                p=config.brightness_contrast_p,
            ),
            A.RandomGamma(gamma_limit=config.gamma_limit, p=config.gamma_p),
            A.HorizontalFlip(p=config.horizontal_flip_p),
        ]
    )


def save_pipeline(pipeline: A.Compose, path: str | Path) -> None:
    """Serialise with albumentations' own format, so training rebuilds exactly this pipeline."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    A.save(pipeline, str(path), data_format="yaml")


def load_pipeline(path: str | Path) -> A.Compose:
    return A.load(str(path), data_format="yaml")
