"""Late fusion of CT and PET on the sarcoma cohort's held-out patients (the DuPLUS HECKTOR recipe).

Each held-out patient's CT and FDG-PET are segmented separately with the GTV model (its CT and PET input
blocks); the PET probabilities are resampled onto the CT grid and fused per voxel (weighted mean, then
threshold). Dice against the manual CT contour for CT alone, PET alone and fused, per patient and as the
mean and the HECKTOR aggregated Dice.
Usage: python Testing/benchmarks/eval_sts_fusion.py [--model promptseg-sts-gtv] [--pet-weight 0.5] [--card]
"""
from __future__ import annotations

import argparse
import shlex
import sys

import numpy as np
import SimpleITK as sitk
from common import SHARED

from PromptSegLib.fusion import aggregated_dice, fuse
from PromptSegLib.inference import Segmenter
from PromptSegLib.metrics import dice
from PromptSegLib.model_io import append_to_card
from PromptSegLib.pet import resample_pet_to_ct

HELD_OUT = [f"STS_{i:03d}" for i in range(25, 31)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="promptseg-sts-gtv")
    parser.add_argument("--pet-weight", type=float, default=0.5)
    parser.add_argument("--card", action="store_true")
    args = parser.parse_args()
    segmenter = Segmenter(args.model, device="cpu")
    rows, masks = [], {"CT": [], "PET": [], "fused": []}
    truths = []
    for case in HELD_OUT:
        folder = SHARED / "sts_pet_ct_mr" / "nifti" / case
        ct = sitk.ReadImage(str(folder / "CT_image.nii.gz"))
        pet = sitk.ReadImage(str(folder / "PET_image.nii.gz"))
        truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "CT_mask.nii.gz"))) > 0
        ct_probability = segmenter.segment(ct, "CT", "extremity", ["GTV"]).probabilities[0]
        pet_result = segmenter.segment(pet, "PET", "extremity", ["GTV"])
        pet_image = sitk.GetImageFromArray(pet_result.probabilities[0])
        pet_image.CopyInformation(pet)
        pet_on_ct = sitk.GetArrayFromImage(resample_pet_to_ct(pet_image, ct)[0])
        fused = fuse([ct_probability[None], pet_on_ct[None]], "weighted_mean", [1 - args.pet_weight, args.pet_weight])[0]
        threshold = segmenter.model.config.threshold
        case_masks = {"CT": ct_probability >= threshold, "PET": pet_on_ct >= threshold, "fused": fused >= threshold}
        for kind, mask in case_masks.items():
            masks[kind].append(mask)
        truths.append(truth)
        rows.append(f"| {case} | " + " | ".join(f"{dice(case_masks[k], truth):.3f}" for k in masks) + " |")
    lines = ["| patient | CT alone | PET alone | fused |", "|---|---|---|---|", *rows,
             "| mean | " + " | ".join(f"{np.mean([dice(m, t) for m, t in zip(masks[k], truths)]):.3f}" for k in masks) + " |",
             "| aggregated | " + " | ".join(f"{aggregated_dice(masks[k], truths):.3f}" for k in masks) + " |"]
    table = "\n".join(lines) + "\n"
    print(table, end="")
    if args.card:
        command = "python Testing/benchmarks/eval_sts_fusion.py " + shlex.join(sys.argv[1:])
        append_to_card(segmenter.model.folder, "## Late fusion of CT and PET (held-out patients, Dice against the "
                       f"manual CT contour, PET weight {args.pet_weight})\n\n```\n{command}\n```\n\n{table}")


if __name__ == "__main__":
    main()
