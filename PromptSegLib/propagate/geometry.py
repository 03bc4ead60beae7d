"""Slice geometry of propagation: a 2D slice of a ``(Z, Y, X)`` volume along an axis, and the network's square
box around a prompt mask (resampling a slice into it and its output back, robust per-slice normalisation).

The box is ``roi_scale`` times the mask's bounding box, at least ``min_roi`` pixels, resampled to ``input_size``
pixels; the same rule builds the training crops."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
from scipy import ndimage


def normalise_slice(array: np.ndarray, quantiles: Sequence[float] = (0.5, 99.5)) -> np.ndarray:
    """Robust min-max: the ``quantiles`` percentiles of the slice map to 0 and 1, clipped; constant -> 0."""
    lo, hi = np.percentile(array, quantiles)
    if hi <= lo:
        return np.zeros(array.shape, np.float32)
    return np.clip((array.astype(np.float32) - np.float32(lo)) / np.float32(hi - lo), 0.0, 1.0).astype(np.float32)


def box_transform(center: Sequence[float], side: float, size: int, scale: float = 1.0, angle: float = 0.0,
                  flips: Sequence[bool] = (False, False), shift: Sequence[float] = (0.0, 0.0)
                  ) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix, offset)`` for ``scipy.ndimage.affine_transform``: network pixel ``o`` (``size`` x ``size``)
    -> slice coordinate ``matrix @ o + offset``, for a square box of ``side`` slice pixels around ``center``,
    optionally zoomed by ``scale``, rotated by ``angle`` (rad), flipped per axis and shifted (slice pixels).
    """
    step = side / size / scale
    cos, sin = math.cos(angle), math.sin(angle)
    flip = np.diag([-1.0 if flips[0] else 1.0, -1.0 if flips[1] else 1.0])
    matrix = step * np.array([[cos, -sin], [sin, cos]]) @ flip
    half = np.full(2, (size - 1) / 2.0)
    offset = np.asarray(center, float) + np.asarray(shift, float) - matrix @ half
    return matrix, offset


def sample_box(array: np.ndarray, matrix: np.ndarray, offset: np.ndarray, size: int, order: int = 1) -> np.ndarray:
    """Resample a 2D slice into the ``size`` x ``size`` network box (edges repeated outside the slice)."""
    return ndimage.affine_transform(array.astype(np.float32, copy=False), matrix, offset, (size, size),
                                    order=order, mode="nearest")


def roi_box(mask: np.ndarray, roi_scale: float, min_roi: int) -> tuple[np.ndarray, float]:
    """Centre ``(row, col)`` and side of the network box around a non-empty 2D mask."""
    rows, cols = np.nonzero(mask)
    r0, r1, c0, c1 = rows.min(), rows.max(), cols.min(), cols.max()
    side = max(float(max(r1 - r0 + 1, c1 - c0 + 1)) * roi_scale, float(min_roi))
    return np.array([(r0 + r1) / 2.0, (c0 + c1) / 2.0]), side


def box_to_slice(values: np.ndarray, center: np.ndarray, side: float, shape: tuple[int, int]) -> np.ndarray:
    """Map a ``size`` x ``size`` network output back onto the slice grid (zero outside the box)."""
    size = values.shape[0]
    out = np.zeros(shape, np.float32)
    lo = np.maximum(np.floor(center - side / 2.0).astype(int), 0)
    hi = np.minimum(np.ceil(center + side / 2.0).astype(int) + 1, np.asarray(shape))
    if np.any(hi <= lo):
        return out
    step = size / side
    # slice pixel p -> network pixel (p - center) * step + (size - 1) / 2
    offset = (lo - center) * step + (size - 1) / 2.0
    out[lo[0]:hi[0], lo[1]:hi[1]] = ndimage.affine_transform(
        values.astype(np.float32), np.diag([step, step]), offset, tuple(hi - lo), order=1, mode="constant", cval=0.0)
    return out


def take_slice(volume: np.ndarray, axis: int, index: int) -> np.ndarray:
    """The 2D slice ``index`` of a ``(Z, Y, X)`` volume along ``axis`` (a view)."""
    return np.take(volume, index, axis=axis)


def set_slice(volume: np.ndarray, axis: int, index: int, values: np.ndarray) -> None:
    """Write ``values`` into the 2D slice ``index`` of a ``(Z, Y, X)`` volume along ``axis``."""
    key = [slice(None)] * 3
    key[axis] = index
    volume[tuple(key)] = values
