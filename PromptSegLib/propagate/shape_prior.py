"""Shape priors for filling a structure from drawn slices: interpolation between two drawn masks, and the
size profile that says where a structure is likely to end beyond the outermost drawn slices.

2D masks are bool ``(H, W)`` slices; distances along the slicing axis and in-plane are in millimetres.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

ASPECT = 1.5
"""Prior half-length of a structure along the slicing axis over its largest in-plane radius (an ellipsoid's
axis ratio): the median over the 24 training sarcomas' GTVs (CT and MR, STS_001..STS_024, each end from its
largest slice), used only where the drawn slices do not show how the structure tapers."""
PRIOR_WEIGHT = 1.0
"""Weight of the aspect prior against one drawn slice in :func:`fit_profile` (both in normalised units)."""


def signed_distance(mask: np.ndarray) -> np.ndarray:
    """Signed Euclidean distance ``(H, W)`` in pixels to the boundary of a non-empty 2D mask: negative
    inside, positive outside."""
    mask = np.asarray(mask, bool)
    return (ndimage.distance_transform_edt(~mask) - ndimage.distance_transform_edt(mask)).astype(np.float32)


def interpolated_distance(a: np.ndarray, b: np.ndarray, t: float, keep_area: bool = True,
                          centre: np.ndarray | None = None, extra_area: float = 0.0) -> np.ndarray:
    """Shape-based interpolation of two non-empty 2D masks at ``t`` in ``[0, 1]`` (0 gives ``a``), area kept.

    The two shapes are moved onto their common centroid, their signed distances blended ``(1 - t) * a + t * b``,
    and the result moved to the interpolated centroid, so a structure that shifts between the slices keeps its
    place. Unless ``keep_area`` is false, the blend's zero level is then moved so that the shape's area is the
    interpolated area ``(1 - t) |a| + t |b|``: blended distances alone shrink thin and ragged shapes whose insides
    do not overlap (a glioblastoma in pieces got under half its area).

    Chosen by ``Testing/benchmarks/choose_fill_reach.py --keep-area false true --threads 2`` on its validation
    groups (the fill's protocol, K = 2, 3, 4, 6, 8): mean whole-structure Dice without / with the area kept:
    12 glioblastomas 0.804 / 0.815 (ITK's Fill between slices 0.812), 11 hippocampi 0.821 / 0.831, 61 OpenKBP
    organs 0.816 / 0.822; higher in every group at every K. In the slices filled between the drawn ones alone,
    glioblastomas at K = 2: 0.274 / 0.365 (ITK 0.394).

    ``centre``: where to put the shape's centroid, ``(row, column)`` pixels (default: the interpolated centroid;
    :func:`~PromptSegLib.propagate.tracking.tracked_centres` gives one that follows the image). ``extra_area``:
    pixels added to the interpolated area where it is kept (a size profile's bulge between the two slices,
    :meth:`SizeProfile.excess_area`; negative: fewer).

    Returns:
        the interpolated shape's signed distance ``(H, W)`` in pixels (the mask is where it is negative).
    """
    ca, cb = np.array(ndimage.center_of_mass(a)), np.array(ndimage.center_of_mass(b))
    middle = (1.0 - t) * ca + t * cb if centre is None else np.asarray(centre, float)
    da = ndimage.shift(signed_distance(a), middle - ca, order=1, mode="nearest")
    db = ndimage.shift(signed_distance(b), middle - cb, order=1, mode="nearest")
    blend = (1.0 - t) * da + t * db
    area = int(round((1.0 - t) * np.count_nonzero(a) + t * np.count_nonzero(b) + extra_area))
    if not keep_area or not 0 < area < blend.size:
        return blend
    lowest = np.partition(blend.ravel(), (area - 1, area))[area - 1:area + 1]
    return blend - np.float32(lowest.mean())  # the `area` lowest values fall below zero


def equivalent_radius(mask: np.ndarray, pixel_area: float) -> float:
    """Radius (mm) of the disc with the area of a 2D mask whose pixels cover ``pixel_area`` mm^2."""
    return math.sqrt(float(np.count_nonzero(mask)) * pixel_area / math.pi)


@dataclass
class SizeProfile:
    """Squared equivalent radius along the slicing axis, ``r^2(z) = scale^2 * (a + b u + c u^2)`` with
    ``u = (z - origin) / scale`` (all mm): a quadric fitted to the drawn slices (an ellipsoid when ``c < 0``)."""

    origin: float
    scale: float
    coefficients: tuple[float, float, float]

    def radius(self, z: float) -> float:
        """Expected equivalent radius (mm) at position ``z`` (mm); 0 where the structure has ended."""
        u = (z - self.origin) / self.scale
        a, b, c = self.coefficients
        return self.scale * math.sqrt(max(a + b * u + c * u * u, 0.0))

    def excess_area(self, start: float, stop: float, z: float) -> float:
        """How much larger (mm^2) the profile's cross-section at ``z`` is than the straight line between its
        cross-sections at ``start`` and ``stop`` (mm, ``start < z < stop``): positive where it bulges between
        them (an ellipsoid), negative where it narrows."""
        t = (z - start) / (stop - start)
        area = [math.pi * self.radius(p) ** 2 for p in (start, z, stop)]
        return area[1] - (1.0 - t) * area[0] - t * area[2]


def drawn_aspect(positions: Sequence[float], radii: Sequence[float], ends_beyond: float | None) -> float:
    """The aspect prior for :func:`fit_profile` given the drawn slices: :data:`ASPECT`, or, with two or more
    drawn slices, at least what they show of the structure's length: half their span plus ``ends_beyond``
    median spacings of theirs (where the ends are expected), over the largest drawn radius. ``None``: ASPECT.

    Without it, two drawn slices many radii apart got an ellipsoid a few radii long, which ended just past them,
    and the fill stopped there (a brain stem drawn on two slices 6 apart: Dice 0.713, with it 0.762, both
    reaching half a spacing; ``Testing/Python/test_multislice.py``)."""
    z = np.sort(np.asarray(positions, float))
    if ends_beyond is None or len(z) < 2:
        return ASPECT
    half_length = (z[-1] - z[0]) / 2 + ends_beyond * float(np.median(np.diff(z)))
    return max(ASPECT, half_length / float(max(radii)))


def fit_profile(positions: Sequence[float], radii: Sequence[float], aspect: float = ASPECT,
                prior_weight: float = PRIOR_WEIGHT) -> SizeProfile:
    """Fit the size profile to drawn slices.

    Least squares on ``r^2`` (normalised by the largest drawn radius, positions by the same length), with a
    prior pulling the curvature ``c`` to an ellipsoid of axis ratio ``aspect`` (``c = -1 / aspect^2``) and a
    weak one keeping the slope small: one drawn slice gives that ellipsoid around it, two of equal size give
    its centre between them; drawn slices spread over many times their radius outweigh the prior (a tube keeps
    its radius), while over a compact structure the prior keeps most of its say on the curvature.

    Args:
        positions: drawn slices' positions along the axis (mm), ``radii``: their equivalent radii (mm), > 0.
    """
    z = np.asarray(positions, float)
    r = np.asarray(radii, float)
    scale = float(r.max())
    origin = float(z[np.argmax(r)])
    u = (z - origin) / scale
    rows = [np.stack([np.ones_like(u), u, u * u], axis=1), np.array([[0.0, 0.0, prior_weight], [0.0, 1e-3, 0.0]])]
    targets = [(r / scale) ** 2, np.array([-prior_weight / aspect ** 2, 0.0])]
    solution = np.linalg.lstsq(np.concatenate(rows), np.concatenate(targets), rcond=None)[0]
    return SizeProfile(origin, scale, tuple(float(x) for x in solution))


def shrink_to_radius(mask: np.ndarray, radius: float, pixel_area: float) -> np.ndarray:
    """Keep the innermost pixels of a 2D mask (largest distance to its boundary, ties in raster order) so that
    its equivalent radius is at most ``radius`` (mm); a mask already small enough is returned as is."""
    keep = int(math.pi * radius * radius / pixel_area)
    count = int(np.count_nonzero(mask))
    if count <= keep:
        return mask
    if keep <= 0:
        return np.zeros_like(mask)
    inside = np.flatnonzero(mask)
    depth = ndimage.distance_transform_edt(mask).ravel()[inside]
    out = np.zeros(mask.shape, bool)
    out.flat[inside[np.argsort(-depth, kind="stable")[:keep]]] = True
    return out
