"""Pictures for people: augmentation previews, overlays of truth and prediction, curves, histograms."""
from __future__ import annotations

from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")  # files only; never needs a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

TRUTH_COLOUR = np.array([0, 200, 0], dtype=np.float32)  # green
PREDICTION_COLOUR = np.array([230, 40, 200], dtype=np.float32)  # magenta


def overlay(image: np.ndarray, masks: list[np.ndarray], colours: list[np.ndarray], alpha: float = 0.35) -> np.ndarray:
    """(H, W) uint8 gray + bool/soft masks (H, W) -> (H, W, 3) uint8 with each mask tinted in its colour."""
    rgb = np.repeat(image[..., None].astype(np.float32), 3, axis=2)
    for mask, colour in zip(masks, colours):
        weight = alpha * (mask.astype(np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0))[..., None]
        rgb = rgb * (1 - weight) + colour * weight
    return np.clip(rgb, 0, 255).astype(np.uint8)


def grid(tiles: list[np.ndarray], columns: int) -> np.ndarray:
    """Equal-size (H, W, 3) tiles -> one picture, row by row, with a 2-pixel black gap."""
    h, w, _ = tiles[0].shape
    rows = (len(tiles) + columns - 1) // columns
    canvas = np.zeros((rows * (h + 2), columns * (w + 2), 3), dtype=np.uint8)
    for i, tile in enumerate(tiles):
        r, c = divmod(i, columns)
        canvas[r * (h + 2) : r * (h + 2) + h, c * (w + 2) : c * (w + 2) + w] = tile
    return canvas


def augmentation_preview(images: np.ndarray, masks: np.ndarray, pipeline, count: int, seed: int) -> np.ndarray:
    """Grid of `count` augmented training images with their (augmented) masks overlaid in green."""
    pipeline.set_random_seed(seed)
    tiles = []
    for i in range(count):
        out = pipeline(image=images[i % len(images)], mask=masks[i % len(masks)])
        tiles.append(overlay(out["image"], [out["mask"]], [TRUTH_COLOUR]))
    return grid(tiles, columns=int(np.ceil(np.sqrt(count))))


def _save(fig, path: str) -> None:
    """PNG for charts; JPEG (by the path's suffix) for pictures of X-rays, which PNG would make 5x larger."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    extra = {"pil_kwargs": {"quality": 88}} if str(path).endswith((".jpg", ".jpeg")) else {}
    fig.savefig(path, dpi=100, bbox_inches="tight", **extra)
    plt.close(fig)


def training_curves(history: list[dict], path: str) -> None:
    """Loss, IoU and Dice per epoch for train and val (the paper's Figures 3-5) in one PNG."""
    epochs = [row["epoch"] for row in history]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for ax, metric in zip(axes, ("loss", "iou", "dice")):
        for split in ("train", "val"):
            ax.plot(epochs, [row[f"{split}/{metric}"] for row in history], marker="o", label=split)
        ax.set_title({"loss": "Loss", "iou": "IoU", "dice": "Dice"}[metric])
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    _save(fig, path)


def dice_histogram(per_image_dice: np.ndarray, path: str) -> None:
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(per_image_dice, bins=np.linspace(min(0.8, float(per_image_dice.min())), 1.0, 41), color="tab:blue")
    ax.set_xlabel("per-image Dice (test split, 512x512)")
    ax.set_ylabel("images")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    _save(fig, path)


def cases_figure(cases: list[tuple[str, np.ndarray, np.ndarray, np.ndarray]], path: str, size: int = 320) -> None:
    """One panel per (title, image, truth, prediction): truth in green, prediction in magenta, overlap grey-ish."""
    fig, axes = plt.subplots(1, len(cases), figsize=(3.4 * len(cases), 4.0))
    for ax, (title, image, truth, prediction) in zip(np.atleast_1d(axes), cases):
        picture = overlay(image, [truth, prediction], [TRUTH_COLOUR, PREDICTION_COLOUR])
        ax.imshow(cv2.resize(picture, (size, size), interpolation=cv2.INTER_AREA))
        ax.set_title(title, fontsize=9)
        ax.axis("off")
    fig.text(0.5, 0.01, "green: truth   magenta: prediction   (both: grey-violet)", ha="center", fontsize=9)
    fig.tight_layout(rect=(0, 0.04, 1, 1))
    _save(fig, path)


def robustness_bars(table, clean_dice: float, path: str) -> None:
    """Dataset Dice per perturbation at its two strengths, against the clean score and the goal (clean - 0.01)."""
    conditions = list(dict.fromkeys(table["condition"]))
    fig, ax = plt.subplots(figsize=(9, 3.8))
    positions = np.arange(len(conditions))
    for offset, strength in ((-0.2, 1), (0.2, 2)):
        values = [float(table[(table["condition"] == c) & (table["strength"] == strength)]["dice"].iloc[0])
                  for c in conditions]
        ax.bar(positions + offset, values, width=0.4, label=f"strength {strength}")
    ax.axhline(clean_dice, color="black", linewidth=1, label=f"clean test {clean_dice:.4f}")
    ax.axhline(clean_dice - 0.01, color="black", linestyle="--", linewidth=1, label="goal: clean - 0.01")
    ax.set_xticks(positions, [c.replace("_", " ") for c in conditions], rotation=20)
    ax.set_ylim(max(0.0, min(0.8, float(table["dice"].min()) - 0.02)), 1.0)
    ax.set_ylabel("test Dice (512x512)")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower left")
    fig.tight_layout()
    _save(fig, path)


def examples_strip(examples: list[tuple[str, np.ndarray]], path: str, size: int = 160) -> None:
    """Labelled thumbnails in one row: what each perturbation does to a film."""
    fig, axes = plt.subplots(1, len(examples), figsize=(1.9 * len(examples), 2.3))
    for ax, (title, image) in zip(np.atleast_1d(axes), examples):
        ax.imshow(cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA), cmap="gray", vmin=0, vmax=255)
        ax.set_title(title, fontsize=7)
        ax.axis("off")
    fig.tight_layout()
    _save(fig, path)
