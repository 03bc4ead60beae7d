"""Training crops of a pack's volumes, drawn and augmented where the network trains (torch, GPU or CPU).

The crops and augmentation of ``promptseg train`` (``train.samples``), computed on the device: each crop is
centred on a voxel of one target, each target equally often (:class:`PackSampler`), or anywhere; rotation
(+-15 deg) and scaling (+-15 %) with probability 0.3, sampled from the whole volume in one ``grid_sample`` (so
a rotated crop sees the volume beyond its edges where ``train.samples`` repeats them); a short field of view
with probability 0.2; brightness, contrast and gamma. No mirroring: left and right are targets of their own.
Beyond the volume, crops repeat its edge voxels. Arrays are ``(z, y, x)`` on the model grid.
"""
from __future__ import annotations

import functools

import numpy as np
import torch
from torch.nn import functional as F

from PromptSegLib.train.augmentation import jitter_intensity, limit_field_of_view
from PromptSegLib.train.pack import PackCase

ROTATION_RAD = 0.26
SCALING = 0.15


class PackSampler:
    """What each crop is centred on, among the cases of one dataset (as ``train.samples.CentreSampler``): with
    probability ``foreground_ratio`` a target drawn uniformly among those present in any case, then a case
    where it is present and one of its voxels; otherwise any case and any voxel."""

    def __init__(self, cases: list[PackCase], targets: list[str], foreground_ratio: float):
        self.cases, self.foreground_ratio = cases, foreground_ratio
        self.holding = [(t, found) for t in sorted(targets)
                        if (found := [i for i, case in enumerate(cases) if t in case.points])]

    def draw(self, rng: np.random.Generator) -> tuple[int, np.ndarray, str | None]:
        """``(index into cases, centre voxel (3,), the target centred on or None)``."""
        if self.holding and rng.random() < self.foreground_ratio:
            target, found = self.holding[rng.integers(len(self.holding))]
            index = found[rng.integers(len(found))]
            points = self.cases[index].points[target]
            return index, points[rng.integers(len(points))], target
        index = int(rng.integers(len(self.cases)))
        return index, np.array([rng.integers(0, n) for n in self.cases[index].label.shape]), None


def random_affine(rng: np.random.Generator, augment: bool) -> np.ndarray:
    """``(3, 3)``: from a crop's voxel offsets to the volume's (rotation about each axis and scaling per axis,
    with probability 0.3 when ``augment``; else the identity)."""
    if not augment or rng.random() >= 0.3:
        return np.eye(3)
    matrix = np.diag(1.0 + rng.uniform(-SCALING, SCALING, 3))
    for axis, angle in enumerate(rng.uniform(-ROTATION_RAD, ROTATION_RAD, 3)):
        a, b = [i for i in range(3) if i != axis]
        rotation = np.eye(3)
        rotation[a, a] = rotation[b, b] = np.cos(angle)
        rotation[a, b], rotation[b, a] = -np.sin(angle), np.sin(angle)
        matrix = rotation @ matrix
    return matrix


@functools.lru_cache(maxsize=4)
def _offsets(patch: tuple[int, int, int], device: torch.device) -> torch.Tensor:
    """``(prod(patch), 3)`` float32: each crop voxel's index minus the patch centre (``patch // 2``), C order."""
    return torch.stack(torch.meshgrid(*[torch.arange(n, device=device, dtype=torch.float32) - n // 2
                                        for n in patch], indexing="ij"), dim=-1).reshape(-1, 3)


def crop(volume: torch.Tensor, label: torch.Tensor, centre: np.ndarray, patch: tuple[int, int, int],
         affine: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """A ``patch``-sized crop of ``volume`` (float32) and ``label`` (uint8), both ``(Z, Y, X)`` on one device:
    crop voxel ``j`` samples volume voxel ``centre + affine @ (j - patch // 2)`` (trilinear for the image,
    nearest for the label; edge voxels repeated beyond the volume). With the identity, exactly
    ``volume[centre - patch // 2:][:patch]``."""
    device = volume.device
    positions = _offsets(tuple(patch), device) @ torch.as_tensor(affine.T, dtype=torch.float32, device=device) \
        + torch.as_tensor(centre, dtype=torch.float32, device=device)
    size = torch.tensor([max(n - 1, 1) for n in volume.shape], dtype=torch.float32, device=device)
    grid = (positions * (2.0 / size) - 1.0).flip(-1).reshape(1, *patch, 3)  # grid_sample takes (x, y, z)
    image = F.grid_sample(volume[None, None], grid, mode="bilinear", padding_mode="border", align_corners=True)
    values = F.grid_sample(label[None, None].float(), grid, mode="nearest", padding_mode="border", align_corners=True)
    return image[0, 0], values[0, 0].round().to(torch.uint8)


def augment_crop(image: torch.Tensor, label: torch.Tensor,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """A short field of view (probability 0.2), then intensity jitter, as ``train.samples.augment``."""
    if rng.random() < 0.2:
        image, label = limit_field_of_view(image, label, rng)
    return jitter_intensity(image, rng), label
