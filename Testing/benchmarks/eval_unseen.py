"""Dice of a model on the real chest CT shipped in slicerio (never used for training), against that
package's own segments: left lung, right lung, and the vertebral column (cervical + thoracic + lumbar).

Usage: python Testing/benchmarks/eval_chest_ct.py [--model FOLDER] [--region thorax] [--card]
``--card`` appends the table and this command to the model's card.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import slicerio

from PromptSegLib.inference import Segmenter
from PromptSegLib.metrics import dice, hd95
from PromptSegLib.model_io import append_to_card

TRUTH = {"left lung": ["left lung"], "right lung": ["right lung"],
         "vertebral column": ["cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column"]}


def chest_truth() -> tuple[sitk.Image, dict[str, np.ndarray]]:
    data = Path(slicerio.__file__).parent / "data"
    segmentation = slicerio.read_segmentation(str(data / "Segmentation.seg.nrrd"))
    by_name = {s["name"]: s for s in segmentation["segments"]}
    masks = {}
    for target, names in TRUTH.items():
        masks[target] = np.any([(segmentation["voxels"] == by_name[n]["labelValue"]).transpose(2, 1, 0)
                                for n in names], axis=0)
    return sitk.ReadImage(str(data / "CTChest4.nrrd")), masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model")
    parser.add_argument("--region", default="thorax")
    parser.add_argument("--card", action="store_true")
    args = parser.parse_args()
    image, truth = chest_truth()
    segmenter = Segmenter(args.model, device="cpu")
    result = segmenter.segment(image, "CT", args.region, list(truth))
    spacing = tuple(reversed(image.GetSpacing()))
    lines = [f"| target | Dice | HD95 (mm) |", "|---|---|---|"]
    for i, target in enumerate(truth):
        lines.append(f"| {target} | {dice(result.mask(i), truth[target]):.3f} | {hd95(result.mask(i), truth[target], spacing):.1f} |")
    table = "\n".join(lines) + "\n"
    print(f"context: {result.context}\n{table}", end="")
    if args.card:
        command = "python Testing/benchmarks/eval_chest_ct.py " + shlex.join(sys.argv[1:])
        append_to_card(segmenter.model.folder, "## Unseen data: the slicerio chest CT (128x128x34, 3 x 3 x 10 mm)\n\n"
                       f"Ground truth: the segments shipped with slicerio (made by hand in Slicer, not by this model).\n\n"
                       f"```\n{command}\n```\n\n{table}")


if __name__ == "__main__":
    main()
