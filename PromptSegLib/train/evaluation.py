"""Evaluation: Dice and HD95 per case and target on each image's own grid, as CSV and a Markdown table; and
late fusion of two co-registered datasets (CT alone, PET alone, fused, and the HECKTOR aggregated Dice)."""
from __future__ import annotations

import csv
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import SimpleITK as sitk

from PromptSegLib.errors import PromptSegError
from PromptSegLib.io.outputs import atomic_path
from PromptSegLib.metrics import dice, hd95
from PromptSegLib.segment.fusion import (aggregated_dice_of_counts, fuse_masks, fusion_weights, overlap_counts,
                                         segment_pair)
from PromptSegLib.segment.inference import Segmenter
from PromptSegLib.train.datasets import CaseSpec, DatasetSpec, LabelledCase, load_case

FUSED = "fused"
AGGREGATED = "aggregated"


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
    """Segment every case and score each target its dataset names (but those not delineated for the case).

    Args:
        context_region: use this region in T1 instead of the dataset's own (the DuPLUS "T1 mismatch" ablation).
        absent_targets: also prompt these targets, which the dataset does not label; their truth is empty and
            their predicted volume shows whether the model obeys the prompt ("organ control").
        closer_look: ``off``, ``small`` or ``all``: refine targets in a finer crop first (see ``refine``).
    """
    scores = []
    for case in cases:
        image = case.image
        named = [t for t in case.dataset.targets if t not in case.case.unlabelled]
        extra = [t for t in absent_targets if t not in named]
        result = segmenter.segment(image, case.dataset.modality, context_region or case.dataset.regions[0],
                                   named + extra, allow_untrained=True)
        if closer_look != "off":
            from PromptSegLib.segment.refine import closer_look as refine

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


def write_scores(scores: list, csv_path: str | Path, markdown_path: str | Path | None = None,
                 table: Callable[[list], str] | None = None) -> None:
    """Rows (``Score`` or ``FusionScore``) as CSV; optionally a Markdown table of them (``table``, default
    :func:`markdown_table`)."""
    with atomic_path(csv_path) as tmp, open(tmp, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(asdict(scores[0]).keys()) if scores else ["case"])
        writer.writeheader()
        writer.writerows(asdict(s) for s in scores)
    if markdown_path:
        with atomic_path(markdown_path) as tmp:
            Path(tmp).write_text((table or markdown_table)(scores), encoding="utf-8")


def markdown_table(scores: list[Score]) -> str:
    """Per dataset and target: mean Dice and HD95 where the target is present; mean predicted volume where it
    is absent (should be ~0). A case where nothing was found has no HD95: the HD95 cell then says over how many
    of the cases its mean is taken (``7.0 (27 of 28)``), so that a miss never looks like a closer outline."""
    lines = ["| dataset | target | cases present | Dice | HD95 (mm) | cases absent | predicted mL where absent |",
             "|---|---|---|---|---|---|---|"]
    for dataset, target in dict.fromkeys((s.dataset, s.target) for s in scores):
        rows = [s for s in scores if (s.dataset, s.target) == (dataset, target)]
        present = [s for s in rows if s.truth_voxels]
        absent = [s for s in rows if not s.truth_voxels]
        hd = [s.hd95_mm for s in present if not math.isnan(s.hd95_mm)]
        dice_text = f"{np.mean([s.dice for s in present]):.3f}" if present else "-"
        hd_text = (f"{np.mean(hd):.1f}" + (f" ({len(hd)} of {len(present)})" if len(hd) < len(present) else "")
                   if hd else "-")
        absent_text = f"{np.mean([s.predicted_ml for s in absent]):.1f}" if absent else "-"
        lines.append(f"| {dataset} | {target} | {len(present)} | {dice_text} | {hd_text} | {len(absent)} | {absent_text} |")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------- late fusion

@dataclass
class FusionScore:
    """One (case, target, input) result on the first dataset's grid, against the first dataset's label.

    ``input`` is a dataset name (its image alone; the second's probabilities resampled onto the first's grid)
    or ``fused``. Rows with case ``aggregated`` hold the HECKTOR aggregated Dice over the cases (their voxel
    counts are the sums)."""

    case: str
    target: str
    input: str
    modality: str
    dice: float
    intersection_voxels: int
    truth_voxels: int
    predicted_voxels: int


def pair_cases(datasets: Sequence[DatasetSpec], first: str, second: str,
               split: str) -> tuple[DatasetSpec, DatasetSpec, list[tuple[CaseSpec, CaseSpec]]]:
    """The two named datasets and their cases of ``split`` paired by case id (the same patient's CT and PET).

    Raises:
        PromptSegError: an unknown dataset name, the same dataset twice, no target in common, no case in
            ``split``, or a case of either dataset without a case of the same id in the other.
    """
    by_name = {d.name: d for d in datasets}
    unknown = [n for n in (first, second) if n not in by_name]
    if unknown:
        raise PromptSegError(f"no dataset named {', '.join(unknown)} in the spec; it has: {', '.join(by_name)}")
    if first == second:
        raise PromptSegError(f"fusion needs two different datasets, got {first} twice")
    a, b = by_name[first], by_name[second]
    if not set(a.targets) & set(b.targets):
        raise PromptSegError(f"datasets {first} ({', '.join(a.targets)}) and {second} ({', '.join(b.targets)}) "
                             "name no target in common")
    cases_a = {c.id: c for c in a.cases if c.split == split}
    cases_b = {c.id: c for c in b.cases if c.split == split}
    if not cases_a and not cases_b:
        raise PromptSegError(f"datasets {first} and {second} have no case in split {split!r}")
    for name, own, other in ((first, cases_a, cases_b), (second, cases_b, cases_a)):
        alone = sorted(set(own) - set(other))
        if alone:
            partner = second if name == first else first
            raise PromptSegError(f"case(s) {', '.join(alone)} of dataset {name} (split {split}) have no case of "
                                 f"the same id in dataset {partner}: fusion pairs the two images of one patient")
    return a, b, [(cases_a[i], cases_b[i]) for i in cases_a]


def evaluate_fusion(segmenter: Segmenter, datasets: Sequence[DatasetSpec], first: str, second: str,
                    split: str = "val", method: str = "weighted_mean",
                    weights: Iterable[float] | None = None) -> list[FusionScore]:
    """Late fusion scored per case and target: the first dataset's image alone, the second's alone (its
    probabilities resampled onto the first's grid) and both fused, each against the first dataset's label
    (e.g. ``sts_ct`` + ``sts_pet``: Dice against the CT contour), then the aggregated Dice over the cases.

    Each image is segmented on its own modality and its dataset's first region, for the targets both datasets
    name. Masks: probability >= the model threshold alone; :func:`fusion.fuse_masks` fused.

    Raises:
        PromptSegError: cases that do not pair (see :func:`pair_cases`), bad fusion method or weights (before any
            work); ``pet.NoOverlapError`` for a pair whose grids do not overlap in physical space.
    """
    weights = None if weights is None else list(weights)
    fusion_weights(method, weights, 2)
    a, b, pairs = pair_cases(datasets, first, second, split)
    targets = [t for t in a.targets if t in b.targets]
    scores = []
    for case_a, case_b in pairs:
        labelled_a, labelled_b = load_case(a, case_a), load_case(b, case_b)
        alone_a, alone_b, _ = segment_pair(segmenter, labelled_a.image, labelled_b.image, (a.modality, b.modality),
                                           (a.regions[0], b.regions[0]), targets, allow_untrained=True)
        label = sitk.GetArrayFromImage(labelled_a.label)
        for i, target in enumerate(targets):
            truth = np.isin(label, a.values_of(target))
            fused = fuse_masks([alone_a.probability(i)[None], alone_b.probability(i)[None]], method, weights,
                               alone_a.threshold)[0]
            for source, modality, mask in ((a.name, a.modality, alone_a.mask(i)), (b.name, b.modality, alone_b.mask(i)),
                                           (FUSED, f"{a.modality}+{b.modality}", fused)):
                both, predicted, true = overlap_counts(mask, truth)
                scores.append(FusionScore(case_a.id, target, source, modality, dice(mask, truth), both, true, predicted))
    return scores + aggregate_fusion(scores)


def aggregate_fusion(scores: Sequence[FusionScore]) -> list[FusionScore]:
    """One ``aggregated`` row per (target, input): the HECKTOR aggregated Dice of the per-case rows."""
    rows = []
    for target, source in dict.fromkeys((s.target, s.input) for s in scores if s.case != AGGREGATED):
        cases = [s for s in scores if (s.target, s.input) == (target, source) and s.case != AGGREGATED]
        counts = [(s.intersection_voxels, s.predicted_voxels, s.truth_voxels) for s in cases]
        rows.append(FusionScore(AGGREGATED, target, source, cases[0].modality, aggregated_dice_of_counts(counts),
                                sum(s.intersection_voxels for s in cases), sum(s.truth_voxels for s in cases),
                                sum(s.predicted_voxels for s in cases)))
    return rows


def fusion_table(scores: Sequence[FusionScore]) -> str:
    """Markdown: per target, one row per case with the Dice of each input alone and fused, then the mean and
    the aggregated Dice."""
    sources = list(dict.fromkeys(s.input for s in scores))
    lines = ["| target | case | " + " | ".join(sources) + " |", "|---|---|" + "---|" * len(sources)]
    for target in dict.fromkeys(s.target for s in scores):
        rows = [s for s in scores if s.target == target]
        dice_of = {(s.case, s.input): s.dice for s in rows}
        cases = list(dict.fromkeys(s.case for s in rows if s.case != AGGREGATED))
        for case in cases + ["mean", AGGREGATED]:
            values = [float(np.mean([dice_of[c, source] for c in cases])) if case == "mean" else dice_of[case, source]
                      for source in sources]
            lines.append(f"| {target} | {case} | " + " | ".join(f"{v:.3f}" for v in values) + " |")
    return "\n".join(lines) + "\n"
