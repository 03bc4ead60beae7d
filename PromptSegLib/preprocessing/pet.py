"""PET in SUV body weight from DICOM tags, and PET resampled onto a CT grid.

The SUVbw scale factor follows the vendor-neutral logic of the QIBA FDG-PET/CT profile (appendix G):

- ``Units`` (0054,1001) ``BQML``: SUVbw = activity [Bq/ml] * weight [g] / dose [Bq], where the dose is the
  Radionuclide Total Dose (0018,1074) decayed to the time the voxel values refer to, which depends on
  ``DecayCorrection`` (0054,1102):

  * ``START``: values are decay-corrected to the series start, so the dose is decayed from the
    radiopharmaceutical start time (0018,1078 / 0018,1072) to the scan time (Series Date/Time, or the GE
    private scan time (0009,100D) when the series is later than the acquisition, i.e. post-processed);
  * ``ADMIN``: values are decay-corrected to the administration time, so the dose is used as it is.

- ``Units`` ``GML``: the values are already SUVbw (g/ml), scale factor 1.
- ``Units`` ``CNTS``: the Philips private SUV scale factor (7053,1000) when present, else refused.

Any other combination (no decay correction, ``CorrectedImage`` without DECY/ATTN, a missing weight, dose or
half-life) is refused with a one-line :class:`PETConversionError` naming the tag. The rescale slope and
intercept are applied per slice (GE writes one slope per slice).
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.errors import InputImageError, PromptSegError
from PromptSegLib.preprocessing.preprocess import resample_to

SECONDS_PER_DAY = 24 * 3600


class PETConversionError(PromptSegError):
    """The DICOM PET series lacks (or contradicts) a tag the SUV conversion needs."""


class NoOverlapError(InputImageError):
    """Two images meant to be co-registered do not overlap in physical space."""


@dataclass
class SUVInfo:
    """How the SUVbw scale factor was obtained (kept for reports and the Slicer panel)."""

    units: str
    decay_correction: str
    scale_factor: float  # multiplies activity (after rescale) to give SUVbw
    weight_kg: float | None = None
    injected_dose_bq: float | None = None
    half_life_s: float | None = None
    decay_time_s: float | None = None  # injection -> scan, only used for START
    decayed_dose_bq: float | None = None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)


def _value(ds, keyword: str, where: str = "", required: bool = True):
    value = ds.get(keyword) if ds is not None else None
    if value is None or (isinstance(value, str) and not value.strip()):
        if required:
            raise PETConversionError(f"cannot compute SUV: DICOM tag {keyword}{where} is missing or empty")
        return None
    return value


def _positive(ds, keyword: str, where: str = "") -> float:
    value = _value(ds, keyword, where)
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise PETConversionError(f"cannot compute SUV: DICOM tag {keyword}{where} is not a number ({value!r})") from exc
    if not np.isfinite(number) or number <= 0:
        raise PETConversionError(f"cannot compute SUV: DICOM tag {keyword}{where} must be positive, got {number}")
    return number


def _parse_time(text: str) -> timedelta:
    """DICOM TM (HHMMSS.FFFFFF, HH:MM:SS in old files) -> time since midnight."""
    text = str(text).strip().replace(":", "")
    whole, _, fraction = text.partition(".")
    whole = whole.ljust(6, "0")
    return timedelta(hours=int(whole[0:2]), minutes=int(whole[2:4]), seconds=int(whole[4:6]),
                     microseconds=int((fraction + "000000")[:6]) if fraction else 0)


def _parse_datetime(date: str, time: str) -> datetime:
    return datetime.strptime(str(date).strip()[:8], "%Y%m%d") + _parse_time(time)


def _parse_dt(text: str) -> datetime:
    """DICOM DT (YYYYMMDDHHMMSS.FFFFFF, possibly with a UTC offset, which is ignored)."""
    text = str(text).strip()
    for sign in "+-":
        if sign in text[8:]:
            text = text[: 8 + text[8:].index(sign)]
    return _parse_datetime(text[:8], text[8:] or "000000")


def _scan_datetime(ds) -> datetime:
    series = _parse_datetime(_value(ds, "SeriesDate"), _value(ds, "SeriesTime"))
    acq_date, acq_time = ds.get("AcquisitionDate"), ds.get("AcquisitionTime")
    if acq_date and acq_time and series > _parse_datetime(acq_date, acq_time):
        # post-processed series: QIBA uses the GE private scan date/time when present
        private = ds.get((0x0009, 0x100D))
        if private is None or not str(private.value).strip():
            raise PETConversionError("cannot compute SUV: Series Date/Time is later than Acquisition Date/Time "
                                     "(post-processed series) and the GE private scan time (0009,100D) is absent")
        return _parse_dt(private.value)
    return series


def _injection_datetime(info, scan: datetime, notes: list[str]) -> datetime:
    where = " (in RadiopharmaceuticalInformationSequence)"
    start_dt = info.get("RadiopharmaceuticalStartDateTime")
    start_time = info.get("RadiopharmaceuticalStartTime")
    if start_dt and str(start_dt).strip():
        injected = _parse_dt(start_dt)
        if 0 <= (scan - injected).total_seconds() < SECONDS_PER_DAY:
            return injected
        notes.append(f"RadiopharmaceuticalStartDateTime {start_dt} is not within the day before the scan "
                     f"({scan:%Y%m%d %H%M%S}; dates shifted by de-identification?): used its time of day only")
        start_time = str(start_dt).strip()[8:]
    if not start_time or not str(start_time).strip():
        raise PETConversionError("cannot compute SUV: DICOM tags RadiopharmaceuticalStartDateTime and "
                                 f"RadiopharmaceuticalStartTime{where} are both missing (decay correction START "
                                 "needs the injection time)")
    injected = datetime.combine(scan.date(), datetime.min.time()) + _parse_time(start_time)
    if injected > scan:  # QIBA: start date not explicit, assume the series date but consider spanning midnight
        injected -= timedelta(days=1)
        notes.append("injection time of day is after the scan time: assumed the injection was the day before")
    return injected


def suv_scale_factor(ds) -> SUVInfo:
    """The factor turning rescaled PET values (after slope/intercept) into SUVbw, from one slice's header.

    Raises:
        PETConversionError: not a PET image, or a tag the conversion needs is missing, empty or invalid.
    """
    modality = str(ds.get("Modality", "")).upper()
    if modality != "PT":
        raise PETConversionError(f"cannot compute SUV: Modality is {modality or 'missing'}, expected PT")
    units = str(_value(ds, "Units")).strip().upper()
    notes: list[str] = []
    if units == "GML":
        return SUVInfo(units, str(ds.get("DecayCorrection", "")).strip().upper(), 1.0,
                       notes=["Units GML: values are already SUV body weight (g/ml)"])
    if units == "CNTS":
        private = ds.get((0x7053, 0x1000))
        if private is None:
            raise PETConversionError("cannot compute SUV: Units are CNTS and the Philips SUV scale factor "
                                     "(7053,1000) is absent")
        return SUVInfo(units, str(ds.get("DecayCorrection", "")).strip().upper(), float(private.value),
                       notes=["Units CNTS: Philips private SUV scale factor (7053,1000)"])
    if units != "BQML":
        raise PETConversionError(f"cannot compute SUV: Units {units!r} not supported (BQML, GML or CNTS)")
    corrected = [str(c).upper() for c in (ds.get("CorrectedImage") or [])]
    missing = [c for c in ("ATTN", "DECY") if c not in corrected]
    if missing:
        raise PETConversionError("cannot compute SUV: CorrectedImage (0028,0051) does not list "
                                 + " and ".join(missing) + " (attenuation and decay correction are required)")
    decay = str(_value(ds, "DecayCorrection")).strip().upper()
    if decay not in ("START", "ADMIN"):
        raise PETConversionError(f"cannot compute SUV: DecayCorrection is {decay!r}; only START and ADMIN are "
                                 "supported")
    seq = ds.get("RadiopharmaceuticalInformationSequence")
    if not seq:
        raise PETConversionError("cannot compute SUV: DICOM tag RadiopharmaceuticalInformationSequence is missing")
    info, where = seq[0], " (in RadiopharmaceuticalInformationSequence)"
    weight_kg = _positive(ds, "PatientWeight")
    dose = _positive(info, "RadionuclideTotalDose", where)
    if dose < 1e4:  # vendors write Bq (QIBA); a value this small can only be MBq
        notes.append(f"RadionuclideTotalDose {dose} read as MBq")
        dose *= 1e6
    half_life = _positive(info, "RadionuclideHalfLife", where)
    result = SUVInfo(units, decay, 0.0, weight_kg, dose, half_life, notes=notes)
    if decay == "START":
        scan = _scan_datetime(ds)
        decay_time = (scan - _injection_datetime(info, scan, notes)).total_seconds()
        result.decay_time_s = decay_time
        result.decayed_dose_bq = dose * 2.0 ** (-decay_time / half_life)
    else:  # ADMIN: values are decay-corrected to the administration time
        result.decayed_dose_bq = dose
    result.scale_factor = weight_kg * 1000.0 / result.decayed_dose_bq
    return result


def read_pet_suv(folder: str | os.PathLike, series_uid: str | None = None) -> tuple[sitk.Image, SUVInfo]:
    """Read a DICOM PET series and convert it to SUVbw (float32), rescaling each slice with its own slope.

    Geometry (origin, spacing, direction, slice order) and the checks of a complete series come from
    :func:`~PromptSegLib.io.dicom_series.load_dicom_series`; the values from each file's stored pixels * its
    RescaleSlope + RescaleIntercept, times the SUV scale factor.

    Raises:
        InputImageError: no, ambiguous or incomplete series in ``folder`` (missing slices, unreadable files).
        PETConversionError: see :func:`suv_scale_factor`; also when slices disagree on Units or weight.
    """
    import pydicom

    from PromptSegLib.io.dicom_series import load_dicom_series

    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(f"no such DICOM folder: {folder}")
    geometry, references = load_dicom_series(folder, series_uid)
    series_uid = references.series_instance_uid
    files = [s.path for s in references.slices]
    headers = [pydicom.dcmread(f) for f in files]
    info = suv_scale_factor(headers[0])
    slices = []
    for path, ds in zip(files, headers):
        for keyword in ("Units", "PatientWeight"):
            if str(ds.get(keyword)) != str(headers[0].get(keyword)):
                raise PETConversionError(f"cannot compute SUV: {keyword} differs between slices "
                                         f"({headers[0].get(keyword)} vs {ds.get(keyword)} in {Path(path).name})")
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        slices.append(ds.pixel_array.astype(np.float64) * slope + intercept)
    values = np.stack(slices) * info.scale_factor
    if values.shape != geometry.GetSize()[::-1]:
        raise InputImageError(f"PET series {series_uid}: pixel data {values.shape} does not match the geometry "
                              f"{geometry.GetSize()[::-1]}")
    suv = sitk.GetImageFromArray(values.astype(np.float32))
    suv.CopyInformation(geometry)
    return suv, info


def read_pet_image(path: str | os.PathLike, series_uid: str | None = None) -> tuple[sitk.Image, str]:
    """A PET volume in SUV body weight, as segmentation takes it, and a one-line note on its units.

    A DICOM series folder is converted from its tags (:func:`read_pet_suv`); an image file (NIfTI, NRRD, MHA)
    has no such tags and is taken to be in SUV already.

    Raises:
        InputImageError: unreadable, incomplete or unusable (see ``read_image``, ``load_dicom_series``).
        PETConversionError: a DICOM series without the tags the conversion needs.
    """
    from PromptSegLib.io.imageio import read_image, validate_volume

    if not Path(path).is_dir():
        return read_image(path, series_uid), (f"{path} is taken to be in SUV body weight already (an image file has "
                                              "no dose tags; a DICOM PET series is converted from its own)")
    image, info = read_pet_suv(path, series_uid)
    validate_volume(image, str(path))
    return image, (f"{path}: PET converted to SUV body weight from its DICOM tags (Units {info.units}, "
                   f"scale factor {info.scale_factor:.6g})")


def physical_bounds(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """Axis-aligned physical bounding box (mm) of the voxel extents (corners +- half a voxel)."""
    size = np.array(image.GetSize())
    corners = [np.array(c) for c in np.ndindex(2, 2, 2)]
    points = []
    for corner in corners:
        index = corner * (size - 1) + (corner * 2 - 1) * 0.5  # outer faces of the edge voxels
        points.append(image.TransformContinuousIndexToPhysicalPoint([float(i) for i in index]))
    points = np.array(points)
    return points.min(axis=0), points.max(axis=0)


def overlap_fraction(moving: sitk.Image, reference: sitk.Image) -> tuple[float, float]:
    """Fractions of ``reference``'s and of ``moving``'s bounding-box volume inside the other's box."""
    lo_a, hi_a = physical_bounds(reference)
    lo_b, hi_b = physical_bounds(moving)
    inter = np.clip(np.minimum(hi_a, hi_b) - np.maximum(lo_a, lo_b), 0, None).prod()
    return float(inter / np.prod(hi_a - lo_a)), float(inter / np.prod(hi_b - lo_b))


def check_overlap(moving: sitk.Image, reference: sitk.Image, min_overlap: float = 0.0) -> dict:
    """Check that ``moving`` (e.g. PET) overlaps ``reference`` (e.g. CT) in physical space.

    Returns:
        ``{"ct_covered": fraction of the reference box inside the moving box, "pet_covered": fraction of the
        moving box inside the reference box, "message": ...}``.

    Raises:
        NoOverlapError: the physical boxes do not overlap, or the reference fraction covered is ``<= min_overlap``.
    """
    ct_covered, pet_covered = overlap_fraction(moving, reference)
    lo_c, hi_c = physical_bounds(reference)
    lo_p, hi_p = physical_bounds(moving)
    boxes = (f"CT box {np.round(lo_c, 1).tolist()}..{np.round(hi_c, 1).tolist()} mm, "
             f"PET box {np.round(lo_p, 1).tolist()}..{np.round(hi_p, 1).tolist()} mm")
    if ct_covered <= 0:
        raise NoOverlapError(f"PET and CT do not overlap in physical space ({boxes}); are they from the same "
                             "study and frame of reference?")
    if ct_covered <= min_overlap:
        raise NoOverlapError(f"PET covers only {100 * ct_covered:.1f}% of the CT (needed > {100 * min_overlap:.0f}%); "
                             + boxes)
    message = f"PET covers {100 * ct_covered:.1f}% of the CT volume; {100 * pet_covered:.1f}% of the PET lies in the CT"
    return {"ct_covered": ct_covered, "pet_covered": pet_covered, "message": message}


def resample_pet_to_ct(pet: sitk.Image, ct: sitk.Image, min_overlap: float = 0.0) -> tuple[sitk.Image, dict]:
    """PET (SUV) resampled linearly onto the CT grid through physical space (the two are co-registered).

    Returns:
        the resampled PET (float32, 0 outside the PET field of view) and the report of :func:`check_overlap`.

    Raises:
        NoOverlapError: see :func:`check_overlap`.
    """
    report = check_overlap(pet, ct, min_overlap)
    return resample_to(pet, ct, sitk.sitkLinear, 0.0, sitk.sitkFloat32), report
