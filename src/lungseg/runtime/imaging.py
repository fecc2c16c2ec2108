"""From an X-ray's pixels to the model's input and from its output back to a mask: the one path that training,
evaluation, export checks and deployment share.

Pure NumPy/OpenCV, no torch, so the deployed ONNX predictor applies exactly the same operations.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, NamedTuple

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


class Regions(NamedTuple):
    """The 8-connected regions of a mask, from one connected-components pass: labels (H, W) int32 with 0 =
    background, and for regions 1..N their areas (N,), bounding boxes (N, 4) as top, bottom, left, right (bottom
    and right exclusive) and the columns of their centres (N,)."""

    labels: np.ndarray
    areas: np.ndarray
    boxes: np.ndarray
    centres: np.ndarray


def regions(mask: np.ndarray) -> Regions:
    """The 8-connected regions of a bool (H, W) mask."""
    _, labels, stats, centroids = cv2.connectedComponentsWithStats(mask.astype(np.uint8), connectivity=8)
    x, y, w, h = (stats[1:, column] for column in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH,
                                                     cv2.CC_STAT_HEIGHT))
    return Regions(labels, stats[1:, cv2.CC_STAT_AREA], np.stack([y, y + h, x, x + w], axis=1), centroids[1:, 0])


def fill_holes(mask: np.ndarray) -> np.ndarray:
    """Background pixels not 4-connected to the image border become foreground."""
    canvas = np.pad(mask, 1).astype(np.uint8)  # a background frame joins every outside region
    cv2.floodFill(canvas, None, (0, 0), 2)
    return canvas[1:-1, 1:-1] != 2


def keep_lungs(mask: np.ndarray, count: int = 2) -> np.ndarray:
    """Post-processing: keep the `count` largest 8-connected regions, then fill their holes."""
    components = regions(mask)
    if len(components.areas) > count:
        keep = np.zeros(len(components.areas) + 1, dtype=bool)
        keep[np.argsort(components.areas)[::-1][:count] + 1] = True
        mask = keep[components.labels]
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


class Box(NamedTuple):
    """A region of an image: rows top..bottom-1, columns left..right-1."""

    top: int
    bottom: int
    left: int
    right: int


@dataclass(frozen=True)
class Framed:
    """The model's (S, S) lung probabilities for one region of an image (the whole image, or the lungs'
    neighbourhood after a first pass)."""

    probabilities: np.ndarray
    box: Box

    def full_size(self, height: int, width: int) -> np.ndarray:
        """(height, width) probabilities: the region's upsampled into place, 0 outside it."""
        top, bottom, left, right = self.box
        region = upsample(self.probabilities, bottom - top, right - left)
        if region.shape == (height, width):
            return region
        canvas = np.zeros((height, width), np.float32)
        canvas[top:bottom, left:right] = region
        return canvas


def lung_box(probabilities: np.ndarray, threshold: float, margin: float, height: int, width: int) -> Box | None:
    """The box in a (height, width) image around the two largest lung regions (8-connected, holes filled) of its
    (S, S) probabilities: found at the probabilities' resolution, scaled by height/S and width/S, widened by
    `margin` x its height and width on each side, rounded outwards and clipped to the image. None when no lung
    was found."""
    lungs = largest_regions_box(regions(probabilities > threshold))
    if lungs is None:
        return None
    scale_y, scale_x = height / probabilities.shape[0], width / probabilities.shape[1]
    edges = tuple(side * scale for side, scale in zip(lungs, (scale_y, scale_y, scale_x, scale_x)))
    return widened(edges, margin, height, width)


def largest_regions_box(components: Regions, count: int = 2) -> Box | None:
    """The bounding box of the `count` largest regions (the lungs after keep_lungs, whose hole filling moves no
    box edge); None without regions."""
    if not len(components.areas):
        return None
    boxes = components.boxes[np.argsort(components.areas)[::-1][:count]]
    return Box(int(boxes[:, 0].min()), int(boxes[:, 1].max()), int(boxes[:, 2].min()), int(boxes[:, 3].max()))


def widened(edges: tuple[float, float, float, float], margin: float, height: int, width: int) -> Box:
    """A box's edges (top, bottom, left, right; fractional allowed) widened by `margin` x its height and width
    on each side, rounded outwards, clipped to a (height, width) image."""
    top, bottom, left, right = edges
    grow_y, grow_x = margin * (bottom - top), margin * (right - left)
    return Box(max(0, int(top - grow_y)), min(height, int(np.ceil(bottom + grow_y))),
               max(0, int(left - grow_x)), min(width, int(np.ceil(right + grow_x))))


BOX_SHARE_MARGIN = 0.1  # the lung box of lung_box_share, widened as the default second pass widens it


def lung_box_share(mask: np.ndarray, components: Regions) -> float | None:
    """The share of lung in the mask's own lung box (its two largest regions, `components` = regions(mask),
    widened by BOX_SHARE_MARGIN per side): how lung-shaped a mask is, whatever part of the film the thorax
    fills. None for an empty mask."""
    lungs = largest_regions_box(components)
    if lungs is None:
        return None
    top, bottom, left, right = widened(lungs, BOX_SHARE_MARGIN, *mask.shape)
    return float(np.count_nonzero(mask[top:bottom, left:right]) / ((bottom - top) * (right - left)))


def predict_framed(
    images: list[np.ndarray], run_model: Callable[[np.ndarray], np.ndarray], image_size: int, intensity: str,
    threshold: float, lung_crop_margin: float | None, batch_size: int,
) -> list[Framed]:
    """Gray uint8 images of any size -> the model's probabilities and the region they cover.

    With a lung_crop_margin, a second pass: the model runs again on the lungs' box from the first pass, widened by
    the margin, cut from the full-resolution image. The lungs then fill the model's input whether the thorax
    fills the film or half of it, so a small thorax gets the input's resolution instead of a fraction of it. An
    image keeps its first pass where that finds no lung, or where the second finds none in the box (a speck
    magnified to the whole input).
    """
    first = predict_probabilities(images, run_model, image_size, intensity, batch_size)
    return second_pass(images, first, run_model, image_size, intensity, threshold, lung_crop_margin, batch_size)


def second_pass(
    images: list[np.ndarray], first: list[np.ndarray], run_model: Callable[[np.ndarray], np.ndarray],
    image_size: int, intensity: str, threshold: float, lung_crop_margin: float | None, batch_size: int,
) -> list[Framed]:
    """predict_framed after its first pass (`first`: predict_probabilities of the images), so that several
    margins can share one first pass."""
    whole = [Framed(p, Box(0, image.shape[0], 0, image.shape[1])) for p, image in zip(first, images)]
    if lung_crop_margin is None:
        return whole
    boxes = [lung_box(p, threshold, lung_crop_margin, *image.shape) for p, image in zip(first, images)]
    crops = [image[box.top : box.bottom, box.left : box.right] for image, box in zip(images, boxes)
             if box is not None]
    second = iter(predict_probabilities(crops, run_model, image_size, intensity, batch_size))
    framed = [Framed(next(second), box) if box is not None else one for one, box in zip(whole, boxes)]
    return [two if (two.probabilities > threshold).any() else one for one, two in zip(whole, framed)]


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
    lung_crop_margin: float | None = None,
) -> list[np.ndarray]:
    """Gray uint8 images of any size -> bool lung masks of the same sizes: the one inference path that
    evaluation, export checks and deployment share (see predict_framed for lung_crop_margin)."""
    framed = predict_framed(images, run_model, image_size, intensity, threshold, lung_crop_margin, batch_size)
    return framed_masks(framed, images, threshold, postprocess)


def framed_masks(framed: list[Framed], images: list[np.ndarray], threshold: float,
                 postprocess: bool) -> list[np.ndarray]:
    """predict_framed's results -> bool lung masks of the images' sizes."""
    return [to_mask(f.full_size(*image.shape), threshold, postprocess) for f, image in zip(framed, images)]
