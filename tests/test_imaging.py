import cv2
import numpy as np
import pytest

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


def _bright_is_lung(calls):
    def run_model(inputs):  # (N, 1, S, S) -> logits: lung wherever the input is bright
        calls.append(inputs.copy())
        return np.where(inputs[:, 0] > 0.5, 4.0, -4.0).astype(np.float32)
    return run_model


def test_the_second_pass_runs_on_the_lung_box_cut_from_the_full_image():
    image = np.zeros((400, 300), np.uint8)
    image[100:300, 50:250] = 200  # the "lungs": a third of the film
    calls = []
    framed = imaging.predict_framed([image], _bright_is_lung(calls), 64, "none", 0.5, lung_crop_margin=0.1,
                                    batch_size=4)[0]
    assert len(calls) == 2
    # The box is the lungs widened by 10% of their 200 px per side, to the first pass's 400/64 px precision.
    assert abs(framed.box.top - 80) <= 7 and abs(framed.box.bottom - 320) <= 7
    assert abs(framed.box.left - 30) <= 5 and abs(framed.box.right - 270) <= 5
    # The second input is that box: the lungs fill about (200/240)^2 of it, a third of the first input.
    assert abs((calls[0] > 0.5).mean() - 1 / 3) < 0.03 and abs((calls[1] > 0.5).mean() - (200 / 240) ** 2) < 0.05
    full = framed.full_size(400, 300)
    assert full.shape == (400, 300) and full[:framed.box.top].max() == 0 and full[:, framed.box.right:].max() == 0
    mask = imaging.to_mask(full, 0.5, postprocess=True)
    assert mask[110:290, 60:240].all() and not mask[:90].any() and not mask[:, 260:].any()


def test_a_box_reaching_past_the_image_is_clipped_to_it():
    probabilities = np.zeros((64, 64), np.float32)
    probabilities[0:40, 20:64] = 1.0  # lungs touching the top and right edges
    assert imaging.lung_box(probabilities, 0.5, 0.2, 640, 320) == (0, 480, 56, 320)


def test_images_without_lungs_keep_their_first_pass_and_order():
    lungs, blank = np.zeros((128, 128), np.uint8), np.zeros((90, 70), np.uint8)
    lungs[30:100, 20:110] = 220
    calls = []
    framed = imaging.predict_framed([blank, lungs, blank], _bright_is_lung(calls), 32, "none", 0.5, 0.1, 8)
    assert [c.shape[0] for c in calls] == [3, 1]  # the second pass runs on the one image with lungs
    assert [tuple(f.box) for f in framed[::2]] == [(0, 90, 0, 70)] * 2
    assert (framed[1].box.bottom - framed[1].box.top, framed[1].box.right - framed[1].box.left) < (128, 128)
    assert framed[0].probabilities.max() < 0.5 and framed[1].probabilities.max() > 0.5


def test_a_second_pass_that_finds_no_lung_keeps_the_first():
    image = np.zeros((256, 256), np.uint8)
    image[100:104, 100:104] = 255  # a speck: its box, magnified to the whole input, is all "lung" ...
    calls = []

    def speck_then_nothing(inputs):  # ... so a model that sees lungs only in the first call stands in
        calls.append(inputs)
        return np.full(inputs.shape[:1] + inputs.shape[2:], 4.0 if len(calls) == 1 else -4.0, np.float32) * (
            inputs[:, 0] > 0.5) - 4.0 * (inputs[:, 0] <= 0.5)

    framed = imaging.predict_framed([image], speck_then_nothing, 64, "none", 0.5, 0.1, 8)[0]
    assert len(calls) == 2 and tuple(framed.box) == (0, 256, 0, 256) and framed.probabilities.max() > 0.5


def test_without_a_margin_there_is_one_pass_over_the_whole_image():
    image = np.zeros((100, 80), np.uint8)
    image[20:80, 10:70] = 255
    calls = []
    framed = imaging.predict_framed([image], _bright_is_lung(calls), 32, "none", 0.5, None, 8)[0]
    assert len(calls) == 1 and tuple(framed.box) == (0, 100, 0, 80)
    assert np.array_equal(framed.full_size(100, 80), imaging.upsample(framed.probabilities, 100, 80))


def test_the_lung_box_holds_the_two_largest_regions_and_not_a_speck():
    probabilities = np.zeros((64, 64), np.float32)
    probabilities[10:50, 8:28] = probabilities[12:52, 36:56] = 1.0  # two lungs
    probabilities[20:30, 12:20] = 0.0  # a hole in one: moves no edge
    probabilities[60:62, 60:62] = 1.0  # a speck far away, outside the box
    assert imaging.lung_box(probabilities, 0.5, 0.0, 64, 64) == (10, 52, 8, 56)
    mask = probabilities > 0.5
    share = imaging.lung_box_share(mask, imaging.regions(mask))
    # Widened by 10% of 42 x 48 per side, rounded outwards: rows 5..56, columns 3..60.
    assert share == np.count_nonzero(mask[5:57, 3:61]) / (52 * 58)


def _box_of_kept_lungs(probabilities, threshold, margin, height, width):
    """The lung box by its definition: the bounding rows and columns of keep_lungs' mask, scaled, widened."""
    mask = imaging.keep_lungs(probabilities > threshold)
    if not mask.any():
        return None
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    scale_y, scale_x = height / mask.shape[0], width / mask.shape[1]
    top, bottom = rows[0] * scale_y, (rows[-1] + 1) * scale_y
    left, right = columns[0] * scale_x, (columns[-1] + 1) * scale_x
    grow_y, grow_x = margin * (bottom - top), margin * (right - left)
    return (max(0, int(top - grow_y)), min(height, int(np.ceil(bottom + grow_y))),
            max(0, int(left - grow_x)), min(width, int(np.ceil(right + grow_x))))


@pytest.mark.parametrize("seed", range(40))
def test_the_lung_box_is_the_box_of_the_post_processed_lungs(seed):
    """Random blobs (ties, single regions, islands in holes among them) at the model's size, mapped to films
    of other shapes: the box from the regions' boxes equals the box of keep_lungs' mask, edge for edge."""
    rng = np.random.default_rng(seed)
    probabilities = np.zeros((32, 32), np.float32)
    for _ in range(rng.integers(0, 6)):
        top, left = rng.integers(0, 30, 2)
        probabilities[top : top + rng.integers(1, 12), left : left + rng.integers(1, 12)] = 1.0
    if seed % 5 == 0:  # a ring with an island in its hole
        probabilities[4:20, 4:20], probabilities[6:18, 6:18], probabilities[10:12, 10:12] = 1.0, 0.0, 1.0
    height, width = (int(v) for v in rng.integers(40, 3000, 2))
    margin = float(rng.choice([0.0, 0.1, 0.25]))
    expected = _box_of_kept_lungs(probabilities, 0.5, margin, height, width)
    found = imaging.lung_box(probabilities, 0.5, margin, height, width)
    assert (None if found is None else tuple(found)) == expected
