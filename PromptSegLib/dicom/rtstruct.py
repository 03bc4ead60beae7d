"""DICOM RT Structure Set (RTSTRUCT): writing from masks on a DICOM series' grid, and reading back to masks.

Contours: on every slice, the boundary of the mask is traced by marching squares at level 0.5 between pixel
centres (each vertex is the midpoint between an inside and an outside pixel), so every pixel centre is
strictly inside or outside. Outer boundaries and holes are all written as separate CLOSED_PLANAR contours
on that slice; planning systems (and :func:`read_rtstruct`) fill a slice's contours with the even-odd rule
(XOR), which gives back the mask exactly. Each contour references the slice it lies on
(ContourImageSequence), and the set references the Frame of Reference, Study and Series of the source.
"""
from __future__ import annotations

import datetime
import os
import warnings
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.dicom.contours import (contour_data_element, contour_points, fill_even_odd, index_to_lps,
                                         slice_contours)
from PromptSegLib.errors import InputImageError, OutputError
from PromptSegLib.export.segfile import ExportSegment
from PromptSegLib.export.segments import (RT_ROI_INTERPRETED_TYPES, ExportWarning, interpreted_type, load_segments,
                                          non_empty, on_grid)
from PromptSegLib.io.outputs import atomic_path, check_writable

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
DETACHED_STUDY_MANAGEMENT = "1.2.840.10008.3.1.2.3.1"  # the Referenced SOP Class of RT Referenced Study items
MANUFACTURER = "PromptSeg"


# ---------------------------------------------------------------------------------------------- writing
@dataclass
class ExportReport:
    """What an export wrote: the file, ROI/segment names, names skipped, warnings and the re-read Dice."""

    path: Path
    names: list[str]
    skipped: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    dice: dict[str, float] = field(default_factory=dict)


TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime",
                       "ReferringPhysicianName", "StudyID", "AccessionNumber")
"""Patient and study attributes of Type 2: present in every DICOM object written, empty where the series lacks them
(some de-identification tools delete them)."""


def with_type2(ds):
    """``ds`` (a pydicom Dataset, changed in place and returned) with each of :data:`TYPE2_PATIENT_STUDY` it lacks,
    empty."""
    for keyword in TYPE2_PATIENT_STUDY:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def build_rtstruct(image: sitk.Image, references, segments: list[ExportSegment], *,
                   label: str = "PromptSeg", default_interpreted_type: str = "ORGAN",
                   series_description: str = "PromptSeg structures", software_version: str = ""):
    """A pydicom RTSTRUCT Dataset for non-empty ``segments`` whose masks lie on ``image`` (the series' grid)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.sequence import Sequence
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    if default_interpreted_type not in RT_ROI_INTERPRETED_TYPES:
        raise InputImageError(f"unknown RT ROI Interpreted Type {default_interpreted_type!r}; use one of "
                              + ", ".join(RT_ROI_INTERPRETED_TYPES))
    now = datetime.datetime.now()
    sop_instance_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = RT_STRUCTURE_SET_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.InstanceCreationDate = now.strftime("%Y%m%d")
    ds.InstanceCreationTime = now.strftime("%H%M%S")
    ds.SOPClassUID = RT_STRUCTURE_SET_STORAGE
    ds.SOPInstanceUID = sop_instance_uid
    for element in references.patient_study:  # patient and general study modules, from the CT
        ds.add(element)
    with_type2(ds)
    ds.StudyInstanceUID = references.study_instance_uid
    ds.FrameOfReferenceUID = references.frame_of_reference_uid  # Frame of Reference module (dciodvfy asks for it)
    ds.PositionReferenceIndicator = references.position_reference_indicator
    ds.Modality = "RTSTRUCT"
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 901
    ds.SeriesDate, ds.SeriesTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.SeriesDescription = series_description[:64]
    ds.OperatorsName = ""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "PromptSegLib"
    if software_version:
        ds.SoftwareVersions = software_version
    ds.InstanceNumber = 1
    ds.StructureSetLabel = label[:16]
    ds.StructureSetName = label[:64]
    ds.StructureSetDate, ds.StructureSetTime = ds.InstanceCreationDate, ds.InstanceCreationTime
    ds.ApprovalStatus = "UNAPPROVED"

    def image_item(reference) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = reference.sop_class_uid
        item.ReferencedSOPInstanceUID = reference.sop_instance_uid
        return item

    series_item = Dataset()
    series_item.SeriesInstanceUID = references.series_instance_uid
    series_item.ContourImageSequence = Sequence([image_item(s) for s in references.slices])
    study_item = Dataset()
    study_item.ReferencedSOPClassUID = DETACHED_STUDY_MANAGEMENT
    study_item.ReferencedSOPInstanceUID = references.study_instance_uid
    study_item.RTReferencedSeriesSequence = Sequence([series_item])
    frame_item = Dataset()
    frame_item.FrameOfReferenceUID = references.frame_of_reference_uid
    frame_item.RTReferencedStudySequence = Sequence([study_item])
    ds.ReferencedFrameOfReferenceSequence = Sequence([frame_item])

    matrix, origin = index_to_lps(image)
    rois, contours, observations = [], [], []
    for number, segment in enumerate(segments, start=1):
        name = segment.name[:64]
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = references.frame_of_reference_uid
        roi.ROIName = name
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        rois.append(roi)

        contour_items = []
        for k in np.flatnonzero(segment.mask.reshape(segment.mask.shape[0], -1).any(axis=1)):
            for loop in slice_contours(segment.mask[k]):
                ijk = np.column_stack([loop, np.full(len(loop), float(k))])
                lps = ijk @ matrix.T + origin
                item = Dataset()
                item.ContourImageSequence = Sequence([image_item(references.slices[int(k)])])
                item.ContourGeometricType = "CLOSED_PLANAR"
                item.NumberOfContourPoints = len(loop)
                item.ContourNumber = len(contour_items) + 1
                item[0x30060050] = contour_data_element(lps.ravel())
                contour_items.append(item)
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = [int(round(255 * min(max(c, 0.0), 1.0))) for c in segment.color]
        roi_contour.ContourSequence = Sequence(contour_items)
        roi_contour.ReferencedROINumber = number
        contours.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.ROIObservationLabel = name[:16]
        observation.RTROIInterpretedType = interpreted_type(segment, default_interpreted_type)
        observation.ROIInterpreter = ""
        observations.append(observation)
    ds.StructureSetROISequence = Sequence(rois)
    ds.ROIContourSequence = Sequence(contours)
    ds.RTROIObservationsSequence = Sequence(observations)
    return ds


ROI_NAMINGS = ("prompt", "tg263")
"""How RTSTRUCT ROIs are named: as the segments (the vocabulary's target names), or by the AAPM TG-263
standard name of each target that has one (``Parotid_L``), which planning systems expect."""


def tg263_names(segments: list[ExportSegment]) -> list[ExportSegment]:
    """Segments renamed by their target's TG-263 name where the vocabulary knows the target and the report
    defines a name for it; other segments keep their names."""
    from PromptSegLib.errors import PromptError
    from PromptSegLib.text.vocabulary import default_vocabulary

    vocabulary = default_vocabulary()
    out = []
    for segment in segments:
        try:
            standard = vocabulary.target(segment.name).tg263
        except PromptError:
            standard = None
        out.append(replace(segment, name=standard) if standard else segment)
    return out


def prepare_export(path: Path, segment_set, image: sitk.Image, references, build, roi_names: str = "prompt"):
    """What both DICOM exports do first: check the series can be referenced, put the segments on its grid,
    drop empty ones, name them (``roi_names``, see ``ROI_NAMINGS``), make names unique, and ``build(kept)`` the
    dataset, with the warnings of all that both collected in the report and handed on to the caller.

    Returns:
        ``(kept segments, built dataset, report)``.
    """
    references.check_referenceable()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ExportWarning)
        if roi_names not in ROI_NAMINGS:
            raise OutputError(f"unknown ROI naming {roi_names!r}; use one of {', '.join(ROI_NAMINGS)}")
        segments = on_grid(load_segments(segment_set), image)
        segments = tg263_names(segments) if roi_names == "tg263" else segments
        filled = non_empty(segments)
        kept = unique_names(filled)
        built = build(kept)
    messages = [str(w.message) for w in caught if issubclass(w.category, ExportWarning)]
    for w in caught:
        warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    skipped = [s.name for s in segments if all(s is not f for f in filled)]  # before renaming: kept ones differ
    return kept, built, ExportReport(Path(path), [s.name for s in kept], skipped, messages)


def save_dataset(dataset, tmp: Path, path: Path) -> None:
    """Save a pydicom dataset (file meta enforced) at ``tmp``, the temporary name of output ``path``."""
    try:
        dataset.save_as(tmp, enforce_file_format=True)
    except (OSError, ValueError) as exc:
        raise OutputError(f"cannot write {path}: {exc}") from exc


def write_rtstruct(path: str | os.PathLike, image: sitk.Image, references, segment_set, *,
                   default_interpreted_type: str = "ORGAN", label: str = "PromptSeg",
                   validate: bool = True, roi_names: str = "prompt") -> ExportReport:
    """Write an RTSTRUCT for the segments (a :class:`SegmentSet`, ``.seg.nrrd`` path or ``SegmentationResult``)
    drawn on the series ``(image, references)`` from :func:`~PromptSegLib.io.dicom_series.load_dicom_series`.

    Segments on another grid are resampled onto the series (warning); empty ones are skipped (warning).
    ROIs are named as the segments, or by TG-263 (``roi_names="tg263"``: ``left parotid`` -> ``Parotid_L``).
    With ``validate`` the written file is read back and each ROI's mask rebuilt; a Dice below 0.98 against
    the exported mask fails the export and nothing is left at ``path``.

    Raises:
        OutputError: the output cannot be written or does not read back faithfully.
        InputImageError: no non-empty segment, or a segmentation outside the series.
    """
    path = check_writable(path)
    kept, ds, report = prepare_export(path, segment_set, image, references, lambda segments: build_rtstruct(
        image, references, segments, label=label, default_interpreted_type=default_interpreted_type), roi_names)
    with atomic_path(path) as tmp:
        save_dataset(ds, tmp, path)
        if validate:
            masks = read_rtstruct(tmp, image, references)
            for segment in kept:
                report.dice[segment.name] = dice(masks.get(segment.name, np.zeros_like(segment.mask)), segment.mask)
            bad = {n: d for n, d in report.dice.items() if d < 0.98}
            if bad:
                raise OutputError(f"RTSTRUCT for {path} does not read back faithfully (Dice "
                                  + ", ".join(f"{n}: {d:.3f}" for n, d in bad.items()) + "); nothing written")
    return report


def unique_names(segments: list[ExportSegment], length: int = 64) -> list[ExportSegment]:
    """Segments with distinct names of at most ``length`` characters (renamed ones are named in a warning)."""
    out, seen = [], set()
    for segment in segments:
        name = segment.name.strip()[:length] or "Segment"
        base, n = name, 1
        while name in seen:
            n += 1
            name = f"{base[:length - len(str(n)) - 1]} {n}"
        if name != segment.name:
            warnings.warn(f"segment {segment.name!r} renamed {name!r} (names must be unique, at most {length} "
                          "characters)", ExportWarning, stacklevel=2)
            segment = replace(segment, name=name)
        seen.add(name)
        out.append(segment)
    return out


def dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int(np.logical_and(a, b).sum()) / total


# ---------------------------------------------------------------------------------------------- reading
@dataclass
class RTStructROI:
    number: int
    name: str
    color: tuple[int, int, int] | None
    interpreted_type: str
    contours: list[np.ndarray]  # (N, 3) LPS points per CLOSED_PLANAR contour


def read_rtstruct_rois(path: str | os.PathLike, force: bool = False) -> list[RTStructROI]:
    """ROIs of an RTSTRUCT file with their contours in patient coordinates (no grid needed).

    ``force`` reads files without a DICOM file header (some old samples).

    Raises:
        InputImageError: not readable or not an RTSTRUCT.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        ds = pydicom.dcmread(path, force=force)
    except (InvalidDicomError, OSError) as exc:
        raise InputImageError(f"cannot read {path}: {exc}") from exc
    if "StructureSetROISequence" not in ds:
        raise InputImageError(f"{path} is not an RT structure set (no Structure Set ROI Sequence)")
    colors, contours = {}, {}
    for item in ds.get("ROIContourSequence", []):
        number = int(item.ReferencedROINumber)
        color = item.get("ROIDisplayColor")
        colors[number] = tuple(int(c) for c in color) if color else None
        points = [contour_points(c) for c in item.get("ContourSequence", [])
                  if c.get("ContourGeometricType", "CLOSED_PLANAR") == "CLOSED_PLANAR" and "ContourData" in c]
        contours[number] = [p for p in points if len(p) >= 3]
    types = {int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "")
             for o in ds.get("RTROIObservationsSequence", []) if "ReferencedROINumber" in o}
    return [RTStructROI(int(roi.ROINumber), str(roi.get("ROIName", "")), colors.get(int(roi.ROINumber)),
                        types.get(int(roi.ROINumber), ""), contours.get(int(roi.ROINumber), []))
            for roi in ds.StructureSetROISequence]


def rasterize_roi(roi: RTStructROI, image: sitk.Image, slice_tolerance: float = 0.5) -> np.ndarray:
    """A ROI's ``(Z, Y, X)`` mask on ``image``'s grid: contours grouped by slice, even-odd filled.

    Contours further than ``slice_tolerance`` slices from every slice plane are left out (warning).
    """
    matrix, origin = index_to_lps(image)
    inverse = np.linalg.inv(matrix)
    nx, ny, nz = image.GetSize()
    by_slice: dict[int, list[np.ndarray]] = {}
    off = 0
    for points in roi.contours:
        ijk = (points - origin) @ inverse.T
        k = float(np.mean(ijk[:, 2]))
        k_round = int(round(k))
        if abs(k - k_round) > slice_tolerance or not 0 <= k_round < nz or np.ptp(ijk[:, 2]) > 2 * slice_tolerance:
            off += 1
            continue
        by_slice.setdefault(k_round, []).append(ijk[:, :2])
    if off:
        warnings.warn(f"ROI {roi.name!r}: {off} contour(s) do not lie on a slice of the grid: left out", ExportWarning,
                      stacklevel=2)
    mask = np.zeros((nz, ny, nx), dtype=bool)
    for k, polygons in by_slice.items():
        mask[k] = fill_even_odd(polygons, (ny, nx))
    return mask


def read_rtstruct(path: str | os.PathLike, image: sitk.Image, references=None, force: bool = False) -> dict[str, np.ndarray]:
    """Masks ``{ROI name: (Z, Y, X) bool}`` of an RTSTRUCT rebuilt on ``image``'s grid (even-odd filling).

    With ``references`` (from :func:`load_dicom_series`), a structure set drawn on another Frame of
    Reference is refused. ROIs without contours give empty masks.
    """
    import pydicom

    if references is not None:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=force)
        frames = {str(item.FrameOfReferenceUID) for item in ds.get("ReferencedFrameOfReferenceSequence", [])
                  if "FrameOfReferenceUID" in item}
        if frames and references.frame_of_reference_uid not in frames:
            raise InputImageError(f"{path} is drawn on Frame of Reference {', '.join(sorted(frames))}, not on the "
                                  f"series' {references.frame_of_reference_uid}")
    masks = {}
    for roi in read_rtstruct_rois(path, force=force):
        mask = rasterize_roi(roi, image)
        masks[roi.name] = masks[roi.name] | mask if roi.name in masks else mask
    return masks


def export_rtstruct(ct_folder: str | os.PathLike, segments, output: str | os.PathLike, *,
                    series_uid: str | None = None, default_interpreted_type: str = "ORGAN",
                    label: str = "PromptSeg", roi_names: str = "prompt") -> ExportReport:
    """Load the DICOM series in ``ct_folder`` and write an RTSTRUCT of ``segments`` (a ``.seg.nrrd`` path,
    a ``SegmentationResult`` or a :class:`SegmentSet`) that references it. Checks ``output`` first."""
    from PromptSegLib.io.dicom_series import load_dicom_series

    check_writable(output)
    image, references = load_dicom_series(ct_folder, series_uid)
    return write_rtstruct(output, image, references, segments, default_interpreted_type=default_interpreted_type,
                          label=label, roi_names=roi_names)
