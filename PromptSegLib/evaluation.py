"""Evaluation: Dice and HD95 per case and target on each image's own grid, as CSV and a Markdown table."""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from .datasets import PreparedCase
from .inference import Segmenter
from .metrics import dice, hd95
from .outputs import atomic_path


@dataclass
class Score:
    case: str
    dataset: str
    target: str
    dice: float
    hd95_mm: float
    truth_voxels: int
    predicted_voxels: int


def evaluate_cases(segmenter: Segmenter, cases: list[PreparedCase]) -> list[Score]:
    """Segment every case with its dataset's context (first region) and score each named target."""
    scores = []
    for case in cases:
        image = case.input.original
        targets = case.dataset.targets
        result = segmenter.segment(image, case.dataset.modality, case.dataset.regions[0], targets, allow_untrained=True)
        label = sitk.GetArrayFromImage(case.label_original)
        spacing = tuple(reversed(image.GetSpacing()))
        for i, target in enumerate(targets):
            truth = np.isin(label, case.dataset.values_of(target))
            predicted = result.mask(i)
            scores.append(Score(case.case.id, case.dataset.name, target, dice(predicted, truth),
                                hd95(predicted, truth, spacing), int(truth.sum()), int(predicted.sum())))
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
    """Per-target mean Dice and HD95 over cases where the target is present."""
    lines = ["| target | cases | Dice | HD95 (mm) |", "|---|---|---|---|"]
    for target in dict.fromkeys(s.target for s in scores):
        rows = [s for s in scores if s.target == target and s.truth_voxels]
        if not rows:
            continue
        hd = [s.hd95_mm for s in rows if not math.isnan(s.hd95_mm)]
        lines.append(f"| {target} | {len(rows)} | {np.mean([s.dice for s in rows]):.3f} | "
                     + (f"{np.mean(hd):.1f} |" if hd else "n/a |"))
    return "\n".join(lines) + "\n"
