"""OpenKBP patient folders (the sparse-CSV format of the OpenKBP challenge) read as images with geometry.

A patient folder (``provided-data/{train,validation}-pats/pt_N`` of the public ``open-kbp`` repository) holds
``ct.csv``, one CSV per contoured structure (``Brainstem.csv``, ``LeftParotid.csv``, ...) and
``voxel_dimensions.csv`` (in-plane, in-plane, slice thickness, mm). Each CSV is sparse: a header line, then
``index,value`` rows, ``index`` the flat C-order position in a 128x128x128 array whose axes run anterior to
posterior, right to left and superior to inferior. CT values are HU + 1024 (air, 0, is not stored); structure
rows have no value.

Images come back as SimpleITK images indexed ``[z, y, x]`` = (superior to inferior, anterior to posterior,
right to left) with spacing (in-plane, in-plane, slice) mm, origin 0 and direction diag(1, 1, -1) (LPS): the
right parotid lies at smaller x than the left, the spinal cord inferior to the brainstem.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.errors import InputImageError

SHAPE: tuple[int, int, int] = (128, 128, 128)
HU_OFFSET = 1024
STRUCTURES: tuple[str, ...] = ("Brainstem", "SpinalCord", "RightParotid", "LeftParotid", "Esophagus", "Larynx",
                               "Mandible")
"""Organs at risk in label-value order (1 = brainstem ... 7 = mandible), as the converted files in shared/."""
LABELS: dict[str, str] = {"1": "brain stem", "2": "spinal cord", "3": "right parotid", "4": "left parotid",
                          "5": "esophagus", "6": "larynx", "7": "mandible"}
"""Label value -> vocabulary target of ``read_patient``'s label image."""


def _sparse(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(indices, values) of one sparse CSV; values are NaN where the file stores none."""
    try:
        data = np.genfromtxt(path, delimiter=",", skip_header=1, dtype=np.float64, ndmin=2, invalid_raise=True)
    except (OSError, ValueError) as exc:
        raise InputImageError(f"cannot read OpenKBP file {path}: {exc}") from exc
    if data.size == 0:
        return np.zeros(0, np.int64), np.zeros(0)
    if data.shape[1] != 2:
        raise InputImageError(f"OpenKBP file {path}: expected 'index,value' rows, got {data.shape[1]} columns")
    indices = data[:, 0]
    if np.isnan(indices).any() or (indices < 0).any() or (indices >= np.prod(SHAPE)).any():
        raise InputImageError(f"OpenKBP file {path}: an index is missing or outside a {SHAPE} array")
    return indices.astype(np.int64), data[:, 1]


def _to_image(array: np.ndarray, spacing: tuple[float, float, float]) -> sitk.Image:
    """A (A-P, R-L, S-I) array as an LPS image indexed ``[S-I, A-P, R-L]``."""
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(array, (2, 0, 1))))
    image.SetSpacing(spacing)
    image.SetOrigin((0.0, 0.0, 0.0))
    image.SetDirection((1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, -1.0))
    return image


def voxel_size(folder: Path) -> tuple[float, float, float]:
    """(in-plane, in-plane, slice) voxel size in mm from ``voxel_dimensions.csv``."""
    path = Path(folder) / "voxel_dimensions.csv"
    try:
        values = np.loadtxt(path, dtype=np.float64).ravel()
    except (OSError, ValueError) as exc:
        raise InputImageError(f"cannot read OpenKBP voxel size {path}: {exc}") from exc
    if values.size != 3 or not np.all(np.isfinite(values)) or (values <= 0).any():
        raise InputImageError(f"OpenKBP voxel size {path} must hold three positive numbers, got {values.tolist()}")
    return tuple(float(v) for v in values)


def read_ct(folder: str | Path) -> sitk.Image:
    """The patient's CT in HU (int16; air where the CSV stores nothing is -1024 HU).

    Raises:
        InputImageError: no ``ct.csv`` (absent from some repository snapshots) or an unreadable file.
    """
    folder = Path(folder)
    if not (folder / "ct.csv").is_file():
        raise InputImageError(f"OpenKBP patient {folder} has no ct.csv")
    indices, values = _sparse(folder / "ct.csv")
    if np.isnan(values).any():
        raise InputImageError(f"OpenKBP file {folder / 'ct.csv'}: a CT row has no value")
    flat = np.zeros(int(np.prod(SHAPE)), np.int32)
    flat[indices] = np.rint(values).astype(np.int32)
    flat = np.clip(flat - HU_OFFSET, -32768, 32767).astype(np.int16)
    return _to_image(flat.reshape(SHAPE), voxel_size(folder))


def read_structures(folder: str | Path, structures: tuple[str, ...] = STRUCTURES) -> sitk.Image:
    """The patient's organ label image (uint8, value i + 1 for ``structures[i]``; a later structure overwrites an
    earlier one where they overlap; an absent CSV is an organ not contoured for this patient)."""
    folder = Path(folder)
    flat = np.zeros(int(np.prod(SHAPE)), np.uint8)
    for value, name in enumerate(structures, start=1):
        path = folder / f"{name}.csv"
        if path.is_file():
            flat[_sparse(path)[0]] = value
    return _to_image(flat.reshape(SHAPE), voxel_size(folder))


def contoured(folder: str | Path) -> list[int]:
    """Label values (1-based, ``STRUCTURES`` order) of the organs delineated for this patient (a CSV present)."""
    return [value for value, name in enumerate(STRUCTURES, start=1) if (Path(folder) / f"{name}.csv").is_file()]


def patients(folder: str | Path) -> list[Path]:
    """Patient folders (``pt_*``) under ``folder`` that hold a CT, sorted by patient number."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputImageError(f"OpenKBP folder {folder} does not exist")
    found = [p for p in folder.glob("pt_*") if p.is_dir() and (p / "ct.csv").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("_")[1]) if p.name.split("_")[1].isdigit() else 0)
