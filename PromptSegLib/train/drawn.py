"""The slices a user draws of a structure, as the network's drawn-slice input (``promptseg train --hints``,
``network.HINT_CHANNELS``), for both trainers: dataset specs (``train.training``) and packs
(``train.pack_training``, which runs without SimpleITK). Arrays are ``(z, y, x)`` on the model grid."""
from __future__ import annotations

import numpy as np

HINT_SHARE = 0.9
"""With ``promptseg train --hints``, the share of the crops centred on a target that show it drawn (the others show
nothing drawn, so that the network still segments without)."""

DRAWN_COUNTS = (1, 2, 3, 4, 6, 8)
"""How many slices a user draws, each equally likely (the counts ``bench_propagation.py`` measures)."""


def drawn_hint(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The network's hint (``network.HINT_CHANNELS``) for a structure drawn on a few axial planes: K of
    :data:`DRAWN_COUNTS` planes, one in each of K equal parts of ``mask``'s extent along axis 0, at a random place in
    its part. ``mask``: bool ``(z, y, x)``, not empty. Returns float32 ``(2, z, y, x)``."""
    planes = np.nonzero(mask.any(axis=(1, 2)))[0]
    low, extent = int(planes[0]), int(planes[-1]) + 1 - int(planes[0])
    count = min(int(rng.choice(DRAWN_COUNTS)), extent)
    hint = np.zeros((2, *mask.shape), np.float32)
    for part, where in enumerate(rng.random(count)):
        z = low + int((part + where) * extent / count)
        hint[0, z] = mask[z]
        hint[1, z] = 1.0
    return hint


def crop_hint(shown: np.ndarray | None, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """The drawn-slice input of one training crop of ``shape``: ``shown`` (bool, the crop's voxels of the target it
    is centred on; ``None``: centred on no target) drawn by :func:`drawn_hint` in :data:`HINT_SHARE` of the crops
    where it shows, else nothing drawn (so that the network still segments without). float32 ``(2, *shape)``."""
    if shown is not None and shown.any() and rng.random() < HINT_SHARE:
        return drawn_hint(shown, rng)
    return np.zeros((2, *shape), np.float32)
