"""Any X-ray file a user hands over -> 8-bit grayscale pixels, with the pixel limit checked before decoding.

Formats are recognised by content, not by name: PNG, JPEG, TIFF (Pillow) and DICOM (pydicom; the 'DICM'
preamble, or a dataset that parses without one). What a file holds decides how it is read:
- 8-bit grayscale is kept; RGB/palette/alpha become luma (ITU-R 601), alpha dropped.
- 16-bit grayscale holds N significant bits, N the smallest of 8, 10, 12, 14, 16 that holds the file's
  largest value, and is scaled from 0..2**N-1: 12-bit data in a 16-bit PNG keeps its 4096 levels
  (`bits_stored` in the result says which N was assumed).
- Float images are taken as 0..1 when they lie in it, else stretched from their own min..max.
- DICOM: see lungseg.runtime.dicom.
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from lungseg.errors import UserError
from lungseg.runtime.limits import MAX_PIXELS

RASTER_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff")
RASTER_FORMATS = ("PNG", "JPEG", "TIFF")  # PIL's names (its JPEG decoder also opens MPO, a JPEG with extra pictures)
DICOM_SUFFIXES = (".dcm", ".dicom")
CONTAINER_BITS = (8, 10, 12, 14, 16)


class ImageReadError(UserError, ValueError):
    """A file that cannot be used as an image; the message names the file and the problem."""


class TooLargeError(ImageReadError):
    """An input over one of the limits (pixels, inflated size): refused before it takes the memory."""


class NotAnImage(ImageReadError):
    """A file that is not meant to be an image (a DICOM report, a DICOMDIR, a text file): skipped, not failed."""


@dataclass
class Xray:
    """One decoded X-ray: (H, W) uint8 pixels, what was assumed to get them, and DICOM identity when present."""

    pixels: np.ndarray
    source_format: str  # png | jpeg | tiff | dicom
    bits_stored: int = 8
    dicom: dict = field(default_factory=dict)  # UIDs, view, modality, spacing, orientation (see dicom.py)
    header: object = None  # the pydicom Dataset without pixel data, for DICOM outputs (SEG) that reference it


def check_pixel_count(count: int, name: str) -> None:
    """Refuse before decoding anything that would decode to more than MAX_PIXELS pixels."""
    if count > MAX_PIXELS:
        raise TooLargeError(f"{name}: refused, {count:,} pixels is over the limit of {MAX_PIXELS:,} "
                             f"(a chest film has at most about 20 million)")


def significant_bits(max_value: int) -> int:
    return next((bits for bits in CONTAINER_BITS if max_value < 2**bits), 16)


def to_grayscale_uint8(image: Image.Image, name: str) -> tuple[np.ndarray, int]:
    """A loaded PIL image -> ((H, W) uint8, significant bits assumed)."""
    mode = image.mode
    if mode == "L":
        return np.asarray(image, dtype=np.uint8).copy(), 8
    if mode in ("RGB", "RGBA", "P", "PA", "LA", "CMYK", "YCbCr", "1", "La", "RGBa"):
        return np.asarray(image.convert("L"), dtype=np.uint8).copy(), 8
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        if values.size and values.min() < 0:
            raise ImageReadError(f"{name}: negative pixel values in a grayscale image are not supported")
        bits = significant_bits(int(values.max()) if values.size else 0)
        scaled = values.astype(np.float32) * (255.0 / (2**bits - 1))
        return np.clip(np.rint(scaled), 0, 255).astype(np.uint8), bits
    if mode == "F":
        values = np.asarray(image, dtype=np.float32)
        if not np.isfinite(values).all():
            raise ImageReadError(f"{name}: float image holds NaN or infinite values")
        low, high = float(values.min()), float(values.max())
        if low < 0 or high > 1:
            values = (values - low) / (high - low) if high > low else np.zeros_like(values)
        return np.clip(np.rint(values * 255.0), 0, 255).astype(np.uint8), 32
    raise ImageReadError(f"{name}: unsupported image mode {mode!r}")


def _decode_raster(source: Path | io.BytesIO, name: str) -> Xray:
    try:
        with Image.open(source, formats=RASTER_FORMATS) as image:  # no other PIL decoder, whatever the name
            frames = getattr(image, "n_frames", 1)
            check_pixel_count(image.width * image.height, name)
            if frames > 1:
                image.seek(0)  # a multi-page TIFF: the first page is the film
            image.load()  # decode now, so a truncated file fails here and not later
            pixels, bits = to_grayscale_uint8(image, name)
            source_format = (image.format or "image").lower()
    except ImageReadError:
        raise
    except FileNotFoundError:
        raise ImageReadError(f"{name}: file not found") from None
    except UnidentifiedImageError:
        if isinstance(source, io.BytesIO):
            head = source.getvalue()[:8]
        else:
            with open(source, "rb") as handle:
                head = handle.read(8)
        if looks_like_raster(head):  # the signature says PNG/JPEG/TIFF, the rest does not follow
            raise ImageReadError(f"{name}: unreadable or truncated image (its {head[:4]!r} signature is not "
                                 f"followed by valid data)") from None
        raise ImageReadError(f"{name}: not an image file (unrecognised format)") from None
    except Image.DecompressionBombError:
        raise TooLargeError(f"{name}: refused, too many pixels (over the limit of {MAX_PIXELS:,})") from None
    except (OSError, SyntaxError, ValueError, MemoryError, EOFError) as err:
        # PIL's own wording counts bytes of its buffer, not of the file: leave it out
        if "truncated" in str(err).lower():
            raise ImageReadError(f"{name}: truncated image file (the data ends before the image does)") from None
        raise ImageReadError(f"{name}: unreadable or truncated image ({err})") from None
    if pixels.ndim != 2 or min(pixels.shape) < 1:
        raise ImageReadError(f"{name}: image has no pixels (shape {pixels.shape})")
    return Xray(pixels, "jpeg" if source_format == "mpo" else source_format, bits)


RASTER_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"II*\x00", b"MM\x00*")


def looks_like_raster(head: bytes) -> bool:
    return head.startswith(RASTER_MAGIC)


def read_xray(path: str | Path) -> Xray:
    """Read an X-ray file by its content. Raises ImageReadError (or NotAnImage for files to skip)."""
    path = Path(path)
    try:
        with open(path, "rb") as handle:
            head = handle.read(132)
    except FileNotFoundError:
        raise ImageReadError(f"{path}: file not found") from None
    except OSError as err:
        raise ImageReadError(f"{path}: cannot read ({err.strerror or err})") from None
    if not head:
        raise ImageReadError(f"{path}: empty file (0 bytes)")
    if looks_like_raster(head):
        return _decode_raster(path, str(path))
    from lungseg.runtime import dicom  # pydicom only when a file may be DICOM

    if dicom.looks_like_dicom(head) or path.suffix.lower() in DICOM_SUFFIXES:
        return dicom.read_dicom(path)
    if dicom.parses_as_dicom(path):
        return dicom.read_dicom(path)
    if path.suffix.lower() in RASTER_SUFFIXES:
        return _decode_raster(path, str(path))  # names the problem: truncated, unrecognised, ...
    raise NotAnImage(f"{path}: not an image (neither PNG, JPEG, TIFF nor DICOM)")


def decode_xray(data: bytes, name: str) -> Xray:
    """The same for bytes, e.g. an HTTP request body."""
    if not data:
        raise ImageReadError(f"{name}: empty file (0 bytes)")
    if looks_like_raster(data[:8]):
        return _decode_raster(io.BytesIO(data), name)
    from lungseg.runtime import dicom  # pydicom only when the bytes may be DICOM

    if dicom.looks_like_dicom(data[:132]) or dicom.parses_as_dicom(io.BytesIO(data)):
        return dicom.read_dicom_bytes(data, name)
    raise ImageReadError(f"{name}: not an image file (unrecognised format; send PNG, JPEG, TIFF or DICOM)")


def read_grayscale(path: str | Path) -> np.ndarray:
    """(H, W) uint8 pixels of any supported X-ray file."""
    return read_xray(path).pixels
