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
    postprocess: bool,
) -> pd.DataFrame:
    """Segment every row's image at full size and score it against its mask, with and without post-processing.

    One row per image: name, source, label, truth_pixels, and for each variant ('raw', 'post') the
    intersection and predicted pixel counts, IoU and Dice; the unsuffixed columns hold the variant that
    `postprocess` selects, the one the exported model applies.
    """
    rows = []
    records = list(manifest.itertuples())
    for start in range(0, len(records), batch_size):
        chunk = records[start : start + batch_size]
        images = [read_grayscale(r.image_path) for r in chunk]
        predictions = imaging.segment(images, run_model, image_size, threshold, batch_size, postprocess=False)
        for record, raw in zip(chunk, predictions):
            truth = torch.from_numpy(read_mask(record.mask_path)[None])
            row = {"name": record.name, "source": record.source, "label": record.label}
            for variant, prediction in (("raw", raw), ("post", imaging.keep_lungs(raw))):
                counts = confusion_counts(torch.from_numpy(prediction[None]), truth)[0].numpy()
                iou, dice = iou_dice(counts)
                row.update({"truth_pixels": int(counts[1]), f"intersection_{variant}": int(counts[0]),
                            f"predicted_pixels_{variant}": int(counts[2]), f"iou_{variant}": float(iou),
                            f"dice_{variant}": float(dice)})
            rows.append(row)
    table = pd.DataFrame(rows)
    chosen = _variant(table, "post" if postprocess else "raw")
    return table.assign(**{column: chosen[column] for column in VARIANT_COLUMNS})


VARIANT_COLUMNS = ("intersection", "predicted_pixels", "iou", "dice")


def _variant(per_image: pd.DataFrame, variant: str) -> pd.DataFrame:
    """The per-image table with one variant's columns ('raw' or 'post') under the unsuffixed names."""
    return per_image.assign(**{column: per_image[f"{column}_{variant}"] for column in VARIANT_COLUMNS})


def _scores(per_image: pd.DataFrame, prefix: str) -> dict[str, float]:
    counts = per_image[["intersection", "truth_pixels", "predicted_pixels"]].to_numpy().sum(0)
    iou, dice = iou_dice(counts)
    scores = {f"{prefix}/dice": float(dice), f"{prefix}/iou": float(iou), f"{prefix}/images": int(len(per_image))}
    for metric in ("dice", "iou"):
        for name, value in summarize(per_image[metric].to_numpy()).items():
            scores[f"{prefix}/{metric}_{name}"] = value
    return scores


def split_metrics(per_image: pd.DataFrame, split: str = "test") -> dict[str, float]:
    """Dataset-level IoU/Dice (pixel counts summed) plus per-image mean, worst 5% and minimum, overall and per
    source, for the chosen variant; and the whole split's scores with post-processing off and on."""
    metrics = _scores(per_image, split)
    for source, part in per_image.groupby("source", sort=True):
        metrics.update(_scores(part, f"{split}/{source}"))
    for variant, name in (("raw", "postprocess_off"), ("post", "postprocess_on")):
        scores = _scores(_variant(per_image, variant), f"{split}/{name}")
        metrics.update({k: v for k, v in scores.items() if k.rsplit("/", 1)[1] in ("dice", "iou", "dice_worst5pct")})
    return metrics


def pick_cases(per_image: pd.DataFrame) -> list[tuple[str, str]]:
    """(role, name) of the best, median and worst image by Dice."""
    ranked = per_image.sort_values(["dice", "name"], ascending=[False, True]).reset_index(drop=True)
    return [("best", ranked.loc[0, "name"]), ("median", ranked.loc[len(ranked) // 2, "name"]),
            ("worst", ranked.loc[len(ranked) - 1, "name"])]


def segment_one(image: np.ndarray, run_model: Callable[[np.ndarray], np.ndarray], image_size: int,
                threshold: float, postprocess: bool) -> np.ndarray:
    """One gray image -> its bool mask at full size, as the exported model makes it."""
    return imaging.segment([image], run_model, image_size, threshold, batch_size=1, postprocess=postprocess)[0]
