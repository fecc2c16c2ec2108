"""QA flags: what makes a result worth a person's look."""
import numpy as np
import pytest

from lungseg.runtime import imaging, qa

RANGE = (0.08, 0.44)


def two_lungs(size: int = 100) -> np.ndarray:
    mask = np.zeros((size, size), dtype=bool)
    mask[20:80, 10:40] = True
    mask[20:80, 60:90] = True
    return mask


def describe(mask: np.ndarray, probabilities: np.ndarray, *checks) -> dict:
    """qa.describe with the mask's own regions, as lungseg predict calls it."""
    return qa.describe(mask, imaging.regions(mask), probabilities, *checks)


def confident(mask: np.ndarray) -> np.ndarray:
    return np.where(mask, 0.99, 0.01).astype(np.float32)


def test_a_plausible_confident_mask_is_not_flagged():
    mask = two_lungs()
    fields = describe(mask, confident(mask), 0.5, RANGE, (1800, 1800))
    assert fields["qa_flags"] == "" and not fields["needs_review"]
    assert fields["regions"] == 2 and fields["lung_fraction"] == 0.36 and fields["mean_confidence"] == 0.99


def test_an_empty_mask_is_flagged_as_no_lung():
    mask = np.zeros((100, 100), dtype=bool)
    fields = describe(mask, np.zeros((100, 100), np.float32), 0.5, RANGE, (0, 0))
    assert "no_lung" in fields["qa_flags"] and "regions=0" in fields["qa_flags"] and fields["needs_review"]


def test_one_lung_missing_is_flagged():
    mask = two_lungs()
    mask[:, 50:] = False
    mask[20:80, 50:55] = True  # a sliver where the left lung should be
    fields = describe(mask, confident(mask), 0.5, RANGE, (1800, 300))
    assert "one_lung_small_or_missing" in fields["qa_flags"]


def test_uncertain_and_implausible_masks_are_flagged():
    mask = two_lungs()
    unsure = np.where(mask, 0.6, 0.4).astype(np.float32)
    flags = describe(mask, unsure, 0.5, RANGE)["qa_flags"]
    assert "low_confidence" in flags and "uncertain_boundary" in flags
    huge = np.ones((100, 100), dtype=bool)
    assert "lung_fraction_outside_0.08-0.44" in describe(huge, confident(huge), 0.5, RANGE)["qa_flags"]


BOX_RANGE = (0.21, 0.46)  # the shipped training masks' lung share of their own widened box


def test_the_box_share_check_ignores_framing_but_catches_blobs_single_lungs_and_specks():
    film = np.zeros((400, 400), dtype=bool)
    film[150:210, 140:170] = film[150:210, 220:250] = True  # two lungs, the thorax in a quarter of the film
    probabilities = confident(film)
    share = describe(film, probabilities, 0.5, RANGE, (1800, 1800), BOX_RANGE)
    assert share["qa_flags"] == "" and share["lung_box_share"] == 0.3788  # 3600 of 72 x 132 box pixels
    assert "lung_fraction_outside" in describe(film, probabilities, 0.5, RANGE, (1800, 1800))["qa_flags"]
    blob = np.ones((100, 100), dtype=bool)
    single = np.zeros((100, 100), dtype=bool)
    single[20:80, 10:40] = True
    specks = np.zeros((100, 100), dtype=bool)
    specks[5:9, 5:9] = specks[90:94, 90:94] = True
    for mask in (blob, single, specks):
        flags = describe(mask, confident(mask), 0.5, RANGE, None, BOX_RANGE)["qa_flags"]
        assert "lung_box_share_outside_0.21-0.46" in flags, flags


def test_regions_of_another_mask_are_refused():
    mask = two_lungs()
    with pytest.raises(ValueError, match=r"regions of a \(50, 50\) mask given for a \(100, 100\) one"):
        qa.describe(mask, imaging.regions(two_lungs()[:50, :50]), confident(mask), 0.5, RANGE)
