"""Segments to export to DICOM (RTSTRUCT, SEG): masks with their names, colours and codes, put on the grid
of the DICOM series they will reference.

Sources: a Slicer ``.seg.nrrd`` (read by :func:`PromptSegLib.export.segfile.read_seg_nrrd`) or a
:class:`~PromptSegLib.segment.inference.SegmentationResult` (:func:`segments_from_result`).
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import SimpleITK as sitk

from PromptSegLib.errors import InputImageError, PromptError
from PromptSegLib.export.segfile import (ExportSegment, SegmentSet, read_seg_nrrd, resample_mask, resample_on,
                                         segment_color, terminology)
from PromptSegLib.io.imageio import same_geometry
from PromptSegLib.text.vocabulary import Target, default_vocabulary

RT_ROI_INTERPRETED_TYPES = (
    "EXTERNAL", "PTV", "CTV", "GTV", "AVOIDANCE", "ORGAN", "MARKER", "REGISTRATION", "ISOCENTER", "CONTRAST_AGENT",
    "CAVITY", "BRACHY_CHANNEL", "BRACHY_ACCESSORY", "BRACHY_SRC_APP", "BRACHY_CHNL_SHLD", "SUPPORT", "FIXATION",
    "DOSE_REGION", "CONTROL", "DOSE_MEASUREMENT")


class ExportWarning(UserWarning):
    """Something an export changed or left out (resampled grid, empty segment skipped, name shortened)."""


def segments_from_result(result, probabilities: bool = False) -> SegmentSet:
    """A :class:`SegmentationResult`'s targets: masks at its threshold, and with ``probabilities`` each
    target's full-size float32 probabilities too (fractional SEG only: 4 bytes a voxel per target)."""
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
            probability = resample_on(segment.probability.astype(np.float32), segment_set.grid, reference,
                                    sitk.sitkLinear)
        out.append(ExportSegment(segment.name, moved, segment.color, segment.terminology, segment.interpreted_type,
                                 probability))
    return out


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


def collect_warnings(function, *args, **kwargs):
    """Run an export with its warnings collected; those its report does not hold (e.g. an oblique series)
    are added to it, so each is printed once."""
    from PromptSegLib.io.dicom_series import ObliqueSeriesWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = function(*args, **kwargs)
    for w in caught:
        if issubclass(w.category, (ExportWarning, ObliqueSeriesWarning)) and str(w.message) not in report.warnings:
            report.warnings.append(str(w.message))
    return report
