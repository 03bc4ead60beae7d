"""Late fusion of per-target probability maps from several models on one grid, and the HECKTOR metric.

The DuPLUS PET/CT recipe fine-tunes one model on CT and one on PET and averages their per-voxel
probabilities (``weighted_mean``); ``max`` and ``majority`` (vote of thresholded maps) are the alternatives.
All maps are ``(T, Z, Y, X)`` float arrays with values in [0, 1], one per model, on the same grid;
:func:`segment_pair` makes them from a co-registered CT and PET (the PET's resampled onto the CT grid).
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from PromptSegLib.errors import PromptSegError
from PromptSegLib.preprocessing.pet import check_overlap
from PromptSegLib.preprocessing.preprocess import resample_to

if TYPE_CHECKING:
    from PromptSegLib.segment.inference import CancelFlag, ProgressCallback, SegmentationResult, Segmenter

METHODS = ("weighted_mean", "max", "majority")
PET_CT_MODEL = "promptseg-sts-gtv"
"""The bundled model with CT and PET input blocks (gross tumour volume of soft-tissue sarcoma)."""


class FusionError(PromptSegError):
    """Probability maps that cannot be fused: different shapes, values outside [0, 1], bad weights."""


def _check_maps(maps: Sequence[np.ndarray]) -> list[np.ndarray]:
    maps = [np.asarray(m, dtype=np.float32) for m in maps]
    if not maps:
        raise FusionError("no probability maps to fuse")
    shapes = {m.shape for m in maps}
    if len(shapes) > 1:
        raise FusionError("probability maps have different shapes " + ", ".join(str(s) for s in sorted(shapes))
                          + "; resample them onto one grid first (same targets, same order)")
    if maps[0].ndim != 4:
        raise FusionError(f"probability maps must be (T, Z, Y, X), got {maps[0].ndim} dimensions")
    for i, m in enumerate(maps):
        if not np.isfinite(m).all() or m.min() < 0 or m.max() > 1:
            raise FusionError(f"probability map {i} has values outside [0, 1] or not finite")
    return maps


def fusion_weights(method: str, weights: Iterable[float] | None, count: int) -> np.ndarray | None:
    """The normalised weights ``(count,)`` of ``weighted_mean`` (equal by default); None for ``max`` and
    ``majority``. Call it before any work to refuse a bad method or weights early.

    Raises:
        FusionError: an unknown method, weights for another method, a wrong number of weights, negative or
            non-finite weights, or weights that are all zero.
    """
    if method not in METHODS:
        raise FusionError(f"unknown fusion method {method!r}; use one of {', '.join(METHODS)}")
    if method != "weighted_mean":
        if weights is not None:
            raise FusionError(f"weights apply to weighted_mean only, not to {method}")
        return None
    w = np.ones(count) if weights is None else np.asarray(list(weights), dtype=np.float64)
    if w.shape != (count,):
        raise FusionError(f"{count} maps but {w.size} weights")
    if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
        raise FusionError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
    return w / w.sum()


def fuse(maps: Sequence[np.ndarray], method: str = "weighted_mean", weights: Iterable[float] | None = None,
         threshold: float = 0.5) -> np.ndarray:
    """Fused probabilities ``(T, Z, Y, X)`` float32.

    Args:
        maps: one ``(T, Z, Y, X)`` map per model (e.g. ``[ct_model, pet_model]``).
        method: ``weighted_mean`` (sum w_i p_i / sum w_i; equal weights by default), ``max``, or ``majority``
            (the fraction of models whose map exceeds ``threshold``; a voxel is in when that fraction > 0.5,
            so with two models both must agree).
        weights: one non-negative weight per map for ``weighted_mean`` (not all zero).
        threshold: for ``majority``, the per-model threshold.
    """
    maps = _check_maps(maps)
    w = fusion_weights(method, weights, len(maps))
    if method == "weighted_mean":
        out = np.zeros_like(maps[0])
        for wi, m in zip(w, maps):
            out += np.float32(wi) * m
        return out
    if method == "max":
        return np.maximum.reduce(maps)
    return (np.sum([m > threshold for m in maps], axis=0) / len(maps)).astype(np.float32)


def fuse_masks(maps: Sequence[np.ndarray], method: str = "weighted_mean", weights: Iterable[float] | None = None,
               threshold: float = 0.5) -> np.ndarray:
    """Fused binary masks ``(T, Z, Y, X)``: fused probability > ``threshold`` (majority: more than half)."""
    fused = fuse(maps, method, weights, threshold)
    return fused > (0.5 if method == "majority" else threshold)


def overlap_counts(prediction: np.ndarray, truth: np.ndarray) -> tuple[int, int, int]:
    """``(|A & B|, |A|, |B|)`` in voxels of a binary prediction A and truth B of the same shape."""
    a, b = np.asarray(prediction, dtype=bool), np.asarray(truth, dtype=bool)
    if a.shape != b.shape:
        raise FusionError(f"prediction {a.shape} and truth {b.shape} differ in shape")
    return int(np.logical_and(a, b).sum()), int(a.sum()), int(b.sum())


def aggregated_dice_of_counts(counts: Iterable[tuple[int, int, int]]) -> float:
    """HECKTOR 2022 aggregated Dice from per-case ``(|A_i & B_i|, |A_i|, |B_i|)`` (see :func:`overlap_counts`):
    sum_i 2|A_i & B_i| / sum_i (|A_i| + |B_i|); NaN when every mask is empty."""
    intersection = total = 0
    for both, predicted, true in counts:
        intersection += both
        total += predicted + true
    return float("nan") if total == 0 else 2.0 * intersection / total


def aggregated_dice(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """HECKTOR 2022 aggregated Dice over cases: sum_i 2|A_i & B_i| / sum_i (|A_i| + |B_i|).

    One binary mask pair per case (any shape, the pair must match). NaN when every mask is empty.
    """
    if len(predictions) != len(truths):
        raise FusionError(f"{len(predictions)} predictions but {len(truths)} ground truths")
    counts = []
    for i, (a, b) in enumerate(zip(predictions, truths)):
        try:
            counts.append(overlap_counts(a, b))
        except FusionError as exc:
            raise FusionError(f"case {i}: {exc}") from None
    return aggregated_dice_of_counts(counts)


def segment_pair(segmenter: Segmenter, reference: sitk.Image, other: sitk.Image, modalities: tuple[str, str],
                 regions: tuple[str, str], targets: Sequence[str], *, allow_untrained: bool = False,
                 min_overlap: float = 0.0, progress: ProgressCallback | None = None,
                 cancel: CancelFlag | None = None) -> tuple[SegmentationResult, SegmentationResult, dict]:
    """Segment two co-registered images of one patient (e.g. CT and PET), each through the model's block for
    its modality, and resample the second's probabilities linearly onto the first's grid: the inputs of late
    fusion (DuPLUS HECKTOR recipe).

    Args:
        reference: the image whose grid the results share (the CT); other: the second image (the PET, in SUV).
        modalities, regions: of ``reference`` and ``other`` (context prompts).
        targets: vocabulary target names, the same for both.
        min_overlap: the fraction of ``reference``'s box ``other`` must cover (see ``pet.check_overlap``).
        progress: called with the fraction done of both segmentations; cancel: checked before each window.

    Returns:
        ``(reference_result, other_result, overlap_report)``: two results with ``(T, Z, Y, X)`` probabilities
        on ``reference``'s grid, targets in the same order, and the overlap report of ``pet.check_overlap``.

    Raises:
        NoOverlapError: the images do not overlap; InputImageError: the model lacks a modality; PromptError:
            an unknown or untrained target -- all before any segmentation.
    """
    from PromptSegLib.segment.inference import SegmentationResult

    report = progress or (lambda fraction, message: None)
    for modality, region in zip(modalities, regions):
        segmenter.check_request(modality, region, targets, allow_untrained=allow_untrained)
    overlap = check_overlap(other, reference, min_overlap)
    results = []
    for n, (image, modality, region) in enumerate(zip((reference, other), modalities, regions)):
        results.append(segmenter.segment(
            image, modality, region, targets, allow_untrained=allow_untrained, cancel=cancel,
            progress=lambda fraction, message, n=n, modality=modality: report((n + fraction) / 2, f"{modality}: {message}")))
    first, second = results

    def on_reference(index: int) -> np.ndarray:
        image = sitk.GetImageFromArray(second.probability(index))
        image.CopyInformation(other)
        return sitk.GetArrayFromImage(resample_to(image, reference, sitk.sitkLinear, 0.0, sitk.sitkFloat32))

    resampled = SegmentationResult(second.queries, second.context,  # one full-size map at a time
                                   (on_reference(i) for i in range(len(second.queries))), reference, second.threshold)
    return first, resampled, overlap


def segment_pet_ct(segmenter: Segmenter, ct: sitk.Image, pet: sitk.Image, targets: Sequence[str], *,
                   pet_weight: float = 0.5, min_overlap: float = 0.0, allow_untrained: bool = False,
                   progress: ProgressCallback | None = None,
                   cancel: CancelFlag | None = None) -> tuple[SegmentationResult, dict]:
    """The PET/CT use case: segment a patient's CT and PET (in SUV) through the model's CT and PET blocks, and
    fuse them late on the CT's grid: ``(1 - pet_weight) * CT + pet_weight * PET`` probabilities per target. The
    command line (``promptseg segment-petct``) and the Slicer module both call this.

    Returns:
        ``(fused, overlap_report)``: one result on the CT's grid (context ``"CT context | PET context"``) and
        the overlap report of ``pet.check_overlap``.

    Raises:
        FusionError: ``pet_weight`` outside [0, 1]; InputImageError: the model lacks a CT or a PET block;
            NoOverlapError, PromptError: as :func:`segment_pair`, before any segmentation.
    """
    from PromptSegLib.errors import InputImageError
    from PromptSegLib.segment.inference import SegmentationResult

    if not 0.0 <= pet_weight <= 1.0:
        raise FusionError(f"PET weight {pet_weight} must be between 0 and 1")
    config = segmenter.model.config
    lacking = [m for m in ("CT", "PET") if m not in config.network.modalities or not config.regions.get(m)]
    if lacking:
        raise InputImageError(f"model {config.name} has no {' or '.join(lacking)} block: PET/CT needs a model "
                              "trained on both (e.g. promptseg-sts-gtv)")
    regions = tuple(config.regions[m][0] for m in ("CT", "PET"))
    ct_result, pet_result, overlap = segment_pair(segmenter, ct, pet, ("CT", "PET"), regions, targets,
                                                  allow_untrained=allow_untrained, min_overlap=min_overlap,
                                                  progress=progress, cancel=cancel)
    fused = SegmentationResult(ct_result.queries, f"{ct_result.context} | {pet_result.context}",
                               (fuse([ct_result.probability(i)[None], pet_result.probability(i)[None]],
                                     "weighted_mean", [1.0 - pet_weight, pet_weight])[0]
                                for i in range(len(ct_result.queries))), ct, ct_result.threshold)
    return fused, overlap
