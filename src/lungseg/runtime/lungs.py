"""Right and left lung in a predicted mask, and their areas.

Radiographs are displayed as if facing the patient, so in a PA (and in a conventionally displayed AP) film
the patient's right lung is on the image's left. DICOM says which way the rows run in PatientOrientation
(first value: the patient direction of increasing column, 'L' in the standard display); when it is absent,
or for PNG/JPEG, the standard display is assumed and the report says so (`laterality_assumed`).
"""
from __future__ import annotations

import numpy as np

from lungseg.runtime import imaging

RIGHT, LEFT = 1, 2  # label values in the label map: 0 background, 1 right lung, 2 left lung


def patient_right_on_image_left(patient_orientation: str) -> tuple[bool, bool]:
    """(patient's right lung is on the image's left, whether that was assumed rather than read)."""
    rows_towards = patient_orientation.split("\\")[0].strip().upper() if patient_orientation else ""
    if rows_towards.startswith("L"):
        return True, False
    if rows_towards.startswith("R"):
        return False, False
    return True, True


def label_lungs(components: imaging.Regions, right_on_image_left: bool) -> np.ndarray:
    """A mask's regions (imaging.regions) -> (H, W) uint8 labels: RIGHT / LEFT per region, by which side of the
    midline between the two largest regions' centres (or of the image's centre, for one region) it lies on."""
    if len(components.areas) == 0:
        return np.zeros(components.labels.shape, dtype=np.uint8)
    largest = np.argsort(components.areas)[::-1][:2]
    midline = components.centres[largest].mean() if len(largest) == 2 else components.labels.shape[1] / 2
    is_right = (components.centres < midline) == right_on_image_left  # per region 1..N
    side_of_label = np.concatenate([[0], np.where(is_right, RIGHT, LEFT)]).astype(np.uint8)
    return side_of_label[components.labels]


def areas(labels: np.ndarray, pixel_spacing_mm: tuple[float, float] | None) -> dict:
    """Per-lung areas in pixels, in cm^2 when the pixel spacing is known, and the right/left ratio."""
    right, left = int((labels == RIGHT).sum()), int((labels == LEFT).sum())
    found: dict = {"right_lung_pixels": right, "left_lung_pixels": left,
                   "right_left_ratio": round(right / left, 4) if left else None}
    if pixel_spacing_mm:
        square_cm = pixel_spacing_mm[0] * pixel_spacing_mm[1] / 100.0
        found.update(right_lung_cm2=round(right * square_cm, 2), left_lung_cm2=round(left * square_cm, 2))
    return found
