"""DICOM X-rays -> 8-bit grayscale, the way a radiologist's viewer shows them (pydicom).

Order of operations (DICOM PS3.3 C.11): Modality LUT (or rescale slope/intercept), then the first VOI LUT or
window (centre/width), then MONOCHROME1 is inverted so that bone is bright as in MONOCHROME2. Without a VOI
transform the image's own min..max is used. RGB secondary captures become luma.

Safety: the header is read first and Rows x Columns x frames is checked against the pixel limit before any
pixel data is decoded; a deflated dataset is refused when it would inflate beyond what such a film needs;
objects without an image (reports, presentation states, DICOMDIR, segmentations) raise NotAnImage and are
skipped; anything malformed raises ImageReadError naming the file.
Compressed transfer syntaxes decode when the `[dicom]` extra's plugins are installed (pylibjpeg and friends).
"""
from __future__ import annotations

import io
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.pixels import apply_modality_lut, apply_windowing

from lungseg.runtime import dicom_codecs
from lungseg.runtime.decode import ImageReadError, NotAnImage, TooLargeError, Xray, check_pixel_count
from lungseg.runtime.limits import MAX_INFLATED_DICOM_BYTES

dicom_codecs.register()


class InflatedTooLarge(Exception):
    """A deflated dataset that inflates beyond MAX_INFLATED_DICOM_BYTES."""


class _BoundedZlib:
    """pydicom inflates a deflated dataset whole, with `zlib.decompress` in pydicom.filereader, whatever its
    file meta looks like, so a 1 MB file can take gigabytes. Standing in for that module's zlib, this stops at
    MAX_INFLATED_DICOM_BYTES; everything else is zlib's own."""

    def __getattr__(self, attribute: str):
        return getattr(zlib, attribute)

    @staticmethod
    def decompress(data: bytes, wbits: int = zlib.MAX_WBITS, bufsize: int = zlib.DEF_BUF_SIZE) -> bytes:
        inflater = zlib.decompressobj(wbits)
        inflated = inflater.decompress(data, MAX_INFLATED_DICOM_BYTES + 1)
        if len(inflated) > MAX_INFLATED_DICOM_BYTES:
            raise InflatedTooLarge(f"its deflated dataset inflates to over the limit of "
                                   f"{MAX_INFLATED_DICOM_BYTES:,} bytes")
        return inflated + inflater.flush()


pydicom.filereader.zlib = _BoundedZlib()

GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422")
# SOP classes that carry no X-ray to segment, by UID prefix (PS3.4 B.5): segmentations and other derived
# objects, presentation states, structured reports, encapsulated documents, radiotherapy objects.
NOT_XRAY_PREFIXES = {
    "1.2.840.10008.5.1.4.1.1.66": "a segmentation or other derived object",
    "1.2.840.10008.5.1.4.1.1.11": "a presentation state",
    "1.2.840.10008.5.1.4.1.1.88": "a structured report",
    "1.2.840.10008.5.1.4.1.1.104": "an encapsulated document",
    "1.2.840.10008.5.1.4.1.1.481": "a radiotherapy object",
}
MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR
MAX_PIXEL_SPACING_MM = 10.0  # chest detectors have 0.1-0.2 mm pixels
IDENTITY_KEYWORDS = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID", "Modality",
                     "ViewPosition", "ImageLaterality", "FrameOfReferenceUID")
PATIENT_KEYWORDS = ("PatientID", "PatientName", "AccessionNumber")


def looks_like_dicom(head: bytes) -> bool:
    """DICOM Part 10 files carry 'DICM' after a 128-byte preamble."""
    return len(head) >= 132 and head[128:132] == b"DICM"


def parses_as_dicom(source: str | Path | BinaryIO) -> bool:
    """A file without the preamble that still parses as a DICOM dataset with an identity or an image size."""
    try:
        ds = pydicom.dcmread(source, force=True, stop_before_pixels=True,
                             specific_tags=["SOPClassUID", "Rows", "Columns"])
        return bool(ds.get("SOPClassUID") or (ds.get("Rows") and ds.get("Columns")))
    except InflatedTooLarge:
        return True  # a deflated DICOM: reading it names the file and the limit
    except Exception:  # anything pydicom cannot parse is simply not DICOM
        return False


def _not_an_xray(ds: pydicom.Dataset, name: str) -> None:
    media_class = str(getattr(getattr(ds, "file_meta", None), "MediaStorageSOPClassUID", ""))
    if media_class == MEDIA_DIRECTORY or "DirectoryRecordSequence" in ds:
        raise NotAnImage(f"{name}: a DICOMDIR (an index of other files, no image)")
    sop_class = str(ds.get("SOPClassUID", media_class))
    for prefix, kind in NOT_XRAY_PREFIXES.items():
        if sop_class.startswith(prefix):
            raise NotAnImage(f"{name}: {kind} ({pydicom.uid.UID(sop_class).name}), not an X-ray")
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        kind = pydicom.uid.UID(sop_class).name if sop_class else "no SOP class"
        if "Rows" in ds or "Image Storage" in kind:  # an image whose pixels are missing: a broken file
            raise ImageReadError(f"{name}: DICOM image ({kind}) without pixel data: truncated or incomplete file")
        raise NotAnImage(f"{name}: DICOM object without pixel data ({kind})")


def _check_header(ds: pydicom.Dataset, name: str) -> None:
    """Size and layout from the header alone, before any pixel data is decoded."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
    except (AttributeError, TypeError, ValueError) as err:
        raise ImageReadError(f"{name}: DICOM image size missing or malformed ({err})") from None
    if min(rows, columns, frames, samples) < 1:
        raise ImageReadError(f"{name}: DICOM image size {rows}x{columns}, {frames} frame(s), {samples} sample(s) "
                             f"is empty")
    check_pixel_count(rows * columns * frames, name)
    if frames != 1:
        raise ImageReadError(f"{name}: DICOM holds {frames} frames; a chest X-ray has one")
    photometric = str(ds.get("PhotometricInterpretation", ""))
    if photometric not in GRAYSCALE + COLOUR:
        raise ImageReadError(f"{name}: DICOM photometric interpretation {photometric or 'missing'!r} is not "
                             f"supported (expected {', '.join(GRAYSCALE + COLOUR)})")


def _rescale(values: np.ndarray, low: float, high: float) -> np.ndarray:
    if not (np.isfinite(low) and np.isfinite(high)) or high <= low:
        return np.zeros(values.shape, dtype=np.uint8)
    scaled = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def _voi_lut(item: pydicom.Dataset, name: str):
    """The first VOI LUT as a function, and its output bit depth (PS3.3 C.11.2.1.1).

    Applied here rather than with pydicom's apply_voi, which indexes an 8-bit LUT with 8-bit integers and so
    wraps inputs above 255 (the common 12-bit-in, 8-bit-out LUT).
    """
    if "LUTDescriptor" not in item or "LUTData" not in item or item.LUTData is None:
        raise ImageReadError(f"{name}: VOI LUT without LUTDescriptor or LUTData")
    entries, first_mapped, depth = (int(v) for v in item.LUTDescriptor)
    entries = entries or 65536  # 0 means 2**16 entries
    if not 1 <= depth <= 16:
        raise ImageReadError(f"{name}: VOI LUT output depth {depth} bits is not 1..16")
    data = item.LUTData
    table = np.frombuffer(data, dtype="<u2") if isinstance(data, bytes) else np.asarray(data, dtype=np.int64).ravel()
    if len(table) < entries:
        raise ImageReadError(f"{name}: VOI LUT holds {len(table)} entries, its descriptor says {entries}")
    table = table[:entries].astype(np.float32)
    return (lambda values: table[np.clip(np.asarray(values) - first_mapped, 0, entries - 1).astype(np.int64)]), depth


def _to_grayscale(ds: pydicom.Dataset, pixels: np.ndarray, name: str) -> np.ndarray:
    photometric = str(ds.PhotometricInterpretation)
    if photometric in COLOUR:
        # pydicom converts YBR to RGB when decoding; one channel at a time keeps a 50-megapixel film's float
        # copy at one plane
        luma = pixels[..., 0] * np.float32(0.299)
        luma += pixels[..., 1] * np.float32(0.587)
        luma += pixels[..., 2] * np.float32(0.114)
        return _rescale(luma, 0, 2 ** int(ds.get("BitsStored", 8)) - 1)
    values = apply_modality_lut(pixels, ds)
    if ds.get("VOILUTSequence"):
        lut, depth = _voi_lut(ds.VOILUTSequence[0], name)
        gray = _rescale(lut(values), 0, 2**depth - 1)
    elif "WindowCenter" in ds and "WindowWidth" in ds:
        widths = ds.WindowWidth if ds["WindowWidth"].VM > 1 else [ds.WindowWidth]
        if not widths or float(widths[0]) < 1:
            raise ImageReadError(f"{name}: DICOM window width {widths[0] if widths else 'missing'} is invalid "
                                 f"(must be >= 1)")
        # The window maps everything into its output range; its ends are where extreme inputs land.
        low, high = apply_windowing(np.array([-1e12, 1e12]), ds)
        gray = _rescale(apply_windowing(values, ds), min(low, high), max(low, high))
    else:
        gray = _rescale(values, float(values.min()), float(values.max()))
    return 255 - gray if photometric == "MONOCHROME1" else gray


def identity(ds: pydicom.Dataset) -> dict:
    """What links a result back to its study: UIDs, modality, view, pixel spacing in mm, patient fields."""
    found = {key: str(ds.get(key, "")) for key in IDENTITY_KEYWORDS + PATIENT_KEYWORDS}
    found["PatientOrientation"] = "\\".join(str(v) for v in ds.get("PatientOrientation", []) or [])
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        spacing = ds.get(keyword)
        # finite and at most 10 mm: anything else is a broken header, and areas are left out rather than absurd
        if spacing and len(spacing) == 2 and all(0 < float(v) <= MAX_PIXEL_SPACING_MM for v in spacing):
            found["pixel_spacing_mm"] = (float(spacing[0]), float(spacing[1]))
            found["pixel_spacing_source"] = keyword
            break
    return found


def dataset_to_xray(ds: pydicom.Dataset, name: str) -> Xray:
    """A parsed DICOM dataset -> Xray (pixels (Rows, Columns) uint8, identity, header without pixel data)."""
    _not_an_xray(ds, name)
    _check_header(ds, name)
    try:
        pixels = ds.pixel_array
    except MemoryError:
        raise ImageReadError(f"{name}: not enough memory to decode the DICOM pixel data") from None
    except Exception as err:  # compressed syntaxes without a decoder, truncated or odd-length pixel data, ...
        raise ImageReadError(f"{name}: cannot decode DICOM pixel data ({type(err).__name__}: {err})") from None
    expected = (int(ds.Rows), int(ds.Columns)) + ((3,) if str(ds.PhotometricInterpretation) in COLOUR else ())
    if pixels.shape != expected:
        raise ImageReadError(f"{name}: decoded DICOM pixel data has shape {pixels.shape}, expected {expected}")
    try:
        gray = _to_grayscale(ds, pixels, name)
    except ImageReadError:
        raise
    except Exception as err:  # a short modality LUT, a malformed window, ... : this file only, never the batch
        raise ImageReadError(f"{name}: cannot apply the DICOM's grey-level transforms "
                             f"({type(err).__name__}: {err})") from None
    header = ds.copy()
    for keyword in ("PixelData", "FloatPixelData", "DoubleFloatPixelData"):
        if keyword in header:
            delattr(header, keyword)
    bits = int(ds.get("BitsStored", 8) or 8)
    return Xray(gray, "dicom", bits, identity(ds), header)


def _parse(source: str | Path | BinaryIO, name: str, force: bool) -> pydicom.Dataset:
    try:
        return pydicom.dcmread(source, force=force)
    except InflatedTooLarge as err:
        raise TooLargeError(f"{name}: refused, {err}") from None
    except (InvalidDicomError, OSError, ValueError, AttributeError, EOFError, KeyError, TypeError,
            IndexError, OverflowError, MemoryError, RecursionError) as err:
        raise ImageReadError(f"{name}: unreadable DICOM file ({type(err).__name__}: {err})") from None


def _convert(ds: pydicom.Dataset, name: str) -> Xray:
    """pydicom parses elements lazily, so a malformed element can raise anything on first access: whatever
    it is, it concerns this file only and becomes an ImageReadError naming it."""
    try:
        return dataset_to_xray(ds, name)
    except ImageReadError:
        raise
    except Exception as err:
        raise ImageReadError(f"{name}: malformed DICOM ({type(err).__name__}: {err})") from None


def read_dicom(path: str | Path) -> Xray:
    path = Path(path)
    return _convert(_parse(path, str(path), force=True), str(path))


def read_dicom_bytes(data: bytes, name: str) -> Xray:
    return _convert(_parse(io.BytesIO(data), name, force=True), name)
