"""Where a head-and-neck organ's Dice is lost: at its upper and lower ends, or within the slices it covers?

Segments the seven OpenKBP organs on each converted patient in ``../shared/data/openkbp_hn_ct/validation`` (the
project's test split for ``promptseg-hn-oars``) and reports, per organ, over the patients that have its contour:

- the Dice of the whole organ, as ``promptseg evaluate`` reports it;
- the Dice within the axial slices that both the model's mask and the contour cover (what is left when the
  organ's ends are taken as given);
- how far the mask's upper and lower ends lie from the contour's (mm along the body axis; positive: the mask
  ends further inferior). Clinical contours of long organs (spinal cord, esophagus) stop where the planner
  stopped, so their ends are a convention as much as anatomy;
- what one pixel costs on this grid (about 4 mm pixels): the Dice of the contour against itself moved by one
  pixel, the mean over the four in-plane directions (no model involved).

Usage: python Testing/benchmarks/hn_dice_by_slices.py [--model PromptSegLib/models/promptseg-hn-oars]
[--patients pt_201 pt_202 ...] [--threads 2]
"""
from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.metrics import dice
from PromptSegLib.segment.inference import Segmenter
from PromptSegLib.train import openkbp

CONVERTED = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "openkbp_hn_ct" / "validation"
ORGANS = [openkbp.LABELS[str(value)] for value in range(1, len(openkbp.LABELS) + 1)]
"""Label values 1-7 of ``oars.nii.gz``, in that order."""


def by_slices(mask: np.ndarray, truth: np.ndarray, slice_mm: float) -> tuple[float, float, float, float]:
    """Whole Dice, Dice on the slices both cover, upper and lower end offsets (mm) of boolean ``(Z, Y, X)`` ``mask``
    against a non-empty ``truth``; z runs superior to inferior with ``slice_mm`` between slices. A mask with no
    voxel gives ``(0, 0, nan, nan)``."""
    if not mask.any():
        return 0.0, 0.0, float("nan"), float("nan")
    mask_z, truth_z = np.flatnonzero(mask.any(axis=(1, 2))), np.flatnonzero(truth.any(axis=(1, 2)))
    both = slice(max(mask_z[0], truth_z[0]), min(mask_z[-1], truth_z[-1]) + 1)
    return (dice(mask, truth), dice(mask[both], truth[both]), float(mask_z[0] - truth_z[0]) * slice_mm,
            float(mask_z[-1] - truth_z[-1]) * slice_mm)


def one_pixel_dice(truth: np.ndarray) -> float:
    """The mean Dice of a boolean ``(Z, Y, X)`` ``truth`` against itself moved by one pixel along y or x, each way
    (voxels moved past the edge are dropped)."""
    scores = []
    for axis in (1, 2):
        for source, target in ((slice(1, None), slice(None, -1)), (slice(None, -1), slice(1, None))):
            moved = np.zeros_like(truth)
            into, out_of = [slice(None)] * 3, [slice(None)] * 3
            into[axis], out_of[axis] = target, source
            moved[tuple(into)] = truth[tuple(out_of)]
            scores.append(dice(moved, truth))
    return float(np.mean(scores))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="PromptSegLib/models/promptseg-hn-oars")
    parser.add_argument("--patients", nargs="*", help="patient folders of the converted split (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    folders = sorted(CONVERTED.glob("pt_*")) if not args.patients else [CONVERTED / p for p in args.patients]
    segmenter = Segmenter(args.model, threads=args.threads)
    rows: dict[str, list[tuple[float, ...]]] = {organ: [] for organ in ORGANS}
    for folder in folders:
        image = sitk.ReadImage(str(folder / "ct.nii.gz"))
        labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "oars.nii.gz")))
        result = segmenter.segment(image, "CT", "head and neck", ORGANS)
        for index, organ in enumerate(ORGANS):
            truth = labels == index + 1
            if truth.any():
                rows[organ].append(by_slices(result.probability(index) >= result.threshold, truth,
                                             image.GetSpacing()[2]) + (one_pixel_dice(truth),))
        print(f"{folder.name}: done", flush=True)
    print(f"\n{segmenter.model.config.name} {segmenter.model.config.version}, {len(folders)} patients of {CONVERTED}\n")
    print("| organ | patients | Dice | Dice on the slices both cover | upper end, mean abs. offset (mm) "
          "| lower end, mean abs. offset (mm) | upper / lower end, mean offset (mm) | the contour moved by one pixel |")
    print("|---|---|---|---|---|---|---|---|")
    means = []
    for organ, values in rows.items():
        if values:
            whole, shared, upper, lower, pixel = np.array(values).T
            means.append((whole.mean(), shared.mean(), pixel.mean()))
            print(f"| {organ} | {len(values)} | {whole.mean():.3f} | {shared.mean():.3f} "
                  f"| {np.nanmean(abs(upper)):.0f} | {np.nanmean(abs(lower)):.0f} "
                  f"| {np.nanmean(upper):+.0f} / {np.nanmean(lower):+.0f} "
                  f"| {pixel.mean():.3f} |")
    whole, shared, pixel = np.mean(means, axis=0)
    print(f"| mean of the organs | | {whole:.3f} | {shared:.3f} | | | | {pixel:.3f} |")


if __name__ == "__main__":
    main()
