"""albumentations pipelines built from params: paired image + mask transforms for chest X-rays.

Transforms that make films as other hospitals make them, never implausible ones: rotation, zoom (out to a
thorax filling part of the film) and shift with a black or white border, brightness/contrast down to a few
grey levels, gamma from dark to washed out, burned-in labels and lead markers (white boxes; the lung under
them stays lung in the mask). No vertical flips (a chest film is never upside down); horizontal flips are a
param, off by default, because they swap the heart side.
"""
from __future__ import annotations

from pathlib import Path

import albumentations as A
import cv2

from lungseg.config import AugmentConfig


def _affine(config: AugmentConfig, fill: int, weight: float) -> A.Affine:
    return A.Affine(
        scale=tuple(config.scale_range),
        translate_percent=(-config.shift_limit, config.shift_limit),
        rotate=(-config.rotate_limit, config.rotate_limit),
        interpolation=cv2.INTER_LINEAR,
        # Masks are soft (lung fraction per pixel), so they are interpolated like the image.
        mask_interpolation=cv2.INTER_LINEAR,
        border_mode=cv2.BORDER_CONSTANT,
        fill=fill,
        fill_mask=0,
        p=weight,  # inside OneOf: the share of draws that get this border colour
    )


def build_augmentations(config: AugmentConfig) -> A.Compose:
    """Training transform for (image uint8 (H, W), mask uint8 soft (H, W)); size-agnostic."""
    return A.Compose(
        [
            A.OneOf([_affine(config, 0, 1 - config.white_border_share),
                     _affine(config, 255, config.white_border_share)], p=config.affine_p),
            A.RandomBrightnessContrast(
                brightness_limit=config.brightness_limit,
                contrast_limit=tuple(config.contrast_range),
                p=config.brightness_contrast_p,
            ),
            A.RandomGamma(gamma_limit=config.gamma_limit, p=config.gamma_p),
            A.CoarseDropout(num_holes_range=(1, 4), hole_height_range=(0.02, 0.06), hole_width_range=(0.04, 0.2),
                            fill=255, fill_mask=None, p=config.marker_p),
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
