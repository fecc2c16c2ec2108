"""Studies as PACS exports them: nested folders, DICOM found by content, compressed syntaxes, objects that are
not images; results mirror the folders, link back to the study, separate the lungs and go back as DICOM SEG."""
import csv
import subprocess

import highdicom as hd
import numpy as np
import pydicom
import pytest
from PIL import Image
from pydicom import uid

from lungseg.cli import main
from conftest import BIN
from dicom_files import dicomdir, encode, make_dicom, structured_report


@pytest.fixture
def export(tmp_path, real_xray):
    """study/series folders as a PACS export writes them: UID-named files without extensions, two series
    with the same file names, a compressed file, a report, a DICOMDIR, a hidden file, a PNG and a TIFF."""
    image = real_xray[0]
    root = tmp_path / "export"
    for series in ("series1", "series2"):
        (root / "study" / series).mkdir(parents=True)
        make_dicom(root / "study" / series / "1.2.840.1", image.astype(np.uint16) * 16, 12, window=(2047.5, 4096),
                   PatientID="P-123", PatientName="Doe^Jane", ViewPosition="PA", PatientOrientation=["L", "F"],
                   ImagerPixelSpacing=[0.143, 0.143])
    encode(root / "study" / "series2" / "IM0002", image, uid.JPEG2000Lossless)
    structured_report(root / "study" / "report")
    (root / ".DS_Store").write_bytes(b"\x00\x01")
    Image.fromarray(image).save(root / "scan.png")
    Image.fromarray(image).save(root / "scan2.tif")
    return root


def read_report(folder):
    with open(folder / "report.csv", newline="") as handle:
        return {row["file"]: row for row in csv.DictReader(handle)}


def test_a_pacs_export_is_walked_by_content_and_mirrored(export, tiny_onnx, tmp_path, capsys):
    out = tmp_path / "out"
    code = main(["predict", str(export), "--model", str(tiny_onnx), "--output", str(out), "--quiet"])
    assert code == 0, capsys.readouterr().err
    for relative in ("study/series1/1.2.840.1", "study/series2/1.2.840.1", "study/series2/IM0002", "scan", "scan2"):
        mask = np.asarray(Image.open(out / f"{relative}.png"))
        assert mask.shape == (512, 512) and set(np.unique(mask)) <= {0, 255}, relative
        labels = np.asarray(Image.open(out / f"{relative}_labels.png"))
        assert set(np.unique(labels)) <= {0, 1, 2} and np.array_equal(labels > 0, mask > 0)
    report = read_report(out)
    assert report["study/report"]["status"].startswith("skipped: ") and "structured report" in report["study/report"]["status"]
    assert ".DS_Store" not in report
    row = report["study/series1/1.2.840.1"]
    ds = pydicom.dcmread(export / "study" / "series1" / "1.2.840.1")
    assert (row["StudyInstanceUID"], row["SeriesInstanceUID"], row["SOPInstanceUID"]) == (
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.SOPInstanceUID)
    assert row["ViewPosition"] == "PA" and row["Modality"] == "DX" and row["laterality_assumed"] == "False"
    assert "PatientID" not in row  # identifiers only when asked for
    pixels = int(row["right_lung_pixels"])
    assert float(row["right_lung_cm2"]) == pytest.approx(pixels * 0.143 * 0.143 / 100, abs=0.01)
    assert row["pixel_spacing_source"] == "ImagerPixelSpacing"
    assert report["scan.png"]["laterality_assumed"] == "True" and report["scan.png"]["right_lung_cm2"] == ""
    assert "1 skipped (not images)" in capsys.readouterr().out


def test_patient_identifiers_only_with_the_flag(export, tiny_onnx, tmp_path):
    out = tmp_path / "out"
    main(["predict", str(export / "study" / "series1"), "--model", str(tiny_onnx), "--output", str(out), "--quiet",
          "--patient-fields"])
    row = read_report(out)["1.2.840.1"]
    assert row["PatientID"] == "P-123" and row["PatientName"] == "Doe^Jane"


def test_a_dicomdir_is_listed_as_skipped(tmp_path, real_xray, tiny_onnx):
    image = make_dicom(tmp_path / "im.dcm", real_xray[0].astype(np.uint16), 12, StudyDate="20260101",
                       StudyTime="1200", StudyID="1", SeriesNumber=1, InstanceNumber=1, PatientID="P",
                       PatientName="X")
    index = dicomdir(tmp_path / "media", image)
    out = tmp_path / "out"
    assert main(["predict", str(tmp_path / "media"), "--model", str(tiny_onnx), "--output", str(out), "--quiet"]) == 0
    report = read_report(out)
    assert "DICOMDIR" in report and "a DICOMDIR" in report["DICOMDIR"]["status"]
    assert sum(row["status"] in ("ok", "review") for row in report.values()) == 1  # the image it indexes


def test_dicom_seg_references_its_source_and_holds_the_mask(export, tiny_onnx, tmp_path):
    out = tmp_path / "out"
    source_path = export / "study" / "series1" / "1.2.840.1"
    assert main(["predict", str(source_path), "--model", str(tiny_onnx), "--output", str(out), "--quiet",
                 "--seg"]) == 0
    seg_path = out / "1.2.840.1.seg.dcm"
    source = pydicom.dcmread(source_path)
    seg = hd.seg.segread(seg_path)
    assert seg.get_source_image_uids() == [(source.StudyInstanceUID, source.SeriesInstanceUID,
                                            source.SOPInstanceUID)]
    assert [seg.get_segment_description(n).segment_label for n in (1, 2)] == ["Right lung", "Left lung"]
    pixels = seg.get_pixels_by_source_instance([source.SOPInstanceUID], segment_numbers=[1, 2])[0]
    labels = np.asarray(Image.open(out / "1.2.840.1_labels.png"))
    assert np.array_equal(pixels[..., 0] > 0, labels == 1) and np.array_equal(pixels[..., 1] > 0, labels == 2)
    plain = pydicom.dcmread(seg_path)
    assert plain.Modality == "SEG" and plain.StudyInstanceUID == source.StudyInstanceUID
    assert plain.SegmentSequence[0].SegmentedPropertyTypeCodeSequence[0].CodeValue == "39607008"  # lung
    algorithm = plain.SegmentSequence[0].SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "lungseg" and "weights_sha256=" in algorithm.AlgorithmParameters
    assert read_report(out)[str(source_path)]["seg"] == "1.2.840.1.seg.dcm"


def test_a_header_that_cannot_make_a_seg_is_one_row_and_the_batch_goes_on(export, tiny_onnx, tmp_path, capsys):
    series = export / "study" / "series1"
    odd = pydicom.dcmread(series / "1.2.840.1")
    del odd.StudyInstanceUID
    odd.save_as(series / "no_study_uid")
    out = tmp_path / "out"
    assert main(["predict", str(series), "--model", str(tiny_onnx), "--output", str(out), "--quiet", "--seg"]) == 1
    report = read_report(out)
    assert report["no_study_uid"]["status"] == ("error: no_study_uid: cannot make a DICOM SEG from the file's header: "
                                                "it lacks StudyInstanceUID")
    assert report["1.2.840.1"]["status"] in ("ok", "review") and (out / "1.2.840.1.seg.dcm").is_file()
    assert not (out / "no_study_uid.png").exists()
    assert "Traceback" not in capsys.readouterr().err


def test_seg_output_keeps_highdicom_logs_off_the_terminal(export, tiny_onnx, tmp_path):
    # A process of its own: under pytest, logging is already configured and the command's set-up is not seen.
    result = subprocess.run([str(BIN / "lungseg"), "predict", str(export / "study" / "series1"), "--model",
                             str(tiny_onnx), "--output", str(tmp_path / "out"), "--quiet", "--seg"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out" / "1.2.840.1.seg.dcm").is_file()
    assert "copy Patient-related attributes" not in result.stderr  # highdicom's INFO lines, one batch of them per file
