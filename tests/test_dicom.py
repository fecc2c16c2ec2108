"""DICOM input: small files built with pydicom from a shipped X-ray must decode like the PNG and give the
same mask through `lungseg predict`."""
import re

import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid

from lungseg.cli import main
from lungseg.runtime.decode import ImageReadError, NotAnImage, TooLargeError
from lungseg.runtime.decode import decode_xray, read_xray
from lungseg.runtime.dicom import read_dicom
from dicom_files import SYNTAXES, dicomdir, encode, make_dicom, structured_report

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
        gray = read_dicom(path).pixels
        assert gray.shape == xray.shape, name
        assert np.abs(gray.astype(int) - xray.astype(int)).max() <= 1, name


def test_no_voi_uses_the_image_range(tmp_path, xray):
    stored = xray.astype(np.uint16) * 16 + 100
    gray = read_dicom(make_dicom(tmp_path / "plain.dcm", stored, 12)).pixels
    assert gray.min() == 0 and gray.max() == 255


def test_bad_dicoms_are_refused_by_name(tmp_path, xray):
    # an image without its pixels is a broken file (cut short, or exported header-only): an error, not a skip
    with pytest.raises(ImageReadError, match=r"empty\.dcm: DICOM image \(Digital X-Ray Image Storage - For "
                                             r"Presentation\) without pixel data: truncated or incomplete file"):
        read_dicom(make_dicom(tmp_path / "empty.dcm", xray.astype(np.uint16), 8, pixels=False))
    cut = make_dicom(tmp_path / "cut.dcm", xray.astype(np.uint16), 8)
    cut.write_bytes(cut.read_bytes()[:200])  # the file meta and the start of the header
    with pytest.raises(ImageReadError, match="cut.dcm: .*truncated or incomplete file") as refused:
        read_dicom(cut)
    assert not isinstance(refused.value, NotAnImage)
    # an object of an unknown class without rows or pixels is not an image: skipped
    other = make_dicom(tmp_path / "other.dcm", xray.astype(np.uint16), 8, pixels=False, SOPClassUID="1.2.3.4")
    import pydicom

    header = pydicom.dcmread(other)
    del header.Rows, header.Columns
    header.file_meta.MediaStorageSOPClassUID = "1.2.3.4"
    header.save_as(other)
    with pytest.raises(NotAnImage, match="other.dcm: DICOM object without pixel data"):
        read_dicom(other)
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
    make_dicom(folder / "no_pixels.dcm", xray.astype(np.uint16), 8, pixels=False)
    broken = make_dicom(folder / "broken.dcm", xray.astype(np.uint16), 8)
    broken.write_bytes(broken.read_bytes()[:-1000])  # pixel data cut short
    out = tmp_path / "out"
    assert main(["predict", str(folder), "--model", str(tiny_onnx), "--output", str(out), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "broken.dcm: cannot decode DICOM pixel data" in err
    assert re.search(r"\S*no_pixels\.dcm: DICOM image .* without pixel data: truncated", err)
    reference = np.asarray(Image.open(out / "reference.png"))
    for name in ("mono2_16bit", "mono2_12bit_window", "mono1_12bit_window", "mono2_12bit_voilut", "no_extension"):
        mask = np.asarray(Image.open(out / f"{name}.png"))
        assert mask.shape == xray.shape and set(np.unique(mask)) <= {0, 255}
        assert (mask == reference).mean() > 0.995, name


@pytest.mark.parametrize("syntax", list(SYNTAXES), ids=[pydicom.uid.UID(s).name for s in SYNTAXES])
def test_every_transfer_syntax_decodes_to_the_source_pixels(tmp_path, xray, syntax):
    path = encode(tmp_path / "x.dcm", xray, syntax)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == syntax
    decoded = read_xray(path)
    assert decoded.pixels.shape == xray.shape
    error = np.abs(decoded.pixels.astype(int) - xray.astype(int))
    tolerance = SYNTAXES[syntax][1]
    assert error.mean() <= max(tolerance, 0.5) and (tolerance or error.max() <= 1), (error.mean(), error.max())


@pytest.mark.parametrize("case, change, message", [
    ("window width 0", {"window": (2047.5, 0)}, "window width 0.* is invalid"),
    ("VOI LUT without data", {"voi_lut": []}, "VOI LUT"),
])
def test_malformed_grey_level_transforms_fail_this_file_only(tmp_path, xray, case, change, message):
    path = make_dicom(tmp_path / "bad.dcm", xray.astype(np.uint16) * 16, 12, **change)
    with pytest.raises(ImageReadError, match=f"bad.dcm: .*{message}"):
        read_xray(path)


def test_a_short_modality_lut_and_odd_pixel_data_are_named_errors(tmp_path, xray):
    lut = pydicom.Dataset()
    lut.add_new(0x00283002, "US", [4096, 0, 12])  # LUT Descriptor: 4096 entries ...
    lut.add_new(0x00283006, "US", [1, 2, 3])  # ... but only three in LUT Data
    lut.ModalityLUTType = "US"
    path = make_dicom(tmp_path / "short_lut.dcm", xray.astype(np.uint16) * 16, 12, ModalityLUTSequence=[lut])
    with pytest.raises(ImageReadError, match="short_lut.dcm"):
        read_xray(path)
    odd = make_dicom(tmp_path / "odd.dcm", xray.astype(np.uint16), 12)
    data = odd.read_bytes()
    header = data.rindex(b"\xe0\x7f\x10\x00OW\x00\x00")  # (7FE0,0010) OW, then its 4-byte length
    length = int.from_bytes(data[header + 8 : header + 12], "little")
    odd.write_bytes(data[: header + 8] + (length - 1).to_bytes(4, "little") + data[header + 12 : -1])
    with pytest.raises(ImageReadError, match="odd.dcm"):
        read_xray(odd)


def test_the_pixel_limit_is_checked_from_the_header_before_decoding(tmp_path, xray, monkeypatch):
    path = make_dicom(tmp_path / "huge.dcm", xray.astype(np.uint16), 12)
    ds = pydicom.dcmread(path)
    ds.Rows, ds.Columns = 10000, 10000  # the header claims 100 megapixels; the data is small
    ds.save_as(path)
    with pytest.raises(ImageReadError, match="huge.dcm: refused, 100,000,000 pixels is over the limit"):
        read_xray(path)


def test_objects_without_an_image_are_skipped_not_failed(tmp_path, xray):
    with pytest.raises(NotAnImage, match="a structured report"):
        read_xray(structured_report(tmp_path / "report.dcm"))
    image = make_dicom(tmp_path / "image.dcm", xray.astype(np.uint16), 12, StudyDate="20260101",
                       StudyTime="120000", StudyID="1", SeriesNumber=1, InstanceNumber=1, PatientID="P1",
                       PatientName="Test")
    index = dicomdir(tmp_path / "media", image)
    with pytest.raises(NotAnImage, match="a DICOMDIR"):
        read_xray(index)


@pytest.mark.parametrize("layout", ["part10", "without preamble"])
def test_a_deflated_dataset_that_would_inflate_beyond_the_limit_is_refused(tmp_path, xray, monkeypatch, layout):
    path = encode(tmp_path / "deflated.dcm", xray, uid.DeflatedExplicitVRLittleEndian)  # inflates to about 72 KB
    if layout == "without preamble":  # the file meta at byte 0: pydicom still finds and inflates the dataset
        path.write_bytes(path.read_bytes()[132:])
    monkeypatch.setattr("lungseg.runtime.dicom.MAX_INFLATED_DICOM_BYTES", 50_000)
    refused = "refused, its deflated dataset inflates to over the limit of 50,000 bytes"
    with pytest.raises(TooLargeError, match=f"deflated.dcm: {refused}"):
        read_xray(path)
    with pytest.raises(TooLargeError, match=f"upload: {refused}"):
        decode_xray(path.read_bytes(), "upload")  # what `lungseg serve` reads
    monkeypatch.setattr("lungseg.runtime.dicom.MAX_INFLATED_DICOM_BYTES", 100_000)
    assert read_xray(path).pixels.shape == xray.shape


def test_sequences_nested_too_deep_to_parse_are_this_files_error(tmp_path, xray):
    path = make_dicom(tmp_path / "deep.dcm", xray.astype(np.uint16), 12)
    opening = b"\x08\x00\x15\x11SQ\x00\x00\xff\xff\xff\xff" + b"\xfe\xff\x00\xe0\xff\xff\xff\xff"
    closing = b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + b"\xfe\xff\xdd\xe0\x00\x00\x00\x00"
    path.write_bytes(path.read_bytes() + opening * 20_000 + closing * 20_000)
    with pytest.raises(ImageReadError, match="deep.dcm: .*RecursionError"):
        read_xray(path)


@pytest.mark.parametrize("spacing", [[1e200, 1e200], [0.0, 0.14], [-0.14, 0.14]])
def test_an_impossible_pixel_spacing_gives_no_areas_rather_than_absurd_ones(tmp_path, xray, spacing):
    path = make_dicom(tmp_path / "spacing.dcm", xray.astype(np.uint16), 12, PixelSpacing=spacing)
    assert "pixel_spacing_mm" not in read_xray(path).dicom
