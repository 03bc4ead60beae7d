"""Dice and HD95 of a model on real images that ship inside PyPI packages and are never used for training:

- ``chest``: the slicerio chest CT (128x128x34, 3 x 3 x 10 mm) against that package's own segments, made by
  hand in Slicer: left lung, right lung, vertebral column (cervical + thoracic + lumbar);
- ``brain``: nilearn's MNI152 T1 template (197x233x189, 1 mm; the 2009a symmetric average of 152 adults)
  against its grey- and white-matter probability maps thresholded at 0.5.

Usage: python Testing/benchmarks/eval_unseen.py {chest,brain} [--model FOLDER] [--card]
``--card`` appends the table and this command to the model's card.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.metrics import dice, hd95
from PromptSegLib.models.folder import append_to_card
from PromptSegLib.segment.inference import Segmenter


@dataclass
class UnseenCase:
    """A real image with reference masks ``(Z, Y, X)`` on its grid, and how to prompt for it."""

    title: str
    image: sitk.Image
    modality: str
    region: str
    truth: dict[str, np.ndarray]


def chest() -> UnseenCase:
    import slicerio

    data = Path(slicerio.__file__).parent / "data"
    segmentation = slicerio.read_segmentation(str(data / "Segmentation.seg.nrrd"))
    by_name = {s["name"]: s for s in segmentation["segments"]}
    parts = {"left lung": ["left lung"], "right lung": ["right lung"],
             "vertebral column": ["cervical vertebral column", "thoracic vertebral column", "lumbar vertebral column"]}
    truth = {target: np.any([(segmentation["voxels"] == by_name[n]["labelValue"]).transpose(2, 1, 0) for n in names],
                            axis=0) for target, names in parts.items()}
    return UnseenCase("the slicerio chest CT (128x128x34, 3 x 3 x 10 mm); ground truth: the segments shipped with "
                      "slicerio (made by hand in Slicer, not by this model)",
                      sitk.ReadImage(str(data / "CTChest4.nrrd")), "CT", "thorax", truth)


def brain() -> UnseenCase:
    import nilearn

    data = Path(nilearn.__file__).parent / "datasets" / "data"
    name = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
    truth = {target: sitk.GetArrayFromImage(sitk.ReadImage(str(data / name.format(tissue)))) >= 128  # 0..255
             for target, tissue in (("grey matter", "gm"), ("white matter", "wm"))}
    return UnseenCase("nilearn's MNI152 T1 template (197x233x189, 1 mm); ground truth: its grey- and white-matter "
                      "probability maps at 0.5", sitk.ReadImage(str(data / name.format("t1"))), "MR", "brain", truth)


CASES = {"chest": chest, "brain": brain}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("case", choices=sorted(CASES))
    parser.add_argument("--model")
    parser.add_argument("--card", action="store_true")
    args = parser.parse_args()
    case = CASES[args.case]()
    segmenter = Segmenter(args.model, device="cpu")
    result = segmenter.segment(case.image, case.modality, case.region, list(case.truth))
    spacing = tuple(reversed(case.image.GetSpacing()))
    lines = ["| target | Dice | HD95 (mm) |", "|---|---|---|"]
    for i, (target, truth) in enumerate(case.truth.items()):
        lines.append(f"| {target} | {dice(result.mask(i), truth):.3f} | {hd95(result.mask(i), truth, spacing):.1f} |")
    table = "\n".join(lines) + "\n"
    print(f"context: {result.context}\n{table}", end="")
    if args.card:
        command = "python Testing/benchmarks/eval_unseen.py " + shlex.join(sys.argv[1:])
        append_to_card(segmenter.model.folder, f"## Unseen data: {case.title}\n\n```\n{command}\n```\n\n{table}")


if __name__ == "__main__":
    main()
