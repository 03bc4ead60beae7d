"""Late fusion of CT and PET on the sarcoma cohort's held-out patients (the DuPLUS HECKTOR recipe).

The same as ``promptseg evaluate Resources/Training/sts_gtv.json --fuse sts_ct sts_pet`` (the library's
``evaluation.evaluate_fusion``): each held-out patient's CT and FDG-PET are segmented separately with the GTV
model (its CT and PET input blocks); the PET probabilities are resampled onto the CT grid and fused per voxel
(weighted mean, then threshold). Dice against the manual CT contour for CT alone, PET alone and fused, per
patient, as the mean and as the HECKTOR aggregated Dice.
Usage: python Testing/benchmarks/eval_sts_fusion.py [--model promptseg-sts-gtv] [--pet-weight 0.5] [--card]
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path

from PromptSegLib.models.folder import append_to_card
from PromptSegLib.segment.inference import Segmenter
from PromptSegLib.train.datasets import load_spec
from PromptSegLib.train.evaluation import evaluate_fusion, fusion_table

SPEC = Path(__file__).resolve().parents[2] / "Resources" / "Training" / "sts_gtv.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="promptseg-sts-gtv")
    parser.add_argument("--pet-weight", type=float, default=0.5)
    parser.add_argument("--card", action="store_true")
    args = parser.parse_args()
    segmenter = Segmenter(args.model, device="cpu")
    scores = evaluate_fusion(segmenter, load_spec(SPEC), "sts_ct", "sts_pet", "val", "weighted_mean",
                             [1 - args.pet_weight, args.pet_weight])
    table = fusion_table(scores)
    print(table, end="")
    if args.card:
        command = "python Testing/benchmarks/eval_sts_fusion.py " + shlex.join(sys.argv[1:])
        append_to_card(segmenter.model.folder, "## Late fusion of CT and PET (held-out patients, Dice against the "
                       f"manual CT contour, PET weight {args.pet_weight})\n\n```\n{command}\n```\n\n{table}")


if __name__ == "__main__":
    main()
