import numpy as np

import cv2

from lungseg.runtime import imaging


def test_keep_lungs_drops_specks_and_fills_holes():
    mask = np.zeros((40, 40), dtype=bool)
    mask[5:35, 3:15] = True  # left lung
    mask[5:35, 22:36] = True  # right lung
    mask[15:18, 8:10] = False  # a hole inside the left lung
    mask[1:3, 18:20] = True  # a speck
    cleaned = imaging.keep_lungs(mask)
    assert not cleaned[1:3, 18:20].any()
    assert cleaned[15:18, 8:10].all()
    assert cleaned[5:35, 22:36].all() and cleaned.sum() == 30 * 12 + 30 * 14


def test_keep_lungs_keeps_a_single_region():
    mask = np.zeros((10, 10), dtype=bool)
    mask[2:8, 2:8] = True
    assert np.array_equal(imaging.keep_lungs(mask), mask)


def test_segment_returns_masks_of_each_input_size():
    images = [np.full((300, 200), 128, np.uint8), np.full((64, 90), 10, np.uint8)]
    calls = []

    def fake_model(inputs):  # (N, 1, S, S) -> (N, S, S): logits > 0 on the left half
        calls.append(inputs.shape)
        logits = -np.ones(inputs.shape[:1] + inputs.shape[2:], np.float32)
        logits[:, :, : inputs.shape[3] // 2] = 1
        return logits

    masks = imaging.segment(images, fake_model, image_size=64, intensity="none", threshold=0.5, batch_size=8,
                            postprocess=False)
    assert calls == [(2, 1, 64, 64)]
    assert [m.shape for m in masks] == [(300, 200), (64, 90)]
    assert masks[0][:, :90].all() and not masks[0][:, 110:].any()


def test_soft_mask_resize_keeps_the_lung_fraction():
    mask = np.zeros((512, 512), dtype=bool)
    mask[100:301, 50:251] = True
    soft = imaging.resize_mask_soft(mask, 128)
    assert abs(soft.astype(np.float64).sum() / 255 / 128**2 - mask.mean()) < 1e-3


def test_histogram_equalisation_undoes_any_increasing_grey_level_change(real_xray):
    image = imaging.resize_image(real_xray[0], 128)
    reference = imaging.normalise_intensity(image, "equalize_histogram")
    changed = {
        "gamma 2.5": np.rint(255 * (image / 255.0) ** 2.5),
        "narrow window 191-255": 191 + np.rint(image / 255.0 * 64),
        "contrast halved, offset": 60 + np.rint(image * 0.5),
    }
    for name, variant in changed.items():
        normalised = imaging.normalise_intensity(variant.astype(np.uint8), "equalize_histogram")
        # Levels the change merged cannot come back; the rest land where they were.
        assert np.abs(normalised.astype(int) - reference.astype(int)).mean() < 6, name
    assert np.array_equal(imaging.normalise_intensity(image, "none"), image)


def test_one_preprocessing_function_for_every_consumer():
    images = [np.full((30, 50), 7, np.uint8), np.arange(64 * 64, dtype=np.uint32).reshape(64, 64).astype(np.uint8)]
    batch = imaging.model_input(images, 32, "equalize_histogram")
    assert batch.shape == (2, 1, 32, 32) and batch.dtype == np.float32
    assert 0 <= batch.min() and batch.max() <= 1
    expected = cv2.equalizeHist(imaging.resize_image(images[1], 32)) / 255.0
    assert np.allclose(batch[1, 0], expected)
