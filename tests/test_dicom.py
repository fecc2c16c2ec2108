"""DICOM input: small files built with pydicom from a shipped X-ray must decode like the PNG and give the
same mask through `lungseg predict`."""
import numpy as np
import pytest
from PIL import Image
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from lungseg.cli import main
from lungseg.dicom import read_dicom
from lungseg.io import ImageReadError

DX_STORAGE = "1.2.840.10008.5.1.4.1.1.1.1"  # Digital X-Ray Image Storage - For Presentation


def make_dicom(path, stored: np.ndarray, bits: int, photometric: str = "MONOCHROME2", window=None,
               voi_lut=None, pixels: bool = True):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = DX_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID, ds.Modality = DX_STORAGE, meta.MediaStorageSOPInstanceUID, "DX"
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
    if pixels:
        ds.PixelData = stored.astype("<u2").tobytes()
    ds.save_as(path, enforce_file_format=True)
    return path


@pytest.fixture
def xray(real_xray):
    image, _ = real_xray
    return image[::2, 1::2][:200, :180]  # a non-square crop keeps Rows and Columns apart


def cases(folder, image):
    twelve = image.astype(np.uint16) * 16  # 0..4080 in 12 bits
    return {
        "mono2_16bit": make_dicom(folder / "mono2_16bit.dcm", image.astype(np.uint16) * 257, 16,
                                  window=(32767.5, 65536)),
        "mono2_12bit_window": make_dicom(folder / "mono2_12bit_window.dcm", twelve, 12, window=(2047.5, 4096)),
        "mono1_12bit_window": make_dicom(folder / "mono1_12bit_window.dcm", 4095 - twelve, 12,
                                         photometric="MONOCHROME1", window=(2047.5, 4096)),
        "mono2_12bit_voilut": make_dicom(folder / "mono2_12bit_voilut.dcm", twelve, 12,
                                         voi_lut=np.arange(4096) // 16),
        "no_extension": make_dicom(folder / "no_extension", twelve, 12, voi_lut=np.arange(4096) // 16),
    }


def test_every_variant_decodes_like_the_png(tmp_path, xray):
    for name, path in cases(tmp_path, xray).items():
        gray = read_dicom(path)
        assert gray.shape == xray.shape, name
        assert np.abs(gray.astype(int) - xray.astype(int)).max() <= 1, name


def test_no_voi_uses_the_image_range(tmp_path, xray):
    stored = xray.astype(np.uint16) * 16 + 100
    gray = read_dicom(make_dicom(tmp_path / "plain.dcm", stored, 12))
    assert gray.min() == 0 and gray.max() == 255


def test_bad_dicoms_are_refused_by_name(tmp_path, xray):
    with pytest.raises(ImageReadError, match="no pixel data"):
        read_dicom(make_dicom(tmp_path / "empty.dcm", xray.astype(np.uint16), 8, pixels=False))
    with pytest.raises(ImageReadError, match="photometric interpretation 'PALETTE COLOR'"):
        read_dicom(make_dicom(tmp_path / "palette.dcm", xray.astype(np.uint16), 8, photometric="PALETTE COLOR"))
    (tmp_path / "junk.dcm").write_bytes(b"not a dicom at all")
    with pytest.raises(ImageReadError, match="junk.dcm"):
        read_dicom(tmp_path / "junk.dcm")


def test_predict_on_dicom_matches_the_png_path(tiny_onnx, tmp_path, xray, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(xray).save(folder / "reference.png")
    cases(folder, xray)
    make_dicom(folder / "broken.dcm", xray.astype(np.uint16), 8, pixels=False)
    out = tmp_path / "out"
    assert main(["predict", str(folder), str(folder / "no_extension"), "--model", str(tiny_onnx),
                 "--output", str(out), "--quiet"]) == 1
    assert "broken.dcm: DICOM file has no pixel data" in capsys.readouterr().err
    reference = np.asarray(Image.open(out / "reference.png"))
    for name in ("mono2_16bit", "mono2_12bit_window", "mono1_12bit_window", "mono2_12bit_voilut", "no_extension"):
        mask = np.asarray(Image.open(out / f"{name}.png"))
        assert mask.shape == xray.shape and set(np.unique(mask)) <= {0, 255}
        assert (mask == reference).mean() > 0.995, name
