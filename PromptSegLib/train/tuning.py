"""Post-processing chosen on validation cases and written into a model's config (``promptseg tune``).

For each target the model segments, the validation Dice of the raw mask is compared (on each case's own grid)
with that of its largest connected component and, for a target of one side (the left parotid), with the mask
kept on its own side of the body's midline, and with both; each target gets the option with the highest mean
(ties: the simpler one). The smallest volume (mL) each target's truth has in the training cases becomes its plausible
minimum, and on CT the widest body cross-section (cm²) and the most air the body encloses (cm²) on the middle slice
of its truth its plausible maxima (``postprocess``: a far smaller mask is emptied, pieces in a far wider body or
over far more enclosed air, such as the lungs, are removed first). The region check (both maxima together)
is kept for a target where, applied before the chosen option, it does not lower the mean validation Dice (ties
keep it: it guards scans of other regions, which validation does not hold). Given several sliding-window
overlaps, all of this is measured at each and the overlap with the highest mean validation Dice after its chosen
post-processing is kept (ties: the smaller, fewer windows). Nothing here looks at test cases.
"""
from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import SimpleITK as sitk

from PromptSegLib.errors import PromptSegError
from PromptSegLib.metrics import dice
from PromptSegLib.models.folder import (CONFIG, DEFAULT_OVERLAP, ModelConfig, append_to_card,
                                        check_window_overlap, read_config, replace_file)
from PromptSegLib.preprocessing.preprocess import body_areas_cm2, enclosed_air_cm2
from PromptSegLib.segment.inference import Segmenter
from PromptSegLib.segment.postprocess import (AIR_FACTOR, AIR_MARGIN_CM2, BODY_AREA_FACTOR, MIN_VOLUME_FRACTION,
                                              largest_component, middle_slice_area, midline_x, out_of_region_pieces,
                                              own_side)
from PromptSegLib.text.vocabulary import side_of
from PromptSegLib.train.datasets import DatasetSpec, LabelledCase, load_case, read_label_file

OPTIONS = ("all", "largest component", "own side", "own side, largest component")
"""Post-processing options in order of simplicity (a tie goes to the earlier one)."""


@dataclass
class Tuning:
    """What ``choose_postprocessing`` measured and chose.

    Attributes:
        scores: option (``OPTIONS``) -> target -> per-case validation Dice (``own side`` options only for
            targets of one side).
        plausible_ml: target -> smallest training truth volume in mL.
        widest_body_cm2: CT target -> widest body cross-section (cm²) on its truth's middle slice in training.
        most_air_cm2: CT target -> the most air enclosed by the body (cm²) on its truth's middle slice in training.
        region_scores: option -> target -> per-case validation Dice with the region check applied first (CT
            targets with a widest body only).
        overlap: the sliding-window overlap all of this was measured at.
        overlap_means: each overlap tried -> :meth:`chosen_mean` at it (filled by ``choose_postprocessing``).
    """

    scores: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {o: {} for o in OPTIONS})
    plausible_ml: dict[str, float] = field(default_factory=dict)
    widest_body_cm2: dict[str, float] = field(default_factory=dict)
    most_air_cm2: dict[str, float] = field(default_factory=dict)
    region_scores: dict[str, dict[str, list[float]]] = field(default_factory=lambda: {o: {} for o in OPTIONS})
    overlap: float = DEFAULT_OVERLAP
    overlap_means: dict[float, float] = field(default_factory=dict)

    def choice(self, target: str) -> str:
        """The option with the highest mean validation Dice for ``target`` (ties: the simpler one)."""
        means = [(float(np.mean(self.scores[o][target])), -i, o) for i, o in enumerate(OPTIONS)
                 if target in self.scores[o]]
        return max(means)[2]

    @property
    def largest_component(self) -> list[str]:
        return sorted(t for t in self.scores["all"] if "largest" in self.choice(t))

    @property
    def own_side(self) -> list[str]:
        return sorted(t for t in self.scores["all"] if "own side" in self.choice(t))

    @property
    def region_checked(self) -> list[str]:
        """Targets whose chosen option scores at least as well on validation with the region check first."""
        return sorted(t for t in self.scores["all"] if t in self.region_scores[self.choice(t)] and np.mean(
            self.region_scores[self.choice(t)][t]) >= np.mean(self.scores[self.choice(t)][t]))

    def chosen_mean(self) -> float:
        """The mean over targets of the validation Dice with each target's chosen post-processing (after the
        region check where it is kept)."""
        checked = self.region_checked
        return float(np.mean([np.mean((self.region_scores if t in checked else self.scores)[self.choice(t)][t])
                              for t in self.scores["all"]]))

    def markdown(self) -> str:
        """The card section: per target, cases, mean validation Dice of each option, the choice; then the
        overlaps tried, when more than one."""
        lines = ["| target | validation cases | " + " | ".join(f"Dice, {o}" for o in OPTIONS)
                 + " | chosen | smallest in training (mL) | widest body in training (cm²) | most enclosed air in "
                 "training (cm²) | Dice, chosen after the region check | region check |",
                 "|---|---|" + "---|" * (len(OPTIONS) + 6)]
        for target in sorted(self.scores["all"]):
            smallest, widest = self.plausible_ml.get(target), self.widest_body_cm2.get(target)
            air = self.most_air_cm2.get(target)
            region = self.region_scores[self.choice(target)].get(target)
            region_dice = f"{np.mean(region):.3f}" if region else "-"
            cells = [f"{np.mean(self.scores[o][target]):.3f}" if target in self.scores[o] else "-" for o in OPTIONS]
            lines.append(f"| {target} | {len(self.scores['all'][target])} | {' | '.join(cells)} | {self.choice(target)} | "
                         f"{f'{smallest:.1f}' if smallest is not None else '-'} | "
                         f"{f'{widest:.0f}' if widest is not None else '-'} | "
                         f"{f'{air:.1f}' if air is not None else '-'} | {region_dice} | "
                         f"{'yes' if target in self.region_checked else 'no'} |")
        if len(self.overlap_means) > 1:
            lines += ["", f"Measured at sliding-window overlap {self.overlap:g}, chosen among "
                      f"{len(self.overlap_means)} (mean validation Dice after each overlap's chosen post-processing):",
                      "", "| overlap | mean Dice |", "|---|---|",
                      *[f"| {o:g} | {m:.3f} |" for o, m in sorted(self.overlap_means.items())]]
        return "\n".join(lines) + "\n"


def truth_extremes(datasets: list[DatasetSpec], split: str = "train"
                   ) -> tuple[dict[str, float], dict[str, float], dict[str, float]]:
    """From the ``split`` cases where a target is delineated and present: target -> the smallest volume (mL) of
    its truth, and for CT datasets target -> the widest body cross-section (cm², ``body_areas_cm2``) and target
    -> the most air the body encloses (cm², ``enclosed_air_cm2``), each on the middle slice of its truth. Only
    the label files are read, and the images of CT datasets (the label then on the image's grid)."""
    smallest: dict[str, float] = {}
    widest: dict[str, float] = {}
    most_air: dict[str, float] = {}
    for dataset in datasets:
        for case in (c for c in dataset.cases if c.split == split):
            if dataset.modality == "CT":  # the truth on the image's grid, to measure the body beside it
                read = load_case(dataset, case)
                labels, body, air = read.label, body_areas_cm2(read.image), enclosed_air_cm2(read.image)
            else:
                labels, body, air = read_label_file(case), None, None
            label = sitk.GetArrayFromImage(labels)
            voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
            for target in dataset.targets:
                if target in case.unlabelled:
                    continue
                truth = np.isin(label, dataset.values_of(target))
                volume = float(truth.sum()) * voxel_ml
                if volume > 0:
                    smallest[target] = min(smallest.get(target, volume), volume)
                    if body is not None:
                        widest[target] = max(widest.get(target, 0.0), middle_slice_area(truth, body))
                        most_air[target] = max(most_air.get(target, 0.0), middle_slice_area(truth, air))
    return smallest, widest, most_air


def check_tunable(config: ModelConfig, overlaps: Sequence[float]) -> None:
    """Refuse, before any measurement, a model already tuned or overlaps that are not fractions in [0, 1).

    Raises:
        PromptSegError: either.
    """
    if not overlaps:
        raise PromptSegError("no sliding-window overlap to measure")
    for overlap in overlaps:
        check_window_overlap(overlap)
    if config != config.untuned():
        raise PromptSegError(f"model {config.name} already has post-processing or an overlap in its config; tune "
                             "an untuned copy (promptseg tune --again)")


def choose_postprocessing(segmenter: Segmenter, validation: list[LabelledCase], plausible_ml: dict[str, float],
                          widest_body_cm2: dict[str, float] | None = None,
                          most_air_cm2: dict[str, float] | None = None,
                          overlaps: Sequence[float] = (DEFAULT_OVERLAP,)) -> Tuning:
    """Measure the raw and largest-component Dice of every target on ``validation`` (the model's own
    post-processing switched off for the measurement, but for its anchors, which stay on as at inference);
    ``plausible_ml``, ``widest_body_cm2`` and ``most_air_cm2`` (see :func:`truth_extremes`) are kept, and each
    option's Dice is measured again with the region check first. All of it at each sliding-window overlap of
    ``overlaps``; the Tuning of the overlap with the highest :meth:`Tuning.chosen_mean` is returned (ties: the
    smaller overlap).

    Raises:
        PromptSegError: no validation case (or none with a target of the model), no overlap in [0, 1), or a
            model already tuned.
    """
    config = segmenter.model.config
    if not validation:
        raise PromptSegError("no validation case to choose the post-processing on")
    check_tunable(config, overlaps)
    tunings = [_measure(segmenter, validation, Tuning(plausible_ml=dict(plausible_ml),
                                                      widest_body_cm2=dict(widest_body_cm2 or {}),
                                                      most_air_cm2=dict(most_air_cm2 or {}), overlap=overlap))
               for overlap in sorted(set(overlaps))]
    if not tunings[0].scores["all"]:
        raise PromptSegError(f"no validation case holds a target of model {config.name} to choose on")
    means = {t.overlap: t.chosen_mean() for t in tunings}
    best = max(tunings, key=lambda t: (means[t.overlap], -t.overlap))
    best.overlap_means = means
    return best


def _measure(segmenter: Segmenter, validation: list[LabelledCase], tuning: Tuning) -> Tuning:
    """Fill ``tuning``'s scores: every option's Dice per target and case, at ``tuning.overlap``."""
    config = segmenter.model.config
    for case in validation:
        present = [t for t in case.dataset.targets if t in config.targets and t not in case.case.unlabelled]
        label = sitk.GetArrayFromImage(case.label)
        present = [t for t in present if np.isin(label, case.dataset.values_of(t)).any()]
        if not present:
            continue
        result = segmenter.segment(case.image, case.dataset.modality, case.dataset.regions[0], present,
                                   overlap=tuning.overlap)
        midline = midline_x(case.image)
        ct = case.dataset.modality == "CT"
        body, air = (body_areas_cm2(case.image), enclosed_air_cm2(case.image)) if ct else (None, None)
        for i, query in enumerate(result.queries):
            truth = np.isin(label, case.dataset.values_of(query.name))
            masks = {"all": result.mask(i)}
            wide = out_of_region_pieces(masks["all"], query.name, tuning.widest_body_cm2, body, tuning.most_air_cm2,
                                        air)
            side = side_of(query.target)
            for option in OPTIONS[1:] if side else OPTIONS[1:2]:
                masks[option] = _option_mask(masks["all"], option, case.image, side, midline)
            for option, mask in masks.items():
                tuning.scores[option].setdefault(query.name, []).append(dice(mask, truth))
                if wide is not None:
                    checked = _option_mask(masks["all"] & ~wide, option, case.image, side, midline)
                    tuning.region_scores[option].setdefault(query.name, []).append(dice(checked, truth))
    return tuning


def _option_mask(mask: np.ndarray, option: str, image: sitk.Image, side: str | None, midline: float) -> np.ndarray:
    """``mask`` post-processed as ``option`` (one of ``OPTIONS``) asks."""
    if "own side" in option:
        mask = own_side(mask, image, side, midline)
    return largest_component(mask) if "largest" in option else mask


def apply_tuning(folder, tuning: Tuning, command: str) -> None:
    """Write the chosen post-processing into the model folder's config and its card (manifest updated)."""
    config = replace(read_config(folder), largest_component=tuning.largest_component, own_side=tuning.own_side,
                     plausible_ml={t: round(v, 2) for t, v in sorted(tuning.plausible_ml.items())},
                     widest_body_cm2={t: round(tuning.widest_body_cm2[t], 1) for t in tuning.region_checked
                                      if t in tuning.widest_body_cm2},
                     most_air_cm2={t: round(tuning.most_air_cm2[t], 1) for t in tuning.region_checked
                                   if t in tuning.most_air_cm2}, overlap=tuning.overlap)
    replace_file(folder, CONFIG, json.dumps(config.to_dict(), indent=2) + "\n")
    append_to_card(folder, "## Post-processing (chosen on the validation cases)\n\n"
                   f"```\n{command}\n```\n\n{tuning.markdown()}\nA mask smaller than {MIN_VOLUME_FRACTION:g} x its target's "
                   "smallest training volume is emptied with a warning (an organ asked on a scan of another body "
                   f"region); on CT, pieces whose middle slice cuts a body more than {BODY_AREA_FACTOR:g} x wider than "
                   "their target's widest in training, or that encloses more air than "
                   f"max({AIR_FACTOR:g} x, {AIR_MARGIN_CM2:g} cm² more than) the most in training, are removed first "
                   "(a mask removed whole comes with a warning), "
                   "for the targets where that region check does not lower the validation Dice (last column).")
