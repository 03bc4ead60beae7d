"""Choose how far a fill goes beyond the outermost drawn slices, on validation structures: ``multislice.REACH``
(``--reach``: the fill's hard limit) or ``multislice.ENDS_BEYOND`` (``--ends-beyond``: where the size profile
expects the structure's ends), each in median drawn-slice spacings, ``none`` for no such rule. One is varied, the
other kept at the library's value.

The structures: the seven organs of the 12 OpenKBP *training-split* patients that ``hn_oars.json`` keeps for
validation (``../open-kbp/provided-data/train-pats``, read by the project's importer). The propagation model
never trained on OpenKBP, and none of these patients is in ``bench_propagation.py``'s groups, whose figures
stay a held-out report. Protocol as in ``bench_propagation.py`` (K drawn axial slices at (i + 0.5) / K of the
extent); each value is run for K = 2..8 or ``--counts`` (K = 1 is not affected), with the ITK peer for reference.
Prints mean Dice per K and the mean over K for each value; the value with the highest mean over K is chosen.

Usage: python Testing/benchmarks/choose_fill_reach.py [--reach none 1 0.5 | --ends-beyond none 0.5 1 2]
       [--counts 2 3 4 6 8] [--threads 1]
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np
import SimpleITK as sitk
from bench_propagation import COUNTS, ROOT, drawn_indices, fill_between_slices, openkbp_organs

sys.path.insert(0, str(ROOT))

from PromptSegLib.metrics import dice  # noqa: E402
from PromptSegLib.propagate.multislice import fill_from_slices  # noqa: E402
from PromptSegLib.propagate.propagator import Propagator  # noqa: E402
from PromptSegLib.train.openkbp import read_ct, read_structures  # noqa: E402

SPEC = ROOT / "Resources" / "Training" / "hn_oars.json"


def validation_structures():
    """Yield ``(name, image (Z, Y, X), truth bool (Z, Y, X), spacing (mm, Z Y X))`` for each contoured organ
    (at least 3 slices) of the OpenKBP validation patients of ``hn_oars.json``."""
    dataset = json.loads(SPEC.read_text())["datasets"][0]
    folder = (SPEC.parent / dataset["folder"]).resolve()
    for patient in dataset["val"]:
        ct = read_ct(folder / patient)
        organs = sitk.GetArrayFromImage(read_structures(folder / patient))
        image = sitk.GetArrayFromImage(ct).astype(np.float32)
        for organ, truth in openkbp_organs(organs):
            yield f"{patient}/{organ}", image, truth, tuple(reversed(ct.GetSpacing()))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--reach", nargs="+")
    chosen.add_argument("--ends-beyond", nargs="+")
    parser.add_argument("--counts", type=int, nargs="+", default=[k for k in COUNTS if k > 1])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    keyword = "ends_beyond" if args.ends_beyond else "reach"
    values = [None if v == "none" else float(v) for v in args.ends_beyond or args.reach or ["none", "1", "0.5"]]
    counts = args.counts
    propagator = Propagator(None, threads=args.threads)
    scores: dict[str, list[list[float]]] = {str(v): [] for v in values} | {"peer": []}
    for name, image, truth, spacing in validation_structures():
        drawn = {k: drawn_indices(truth, k) for k in counts}
        for value in values:
            scores[str(value)].append([dice(fill_from_slices(propagator, image, {j: truth[j] for j in drawn[k]},
                                                             spacing=spacing, **{keyword: value}).mask, truth)
                                       for k in counts])
        scores["peer"].append([dice(fill_between_slices(truth, drawn[k]), truth) for k in counts])
        print(name, " ".join(f"{key}: " + " ".join(f"{v:.3f}" for v in rows[-1]) for key, rows in scores.items()),
              flush=True)
    print(f"\n{len(scores['peer'])} validation structures (OpenKBP training-split patients kept for validation)\n")
    print(f"| {keyword} (drawn-slice spacings) | " + " | ".join(f"K={k}" for k in counts) + " | mean over K |")
    print("|---|" + "---|" * (len(counts) + 1))
    for key, rows in scores.items():
        means = np.mean(np.array(rows), axis=0)
        label = "ITK Fill between slices" if key == "peer" else key
        print(f"| {label} | " + " | ".join(f"{m:.3f}" for m in means) + f" | {means.mean():.3f} |")
    best = max((k for k in scores if k != "peer"), key=lambda k: np.mean(scores[k]))
    print(f"\nchosen: {keyword} {best}")


if __name__ == "__main__":
    main()
