"""Segments to export to DICOM (RTSTRUCT, SEG): masks with their names, colours and codes, put on the grid
of the DICOM series they will reference.

Sources: a Slicer ``.seg.nrrd`` (:func:`read_seg_nrrd`) or a :class:`~PromptSegLib.inference.SegmentationResult`
(:func:`segments_from_result`).
"""
from __future__ import annotations

import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .errors import InputImageError, PromptError
from .imageio import same_geometry
from .vocabulary import Target, default_vocabulary

RT_ROI_INTERPRETED_TYPES = (
    "EXTERNAL", "PTV", "CTV", "GTV", "AVOIDANCE", "ORGAN", "MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT",
    "CAVITY", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD", "SUPPORT", "FIXATION",
    "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT")


class ExportWarning(UserWarning):
    """Something an export changed or left out (resampled grid, empty segment skipped, name shortened)."""


@dataclass
class ExportSegment:
    """One segment: a ``(Z, Y, X)`` bool mask on the grid of the :class:`SegmentSet` holding it.

    ``terminology`` is a Slicer terminology entry (``category``/``type``/``typeModifier`` as
    ``[scheme, value, meaning]``); ``probability`` (float in [0, 1], same shape) is used by fractional SEG.
    """

    name: str
    mask: np.ndarray
    color: tuple[float, float, float] = (0.5, 0.5, 0.5)
    terminology: dict | None = None
    interpreted_type: str | None = None
    probability: np.ndarray | None = None


@dataclass
class SegmentSet:
    segments: list[ExportSegment]
    grid: sitk.Image  # geometry of the masks (its voxels are not used)


def image_from_ijk_to_lps(matrix: np.ndarray, size_ijk: tuple[int, int, int]) -> sitk.Image:
    """An empty uint8 image with the geometry of a 4x4 IJK-to-LPS matrix."""
    matrix = np.asarray(matrix, dtype=float)
    spacing = np.linalg.norm(matrix[:3, :3], axis=0)
    image = sitk.Image([int(s) for s in size_ijk], sitk.sitkUInt8)
    image.SetSpacing(tuple(float(s) for s in spacing))
    image.SetDirection(tuple(float(v) for v in (matrix[:3, :3] / spacing).ravel()))
    image.SetOrigin(tuple(float(v) for v in matrix[:3, 3]))
    return image


def read_seg_nrrd(path: str | os.PathLike) -> SegmentSet:
    """The segments of a Slicer ``.seg.nrrd`` (names, colours, terminology), as masks on its grid.

    Raises:
        InputImageError: missing or unreadable file, or no segments in it.
    """
    import slicerio

    path = Path(path)
    if not path.is_file():
        raise InputImageError(f"no such segmentation file: {path}")
    try:
        segmentation = slicerio.read_segmentation(str(path))
    except Exception as exc:  # slicerio raises many kinds for bad files
        raise InputImageError(f"cannot read segmentation {path}: {exc}") from exc
    voxels = np.asarray(segmentation["voxels"])
    if voxels.ndim not in (3, 4) or not segmentation.get("segments"):
        raise InputImageError(f"{path} holds no segments")
    layers = voxels if voxels.ndim == 4 else voxels[np.newaxis]
    grid = image_from_ijk_to_lps(segmentation["ijkToLPS"], layers.shape[1:])
    # the NRRD space origin is that of the stored (possibly cropped) voxels: no extent offset to add
    segments = []
    for segment in segmentation["segments"]:
        layer = layers[segment.get("layer", 0) or 0]
        mask = (layer == segment["labelValue"]).transpose(2, 1, 0)
        segments.append(ExportSegment(name=str(segment.get("name") or segment.get("id")), mask=mask,
                                      color=tuple(float(c) for c in segment.get("color", (0.5, 0.5, 0.5))),
                                      terminology=segment.get("terminology")))
    return SegmentSet(segments, grid)


def segments_from_result(result, probabilities: bool = False) -> SegmentSet:
    """A :class:`SegmentationResult`'s targets: masks at its threshold, and with ``probabilities`` each
    target's full-size float32 probabilities too (fractional SEG only: 4 bytes a voxel per target)."""
    from .segfile import segment_color, terminology

    segments = [ExportSegment(name=query.name, mask=result.mask(i), color=tuple(segment_color(query)),
                              terminology=terminology(query),
                              interpreted_type=query.target.interpreted_type if query.target else None,
                              probability=result.probability(i) if probabilities else None)
                for i, query in enumerate(result.queries)]
    return SegmentSet(segments, result.reference)


def load_segments(source, probabilities: bool = False) -> SegmentSet:
    """A :class:`SegmentSet`, a ``SegmentationResult`` (``probabilities``: see :func:`segments_from_result`) or
    a ``.seg.nrrd`` path, as a :class:`SegmentSet`."""
    if isinstance(source, SegmentSet):
        return source
    if isinstance(source, (str, os.PathLike)):
        return read_seg_nrrd(source)
    if hasattr(source, "probabilities") and hasattr(source, "queries"):
        return segments_from_result(source, probabilities)
    raise TypeError(f"cannot export segments from {type(source).__name__}")


def on_grid(segment_set: SegmentSet, reference: sitk.Image) -> list[ExportSegment]:
    """The segments on ``reference``'s grid; resampled (nearest neighbour) with a warning when they differ.

    Raises:
        InputImageError: the segmentation does not overlap the reference volume at all.
    """
    if same_geometry(segment_set.grid, reference, tolerance=1e-3):
        return list(segment_set.segments)
    warnings.warn(f"segmentation grid (size {segment_set.grid.GetSize()}, spacing "
                  f"{tuple(round(s, 3) for s in segment_set.grid.GetSpacing())} mm) differs from the DICOM series "
                  f"(size {reference.GetSize()}, spacing {tuple(round(s, 3) for s in reference.GetSpacing())} mm): "
                  "resampled onto the series grid (nearest neighbour)", ExportWarning, stacklevel=2)
    out = []
    for segment in segment_set.segments:
        moved = resample_mask(segment.mask, segment_set.grid, reference)
        if segment.mask.any() and not moved.any():
            raise InputImageError(f"segment {segment.name!r} lies outside the DICOM series' volume")
        probability = None
        if segment.probability is not None:
            probability = _resample(segment.probability.astype(np.float32), segment_set.grid, reference,
                                    sitk.sitkLinear)
        out.append(ExportSegment(segment.name, moved, segment.color, segment.terminology, segment.interpreted_type,
                                 probability))
    return out


def resample_mask(mask: np.ndarray, grid: sitk.Image, reference: sitk.Image) -> np.ndarray:
    """A ``(Z, Y, X)`` mask on ``grid`` moved onto ``reference``'s grid (nearest neighbour, physical space)."""
    if same_geometry(grid, reference, tolerance=1e-3):
        return mask.astype(bool)
    return _resample(mask.astype(np.uint8), grid, reference, sitk.sitkNearestNeighbor) > 0


def _resample(array: np.ndarray, grid: sitk.Image, reference: sitk.Image, interpolator) -> np.ndarray:
    image = sitk.GetImageFromArray(array)
    image.SetOrigin(grid.GetOrigin())
    image.SetSpacing(grid.GetSpacing())
    image.SetDirection(grid.GetDirection())
    return sitk.GetArrayFromImage(sitk.Resample(image, reference, sitk.Transform(), interpolator, 0.0))


def non_empty(segments: list[ExportSegment]) -> list[ExportSegment]:
    """The segments with at least one voxel; each empty one is named in a warning."""
    kept = []
    for segment in segments:
        if segment.mask.any():
            kept.append(segment)
        else:
            warnings.warn(f"segment {segment.name!r} is empty on the DICOM series' grid: skipped", ExportWarning,
                          stacklevel=2)
    if not kept:
        raise InputImageError("every segment is empty: nothing to export")
    return kept


def vocabulary_target(segment: ExportSegment) -> Target | None:
    """The vocabulary target a segment stands for: by name or synonym, else by its terminology type code."""
    vocabulary = default_vocabulary()
    try:
        return vocabulary.target(segment.name)
    except PromptError:
        pass
    entry = segment.terminology or {}
    code = entry.get("type")
    modifier = entry.get("typeModifier") or None
    if code:
        for target in vocabulary.targets.values():
            if target.type and target.type[1] == str(code[1]) and (
                    (target.modifier or None) is None if not modifier else
                    (target.modifier and target.modifier[1] == str(modifier[1]))):
                return target
    return None


def interpreted_type(segment: ExportSegment, default: str = "ORGAN") -> str:
    """RT ROI Interpreted Type: the segment's own, its vocabulary target's, else ``default``."""
    if segment.interpreted_type:
        return segment.interpreted_type
    target = vocabulary_target(segment)
    return target.interpreted_type if target else default
