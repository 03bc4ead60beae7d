"""Overlap and distance metrics on binary masks ``(Z, Y, X)`` with voxel spacing in mm ``(sz, sy, sx)``."""
from __future__ import annotations

import numpy as np
from scipy import ndimage


def dice(prediction: np.ndarray, truth: np.ndarray) -> float:
    """Dice coefficient; 1.0 when both are empty, 0.0 when only one is."""
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    total = prediction.sum() + truth.sum()
    return 1.0 if total == 0 else float(2.0 * np.logical_and(prediction, truth).sum() / total)


def _surface_distances(a: np.ndarray, b: np.ndarray, spacing: tuple[float, float, float]) -> np.ndarray:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``."""
    surface_a = a & ~ndimage.binary_erosion(a)
    surface_b = b & ~ndimage.binary_erosion(b)
    return ndimage.distance_transform_edt(~surface_b, sampling=spacing)[surface_a]


def hd95(prediction: np.ndarray, truth: np.ndarray, spacing: tuple[float, float, float]) -> float:
    """95th percentile symmetric Hausdorff distance in mm; NaN when either mask is empty."""
    prediction, truth = prediction.astype(bool), truth.astype(bool)
    if not prediction.any() or not truth.any():
        return float("nan")
    distances = np.concatenate([_surface_distances(prediction, truth, spacing),
                                _surface_distances(truth, prediction, spacing)])
    return float(np.percentile(distances, 95))
