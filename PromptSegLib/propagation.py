"""Interactive propagation (the Prompt U-Net design): one annotated slice becomes a 3D segment.

A 2D dual-encoder U-Net (:mod:`PromptSegLib.propagation_net`) predicts the mask of a *query* slice from a
nearby *prompt* slice and its mask. :func:`propagate` carries a user-drawn slice outwards, slice by slice,
each new mask becoming the next prompt; user-fixed slices are never overwritten and propagation restarts
from any of them. :class:`SampleGenerator` makes the training samples and :func:`train_propagation` trains
and saves a model folder (same layout as DuPLUS folders, its own ``format``).

Arrays are ``(Z, Y, X)`` as taken from SimpleITK; ``axis`` 0/1/2 slices them axially/coronally/sagittally.

Network input: a square box around the prompt mask (``roi_scale`` times its bounding box, at least
``min_roi`` pixels), resampled to ``input_size`` pixels, each slice robustly min-max normalised with
quantiles. The same rule builds the training crops (70 %), the rest being whole slices.
"""
from __future__ import annotations

import json
import logging
import math
import os
import platform
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, NamedTuple, Sequence

import numpy as np
import torch
from scipy import ndimage

from .errors import Cancelled, InputImageError, ModelError, OutputError, PromptSegError
from .metrics import dice
from .model_io import (CARD, CONFIG, WEIGHTS, load_weights, replace_card, replace_file, verify_folder,
                       write_model_folder)
from .propagation_net import CPU_WIDTHS, PromptUNet2D, PropagationNetConfig

log = logging.getLogger(__name__)

FORMAT = "promptseg-propagation-model"
FORMAT_VERSION = 1
ARCHITECTURE = "PromptUNet2D"
BUNDLED_PROPAGATION_MODEL = Path(__file__).resolve().parent / "models" / "promptseg-propagation"
AXES = {"axial": 0, "coronal": 1, "sagittal": 2}
FADE_CONTRAST = 0.5
"""Default stopping rule: a direction stops where the predicted region keeps less than this fraction of the
prompt slice's contrast (:func:`kept_contrast`): halfway between the drawn structure and its surroundings."""
VISIBLE_CONTRAST = 1.0
"""The rule applies only when the prompt slice's Cohen's d (:func:`region_contrast`) is at least this large: a
structure that barely stands out on the drawn slice cannot be seen to fade."""
CONTRAST_RING = 3
"""Width in slice pixels of the ring around a mask that :func:`region_contrast` compares it with."""
THRESHOLD_CANDIDATES = (0.5, 0.6, 0.7, 0.8)

ProgressCallback = Callable[[float, str], None]


# ----------------------------------------------------------------------------------------------- model folder
@dataclass
class PropagationConfig:
    """What a propagation model folder's ``config.json`` holds.

    Attributes:
        network: the :class:`PromptUNet2D` architecture.
        input_size: side ``S`` of the square network input (pixels).
        roi_scale: network box side = ``roi_scale`` x the prompt mask's bounding-box side.
        min_roi: smallest box side in slice pixels.
        quantiles: percentiles of the robust per-slice min-max normalisation.
        threshold: probability at or above which a pixel is in the mask.
        ssim_threshold: SSIM(query, prompt) under which the prompt is re-chosen from the buffer.
        v: largest prompt-query distance seen in training.
        training: free-form record of how the model was trained.
    """

    name: str = "promptseg-propagation"
    version: str = "0.1.0"
    network: PropagationNetConfig = field(default_factory=PropagationNetConfig)
    input_size: int = 96
    roi_scale: float = 2.0
    min_roi: int = 32
    quantiles: tuple[float, float] = (0.5, 99.5)
    threshold: float = 0.5
    ssim_threshold: float = 0.6
    v: int = 7
    training: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "architecture": ARCHITECTURE,
                "name": self.name, "version": self.version, "network": self.network.to_dict(),
                "input_size": self.input_size, "roi_scale": self.roi_scale, "min_roi": self.min_roi,
                "quantiles": list(self.quantiles), "threshold": self.threshold,
                "ssim_threshold": self.ssim_threshold, "v": self.v, "training": self.training}

    @classmethod
    def from_dict(cls, data: dict) -> "PropagationConfig":
        if data.get("format") != FORMAT or data.get("architecture") != ARCHITECTURE:
            raise ModelError("config.json is not a PromptSeg propagation model config")
        if data.get("format_version") != FORMAT_VERSION:
            raise ModelError(f"propagation model format version {data.get('format_version')} is not supported "
                             f"(this PromptSeg reads version {FORMAT_VERSION})")
        try:
            config = cls(name=data["name"], version=str(data["version"]),
                         network=PropagationNetConfig.from_dict(data["network"]),
                         input_size=int(data["input_size"]), roi_scale=float(data["roi_scale"]),
                         min_roi=int(data["min_roi"]), quantiles=tuple(float(q) for q in data["quantiles"]),
                         threshold=float(data["threshold"]), ssim_threshold=float(data["ssim_threshold"]),
                         v=int(data["v"]), training=dict(data.get("training", {})))
        except (KeyError, TypeError, ValueError) as exc:
            raise ModelError(f"config.json is incomplete or malformed: {exc}") from exc
        if config.input_size % config.network.divisor:
            raise ModelError(f"input size {config.input_size} is not a multiple of {config.network.divisor}")
        return config


@dataclass
class PropagationModel:
    """A loaded propagation model: config, network (float32, eval mode) and its folder."""

    config: PropagationConfig
    network: PromptUNet2D
    folder: Path | None = None

    @classmethod
    def untrained(cls, config: PropagationConfig | None = None, seed: int = 0) -> "PropagationModel":
        """A randomly initialised model (for mechanics tests and as the start of training)."""
        torch.manual_seed(seed)
        config = config or PropagationConfig()
        return cls(config, PromptUNet2D(config.network).eval())


def save_propagation_model(folder: str | os.PathLike, model: PropagationModel, card: str) -> Path:
    """Write a complete propagation model folder atomically (weights fp16, config, card, SHA256SUMS; see
    ``model_io.write_model_folder``)."""
    from safetensors.torch import save_file

    def write(tmp: Path) -> list[str]:
        state = {k: v.detach().to("cpu", torch.float16).contiguous() for k, v in model.network.state_dict().items()}
        save_file(state, str(tmp / WEIGHTS), metadata={"format": FORMAT})
        (tmp / CONFIG).write_text(json.dumps(model.config.to_dict(), indent=2) + "\n", encoding="utf-8")
        (tmp / CARD).write_text(card, encoding="utf-8")
        return [WEIGHTS, CONFIG, CARD]

    model.folder = write_model_folder(folder, write)
    return model.folder


def load_propagation_model(folder: str | os.PathLike | None = None) -> PropagationModel:
    """Verify (SHA256SUMS) and load a propagation model folder (default: the bundled one).

    Raises:
        ModelError: missing/altered files, another format, or weights that do not fit the config.
    """
    folder = verify_folder(Path(folder) if folder is not None else BUNDLED_PROPAGATION_MODEL)
    try:
        config = PropagationConfig.from_dict(json.loads((folder / CONFIG).read_text(encoding="utf-8")))
    except json.JSONDecodeError as exc:
        raise ModelError(f"{folder / CONFIG} is not valid JSON: {exc}") from exc
    return PropagationModel(config, load_weights(PromptUNet2D(config.network), folder), folder)


# ------------------------------------------------------------------------------------------ slice geometry
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


def _set_slice(volume: np.ndarray, axis: int, index: int, values: np.ndarray) -> None:
    key = [slice(None)] * 3
    key[axis] = index
    volume[tuple(key)] = values


# --------------------------------------------------------------------------------------- training samples
@dataclass
class LabelledVolume:
    """A volume for training or evaluation: image ``(Z, Y, X)``, label values, and its structures.

    Attributes:
        units: structure name -> label values forming it (1-4 of them are merged per training sample).
        presence: per axis, structure name -> sorted slice indices where it is present.
    """

    name: str
    image: np.ndarray
    label: np.ndarray
    units: dict[str, list[int]]
    presence: list[dict[str, np.ndarray]] = field(default_factory=list)
    group: str = ""

    def __post_init__(self):
        if not self.presence:
            self.presence = []
            for axis in range(3):
                other = tuple(a for a in range(3) if a != axis)
                found = {}
                for unit, values in self.units.items():
                    slices = np.nonzero(np.isin(self.label, values).any(axis=other))[0]
                    if len(slices):
                        found[unit] = slices
                self.presence.append(found)
        self.units = {u: v for u, v in self.units.items() if u in self.presence[0]}

    def mask(self, units: Sequence[str]) -> np.ndarray:
        return np.isin(self.label, [v for u in units for v in self.units[u]])


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


# ------------------------------------------------------------------------------------------------ inference
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
    """

    mask: np.ndarray
    written: list[int] = field(default_factory=list)
    reprompts: list[int] = field(default_factory=list)
    stopped: dict[int, str] = field(default_factory=dict)
    max_slices_held: int = 0


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
              buffer_size: int = 3, min_pixels: int = 4, stop_at_fixed: bool = True,
              threshold: float | None = None, min_contrast: float | None = FADE_CONTRAST,
              progress: ProgressCallback | None = None, cancel=None,
              limit: Callable[[int, np.ndarray], np.ndarray] | None = None) -> PropagationResult:
    """Carry the mask of ``prompt_slice`` through the volume, first towards higher indices, then lower.

    Each predicted slice becomes the next prompt. Self-supervised feedback (our reading of the paper's
    equation 4, which we could not consult): before predicting slice ``j`` from prompt ``j -/+ 1`` we compute
    SSIM between the two slices inside the network box; when it falls below ``ssim_threshold`` (default the
    model's, 0.6) the prompt is re-chosen from a buffer of the last ``buffer_size`` (slice, mask) pairs of this
    direction (the prompt slice first among them): the pair most similar to slice ``j`` is used, if more similar
    than the adjacent one. A direction stops when the mask vanishes (fewer than ``min_pixels`` pixels), when
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
            checked and kept (a shape prior, :mod:`PromptSegLib.multislice`); an emptied mask stops the direction.

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
    lo, hi = 0 if start is None else int(start), n - 1 if stop is None else int(stop)
    if not 0 <= lo <= hi < n:
        raise PromptSegError(f"range {lo}..{hi} is not within the volume's slices 0..{n - 1}")
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
        _set_slice(out, axis, k, v)
    _set_slice(out, axis, prompt_slice, prompt_mask)
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
            _set_slice(out, axis, j, predicted)
            result.written.append(j)
            prompt = (query, predicted)
            buffer.append(prompt)
            done += 1
            progress(min(done / total, 1.0), f"slice {j}")
            j += direction
        result.stopped[direction] = reason
    progress(1.0, f"propagated {len(result.written)} slices")
    return result


# ---------------------------------------------------------------------------------------------- evaluation
def largest_slice(truth: np.ndarray, axis: int = 0) -> int:
    """Index of the slice with the most foreground (where a user would draw the prompt)."""
    other = tuple(a for a in range(3) if a != axis)
    return int(np.argmax(truth.sum(axis=other)))


def dice_by_distance(prediction: np.ndarray, truth: np.ndarray, prompt_slice: int, axis: int = 0,
                     distances: Sequence[int] = (5, 10)) -> dict[str, float]:
    """3D Dice within ``+-d`` slices of the prompt (prompt slice excluded) for each ``d``, and over the whole
    volume (``"whole"``, prompt slice included)."""
    index = np.arange(truth.shape[axis])
    out = {}
    for d in distances:
        keep = (np.abs(index - prompt_slice) <= d) & (index != prompt_slice)
        out[f"+-{d}"] = dice(np.compress(keep, prediction, axis), np.compress(keep, truth, axis))
    out["whole"] = dice(prediction, truth)
    return out


def evaluation_targets(volume: LabelledVolume, evaluate: dict[str, list[int]] | None, limit: int = 5,
                       min_slices: int = 3) -> dict[str, np.ndarray]:
    """Ground-truth masks to score: ``evaluate`` (name -> values) when given, else the ``limit`` largest units
    spanning at least ``min_slices`` slices."""
    if evaluate:
        masks = {name: np.isin(volume.label, values) for name, values in evaluate.items()}
    else:
        sizes = sorted(((int(np.isin(volume.label, v).sum()), u) for u, v in volume.units.items()), reverse=True)
        masks = {u: volume.mask([u]) for _, u in sizes[:limit]}
    return {name: m for name, m in masks.items() if m.any(axis=(1, 2)).sum() >= min_slices}


def evaluate_volumes(propagator: Propagator, volumes: Sequence[tuple[LabelledVolume, dict | None]],
                     axis: int = 0, progress: ProgressCallback | None = None, threshold: float | None = None,
                     min_contrast: float | None = FADE_CONTRAST) -> list[dict]:
    """Propagate each structure from its largest slice; Dice by distance per structure (list of rows).
    ``threshold`` and ``min_contrast`` are passed to :func:`propagate`."""
    rows = []
    for index, (volume, evaluate) in enumerate(volumes):
        for name, truth in evaluation_targets(volume, evaluate).items():
            k = largest_slice(truth, axis)
            seeded = np.zeros_like(truth)
            _set_slice(seeded, axis, k, take_slice(truth, axis, k))
            start = time.perf_counter()
            result = propagate(propagator, volume.image, seeded, k, axis, threshold=threshold,
                               min_contrast=min_contrast)
            seconds = time.perf_counter() - start
            scores = dice_by_distance(result.mask, truth, k, axis)
            rows.append({"volume": volume.name, "group": volume.group, "structure": name, "prompt_slice": k,
                         "slices": int(truth.any(axis=tuple(a for a in range(3) if a != axis)).sum()),
                         **scores, "seconds": seconds})
        if progress:
            progress((index + 1) / len(volumes), volume.name)
    return rows


def summary_table(rows: list[dict], keys: Sequence[str] = ("+-5", "+-10", "whole")) -> str:
    """Markdown table: mean Dice per group and overall (number of structures in brackets)."""
    groups: dict[str, list[dict]] = {}
    for row in rows:
        groups.setdefault(row["group"], []).append(row)
    lines = ["| held-out group | structures | " + " | ".join(f"Dice {k}" for k in keys) + " |",
             "|---|---|" + "---|" * len(keys)]
    for name, members in list(groups.items()) + [("all", rows)]:
        lines.append(f"| {name} | {len(members)} | " +
                     " | ".join(f"{np.mean([r[k] for r in members]):.3f}" for k in keys) + " |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------------------- data and training
def load_propagation_spec(path: str | os.PathLike) -> list[dict]:
    """Read a dataset spec (the segmentation-training format) for propagation training.

    Target names are kept as written (propagation is class-agnostic: no vocabulary lookup). A dataset without
    ``labels`` uses every non-zero label value as its own structure. Optional ``evaluate`` (name -> list of
    values) names the structures scored on held-out cases (default: the ``labels`` targets).

    Returns:
        One dict per dataset: ``name``, ``modality``, ``units`` (name -> values, or ``None`` = all values),
        ``evaluate`` and ``cases`` (``id``, ``image``, ``label``, ``split``; paths resolved).

    Raises:
        PromptSegError: unreadable or malformed spec, a missing file.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise PromptSegError(f"cannot read dataset spec {path}: {exc}") from exc
    out = []
    for entry in data.get("datasets", []):
        try:
            units = None
            if "labels" in entry:
                units = {}
                for value, name in entry["labels"].items():
                    units.setdefault(str(name), []).append(int(value))
            evaluate = {str(k): [int(v) for v in vals] for k, vals in entry["evaluate"].items()} \
                if "evaluate" in entry else units
            cases = [{"id": str(c["id"]), "image": path.parent / c["image"], "label": path.parent / c["label"],
                      "split": c.get("split", "train")} for c in entry["cases"]]
            dataset = {"name": entry["name"], "modality": entry.get("modality", ""), "units": units,
                       "evaluate": evaluate, "cases": cases}
        except (KeyError, TypeError, ValueError) as exc:
            raise PromptSegError(f"dataset spec {path}: entry {entry.get('name', '?')} is malformed ({exc})") from exc
        for case in cases:
            for file in (case["image"], case["label"]):
                if not Path(file).exists():
                    raise PromptSegError(f"dataset {dataset['name']}, case {case['id']}: no such file {file}")
        out.append(dataset)
    if not out:
        raise PromptSegError(f"dataset spec {path} lists no datasets")
    return out


def load_volume(dataset: dict, case: dict) -> LabelledVolume:
    """Read one case on its own grid (the label resampled onto the image grid when they differ)."""
    import SimpleITK as sitk

    from .datasets import CaseSpec, read_label
    from .imageio import read_image

    image = read_image(case["image"])
    label = sitk.GetArrayFromImage(read_label(CaseSpec(case["id"], Path(case["image"]), Path(case["label"])), image))
    if dataset["units"] is None:
        units = {str(v): [int(v)] for v in np.unique(label) if v != 0}
    else:
        units = dataset["units"]
    return LabelledVolume(f"{dataset['name']}/{case['id']}", sitk.GetArrayFromImage(image).astype(np.float32),
                          label, units, group=dataset["name"])


def load_split(datasets: list[dict], split: str) -> list[tuple[LabelledVolume, dict | None]]:
    """Every case of ``split`` with its dataset's ``evaluate`` targets."""
    return [(load_volume(d, c), d["evaluate"]) for d in datasets for c in d["cases"] if c["split"] == split]


def _loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    bce = torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    probability = torch.sigmoid(logits)
    inter = (probability * target).sum(dim=(1, 2, 3))
    soft_dice = (2 * inter + 1) / (probability.sum(dim=(1, 2, 3)) + target.sum(dim=(1, 2, 3)) + 1)
    return bce + (1 - soft_dice).mean()


def train_propagation(spec_path: str | os.PathLike, output: str | os.PathLike, steps: int = 2000,
                      widths: Sequence[int] = CPU_WIDTHS, v: int = 7, batch_size: int = 12, lr: float = 2e-3,
                      input_size: int = 96, minutes: float | None = None, seed: int = 0, threads: int = 1,
                      name: str = "promptseg-propagation", version: str = "0.1.0", command: str | None = None,
                      evaluate: bool = True, log_every: int = 50, end_fraction: float = 0.1,
                      grow_fraction: float = 0.0, init: str | os.PathLike | None = None,
                      progress: ProgressCallback | None = None) -> Path:
    """Train a propagation model on a dataset spec's ``train`` cases and write its model folder.

    Stops after ``steps`` steps or ``minutes`` of wall time, whichever comes first (cosine learning-rate decay
    over ``steps``). When ``evaluate`` and the spec has ``val`` cases, the card gets the measured Dice on them
    by distance from the prompt slice (axial propagation from each structure's largest slice).
    ``grow_fraction``: share of samples whose prompt is corrupted by adding pixels (see
    :class:`SampleGenerator`). ``init``: a
    propagation model folder to fine-tune (its architecture and input size are kept; its training record is
    carried into the new card).

    Raises:
        PromptSegError: a bad spec, no training structure, an unwritable output.
    """
    output = Path(output)
    if not output.parent.is_dir():
        raise OutputError(f"folder {output.parent} does not exist")
    torch.set_num_threads(int(threads))
    torch.manual_seed(seed)
    datasets = load_propagation_spec(spec_path)
    train_volumes = [vol for vol, _ in load_split(datasets, "train")]
    if not train_volumes:
        raise PromptSegError("the dataset spec has no training cases")
    start_model = load_propagation_model(init) if init is not None else None
    if start_model is not None:
        widths, input_size = start_model.config.network.widths, start_model.config.input_size
    generator = SampleGenerator(train_volumes, v=v, size=input_size, seed=seed, end_fraction=end_fraction,
                                grow_fraction=grow_fraction)
    config = PropagationConfig(name=name, version=version, network=PropagationNetConfig(tuple(int(w) for w in widths)),
                               input_size=input_size, v=v)
    if input_size % config.network.divisor:
        raise PromptSegError(f"input size {input_size} is not a multiple of {config.network.divisor}")
    network = start_model.network if start_model is not None else PromptUNet2D(config.network)
    optimiser = torch.optim.AdamW(network.parameters(), lr=lr, weight_decay=1e-4)
    network.train()
    began = time.perf_counter()
    losses: list[float] = []
    step = 0
    while step < steps and (minutes is None or time.perf_counter() - began < minutes * 60):
        elapsed = time.perf_counter() - began
        done = max(step / steps, elapsed / (minutes * 60) if minutes else 0.0)
        for group in optimiser.param_groups:  # cosine decay over the steps or the time budget, whichever ends first
            group["lr"] = lr * (0.02 + 0.98 * 0.5 * (1 + math.cos(math.pi * min(done, 1.0))))
        query, prompt_image, prompt_mask, target = generator.batch(batch_size)
        loss = _loss(network(query, prompt_image, prompt_mask), target)
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
        step += 1
        if step % log_every == 0:
            log.info("step %d  loss %.4f  %.0f s", step, float(np.mean(losses[-log_every:])), time.perf_counter() - began)
        if progress:
            progress(step / steps, f"step {step} loss {losses[-1]:.3f}")
    train_seconds = time.perf_counter() - began
    network.eval()
    with torch.no_grad():  # evaluate what is shipped: the fp16-rounded weights
        for tensor in network.state_dict().values():
            if tensor.is_floating_point():
                tensor.copy_(tensor.half().float())
    model = PropagationModel(config, network)
    groups: dict[str, dict[str, int]] = {}
    for d in datasets:
        for c in d["cases"]:
            groups.setdefault(d["name"], {}).setdefault(c["split"], 0)
            groups[d["name"]][c["split"]] += 1
    config.training = {"steps": step, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads,
                       "seconds": round(train_seconds, 1), "final_loss": round(float(np.mean(losses[-50:])), 4),
                       "spec": Path(spec_path).name, "cases": groups, "end_fraction": end_fraction,
                       "grow_fraction": grow_fraction, "command": command,
                       "hardware": f"the CPU ({platform.processor() or platform.machine()})", "torch": torch.__version__}
    if start_model is not None:
        previous = dict(start_model.config.training)
        if not previous.get("command"):  # models trained before the command was recorded in config.json
            card = (start_model.folder / CARD).read_text(encoding="utf-8").split("```")
            previous["command"] = card[1].strip() if len(card) > 2 else None
        config.training["init"] = {k: previous.get(k) for k in ("command", "steps", "batch_size", "lr", "seconds",
                                                                 "final_loss", "end_fraction", "grow_fraction",
                                                                 "init")}
    table, rows = "", []
    if evaluate:
        validation = load_split(datasets, "val")
        if validation:
            rows = evaluate_volumes(Propagator(model, threads=threads), validation)
            table = summary_table(rows)
            config.training["val_dice"] = {k: round(float(np.mean([r[k] for r in rows])), 4)
                                           for k in ("+-5", "+-10", "whole")}
    card = model_card(config, datasets, command, train_seconds, table, rows)
    return save_propagation_model(output, model, card)


def model_card(config: PropagationConfig, datasets: list[dict], command: str | None, seconds: float,
               table: str, rows: list[dict]) -> str:
    """The model card: what the model does, the exact command, data and split, time, hardware, measured Dice."""
    t = config.training
    data_lines = []
    for d in datasets:
        train = [c["id"] for c in d["cases"] if c["split"] == "train"]
        val = [c["id"] for c in d["cases"] if c["split"] == "val"]
        structures = "every non-zero label value" if d["units"] is None else ", ".join(d["units"])
        data_lines.append(f"| {d['name']} | {d['modality']} | {len(train)}: {_ids(train)} | "
                          f"{len(val)}: {_ids(val)} | {structures} |")
    per_structure = ""
    if rows:
        per_structure = ("\n<details><summary>Per structure</summary>\n\n| volume | structure | slices | prompt | "
                         "Dice +-5 | Dice +-10 | Dice whole | seconds |\n|---|---|---|---|---|---|---|---|\n" +
                         "".join(f"| {r['volume']} | {r['structure']} | {r['slices']} | {r['prompt_slice']} | "
                                 f"{r['+-5']:.3f} | {r['+-10']:.3f} | {r['whole']:.3f} | {r['seconds']:.2f} |\n"
                                 for r in rows) + "\n</details>\n")
    floor = ""
    if rows:
        floor = ("\nTest floors: `Testing/Python/test_propagation.py` propagates with this model and requires "
                 + "; ".join(f"Dice {key} of at least {value} on held-out {where}"
                             for where, (key, value) in TEST_FLOORS.items()) + ".\n")
    return f"""# {config.name} {config.version}

Interactive slice propagation (the Prompt U-Net design): a 2D dual-encoder U-Net (image encoder for the query
slice, prompt encoder for the prompt slice and its mask, features added at every scale, 3x3 convolutions,
widths {'-'.join(str(w) for w in config.network.widths)}) predicts the next slice's mask from a neighbouring
slice and its mask. Class-agnostic: it carries any structure the user draws. Input: a box of
{config.roi_scale:g}x the prompt mask's extent, resampled to {config.input_size}x{config.input_size}, each slice
min-max normalised at its {config.quantiles[0]:g}/{config.quantiles[1]:g} percentiles.

## Training

```
{command or '(trained from Python: train_propagation)'}
```

- Data (`{t.get('spec')}`, paths under `../shared/data`), split by patient:

| dataset | modality | train cases | held-out cases | structures |
|---|---|---|---|---|
{chr(10).join(data_lines)}

- Samples: prompt-query distance up to {config.v} slices, any axis, 1-4 structures merged, synchronized
  augmentation, prompt corruption up to 30 % (pixels dropped; added instead for
  {100 * (t.get('grow_fraction') or 0):.0f} % of samples), 70 % crops (see `PromptSegLib/propagation.py`).
- {t.get('steps')} steps of batch {t.get('batch_size')} at {config.input_size}x{config.input_size}, AdamW lr {t.get('lr')}
  (cosine), BCE + soft Dice; final loss {t.get('final_loss')}; seed {t.get('seed')}; {100 * t.get('end_fraction', 0):.0f} %
  of samples past a structure's end (empty target).
- Training time: {seconds / 60:.1f} min of wall time on {t.get('hardware') or 'the CPU'},
  {t.get('threads')} thread{'s' if t.get('threads') != 1 else ''}, torch {t.get('torch') or torch.__version__}.
{_init_lines(t.get('init'), seconds)}
## Measured on held-out volumes

Axial propagation of each structure from its largest slice (the ground-truth mask of that slice is the only
input); 3D Dice within +-5 and +-10 slices of the prompt (prompt slice excluded) and over the whole
structure. Computed by `evaluate_volumes` on the saved fp16 weights (at the end of `train_propagation`, or by
`refresh_card` after a change of the card's code or of the threshold).

{_inference_lines(config)}

{table or '(no held-out cases in the spec)'}{per_structure}{floor}
## Limits

{_limits_text(t)}"""



LIMITS_SHRINK_ONLY = """Near the prompt it follows the structure well (Dice +-5 and +-10 above). Past a structure's
ends the mask rarely vanishes: the network keeps or grows the mask it is prompted with (its training prompts were
corrupted only by removing pixels: it learnt to add pixels back, never to remove extra ones; the size bias in the
benchmark below measures this), so each step carries the previous, too large mask on. The threshold and the
stopping rule above curb this; where the structure barely stands out (sarcoma GTVs on CT) the rule cannot act
and the whole-structure Dice stays below the near-prompt Dice: set the range limits to the structure's first and
last slice, or correct a slice and propagate again from it. A correction is carried both ways up to the next
kept slice, replacing what was there: drawn on a structure's tip (a few pixels), its mask regrows too slowly and
the slices towards the middle come out too small: correct slices well inside the structure, or undo. Training
on prompts that also gain pixels (`--grow-fraction`) is the fix at the source. Expect errors where a structure
splits, merges or touches a similar neighbour. Not a medical device.
"""
"""The Limits section of a model trained only on prompts that lose pixels (after the training line)."""


def _limits_text(training: dict) -> str:
    """The card's Limits section for a model with this training record: what a model trained only on prompts
    that lose pixels does (it grows its masks), or what is left for one trained on prompts that also gain."""
    grow = training.get("grow_fraction") or 0.0
    volumes = sum(splits.get("train", 0) for splits in (training.get("cases") or {}).values())
    trained = (f"Trained for {training.get('steps')} steps ({(training.get('seconds') or 0) / 60:.0f} min) on "
               f"{volumes} training volumes.")
    if not grow:
        return f"{trained} {LIMITS_SHRINK_ONLY}"
    return f"""{trained} Near the prompt it follows the structure well (Dice +-5 and
+-10 above). Its training prompts also gained pixels ({100 * grow:.0f} % of samples: an even margin or one bulge),
so it learnt to shrink a too large mask as well as to grow a too small one; a model trained only on prompts
that lost pixels grew its masks slice after slice and needed a higher threshold (the size bias in the
benchmark below measures this). Past a structure's end the network still often carries the mask on where the
neighbouring tissue looks alike; the stopping rule curbs this (see the stopping table below), but where the
structure barely stands out (sarcoma GTVs on CT) it cannot act and the whole-structure Dice stays below the
near-prompt Dice: set the range limits to the structure's first and last slice, or correct a slice and
propagate again from it. A correction is carried both ways up to the next kept slice, replacing what was
there; the benchmark's simulated corrections (the worst slice, often a structure's tip) can lower the
whole-structure Dice (below): correct slices well inside the structure, or undo. Expect errors where a
structure splits, merges or touches a similar neighbour. Not a medical device.
"""


TEST_FLOORS = {"STS_030 CT (GTV)": ("+-10", 0.75), "BRATS pat0006 FLAIR (whole tumour)": ("+-10", 0.75),
               "TotalSegmentator DICOM CT (liver)": ("whole", 0.8)}
"""Held-out structure -> (Dice key, floor) checked by the tests and stated in the model card."""


def refresh_card(folder: str | os.PathLike, spec_path: str | os.PathLike, threads: int = 1) -> Path:
    """Rebuild a propagation model's card from its ``config.json`` training record and a fresh evaluation on
    the spec's ``val`` cases (same numbers as at training time: propagation is deterministic); the card and
    SHA256SUMS are replaced atomically. Sections appended later (benchmarks) are dropped."""
    model = load_propagation_model(folder)
    datasets = load_propagation_spec(spec_path)
    rows = evaluate_volumes(Propagator(model, threads=threads), load_split(datasets, "val"))
    t = model.config.training
    card = model_card(model.config, datasets, t.get("command"), float(t.get("seconds", 0.0)), summary_table(rows), rows)
    replace_card(folder, card)
    return Path(folder)


def choose_threshold(scores: dict[float, dict[str, float]], current: float) -> float:
    """The threshold with the best mean whole-structure Dice among those whose mean Dice within +-5 and +-10
    slices is at least that at ``current`` (ties: the one nearest ``current``).

    Args:
        scores: threshold -> mean Dice ``{"+-5", "+-10", "whole"}``; must include ``current``.

    Raises:
        PromptSegError: ``current`` was not scored.
    """
    if current not in scores:
        raise PromptSegError(f"the current threshold {current} is not among the scored ones {sorted(scores)}")
    floor = scores[current]
    allowed = [t for t, s in scores.items() if s["+-5"] >= floor["+-5"] and s["+-10"] >= floor["+-10"]]
    return max(allowed, key=lambda t: (scores[t]["whole"], -abs(t - current)))


def calibrate_threshold(folder: str | os.PathLike, spec_path: str | os.PathLike,
                        candidates: Sequence[float] = THRESHOLD_CANDIDATES, per_dataset: int = 2, threads: int = 1,
                        command: str | None = None) -> float:
    """Choose a propagation model's probability threshold on training cases and write it into its config.json.

    Why: a network that learnt from prompts with pixels dropped, never added (``grow_fraction`` 0), keeps or
    grows the mask it is given; chained on its own predictions, its masks come out too large and hardly shrink
    past a structure's end. A higher threshold offsets that bias; for a network trained on prompts that also
    gain pixels the check usually keeps 0.5. Each candidate (and the model's current threshold) is scored by
    the held-out protocol (:func:`evaluate_volumes`, default stopping rule) on the first ``per_dataset``
    training cases of each dataset in the spec, and :func:`choose_threshold` picks one. config.json and
    SHA256SUMS are replaced atomically, the scores recorded under ``training["threshold_calibration"]``; the
    card is left to :func:`refresh_card`. Returns the chosen threshold.

    Raises:
        PromptSegError: a bad spec, a candidate outside (0, 1), or no training case.
        ModelError: the folder fails its checksums.
    """
    model = load_propagation_model(folder)
    if not all(0.0 < t < 1.0 for t in candidates):
        raise PromptSegError(f"thresholds must lie between 0 and 1 (got {list(candidates)})")
    datasets = load_propagation_spec(spec_path)
    volumes = [(load_volume(d, c), d["evaluate"]) for d in datasets
               for c in [c for c in d["cases"] if c["split"] == "train"][:per_dataset]]
    if not volumes:
        raise PromptSegError("the dataset spec has no training cases to calibrate on")
    config, propagator = model.config, Propagator(model, threads=threads)
    scores, structures = {}, 0
    for t in sorted(set(candidates) | {config.threshold}):
        rows = evaluate_volumes(propagator, volumes, threshold=t)
        scores[t] = {k: round(float(np.mean([r[k] for r in rows])), 4) for k in ("+-5", "+-10", "whole")}
        structures = len(rows)
        log.info("threshold %g: %s", t, scores[t])
    chosen = choose_threshold(scores, config.threshold)
    config.training["threshold_calibration"] = {
        "command": command, "cases": [v.name for v, _ in volumes], "structures": structures,
        "previous": config.threshold, "chosen": chosen, "scores": {f"{t:g}": s for t, s in scores.items()}}
    config.threshold = chosen
    replace_file(folder, CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
    return chosen


def _inference_lines(config: PropagationConfig) -> str:
    """Card lines: the probability threshold (and how it was chosen) and the stopping rule."""
    calibration = config.training.get("threshold_calibration")
    lines = [f"- Probability threshold {config.threshold:g}."]
    if calibration:
        lines[0] = (
            f"- Probability threshold {config.threshold:g} (was {calibration['previous']:g}), chosen by "
            f"`calibrate_threshold` on {calibration['structures']} structures of training\n  cases "
            f"({_ids(calibration['cases'])}): the best mean whole-structure Dice whose +-5/+-10 Dice is not lower\n"
            "  (a higher threshold offsets a network that grows the mask it is prompted with):\n\n"
            f"  ```\n  {calibration['command'] or '(run from Python)'}\n  ```\n\n"
            "  | threshold | Dice +-5 | Dice +-10 | Dice whole |\n  |---|---|---|---|\n" +
            "".join(f"  | {t} | {s['+-5']:.3f} | {s['+-10']:.3f} | {s['whole']:.3f} |\n"
                    for t, s in calibration["scores"].items()))
    lines.append(f"- A direction stops where the mask vanishes, or where the structure fades: where the predicted "
                 f"region keeps less than {FADE_CONTRAST:g}\n  of the prompt slice's contrast, both with the "
                 f"{CONTRAST_RING}-pixel ring around it and above the prompt slice's ring (`kept_contrast`), when "
                 f"the\n  structure stands out on the prompt slice (Cohen's d at least {VISIBLE_CONTRAST:g}).")
    return "\n".join(lines)


def _init_lines(init: dict | None, seconds: float) -> str:
    """Card lines for the earlier stages a fine-tuned model started from."""
    if not init:
        return ""
    lines, total, stage = [], seconds, init
    while stage:
        total += stage.get("seconds") or 0.0
        lines.append(f"- Started from a model trained by `{stage.get('command')}`: {stage.get('steps')} steps of batch "
                     f"{stage.get('batch_size')}, lr {stage.get('lr')}, {(stage.get('seconds') or 0) / 60:.1f} min, "
                     f"{100 * (stage.get('end_fraction') or 0):.0f} % past-the-end samples, "
                     f"{100 * (stage.get('grow_fraction') or 0):.0f} % prompts grown, final loss "
                     f"{stage.get('final_loss')} (same data, split and hardware).")
        stage = stage.get("init")
    lines.append(f"- Total training time, all stages: {total / 60:.1f} min.")
    return "\n".join(lines) + "\n"


def _ids(ids: list[str]) -> str:
    return ", ".join(ids) if len(ids) <= 4 else f"{ids[0]}..{ids[-1]}"
