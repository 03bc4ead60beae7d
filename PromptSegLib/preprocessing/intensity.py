"""Modality-specific intensity rules (DuPLUS): CT clipped to a fixed HU window, MR and PET to their own
percentiles, then z-scored. No image I/O: a training pack on a machine without SimpleITK reads them too."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from PromptSegLib.errors import InputImageError
from PromptSegLib.text.modality import canonical_modality

CT_WINDOW_HU: tuple[float, float] = (-990.0, 500.0)
PERCENTILES: tuple[float, float] = (2.0, 98.0)


@dataclass(frozen=True)
class IntensityRule:
    """Clip to ``[low, high]`` then z-score with ``mean`` and ``std`` of the clipped input voxels."""

    low: float
    high: float
    mean: float
    std: float

    @classmethod
    def fit(cls, array: np.ndarray, modality: str) -> "IntensityRule":
        """CT: fixed HU window; MR and PET: the volume's own 2nd and 98th percentiles."""
        modality = canonical_modality(modality)
        if modality == "CT":
            return cls._from_moments(*CT_WINDOW_HU, *_clipped_moments([array], *CT_WINDOW_HU), modality)
        values = np.asarray(array, dtype=np.float32).ravel()
        low, high = (float(v) for v in np.percentile(values, PERCENTILES))
        return cls._from_moments(low, high, *_clipped_moments([values], low, high), modality)

    @classmethod
    def fit_many(cls, arrays: list[np.ndarray], modality: str) -> "IntensityRule":
        """One rule for a whole training set: the window (CT) and the mean and std of all clipped voxels.

        Used for CT, whose HU are absolute: a model then normalises every scan alike, whatever its field of
        view, instead of by the scan's own statistics.
        """
        if canonical_modality(modality) != "CT":
            raise ValueError("a shared intensity rule is only defined for CT")
        return cls._from_moments(*CT_WINDOW_HU, *_clipped_moments(arrays, *CT_WINDOW_HU), "CT")

    @classmethod
    def _from_moments(cls, low: float, high: float, mean: float, variance: float, modality: str) -> "IntensityRule":
        if variance <= 1e-12 * max(1.0, mean * mean):
            raise InputImageError(
                f"all intensities fall on one value after clipping to [{low:g}, {high:g}] for {modality}: "
                "is the modality right?")
        return cls(float(low), float(high), float(mean), float(np.sqrt(variance)))

    def apply(self, array: np.ndarray) -> np.ndarray:
        """Normalised float32 copy of ``array``."""
        out = np.clip(np.asarray(array, dtype=np.float32), self.low, self.high)
        out -= self.mean
        out /= self.std
        return out



MOMENT_VOXELS = 1 << 22
"""Voxels clipped at once (float64: 32 MB) when measuring a volume's mean and variance."""


def _clipped_moments(arrays: list[np.ndarray], low: float, high: float) -> tuple[float, float]:
    """Mean and variance of all voxels of ``arrays`` clipped to ``[low, high]``, in float64, a few planes at a
    time (no float copy of a whole volume: on a 512x512x300 CT 0.36 s against 6.3 s for one clipped float32 copy,
``Testing/benchmarks/bench_cpu_parts.py``)."""
    total, total_sq, count = 0.0, 0.0, 0
    for array in arrays:
        flat = np.asarray(array).reshape(len(array), -1) if np.ndim(array) > 1 else np.asarray(array)[:, None]
        step = max(1, MOMENT_VOXELS // max(flat.shape[1], 1))
        for start in range(0, len(flat), step):
            part = np.clip(flat[start:start + step].astype(np.float64).ravel(), low, high)
            total, total_sq, count = total + part.sum(), total_sq + float(np.dot(part, part)), count + part.size
    mean = total / count
    return mean, max(total_sq / count - mean * mean, 0.0)

