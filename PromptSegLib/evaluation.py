"""Evaluation: Dice and HD95 per case and target on each image's own grid, as CSV and a Markdown table."""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .datasets import LabelledCase
from .inference import Segmenter
from .metrics import dice, hd95
from .outputs import atomic_path


@dataclass
class Score:
    """One (case, target) result. ``predicted_ml`` is the predicted volume; for an absent target it should be ~0."""

    case: str
    dataset: str
    target: str
    dice: float
    hd95_mm: float
    truth_voxels: int
    predicted_voxels: int
    predicted_ml: float
    context: str


def evaluate_cases(segmenter: Segmenter, cases: list[LabelledCase], context_region: str | None = None,
                   absent_targets: tuple[str, ...] = (), closer_look: str = "off") -> list[Score]:
    """Segment every case and score each target its dataset names.

    Args:
        context_region: use this region in T1 instead of the dataset's own (the DuPLUS "T1 mismatch" ablation).
        absent_targets: also prompt these targets, which the dataset does not label; their truth is empty and
            their predicted volume shows whether the model obeys the prompt ("organ control").
        closer_look: ``off``, ``small`` or ``all``: refine targets in a finer crop first (see ``refine``).
    """
    scores = []
    for case in cases:
        image = case.image
        named = case.dataset.targets
        extra = [t for t in absent_targets if t not in named]
        result = segmenter.segment(image, case.dataset.modality, context_region or case.dataset.regions[0],
                                   named + extra, allow_untrained=True)
        if closer_look != "off":
            from .refine import closer_look as refine

            refine(segmenter, image, result, case.dataset.modality,
                   indices=list(range(len(named))) if closer_look == "all" else None)
        label = sitk.GetArrayFromImage(case.label)
        spacing = tuple(reversed(image.GetSpacing()))
        voxel_ml = float(np.prod(spacing)) / 1000.0
        for i, query in enumerate(result.queries):
            truth = np.isin(label, case.dataset.values_of(query.name)) if i < len(named) else np.zeros(label.shape, bool)
            predicted = result.mask(i)
            scores.append(Score(case.case.id, case.dataset.name, query.name, dice(predicted, truth),
                                hd95(predicted, truth, spacing), int(truth.sum()), int(predicted.sum()),
                                round(float(predicted.sum()) * voxel_ml, 2), result.context))
    return scores


def summarize(scores: list[Score]) -> dict[str, float]:
    """Mean Dice per target over the cases where the target is present in the ground truth."""
    by_target: dict[str, list[float]] = {}
    for s in scores:
        if s.truth_voxels:
            by_target.setdefault(s.target, []).append(s.dice)
    return {t: float(np.mean(v)) for t, v in by_target.items()}


def write_scores(scores: list[Score], csv_path: str | Path, markdown_path: str | Path | None = None) -> None:
    """Per case and target rows as CSV; optionally a Markdown table of the per-target means."""
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(scores[0]).keys()) if scores else ["case"])
        writer.writeheader()
        writer.writerows(asdict(s) for s in scores)
    if markdown_path:
        with atomic_path(markdown_path) as tmp:
            Path(tmp).write_text(markdown_table(scores), encoding="utf-8")


def markdown_table(scores: list[Score]) -> str:
    """Per dataset and target: mean Dice and HD95 where the target is present; mean predicted volume where it
    is absent (should be ~0)."""
    lines = ["| dataset | target | cases present | Dice | HD95 (mm) | cases absent | predicted mL where absent |",
             "|---|---|---|---|---|---|---|"]
    for dataset, target in dict.fromkeys((s.dataset, s.target) for s in scores):
        rows = [s for s in scores if (s.dataset, s.target) == (dataset, target)]
        present = [s for s in rows if s.truth_voxels]
        absent = [s for s in rows if not s.truth_voxels]
        hd = [s.hd95_mm for s in present if not math.isnan(s.hd95_mm)]
        dice_text = f"{np.mean([s.dice for s in present]):.3f}" if present else "-"
        hd_text = f"{np.mean(hd):.1f}" if hd else "-"
        absent_text = f"{np.mean([s.predicted_ml for s in absent]):.1f}" if absent else "-"
        lines.append(f"| {dataset} | {target} | {len(present)} | {dice_text} | {hd_text} | {len(absent)} | {absent_text} |")
    return "\n".join(lines) + "\n"
