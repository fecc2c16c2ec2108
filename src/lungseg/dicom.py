"""DICOM X-rays -> 8-bit grayscale, the way a radiologist's viewer shows them (pydicom).

Order of operations (DICOM PS3.3 C.11): Modality LUT (or rescale slope/intercept), then the first VOI LUT or
window (centre/width), then MONOCHROME1 is inverted so that bone is bright as in MONOCHROME2. Without a VOI
transform the image's own min..max is used.
"""
from __future__ import annotations

import io as _io
from pathlib import Path

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_windowing

from lungseg.io import ImageReadError

DICOM_SUFFIXES = (".dcm", ".dicom")
SUPPORTED_PHOTOMETRIC = ("MONOCHROME1", "MONOCHROME2")


def looks_like_dicom(header: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(header) >= 132 and header[128:132] == b"DICM"


def is_dicom_file(path: str | Path) -> bool:
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as handle:
            return looks_like_dicom(handle.read(132))
    except OSError:
        return False


def _rescale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    return np.clip(np.rint((values.astype(np.float64) - low) / (high - low) * 255.0), 0, 255).astype(np.uint8)


def _voi_lut(item: pydicom.Dataset, name: str):
    """The first VOI LUT as a function, and its output bit depth (PS3.3 C.11.2.1.1).

    Applied here rather than with pydicom's apply_voi, which indexes an 8-bit LUT with 8-bit integers and so
    wraps inputs above 255 (the common 12-bit-in, 8-bit-out LUT).
    """
    entries, first_mapped, depth = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # 0 means 2**16 entries
    data = item.LUTData
    table = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data, dtype=np.int64)
    if len(table) < entries:
        raise ImageReadError(f"{name}: VOI LUT holds {len(table)} entries, its descriptor says {entries}")
    table = table[:entries].astype(np.float64)
    return (lambda values: table[np.clip(np.asarray(values) - first_mapped, 0, entries - 1).astype(np.int64)]), depth


def dataset_to_grayscale(ds: pydicom.Dataset, name: str) -> np.ndarray:
    """A parsed DICOM dataset -> (Rows, Columns) uint8."""
    if "PixelData" not in ds:
        raise ImageReadError(f"{name}: DICOM file has no pixel data")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in SUPPORTED_PHOTOMETRIC:
        raise ImageReadError(f"{name}: DICOM photometric interpretation {photometric or 'missing'!r} is not "
                             f"supported (expected {' or '.join(SUPPORTED_PHOTOMETRIC)})")
    try:
        pixels = ds.pixel_array
    except Exception as err:  # compressed syntaxes without a decoder, truncated pixel data, ...
        raise ImageReadError(f"{name}: cannot decode DICOM pixel data ({err})") from None
    if pixels.ndim != 2:
        raise ImageReadError(f"{name}: expected one 2-D frame, got pixel data of shape {pixels.shape}")
    values = apply_modality_lut(pixels, ds)
    if ds.get("VOILUTSequence"):
        lut, depth = _voi_lut(ds.VOILUTSequence[0], name)
        gray = _rescale(lut(values), 0, 2**depth - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        # The window maps everything into its output range; its ends are where extreme inputs land.
        low, high = apply_windowing(np.array([-1e12, 1e12]), ds)
        gray = _rescale(apply_windowing(values, ds), min(low, high), max(low, high))
    else:
        gray = _rescale(values, float(values.min()), float(values.max()))
    return 255 - gray if photometric == "MONOCHROME1" else gray


def read_dicom(path: str | Path) -> np.ndarray:
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, force=path.suffix.lower() in DICOM_SUFFIXES)
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError) as err:
        raise ImageReadError(f"{path}: unreadable DICOM file ({err})") from None
    return dataset_to_grayscale(ds, str(path))


def read_dicom_bytes(data: bytes, name: str) -> np.ndarray:
    try:
        ds = pydicom.dcmread(_io.BytesIO(data))
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError) as err:
        raise ImageReadError(f"{name}: unreadable DICOM data ({err})") from None
    return dataset_to_grayscale(ds, name)
