"""Does a model tell left from right? For each pair of left/right targets the model was trained on, on CT images:

- ``cosine``: of the two target prompts' embeddings (the model's text encoder; 1 = the same sentence to it);
- ``heads``: how far the prediction heads the model generates from the two prompts lie apart, relative to their
  size (``|h_left - h_right| / |h_left|``, for the image's middle window);
- ``maps``: the network's two probability maps on the model grid, before any post-processing: their mean absolute
  difference, and the Dice between the two masks at the model's threshold (1: either prompt gives the same mask);
- ``own side``: after the whole request (``Segmenter.segment``, the model's post-processing included), the share of
  each mask's voxels that lie on its named side of the body's midline (``postprocess.midline_x``), and the Dice
  between the two final masks (0 where the sides are kept apart; nan: both empty).

A model whose maps agree for the two prompts relies on post-processing (``ModelConfig.own_side``, chosen by
``promptseg tune`` on validation patients) to keep each side's mask on its side.

Usage: python Testing/benchmarks/check_laterality.py [--model DIR] [--region REGION] [--left "left kidney" ...]
       [--openkbp pt_21 pt_38 ... | --images CT.nii.gz ...] [--threads 2]
Default: ``promptseg-hn-oars`` on the 12 validation patients of ``Resources/Training/hn_oars.json`` (OpenKBP's
training split, read from ``../open-kbp`` by the project's importer).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from PromptSegLib.io.imageio import read_image  # noqa: E402
from PromptSegLib.metrics import dice  # noqa: E402
from PromptSegLib.preprocessing.preprocess import prepare  # noqa: E402
from PromptSegLib.segment.inference import Segmenter  # noqa: E402
from PromptSegLib.segment.postprocess import midline_x, physical_x  # noqa: E402
from PromptSegLib.text.vocabulary import other_side, side_of  # noqa: E402
from PromptSegLib.train import openkbp  # noqa: E402

SPEC = ROOT / "Resources" / "Training" / "hn_oars.json"


def side_pairs(segmenter: Segmenter, left: list[str] | None = None) -> list[tuple[str, str]]:
    """(left target, right target) pairs among the model's trained targets, by the vocabulary's laterality;
    ``left``: only the pairs of these left targets."""
    trained = set(segmenter.model.config.targets)
    pairs = []
    for name in sorted(left or trained):
        if side_of(segmenter.vocabulary.target(name)) == "left" and other_side(name) in trained:
            pairs.append((name, other_side(name)))
    return pairs


def on_side(mask: np.ndarray, image: sitk.Image, side: str, midline: float) -> float:
    """Share of ``mask``'s voxels (bool ``(Z, Y, X)`` on ``image``'s grid) on the patient's ``side`` of ``midline``
    (LPS x, mm); nan for an empty mask."""
    voxels = np.argwhere(mask)
    if not len(voxels):
        return float("nan")
    x = physical_x(image, voxels)
    return float(np.mean(x > midline if side == "left" else x < midline))


def check(segmenter: Segmenter, image: sitk.Image, region: str, pairs: list[tuple[str, str]]) -> list[dict]:
    """The measures of the module docstring for each pair on one CT ``image``."""
    config = segmenter.model.config
    context = segmenter.context("CT", region)
    names = [name for pair in pairs for name in pair]
    queries = segmenter.queries("CT", names)
    embeddings = segmenter.encoder.encode([context] + [q.prompt for q in queries])
    prepared = prepare(image, "CT", config.spacing_mm, segmenter.intensity_rule("CT"))
    maps = segmenter.predict_on_model_grid(prepared, "CT", context, queries).numpy()
    array = torch.from_numpy(prepared.array)
    corner = [max((n - p) // 2, 0) for n, p in zip(array.shape, config.patch_size)]
    window = array[tuple(slice(c, c + p) for c, p in zip(corner, config.patch_size))][None, None].float()
    short = [max(p - n, 0) for n, p in zip(window.shape[2:], config.patch_size)]
    if any(short):  # a volume smaller than a window: padded as the windows are
        window = torch.nn.functional.pad(window, [q for s in reversed(short) for q in (0, s)], mode="replicate")
    network = segmenter.network
    with torch.inference_mode():
        _, dense = network.backbone(window, "CT", embeddings[0])
        heads = torch.cat([p.reshape(1, len(queries), -1) for p in
                           network.head.generate(embeddings[None, 1:], dense)], dim=-1)[0]
    result = segmenter.segment(image, "CT", region, names)
    midline = midline_x(image)
    rows = []
    for index, (left, right) in enumerate(pairs):
        a, b = 2 * index, 2 * index + 1
        masks = [result.mask(a), result.mask(b)]
        rows.append({
            "pair": f"{left} / {right}",
            "cosine": float(torch.dot(embeddings[1 + a], embeddings[1 + b])),
            "heads": float((heads[a] - heads[b]).norm() / heads[a].norm()),
            "maps_mean_abs_diff": float(np.abs(maps[a] - maps[b]).mean()),
            "maps_dice": dice(maps[a] >= config.threshold, maps[b] >= config.threshold),
            "left_on_left": on_side(masks[0], image, "left", midline),
            "right_on_right": on_side(masks[1], image, "right", midline),
            "final_dice": dice(*masks) if masks[0].any() or masks[1].any() else float("nan")})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "PromptSegLib" / "models" / "promptseg-hn-oars"))
    parser.add_argument("--region", default="head and neck")
    chosen = parser.add_mutually_exclusive_group()
    chosen.add_argument("--openkbp", nargs="+", help="OpenKBP patients of hn_oars.json's folder (default: its val)")
    chosen.add_argument("--images", nargs="+", help="CT image files or DICOM folders")
    parser.add_argument("--left", nargs="+", help="check only the pairs of these left targets (default: every pair)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    segmenter = Segmenter(args.model, device="cpu", threads=args.threads)
    pairs = side_pairs(segmenter, args.left)
    if not pairs:
        print(f"{segmenter.model.config.name} was trained on no left/right pair of targets")
        return
    if args.images:
        cases = [(str(path), lambda path=path: read_image(path)) for path in args.images]
    else:
        dataset = json.loads(SPEC.read_text())["datasets"][0]
        folder = (SPEC.parent / dataset["folder"]).resolve()
        cases = [(patient, lambda patient=patient: openkbp.read_ct(folder / patient))
                 for patient in args.openkbp or dataset["val"]]
    own_side = set(segmenter.model.config.own_side)
    print(f"{segmenter.model.config.name} {segmenter.model.config.version}; own-side rule for: "
          f"{', '.join(sorted(own_side)) or 'no target'}")
    print("| image | pair | prompt cosine | heads apart | maps: mean abs diff | maps: Dice | left on left | "
          "right on right | final masks: Dice |")
    print("|---|---|---|---|---|---|---|---|---|")
    rows = []
    for name, load in cases:
        for row in check(segmenter, load(), args.region, pairs):
            rows.append(row)
            print(f"| {name} | {row['pair']} | {row['cosine']:.3f} | {row['heads']:.4f} | "
                  f"{row['maps_mean_abs_diff']:.5f} | {row['maps_dice']:.3f} | {row['left_on_left']:.2f} | "
                  f"{row['right_on_right']:.2f} | {row['final_dice']:.3f} |", flush=True)
    for pair in dict.fromkeys(r["pair"] for r in rows):
        chosen_rows = [r for r in rows if r["pair"] == pair]
        worst = np.nanmin([np.inf] + [share for r in chosen_rows for share in (r["left_on_left"], r["right_on_right"])])
        empty = sum(np.isnan(r["final_dice"]) for r in chosen_rows)
        print(f"{pair}: {len(chosen_rows)} images; maps Dice (either prompt the same mask: 1) mean "
              f"{np.mean([r['maps_dice'] for r in chosen_rows]):.3f}; after post-processing the least share of a mask "
              f"on its own side {worst:.2f}, final masks' Dice at most "
              f"{np.nanmax([r['final_dice'] for r in chosen_rows] + [-np.inf]):.3f} ({empty} images with both empty)")


if __name__ == "__main__":
    main()
