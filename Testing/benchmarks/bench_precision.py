"""float32 against bfloat16 (``promptseg segment --precision``) on a model's validation patients: Dice against
the manual masks in each precision, the Dice between the two precisions' masks, and the seconds per case.

The cases are the ``val`` split of the model's training spec (default: the head-and-neck model on its 12
OpenKBP training-split validation patients, ``Resources/Training/hn_oars.json``), so that the choice of a
default precision is made on validation patients, never on test ones.

Usage: python Testing/benchmarks/bench_precision.py [--model promptseg-hn-oars] [--spec SPEC.json] [--threads 2]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from PromptSegLib.metrics import dice
from PromptSegLib.segment.inference import Segmenter
from PromptSegLib.train.datasets import load_spec, load_split

ROOT = Path(__file__).resolve().parents[2]
PRECISIONS = ("float32", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="promptseg-hn-oars")
    parser.add_argument("--spec", default=str(ROOT / "Resources" / "Training" / "hn_oars.json"))
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    segmenters = {p: Segmenter(args.model, device="cpu", threads=args.threads, precision=p) for p in PRECISIONS}
    trained = set(segmenters["float32"].model.config.targets)
    scores: dict[str, list[float]] = {}  # "target precision" / "target agreement" -> per case
    seconds = {p: [] for p in PRECISIONS}
    for case in load_split(load_spec(args.spec), "val"):
        spec = case.dataset
        labels = sitk.GetArrayFromImage(case.label)
        targets = [t for t in spec.scored if t in trained and t not in case.case.unlabelled]
        masks = {}
        for precision, segmenter in segmenters.items():
            start = time.perf_counter()
            result = segmenter.segment(case.image, spec.modality, spec.regions[0], targets)
            seconds[precision].append(time.perf_counter() - start)
            masks[precision] = [result.mask(i) for i in range(len(targets))]
        for index, target in enumerate(targets):
            truth = np.isin(labels, spec.scored[target])
            for precision in PRECISIONS:
                scores.setdefault(f"{target} {precision}", []).append(dice(masks[precision][index], truth))
            scores.setdefault(f"{target} agreement", []).append(dice(masks["float32"][index],
                                                                     masks["bfloat16"][index]))
        print(f"{case.case.id}: " + ", ".join(f"{p} {seconds[p][-1]:.1f} s" for p in PRECISIONS), flush=True)
    targets = sorted({key.rsplit(" ", 1)[0] for key in scores})
    print(f"\n{args.model}, {len(seconds['float32'])} validation cases, {args.threads} CPU threads\n")
    print("| target | Dice float32 | Dice bfloat16 | Dice float32 vs bfloat16 (lowest) |\n|---|---|---|---|")
    for target in targets + ["mean"]:
        pick = (lambda kind: [np.mean(scores[f"{t} {kind}"]) for t in targets]) if target == "mean" else \
            (lambda kind: scores[f"{target} {kind}"])
        lowest = min(min(scores[f"{t} agreement"]) for t in targets) if target == "mean" else \
            min(scores[f"{target} agreement"])
        print(f"| {target} | {np.mean(pick('float32')):.3f} | {np.mean(pick('bfloat16')):.3f} | "
              f"{np.mean(pick('agreement')):.4f} ({lowest:.4f}) |")
    print("\nseconds per case: " + ", ".join(f"{p} {np.mean(seconds[p]):.1f}" for p in PRECISIONS) +
          f" (bfloat16 {np.mean(seconds['float32']) / np.mean(seconds['bfloat16']):.2f}x faster)")


if __name__ == "__main__":
    main()
