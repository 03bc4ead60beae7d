"""DICOM Segmentation (SEG) objects with highdicom: binary or fractional, one segment per mask, each described
with its terminology codes (SNOMED CT category, type and type modifier from the vocabulary or the
segmentation file), referencing the source series' instances frame by frame; and reading them back.
"""
from __future__ import annotations

import os

import numpy as np
import SimpleITK as sitk

from PromptSegLib.dicom.rtstruct import ExportReport, dice, prepare_export, save_dataset, with_type2
from PromptSegLib.errors import InputImageError, OutputError
from PromptSegLib.export.segfile import ExportSegment
from PromptSegLib.export.segments import load_segments, vocabulary_target
from PromptSegLib.io.outputs import atomic_path, check_writable

TISSUE = ("SCT", "85756007", "Tissue")  # category and type of a segment without codes (Slicer's default)


def _codes(segment: ExportSegment) -> tuple[tuple, tuple, tuple | None]:
    """(category, type, type modifier) triplets ``(scheme, value, meaning)`` of a segment."""
    entry = segment.terminology or {}
    if entry.get("category") and entry.get("type"):
        return tuple(entry["category"]), tuple(entry["type"]), (tuple(entry["typeModifier"])
                                                                if entry.get("typeModifier") else None)
    target = vocabulary_target(segment)
    if target is not None and target.category and target.type:
        return target.category, target.type, target.modifier
    return TISSUE, TISSUE, None


def _coded(triplet):
    from highdicom.sr import CodedConcept

    scheme, value, meaning = (str(v) for v in triplet)
    return CodedConcept(value=value, scheme_designator=scheme, meaning=meaning[:64])


def segment_description(number: int, segment: ExportSegment):
    import highdicom as hd
    from pydicom.sequence import Sequence

    category, type_, modifier = _codes(segment)
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="PromptSeg", version="0.1",
                                                   family=codes.cid7162.ArtificialIntelligence)
    r, g, b = (int(round(255 * min(max(c, 0.0), 1.0))) for c in segment.color)
    description = hd.seg.SegmentDescription(
        segment_number=number, segment_label=segment.name[:64], segmented_property_category=_coded(category),
        segmented_property_type=_coded(type_), algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=algorithm, display_color=hd.color.CIELabColor.from_rgb(r, g, b))
    if modifier:
        description.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = Sequence(
            [_coded(modifier)])
    return description


def build_dicom_seg(image: sitk.Image, references, segments: list[ExportSegment], *, fractional: bool = False,
                    series_description: str = "PromptSeg segmentation"):
    """A highdicom ``Segmentation`` of non-empty ``segments`` on ``image`` (the series' grid), one frame per
    source slice and segment (empty frames omitted). ``fractional`` stores each segment's probability
    (8 bits) where it has one, else its mask."""
    import copy

    import highdicom as hd
    from pydicom.uid import generate_uid

    if fractional:
        stack = np.stack([(s.probability if s.probability is not None else s.mask).astype(np.float32)
                          for s in segments], axis=-1).clip(0.0, 1.0)
    else:
        stack = np.stack([s.mask for s in segments], axis=-1).astype(np.uint8)
    seg = hd.seg.Segmentation(
        # highdicom reads the patient and study attributes of the first source image: those it lacks, empty
        source_images=[with_type2(copy.deepcopy(references.headers[0])), *references.headers[1:]], pixel_array=stack,
        segmentation_type=hd.seg.SegmentationTypeValues.FRACTIONAL if fractional
        else hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[segment_description(i + 1, s) for i, s in enumerate(segments)],
        series_instance_uid=generate_uid(), series_number=902, sop_instance_uid=generate_uid(), instance_number=1,
        manufacturer="PromptSeg", manufacturer_model_name="PromptSegLib", software_versions="0.1",
        device_serial_number="0", series_description=series_description[:64],
        content_label="PROMPTSEG", content_description="Text-prompted segmentation",
        content_creator_name="PromptSeg^")
    if seg.get("SpecificCharacterSet") != "ISO_IR 192" and any(not s.name.isascii() for s in segments):
        seg.SpecificCharacterSet = "ISO_IR 192"
    return seg


def read_dicom_seg(path: str | os.PathLike, references) -> dict[str, np.ndarray]:
    """Segments ``{label: (Z, Y, X) array}`` of a SEG rebuilt on the series of ``references`` (bool for
    binary, float in [0, 1] for fractional).

    Raises:
        InputImageError: not a SEG, or it does not reference this series.
    """
    import highdicom as hd

    try:
        seg = hd.seg.segread(path)
    except Exception as exc:  # highdicom raises several kinds for non-SEG files
        raise InputImageError(f"cannot read {path} as DICOM SEG: {exc}") from exc
    referenced = {str(item.SeriesInstanceUID) for item in seg.get("ReferencedSeriesSequence", [])}
    if referenced and references.series_instance_uid not in referenced:
        raise InputImageError(f"{path} does not reference series {references.series_instance_uid}")
    numbers = [int(d.SegmentNumber) for d in seg.SegmentSequence]
    pixels = seg.get_pixels_by_source_instance(source_sop_instance_uids=references.sop_instance_uids,
                                               segment_numbers=numbers, assert_missing_frames_are_empty=True)
    binary = seg.SegmentationType == "BINARY"
    return {str(d.SegmentLabel): (pixels[..., i] > 0 if binary else pixels[..., i].astype(np.float32))
            for i, d in enumerate(seg.SegmentSequence)}


def write_dicom_seg(path: str | os.PathLike, image: sitk.Image, references, segment_set, *,
                    fractional: bool = False, validate: bool = True) -> ExportReport:
    """Write a DICOM SEG of the segments (a :class:`SegmentSet`, ``.seg.nrrd`` path or ``SegmentationResult``)
    on the series ``(image, references)``. Segments on another grid are resampled (warning), empty ones
    skipped (warning). With ``validate`` the file is read back with highdicom and must match exactly
    (fractional: to 1/255); otherwise the export fails and nothing is left at ``path``.
    """
    path = check_writable(path)
    if fractional:  # a result's probabilities are made only for a fractional SEG
        segment_set = load_segments(segment_set, probabilities=True)

    def build(segments):
        try:
            return build_dicom_seg(image, references, segments, fractional=fractional)
        except (ValueError, TypeError, AttributeError) as exc:
            raise InputImageError(f"cannot build a DICOM SEG on series {references.series_instance_uid}: {exc}") from exc

    kept, seg, report = prepare_export(path, segment_set, image, references, build)
    with atomic_path(path) as tmp:
        save_dataset(seg, tmp, path)
        if validate:
            back = read_dicom_seg(tmp, references)
            for segment in kept:
                got = back.get(segment.name)
                if got is None:
                    raise OutputError(f"DICOM SEG for {path} lost segment {segment.name!r}; nothing written")
                if fractional and segment.probability is not None:
                    error = float(np.abs(got - segment.probability.clip(0, 1)).max())
                    report.dice[segment.name] = dice(got >= 0.5, segment.probability >= 0.5)
                    if error > 0.5 / 255 + 1e-6:
                        raise OutputError(f"DICOM SEG for {path}: segment {segment.name!r} reads back with error "
                                          f"{error:.4f}; nothing written")
                else:
                    report.dice[segment.name] = dice(got > 0.5, segment.mask)
                    if not np.array_equal(got > 0.5, segment.mask):
                        raise OutputError(f"DICOM SEG for {path}: segment {segment.name!r} does not read back "
                                          "exactly; nothing written")
    return report


def export_dicom_seg(ct_folder: str | os.PathLike, segments, output: str | os.PathLike, *,
                     series_uid: str | None = None, fractional: bool = False) -> ExportReport:
    """Load the DICOM series in ``ct_folder`` and write a DICOM SEG of ``segments`` (a ``.seg.nrrd`` path, a
    ``SegmentationResult`` or a :class:`SegmentSet`) that references it. Checks ``output`` first."""
    from PromptSegLib.io.dicom_series import load_dicom_series

    check_writable(output)
    image, references = load_dicom_series(ct_folder, series_uid)
    return write_dicom_seg(output, image, references, segments, fractional=fractional)
