"""The augmentations both trainers apply to a crop, written once for NumPy arrays (``train.samples``, on the
CPU) and torch tensors (``train.pack_crops``, on the training device): a short field of view and intensity
jitter. Arrays are ``(z, y, x)``; ``rng`` draws every random number (on the CPU)."""
from __future__ import annotations

from typing import TypeVar

import numpy as np

Volume = TypeVar("Volume")
"""A NumPy array or a torch tensor."""


def limit_field_of_view(image: Volume, label: Volume, rng: np.random.Generator,
                        min_slices: int = 6) -> tuple[Volume, Volume]:
    """A scan cut short: keep a random slab of ``min_slices`` to half the crop's slices along z (axis 0) and
    repeat its edge slices to the crop's size, image and label alike (what inference sees on a short series)."""
    depth = image.shape[0]
    keep = int(rng.integers(min(min_slices, depth), max(depth // 2, min_slices) + 1))
    start = int(rng.integers(0, depth - keep + 1))
    rows = np.clip(np.arange(depth), start, start + keep - 1)
    return image[rows], label[rows]


def jitter_intensity(image: Volume, rng: np.random.Generator) -> Volume:
    """Brightness and contrast (probability 0.5: ``x * U(0.8, 1.2) + U(-0.2, 0.2)``), then gamma on the crop's
    own range (probability 0.3: exponent ``U(0.7, 1.5)``)."""
    if rng.random() < 0.5:
        image = image * float(rng.uniform(0.8, 1.2)) + float(rng.uniform(-0.2, 0.2))
    if rng.random() < 0.3:
        low, high = image.min(), image.max()
        span = max(float(high - low), 1e-6)
        image = ((image - low) / span) ** float(rng.uniform(0.7, 1.5)) * span + low
    return image
