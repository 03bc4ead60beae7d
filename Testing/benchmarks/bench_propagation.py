"""Slice propagation on held-out real volumes: Dice vs distance from the prompt slice, Dice after k simulated
corrections, the "Fill between slices" peer at the same number of user-drawn slices, and CPU latency.

Protocol (axial, every held-out structure of the spec's ``val`` split):
- propagation: the user draws the structure's largest slice (ground truth); Dice within +-5/+-10 slices
  (prompt excluded) and whole. Then k = 1..K simulated corrections: the slice with the lowest Dice under
  ``--fix-below`` (among slices where truth or prediction is non-empty, not yet fixed) is replaced by the
  ground truth and propagation restarts from it (user-fixed slices are kept; an empty true slice is just
  erased). n = 1 + k user-drawn slices.
- peer: ITK morphological contour interpolation (PyPI ``itk-morphologicalcontourinterpolation``, the filter
  behind Slicer's "Fill between slices") given n ground-truth slices evenly spaced from the first to the last
  slice of the structure (n >= 2; it cannot extrapolate, so it is given the two end slices, which
  propagation is not).
- propagation with range limits: the same, the user also setting the range to the structure's first and
  last slice (the extent the peer's end slices give it).
- stopping at structure ends: Dice by distance with the model's threshold before and after its calibration
  (``calibrate_threshold``), each with and without the stopping rule (``min_contrast``, see ``propagate``).
- latency: a real CT resampled to 256x256x200, the liver propagated from its largest slice over the volume.

Usage: python Testing/benchmarks/bench_propagation.py [--model DIR] [--spec JSON] [--corrections 3] [--card]
"""
from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from PromptSegLib.metrics import dice  # noqa: E402
from PromptSegLib.propagation import (BUNDLED_PROPAGATION_MODEL, FADE_CONTRAST, Propagator,  # noqa: E402
                                      dice_by_distance, evaluate_volumes, evaluation_targets, largest_slice,
                                      load_propagation_spec, load_split, propagate, summary_table)


def slice_dice(prediction: np.ndarray, truth: np.ndarray) -> np.ndarray:
    """Per-axial-slice Dice (NaN where both are empty)."""
    inter = (prediction & truth).sum(axis=(1, 2))
    total = prediction.sum(axis=(1, 2)) + truth.sum(axis=(1, 2))
    return np.where(total > 0, 2 * inter / np.maximum(total, 1), np.nan)


def with_corrections(propagator: Propagator, image: np.ndarray, truth: np.ndarray, corrections: int,
                     fix_below: float, limited: bool = False) -> tuple[list[float], dict[str, float], int]:
    """Whole-structure Dice after 0..corrections simulated corrections; distance Dice at k = 0. ``limited``:
    the user also sets the range limits to the structure's first and last slice."""
    k = largest_slice(truth)
    seeded = np.zeros_like(truth)
    seeded[k] = truth[k]
    present = np.nonzero(truth.any(axis=(1, 2)))[0]
    limits = {"start": int(present[0]), "stop": int(present[-1])} if limited else {}
    mask = propagate(propagator, image, seeded, k, **limits).mask
    by_distance = dice_by_distance(mask, truth, k)
    fixed = {k: truth[k]}
    scores = [dice(mask, truth)]
    for _ in range(corrections):
        per_slice = slice_dice(mask, truth)
        candidates = [(s, j) for j, s in enumerate(per_slice) if not np.isnan(s) and s < fix_below and j not in fixed]
        if not candidates:
            scores.append(scores[-1])
            continue
        _, j = min(candidates)
        fixed[j] = truth[j].copy()
        if truth[j].any():
            mask = propagate(propagator, image, mask, j, fixed=fixed, **limits).mask
        else:
            mask = mask.copy()
            mask[j] = False
        scores.append(dice(mask, truth))
    return scores, by_distance, k


def fill_between_slices(truth: np.ndarray, n: int) -> np.ndarray:
    """ITK morphological contour interpolation from n ground-truth axial slices spread over the structure."""
    import itk

    # one thread: the rule here, and the multi-threaded filter corrupted the heap in our runs (malloc abort)
    itk.MultiThreaderBase.SetGlobalDefaultNumberOfThreads(1)
    present = np.nonzero(truth.any(axis=(1, 2)))[0]
    chosen = np.unique(np.round(np.linspace(present[0], present[-1], n)).astype(int))
    drawn = np.zeros(truth.shape, np.uint8)
    drawn[chosen] = truth[chosen]
    if len(chosen) < 2:
        return drawn.astype(bool)
    interpolator = itk.MorphologicalContourInterpolator.New(itk.GetImageFromArray(drawn))
    interpolator.SetAxis(2)  # ITK's z = numpy axis 0 (axial)
    interpolator.SetLabel(1)
    interpolator.Update()
    return itk.GetArrayFromImage(interpolator.GetOutput()).astype(bool)


def stopping_table(propagator: Propagator, validation: list, rows: list[dict]) -> str:
    """Markdown table: mean Dice (+-5, +-10, whole; whole per group) at the threshold before calibration and
    the model's, each with the stopping rule off and on. ``rows`` are the default run's (calibrated, rule on)."""
    config = propagator.config
    before = config.training.get("threshold_calibration", {}).get("previous", config.threshold)
    groups = list(dict.fromkeys(r["group"] for r in rows))
    lines = ["| threshold | stopping rule | Dice +-5 | Dice +-10 | Dice whole | " +
             " | ".join(f"whole {g}" for g in groups) + " |", "|---|---|---|---|---|" + "---|" * len(groups)]
    for threshold in dict.fromkeys((before, config.threshold)):
        for contrast in (0.0, FADE_CONTRAST):
            default = threshold == config.threshold and contrast == FADE_CONTRAST
            scored = rows if default else evaluate_volumes(propagator, validation, threshold=threshold,
                                                           min_contrast=contrast)
            means = [np.mean([r[key] for r in scored]) for key in ("+-5", "+-10", "whole")]
            means += [np.mean([r["whole"] for r in scored if r["group"] == g]) for g in groups]
            lines.append(f"| {threshold:g}{' (before)' if threshold == before != config.threshold else ''} | "
                         f"{f'on ({contrast:g})' if contrast else 'off'}{' (default)' if default else ''} | " +
                         " | ".join(f"{m:.3f}" for m in means) + " |")
    return "\n".join(lines) + "\n"


def one_step_bias(propagator: Propagator, validation: list, threshold: float = 0.5) -> dict[str, float]:
    """Does the network keep the size of what it is prompted with? Each held-out structure's largest slice (the
    truth) prompts each neighbouring slice holding the structure, at ``threshold``, stopping rule off: how
    many of these one-step masks are larger than the truth, and the median relative area error (%)."""
    errors = []
    for volume, evaluate in validation:
        for truth in evaluation_targets(volume, evaluate).values():
            k = largest_slice(truth)
            seeded = np.zeros_like(truth)
            seeded[k] = truth[k]
            for q in (k - 1, k + 1):
                if 0 <= q < len(truth) and truth[q].any():
                    mask = propagate(propagator, volume.image, seeded, k, start=min(k, q), stop=max(k, q),
                                     threshold=threshold, min_contrast=None).mask
                    errors.append((mask[q].sum() - truth[q].sum()) / truth[q].sum())
    return {"steps": len(errors), "larger": int(np.sum(np.array(errors) > 0)),
            "median_error_pct": 100 * float(np.median(errors)), "threshold": threshold}


def latency(propagator: Propagator, slices: int = 200, side: int = 256) -> dict[str, float]:
    """Per-slice and whole-volume propagation time on a real CT (liver) resampled to side x side x slices."""
    from PromptSegLib.propagation import load_volume

    spec = load_propagation_spec(ROOT / "Resources" / "Training" / "propagation.json")
    organs = next(d for d in spec if d["name"] == "ts_ct_organs")
    volume = load_volume(organs, next(c for c in organs["cases"] if c["id"] == "ts_ct_3mm"))
    zoom = np.array([slices, side, side]) / np.array(volume.image.shape)
    image = ndimage.zoom(volume.image, zoom, order=1)
    liver = ndimage.zoom((volume.label == 5).astype(np.uint8), zoom, order=0).astype(bool)
    k = largest_slice(liver)
    seeded = np.zeros_like(liver)
    seeded[k] = liver[k]
    propagate(propagator, image[k - 3:k + 3], seeded[k - 3:k + 3], 3)  # warm-up
    start = time.perf_counter()
    result = propagate(propagator, image, seeded, k)
    total = time.perf_counter() - start
    q = torch.rand(1, 1, propagator.config.input_size, propagator.config.input_size)
    with torch.no_grad():
        for _ in range(3):
            propagator.model.network(q, q, q)
        start = time.perf_counter()
        for _ in range(20):
            propagator.model.network(q, q, q)
    net = (time.perf_counter() - start) / 20
    return {"shape": image.shape, "written": len(result.written), "total_s": total,
            "per_slice_ms": 1000 * total / max(len(result.written), 1), "network_ms": 1000 * net,
            "liver_dice": dice(result.mask, liver)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=str(BUNDLED_PROPAGATION_MODEL))
    parser.add_argument("--spec", default=str(ROOT / "Resources" / "Training" / "propagation.json"))
    parser.add_argument("--corrections", type=int, default=3)
    parser.add_argument("--fix-below", type=float, default=0.8, help="slice Dice under which a slice is corrected")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--card", action="store_true", help="append the tables to the model's card")
    args = parser.parse_args()
    propagator = Propagator(args.model, threads=args.threads)
    validation = load_split(load_propagation_spec(args.spec), "val")

    rows = []
    for volume, evaluate in validation:
        for name, truth in evaluation_targets(volume, evaluate).items():
            start = time.perf_counter()
            scores, by_distance, k = with_corrections(propagator, volume.image, truth, args.corrections,
                                                      args.fix_below)
            seconds = time.perf_counter() - start
            limited, _, _ = with_corrections(propagator, volume.image, truth, args.corrections, args.fix_below, True)
            peer = {n: dice(fill_between_slices(truth, n), truth) for n in range(2, args.corrections + 2)}
            rows.append({"volume": volume.name, "group": volume.group, "structure": name, "prompt_slice": k,
                         "slices": int(truth.any(axis=(1, 2)).sum()), **by_distance, "seconds": seconds,
                         **{f"prop n={n + 1}": s for n, s in enumerate(scores)},
                         **{f"range n={n + 1}": s for n, s in enumerate(limited)},
                         **{f"fill n={n}": s for n, s in peer.items()}})
            print(f"{volume.name} {name}: " + " ".join(f"{key} {value:.3f}" for key, value in rows[-1].items()
                                                       if isinstance(value, float)), flush=True)

    distance = summary_table(rows)
    counts = list(range(1, args.corrections + 2))
    lines = ["| user-drawn slices n | " + " | ".join(str(n) for n in counts) + " |", "|---|" + "---|" * len(counts),
             "| propagation (prompt + n-1 corrections) | " +
             " | ".join(f"{np.mean([r[f'prop n={n}'] for r in rows]):.3f}" for n in counts) + " |",
             "| propagation, range limits at the structure's first/last slice | " +
             " | ".join(f"{np.mean([r[f'range n={n}'] for r in rows]):.3f}" for n in counts) + " |",
             "| Fill between slices (ITK contour interpolation) | " +
             " | ".join("-" if n == 1 else f"{np.mean([r[f'fill n={n}'] for r in rows]):.3f}" for n in counts) + " |"]
    corrections = "\n".join(lines) + "\n"
    stopping = stopping_table(propagator, validation, rows)
    bias = one_step_bias(propagator, validation)
    bias_text = (f"One step from the prompt (each held-out structure's largest slice prompting each neighbour, "
                 f"threshold {bias['threshold']:g}, stopping rule off): the mask is larger than the truth in "
                 f"{bias['larger']} of {bias['steps']} steps; median area error {bias['median_error_pct']:+.1f} %.\n")
    timing = latency(propagator)
    latency_text = (f"Volume {timing['shape']} (real CT resampled, liver): {timing['written']} slices propagated in "
                    f"{timing['total_s']:.2f} s, {timing['per_slice_ms']:.1f} ms per 256x256 slice (box resampling, "
                    f"SSIM check, network); network alone {timing['network_ms']:.1f} ms per "
                    f"{propagator.config.input_size}x{propagator.config.input_size} input; "
                    f"{torch.get_num_threads()} CPU thread{'s' if torch.get_num_threads() != 1 else ''} (liver Dice {timing['liver_dice']:.3f}; a training volume, "
                    "for timing only).\n")
    print("\nDice by distance from the prompt slice (mean over held-out structures)\n" + distance)
    print(f"Whole-structure Dice vs user-drawn slices ({len(rows)} held-out structures; corrections where slice "
          f"Dice < {args.fix_below})\n" + corrections)
    print("Stopping at structure ends (mean over held-out structures; whole-structure Dice per group)\n" + stopping)
    print("Size bias\n" + bias_text)
    print("Latency\n" + latency_text)
    if args.card:
        from PromptSegLib.model_io import append_to_card

        command = "python " + shlex.join(["Testing/benchmarks/bench_propagation.py"] + sys.argv[1:])
        append_to_card(args.model, f"## Benchmark: corrections, Fill between slices, latency\n\n```\n{command}\n```\n\n"
                       f"Dice by distance (held-out, axial, prompt = largest slice):\n\n{distance}\n"
                       f"Whole-structure Dice at the same number of user-drawn slices ({len(rows)} held-out "
                       f"structures; a correction replaces the worst slice with slice Dice < {args.fix_below} by the "
                       f"ground truth; the peer gets n slices evenly spaced from the structure's first to last "
                       f"slice):\n\n{corrections}\nStopping at structure ends (held-out, same protocol as Dice "
                       f"by distance; the threshold before and after `calibrate_threshold`, the stopping rule off and "
                       f"on):\n\n{stopping}\nSize bias: {bias_text}\nLatency: {latency_text}")
        print(f"appended to {Path(args.model) / 'README.md'}")


if __name__ == "__main__":
    main()
