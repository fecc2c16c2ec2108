"""Right and left lung: which is which follows the display convention or the DICOM orientation."""
import numpy as np

from lungseg.runtime import imaging, lungs


def two_regions() -> np.ndarray:
    mask = np.zeros((50, 100), dtype=bool)
    mask[10:40, 10:40] = True  # on the image's left: the patient's right in a standard PA display
    mask[10:40, 60:85] = True
    return mask


def test_standard_display_puts_the_patients_right_lung_on_the_image_left():
    right_on_left, assumed = lungs.patient_right_on_image_left("")
    assert right_on_left and assumed
    labels = lungs.label_lungs(imaging.regions(two_regions()), right_on_left)
    assert set(np.unique(labels[10:40, 10:40])) == {lungs.RIGHT}
    assert set(np.unique(labels[10:40, 60:85])) == {lungs.LEFT}
    assert (labels > 0).sum() == two_regions().sum()


def test_dicom_patient_orientation_decides():
    assert lungs.patient_right_on_image_left("L\\F") == (True, False)
    assert lungs.patient_right_on_image_left("R\\F") == (False, False)  # a flipped film
    labels = lungs.label_lungs(imaging.regions(two_regions()), right_on_image_left=False)
    assert set(np.unique(labels[10:40, 10:40])) == {lungs.LEFT}


def test_small_fragments_join_the_lung_on_their_side():
    mask = two_regions()
    mask[45:48, 30:33] = True  # a speck under the image-left lung
    labels = lungs.label_lungs(imaging.regions(mask), True)
    assert set(np.unique(labels[45:48, 30:33])) == {lungs.RIGHT}


def test_areas_in_pixels_and_square_centimetres():
    labels = lungs.label_lungs(imaging.regions(two_regions()), True)
    found = lungs.areas(labels, (0.5, 0.4))  # mm per pixel: rows, columns
    assert found["right_lung_pixels"] == 900 and found["left_lung_pixels"] == 750
    assert found["right_left_ratio"] == 1.2
    assert found["right_lung_cm2"] == 900 * 0.2 / 100 and found["left_lung_cm2"] == 1.5
    assert "right_lung_cm2" not in lungs.areas(labels, None)
    assert lungs.areas(np.zeros((4, 4), np.uint8), None)["right_left_ratio"] is None
