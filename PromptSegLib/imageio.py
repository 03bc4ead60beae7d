"""Reading and writing 3D images with their geometry (SimpleITK).

Geometry is ITK's: origin (mm, LPS), spacing (mm), direction cosines (row-major 3x3). Arrays taken from an
image are indexed ``[k, j, i]`` (slice, row, column), shape ``(Z, Y, X)``.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError, OutputError
from .outputs import atomic_path

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")


def list_dicom_series(folder: str | os.PathLike) -> list[str]:
    """Series Instance UIDs of the DICOM series found directly in ``folder``."""
    return list(sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder)) or [])


def read_image(path: str | os.PathLike, series_uid: str | None = None) -> sitk.Image:
    """Read a 3D image file (NIfTI, NRRD, MHA) or a DICOM series folder.

    Args:
        path: an image file, or a folder holding DICOM files.
        series_uid: which series to read when the folder holds several.

    Returns:
        The image with its origin, spacing and direction as stored.

    Raises:
        InputImageError: missing or unreadable path, ambiguous DICOM folder, or not a usable 3D volume.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"no such file or folder: {path}")
    try:
        if path.is_dir():
            image = _read_dicom_series(path, series_uid)
        else:
            image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        first_line = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown reader error"
        raise InputImageError(f"cannot read {path}: {first_line}") from exc
    validate_volume(image, str(path))
    return image


def _read_dicom_series(folder: Path, series_uid: str | None) -> sitk.Image:
    series = list_dicom_series(folder)
    if not series:
        raise InputImageError(f"no DICOM series in folder {folder}")
    if series_uid is None:
        if len(series) > 1:
            raise InputImageError(
                f"folder {folder} holds {len(series)} DICOM series, choose one: " + ", ".join(series))
        series_uid = series[0]
    elif series_uid not in series:
        raise InputImageError(f"series {series_uid} is not in {folder}; found: " + ", ".join(series))
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series_uid))
    return reader.Execute()


def validate_volume(image: sitk.Image, name: str = "image") -> None:
    """Refuse what cannot be segmented: not 3D, a single voxel thick, vector pixels, NaN/inf, constant.

    Raises:
        InputImageError: with the reason.
    """
    if image.GetDimension() != 3:
        raise InputImageError(f"{name} is {image.GetDimension()}D; a 3D volume is needed")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputImageError(f"{name} has {image.GetNumberOfComponentsPerPixel()} components per voxel "
                              "(a 4D or colour image); a scalar 3D volume is needed")
    size = image.GetSize()
    if min(size) < 2:
        raise InputImageError(f"{name} has size {size}: it is a single slice, not a volume")
    array = sitk.GetArrayViewFromImage(image)
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise InputImageError(f"{name} has {bad} NaN or infinite voxels")
    lo, hi = array.min(), array.max()
    if lo == hi:
        raise InputImageError(f"{name} is constant (every voxel is {lo}): nothing to segment")


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` atomically to a file whose extension picks the format (NIfTI, NRRD, MHA)."""
    path = Path(path)
    if not str(path).lower().endswith(IMAGE_SUFFIXES):
        raise OutputError(f"unsupported image file type for {path}; use one of " + ", ".join(IMAGE_SUFFIXES))
    with atomic_path(path) as tmp:
        try:
            sitk.WriteImage(image, str(tmp), compress)
        except RuntimeError as exc:
            raise OutputError(f"cannot write {path}: {str(exc).strip().splitlines()[-1]}") from exc
    return path


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-5) -> bool:
    """True when two images share size, origin, spacing and direction (to ``tolerance``)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance))
