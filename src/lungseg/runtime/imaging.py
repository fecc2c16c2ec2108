"""From an X-ray's pixels to the model's input and from its output back to a mask: the one path that training,
evaluation, export checks and deployment share.

Pure NumPy/OpenCV, no torch, so the deployed ONNX predictor applies exactly the same operations.
"""
from __future__ import annotations

from typing import Callable

import cv2
import numpy as np

# Named in the model card so every consumer resizes the same way.
DOWNSAMPLE = "area"
UPSAMPLE = "bilinear"


def resize_image(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W) uint8 -> (size, size) uint8, area interpolation (anti-aliased), aspect ratio not kept."""
    if image.shape == (size, size):
        return image
    return cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)


def resize_mask_soft(mask: np.ndarray, size: int) -> np.ndarray:
    """(H, W) bool -> (size, size) uint8 in 0..255 holding the lung fraction of each output pixel.

    A soft target keeps the sub-pixel boundary position that nearest-neighbour resizing would throw away.
    """
    return resize_image(mask.astype(np.uint8) * 255, size)


def normalise_intensity(image: np.ndarray, method: str) -> np.ndarray:
    """(S, S) uint8 at the model's size -> (S, S) uint8 whose grey levels no longer depend on how the film was
    exposed, windowed or converted.

    'equalize_histogram' maps each grey level to its rank in the image (OpenCV's global histogram
    equalisation): any increasing transform of the grey levels (contrast, offset, gamma, a window) gives the
    same result, up to the levels the input still distinguishes, but large areas outside the thorax (air,
    padding, a frame) take over the mapping. 'equalize_adaptive' first stretches the 1st..99th percentile to
    0..255 (undoing a narrow window or squeezed contrast), then equalises per tile of an 8 x 8 grid with a clip
    limit of 2 (CLAHE), so each region's mapping follows its own neighbourhood. 'none' keeps the pixels.
    """
    if method == "equalize_histogram":
        return cv2.equalizeHist(image)
    if method == "equalize_adaptive":
        low, high = np.percentile(image, (1, 99))
        if high > low:
            image = np.clip(np.rint((image.astype(np.float32) - low) * (255.0 / (high - low))), 0, 255).astype(np.uint8)
        return cv2.createCLAHE(clipLimit=2.0, tileGridSize=(8, 8)).apply(image)
    if method == "none":
        return image
    raise ValueError(f"unknown intensity normalisation {method!r}")


def to_model_input(images: np.ndarray) -> np.ndarray:
    """(N, S, S) uint8 -> (N, 1, S, S) float32 in 0..1: the ONNX model's input."""
    return (images.astype(np.float32) / 255.0)[:, None]


def model_input(images: list[np.ndarray], image_size: int, intensity: str) -> np.ndarray:
    """Gray uint8 images of any size -> (N, 1, S, S) float32: resized, intensity-normalised, scaled to 0..1."""
    return to_model_input(np.stack([normalise_intensity(resize_image(image, image_size), intensity)
                                    for image in images]))


def sigmoid(logits: np.ndarray) -> np.ndarray:
    return (1.0 / (1.0 + np.exp(-logits.astype(np.float32)))).astype(np.float32)


def upsample(probabilities: np.ndarray, height: int, width: int) -> np.ndarray:
    """(S, S) probabilities -> (height, width), bilinear: smooth boundaries at the full resolution."""
    if probabilities.shape == (height, width):
        return probabilities
    return cv2.resize(probabilities, (width, height), interpolation=cv2.INTER_LINEAR)


def regions(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """8-connected regions of a bool mask: (labels (H, W) int32 with 0 = background, areas of regions 1..N)."""
    labels, areas, _ = regions_with_centres(mask)
    return labels, areas


def regions_with_centres(mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """regions() and the column of each region's centre (regions 1..N)."""
    _, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    return labels, stats[1:, cv2.CC_STAT_AREA], centroids[1:, 0]


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels not 4-connected to the image border become foreground."""
    canvas = np.pad(mask, 1).astype(np.uint8)  # a background frame joins every outside region
    cv2.floodFill(canvas, None, (0, 0), 2)
    return canvas[1:-1, 1:-1] != 2


def keep_lungs(mask: np.ndarray, count: int = 2) -> np.ndarray:
    """Post-processing: keep the `count` largest 8-connected regions, then fill their holes."""
    labels, areas = regions(mask)
    if len(areas) > count:
        keep = np.zeros(len(areas) + 1, dtype=bool)
        keep[np.argsort(areas)[::-1][:count] + 1] = True
        mask = keep[labels]
    return fill_holes(mask)


def predict_probabilities(
    images: list[np.ndarray], run_model: Callable[[np.ndarray], np.ndarray], image_size: int, intensity: str,
    batch_size: int,
) -> list[np.ndarray]:
    """Gray uint8 images of any size -> (S, S) float32 lung probabilities at the model's size.

    run_model maps a (N, 1, S, S) float32 batch in 0..1 to (N, S, S) logits: a PyTorch model in evaluation,
    an ONNX Runtime session in deployment.
    """
    probabilities = []
    for start in range(0, len(images), batch_size):
        inputs = model_input(images[start : start + batch_size], image_size, intensity)
        probabilities.extend(sigmoid(run_model(inputs)))  # (N, S, S)
    return probabilities


def to_mask(probabilities: np.ndarray, threshold: float, postprocess: bool) -> np.ndarray:
    """Full-size probabilities -> bool mask; with postprocess the two largest regions, holes filled."""
    mask = probabilities > threshold
    return keep_lungs(mask) if postprocess else mask


def segment(
    images: list[np.ndarray],
    run_model: Callable[[np.ndarray], np.ndarray],
    image_size: int,
    intensity: str,
    threshold: float,
    batch_size: int,
    postprocess: bool,
) -> list[np.ndarray]:
    """Gray uint8 images of any size -> bool lung masks of the same sizes: the one inference path that
    evaluation, export checks and deployment share."""
    probabilities = predict_probabilities(images, run_model, image_size, intensity, batch_size)
    return [
        to_mask(upsample(p, image.shape[0], image.shape[1]), threshold, postprocess)
        for p, image in zip(probabilities, images)
    ]
