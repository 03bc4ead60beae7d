"""Interactive propagation (the Prompt U-Net design): one annotated slice becomes a 3D segment.

A 2D dual-encoder U-Net (:mod:`PromptSegLib.propagate.net`, loaded by :mod:`PromptSegLib.propagate.model`)
predicts the mask of a *query* slice from a nearby *prompt* slice and its mask. :func:`propagate` carries a
user-drawn slice outwards, slice by slice, each new mask becoming the next prompt, re-choosing the prompt when
SSIM says the adjacent slice looks unlike it and stopping where the structure fades; user-fixed slices are never
overwritten and propagation restarts from any of them.

Arrays are ``(Z, Y, X)`` as taken from SimpleITK; ``axis`` 0/1/2 slices them axially/coronally/sagittally.
Network input: see :mod:`PromptSegLib.propagate.geometry`. Training: :mod:`PromptSegLib.propagate.training`.
"""
from __future__ import annotations

import math
import os
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable, NamedTuple

import numpy as np
import torch
from scipy import ndimage

from PromptSegLib.errors import Cancelled, InputImageError, PromptSegError
from PromptSegLib.propagate.geometry import (box_to_slice, box_transform, normalise_slice, roi_box, sample_box,
                                             set_slice, take_slice)
from PromptSegLib.propagate.model import PropagationModel, load_propagation_model

if TYPE_CHECKING:
    from PromptSegLib.propagate.organ_prior import OrganPrior

AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
FADE_CONTRAST = 0.5
"""Default stopping rule: a direction stops where the predicted region keeps less than this fraction of the
prompt slice's contrast (:func:`kept_contrast`): halfway between the drawn structure and its surroundings."""
VISIBLE_CONTRAST = 1.0
"""The rule applies only when the prompt slice's Cohen's d (:func:`region_contrast`) is at least this large: a
structure that barely stands out on the drawn slice cannot be seen to fade."""
CONTRAST_RING = 3
"""Width in slice pixels of the ring around a mask that :func:`region_contrast` compares it with."""
VANISHED = 0.5
"""A propagated direction stops when its mask has fewer pixels than this share of the smallest prompt's (in a fill,
the drawn slices'), at least 1 and at most 4 (:func:`vanishing_pixels`). With a fixed 4, a spinal cord drawn with 3
pixels of 4.7 mm (OpenKBP) was taken for vanished on the next slice. Chosen for the fill
(:func:`~PromptSegLib.propagate.multislice.fill_from_slices`) by ``Testing/benchmarks/choose_fill_reach.py
--min-pixels drawn --threads 2`` against 4 pixels on its validation groups, mean Dice over K = 2, 3, 4, 6, 8 and the
groups: 0.8309 against 0.8306; spinal cords at K = 2 up to +0.065 (7 of 11 higher), an esophagus +0.033, no
structure lower at any K by more than 0.001, the glioblastomas and hippocampi unchanged. From one drawn slice
(``--counts 1``): 0.492 against 0.491, spinal cords and an esophagus +0.009 to +0.039, nothing lower."""


ProgressCallback = Callable[[float, str], None]


def vanishing_pixels(prompt_areas: Iterable[int]) -> int:
    """Fewest pixels a propagated mask keeps before its direction stops as vanished: ``VANISHED`` of the smallest
    prompt area (pixels), at least 1 and at most 4."""
    return min(4, max(1, math.ceil(VANISHED * min(prompt_areas))))


def ssim(a: np.ndarray, b: np.ndarray) -> float:
    """Structural similarity of two normalised ``[0, 1]`` 2D arrays (skimage, 7x7 window)."""
    from skimage.metrics import structural_similarity

    return float(structural_similarity(a, b, data_range=1.0))


class RegionContrast(NamedTuple):
    """A 2D region against the ring around it: mean intensities (the image's units) and Cohen's d (their
    difference over the pooled standard deviation; infinite when both are constant and differ)."""

    inside: float
    around: float
    d: float


def region_contrast(image: np.ndarray, mask: np.ndarray, ring: int = CONTRAST_RING) -> RegionContrast | None:
    """How far a 2D region stands out from the ring ``ring`` pixels wide around it.

    Args:
        image: ``(H, W)`` intensities.
        mask: ``(H, W)`` bool region.

    Returns:
        A :class:`RegionContrast`, or ``None`` when the mask or the ring is empty.
    """
    rows, cols = np.nonzero(mask)
    if not len(rows):
        return None
    lo = np.maximum([rows.min() - ring - 1, cols.min() - ring - 1], 0)
    hi = (rows.max() + ring + 2, cols.max() + ring + 2)
    region = np.asarray(mask[lo[0]:hi[0], lo[1]:hi[1]], bool)
    values = np.asarray(image[lo[0]:hi[0], lo[1]:hi[1]], np.float64)
    around = ndimage.binary_dilation(region, iterations=ring) & ~region
    if not around.any():
        return None
    inside, outside = values[region], values[around]
    difference = float(inside.mean() - outside.mean())
    spread = math.sqrt((inside.var() + outside.var()) / 2.0)
    d = difference / spread if spread > 0 else (math.copysign(math.inf, difference) if difference else 0.0)
    return RegionContrast(float(inside.mean()), float(outside.mean()), d)


def kept_contrast(region: RegionContrast, reference: RegionContrast) -> float:
    """How much of the prompt slice's contrast a predicted region keeps: the larger of its contrast with its own
    ring and its mean's height above the prompt slice's ring, as fractions of the prompt slice's contrast
    (1: as on the prompt slice, 0: background). The first stays high when intensities drift along the volume,
    the second when the mask is too small and its ring lies inside the structure; both fall where it ends."""
    scale = reference.inside - reference.around
    return max((region.inside - region.around) / scale, (region.inside - reference.around) / scale)


@dataclass
class PropagationResult:
    """A propagated mask and what happened.

    Attributes:
        mask: bool ``(Z, Y, X)``, a new array (the input mask is never modified).
        written: slice indices the model wrote, in the order written.
        reprompts: slices where the SSIM check re-chose the prompt from the buffer.
        stopped: per direction (``+1``/``-1``) why propagation stopped.
        max_slices_held: most 2D slices held at once by the propagation loop (independent of volume length).
        prior: the :class:`~PromptSegLib.propagate.organ_prior.OrganPrior` a fill from drawn slices took, or ``None``.
    """

    mask: np.ndarray
    written: list[int] = field(default_factory=list)
    reprompts: list[int] = field(default_factory=list)
    stopped: dict[int, str] = field(default_factory=dict)
    max_slices_held: int = 0
    prior: OrganPrior | None = None


def slice_range(start: int | None, stop: int | None, n: int) -> tuple[int, int]:
    """The first and last slice ``(lo, hi)`` a propagation may write: ``start``/``stop`` (None: the volume's ends).

    Raises:
        PromptSegError: a range not within the volume's slices ``0..n - 1``.
    """
    lo, hi = 0 if start is None else int(start), n - 1 if stop is None else int(stop)
    if not 0 <= lo <= hi < n:
        raise PromptSegError(f"range {lo}..{hi} is not within the volume's slices 0..{n - 1}")
    return lo, hi


def resolve_axis(axis: int | str) -> int:
    """``0/1/2`` or ``axial/coronal/sagittal`` -> array axis of a ``(Z, Y, X)`` volume."""
    if isinstance(axis, str):
        if axis.lower() in AXES:
            return AXES[axis.lower()]
        if axis.isdigit():
            axis = int(axis)
    if axis not in (0, 1, 2):
        raise PromptSegError(f"axis {axis!r} is not one of axial, coronal, sagittal (0, 1, 2)")
    return int(axis)


class Propagator:
    """Runs a propagation model on single slices (one thread by default)."""

    def __init__(self, model: PropagationModel | str | os.PathLike | None = None, threads: int | None = 1):
        if threads:
            torch.set_num_threads(int(threads))
        self.model = model if isinstance(model, PropagationModel) else load_propagation_model(model)
        self.config = self.model.config

    def boxes(self, query: np.ndarray, prompt_image: np.ndarray, prompt_mask: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, float]:
        """The network box around the prompt mask: normalised query, prompt image, prompt mask, centre, side."""
        c = self.config
        center, side = roi_box(prompt_mask, c.roi_scale, c.min_roi)
        matrix, offset = box_transform(center, side, c.input_size)
        q = normalise_slice(sample_box(query, matrix, offset, c.input_size), c.quantiles)
        p = normalise_slice(sample_box(prompt_image, matrix, offset, c.input_size), c.quantiles)
        m = (sample_box(prompt_mask.astype(np.float32), matrix, offset, c.input_size) >= 0.5).astype(np.float32)
        return q, p, m, center, side

    @torch.no_grad()
    def predict_boxes(self, q: np.ndarray, p: np.ndarray, m: np.ndarray) -> np.ndarray:
        as_tensor = lambda a: torch.from_numpy(np.ascontiguousarray(a, np.float32))[None, None]  # noqa: E731
        return torch.sigmoid(self.model.network(as_tensor(q), as_tensor(p), as_tensor(m)))[0, 0].numpy()

    def predict_slice(self, query: np.ndarray, prompt_image: np.ndarray, prompt_mask: np.ndarray) -> np.ndarray:
        """Probability ``(H, W)`` of the query slice's mask given a prompt slice and its non-empty mask."""
        q, p, m, center, side = self.boxes(query, prompt_image, prompt_mask)
        return box_to_slice(self.predict_boxes(q, p, m), center, side, query.shape)


def propagate(model: Propagator | PropagationModel | str | os.PathLike | None, image: np.ndarray, mask: np.ndarray,
              prompt_slice: int, axis: int | str = 0, fixed: dict[int, np.ndarray] | None = None,
              start: int | None = None, stop: int | None = None, ssim_threshold: float | None = None,
              buffer_size: int = 3, min_pixels: int | None = None, stop_at_fixed: bool = True,
              threshold: float | None = None, min_contrast: float | None = FADE_CONTRAST,
              progress: ProgressCallback | None = None, cancel=None,
              limit: Callable[[int, np.ndarray], np.ndarray] | None = None) -> PropagationResult:
    """Carry the mask of ``prompt_slice`` through the volume, first towards higher indices, then lower.

    Each predicted slice becomes the next prompt. Self-supervised feedback (our reading of the paper's
    equation 4, which we could not consult): before predicting slice ``j`` from prompt ``j -/+ 1`` we compute
    SSIM between the two slices inside the network box; when it falls below ``ssim_threshold`` (default the
    model's, 0.6) the prompt is re-chosen from a buffer of the last ``buffer_size`` (slice, mask) pairs of this
    direction (the prompt slice first among them): the pair most similar to slice ``j`` is used, if more similar
    than the adjacent one. A direction stops when the mask vanishes (fewer than ``min_pixels`` pixels; ``None``:
    :func:`vanishing_pixels` of the prompt), when
    the structure fades (below), at the range limits ``start``/``stop`` (inclusive), or at a user-fixed slice
    (``stop_at_fixed``; otherwise the fixed slice becomes the prompt and propagation continues past it).

    Stopping at a structure's ends: the network's probabilities stay near 0.95 inside its mask past the end of a
    structure as well as within it, so they cannot tell where it ends. The image can, when the structure is
    visible: a direction stops at the first slice where the predicted region keeps less than ``min_contrast``
    of the prompt slice's contrast (:func:`kept_contrast`; that slice is left as it was). The rule applies only
    when the prompt slice's Cohen's d is at least ``VISIBLE_CONTRAST`` in magnitude; ``min_contrast`` 0 or
    ``None`` turns it off.

    Args:
        model: a :class:`Propagator`, a model, a model folder, or ``None`` for the bundled model.
        image: ``(Z, Y, X)`` intensities (any modality; each slice is normalised on its own).
        mask: ``(Z, Y, X)`` current mask; its ``prompt_slice`` slice (or ``fixed[prompt_slice]``) is the prompt.
        axis: 0/1/2 or ``axial``/``coronal``/``sagittal``.
        fixed: user-fixed slices (index along ``axis`` -> 2D mask); written as given, never overwritten.
        threshold: probability at or above which a pixel is in the mask (default: the model's).
        min_contrast: the stopping rule's fraction of the prompt slice's contrast, in ``[0, 1]``.
        progress: ``(fraction, message)`` callback; cancel: object with ``is_set()``, checked before each slice.
        limit: ``(slice index, predicted bool mask) -> mask`` applied to each predicted slice before it is
            checked and kept (a shape prior, :mod:`PromptSegLib.propagate.multislice`); an emptied mask stops the
            direction.

    Returns:
        A :class:`PropagationResult` whose ``mask`` is a new array; ``mask`` itself is never modified.

    Raises:
        InputImageError: not a 3D volume, or mask and image shapes differ.
        PromptSegError: prompt slice outside the volume/range or empty, bad axis, range, threshold or
            ``min_contrast``.
        Cancelled: the cancel flag was set (nothing returned, the input mask untouched).
    """
    image, mask = np.asarray(image), np.asarray(mask)
    if image.ndim != 3:
        raise InputImageError(f"the image is {image.ndim}D; propagation needs a 3D volume")
    if mask.shape != image.shape:
        raise InputImageError(f"mask shape {mask.shape} does not match image shape {image.shape}")
    axis = resolve_axis(axis)
    n = image.shape[axis]
    if n < 2:
        raise InputImageError(f"the volume has a single slice along axis {axis}: nothing to propagate into")
    lo, hi = slice_range(start, stop, n)
    if not isinstance(prompt_slice, (int, np.integer)) or not 0 <= prompt_slice < n:
        raise PromptSegError(f"prompt slice {prompt_slice} is outside the volume (slices 0..{n - 1} along axis {axis})")
    if not lo <= prompt_slice <= hi:
        raise PromptSegError(f"prompt slice {prompt_slice} is outside the range {lo}..{hi}")
    fixed = {int(k): np.asarray(v, bool) for k, v in (fixed or {}).items()}
    plane = take_slice(image, axis, 0).shape
    for k, v in fixed.items():
        if not 0 <= k < n:
            raise PromptSegError(f"fixed slice {k} is outside the volume (slices 0..{n - 1})")
        if v.shape != plane:
            raise InputImageError(f"fixed slice {k} has shape {v.shape}, the slices are {plane}")
    prompt_mask = fixed.get(int(prompt_slice), take_slice(mask, axis, prompt_slice).astype(bool))
    if not prompt_mask.any():
        raise PromptSegError(f"the prompt slice {prompt_slice} holds no mask: draw the structure on it first")
    if threshold is not None and not 0.0 < threshold < 1.0:
        raise PromptSegError(f"threshold {threshold} must be between 0 and 1")
    if min_pixels is None:
        min_pixels = vanishing_pixels([int(np.count_nonzero(prompt_mask))])
    if min_contrast is not None and not 0.0 <= min_contrast <= 1.0:
        raise PromptSegError(f"min_contrast {min_contrast} must be between 0 and 1 (a fraction of the prompt "
                             "slice's contrast; 0 turns the stopping rule off)")
    propagator = model if isinstance(model, Propagator) else Propagator(model)
    threshold = propagator.config.threshold if threshold is None else float(threshold)
    ssim_threshold = propagator.config.ssim_threshold if ssim_threshold is None else float(ssim_threshold)
    reference = region_contrast(take_slice(image, axis, prompt_slice), prompt_mask) if min_contrast else None
    watch_fading = reference is not None and abs(reference.d) >= VISIBLE_CONTRAST
    progress = progress or (lambda fraction, message: None)

    out = mask.astype(bool, copy=True)
    for k, v in fixed.items():
        set_slice(out, axis, k, v)
    set_slice(out, axis, prompt_slice, prompt_mask)
    result = PropagationResult(out)
    total = max(hi - lo, 1)
    done = 0
    for direction in (+1, -1):
        prompt = (take_slice(image, axis, prompt_slice).astype(np.float32), prompt_mask)
        buffer: deque = deque([prompt], maxlen=max(buffer_size, 1))
        j = prompt_slice + direction
        reason = "reached the end of the range"
        while lo <= j <= hi:
            if cancel is not None and cancel.is_set():
                raise Cancelled("propagation cancelled; the segment is left as it was")
            if j in fixed:
                if stop_at_fixed:
                    reason = f"reached user-fixed slice {j}"
                    break
                prompt = (take_slice(image, axis, j).astype(np.float32), fixed[j])
                buffer.append(prompt)
                j += direction
                continue
            query = take_slice(image, axis, j).astype(np.float32)
            q, p, m, center, side = propagator.boxes(query, prompt[0], prompt[1])
            similarity = ssim(q, p)
            if len(buffer) > 1 and similarity < ssim_threshold:
                for candidate in list(buffer)[:-1]:
                    boxes = propagator.boxes(query, candidate[0], candidate[1])
                    score = ssim(boxes[0], boxes[1])
                    if score > similarity:
                        similarity, prompt, (q, p, m, center, side) = score, candidate, boxes
                if prompt is not buffer[-1]:
                    result.reprompts.append(j)
            result.max_slices_held = max(result.max_slices_held, len(buffer) + 2)
            predicted = box_to_slice(propagator.predict_boxes(q, p, m), center, side, query.shape) >= threshold
            if limit is not None:
                predicted = limit(j, predicted)
            if predicted.sum() < min_pixels:
                reason = f"the mask vanished at slice {j}"
                break
            if watch_fading:
                contrast = region_contrast(query, predicted)
                fraction = None if contrast is None else kept_contrast(contrast, reference)
                if fraction is not None and fraction < min_contrast:
                    reason = f"the structure faded at slice {j} (contrast {fraction:.2f} of the prompt slice's)"
                    break
            set_slice(out, axis, j, predicted)
            result.written.append(j)
            prompt = (query, predicted)
            buffer.append(prompt)
            done += 1
            progress(min(done / total, 1.0), f"slice {j}")
            j += direction
        result.stopped[direction] = reason
    progress(1.0, f"propagated {len(result.written)} slices")
    return result
