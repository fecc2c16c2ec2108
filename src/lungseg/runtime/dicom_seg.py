"""DICOM Segmentation objects for the lungs (highdicom, the `[dicom]` extra), so a PACS viewer shows the
result over the source image.

One BINARY SEG per source image with two segments, "Right lung" and "Left lung": type Lung (SCT 39607008)
with the laterality modifier Right (SCT 24028007) or Left (SCT 7771000), category Anatomical Structure
(SCT 91723000), algorithm AUTOMATIC, identified by name, version and the model's weights hash. It references
the source's study, series and instance UIDs and keeps its frame of reference when it has one.
"""
from __future__ import annotations

import copy
import io

import highdicom as hd
import numpy as np
from pydicom.sr.codedict import codes

from lungseg import __version__
from lungseg.errors import UserError
from lungseg.runtime import lungs

SERIES_NUMBER = 9101
# highdicom reads these type-2 attributes from the source unconditionally; anonymised exports often lack them.
TYPE2 = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "AccessionNumber",
         "StudyID", "ReferringPhysicianName")


def _algorithm(model) -> hd.AlgorithmIdentificationSequence:
    provenance = model.card.get("code_version", {})
    return hd.AlgorithmIdentificationSequence(
        name="lungseg", version=__version__, family=codes.cid7162.ArtificialIntelligence, source="lungseg",
        parameters={"weights_sha256": provenance.get("weights_sha256", "unknown")[:64],
                    "threshold": str(model.threshold)})


def _segments(model) -> list[hd.seg.SegmentDescription]:
    algorithm = _algorithm(model)
    described = []
    for number, label, side in ((lungs.RIGHT, "Right lung", codes.cid244.Right),
                                (lungs.LEFT, "Left lung", codes.cid244.Left)):
        description = hd.seg.SegmentDescription(
            segment_number=number, segment_label=label,
            segmented_property_category=codes.cid7150.AnatomicalStructure,
            segmented_property_type=codes.SCT.Lung,
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm, anatomic_regions=[codes.SCT.Thorax])
        # Laterality as the modifier DICOM's segment description names (CID 244); highdicom has no argument for it.
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
            hd.sr.CodedConcept(side.value, side.scheme_designator, side.meaning)]
        described.append(description)
    return described


def segmentation(header, labels: np.ndarray, model) -> hd.seg.Segmentation:
    """The SEG of `labels` ((Rows, Columns): 1 right lung, 2 left lung) over the source whose header is given."""
    source = copy.deepcopy(header)  # filled in below; the caller's header stays as it was
    for keyword in TYPE2:
        if keyword not in source:
            setattr(source, keyword, "")
    if "ImagePositionPatient" in source and not {"PixelSpacing", "SliceThickness"} <= set(source.dir()):
        del source.ImagePositionPatient  # a projection X-ray has no 3-D position; highdicom would want one
    pixels = np.stack([labels == lungs.RIGHT, labels == lungs.LEFT], axis=-1)[np.newaxis]  # (1, R, C, 2)
    return hd.seg.Segmentation(
        source_images=[source], pixel_array=pixels, segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_segments(model), series_instance_uid=hd.UID(), series_number=SERIES_NUMBER,
        sop_instance_uid=hd.UID(), instance_number=1, manufacturer="lungseg", manufacturer_model_name="lungseg",
        software_versions=__version__, device_serial_number="none", series_description="Lung segmentation (lungseg)",
        omit_empty_frames=False)


SOURCE_IDENTITY = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "SOPClassUID")  # a SEG refers to them


class SegError(UserError, ValueError):
    """No SEG can be made from this source's header: that file's SEG only, never the batch or the service."""


def segmentation_bytes(header, labels: np.ndarray, model) -> bytes:
    """The SEG file's bytes; SegError when highdicom refuses the source header (a study or series UID missing,
    a value it cannot copy)."""
    missing = [keyword for keyword in SOURCE_IDENTITY if not header.get(keyword)]
    if missing:  # named plainly, rather than as the exception highdicom would raise
        raise SegError(f"cannot make a DICOM SEG from the file's header: it lacks {', '.join(missing)}")
    buffer = io.BytesIO()
    try:
        segmentation(header, labels, model).save_as(buffer)
    except Exception as err:  # highdicom's own checks raise ValueError, AttributeError, TypeError, ...
        raise SegError(f"cannot make a DICOM SEG from the file's header ({type(err).__name__}: {err})") from None
    return buffer.getvalue()
