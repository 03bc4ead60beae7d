"""Scoring propagation on held-out volumes: each structure propagated from its largest slice, 3D Dice by
distance from the prompt slice, and the Markdown summary table of the model card."""
from __future__ import annotations

import time
from typing import Sequence

import numpy as np

from PromptSegLib.metrics import dice
from PromptSegLib.propagate.data import LabelledVolume
from PromptSegLib.propagate.geometry import set_slice, take_slice
from PromptSegLib.propagate.propagator import FADE_CONTRAST, ProgressCallback, Propagator, propagate


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
            set_slice(seeded, axis, k, take_slice(truth, axis, k))
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
