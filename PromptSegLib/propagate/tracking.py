"""Where a structure lies on the slices between two drawn ones: its centre tracked through the image.

Shape-based interpolation between two drawn masks moves the shape along a straight line from one centroid to
the other. A long, thin, curved structure (the spinal cord, the esophagus: a few pixels wide, drawn 40 slices
apart) leaves that line by more than its own width, and the interpolated shape misses it. :func:`tracked_centres`
follows the anatomy instead: from each drawn slice it registers every slice to the next one in a window around
the structure (a rigid in-plane shift, normalised cross-correlation), chaining the shifts towards the other
drawn slice, and blends the two chains by distance, so that the path starts and ends at the drawn centroids
exactly and each chain's drift weighs least where it is largest; of the path's departure from the straight line
only a smooth bend is kept (``BEND_TERMS``), as each registration step's error is noise.

Beyond the outermost drawn slice of a tube there is no second drawn slice to end on: :func:`carried_shape` moves
the drawn mask along one chain, slice by slice.

Arrays are ``(Z, Y, X)``; ``axis`` 0/1/2 as in :mod:`PromptSegLib.propagate.propagator`; centres are
``(row, column)`` in pixels of the slice.
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

from PromptSegLib.propagate.geometry import take_slice

SEARCH = 2
"""Largest shift (pixels) searched between neighbouring slices, in each in-plane direction."""
MARGIN = 1.0
"""The registration window reaches this many times the drawn structure's larger extent beyond it (at least
``MIN_MARGIN``, at most ``MAX_MARGIN`` pixels): the structure and the anatomy around it."""
MIN_MARGIN = 6
MAX_MARGIN = 16
"""Margin limits (pixels)."""
BEND_TERMS = 1
"""Terms of the smooth bend kept off the straight line (``t (1 - t) (t - 1/2)^k``, k < ``BEND_TERMS``; 0: the
blended chains as they are). Centre error against the true centroids on the 12 OpenKBP validation patients of
``hn_oars.json``, gaps of the fill protocol (K = 2..8), by ``Testing/benchmarks/choose_track_bend.py``:
spinal-cord gaps of 24 slices or more, straight line 0.81 pixels, chains as they are 0.74, one term 0.70, two
0.72; in shorter gaps and compact organs the line is as good or a little better (brain stem, gaps of 6-11
slices: 0.34 against 0.42 with one term). The Dice of the fill decided (``multislice.TRACK``)."""
SIDE = 48
"""A window wider than this many pixels is compared on every n-th row and column (n the smallest that brings it
under ``SIDE``): a large structure's shift is measured as well on fewer pixels, and the cost stays flat."""


def _window(centre: np.ndarray, half: np.ndarray, shape: tuple[int, int]) -> tuple[slice, slice] | None:
    """The window of half-sizes ``half`` around ``centre`` (rounded), kept ``SEARCH`` pixels inside the slice."""
    lo = np.round(centre - half).astype(int)
    hi = np.round(centre + half).astype(int) + 1
    lo = np.maximum(lo, SEARCH)
    hi = np.minimum(hi, np.array(shape) - SEARCH)
    if (hi - lo < 3).any():
        return None
    return slice(lo[0], hi[0]), slice(lo[1], hi[1])


def _subpixel(scores: np.ndarray, index: int) -> float:
    """Parabolic refinement of a peak at ``index`` of 1D ``scores`` (0 at the border)."""
    if index == 0 or index == len(scores) - 1:
        return 0.0
    left, mid, right = scores[index - 1], scores[index], scores[index + 1]
    curvature = left - 2.0 * mid + right
    return float(0.5 * (left - right) / curvature) if curvature < 0 else 0.0


def slice_shift(fixed: np.ndarray, moving: np.ndarray, window: tuple[slice, slice]) -> np.ndarray:
    """In-plane shift ``(rows, columns)`` in pixels that carries ``fixed``'s content in ``window`` onto
    ``moving`` (both ``(H, W)``): the integer shift within ``SEARCH`` with the highest normalised
    cross-correlation, refined to a fraction of a pixel; zeros where the window is flat."""
    rows, cols = window
    stride = max(1, -(-max(rows.stop - rows.start, cols.stop - cols.start) // SIDE))
    template = fixed[rows, cols][::stride, ::stride].astype(np.float64)
    template = template - template.mean()
    norm = np.sqrt((template * template).sum())
    if norm == 0:
        return np.zeros(2)
    size = 2 * SEARCH + 1
    scores = np.full((size, size), -np.inf)
    for i, dy in enumerate(range(-SEARCH, SEARCH + 1)):
        for j, dx in enumerate(range(-SEARCH, SEARCH + 1)):
            patch = moving[rows.start + dy:rows.stop + dy:stride, cols.start + dx:cols.stop + dx:stride]
            patch = patch.astype(np.float64)
            patch = patch - patch.mean()
            denominator = norm * np.sqrt((patch * patch).sum())
            scores[i, j] = (template * patch).sum() / denominator if denominator > 0 else -1.0
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return np.array([i - SEARCH + _subpixel(scores[:, j], i), j - SEARCH + _subpixel(scores[i, :], j)])


def _chain(image: np.ndarray, axis: int, order: list[int], start: np.ndarray, half: np.ndarray) -> list[np.ndarray]:
    """Centres along ``order`` (slice indices, the first one drawn), each the previous one moved by the shift
    registered between their slices."""
    centres = [start]
    previous = take_slice(image, axis, order[0])
    for index in order[1:]:
        current = take_slice(image, axis, index)
        window = _window(centres[-1], half, previous.shape)
        shift = slice_shift(previous, current, window) if window is not None else np.zeros(2)
        centres.append(centres[-1] + shift)
        previous = current
    return centres


def _half_window(*masks: np.ndarray) -> np.ndarray:
    """Half-sizes (pixels) of the registration window for a structure drawn as ``masks`` (non-empty 2D)."""
    extent = max(np.ptp(np.nonzero(m)[k]) + 1 for m in masks for k in (0, 1))
    return np.full(2, extent / 2.0 + min(max(MARGIN * extent, MIN_MARGIN), MAX_MARGIN))


def tracked_centres(image: np.ndarray, axis: int, a: int, mask_a: np.ndarray, b: int, mask_b: np.ndarray
                    ) -> dict[int, np.ndarray]:
    """Centres ``(row, column)`` of the structure on the slices strictly between drawn slices ``a < b``
    (non-empty 2D masks), tracked from both drawn slices and blended by distance (see the module docstring).

    Returns:
        slice index -> centre in pixels, for every slice in ``a + 1 .. b - 1``.
    """
    half = _half_window(mask_a, mask_b)
    ca, cb = np.array(ndimage.center_of_mass(mask_a)), np.array(ndimage.center_of_mass(mask_b))
    t = np.linspace(0.0, 1.0, b - a + 1)[:, None]  # slices a..b
    forward = np.array(_chain(image, axis, list(range(a, b + 1)), ca, half))
    backward = np.array(_chain(image, axis, list(range(b, a - 1, -1)), cb, half)[::-1])
    # each chain also reaches the other drawn slice: remove the part of its drift that shows there, linearly
    forward += (cb - forward[-1]) * t
    backward += (ca - backward[0]) * (1 - t)
    path = (1 - t) * forward + t * backward
    line = (1 - t) * ca + t * cb
    if BEND_TERMS:  # keep only a smooth bend off the line: each slice's registration error is noise
        basis = np.concatenate([t * (1 - t) * (t - 0.5) ** k for k in range(BEND_TERMS)], axis=1)
        coefficients = np.linalg.lstsq(basis, path - line, rcond=None)[0]
        path = line + basis @ coefficients
    return {a + j: path[j] for j in range(1, b - a)}


def carried_shape(image: np.ndarray, axis: int, source: int, mask: np.ndarray, order: list[int]
                  ) -> dict[int, np.ndarray]:
    """The drawn ``mask`` (non-empty 2D) of slice ``source`` moved along one chain of registrations through the
    slices ``order`` (neighbours, outwards from ``source``): each slice gets the mask shifted by the chained
    centre's offset (linear interpolation, kept at 0.5).

    Returns:
        slice index -> bool 2D mask, for every slice in ``order``.
    """
    centre = np.array(ndimage.center_of_mass(mask))
    centres = _chain(image, axis, [source] + list(order), centre, _half_window(mask))
    weights = mask.astype(np.float32)
    return {index: ndimage.shift(weights, c - centre, order=1) >= 0.5 for index, c in zip(order, centres[1:])}
