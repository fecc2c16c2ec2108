import albumentations as A
import numpy as np

from lungseg.augment import build_augmentations, load_pipeline, save_pipeline
from lungseg.config import load_params
from conftest import REPO

CONFIG = load_params(REPO / "params.yaml").augment


def test_geometric_transforms_keep_image_and_mask_aligned(real_xray):
    image, _ = real_xray
    # Only the geometric part: an image and an identical "mask" must come out identical.
    pipeline = build_augmentations(CONFIG.model_copy(update={
        "affine_p": 1.0, "white_border_share": 0.0, "brightness_contrast_p": 0.0, "gamma_p": 0.0, "marker_p": 0.0,
        "horizontal_flip_p": 0.5}))
    pipeline.set_random_seed(3)
    moved = 0
    for _ in range(8):
        out = pipeline(image=image, mask=image.copy())
        assert np.array_equal(out["image"], out["mask"])
        moved += not np.array_equal(out["image"], image)
    assert moved >= 7  # the transform really changed the pictures


def test_no_vertical_flips_in_the_pipeline():
    names = [type(t).__name__ for t in build_augmentations(CONFIG).transforms]
    assert "VerticalFlip" not in names and "Transpose" not in names


def test_serialised_pipeline_reproduces_the_same_draws(tmp_path, real_xray):
    image, mask = real_xray
    pipeline = build_augmentations(CONFIG)
    save_pipeline(pipeline, tmp_path / "pipeline.yaml")
    loaded = load_pipeline(tmp_path / "pipeline.yaml")
    assert isinstance(loaded, A.Compose)
    soft = mask.astype(np.uint8) * 255
    pipeline.set_random_seed(7)
    loaded.set_random_seed(7)
    for _ in range(3):
        a, b = pipeline(image=image, mask=soft), loaded(image=image, mask=soft)
        assert np.array_equal(a["image"], b["image"]) and np.array_equal(a["mask"], b["mask"])


def test_markers_and_grey_level_changes_leave_the_mask_alone(real_xray):
    image, mask = real_xray
    soft = mask.astype(np.uint8) * 255
    pipeline = build_augmentations(CONFIG.model_copy(update={
        "affine_p": 0.0, "brightness_contrast_p": 1.0, "gamma_p": 1.0, "marker_p": 1.0}))
    pipeline.set_random_seed(11)
    out = pipeline(image=image, mask=soft)
    assert np.array_equal(out["mask"], soft) and not np.array_equal(out["image"], image)
    assert (out["image"] == 255).sum() > (image == 255).sum()  # the white markers are there


def test_zoom_out_shrinks_the_lungs_with_the_film(real_xray):
    image, mask = real_xray
    soft = mask.astype(np.uint8) * 255
    pipeline = build_augmentations(CONFIG.model_copy(update={
        "affine_p": 1.0, "scale_range": (0.6, 0.6), "rotate_limit": 0.0, "shift_limit": 0.0,
        "brightness_contrast_p": 0.0, "gamma_p": 0.0, "marker_p": 0.0}))
    out = pipeline(image=image, mask=soft)
    assert abs(out["mask"].astype(float).sum() / soft.astype(float).sum() - 0.36) < 0.02  # 0.6 squared
