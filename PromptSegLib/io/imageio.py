"""Reading and writing 3D images with their geometry (SimpleITK).

Geometry is ITK's: origin (mm, LPS), spacing (mm), direction cosines (row-major 3x3). Arrays taken from an
image are indexed ``[k, j, i]`` (slice, row, column), shape ``(Z, Y, X)``.
"""
from __future__ import annotations

import contextlib
import os
import sys
import tempfile
from pathlib import Path
from typing import Iterator

import numpy as np
import SimpleITK as sitk

from PromptSegLib.errors import InputImageError, OutputError
from PromptSegLib.io.outputs import atomic_path

IMAGE_SUFFIXES = (".nii", ".nii.gz", ".nrrd", ".nhdr", ".mha", ".mhd")
NIFTI_SUFFIXES = (".nii", ".nii.gz")


def list_dicom_series(folder: str | os.PathLike) -> list[str]:
    """Series Instance UIDs of the DICOM image series under ``folder``, largest first."""
    from PromptSegLib.io.dicom_series import list_series

    return [info.series_instance_uid for info in list_series(folder)]


def read_image(path: str | os.PathLike, series_uid: str | None = None, labels: bool = False) -> sitk.Image:
    """Read a 3D image file (NIfTI, NRRD, MHA) or a DICOM series folder, in full or not at all.

    A DICOM series is read by :func:`~PromptSegLib.io.dicom_series.load_dicom_series`, which refuses missing
    slices, unreadable files and mixed orientations; a NIfTI file is first read in full by nibabel
    (:func:`check_nifti_voxels`), since SimpleITK fills a truncated one with zeros and reads NaN/inf as 0.

    Args:
        path: an image file, or a folder holding DICOM files.
        series_uid: which series to read when the folder holds several (a file has no series to choose).
        labels: a labelmap (a reference mask), which may be all 0 (a case without the structure).

    Returns:
        The image with its origin, spacing and direction as stored.

    Raises:
        InputImageError: missing or unreadable path, truncated file, ambiguous or incomplete DICOM series,
            a series UID given for a file, or not a usable 3D volume.
    """
    path = Path(path)
    if not path.exists():
        raise InputImageError(f"no such file or folder: {path}")
    if series_uid is not None and not path.is_dir():
        raise InputImageError(f"a series UID ({series_uid}) was given, but {path} is a file, not a DICOM folder")
    messages: list[str] = []
    try:
        with native_messages(messages):
            if path.is_dir():
                from PromptSegLib.io.dicom_series import load_dicom_series

                image = load_dicom_series(path, series_uid)[0]
            else:
                if path.name.lower().endswith(NIFTI_SUFFIXES):
                    check_nifti_voxels(path)
                image = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        reason = " ".join(messages) or (str(exc).strip().splitlines()[-1] if str(exc).strip() else "reader error")
        raise InputImageError(f"cannot read {path}: {reason}") from exc
    for message in messages:  # warnings of a read that succeeded are passed on
        print(message, file=sys.stderr)
    validate_volume(image, str(path), allow_constant=labels)
    return image


@contextlib.contextmanager
def native_messages(lines: list[str]) -> Iterator[None]:
    """Collect into ``lines`` what native readers (ITK, MetaIO, GDCM) print on the process's stderr (file
    descriptor 2) while the block runs, so that an error can quote them in its one line instead of leaving
    them above it."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as sink:
        os.dup2(sink.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            sink.seek(0)
            lines.extend(line.strip() for line in sink.read().decode(errors="replace").splitlines() if line.strip())


def check_nifti_voxels(path: Path) -> None:
    """Refuse a NIfTI file that holds fewer voxel bytes than its header declares (truncated, or a cut compressed
    stream) or, for floating-point voxels, NaN or infinite values (read with nibabel, before any scaling).

    Raises:
        InputImageError: not readable as NIfTI, incomplete, or non-finite voxels.
    """
    import gzip
    import zlib

    import nibabel as nib
    from nibabel.filebasedimages import ImageFileError
    from nibabel.spatialimages import HeaderDataError

    try:
        image = nib.load(str(path))
        header = image.header
        declared = int(header.get_data_offset()) + int(np.prod(header.get_data_shape(), dtype=np.int64)
                                                      ) * header.get_data_dtype().itemsize
        if path.name.lower().endswith(".gz"):
            with gzip.open(path, "rb") as stream:  # count without keeping: the header may declare terabytes
                stored = sum(len(block) for block in iter(lambda: stream.read(1 << 24), b""))
        else:
            stored = path.stat().st_size
        if stored < declared:
            raise InputImageError(f"cannot read {path} in full: it holds {stored} bytes where its header declares "
                                  f"{declared} (truncated or damaged?)")
        if np.issubdtype(header.get_data_dtype(), np.floating):
            check_finite(np.asanyarray(image.dataobj.get_unscaled()), str(path))
    except (EOFError, OSError, ValueError, zlib.error, ImageFileError, HeaderDataError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise InputImageError(f"cannot read {path} in full (truncated or damaged?): {reason}") from exc


def check_finite(array: np.ndarray, name: str) -> None:
    """Refuse NaN or infinite voxels in ``array`` (any shape).

    Raises:
        InputImageError: with their count.
    """
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise InputImageError(f"{name} has {int((~np.isfinite(array)).sum())} NaN or infinite voxels")


def validate_volume(image: sitk.Image, name: str = "image", allow_constant: bool = False) -> None:
    """Refuse what cannot be segmented: not 3D, a single voxel thick, vector pixels, NaN/inf, constant (unless
    ``allow_constant``: a labelmap).

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
    check_finite(array, name)
    lo, hi = array.min(), array.max()
    if lo == hi and not allow_constant:
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


def same_lattice(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-3) -> bool:
    """True when ``b``'s voxels are voxels of ``a``'s grid (same spacing and direction, ``b``'s first voxel on
    ``a``'s lattice; sizes may differ: ``b`` a crop or an extension of ``a``), to ``tolerance`` (mm, and in voxels)."""
    if not (np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance)):
        return False
    index = np.array(a.TransformPhysicalPointToContinuousIndex(b.GetOrigin()))
    return bool(np.allclose(index, np.round(index), atol=tolerance))


def same_geometry(a: sitk.Image, b: sitk.Image, tolerance: float = 1e-5) -> bool:
    """True when two images share size, origin, spacing and direction (to ``tolerance``)."""
    return (a.GetSize() == b.GetSize()
            and np.allclose(a.GetOrigin(), b.GetOrigin(), atol=tolerance)
            and np.allclose(a.GetSpacing(), b.GetSpacing(), atol=tolerance)
            and np.allclose(a.GetDirection(), b.GetDirection(), atol=tolerance))
