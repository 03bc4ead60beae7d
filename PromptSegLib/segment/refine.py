"""Closer look: segment a target again in a crop around it at a finer spacing, and paste the result back.

After the whole-volume pass, each chosen target's bounding box (plus a margin) is cut from the input, resampled at
``spacing_factor`` times the model spacing, run through the same dual-prompt model (same T1, same T2, intensities
normalised with the whole volume's rule, without the model's post-processing: the crop's midline, body and anchors
are not the patient's), and its probabilities replace the first pass's inside the box, keeping only the pieces
that overlap the first pass's mask (whose post-processing chose its pieces). By default only small targets (under
``max_volume_ml``) are refined.
"""
from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from PromptSegLib.preprocessing.intensity import IntensityRule
from PromptSegLib.segment.inference import CancelFlag, SegmentationResult, Segmenter
from PromptSegLib.segment.postprocess import touching


def crop_box(mask: np.ndarray, image: sitk.Image, margin_mm: float) -> tuple[slice, slice, slice] | None:
    """Array slices ``(z, y, x)`` of the mask's bounding box grown by ``margin_mm`` (None when empty)."""
    if not mask.any():
        return None
    points = np.argwhere(mask)
    margin = np.ceil(margin_mm / np.array(image.GetSpacing()[::-1])).astype(int)
    low = np.maximum(points.min(axis=0) - margin, 0)
    high = np.minimum(points.max(axis=0) + margin + 1, mask.shape)
    high = np.maximum(high, np.minimum(low + 2, mask.shape))  # at least two voxels thick
    return tuple(slice(int(a), int(b)) for a, b in zip(low, high))


def closer_look(segmenter: Segmenter, image: sitk.Image, result: SegmentationResult, modality: str,
                indices: list[int] | None = None, max_volume_ml: float = 50.0, margin_mm: float = 15.0,
                spacing_factor: float = 0.5, cancel: CancelFlag | None = None) -> list[int]:
    """Refine targets of ``result`` in place; returns the indices refined.

    Args:
        indices: targets to refine; default: every non-empty target under ``max_volume_ml``.
        spacing_factor: crop spacing as a fraction of the model's spacing (0.5 = twice as fine).
    """
    voxel_ml = float(np.prod(image.GetSpacing())) / 1000.0
    if indices is None:
        indices = [i for i in range(len(result.queries)) if 0 < result.mask(i).sum() * voxel_ml < max_volume_ml]
    rule = segmenter.intensity_rule(modality) or IntensityRule.fit(sitk.GetArrayViewFromImage(image), modality)
    spacing = segmenter.model.config.spacing_mm * spacing_factor
    refined = []
    for i in indices:
        box = crop_box(result.mask(i), image, margin_mm)
        if box is None:
            continue
        z, y, x = box
        crop = image[x.start:x.stop, y.start:y.stop, z.start:z.stop]
        query = result.queries[i]
        sub = segmenter.segment(crop, modality, targets=[query.name] if query.target else (),
                                target_texts=() if query.target else [query.prompt], context_text=result.context,
                                allow_untrained=True, spacing_mm=spacing, intensity=rule, cancel=cancel,
                                postprocessing=False)  # the crop's midline, body and anchors are not the patient's
        values = sub.probability(0)
        mask = values >= result.threshold
        # the outline is refined, no piece is added: the first pass's post-processing chose its pieces
        values[mask & ~touching(mask, result.mask(i)[box])] = 0.0
        result.paste(i, box, values)
        refined.append(i)
    return refined
