"""Reading and writing images, masks, manifests and JSON. No torch here: the deployed predictor uses it too."""
from __future__ import annotations

import json
import os
import tempfile
from io import BytesIO
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pandas as pd
from PIL import Image, UnidentifiedImageError

from lungseg.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
MANIFEST_COLUMNS = ["name", "source", "label", "split", "lung_fraction", "height", "width", "image_path", "mask_path"]


class ImageReadError(UserError, ValueError):
    """A file that cannot be used as an image or mask; the message names the file and the problem."""


def _open(source: Path | BinaryIO, name: Path | str) -> Image.Image:
    try:
        with Image.open(source) as image:
            image.load()  # decode now, so a truncated file fails here and not later
            return image
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found") from None
    except UnidentifiedImageError:
        raise ImageReadError(f"{name}: not an image file (unrecognised format)") from None
    except Image.DecompressionBombError as err:
        raise ImageReadError(f"{name}: refused, too many pixels ({err})") from None
    except (OSError, SyntaxError, ValueError) as err:
        raise ImageReadError(f"{name}: unreadable or truncated image ({err})") from None


def to_grayscale_uint8(image: Image.Image, path: Path | str = "image") -> np.ndarray:
    """Convert any supported PIL image to an 8-bit grayscale array (H, W).

    - 8-bit grayscale ('L') is kept as it is.
    - RGB / RGBA / palette / gray+alpha become luma (ITU-R 601) through PIL; alpha is dropped.
    - 16-bit and 32-bit integer grayscale ('I;16*', 'I') are scaled from the full 16-bit range 0..65535
      to 0..255, so an 8-bit image saved as 16 bit (value * 257) reads back unchanged.
    - Float images ('F') are assumed to be in 0..1.
    """
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8).copy()
    if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr", "1"):
        return np.asarray(image.convert("L"), dtype=np.uint8).copy()
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image).astype(np.float64)
        return np.clip(np.rint(values / 257.0), 0, 255).astype(np.uint8)
    if mode == "F":
        values = np.asarray(image, dtype=np.float64)
        return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8)
    raise ImageReadError(f"{path}: unsupported image mode {mode!r}")


def read_grayscale(path: str | Path) -> np.ndarray:
    """Read a PNG/JPEG image as 8-bit grayscale (H, W) uint8."""
    path = Path(path)
    return to_grayscale_uint8(_open(path, path), path)


def decode_grayscale(data: bytes, name: str) -> np.ndarray:
    """Decode PNG/JPEG bytes (e.g. an HTTP request body) as 8-bit grayscale (H, W) uint8."""
    return to_grayscale_uint8(_open(BytesIO(data), name), name)


def read_mask(path: str | Path) -> np.ndarray:
    """Read a binary lung mask as bool (H, W); fails unless the file holds exactly two levels (or all background)."""
    path = Path(path)
    values = read_grayscale(path)
    levels = np.unique(values)
    if len(levels) > 2:
        raise ImageReadError(f"{path}: mask is not binary ({len(levels)} distinct values, expected 2)")
    if len(levels) == 2 and levels[0] != 0:
        raise ImageReadError(f"{path}: mask background must be 0, found levels {levels.tolist()}")
    return values > 0


def write_png(path: str | Path, array: np.ndarray) -> None:
    """Write a uint8 (H, W) / (H, W, 3) or uint16 (H, W) array as PNG, atomically.

    Compression level 1: masks and overlays compress nearly as well as at PIL's default 6, several times faster.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".png", delete=False) as tmp:
        Image.fromarray(np.ascontiguousarray(array)).save(tmp, format="PNG", compress_level=1)
    os.replace(tmp.name, path)


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically, so a crash never leaves a half-written file behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".json", delete=False) as tmp:
        json.dump(data, tmp, indent=2, sort_keys=False)
        tmp.write("\n")
    os.replace(tmp.name, path)


def read_json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text())


def write_csv(path: str | Path, table: pd.DataFrame) -> None:
    """Write a table as CSV, atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".csv", delete=False) as tmp:
        table.to_csv(tmp, index=False, float_format="%.6f")
    os.replace(tmp.name, path)


def write_manifest(path: str | Path, manifest: pd.DataFrame) -> None:
    write_csv(path, manifest[MANIFEST_COLUMNS])


def read_manifest(path: str | Path) -> pd.DataFrame:
    manifest = pd.read_csv(path)
    missing = set(MANIFEST_COLUMNS) - set(manifest.columns)
    if missing:
        raise ValueError(f"{path}: manifest lacks columns {sorted(missing)}")
    return manifest
