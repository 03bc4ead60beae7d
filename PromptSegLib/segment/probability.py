"""One target's probabilities on an image grid, held compactly: uint8 steps of 1/255 inside the box of its
non-zero voxels, 0 outside. A 512x512x300 CT's full float32 map takes 315 MB; a map of an organ takes its box,
one byte a voxel. Full-size arrays are made only when asked for, one target at a time.

Probabilities are rounded to the nearest 1/255: a voxel is at or above a threshold of 0.5 exactly when the
unrounded probability was (127.5 / 255 = 0.5); other thresholds can move by at most 1/510.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from PromptSegLib.preprocessing.preprocess import bounding_box

LEVELS = np.arange(256, dtype=np.float32) / np.float32(255)
"""The probability of each stored byte value."""
FLOOR = 0.5 / 255
"""Probabilities below this round to 0: the part of a map beyond their box is never computed."""


def level(threshold: float) -> int:
    """The smallest stored value whose probability is at or above ``threshold`` (256 when none is)."""
    return int(np.searchsorted(LEVELS, np.float32(threshold)))


def quantize(probabilities: np.ndarray) -> np.ndarray:
    """float probabilities -> uint8 steps of 1/255 (clipped to [0, 1], rounded to the nearest step)."""
    scaled = np.multiply(probabilities, np.float32(255), dtype=np.float32)
    np.clip(scaled, 0.0, 255.0, out=scaled)
    return np.rint(scaled, out=scaled).astype(np.uint8)


@dataclass(frozen=True)
class ProbabilityMap:
    """Probabilities of one target on a grid of ``shape`` ``(Z, Y, X)``.

    Attributes:
        shape: the grid's array shape.
        box: index slices ``(z, y, x)`` holding every non-zero voxel.
        values: uint8 ``values[box]``, probability = value / 255.
    """

    shape: tuple[int, int, int]
    box: tuple[slice, slice, slice]
    values: np.ndarray

    @classmethod
    def from_array(cls, probabilities: np.ndarray, shape: tuple[int, int, int] | None = None,
                   origin: tuple[int, int, int] = (0, 0, 0)) -> "ProbabilityMap":
        """A map from float probabilities in [0, 1] whose first voxel lies at ``origin`` of a grid of ``shape``
        (default: the array is the whole grid)."""
        values = quantize(probabilities)
        inner = bounding_box(values > 0) or (slice(0, 0),) * 3
        box = tuple(slice(o + s.start, o + s.stop) for o, s in zip(origin, inner))
        return cls(tuple(int(n) for n in (shape or probabilities.shape)), box, np.ascontiguousarray(values[inner]))

    def dense(self) -> np.ndarray:
        """float32 ``(Z, Y, X)`` probabilities."""
        out = np.zeros(self.shape, np.float32)
        out[self.box] = LEVELS[self.values]
        return out

    def reach(self, threshold: float) -> tuple[slice, slice, slice]:
        """Index slices ``(z, y, x)`` outside which no voxel is at or above ``threshold``."""
        return tuple(slice(0, n) for n in self.shape) if level(threshold) == 0 else self.box

    def slab_at_least(self, start: int, stop: int,
                      threshold: float) -> tuple[tuple[slice, slice, slice], np.ndarray]:
        """``(box, inside)`` for the z planes ``start:stop``: the :meth:`reach` box cut to those planes (maybe
        empty) and the bool array over it of probability >= ``threshold``. Nothing full-size is made."""
        lowest = level(threshold)
        reach = self.reach(threshold)
        z0 = max(start, reach[0].start)
        z1 = max(z0, min(stop, reach[0].stop))
        box = (slice(z0, z1), reach[1], reach[2])
        if lowest == 0:
            return box, np.ones((z1 - z0, *self.shape[1:]), bool)
        return box, self.values[z0 - self.box[0].start:z1 - self.box[0].start] >= lowest

    def at_least(self, threshold: float) -> np.ndarray:
        """bool ``(Z, Y, X)``: probability >= ``threshold`` (as ``dense() >= threshold``)."""
        box, inside = self.slab_at_least(0, self.shape[0], threshold)
        out = np.zeros(self.shape, bool)  # pages outside the box are never touched
        out[box] = inside
        return out
