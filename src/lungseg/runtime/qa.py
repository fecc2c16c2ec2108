"""Quality flags for a predicted mask, so a person knows which results to check.

A mask is flagged when it is implausible for a PA chest X-ray, or when the model was unsure:
- the lungs' share of their own bounding box outside the range seen in the training masks (from the model card),
  widened by a margin: a whole-film blob, a single lung or scattered specks, however much of the film the thorax
  fills (cards without that range: the lungs' share of the whole film instead);
- not exactly two lung regions (regions smaller than 0.5% of the image are not counted);
- one lung much smaller than the other (below MIN_LUNG_RATIO of it): a missing or collapsed lung, or a miss;
- mean lung probability inside the mask below MIN_CONFIDENCE;
- a wide uncertain band: pixels with probability between 0.25 and 0.75 exceeding MAX_UNCERTAIN_SHARE of
  the predicted lung area.
"""
from __future__ import annotations

import numpy as np

from lungseg.runtime import imaging

FRACTION_MARGIN = 0.03
MIN_REGION_SHARE = 0.005
MIN_LUNG_RATIO = 0.25
MIN_CONFIDENCE = 0.9
MAX_UNCERTAIN_SHARE = 0.15


def describe(mask: np.ndarray, components: imaging.Regions, probabilities: np.ndarray, threshold: float,
             lung_fraction_range: tuple[float, float], lung_pixels: tuple[int, int] | None = None,
             box_share_range: tuple[float, float] | None = None) -> dict:
    """(H, W) bool mask, its regions (imaging.regions(mask)), the model's (S, S) probabilities and optionally
    (right, left) lung pixel counts -> the QA fields of report.csv. With box_share_range (the training masks'
    imaging.lung_box_share), that is the plausibility check; without, lung_fraction_range (the training masks'
    share of the film).

    Confidence and the uncertain share are measured at the model's resolution, where the model decided.
    """
    if components.labels.shape != mask.shape:
        raise ValueError(f"regions of a {components.labels.shape} mask given for a {mask.shape} one")
    lung_fraction = float(mask.mean())
    regions = int((components.areas >= MIN_REGION_SHARE * mask.size).sum())
    lung = probabilities > threshold
    lung_count = int(lung.sum())
    confidence = float(probabilities[lung].mean()) if lung_count else 0.0
    uncertain = float(((probabilities > 0.25) & (probabilities < 0.75)).sum() / max(lung_count, 1))
    box_share = imaging.lung_box_share(mask, components)
    flags = []
    if lung_count == 0 or not mask.any():
        flags.append("no_lung")
    if box_share_range is not None:
        low, high = box_share_range
        if box_share is not None and not low - FRACTION_MARGIN <= box_share <= high + FRACTION_MARGIN:
            flags.append(f"lung_box_share_outside_{low:.2f}-{high:.2f}")
    else:
        low, high = lung_fraction_range
        if not low - FRACTION_MARGIN <= lung_fraction <= high + FRACTION_MARGIN:
            flags.append(f"lung_fraction_outside_{low:.2f}-{high:.2f}")
    if regions != 2:
        flags.append(f"regions={regions}")
    if lung_pixels is not None and mask.any() and min(lung_pixels) < MIN_LUNG_RATIO * max(lung_pixels):
        flags.append("one_lung_small_or_missing")
    if confidence < MIN_CONFIDENCE:
        flags.append("low_confidence")
    if uncertain > MAX_UNCERTAIN_SHARE:
        flags.append("uncertain_boundary")
    return {
        "lung_fraction": round(lung_fraction, 4),
        "lung_box_share": None if box_share is None else round(box_share, 4),
        "regions": regions,
        "mean_confidence": round(confidence, 4),
        "uncertain_share": round(uncertain, 4),
        "qa_flags": ";".join(flags),
        "needs_review": bool(flags),
    }
