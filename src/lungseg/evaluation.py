"""Scoring a model on a split at the masks' stored resolution: per image, per source, whole split."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import pandas as pd
import torch

from lungseg.checkpoint import Checkpoint
from lungseg.data import read_mask
from lungseg.metrics import iou_dice, summarize
from lungseg.model import torch_runner
from lungseg.runtime import imaging
from lungseg.runtime.decode import read_grayscale


@dataclass(frozen=True)
class Inference:
    """How a model is run on X-rays: the model function and the settings from its checkpoint and params."""

    run_model: Callable[[np.ndarray], np.ndarray]  # (N, 1, S, S) float32 in 0..1 -> (N, S, S) logits
    image_size: int
    intensity: str
    threshold: float
    postprocess: bool
    batch_size: int = 16
    lung_crop_margin: float | None = None  # None: one pass; a number: a second on the lungs' box (predict_framed)

    def segment(self, images: list[np.ndarray], postprocess: bool | None = None) -> list[np.ndarray]:
        return imaging.segment(images, self.run_model, self.image_size, self.intensity, self.threshold,
                               self.batch_size, self.postprocess if postprocess is None else postprocess,
                               self.lung_crop_margin)


def score_masks(prediction: np.ndarray, truth: np.ndarray) -> dict:
    """One image's counts and scores: intersection, truth and predicted pixels, IoU, Dice."""
    counts = np.array([np.count_nonzero(prediction & truth), np.count_nonzero(truth), np.count_nonzero(prediction)])
    iou, dice = iou_dice(counts)
    return {"truth_pixels": int(counts[1]), "intersection": int(counts[0]), "predicted_pixels": int(counts[2]),
            "iou": float(iou), "dice": float(dice)}


def score_split(manifest: pd.DataFrame, inference: Inference) -> pd.DataFrame:
    """Segment every row's image at full size and score it against its mask, with and without post-processing.

    One row per image: name, source, label, truth_pixels, and for each variant ('raw', 'post') the
    intersection and predicted pixel counts, IoU and Dice; the unsuffixed columns hold the variant that
    `postprocess` selects, the one the exported model applies.
    """
    rows = []
    records = list(manifest.itertuples())
    for start in range(0, len(records), inference.batch_size):
        chunk = records[start : start + inference.batch_size]
        predictions = inference.segment([read_grayscale(r.image_path) for r in chunk], postprocess=False)
        for record, raw in zip(chunk, predictions):
            truth = read_mask(record.mask_path)
            row = {"name": record.name, "source": record.source, "label": record.label}
            for variant, prediction in (("raw", raw), ("post", imaging.keep_lungs(raw))):
                scores = score_masks(prediction, truth)
                row["truth_pixels"] = scores.pop("truth_pixels")
                row.update({f"{key}_{variant}": value for key, value in scores.items()})
            rows.append(row)
    table = pd.DataFrame(rows)
    chosen = _variant(table, "post" if inference.postprocess else "raw")
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


def case_panels(per_image: pd.DataFrame, split_rows: pd.DataFrame, inference: Inference) -> list[tuple]:
    """(title, image, truth, prediction) of the best, median and worst image, for figures.cases_figure."""
    rows, dice = split_rows.set_index("name"), per_image.set_index("name")["dice"]
    panels = []
    for role, name in pick_cases(per_image):
        image, truth = read_grayscale(rows.loc[name, "image_path"]), read_mask(rows.loc[name, "mask_path"])
        panels.append((f"{role}: {name}\nDice {dice[name]:.4f}", image, truth, inference.segment([image])[0]))
    return panels


def checkpoint_inference(trained: Checkpoint, threshold: float, postprocess: bool, batch_size: int,
                         lung_crop_margin: float | None, device: torch.device | str = "cpu") -> Inference:
    """The trained model of a checkpoint, run in PyTorch with its own image size and intensity handling."""
    return Inference(torch_runner(trained.build_model(), device), trained.params.train.image_size,
                     trained.params.model.intensity, threshold, postprocess, batch_size, lung_crop_margin)
