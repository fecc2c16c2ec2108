"""Scoring a model on a split at the masks' stored resolution: per image, per source, whole split."""
from __future__ import annotations

from typing import Callable

import numpy as np
import pandas as pd
import torch

from lungseg import imaging
from lungseg.io import read_grayscale, read_mask
from lungseg.metrics import confusion_counts, iou_dice, summarize


def score_split(
    manifest: pd.DataFrame,
    run_model: Callable[[np.ndarray], np.ndarray],
    image_size: int,
    threshold: float,
    batch_size: int,
) -> pd.DataFrame:
    """Segment every row's image at full size and score it against its mask.

    Returns one row per image: name, source, label, intersection, truth and predicted pixel counts, iou, dice.
    """
    rows = []
    records = list(manifest.itertuples())
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = [read_grayscale(r.image_path) for r in chunk]
        predictions = imaging.segment(images, run_model, image_size, threshold, batch_size)
        for record, prediction in zip(chunk, predictions):
            truth = read_mask(record.mask_path)
            counts = confusion_counts(torch.from_numpy(prediction[None]), torch.from_numpy(truth[None]))[0].numpy()
            iou, dice = iou_dice(counts)
            rows.append({
                "name": record.name, "source": record.source, "label": record.label,
                "intersection": int(counts[0]), "truth_pixels": int(counts[1]), "predicted_pixels": int(counts[2]),
                "iou": float(iou), "dice": float(dice),
            })
    return pd.DataFrame(rows)


def _scores(per_image: pd.DataFrame, prefix: str) -> dict[str, float]:
    counts = per_image[["intersection", "truth_pixels", "predicted_pixels"]].to_numpy().sum(0)
    iou, dice = iou_dice(counts)
    scores = {f"{prefix}/dice": float(dice), f"{prefix}/iou": float(iou), f"{prefix}/images": int(len(per_image))}
    for metric in ("dice", "iou"):
        for name, value in summarize(per_image[metric].to_numpy()).items():
            scores[f"{prefix}/{metric}_{name}"] = value
    return scores


def split_metrics(per_image: pd.DataFrame, split: str = "test") -> dict[str, float]:
    """Dataset-level IoU/Dice (pixel counts summed) plus per-image mean, worst 5% and minimum, overall and per source."""
    metrics = _scores(per_image, split)
    for source, part in per_image.groupby("source", sort=True):
        metrics.update(_scores(part, f"{split}/{source}"))
    return metrics


def pick_cases(per_image: pd.DataFrame) -> list[tuple[str, str]]:
    """(role, name) of the best, median and worst image by Dice."""
    ranked = per_image.sort_values(["dice", "name"], ascending=[False, True]).reset_index(drop=True)
    return [("best", ranked.loc[0, "name"]), ("median", ranked.loc[len(ranked) // 2, "name"]),
            ("worst", ranked.loc[len(ranked) - 1, "name"])]


def segment_one(image: np.ndarray, run_model: Callable[[np.ndarray], np.ndarray], image_size: int,
                threshold: float) -> np.ndarray:
    """One gray image -> its bool mask at full size, exactly as score_split segments it."""
    return imaging.segment([image], run_model, image_size, threshold, batch_size=1)[0]
