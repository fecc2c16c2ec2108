"""How the deployed model holds up on films unlike its training data: the test split under every perturbation,
segmented by the exported ONNX model exactly as `lungseg predict` does, scored at the masks' resolution.

Per perturbation: dataset Dice (counts summed), its drop from the clean score, the worst image and the
images with an empty prediction. Over all perturbed images: how well the QA flag `needs_review` finds the
failures (Dice below REVIEW_DICE): its precision and recall.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from lungseg.data import read_mask
from lungseg.evaluation import score_masks
from lungseg.metrics import iou_dice
from lungseg.perturbations import PERTURBATIONS, perturbed
from lungseg.runtime.decode import Xray, read_grayscale
from lungseg.runtime.predict import Segmenter

CLEAN = "clean"
REVIEW_DICE = 0.9  # a result below this Dice is a failure a reader should be sent to


def score(rows: pd.DataFrame, segmenter: Segmenter, seed: int) -> pd.DataFrame:
    """One row per (condition, image): counts, IoU, Dice, whether the mask is empty, the QA decision."""
    scored = []
    for index, record in enumerate(rows.itertuples()):
        image, truth = read_grayscale(record.image_path), read_mask(record.mask_path)
        conditions = [(CLEAN, image, truth)] + [
            (p.name, *perturbed(image, truth, p, seed, index)) for p in PERTURBATIONS]
        for condition, pixels, target in conditions:
            prediction = segmenter.predict(Xray(pixels, "png"))
            scored.append({"condition": condition, "name": record.name, "source": record.source,
                           **score_masks(prediction.mask, target), "empty": not prediction.mask.any(),
                           "needs_review": bool(prediction.fields["needs_review"])})
    return pd.DataFrame(scored)


def _dataset_dice(part: pd.DataFrame) -> float:
    return float(iou_dice(part[["intersection", "truth_pixels", "predicted_pixels"]].to_numpy().sum(0))[1])


def summarize(per_image: pd.DataFrame) -> dict:
    """robustness/<condition>/{dice, dice_drop, dice_min, empty}, and over all perturbed images the QA flag's
    precision and recall at finding Dice < REVIEW_DICE, and the largest drop."""
    clean = _dataset_dice(per_image[per_image["condition"] == CLEAN])
    metrics: dict[str, float] = {}
    for condition, part in per_image.groupby("condition", sort=False):
        dice = _dataset_dice(part)
        metrics.update({f"robustness/{condition}/dice": dice, f"robustness/{condition}/dice_drop": clean - dice,
                        f"robustness/{condition}/dice_min": float(part["dice"].min()),
                        f"robustness/{condition}/empty": int(part["empty"].sum())})
    perturbed_rows = per_image[per_image["condition"] != CLEAN]
    failures, flagged = perturbed_rows["dice"] < REVIEW_DICE, perturbed_rows["needs_review"]
    metrics.update({
        "robustness/largest_dice_drop": max(metrics[f"robustness/{p.name}/dice_drop"] for p in PERTURBATIONS),
        "robustness/empty_total": int(perturbed_rows["empty"].sum()),
        "robustness/failures": int(failures.sum()),
        "robustness/qa_precision": float((failures & flagged).sum() / flagged.sum()) if flagged.any() else 1.0,
        "robustness/qa_recall": float((failures & flagged).sum() / failures.sum()) if failures.any() else 1.0,
    })
    return metrics


def plot_table(metrics: dict) -> pd.DataFrame:
    """Dice per condition and strength, for the DVC plot and the figure."""
    rows = [{"condition": name.split("/")[0], "strength": int(name.split("/")[1]),
             "dice": metrics[f"robustness/{name}/dice"]} for name in (p.name for p in PERTURBATIONS)]
    return pd.DataFrame(rows)


def example_images(rows: pd.DataFrame, seed: int, index: int = 0) -> list[tuple[str, np.ndarray]]:
    """One test image under every perturbation at its strongest, for a picture of what is scored."""
    record = rows.iloc[index]
    image, truth = read_grayscale(record["image_path"]), read_mask(record["mask_path"])
    return [(p.description, perturbed(image, truth, p, seed, index)[0]) for p in PERTURBATIONS
            if p.name.endswith("/2")]
