"""Late fusion of per-target probability maps from several models on one grid, and the HECKTOR metric.

The DuPLUS PET/CT recipe fine-tunes one model on CT and one on PET and averages their per-voxel
probabilities (``weighted_mean``); ``max`` and ``majority`` (vote of thresholded maps) are the alternatives.
All maps are ``(T, Z, Y, X)`` float arrays with values in [0, 1], one per model, on the same grid.
"""
from __future__ import annotations

from typing import Iterable, Sequence

import numpy as np

from .errors import PromptSegError

METHODS = ("weighted_mean", "max", "majority")


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
    if method == "weighted_mean":
        w = np.ones(len(maps)) if weights is None else np.asarray(list(weights), dtype=np.float64)
        if w.shape != (len(maps),):
            raise FusionError(f"{len(maps)} maps but {w.size} weights")
        if (w < 0).any() or not np.isfinite(w).all() or w.sum() <= 0:
            raise FusionError(f"weights must be finite, non-negative and not all zero, got {w.tolist()}")
        w = w / w.sum()
        out = np.zeros_like(maps[0])
        for wi, m in zip(w, maps):
            out += np.float32(wi) * m
        return out
    if weights is not None:
        raise FusionError(f"weights apply to weighted_mean only, not to {method}")
    if method == "max":
        return np.maximum.reduce(maps)
    if method == "majority":
        return (np.sum([m > threshold for m in maps], axis=0) / len(maps)).astype(np.float32)
    raise FusionError(f"unknown fusion method {method!r}; use one of {', '.join(METHODS)}")


def fuse_masks(maps: Sequence[np.ndarray], method: str = "weighted_mean", weights: Iterable[float] | None = None,
               threshold: float = 0.5) -> np.ndarray:
    """Fused binary masks ``(T, Z, Y, X)``: fused probability > ``threshold`` (majority: more than half)."""
    fused = fuse(maps, method, weights, threshold)
    return fused > (0.5 if method == "majority" else threshold)


def aggregated_dice(predictions: Sequence[np.ndarray], truths: Sequence[np.ndarray]) -> float:
    """HECKTOR 2022 aggregated Dice over cases: sum_i 2|A_i & B_i| / sum_i (|A_i| + |B_i|).

    One binary mask pair per case (any shape, the pair must match). NaN when every mask is empty.
    """
    if len(predictions) != len(truths):
        raise FusionError(f"{len(predictions)} predictions but {len(truths)} ground truths")
    intersection = total = 0
    for i, (a, b) in enumerate(zip(predictions, truths)):
        a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
        if a.shape != b.shape:
            raise FusionError(f"case {i}: prediction {a.shape} and truth {b.shape} differ in shape")
        intersection += int(np.logical_and(a, b).sum())
        total += int(a.sum()) + int(b.sum())
    return float("nan") if total == 0 else 2.0 * intersection / total
