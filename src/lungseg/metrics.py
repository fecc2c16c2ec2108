"""IoU and Dice of the paper (equations 2 and 3) over binary masks: accumulate counts, then reduce.

IoU = sum(y*p) / sum(y + p - y*p) and Dice = 2*sum(y*p) / sum(y + p). When truth and prediction are both
empty the masks agree perfectly and both scores are 1; when only one is empty they are 0.
"""
from __future__ import annotations

import numpy as np
import torch


def confusion_counts(prediction: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    """Binary (B, ...) prediction and truth -> (B, 3) int64 counts: intersection, truth pixels, predicted pixels."""
    prediction, truth = prediction.bool().flatten(1), truth.bool().flatten(1)
    return torch.stack(
        [(prediction & truth).sum(1), truth.sum(1), prediction.sum(1)], dim=1
    ).long()


def iou_dice(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(..., 3) counts -> IoU and Dice with the shape (...)."""
    counts = np.asarray(counts, dtype=np.float64)
    intersection, truth, predicted = counts[..., 0], counts[..., 1], counts[..., 2]
    union = truth + predicted - intersection
    total = truth + predicted
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(union > 0, intersection / union, 1.0)
        dice = np.where(total > 0, 2 * intersection / total, 1.0)
    return iou, dice


class SegmentationScores:
    """Collects per-image counts over a whole split; reduces once to dataset-level and per-image scores.
    Counts stay on the tensors' device until read, so collecting them never waits for a GPU."""

    def __init__(self):
        self._counts: list[torch.Tensor] = []

    def update(self, prediction: torch.Tensor, truth: torch.Tensor) -> None:
        self._counts.append(confusion_counts(prediction, truth))

    @property
    def per_image_counts(self) -> np.ndarray:
        if not self._counts:
            return np.zeros((0, 3), dtype=np.int64)
        return torch.cat(self._counts).cpu().numpy()

    def dataset_scores(self) -> dict[str, float]:
        """IoU and Dice of the pixel counts summed over every image."""
        iou, dice = iou_dice(self.per_image_counts.sum(0))
        return {"iou": float(iou), "dice": float(dice)}


def summarize(per_image: np.ndarray, worst_fraction: float = 0.05) -> dict[str, float]:
    """Mean, mean of the worst share of images (at least one), and minimum of per-image scores."""
    values = np.sort(np.asarray(per_image, dtype=np.float64))
    n_worst = max(1, int(np.ceil(len(values) * worst_fraction)))
    return {
        "mean": float(values.mean()),
        "worst5pct": float(values[:n_worst].mean()),
        "min": float(values[0]),
    }
