"""Load an image series (CT, MR, PT) from a DICOM folder and keep what exports must reference.

``load_dicom_series(folder)`` returns the volume as a SimpleITK image (origin, spacing, direction from the
DICOM geometry; voxels in stored units after rescale, i.e. HU for CT) and a :class:`DicomReferences`: per
slice SOP Instance UID, SOP Class UID and position in the volume's slice order, the Frame of Reference UID,
and the patient and study modules to copy into derived objects (RTSTRUCT, SEG).

Refused with a one-line reason (:class:`InputImageError`): several series and none chosen (they are
listed with description and slice count), missing slices or uneven spacing (with where the gap is), two
slices at one position, slices with different orientation or size, gantry tilt (sheared volume), a DICOM file
that cannot be read (truncated: named, with its slice position when its header could be read). Oblique
series (slice planes not aligned with the patient axes) are supported: ``DicomReferences.oblique`` says so
and a warning is issued, since exports keep the series' own slice planes.
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.errors import InputImageError

PATIENT_STUDY_KEYWORDS = (
    # Patient module
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex", "OtherPatientIDsSequence",
    "PatientIdentityRemoved", "DeidentificationMethod", "DeidentificationMethodCodeSequence",
    # General Study module
    "StudyInstanceUID", "StudyDate", "StudyTime", "ReferringPhysicianName", "StudyID", "AccessionNumber",
    "StudyDescription",
    # Patient Study module
    "PatientAge", "PatientSize", "PatientWeight",
)


# SOP classes of single-frame CT, MR and PET image slices (PS3.4 B.5)
CROSS_SECTIONAL_STORAGE = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.4", "1.2.840.10008.5.1.4.1.1.128")


class ObliqueSeriesWarning(UserWarning):
    """The series' slice planes are not aligned with the patient axes (it is still loaded)."""


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder."""

    series_instance_uid: str
    modality: str
    description: str
    series_number: str
    n_files: int

    def line(self) -> str:
        return (f"{self.series_instance_uid or '(no Series Instance UID)'} ({self.modality}, #{self.series_number or '?'} "
                f"'{self.description or 'no description'}', {self.n_files} slices)")


@dataclass(frozen=True)
class SliceReference:
    """A source slice, in the volume's slice order (index k of the SimpleITK image)."""

    sop_instance_uid: str
    sop_class_uid: str
    position: tuple[float, float, float]
    path: Path


@dataclass
class DicomReferences:
    """What a derived object (RTSTRUCT, SEG) needs to point back at the series it was drawn on."""

    series_instance_uid: str
    study_instance_uid: str
    frame_of_reference_uid: str
    modality: str
    slices: list[SliceReference]
    patient_study: "object"  # pydicom Dataset holding only the patient and study module attributes
    headers: list = field(default_factory=list, repr=False)  # pydicom Datasets (no pixel data), slice order
    oblique: bool = False
    description: str = ""
    position_reference_indicator: str = ""

    @property
    def sop_instance_uids(self) -> list[str]:
        return [s.sop_instance_uid for s in self.slices]

    def check_referenceable(self) -> None:
        """Refuse a series that derived objects cannot point at: missing study, series or instance UIDs (some
        de-identification tools blank them), or repeated SOP Instance UIDs.

        Raises:
            InputImageError: naming what is missing.
        """
        missing = [name for name, value in (("Study Instance UID", self.study_instance_uid),
                                            ("Series Instance UID", self.series_instance_uid),
                                            ("Frame of Reference UID", self.frame_of_reference_uid)) if not value]
        blank = sum(1 for s in self.slices if not s.sop_instance_uid or not s.sop_class_uid)
        if blank:
            missing.append(f"SOP Instance/Class UID of {blank} of {len(self.slices)} slices")
        if missing:
            raise InputImageError("the DICOM series cannot be referenced by an RTSTRUCT or SEG: it has no "
                                  + ", no ".join(missing) + " (blanked by de-identification?); use the original "
                                  "series")
        if len(set(self.sop_instance_uids)) != len(self.slices):
            raise InputImageError("the DICOM series has repeated SOP Instance UIDs; it cannot be referenced")


def _scan(folder: Path) -> dict[str, list[tuple[Path, object]]]:
    """Headers of the image files (with a position and orientation) under ``folder``, by series UID."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    if not folder.exists():
        raise InputImageError(f"no such folder: {folder}")
    if not folder.is_dir():
        raise InputImageError(f"{folder} is not a folder; give the folder that holds the DICOM series")
    series: dict[str, list[tuple[Path, object]]] = {}
    broken = []
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and not p.name.startswith(".")):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except (InvalidDicomError, OSError, ValueError, EOFError, KeyError, TypeError):
            if _has_dicom_preamble(path):
                broken.append(path.name)
            continue
        if not all(k in ds for k in ("SeriesInstanceUID", "ImagePositionPatient", "ImageOrientationPatient",
                                     "Rows", "Columns", "PixelSpacing")):
            if str(getattr(ds, "file_meta", {}).get("MediaStorageSOPClassUID", "")) in CROSS_SECTIONAL_STORAGE:
                broken.append(path.name)  # says it is a CT/MR/PET slice, but its header ends early
            continue  # not a cross-sectional image (RTSTRUCT, SEG, dose, report, DICOMDIR...)
        series.setdefault(str(ds.SeriesInstanceUID), []).append((path, ds))
    if broken:
        raise InputImageError(f"{len(broken)} DICOM file(s) in {folder} cannot be read (truncated or damaged?): "
                              + ", ".join(broken[:5]) + (" ..." if len(broken) > 5 else ""))
    return series


def _has_dicom_preamble(path: Path) -> bool:
    """True when ``path`` starts like a DICOM file (128-byte preamble, then ``DICM``); an unreadable file (no
    permission) counts as one, so that it is reported."""
    try:
        with open(path, "rb") as handle:
            return handle.read(132)[128:] == b"DICM"
    except OSError:
        return True


def list_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """The image series under ``folder`` (searched recursively), largest first."""
    return [_info(uid, files) for uid, files in
            sorted(_scan(Path(folder)).items(), key=lambda item: -len(item[1]))]


def _info(uid: str, files: list) -> SeriesInfo:
    ds = files[0][1]
    return SeriesInfo(uid, str(ds.get("Modality", "")), str(ds.get("SeriesDescription", "")),
                      str(ds.get("SeriesNumber", "")), len(files))


def load_dicom_series(folder: str | os.PathLike, series_uid: str | None = None) -> tuple[sitk.Image, DicomReferences]:
    """Read one image series from a DICOM folder.

    Args:
        folder: a folder holding the series' files (searched recursively; other files are ignored).
        series_uid: the Series Instance UID to read when the folder holds several series.

    Returns:
        ``(image, references)``: the volume (slice k = ``references.slices[k]``) and its DICOM references.

    Raises:
        InputImageError: nothing usable, several series and none chosen, missing slices, uneven spacing,
            mixed orientations or sizes, gantry tilt, or pixel data that cannot be decoded.
    """
    folder = Path(folder)
    found = _scan(folder)
    if not found:
        raise InputImageError(f"no DICOM image series in {folder}")
    infos = sorted((_info(uid, files) for uid, files in found.items()), key=lambda info: -info.n_files)
    if series_uid is None:
        if len(found) > 1:
            raise InputImageError(f"{folder} holds {len(found)} image series; choose one with --series-uid: "
                                  + "; ".join(info.line() for info in infos))
        series_uid = next(iter(found))
    elif series_uid not in found:
        raise InputImageError(f"series {series_uid} is not in {folder}; found: "
                              + "; ".join(info.line() for info in infos))
    files = found[series_uid]
    shown = series_uid or "(no Series Instance UID)"  # de-identified series may have it blank
    if any(int(ds.get("NumberOfFrames", 1) or 1) > 1 for _, ds in files):
        raise InputImageError(f"series {shown} is a multi-frame (enhanced) image; only single-frame "
                              "series are supported")
    if len(files) < 2:
        raise InputImageError(f"series {shown} in {folder} has a single slice; a volume is needed")

    first = files[0][1]
    orientation = np.array([float(v) for v in first.ImageOrientationPatient])
    for path, ds in files:
        if not np.allclose([float(v) for v in ds.ImageOrientationPatient], orientation, atol=1e-4):
            raise InputImageError(f"slices of series {shown} have different orientations ({path.name} at "
                                  f"{[round(float(v), 2) for v in ds.ImagePositionPatient]} mm differs from "
                                  f"{files[0][0].name})")
        if (ds.Rows, ds.Columns) != (first.Rows, first.Columns) or not np.allclose(
                [float(v) for v in ds.PixelSpacing], [float(v) for v in first.PixelSpacing], atol=1e-4):
            raise InputImageError(f"slices of series {shown} differ in size or pixel spacing "
                                  f"({path.name} differs from {files[0][0].name})")
    row, col = orientation[:3], orientation[3:]
    normal = np.cross(row, col)
    positions = np.array([[float(v) for v in ds.ImagePositionPatient] for _, ds in files])
    along = positions @ normal
    order = np.argsort(along, kind="stable")
    files = [files[i] for i in order]
    positions, along = positions[order], along[order]
    _check_spacing(shown, files, positions, along, row, col)

    spacing_z = float(np.median(np.diff(along)))
    pixel_spacing = [float(v) for v in first.PixelSpacing]  # (between rows, between columns)
    direction = np.column_stack([row, col, normal])
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(path) for path, _ in files])
    try:
        image = reader.Execute()
    except RuntimeError as exc:
        raise InputImageError(f"cannot read the pixel data of series {shown}: {_unreadable(files, along)}"
                              ) from exc
    if image.GetSize() != (int(first.Columns), int(first.Rows), len(files)):
        raise InputImageError(f"series {shown}: read {image.GetSize()} voxels, expected "
                              f"{(int(first.Columns), int(first.Rows), len(files))}")
    image.SetOrigin(tuple(float(v) for v in positions[0]))
    image.SetSpacing((pixel_spacing[1], pixel_spacing[0], spacing_z))
    image.SetDirection(tuple(float(v) for v in direction.ravel()))

    oblique = not all(np.isclose(np.abs(axis), 1.0, atol=1e-4).any() for axis in (row, col))
    if oblique:
        warnings.warn(f"series {shown} is oblique (row direction {np.round(row, 4).tolist()}, column direction "
                      f"{np.round(col, 4).tolist()}); it is kept in its own slice planes", ObliqueSeriesWarning,
                      stacklevel=2)
    headers = [ds for _, ds in files]
    slices = [SliceReference(str(ds.get("SOPInstanceUID", "") or ""), str(ds.get("SOPClassUID", "") or ""),
                             tuple(float(v) for v in pos), path)
              for (path, ds), pos in zip(files, positions)]
    frame_uids = {str(ds.get("FrameOfReferenceUID", "") or "") for ds in headers}
    if len(frame_uids) != 1:
        raise InputImageError(f"slices of series {shown} are in {len(frame_uids)} Frames of Reference "
                              f"({', '.join(sorted(frame_uids))}); a series must have one")
    patient_study = _patient_study(first)
    references = DicomReferences(
        series_instance_uid=series_uid, study_instance_uid=str(first.get("StudyInstanceUID", "") or ""),
        frame_of_reference_uid=frame_uids.pop(), modality=str(first.get("Modality", "")), slices=slices,
        patient_study=patient_study, headers=headers, oblique=oblique,
        description=str(first.get("SeriesDescription", "")),
        position_reference_indicator=str(first.get("PositionReferenceIndicator", "") or ""))
    return image, references


def _where(files: list, along: np.ndarray, i: int) -> str:
    """Slice ``i``'s position along the slice normal (mm), file name and instance number, for messages."""
    number = files[i][1].get("InstanceNumber", None)
    return f"{along[i]:.2f} mm ({files[i][0].name}" + (f", instance {number})" if number is not None else ")")


def _unreadable(files: list, along: np.ndarray) -> str:
    """Which slice's pixel data cannot be read, found by reading each file on its own (only on failure)."""
    for i, (path, _) in enumerate(files):
        try:
            sitk.ReadImage(str(path))
        except RuntimeError:
            return f"the slice at {_where(files, along, i)} is truncated or damaged"
    return "the files read one by one, not as a series"


def _check_spacing(uid: str, files: list, positions: np.ndarray, along: np.ndarray,
                   row: np.ndarray, col: np.ndarray) -> None:
    """Refuse duplicate positions, gaps, uneven spacing and sheared (gantry-tilted) stacks."""
    def where(i: int) -> str:
        return _where(files, along, i)

    steps = np.diff(along)
    for i, step in enumerate(steps):
        if step < 1e-3:
            raise InputImageError(f"series {uid} has two slices at the same position {where(i)} and "
                                  f"{files[i + 1][0].name}; split the acquisitions into separate series")
    spacing = float(np.median(steps))
    tolerance = max(0.01 * spacing, 0.01)
    for i, step in enumerate(steps):
        if abs(step - spacing) > tolerance:
            missing = step / spacing - 1
            if abs(missing - round(missing)) < 0.05 and round(missing) >= 1:
                raise InputImageError(
                    f"series {uid} is missing {round(missing)} slice(s) between {where(i)} and {where(i + 1)}: "
                    f"a gap of {step:.2f} mm where slices are {spacing:.2f} mm apart")
            raise InputImageError(f"series {uid} has uneven slice spacing: {step:.2f} mm between {where(i)} and "
                                  f"{where(i + 1)}, where slices are {spacing:.2f} mm apart elsewhere")
    offsets = positions - positions[0]
    shear = np.abs(np.column_stack([offsets @ row, offsets @ col])).max()
    if shear > max(0.01 * spacing, 0.01):
        raise InputImageError(f"series {uid} is sheared (gantry tilt: slice origins drift {shear:.2f} mm within the "
                              "slice plane); resample it to an unsheared grid first")


def _patient_study(ds) -> object:
    """A new Dataset with the patient and study module attributes of ``ds`` (text decoded)."""
    from pydicom.dataset import Dataset

    out = Dataset()
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in ds:
            value = ds[keyword].value
            if ds[keyword].VR == "PN" and value is not None:
                value = str(value)
            setattr(out, keyword, value)
    return out
