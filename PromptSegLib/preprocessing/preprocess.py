"""Preprocessing as in DuPLUS: one orientation, isotropic spacing, modality-specific intensity rules.

The model grid is axis-aligned in LPS (identity direction) with isotropic spacing (mm) and covers the
physical extent of the input. Arrays on it are indexed ``[z, y, x]``. ``to_original_box`` maps model-grid
probabilities back onto the input's own grid by linear interpolation in physical space, only where they reach.
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk
import torch
from scipy import ndimage

from PromptSegLib.errors import InputImageError
from PromptSegLib.preprocessing.axis_aligned import linear_on_axes, signed_permutation
from PromptSegLib.preprocessing.intensity import IntensityRule
from PromptSegLib.text.modality import canonical_modality

BODY_HU: float = -500.0
"""CT voxels above this (HU) count as the patient or the table; the air around them holds no target."""
BODY_MARGIN_MM: float = 15.0
_TORCH_TYPES = {sitk.sitkFloat32: torch.float32, sitk.sitkUInt8: torch.uint8}
"""Result types :func:`to_original_box` makes in torch when the grids' axes are parallel."""
IDENTITY = ([0, 1, 2], [1.0, 1.0, 1.0])
""":func:`~.axis_aligned.signed_permutation` of the identity direction."""


@dataclass
class ModelInput:
    """A volume ready for the network.

    Attributes:
        array: normalised intensities on the model grid, float32, shape ``(Z, Y, X)``.
        grid: an image carrying the model grid's geometry (its voxels are not used).
        original: the input image, whose grid results go back to.
        body: for CT, the box of ``array`` (index slices) that holds the body with a margin; the network only
            looks inside it and the air around it is background. ``None``: the whole array.
    """

    array: np.ndarray
    grid: sitk.Image
    original: sitk.Image
    body: tuple[slice, slice, slice] | None = None



def bounding_box(mask: np.ndarray, margin: int = 0) -> tuple[slice, slice, slice] | None:
    """The index box of the ``True`` voxels of a ``(Z, Y, X)`` mask grown by ``margin`` voxels on each side and
    clipped to the array; ``None`` when the mask is empty."""
    if not mask.any():
        return None
    box = []
    for axis in range(3):
        hit = np.flatnonzero(mask.any(axis=tuple(a for a in range(3) if a != axis)))
        box.append(slice(max(int(hit[0]) - margin, 0), min(int(hit[-1]) + margin + 1, mask.shape[axis])))
    return tuple(box)


def body_box(hu: np.ndarray, spacing_mm: float) -> tuple[slice, slice, slice] | None:
    """The index box of the voxels of ``hu`` ``(Z, Y, X)`` above :data:`BODY_HU`, grown by
    :data:`BODY_MARGIN_MM` on each side and clipped to the array; ``None`` when no voxel is above it."""
    return bounding_box(hu > BODY_HU, int(np.ceil(BODY_MARGIN_MM / spacing_mm)))


def body_areas_cm2(image: sitk.Image) -> np.ndarray:
    """The body's cross-section on each slice of a CT: ``(Z,)`` float64, cm², the area of the voxels above
    :data:`BODY_HU` on each slice of the array's first axis (axial slices for an axial series)."""
    array = sitk.GetArrayViewFromImage(image)
    pixel_cm2 = float(image.GetSpacing()[0] * image.GetSpacing()[1]) / 100.0
    return (array > BODY_HU).sum(axis=(1, 2)) * pixel_cm2


def enclosed_air_cm2(image: sitk.Image) -> np.ndarray:
    """The air inside the body on each slice of a CT: ``(Z,)`` float64, cm², the area of the voxels at or below
    :data:`BODY_HU` enclosed by the body's outline on each slice of the array's first axis (lungs, bowel gas, the
    airway; not the air around the body, nor air the slice's outline leaves open, as in a scan cropped
    through the body)."""
    array = sitk.GetArrayViewFromImage(image)
    pixel_cm2 = float(image.GetSpacing()[0] * image.GetSpacing()[1]) / 100.0
    areas = np.zeros(array.shape[0])
    for index, plane in enumerate(array):
        body = plane > BODY_HU
        if body.any():
            areas[index] = float((ndimage.binary_fill_holes(body) & ~body).sum()) * pixel_cm2
    return areas


def model_grid(image: sitk.Image, spacing_mm: float) -> sitk.Image:
    """An empty image on the axis-aligned isotropic grid that covers ``image``'s physical extent."""
    size = np.array(image.GetSize())
    corners = np.array([image.TransformContinuousIndexToPhysicalPoint([float(c) for c in corner])
                        for corner in itertools.product(*[(-0.5, s - 0.5) for s in size])])
    low, high = corners.min(axis=0), corners.max(axis=0)
    new_size = np.maximum(np.ceil((high - low) / spacing_mm - 1e-3).astype(int), 1)
    grid = sitk.Image([int(s) for s in new_size], sitk.sitkUInt8)
    grid.SetSpacing([float(spacing_mm)] * 3)
    grid.SetOrigin([float(v) for v in low + spacing_mm / 2.0])
    grid.SetDirection(np.eye(3).ravel().tolist())
    return grid


def resample_to(image: sitk.Image, reference: sitk.Image, interpolator: int = sitk.sitkLinear,
                default_value: float = 0.0, pixel_type: int = sitk.sitkFloat32) -> sitk.Image:
    """``image`` resampled onto ``reference``'s grid through physical space (identity transform)."""
    return sitk.Resample(image, reference, sitk.Transform(), interpolator, float(default_value), pixel_type)


def prepare(image: sitk.Image, modality: str, spacing_mm: float = 1.5, rule: IntensityRule | None = None) -> ModelInput:
    """Resample ``image`` to the model grid and normalise it by ``modality``'s rule.

    Args:
        image: a validated 3D scalar image (see ``imageio.validate_volume``).
        modality: CT, MR or PET (intensities in HU for CT, SUV or counts for PET).
        spacing_mm: the isotropic spacing the model works at.
        rule: the intensity rule to apply (default: fitted on ``image``; a crop passes its whole volume's).
    """
    if spacing_mm <= 0:
        raise InputImageError(f"spacing must be positive, got {spacing_mm} mm")
    rule = rule or IntensityRule.fit(sitk.GetArrayViewFromImage(image), modality)
    grid = model_grid(image, spacing_mm)
    background = float(np.min(sitk.GetArrayViewFromImage(image)))
    resampled = resample_to(image, grid, sitk.sitkLinear, background)
    values = sitk.GetArrayViewFromImage(resampled)  # a view: valid while ``resampled`` lives
    body = body_box(values, spacing_mm) if canonical_modality(modality) == "CT" else None
    return ModelInput(rule.apply(values), grid, image, body)


def to_original_box(values: np.ndarray, start: tuple[int, int, int], model_input: ModelInput,
                    pixel_type: int = sitk.sitkFloat32) -> tuple[np.ndarray, tuple[slice, slice, slice]]:
    """Map a block of model-grid values onto the part of the input grid it reaches (linear interpolation).

    Only the input voxels that lie within the block's extent (its voxel centres plus half a voxel) are
    computed: the cost follows the block, not the input. Values beyond the block count as 0 where the block
    ends inside the model grid; pad it with one voxel of zeros there to get exactly what the whole model grid
    would give.

    Args:
        values: ``(z, y, x)`` on the model grid, its first voxel at model-grid index ``start`` ``(z, y, x)``.
        pixel_type: of the result (SimpleITK's; an integer type truncates, clamped to its range).

    Returns:
        values on the input grid and their index box ``(z, y, x)`` in the input array (empty slices when the
        block lies outside the input).
    """
    grid, original = model_input.grid, model_input.original
    low_xyz = np.array(start[::-1], dtype=np.float64) - 0.5
    corners = itertools.product(*zip(low_xyz, low_xyz + np.array(values.shape[::-1])))
    index = np.array([original.TransformPhysicalPointToContinuousIndex(grid.TransformContinuousIndexToPhysicalPoint(
        [float(c) for c in corner])) for corner in corners])
    size = np.array(original.GetSize())
    low = np.clip(np.floor(index.min(axis=0)).astype(int), 0, size)
    high = np.clip(np.ceil(index.max(axis=0)).astype(int) + 1, low, size)
    if np.any(high <= low):  # nothing of the input is reached
        high = low
    box = tuple(slice(int(a), int(b)) for a, b in zip(low[::-1], high[::-1]))
    if np.any(high <= low):
        return sitk.GetArrayFromImage(sitk.Image([0, 0, 0], pixel_type)).reshape(0, 0, 0), box
    block_origin = grid.TransformIndexToPhysicalPoint([int(v) for v in start[::-1]])
    axes = signed_permutation(original.GetDirection())
    if axes is not None and pixel_type in _TORCH_TYPES and signed_permutation(grid.GetDirection()) == IDENTITY:
        # parallel axes: separable, in torch
        physical, sign = axes
        along = {}  # grid axis (x, y, z) -> continuous block index of each input index on the input axis along it
        for axis, (g, s) in enumerate(zip(physical, sign)):
            mm = original.GetOrigin()[g] + s * original.GetSpacing()[axis] * np.arange(low[axis], high[axis])
            along[g] = (mm - block_origin[g]) / grid.GetSpacing()[g]
        out = linear_on_axes(torch.from_numpy(np.asarray(values, dtype=np.float32)), [along[2], along[1], along[0]],
                             _TORCH_TYPES[pixel_type])
        # from the grid's (z, y, x) order to the input array's, whose axis k is the input's axis 2 - k
        order = [2 - physical[2 - k] for k in range(3)]
        return np.ascontiguousarray(out.permute(order).numpy()), box
    moving = sitk.GetImageFromArray(np.asarray(values, dtype=np.float32))
    moving.SetOrigin(block_origin)
    moving.SetSpacing(grid.GetSpacing())
    moving.SetDirection(grid.GetDirection())
    out = sitk.Resample(moving, [int(v) for v in high - low], sitk.Transform(), sitk.sitkLinear,
                        original.TransformIndexToPhysicalPoint([int(v) for v in low]), original.GetSpacing(),
                        original.GetDirection(), 0.0, pixel_type)
    return sitk.GetArrayFromImage(out), box
