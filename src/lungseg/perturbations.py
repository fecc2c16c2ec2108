"""Films as other hospitals make them: seeded perturbations of a test X-ray (and, for geometric ones, its mask).

Each perturbation has two strengths. Grey-level ones change how the film was exposed, windowed or converted
(contrast squeezed to a few grey levels, gamma, a narrow 8-bit window); framing ones change what surrounds the
thorax (a frame, the thorax filling less of the film, burned-in text and markers, rotation). Geometric ones
move the truth mask with the image, so scores stay comparable. Enlarged hearts and AP views cannot be made
from PA films by a transform; they are not simulated.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import cv2
import numpy as np

Transform = Callable[[np.ndarray, np.ndarray, np.random.Generator], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class Perturbation:
    name: str  # e.g. "dark/2"
    description: str
    apply: Transform


def _levels(image: np.ndarray, levels: int) -> np.ndarray:
    """Contrast squeezed around the mean into `levels` grey levels: a washed-out, low-dynamic-range film."""
    mean = float(image.mean())
    squeezed = mean + (image.astype(np.float32) - mean) * (levels / 256.0)
    return np.clip(np.rint(squeezed), 0, 255).astype(np.uint8)


def _gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    table = np.clip(np.rint(255.0 * (np.arange(256) / 255.0) ** gamma), 0, 255).astype(np.uint8)
    return table[image]


def _window(image: np.ndarray, low: int) -> np.ndarray:
    """An 8-bit conversion that uses only the values low..255."""
    return (low + np.rint(image.astype(np.float32) * ((255 - low) / 255.0))).astype(np.uint8)


def _shrink(image: np.ndarray, mask: np.ndarray, fill: float, background: np.ndarray | int) -> tuple:
    """The film scaled to `fill` of each side, centred on `background`; the mask moves with it."""
    height, width = image.shape
    small = (max(1, round(width * fill)), max(1, round(height * fill)))
    top, left = (height - small[1]) // 2, (width - small[0]) // 2
    canvas = np.full_like(image, background) if np.isscalar(background) else background.copy()
    canvas[top : top + small[1], left : left + small[0]] = cv2.resize(image, small, interpolation=cv2.INTER_AREA)
    truth = np.zeros_like(mask)
    truth[top : top + small[1], left : left + small[0]] = cv2.resize(
        mask.astype(np.uint8), small, interpolation=cv2.INTER_NEAREST).astype(bool)
    return canvas, truth


def _frame(image, mask, rng, share: float):
    """A black or white frame (collimation, a scanner's border) of `share` of each side around the film."""
    colour = 0 if rng.random() < 0.5 else 255
    return _shrink(image, mask, 1 - 2 * share, colour)


def _zoom_out(image, mask, rng, fill: float):
    """The thorax filling only `fill` of the film's width and height, the rest soft tissue and air."""
    edge = np.concatenate([image[:8].ravel(), image[-8:].ravel(), image[:, :8].ravel(), image[:, -8:].ravel()])
    surround = rng.normal(float(np.median(edge)), 6.0, image.shape)
    return _shrink(image, mask, fill, np.clip(surround, 0, 255).astype(np.uint8))


MARKER_TEXTS = ("R", "L", "PA ERECT", "AP SUPINE", "PORTABLE", "2026-03-11 14:22", "ID 004512")


def _markers(image, mask, rng, count: int, scale: float):
    """Burned-in text and lead markers near the film's edges, as departments print them."""
    marked = image.copy()
    height, width = image.shape
    size = scale * width / 512
    for index in range(count):
        text = MARKER_TEXTS[int(rng.integers(len(MARKER_TEXTS)))]
        (text_width, text_height), _ = cv2.getTextSize(text, cv2.FONT_HERSHEY_SIMPLEX, size, 2)
        corner = index % 4
        x = int(rng.integers(4, max(5, width // 6))) if corner in (0, 2) else width - text_width - int(
            rng.integers(4, max(5, width // 6)))
        y = text_height + int(rng.integers(4, max(5, height // 10))) if corner in (0, 1) else height - int(
            rng.integers(4, max(5, height // 10)))
        if rng.random() < 0.5:  # a lead marker: a white box with dark text
            cv2.rectangle(marked, (x - 4, y - text_height - 4), (x + text_width + 4, y + 6), 255, -1)
            cv2.putText(marked, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, size, 0, 2, cv2.LINE_AA)
        else:
            cv2.putText(marked, text, (x, y), cv2.FONT_HERSHEY_SIMPLEX, size, 255, 2, cv2.LINE_AA)
    return marked, mask


def _rotate(image, mask, rng, degrees: float):
    angle = degrees if rng.random() < 0.5 else -degrees
    height, width = image.shape
    matrix = cv2.getRotationMatrix2D((width / 2, height / 2), angle, 1.0)
    rotated = cv2.warpAffine(image, matrix, (width, height), flags=cv2.INTER_LINEAR, borderValue=0)
    truth = cv2.warpAffine(mask.astype(np.uint8), matrix, (width, height), flags=cv2.INTER_NEAREST, borderValue=0)
    return rotated, truth.astype(bool)


def _grey(function) -> Transform:
    return lambda image, mask, rng: (function(image), mask)


PERTURBATIONS = [
    Perturbation("low_contrast/1", "contrast squeezed to 32 grey levels", _grey(lambda i: _levels(i, 32))),
    Perturbation("low_contrast/2", "contrast squeezed to 16 grey levels", _grey(lambda i: _levels(i, 16))),
    Perturbation("dark/1", "gamma 2 (darker)", _grey(lambda i: _gamma(i, 2.0))),
    Perturbation("dark/2", "gamma 3 (much darker)", _grey(lambda i: _gamma(i, 3.0))),
    Perturbation("washed_out/1", "gamma 0.5 (brighter)", _grey(lambda i: _gamma(i, 0.5))),
    Perturbation("washed_out/2", "gamma 0.3 (washed out)", _grey(lambda i: _gamma(i, 0.3))),
    Perturbation("narrow_window/1", "8-bit conversion using only values 127-255", _grey(lambda i: _window(i, 127))),
    Perturbation("narrow_window/2", "8-bit conversion using only values 191-255", _grey(lambda i: _window(i, 191))),
    Perturbation("frame/1", "a black or white frame of 5% of each side", lambda i, m, r: _frame(i, m, r, 0.05)),
    Perturbation("frame/2", "a black or white frame of 12% of each side", lambda i, m, r: _frame(i, m, r, 0.12)),
    Perturbation("zoom_out/1", "the thorax filling 75% of the film", lambda i, m, r: _zoom_out(i, m, r, 0.75)),
    Perturbation("zoom_out/2", "the thorax filling 50% of the film", lambda i, m, r: _zoom_out(i, m, r, 0.5)),
    Perturbation("markers/1", "two burned-in labels or lead markers", lambda i, m, r: _markers(i, m, r, 2, 0.6)),
    Perturbation("markers/2", "five larger labels and markers", lambda i, m, r: _markers(i, m, r, 5, 1.0)),
    Perturbation("rotation/1", "rotated by 8 degrees", lambda i, m, r: _rotate(i, m, r, 8.0)),
    Perturbation("rotation/2", "rotated by 15 degrees", lambda i, m, r: _rotate(i, m, r, 15.0)),
]


def perturbed(image: np.ndarray, mask: np.ndarray, perturbation: Perturbation, seed: int, index: int):
    """(image, truth) under `perturbation`, drawn from a generator seeded by (seed, perturbation, image index)."""
    rng = np.random.default_rng([seed, PERTURBATIONS.index(perturbation), index])
    return perturbation.apply(image, mask, rng)
