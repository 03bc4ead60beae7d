"""Training samples for the propagation network (the Prompt U-Net recipe and our additions): a query slice, a
nearby prompt slice with its corrupted mask, and the query's mask as target, augmented alike."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import torch
from scipy import ndimage

from PromptSegLib.errors import PromptSegError
from PromptSegLib.propagate.data import LabelledVolume
from PromptSegLib.propagate.geometry import box_transform, normalise_slice, roi_box, sample_box, take_slice


@dataclass
class Sample:
    """One training sample, all ``(S, S)`` float32, and how it was made (checked by the tests)."""

    query: np.ndarray
    prompt_image: np.ndarray
    prompt_mask: np.ndarray
    target: np.ndarray
    volume: str
    axis: int
    query_index: int
    prompt_index: int
    units: list[str]
    cropped: bool
    dropped_fraction: float  # of the prompt mask's pixels; negative when the corruption added pixels


class SampleGenerator:
    """Training samples for the propagation network, following the Prompt U-Net recipe.

    Each sample: a volume (datasets equally likely, then a volume), an axis (any of the three), a query slice
    ``k`` and a prompt slice ``k + i`` with ``i`` in ``[-v, v] \\ {0}``; 1-4 structures present on the query
    slice merged into one mask; the query and prompt masks must overlap (else drawn again). One random
    geometric transform is applied to all four arrays alike (scale and translation +-5 %, rotation up to
    0.05 rad, flips); 70 % of samples are random crops around the prompt mask (``roi_scale`` jittered
    1.4-3x), the rest whole slices; then prompt-only corruption drops up to 30 % of the prompt mask's
    pixels (scattered pixels or one contiguous bite) or, for a share ``grow_fraction`` of samples, adds as
    many around it (an even margin or one bulge), and both images are min-max normalised per slice with
    quantiles.

    Addition to the paper's recipe: prompts that gain pixels. Trained only on prompts that lose pixels, the
    network learns to add pixels back and never to remove extra ones, so masks chained slice by slice grow.

    Addition to the paper's recipe: a fraction ``end_fraction`` of samples (default 10 %) put the query 1-3
    slices beyond the end of one structure, the prompt on its last slices: the target is empty there. Without
    them the network never sees a query without the structure (the overlap rule excludes it), so the mask
    never vanishes and propagation runs past the structure's ends.
    """

    def __init__(self, volumes: Sequence[LabelledVolume], v: int = 7, size: int = 96, crop_fraction: float = 0.7,
                 max_drop: float = 0.3, quantiles: Sequence[float] = (0.5, 99.5), min_roi: int = 32,
                 end_fraction: float = 0.1, grow_fraction: float = 0.0, seed: int | None = None):
        if v < 1:
            raise PromptSegError(f"v must be at least 1 (got {v})")
        self.volumes = [vol for vol in volumes if vol.units]
        if not self.volumes:
            raise PromptSegError("no training volume holds any labelled structure")
        self.groups: dict[str, list[LabelledVolume]] = {}
        for volume in self.volumes:
            self.groups.setdefault(volume.group or volume.name, []).append(volume)
        self.v, self.size, self.crop_fraction, self.max_drop = v, size, crop_fraction, max_drop
        self.quantiles, self.min_roi, self.end_fraction = tuple(quantiles), min_roi, end_fraction
        self.grow_fraction = grow_fraction
        self.rng = np.random.default_rng(seed)

    def __call__(self, max_tries: int = 100) -> Sample:
        rng = self.rng
        for _ in range(max_tries):
            group = list(self.groups)[rng.integers(len(self.groups))]
            volume = self.groups[group][rng.integers(len(self.groups[group]))]
            axis = int(rng.integers(3))
            presence = volume.presence[axis]
            unit = list(presence)[rng.integers(len(presence))]
            if rng.random() < self.end_fraction:
                sample = self._end_sample(volume, axis, unit)
                if sample is not None:
                    return sample
                continue
            k = int(rng.choice(presence[unit]))
            offsets = [i for i in range(-self.v, self.v + 1) if i and 0 <= k + i < volume.image.shape[axis]]
            if not offsets:
                continue
            i = int(rng.choice(offsets))
            label_k = take_slice(volume.label, axis, k)
            present = [u for u in presence if u != unit and np.isin(label_k, volume.units[u]).any()]
            extra = rng.permutation(present)[: int(rng.integers(1, 5)) - 1].tolist()
            units = [unit] + extra
            values = [val for u in units for val in volume.units[u]]
            query_mask = np.isin(label_k, values)
            prompt_mask = np.isin(take_slice(volume.label, axis, k + i), values)
            if not (query_mask & prompt_mask).any():
                continue
            return self._make(volume, axis, k, k + i, units, query_mask, prompt_mask)
        raise PromptSegError(f"no overlapping query/prompt pair found in {max_tries} draws")

    def _end_sample(self, volume: LabelledVolume, axis: int, unit: str) -> Sample | None:
        """Query 1-3 slices past one end of ``unit`` (empty there), prompt on one of its last 3 slices."""
        rng, slices = self.rng, volume.presence[axis][unit]
        n = volume.image.shape[axis]
        end, outward = (slices[-1], 1) if rng.random() < 0.5 else (slices[0], -1)
        k = int(end + outward * rng.integers(1, 4))
        p = int(end - outward * rng.integers(0, 3))
        if not (0 <= k < n and 0 <= p < n) or abs(k - p) > self.v:  # p leaves the volume for a structure
            return None                                                 # thinner than 3 slices at its edge
        query_mask = np.isin(take_slice(volume.label, axis, k), volume.units[unit])
        prompt_mask = np.isin(take_slice(volume.label, axis, p), volume.units[unit])
        if query_mask.any() or not prompt_mask.any():
            return None
        return self._make(volume, axis, k, p, [unit], query_mask, prompt_mask)

    def _make(self, volume, axis, k, p, units, query_mask, prompt_mask) -> Sample:
        rng, size = self.rng, self.size
        cropped = bool(rng.random() < self.crop_fraction)
        shape = np.array(query_mask.shape, float)
        if cropped:
            center, side = roi_box(prompt_mask, float(rng.uniform(1.4, 3.0)), self.min_roi)
            center = center + rng.uniform(-0.15, 0.15, 2) * side
        else:
            center, side = (shape - 1) / 2.0, float(shape.max())
        matrix, offset = box_transform(center, side, size, scale=float(rng.uniform(0.95, 1.05)),
                                       angle=float(rng.uniform(-0.05, 0.05)), flips=tuple(rng.random(2) < 0.5),
                                       shift=rng.uniform(-0.05, 0.05, 2) * side)
        warp = lambda a: sample_box(a, matrix, offset, size)  # noqa: E731 - one transform for all four arrays
        query = normalise_slice(warp(take_slice(volume.image, axis, k)), self.quantiles)
        prompt_image = normalise_slice(warp(take_slice(volume.image, axis, p)), self.quantiles)
        target = (warp(query_mask.astype(np.float32)) >= 0.5).astype(np.float32)
        prompt = (warp(prompt_mask.astype(np.float32)) >= 0.5).astype(np.float32)
        prompt, dropped = corrupt_prompt(prompt, float(rng.uniform(0.0, self.max_drop)), rng,
                                         grow=self.grow_fraction > 0 and bool(rng.random() < self.grow_fraction))
        return Sample(query, prompt_image, prompt, target, volume.name, axis, k, p, list(units), cropped, dropped)

    def batch(self, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``n`` samples as four ``(n, 1, S, S)`` tensors: query, prompt image, prompt mask, target."""
        samples = [self() for _ in range(n)]
        return tuple(torch.from_numpy(np.stack([getattr(s, name) for s in samples])[:, None])
                     for name in ("query", "prompt_image", "prompt_mask", "target"))


def corrupt_prompt(mask: np.ndarray, fraction: float, rng: np.random.Generator,
                   grow: bool = False) -> tuple[np.ndarray, float]:
    """Drop ``floor(fraction * n)`` of the ``n`` foreground pixels of a 2D mask: scattered ones, or (half the
    time) those nearest a random foreground pixel (one contiguous bite). With ``grow``, add that many
    background pixels instead, those nearest the mask: an even margin with a ragged edge, or (half the time)
    those nearest a random pixel touching the mask (one bulge). Returns the new mask and the fraction of ``n``
    dropped (negative when pixels were added)."""
    rows, cols = np.nonzero(mask)
    n = len(rows)
    count = int(math.floor(fraction * n))
    if count == 0:
        return mask, 0.0
    if grow:
        distance = ndimage.distance_transform_edt(mask == 0)  # pixels to the mask, 0 inside it
        rows, cols = np.nonzero(mask == 0)
        count = min(count, len(rows))
        if rng.random() < 0.5:
            key = distance[rows, cols] + rng.random(len(rows))  # nearest first, ties broken at random
        else:
            touching = np.flatnonzero(distance[rows, cols] < 1.5)
            seed = touching[rng.integers(len(touching))]
            key = (rows - rows[seed]) ** 2 + (cols - cols[seed]) ** 2
        chosen = np.argsort(key, kind="stable")[:count]
        out = mask.copy()
        out[rows[chosen], cols[chosen]] = 1
        return out, -count / n
    if rng.random() < 0.5:
        chosen = rng.choice(n, count, replace=False)
    else:
        seed = rng.integers(n)
        chosen = np.argsort((rows - rows[seed]) ** 2 + (cols - cols[seed]) ** 2, kind="stable")[:count]
    out = mask.copy()
    out[rows[chosen], cols[chosen]] = 0
    return out, count / n
