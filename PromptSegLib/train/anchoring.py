"""Anchors measured on a dataset spec's training cases and written into a model's config and card (``promptseg
anchor``).

A target anchored to another of the model's targets (the parotids to the mandible) keeps, at inference, only the
pieces that reach within the farthest its training truth ever lay from the anchor's truth along the body axis (plus
``postprocess.ANCHOR_MARGIN_MM``), and nothing when the anchor is not found, except where the anchor could lie
beyond the scan's end (see ``postprocess``): what the region check cannot see, such as a chest CT cropped through the
body, then holds no head organ. Which targets to anchor is the caller's choice (organs found only where the anchor
is: not the spinal cord, which runs on through the chest); the reach comes from the training truth only.
"""
from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
import SimpleITK as sitk

from PromptSegLib.errors import PromptSegError
from PromptSegLib.models.folder import (CONFIG, ModelConfig, anchored_anchors, append_to_card, read_config,
                                       replace_file)
from PromptSegLib.segment.postprocess import ANCHOR_MARGIN_MM, z_extent
from PromptSegLib.train.datasets import DatasetSpec, read_label_file


@dataclass(frozen=True)
class Reach:
    """How far a target's training truth lay beyond its anchor's along the body axis (LPS z).

    Attributes:
        anchor: the anchor target.
        cases: training cases that hold both.
        below_mm: the farthest the target's truth ended below (to the feet of) the anchor's lowest voxel; negative
            when it always reached that far above it (a parotid always overlaps the mandible's extent).
        above_mm: the same for its start above the anchor's highest voxel.
    """

    anchor: str
    cases: int
    below_mm: float
    above_mm: float


def anchor_reach(datasets: Sequence[DatasetSpec], anchor: str, targets: Sequence[str],
                 split: str = "train") -> dict[str, Reach]:
    """Per target of ``targets``, its :class:`Reach` from ``anchor`` over the ``split`` cases where both are
    delineated and present (only the label files are read).

    Raises:
        PromptSegError: a target that no such case holds with the anchor (see :func:`check_targets` for the rest).
    """
    gaps: dict[str, list[tuple[float, float]]] = {t: [] for t in targets}
    for dataset in datasets:
        if anchor not in dataset.targets:
            continue
        for case in (c for c in dataset.cases if c.split == split and anchor not in c.unlabelled):
            labels = read_label_file(case)
            label = sitk.GetArrayViewFromImage(labels)
            extent = z_extent(np.isin(label, dataset.values_of(anchor)), labels)
            if extent is None:
                continue
            for target in (t for t in targets if t in dataset.targets and t not in case.unlabelled):
                own = z_extent(np.isin(label, dataset.values_of(target)), labels)
                if own is not None:
                    gaps[target].append((extent[0] - own[1], own[0] - extent[1]))
    missing = [t for t, g in gaps.items() if not g]
    if missing:
        raise PromptSegError(f"no {split} case holds {', '.join(missing)} together with {anchor}")
    return {t: Reach(anchor, len(g), max(b for b, _ in g), max(a for _, a in g)) for t, g in gaps.items()}


def check_targets(config: ModelConfig, anchor: str, targets: Sequence[str]) -> None:
    """Refuse an anchor or target that is not one of the model's targets, or a target that is itself an anchor.

    Raises:
        PromptSegError: either.
    """
    unknown = sorted(({anchor} | set(targets)) - set(config.targets))
    if unknown:
        raise PromptSegError(f"{', '.join(unknown)}: not targets of model {config.name} "
                             f"({', '.join(config.targets)})")
    if anchor in targets or anchored_anchors({**config.anchored, **{t: [anchor, 0.0, 0.0] for t in targets}}):
        raise PromptSegError("an anchor cannot be anchored itself")


def apply_anchors(folder: str | os.PathLike, reach: dict[str, Reach], command: str) -> None:
    """Write ``reach`` into the model folder's config (``anchored``, replacing earlier anchors of those targets)
    and a section of its card (manifest updated).

    Raises:
        PromptSegError: see :func:`check_targets`.
    """
    config = read_config(folder)
    for anchor in {r.anchor for r in reach.values()}:
        check_targets(config, anchor, [t for t, r in reach.items() if r.anchor == anchor])
    anchored = {**config.anchored, **{t: [r.anchor, round(r.below_mm, 1), round(r.above_mm, 1)]
                                      for t, r in reach.items()}}
    replace_file(folder, CONFIG, json.dumps(replace(config, anchored=anchored).to_dict(), indent=2) + "\n")
    rows = [f"| {t} | {r.anchor} | {r.cases} | {r.below_mm:.1f} | {r.above_mm:.1f} |" for t, r in sorted(reach.items())]
    append_to_card(folder, "## Anchors (measured on the training cases)\n\n"
                   f"```\n{command}\n```\n\n| target | anchor | training cases with both | farthest below it (mm) | "
                   "farthest above it (mm) |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
                   "(Negative: the target always reached that far into the anchor's extent.) At inference a piece "
                   "of an anchored target whose anchor's mask does not come that near, plus "
                   f"{ANCHOR_MARGIN_MM:g} mm, is removed where the scan reaches that far (a mask removed whole comes "
                   "with a warning); the anchor is segmented too when it is not asked for.")
