"""DICOM files for tests, built with pydicom from real shipped X-rays: plain, windowed, VOI LUT, MONOCHROME1,
every compressed transfer syntax lungseg reads, and objects that are not images (SR, DICOMDIR)."""
from __future__ import annotations

from pathlib import Path

import imagecodecs
import numpy as np
from pydicom import uid
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate

DX_STORAGE = uid.DigitalXRayImageStorageForPresentation


def make_dicom(path, stored: np.ndarray, bits: int, photometric: str = "MONOCHROME2", window=None,
               voi_lut=None, pixels: bool = True, **attributes) -> Path:
    """An uncompressed 16-bit-allocated DX file holding `stored` with `bits` significant bits."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = DX_STORAGE, meta.MediaStorageSOPInstanceUID, "DX"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, photometric
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, bits, bits - 1, 0
    if window is not None:
        ds.WindowCenter, ds.WindowWidth = window
    if voi_lut is not None:
        item = Dataset()
        item.add_new(0x00283002, "US", [len(voi_lut), 0, 8])  # LUT Descriptor: entries, first value, bits
        item.add_new(0x00283006, "US", [int(v) for v in voi_lut])  # LUT Data
        ds.VOILUTSequence = [item]
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    if pixels:
        ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def _dataset(pixels: np.ndarray, bits: int) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.SOPClassUID, ds.SOPInstanceUID = DX_STORAGE, uid.generate_uid()
    ds.file_meta.MediaStorageSOPClassUID, ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPClassUID, ds.SOPInstanceUID
    ds.file_meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds.Modality, ds.PatientName, ds.PatientID = "DX", "Test^Fixture", "FIX001"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.SeriesNumber, ds.InstanceNumber = "20260101", "120000", "1", 1, 1
    ds.set_pixel_data(pixels, "MONOCHROME2", bits, generate_instance_uid=False)
    ds.WindowCenter, ds.WindowWidth = 2 ** (bits - 1) - 0.5, 2**bits  # the full range: grey levels come back as stored
    return ds


def _encapsulated(ds: Dataset, frame: bytes, syntax: str) -> None:
    ds.PixelData = encapsulate([frame])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax


# Transfer syntax -> (bits stored of the test image, largest allowed mean absolute error in 8-bit grey levels).
SYNTAXES = {
    uid.ExplicitVRLittleEndian: (12, 0), uid.DeflatedExplicitVRLittleEndian: (12, 0), uid.RLELossless: (12, 0),
    uid.JPEGBaseline8Bit: (8, 3), uid.JPEGExtended12Bit: (12, 3), uid.JPEGLossless: (12, 0),
    uid.JPEGLosslessSV1: (12, 0), uid.JPEGLSLossless: (12, 0), uid.JPEGLSNearLossless: (12, 1),
    uid.JPEG2000Lossless: (12, 0), uid.JPEG2000: (12, 3),
}


def encode(path, gray: np.ndarray, syntax: str) -> Path:
    """`gray` ((H, W) uint8) stored in one transfer syntax: 8 bits for JPEG Baseline, else 12 (value * 16)."""
    bits = SYNTAXES[syntax][0]
    pixels = np.ascontiguousarray(gray if bits == 8 else gray.astype(np.uint16) * 16)
    ds = _dataset(pixels, bits)
    if syntax in (uid.ExplicitVRLittleEndian, uid.DeflatedExplicitVRLittleEndian):
        ds.file_meta.TransferSyntaxUID = syntax  # pydicom deflates the data set itself when writing
    elif syntax == uid.RLELossless:
        ds.compress(uid.RLELossless, encoding_plugin="pydicom")
    elif syntax == uid.JPEGLSLossless:
        ds.compress(uid.JPEGLSLossless)
    elif syntax == uid.JPEGLSNearLossless:
        ds.compress(uid.JPEGLSNearLossless, jls_error=2)
    elif syntax == uid.JPEG2000Lossless:
        ds.compress(uid.JPEG2000Lossless)
    elif syntax == uid.JPEG2000:
        ds.compress(uid.JPEG2000, j2k_cr=[10])
    elif syntax == uid.JPEGBaseline8Bit:
        _encapsulated(ds, imagecodecs.jpeg8_encode(pixels, level=95), syntax)
    elif syntax == uid.JPEGExtended12Bit:
        _encapsulated(ds, imagecodecs.jpeg8_encode(pixels, level=95, bitspersample=12), syntax)
    elif syntax == uid.JPEGLosslessSV1:
        _encapsulated(ds, imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=1, bitspersample=12), syntax)
    elif syntax == uid.JPEGLossless:
        _encapsulated(ds, imagecodecs.jpeg8_encode(pixels, lossless=True, predictor=6, bitspersample=12), syntax)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def structured_report(path) -> Path:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = uid.ComprehensiveSRStorage
    meta.MediaStorageSOPInstanceUID = uid.generate_uid()
    meta.TransferSyntaxUID = uid.ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = uid.ComprehensiveSRStorage, meta.MediaStorageSOPInstanceUID, "SR"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uid.generate_uid(), uid.generate_uid()
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


def dicomdir(folder: Path, image: Path) -> Path:
    """A DICOMDIR indexing `image` (copied below `folder` by pydicom's FileSet)."""
    from pydicom.fileset import FileSet

    files = FileSet()
    files.add(image)
    files.write(folder)
    return folder / "DICOMDIR"
